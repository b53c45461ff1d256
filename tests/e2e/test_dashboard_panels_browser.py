"""The dashboard's funnel, retention and A/B test panels (web/static/panels.js) in headless
Chromium, against real workers and PostgreSQL.

The rows are written straight through the sinks' writer (sinks.writers.write_batch, the path
every sink row takes), as tests/integration/test_history_api.py does, into a database of the
test's own, with dates relative to today (UTC): two days of the ``checkout`` funnel in the last
seven and one before them, cohorts of the last three days and one before the panel's fourteen,
and two experiments. The page must show their exact figures as the API reads them: reached
users and drop-off per stage for today and for the last 7 days, a funnel without rows,
retention rates in the heat map (live cells marked, colour by rate), and every variant's
figures with its p-value and probability to beat the control. A third experiment written while
the page is open must appear without a reload (the panels poll). A second worker, with no
funnel configured and an empty database, shows the three empty states.

Chromium and playwright as in tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from sinks.migrations import migrate_url
from sinks.schema import TABLES
from sinks.writers import write_batch
from tests.dashboard_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    experiment_rows,
    funnel_stages,
    heat_map,
    panel,
    require_chromium,
    variant_cells,
)
from tests.databases import scratch_database
from tests.missing_services import service_missing
from tests.unit.test_sinks_schema import (
    BUTTON,
    cohort_record,
    experiment_records,
    funnel_record,
)
from tests.worker_process import Services, Worker, WorkerPool, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

#: the shipped checkout funnel (funnel_record's) and one without rows
FUNNELS = [
    {
        "name": "checkout",
        "window": "24h",
        "stages": ["page_view:/products", "add_to_cart", "checkout", "purchase"],
    },
    {"name": "signup", "window": "1h", "stages": ["page_view:/signup", "signup"]},
]
PRICING = {"control": (200, 20, 0, 0), "cheaper": (210, 42, 105_000, 0)}
SEARCH = {"control": (50, 5, 1_000, 0), "wide": (40, 2, 0, 0)}
PANEL_WAIT_MS = 30_000  # a poll is every 10 s


def rows(today: date) -> dict[str, list[dict[str, Any]]]:
    """The rows of the loaded database, by table."""
    day = timedelta(days=1)
    return {
        "funnel_stats": [
            # today, live: three users, to add_to_cart after 4 s and 6 s, one on to checkout
            # 5 s later; nobody buys
            funnel_record(((0, 4_000, 9_000), (0, 6_000), (0,)), day=today, is_final=False),
            # three days ago: two users, to add_to_cart after 1 s and 2 s, one on to checkout
            # after 3.001 s
            funnel_record(((0, 1_000), (0, 2_000, 5_001)), day=today - 3 * day),
            # nine days ago, outside the last 7: ten users reaching everything
            funnel_record(((0, 1, 2, 3),) * 10, day=today - 9 * day),
        ],
        "cohort_stats": [
            cohort_record(0, size=40, retained=40, cohort=today - 2 * day),
            cohort_record(1, size=40, retained=10, cohort=today - 2 * day),
            cohort_record(2, size=40, retained=4, is_final=False, cohort=today - 2 * day),
            cohort_record(0, size=7, retained=7, cohort=today - day),
            cohort_record(1, size=7, retained=1, is_final=False, cohort=today - day),
            cohort_record(0, size=3, retained=3, is_final=False, cohort=today),
            cohort_record(0, size=9, retained=9, cohort=today - 20 * day),  # before the 14 days
            cohort_record(5, size=9, retained=2, cohort=today - 20 * day),
        ],
        "experiment_stats": experiment_records(BUTTON) + experiment_records(PRICING, "pricing"),
    }


async def write(url: str, tables: dict[str, list[dict[str, Any]]]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table, records in tables.items():
            result = await write_batch(conn, TABLES[table], records)
            assert (result.written, result.rejected) == (len(records), []), table


def write_from_a_thread(url: str, tables: dict[str, list[dict[str, Any]]]) -> None:
    """``write`` while playwright's sync API owns the test's thread (and its event loop)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(write(url, tables))
        except BaseException as exc:  # raised in the test's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name="panel-rows")
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "writing the rows did not finish"
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------- the page


def open_dashboard(browser: Browser, worker: Worker, errors: list[str], **options: Any) -> Page:
    """The dashboard once its panels have read the API once."""
    page = browser.new_page(**options)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: errors.extend(
        [f"request outside the worker: {request.url}"]
        if not request.url.startswith((worker.url + "/", "data:")) else []
    ))  # fmt: skip
    page.goto(worker.url + "/dashboard")
    page.wait_for_function("() => document.body.dataset.panelReads >= 1", timeout=PANEL_WAIT_MS)
    return page


def wait_for_funnel(page: Page, name: str, first: date, last: date, state: str) -> None:
    page.wait_for_function(
        """([name, from, to, state]) => {
            const c = document.getElementById('funnel-card');
            return c.dataset.funnel === name && c.dataset.from === from && c.dataset.to === to
                && c.dataset.state === state;
        }""",
        arg=[name, first.isoformat(), last.isoformat(), state],
        timeout=PANEL_WAIT_MS,
    )


# --------------------------------------------------------------------------- expected


# --------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class Databases:
    loaded: str  # migrated, with the rows of ``rows(today)``
    empty: str  # migrated, nothing stored
    today: date


@pytest.fixture
def databases(services: Services) -> Iterator[Databases]:
    """Two databases of the test's own. Requested before ``worker_factory``, so they are
    dropped after the workers have stopped."""
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    today = datetime.now(UTC).date()
    with (
        scratch_database(services.database_url, "panels") as loaded,
        scratch_database(services.database_url, "panels_empty") as empty,
    ):
        for url in (loaded, empty):
            asyncio.run(migrate_url(url))
        asyncio.run(write(loaded, rows(today)))
        yield Databases(loaded, empty, today)


def test_the_panels_show_the_stored_funnel_cohort_and_experiment_figures(
    databases: Databases, worker_factory: WorkerPool, tmp_path: Path
) -> None:
    require_chromium()
    began = time.monotonic()
    today = databases.today
    worker = worker_factory(
        new_topic_prefix(),
        new_group_id(),
        {"DATABASE_URL": databases.loaded, "ANALYTICS__FUNNELS": json.dumps(FUNNELS)},
    )
    bare = worker_factory(
        new_topic_prefix(),
        new_group_id(),
        {"DATABASE_URL": databases.empty, "ANALYTICS__FUNNELS": "[]"},
    )
    worker.wait_ready(timeout=120)
    bare.wait_ready(timeout=120)

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # ---- the empty states: nothing configured, nothing stored
            page = open_dashboard(browser, bare, errors)
            assert panel(page, "funnel-card")[0] == "empty"
            assert "no funnel configured" in panel(page, "funnel-card")[1]
            assert panel(page, "cohort-card")[0] == "empty"
            assert "no cohort rows yet" in panel(page, "cohort-card")[1]
            assert panel(page, "experiment-card")[0] == "empty"
            assert "no experiment yet" in panel(page, "experiment-card")[1]
            page.close()

            page = open_dashboard(browser, worker, errors, viewport={"width": 1280, "height": 1000})
            check_funnel(page, today)
            check_heat_map(page, today)
            check_experiments(page, rows(today)["experiment_stats"])

            # ---- a new experiment appears without a reload: the panels poll
            reads = int(page.eval_on_selector("body", "b => b.dataset.panelReads"))
            search = experiment_records(SEARCH, "search_box")
            write_from_a_thread(databases.loaded, {"experiment_stats": search})
            page.wait_for_selector(
                '#experiments tr.variant[data-experiment="search_box"]', timeout=PANEL_WAIT_MS
            )
            assert int(page.eval_on_selector("body", "b => b.dataset.panelReads")) > reads
            assert experiment_rows(page)["search_box", "wide"] == variant_cells(search[1])
            page.screenshot(path=str(tmp_path / "panels.png"), full_page=True)

            # ---- a phone: the wide tables scroll inside their cards, not the page
            phone = open_dashboard(
                browser,
                worker,
                errors,
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
            )
            phone.wait_for_selector("#experiments tr.variant", timeout=PANEL_WAIT_MS)
            widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"horizontal scroll on a phone: {widths}"
            phone.screenshot(path=str(tmp_path / "panels-phone.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    print(f"panels test: {time.monotonic() - began:.1f} s; screenshots in {tmp_path}")


def check_funnel(page: Page, today: date) -> None:
    """Today's checkout day, the last 7 days (two days added, the day before them left out),
    and a funnel without rows."""
    wait_for_funnel(page, "checkout", today, today, "shown")
    options = page.eval_on_selector_all("#funnel-select option", "os => os.map(o => o.value)")
    assert options == ["checkout", "signup"]
    assert funnel_stages(page) == [
        {
            "stage": "page_view:/products",
            "reached": 3,
            "drop_off_percent": pytest.approx(100 / 3),
            "reached_text": "3 · 100.0%",
            "drop_text": "▼ 33.3% drop-off · median 5.0 s to the next",
        },
        {
            "stage": "add_to_cart",
            "reached": 2,
            "drop_off_percent": 50.0,
            "reached_text": "2 · 66.7%",
            "drop_text": "▼ 50.0% drop-off · median 5.0 s to the next",
        },
        {
            "stage": "checkout",
            "reached": 1,
            "drop_off_percent": 100.0,
            "reached_text": "1 · 33.3%",
            "drop_text": "▼ 100.0% drop-off",
        },
        {
            "stage": "purchase",
            "reached": 0,
            "drop_off_percent": None,
            "reached_text": "0 · 0.0%",
            "drop_text": None,
        },
    ]
    assert page.eval_on_selector("#funnel-span .badge", "b => b.textContent") == "live"

    page.click('#funnel-card button[data-range="7"]')
    wait_for_funnel(page, "checkout", today - timedelta(days=6), today, "shown")
    # add_to_cart after 1, 2, 4 and 6 s: the median of the merged durations, 3 s (the days'
    # own medians are 1.5 s and 5 s); checkout after 3.001 s and 5 s
    assert [(s["reached_text"], s["drop_text"]) for s in funnel_stages(page)] == [
        ("5 · 100.0%", "▼ 20.0% drop-off · median 3.0 s to the next"),
        ("4 · 80.0%", "▼ 50.0% drop-off · median 4.0 s to the next"),
        ("2 · 40.0%", "▼ 100.0% drop-off"),
        ("0 · 0.0%", None),
    ]

    page.select_option("#funnel-select", "signup")
    wait_for_funnel(page, "signup", today - timedelta(days=6), today, "empty")
    assert "no signup rows for the last 7 days yet" in panel(page, "funnel-card")[1]
    assert funnel_stages(page) == []


def check_heat_map(page: Page, today: date) -> None:
    """Cohorts of the last 14 days, oldest first; live cells marked; colour by rate."""
    page.wait_for_function(
        "() => document.getElementById('cohort-card').dataset.state === 'shown'",
        timeout=PANEL_WAIT_MS,
    )
    shown = heat_map(page)
    days = [today - timedelta(days=n) for n in (2, 1, 0)]
    assert list(shown) == [d.isoformat() for d in days]  # the 20-day-old cohort is not listed
    two_days, yesterday, new = (shown[d.isoformat()] for d in days)
    assert (two_days["size"], yesterday["size"], new["size"]) == ("40", "7", "3")
    assert all(row["columns"] == 3 for row in shown.values())  # d0 to d2
    assert {k: v[:3] for k, v in two_days["cells"].items()} == {
        "0": (100.0, "100.0%", False),
        "1": (25.0, "25.0%", False),
        "2": (10.0, "10.0%", True),
    }
    assert {k: v[:3] for k, v in yesterday["cells"].items()} == {
        "0": (100.0, "100.0%", False),
        "1": (pytest.approx(100 / 7), "14.3%", True),  # 1 of 7
    }
    assert {k: v[:3] for k, v in new["cells"].items()} == {"0": (100.0, "100.0%", True)}
    colours = {two_days["cells"][k][3] for k in "012"}
    assert len(colours) == 3, colours  # three rates, three colours
    assert two_days["cells"]["0"][3] == yesterday["cells"]["0"][3]  # equal rates, equal colour


def check_experiments(page: Page, published: list[dict[str, Any]]) -> None:
    """Every variant, the control first, with the figures it was published with."""
    page.wait_for_function(
        "() => document.getElementById('experiment-card').dataset.state === 'shown'",
        timeout=PANEL_WAIT_MS,
    )
    shown = experiment_rows(page)
    assert list(shown) == [
        ("checkout_button", "control"),
        ("checkout_button", "green"),
        ("pricing", "control"),
        ("pricing", "cheaper"),
    ]
    by_key = {(r["experiment"], r["variant"]): r for r in published}
    for key, cells in shown.items():
        assert cells == variant_cells(by_key[key]), key
    # the README's example: green converts 20 % against 10 %, p = 0.0328, beats control at 98.3 %
    green = shown["checkout_button", "green"]
    assert [green[f][1] for f in green] == ["110", "20.0%", "8.91", "0.0328", "98.3%", "yes"]
    control = shown["checkout_button", "control"]
    assert [control[f][1] for f in control] == ["120", "10.0%", "4.99", "—", "—", "—"]
    text = panel(page, "experiment-card")[1]
    assert "230 users · 3 also saw another variant" in text
