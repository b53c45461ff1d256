"""Browser ingestion across origins, and the dashboard behind the read token, in headless
Chromium (issue 11, item 4).

A page served from another origin (a port of its own) posts events to the worker with
``fetch`` and an ``X-API-Key`` header, so Chromium sends a CORS preflight first. The worker
allows that origin (``access.cors_origins``): the event is accepted, and the script can read
the status of a refused request (401 for a wrong key, 429 with ``Retry-After`` once the key's
rate limit is spent). A page from an origin not in the list cannot post at all. The dashboard,
with a read token configured, challenges the browser to log in (HTTP Basic), and opens once the
browser answers with the token as the password; its Server-Sent Events stream, which cannot set
headers of its own, is authorised by the same login and delivers the snapshots, the second
once the worker's feed has primed itself from its own API with the read token; the funnel,
retention and A/B test panels read the API with the same login.

Chromium is Debian's (scripts/browser.sh), driven by playwright as in
tests/e2e/test_dashboard_browser.py (tests/dashboard_page.py).
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

from tests.dashboard_page import CHROMIUM, CHROMIUM_ARGS
from tests.polling import poll
from tests.worker_process import Worker, WorkerPool, free_port

pytestmark = pytest.mark.integration

KEY = "browser-" + uuid.uuid4().hex
READ = "read-" + uuid.uuid4().hex
RATE = 3  # requests a minute for the key

POST_EVENT = """
async ([url, key, event]) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-API-Key": key},
      body: JSON.stringify(event),
    });
    return {
      status: response.status,
      retryAfter: response.headers.get("Retry-After"),
      body: await response.json(),
    };
  } catch (error) {
    return {error: String(error)};
  }
}
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>shop</title><p>a shop page</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def site(port: int) -> Iterator[str]:
    """A web site on its own origin, ``http://127.0.0.1:<port>``."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def user_events(worker: Worker, user_id: str) -> int:
    request = urllib.request.Request(
        f"{worker.url}/api/users/{urllib.parse.quote(user_id)}",
        headers={"Authorization": f"Bearer {READ}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(json.loads(response.read())["events"])
    except urllib.error.HTTPError:
        return 0


def post_from(page: Page, worker: Worker, event: dict[str, Any], key: str = KEY) -> Any:
    return page.evaluate(POST_EVENT, [worker.url + "/ingest", key, event])


def test_a_page_on_an_allowed_origin_posts_events_and_the_dashboard_needs_the_token(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    allowed_port, other_port = free_port(), free_port()
    with site(allowed_port) as allowed, site(other_port) as other:
        worker = worker_factory(
            topic_prefix,
            group_id,
            {
                "ANALYTICS__ACCESS__INGEST_KEYS__BROWSER__KEY": KEY,
                "ANALYTICS__ACCESS__INGEST_KEYS__BROWSER__RATE_LIMIT": f"{RATE}/minute",
                "ANALYTICS__ACCESS__READ_TOKEN": READ,
                "ANALYTICS__ACCESS__CORS_ORIGINS": json.dumps([allowed]),
                "ANALYTICS__SINKS__TIMESCALEDB__TABLES": "[]",
            },
        )
        worker.wait_ready(8, timeout=120)

        # the preflight as Chromium sends it, answered for the allowed origin only
        preflight = urllib.request.Request(
            worker.url + "/ingest",
            method="OPTIONS",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        with urllib.request.urlopen(preflight, timeout=10) as answer:
            assert answer.headers["Access-Control-Allow-Origin"] == allowed
            allowed_headers = answer.headers["Access-Control-Allow-Headers"].lower()
            assert {"content-type", "x-api-key"} <= set(allowed_headers.split(","))
            assert answer.headers["Access-Control-Max-Age"] == "600"

        user = f"browser-{uuid.uuid4().hex[:8]}"
        event = {"user_id": user, "action": "page_view", "page": "/shop"}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(allowed + "/")
                accepted = post_from(page, worker, event)
                assert accepted["status"] == 202, accepted
                wrong = post_from(page, worker, event, key=KEY + "x")
                assert wrong["status"] == 401, wrong
                assert "not valid" in wrong["body"]["error"]
                statuses = [post_from(page, worker, event)["status"] for _ in range(RATE - 1)]
                assert statuses == [202] * (RATE - 1)
                limited = post_from(page, worker, event)
                assert limited["status"] == 429, limited
                assert 1 <= int(limited["retryAfter"]) <= 60  # an exposed header

                stranger = browser.new_page()
                stranger.goto(other + "/")
                refused = post_from(stranger, worker, {**event, "user_id": user + "-x"})
                assert "Failed to fetch" in refused.get("error", ""), refused

                # without credentials Chromium meets the login challenge and has nothing to say
                with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                    browser.new_page().goto(worker.url + "/dashboard")
                operator = browser.new_context(
                    http_credentials={"username": "operator", "password": READ}
                ).new_page()
                answers: list[tuple[str, int]] = []
                operator.on("response", lambda r: answers.append((r.url, r.status)))
                operator.goto(worker.url + "/dashboard")
                # the second snapshot comes once the worker's feed has read its own API, which
                # needs the read token too (web/live_feed.py)
                operator.wait_for_function(
                    "() => document.body.dataset.snapshots >= 2", timeout=30_000
                )
                # the panels' requests to the API (web/static/panels.js) carry the same login
                operator.wait_for_function(
                    "() => document.body.dataset.panelReads >= 1", timeout=30_000
                )
                funnels = operator.eval_on_selector_all(
                    "#funnel-select option", "options => options.map(o => o.value)"
                )
                assert funnels == ["checkout"]
                read = {url.removeprefix(worker.url).partition("?")[0]: status
                        for url, status in answers if "/api/" in url}  # fmt: skip
                assert {"/api/funnels", "/api/funnels/checkout", "/api/cohorts",
                        "/api/experiments"} <= set(read), read  # fmt: skip
                assert 401 not in read.values(), read
            finally:
                browser.close()

        poll(lambda: user_events(worker, user), lambda n: n == RATE, 60, f"{RATE} events")
        assert user_events(worker, user + "-x") == 0
