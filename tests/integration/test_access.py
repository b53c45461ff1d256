"""Access control on real workers (issue 11, item 4): ingest keys, the read token (API and the
dashboard's event stream), the admin guard, a per-key rate limit, secrets kept out of the log,
and live queries that Faust's table routing forwards to the other worker still authenticated.

Two workers of one group, both configured with the same secrets through the environment. The
unit tests (tests/unit/test_access.py) cover every rule; this one shows them on the real web
server, where Faust's own views, aiohttp-cors and table routing sit around the middleware.
"""

from __future__ import annotations

import base64
import functools
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from tests.kafka_helpers import partition_for
from tests.polling import poll
from tests.worker_process import Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
SHOP_KEY = "shop-" + uuid.uuid4().hex
LIMITED_KEY = "limited-" + uuid.uuid4().hex
READ = "read-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex
SECRETS_ENV = {
    "ANALYTICS__ACCESS__INGEST_KEYS__SHOP": SHOP_KEY,
    "ANALYTICS__ACCESS__INGEST_KEYS__LIMITED__KEY": LIMITED_KEY,
    "ANALYTICS__ACCESS__INGEST_KEYS__LIMITED__RATE_LIMIT": "5/minute",
    "ANALYTICS__ACCESS__READ_TOKEN": READ,
    "ANALYTICS__ACCESS__ADMIN_TOKEN": ADMIN,
    "ANALYTICS__SINKS__TIMESCALEDB__TABLES": "[]",
}


def call(
    worker: Worker,
    path: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        worker.url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        is_json = error.headers.get_content_type() == "application/json"
        return error.code, dict(error.headers), json.loads(raw) if is_json else raw.decode()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def user_path(user_id: str) -> str:
    return "/api/users/" + urllib.parse.quote(user_id, safe="")


def test_keys_tokens_limits_and_forwarded_queries(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    workers = [worker_factory(topic_prefix, group_id, SECRETS_ENV) for _ in range(2)]
    for worker in workers:
        worker.wait_ready(PARTITIONS, timeout=120)
    first, second = workers

    # ingestion: a key is needed, a read token is the wrong credential
    event = {"user_id": "someone", "action": "page_view", "page": "/"}
    status, headers, body = call(first, "/ingest", method="POST", body=event)
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="analytics"')
    assert "needs an ingest key" in body["error"]
    assert call(first, "/ingest", method="POST", body=event, headers=bearer(READ))[0] == 403
    wrong = {"X-API-Key": SHOP_KEY + "x"}
    assert call(first, "/ingest", method="POST", body=event, headers=wrong)[0] == 401

    # users on both workers' partitions, ingested with the key through the first worker
    owned = [set(w.health()[1]["worker"]["user_events_partitions"]) for w in workers]  # type: ignore[index]
    tag = uuid.uuid4().hex[:8]
    candidates = [f"user-{tag}-{n}" for n in range(64)]
    users = [
        next(u for u in candidates if partition_for(u.encode(), PARTITIONS) in o) for o in owned
    ]
    batch = {"events": [{"user_id": u, "action": "page_view", "page": "/"} for u in users]}
    status, _, body = call(
        first, "/ingest/batch", method="POST", body=batch, headers={"X-API-Key": SHOP_KEY}
    )
    assert status == 202 and len(body["accepted"]) == 2

    # reads need the read token, on whichever worker is asked; the worker that does not own
    # the user forwards the request (with its Authorization header) and relays the answer
    for worker in workers:
        for user in users:
            assert call(worker, user_path(user))[0] == 401
            assert call(worker, user_path(user), headers={"X-API-Key": SHOP_KEY})[0] == 403
            answer = poll(
                functools.partial(call, worker, user_path(user), headers=bearer(READ)),
                lambda answer: answer[0] == 200,
                60,
                f"GET {user_path(user)} on {worker.name} with the read token",
            )
            assert answer[2]["user_id"] == user and answer[2]["events"] == 1
    basic = "Basic " + base64.b64encode(f"dashboard:{READ}".encode()).decode()
    assert call(second, "/api/kpis/current", headers={"Authorization": basic})[0] == 200
    assert call(second, "/api/kpis/current", headers=bearer(ADMIN))[0] == 200

    # the dashboard's event stream: refused without the token, served with it
    assert call(first, "/dashboard/stream")[0] == 401
    request = urllib.request.Request(first.url + "/dashboard/stream", headers=bearer(READ))
    with urllib.request.urlopen(request, timeout=30) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline() == b"retry: 3000\n"

    # open to everyone: health (load balancers) and the API description
    assert call(first, "/health")[0] == 200
    assert call(first, "/openapi.json")[0] == 200

    # the destructive route (erasure, README "Erasure") needs the admin token; erasing a
    # user nobody has seen changes nothing. A method the server lacks is 405 for anyone
    nobody = user_path(f"nobody-{uuid.uuid4().hex[:8]}")
    assert call(first, nobody, method="DELETE")[0] == 401
    assert call(first, nobody, method="DELETE", headers=bearer(READ))[0] == 403
    erased = call(second, nobody, method="DELETE", headers=bearer(ADMIN))
    assert erased[0] == 200 and erased[2]["removed"]["profile"] is False, erased
    assert call(first, user_path(users[0]), method="PUT")[0] == 405

    # the limited key: 5 requests a minute, then 429 with Retry-After; the shop key goes on
    limited = {"X-API-Key": LIMITED_KEY}
    statuses = [
        call(first, "/ingest", method="POST", body=event, headers=limited)[0] for _ in range(5)
    ]
    assert statuses == [202] * 5
    status, headers, body = call(first, "/ingest", method="POST", body=event, headers=limited)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60
    assert "over its rate limit of 5/minute" in body["error"]
    assert (
        call(first, "/ingest", method="POST", body=event, headers={"X-API-Key": SHOP_KEY})[0] == 202
    )

    for worker in workers:
        log = worker.log_path.read_text(errors="replace")
        assert not [s for s in (SHOP_KEY, LIMITED_KEY, READ, ADMIN) if s in log]
