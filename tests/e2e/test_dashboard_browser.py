"""The built-in dashboard (``GET /dashboard``) in headless Chromium against a real worker.

Debian's Chromium (scripts/browser.sh installs it; scripts/test.sh runs that first) is driven
by Python playwright, whose wheel carries its own driver: no browser is downloaded. A missing
Chromium fails the test with the command to run, it is not skipped.

The page is opened before any traffic, so everything it shows arrives over its Server-Sent
Events stream. Then six days of sparse back-dated traffic with an A/B test (cohorts with day
offsets, funnel days, an experiment), fifteen windows of back-dated traffic (final windows for
the charts and breakdowns) and live traffic with a second A/B test flow, on 20 s KPI windows
so that the test waits seconds, not minutes; the tiles must equal ``/api/kpis/current`` while
the window is live (its trends marked provisional), and again once the traffic has stopped and
the window is final (its trends not). The funnel, retention and A/B test panels, which poll
the API, must then show what ``/api/funnels/checkout``, ``/api/cohorts`` and
``/api/experiments`` answer (tests/e2e/test_dashboard_panels_browser.py checks their formatting
against rows of known figures). The worker has a database of its own, so no other test's rows
show. The desktop screenshot, taken while the traffic flows, is saved for the README
(``SAVE_SCREENSHOT=1`` writes docs/images/, otherwise only the test's temporary folder), and a
phone viewport must render without horizontal scrolling (screenshots of its top and of its
funnel and retention panels).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from analytics.custom_kpis import parse_custom_kpis
from analytics.timeutil import parse_ts
from generator.cli import restamp, send_to_kafka
from generator.traffic import DAY_MS, Event, Kind, TrafficProfile, generate_labelled
from tests import contract
from tests.dashboard_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    experiment_rows,
    funnel_stages,
    heat_map,
    require_chromium,
    shown_text,
    variant_cells,
)
from tests.databases import scratch_database
from tests.missing_services import service_missing
from tests.polling import poll
from tests.worker_process import REPO_ROOT, Services, Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
# the KPI window of the test's worker: short, so a live window and then its final record come
# within seconds; DASHBOARD_WINDOW_S=60 with SAVE_SCREENSHOT=1 for the README's images
WINDOW_S = int(os.environ.get("DASHBOARD_WINDOW_S", "20"))
WINDOW_MS = WINDOW_S * 1000
BACKFILL_WINDOWS = 15
HISTORY_DAYS = 6  # before the backfill: cohorts with day offsets, funnel days, an A/B test
HISTORY_EVENTS = 3_000
LIVE_RATE = 40  # events/s
IMAGES = REPO_ROOT / "docs" / "images"
# tile -> how the page formats it (web/static/dashboard.js)
TILE_KINDS = {
    "active_users": "int",
    "total_events": "int",
    "total_page_views": "int",
    "total_revenue": "money",
    "total_conversions": "int",
    "revenue_per_user": "money",
    "total_sessions": "int",
    "average_session_duration_seconds": "seconds",
    "bounce_rate_percent": "percent",
    "conversion_rate_percent": "percent",
    "new_users": "int",
    "total_users": "int",
}
SESSION_TILES = (
    "total_sessions",
    "average_session_duration_seconds",
    "bounce_rate_percent",
    "conversion_rate_percent",
)


def get_json(worker: Worker, path: str) -> Any:
    with urllib.request.urlopen(worker.url + path, timeout=30) as response:
        return json.loads(response.read())


class Traffic:
    """Back-dated traffic, then live traffic until ``stop()``, produced from a thread of its
    own (playwright's sync API owns the test's thread)."""

    def __init__(self, services: Services, topic: str) -> None:
        self.services = services
        self.topic = topic
        self.sent = 0
        self.live_since_ms: int | None = None  # when the live traffic began (its event time)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the traffic thread did not stop"
        if self.error is not None:
            raise self.error

    def _live(self) -> Iterator[tuple[Event | bytes, Kind]]:
        profile = TrafficProfile(
            seed=11,
            users=200,
            start_ms=int(time.time() * 1000),
            span_ms=3_600_000,
            events=10**6,
            checkout_action=True,
            experiment="hero_banner",
            variants=("control", "wide"),
        )
        for item in generate_labelled(profile):
            if self._stop.is_set():
                return
            yield item

    def _run(self) -> None:
        now = int(time.time() * 1000)
        start = (now // WINDOW_MS - BACKFILL_WINDOWS) * WINDOW_MS
        # users user-00000 to user-00199 come back in the backfill and live traffic: the
        # history's cohorts get today's offsets, about half of each
        history = TrafficProfile(
            seed=5,
            users=400,
            start_ms=start - 3_600_000 - HISTORY_DAYS * DAY_MS,  # an hour before the backfill
            span_ms=HISTORY_DAYS * DAY_MS,
            events=HISTORY_EVENTS,
            checkout_action=True,
            experiment="checkout_button",
        )
        backfill = TrafficProfile(
            seed=7,
            users=200,
            start_ms=start,
            span_ms=now - start - 5_000,
            events=4_000,
            checkout_action=True,
        )
        bootstrap = self.services.kafka_bootstrap
        try:
            past = (
                event for profile in (history, backfill) for event, _ in generate_labelled(profile)
            )
            self.sent += asyncio.run(send_to_kafka(past, bootstrap, self.topic, 0, False))
            live = (event for event, _ in restamp(self._live()))
            began = time.monotonic()
            self.live_since_ms = int(time.time() * 1000)
            sent = asyncio.run(send_to_kafka(live, bootstrap, self.topic, LIVE_RATE, False))
            self.sent += sent
            print(f"live traffic: {sent} events in {time.monotonic() - began:.1f} s")
        except BaseException as exc:  # reported by stop()
            self.error = exc


def tiles(page: Page) -> dict[str, dict[str, Any]]:
    """Every tile as shown: its raw figure (data-value), text, trend, the trend's text and
    whether it is marked provisional (data-provisional)."""
    rows = page.eval_on_selector_all(
        "#tiles .tile",
        """tiles => tiles.map(t => [t.dataset.kpi, t.dataset.value,
            t.querySelector('.value').textContent, t.dataset.trend || null,
            t.querySelector('.trend').textContent, t.dataset.provisional === 'true'])""",
    )
    return {
        key: {
            "value": json.loads(value),
            "text": text,
            "trend": trend,
            "trend_text": trend_text,
            "provisional": provisional,
        }
        for key, value, text, trend, trend_text, provisional in rows
    }


def shown_window(page: Page) -> tuple[str | None, str | None]:
    body = page.eval_on_selector("body", "b => [b.dataset.windowStart || null, b.dataset.final]")
    return body[0], body[1]


Shown = tuple[dict[str, Any], dict[str, dict[str, Any]]]


def custom_tiles(page: Page) -> dict[str, tuple[Any, str]]:
    """The custom KPI tiles as shown (SPEC 10): name -> (data-value, text)."""
    rows = page.eval_on_selector_all(
        "#custom-tiles .tile",
        "tiles => tiles.map(t => [t.dataset.custom, t.dataset.value, "
        "t.querySelector('.value').textContent])",
    )
    return {name: (json.loads(value), text) for name, value, text in rows}


def same_as_api(page: Page, worker: Worker) -> Shown | None:
    """The API's current record and the tiles, when the page shows exactly that record
    (window and every tile's figure)."""
    kpi = get_json(worker, "/api/kpis/current")["kpi"]
    if kpi is None or shown_window(page) != (kpi["window_start"], str(kpi["is_final"]).lower()):
        return None
    shown = tiles(page)
    if any(shown[key]["value"] != kpi[key] for key in TILE_KINDS):
        return None
    if {name: value for name, (value, _) in custom_tiles(page).items()} != kpi["custom"]:
        return None
    return kpi, shown


def assert_tiles_show(kpi: dict[str, Any], shown: dict[str, dict[str, Any]]) -> None:
    """The tiles show the record's figures and trends; a live record's trends are marked
    provisional (hollow arrows, "so far"), a final record's are not."""
    assert set(shown) == set(TILE_KINDS)
    provisional = kpi.get("trends_provisional", False)
    assert provisional is not kpi["is_final"]
    for key, kind in TILE_KINDS.items():
        assert shown[key]["value"] == kpi[key], key
        assert shown[key]["text"] == shown_text(kpi[key], kind), key
        trend = kpi["trends"].get(key)
        assert shown[key]["trend"] == (trend["trend"] if trend else None), key
        assert shown[key]["provisional"] is provisional, key
        if trend:
            arrows = "△▽→" if provisional else "▲▼→"
            assert shown[key]["trend_text"][0] in arrows, key
            assert shown[key]["trend_text"].endswith(" so far") is provisional, key


def trend_basis(page: Page) -> str | None:
    """The header's note on what the trends compare (live windows only)."""
    basis: str | None = page.eval_on_selector(
        "#window", "w => w.querySelector('.basis')?.textContent ?? null"
    )
    return basis


PANELS_FILLED = """() =>
    ['funnel-card', 'cohort-card', 'experiment-card']
        .every(id => document.getElementById(id).dataset.state === 'shown')
    && document.querySelectorAll('#experiments tr.group').length === 2"""


def panels_against_api(page: Page, worker: Worker) -> list[str]:
    """Where the funnel, retention and A/B test panels differ from what the API answers for
    the funnel and days they show ([]: nowhere)."""
    problems: list[str] = []
    funnel = page.eval_on_selector("#funnel-card", "c => ({...c.dataset})")
    answer = get_json(
        worker, f"/api/funnels/{funnel['funnel']}?from={funnel['from']}&to={funnel['to']}"
    )
    stages = answer["total"]["stages"] if answer["days"] else []  # no days: an empty panel
    expected = [
        {
            "stage": stage["stage"],
            "reached": stage["reached"],
            "drop_off_percent": stage["drop_off_percent"],
            "reached_text": f"{shown_text(stage['reached'], 'int')} · "
            + shown_text(100 * stage["reached"] / (stages[0]["reached"] or 1), "percent"),
        }
        for stage in stages
    ]
    shown = [{k: v for k, v in s.items() if k != "drop_text"} for s in funnel_stages(page)]
    if shown != expected:
        problems.append(f"funnel: shown {shown}, API {expected}")

    cohorts = page.eval_on_selector("#cohort-card", "c => ({...c.dataset})")
    answer = get_json(worker, f"/api/cohorts?from={cohorts['from']}&to={cohorts['to']}")
    expected_cells = {
        cohort["cohort"]: {
            str(cell["day_offset"]): (
                cell["retention_rate_percent"],
                shown_text(cell["retention_rate_percent"], "percent"),
                not cell["is_final"],
            )
            for cell in cohort["days"]
        }
        for cohort in answer["cohorts"]
    }
    shown_cells = {
        cohort: {offset: cell[:3] for offset, cell in row["cells"].items()}
        for cohort, row in heat_map(page).items()
    }
    if shown_cells != expected_cells:
        problems.append(f"heat map: shown {shown_cells}, API {expected_cells}")

    answer = get_json(worker, "/api/experiments")
    expected_rows = {
        (variant["experiment"], variant["variant"]): variant_cells(variant)
        for experiment in answer["experiments"]
        for variant in experiment["variants"]
    }
    if experiment_rows(page) != expected_rows:
        problems.append(f"experiments: shown {experiment_rows(page)}, API {expected_rows}")
    return problems


def save(path: Path, name: str) -> Path:
    """Copy a screenshot into docs/images when SAVE_SCREENSHOT=1."""
    if os.environ.get("SAVE_SCREENSHOT") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, IMAGES / name)
        return IMAGES / name
    return path


@pytest.fixture
def database(services: Services) -> Iterator[str]:
    """A database of the test's own: the panels list every stored experiment, so rows of other
    tests would show. Requested before ``worker_factory``, so it is dropped after the worker
    has stopped."""
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    with scratch_database(services.database_url, "dashboard") as url:
        yield url


def test_dashboard_shows_the_api_figures_live(
    database: str,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    require_chromium()
    worker = worker_factory(
        topic_prefix,
        group_id,
        {
            "ANALYTICS__ENGINE__GRACE": "3s",
            "ANALYTICS__ENGINE__KPI_WINDOW": f"{WINDOW_S}s",
            "DATABASE_URL": database,
        },
    )
    worker.wait_ready(PARTITIONS)
    traffic = Traffic(services, topic_prefix + "user-events")
    requested: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(worker.url + "/dashboard")
            page.wait_for_function("() => document.body.dataset.snapshots >= 1", timeout=30_000)
            assert shown_window(page)[0] is None  # nothing yet: all that follows is pushed

            traffic.start()
            # filled: a current window, the back-dated windows final in the chart, top pages
            page.wait_for_function(
                """windows => document.body.dataset.windowStart
                    && document.querySelectorAll('#chart-events rect.bar:not(.live)').length
                        >= windows - 1
                    && document.querySelectorAll('#pages td.page').length > 0""",
                arg=BACKFILL_WINDOWS,
                timeout=90_000,
            )
            assert int(page.eval_on_selector("body", "b => b.dataset.updates")) >= 1

            def live_and_shown() -> Shown | None:
                # half a window into the live traffic, the window before it all live traffic
                # too: a representative screenshot (trends compare like with like)
                if time.time() * 1000 % WINDOW_MS < WINDOW_MS / 2:
                    return None
                answer = same_as_api(page, worker)
                if answer is None or answer[0]["is_final"] or traffic.live_since_ms is None:
                    return None
                previous_start = parse_ts(answer[0]["window_start"]) - WINDOW_MS
                return answer if previous_start >= traffic.live_since_ms else None

            # the panels filled from the database: the history's funnel days, cohorts and
            # experiment, and the live traffic's experiment
            page.wait_for_function(PANELS_FILLED, timeout=60_000)

            live, shown = poll(live_and_shown, bool, 180, "live window on the page and in the API")
            assert_tiles_show(live, shown)
            assert live["trends_provisional"] is True
            assert 0 < live["trends_elapsed_seconds"] <= WINDOW_MS / 1000
            assert (trend_basis(page) or "").startswith("trends so far"), trend_basis(page)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)  # while the traffic flows
            print(f"dashboard screenshot: {save(shot, 'dashboard.png')}")

            traffic.stop()
            assert traffic.sent > 4_000

            def final_and_shown() -> Shown | None:
                answer = same_as_api(page, worker)
                return answer if answer is not None and answer[0]["is_final"] else None

            final, shown = poll(
                final_and_shown, bool, 120, "final window on the page and in the API"
            )
            assert_tiles_show(final, shown)
            assert all(final[key] is not None for key in SESSION_TILES)
            # the shipped settings' custom KPIs, in their order: counts whole, ratios in %
            kinds = parse_custom_kpis(contract.shipped_custom_kpis()).kinds()
            shown_custom = custom_tiles(page)
            assert list(shown_custom) == list(kinds) == list(final["custom"])
            for name, kind in kinds.items():
                value = final["custom"][name]
                text = shown_text(value, "int" if kind == "count" else "percent")
                assert shown_custom[name] == (value, text), name
            assert "trends_provisional" not in final and trend_basis(page) is None

            # the breakdowns follow the final window: the same pages as the API
            def pages_match() -> bool:
                top = get_json(worker, "/api/pages/top?minutes=60&limit=10")["pages"]
                rows = page.eval_on_selector_all(
                    "#pages tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
                )
                return [[p["page"], shown_text(p["views"], "int")] for p in top] == [
                    row[:2] for row in rows
                ]

            poll(pages_match, bool, 30, "top pages equal to the API")
            poll(lambda: panels_against_api(page, worker), lambda d: d == [], 60,
                 "panels equal to the API")  # fmt: skip

            phone = browser.new_page(
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            )
            phone.on("request", lambda request: requested.append(request.url))
            phone.goto(worker.url + "/dashboard")
            phone.wait_for_function(
                "() => document.querySelectorAll('#pages td.page').length > 0", timeout=30_000
            )
            phone.wait_for_function(PANELS_FILLED, timeout=30_000)
            assert shown_window(phone) == shown_window(page)
            widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"horizontal scroll on a phone: {widths}"
            phone_shot = tmp_path / "dashboard-phone.png"
            phone.screenshot(path=str(phone_shot))
            save(phone_shot, "dashboard-phone.png")
            # the funnel and retention panels, further down
            phone.eval_on_selector("#funnel-card", "card => card.scrollIntoView()")
            phone_shot = tmp_path / "dashboard-phone-panels.png"
            phone.screenshot(path=str(phone_shot))
            save(phone_shot, "dashboard-phone-panels.png")
            assert errors == []
        finally:
            if traffic.running:
                traffic.stop()
            browser.close()

    outside = [url for url in requested if not url.startswith((worker.url + "/", "data:"))]
    assert outside == [], "the page must load nothing from elsewhere"
    assert worker.log_path.read_text().count("dashboard feed: following") == 1, (
        "one live-kpis consumer per worker, however many pages are open"
    )
