"""The dashboard's alert panel (web/static/panels.js) in headless Chromium, against real workers.

Transitions are written straight to the worker's ``kpi-alerts`` topic (the records the
evaluator writes, tests/e2e/test_alerts_contract.py makes them from traffic): a firing rule
must be listed with its value, threshold and window, and a resolution written while the page
is open must take it off without a reload (the panels poll). A worker without rules says so.
Chromium and playwright as in tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from analytics.alerts import Transition
from analytics.timeutil import parse_ts
from tests.dashboard_page import CHROMIUM, CHROMIUM_ARGS, panel, require_chromium
from tests.kafka_helpers import Outgoing, produce
from tests.worker_process import Services, Worker, WorkerPool, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

RULES = [
    {"name": "high-bounce", "metric": "bounce_rate_percent", "comparator": ">", "threshold": 70},
    {"name": "busy", "metric": "total_events", "comparator": ">=", "threshold": 20, "for": 2},
]
WINDOW = parse_ts("2026-02-02T10:03:00Z")
FIRING = Transition("high-bounce", "firing", WINDOW, 82.5, 70, "bounce_rate_percent", ">")
RESOLVED = Transition(
    "high-bounce", "resolved", WINDOW + 60_000, 40, 70, "bounce_rate_percent", ">"
)
PANEL_WAIT_MS = 30_000  # a poll is every 10 s


def write(bootstrap: str, topic: str, transition: Transition) -> None:
    """Produce the transition's record, in a thread of its own: playwright's sync API owns
    this thread's event loop."""
    record = Outgoing(transition.rule.encode(), orjson.dumps(transition.record()), partition=0)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce(bootstrap, topic, [record])).result(60)


def open_dashboard(browser: Browser, worker: Worker, errors: list[str]) -> Page:
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(worker.url + "/dashboard")
    page.wait_for_function("() => document.body.dataset.panelReads >= 1", timeout=PANEL_WAIT_MS)
    return page


def wait_for_state(page: Page, state: str) -> None:
    page.wait_for_function(
        "(state) => document.getElementById('alert-card').dataset.state === state",
        arg=state,
        timeout=PANEL_WAIT_MS,
    )


def firing_items(page: Page) -> list[dict[str, Any]]:
    return list(
        page.eval_on_selector_all(
            "#alerts li.firing",
            """items => items.map(i => ({rule: i.dataset.rule, window_start: i.dataset.windowStart,
                value: JSON.parse(i.dataset.value), text: i.textContent}))""",
        )
    )


def test_the_alert_panel_lists_firing_alerts_and_drops_resolved_ones(
    worker_factory: WorkerPool, services: Services, tmp_path: Path
) -> None:
    require_chromium()
    prefix = new_topic_prefix()
    worker = worker_factory(prefix, new_group_id(), {"ANALYTICS__ALERTS__RULES": json.dumps(RULES)})
    bare = worker_factory(new_topic_prefix(), new_group_id())
    worker.wait_ready(timeout=120)
    bare.wait_ready(timeout=120)
    topic = f"{prefix}kpi-alerts"
    write(services.kafka_bootstrap, topic, FIRING)

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_dashboard(browser, bare, errors)
            assert panel(page, "alert-card")[0] == "empty"
            assert "no alert rule configured" in panel(page, "alert-card")[1]
            page.close()

            page = open_dashboard(browser, worker, errors)
            wait_for_state(page, "firing")
            (item,) = firing_items(page)
            assert item["rule"] == "high-bounce"
            assert item["window_start"] == "2026-02-02T10:03:00.000Z"
            assert item["value"] == 82.5
            assert "bounce_rate_percent 82.50 > 70" in item["text"]
            assert "since the window of 2026-02-02 10:03 UTC" in item["text"]
            assert "1 of 2 rules firing" in panel(page, "alert-card")[1]
            page.screenshot(path=str(tmp_path / "alerts.png"))

            write(services.kafka_bootstrap, topic, RESOLVED)
            wait_for_state(page, "quiet")
            assert firing_items(page) == []
            assert "no alert firing" in panel(page, "alert-card")[1]
        finally:
            browser.close()
    assert errors == []
    print(f"screenshot: {tmp_path / 'alerts.png'}")
