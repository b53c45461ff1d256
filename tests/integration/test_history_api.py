"""History endpoints answered from the database (web/history_views.py) on a real worker.

The module's worker runs against a fresh database of its own. The test loads rows straight
through the sinks' writer (sinks.writers.write_batch, the path every sink row takes): final KPI
windows over four hours across a UTC midnight, with one live window and one window outside the
range that must not count, page rows (a 10 KB page among them), closed sessions, the days
of the configured ``checkout`` funnel (two final, one live, and a day of a funnel not
configured), the variants of three experiments and the cells of three cohorts. It then asks
the worker over HTTP and compares with sums computed here from the same records, and each
answer of the SPEC 8-9 endpoints with its OpenAPI schema. Another worker, whose database (a
scratch cluster) the test stops and starts, shows the 503 answers, a degraded sink on
``/health`` and the recovery.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from analytics.kpis import ratio
from analytics.timeutil import format_ts, parse_ts
from sinks.migrations import PLAIN, TIMESCALE, migrate_url
from sinks.schema import TABLES
from sinks.writers import write_batch
from tests.integration.test_api import http
from tests.kafka_helpers import produce
from tests.missing_services import service_missing
from tests.polling import poll
from tests.scratch_postgres import PG_BIN, ScratchPostgres
from tests.unit.test_sinks_schema import (
    BUTTON,
    cohort_record,
    experiment_records,
    funnel_record,
)
from tests.worker_process import Services, Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
MINUTE = 60_000
HOUR = 60 * MINUTE
H0 = parse_ts("2025-06-01T22:00:00Z")
WINDOWS = 240  # 22:00 to 02:00 the next day
#: windows without events publish nothing (SPEC 4): every 7th is absent
FINAL = [n for n in range(WINDOWS) if n % 7 != 3]
LIVE_N = 3  # a live row, in the range: must not count
HUGE_PAGE = "/" + "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(10_239))
PAGES = ["/a", "/B", "/b", HUGE_PAGE, "/é"]


def ts(ms: int) -> str:
    return format_ts(ms)


# --------------------------------------------------------------------------- the rows


def kpi_record(n: int, *, is_final: bool = True, scale: int = 1) -> dict[str, Any]:
    """Window n's KPI record; its session figures are averages of integer sums, as the
    combiner computes them, and it carries those sums."""
    start = H0 + n * MINUTE
    events = (10 + n % 13) * scale
    purchases = n % 2
    cents = purchases * (1234 + n) * scale
    active = 2 + n % 4
    sessions = 1 + n % 3
    duration_ms = sessions * 1000 * (n % 17) + n
    bounces = n % (sessions + 1)
    engagement = 10.5 * sessions + n % 7
    conversions = n % 3
    return {
        "window_start": ts(start),
        "window_end": ts(start + MINUTE),
        "total_users": 5 + sum(m % 3 for m in range(n + 1)),
        "active_users": active,
        "new_users": n % 3,
        "total_sessions": sessions,
        "total_page_views": 5 + n % 5,
        "total_events": events,
        "total_revenue": cents / 100,
        "total_revenue_cents": cents,
        "total_conversions": conversions,
        "purchases": purchases,
        "average_order_value": round(ratio(cents, 100 * purchases), 2),
        "revenue_per_user": round(ratio(cents, 100 * active), 2),
        "average_session_duration_seconds": duration_ms / (1000 * sessions),
        "bounce_rate_percent": 100 * bounces / sessions,
        "average_engagement_score": engagement / sessions,
        "conversion_rate_percent": 100 * conversions / sessions,
        "conversions_per_session": conversions / sessions,
        "total_bounces": bounces,
        "total_session_duration_ms": duration_ms,
        "total_engagement_x10000": round(engagement * 10_000),
        "trends": {},
        "late_events_total": n // 10,
        "is_final": is_final,
    }


def page_records() -> list[dict[str, Any]]:
    """Pages in a few windows; '/B' and '/b' tie on views (code point order: '/B' first)."""
    records = []
    for n in (0, 1, 70, 130, 200):
        for index, page in enumerate(PAGES):
            views = {"/a": 5, "/B": 3, "/b": 3, HUGE_PAGE: 4, "/é": 1}[page] + (n == 200)
            records.append(
                {
                    "window_start": ts(H0 + n * MINUTE),
                    "window_end": ts(H0 + (n + 1) * MINUTE),
                    "page": page,
                    "views": views,
                    "unique_visitors": 1 + index % 2,
                    "total_time_on_page_ms": 100 * views + index,
                    "avg_time_on_page_ms": (100 * views + index) / views,
                }
            )
    return records


def session_record(user: str, session: str, start_ms: int, revenue_cents: int) -> dict[str, Any]:
    return {
        "user_id": user,
        "session_id": session,
        "window_start": ts(start_ms),
        "window_end": ts(start_ms + 9000),
        "duration_seconds": 9.0,
        "total_events": 3,
        "actions": {"page_view": 2, "purchase": 1},
        "pages": {"/a": 2},
        "unique_pages": 1,
        "total_duration_ms": 4000,
        "average_duration_ms": 4000 / 3,
        "device_type": "mobile",
        "country": "DE",
        "is_bounce": False,
        "conversions": 1,
        "revenue": revenue_cents / 100,
        "revenue_cents": revenue_cents,
        "engagement_score": 24.4,
    }


def kpi_records() -> list[dict[str, Any]]:
    outside = dict(kpi_record(0, scale=1000), window_start=ts(H0 - MINUTE), window_end=ts(H0))
    live = kpi_record(LIVE_N, is_final=False, scale=1000)
    return [kpi_record(n) for n in FINAL] + [live, outside]


def session_records(users: list[str]) -> list[dict[str, Any]]:
    u1, u2 = users
    return [
        session_record(u1, "s1", H0 + 1000, 2550),
        session_record(u1, "s2", H0 + HOUR, 0),
        session_record(u1, "", H0 + 2 * HOUR, 199),
        session_record(u2, "s1", H0 + 1000, 100),
    ]


JUNE_1, JUNE_2, JUNE_3 = date(2025, 6, 1), date(2025, 6, 2), date(2025, 6, 3)


def funnel_records() -> list[dict[str, Any]]:
    """June 1: three users, to add_to_cart after 4 s and 6 s, one on to checkout after 5 s.
    June 2: two users, to add_to_cart after 1 s and 2 s, one on to checkout after 3.001 s.
    June 3 (live): one user, to add_to_cart after 7 s. A day of a funnel not configured."""
    return [
        funnel_record(((0, 4_000, 9_000), (0, 6_000), (0,)), day=JUNE_1),
        funnel_record(((0, 1_000), (0, 2_000, 5_001)), day=JUNE_2),
        funnel_record(((0, 7_000),), day=JUNE_3, is_final=False),
        funnel_record(((0, 1),), day=JUNE_2) | {"funnel": "signup"},
    ]


#: three experiments: one with a control, one without, and one whose name needs quoting in a path
EXPERIMENTS = {
    "checkout_button": BUTTON,
    "hero banner/v2": {"b": (5, 1, 0, 0), "a": (4, 0, 0, 0)},
    "pricing": {"control": (200, 20, 0, 0), "cheaper": (210, 42, 105_000, 0)},
}


def experiment_stats_records() -> list[dict[str, Any]]:
    return [
        record
        for name, variants in EXPERIMENTS.items()
        for record in experiment_records(variants, name)
    ]


def cohort_records() -> list[dict[str, Any]]:
    """June 1: 40 users, day 0 and 1 final, day 2 live (a later live day 0 record of June 1
    is written first and replaced). June 2: 7 users, day 0 final, day 1 live. June 3: day 0
    live. May 31: two days, before the ranges asked."""
    return [
        cohort_record(0, size=40, retained=40, cumulative_cents=50_000, cohort=JUNE_1),
        cohort_record(1, size=40, retained=10, cohort=JUNE_1),
        cohort_record(2, size=40, retained=4, engagement=(0, 0), is_final=False, cohort=JUNE_1),
        cohort_record(0, size=7, retained=7, cumulative_cents=700, cohort=JUNE_2),
        cohort_record(1, size=7, retained=1, cumulative_cents=1_999, cohort=JUNE_2, is_final=False),
        cohort_record(0, size=3, retained=3, cumulative_cents=0, cohort=JUNE_3, is_final=False),
        cohort_record(0, size=2, retained=2, cohort=date(2025, 5, 31)),
        cohort_record(1, size=2, retained=1, cohort=date(2025, 5, 31)),
    ]


async def load(url: str, users: list[str]) -> None:
    await migrate_url(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table, records in (
            ("kpi_metrics", kpi_records()),
            ("page_view_stats", page_records()),
            ("session_metrics", session_records(users)),
            ("funnel_stats", funnel_records()),
            ("experiment_stats", experiment_stats_records()),
            ("cohort_stats", cohort_records()),
        ):
            result = await write_batch(conn, TABLES[table], records)
            assert (result.written, result.rejected) == (len(records), []), table


# --------------------------------------------------------------------------- expected


def expected_buckets(width_ms: int, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
    """The final windows starting in [from, to), summed per UTC bucket of ``width_ms``."""
    groups: dict[int, list[int]] = {}
    for n in FINAL:
        start = H0 + n * MINUTE
        if from_ms <= start < to_ms:
            groups.setdefault(start // width_ms * width_ms, []).append(n)
    buckets = []
    for bucket, ns in sorted(groups.items()):
        records = [kpi_record(n) for n in ns]

        def total(name: str, records: list[dict[str, Any]] = records) -> Any:
            return sum(r[name] for r in records)

        sessions = total("total_sessions")
        cents = total("total_revenue_cents")
        duration_ms = total("total_session_duration_ms")
        bounces = total("total_bounces")
        engagement = total("total_engagement_x10000") / 10_000
        buckets.append(
            {
                "bucket_start": ts(bucket),
                "bucket_end": ts(bucket + width_ms),
                "windows": len(records),
                "total_events": total("total_events"),
                "total_page_views": total("total_page_views"),
                "total_conversions": total("total_conversions"),
                "purchases": total("purchases"),
                "total_revenue": round(cents / 100, 2),
                "total_revenue_cents": cents,
                "new_users": total("new_users"),
                "total_users": max(r["total_users"] for r in records),
                "peak_active_users": max(r["active_users"] for r in records),
                "active_user_windows": total("active_users"),
                "session_windows": sessions,
                "average_order_value": round(ratio(cents, 100 * total("purchases")), 2),
                "average_session_duration_seconds": pytest.approx(duration_ms / 1000 / sessions),
                "bounce_rate_percent": pytest.approx(100 * bounces / sessions),
                "average_engagement_score": pytest.approx(engagement / sessions),
                "conversion_rate_percent": pytest.approx(
                    100 * total("total_conversions") / sessions
                ),
                "conversions_per_session": pytest.approx(total("total_conversions") / sessions),
                "late_events_total": max(r["late_events_total"] for r in records),
            }
        )
    return buckets


def expected_pages(from_ms: int, to_ms: int, limit: int) -> list[dict[str, Any]]:
    totals: dict[str, list[int]] = {}
    for r in page_records():
        if from_ms <= parse_ts(r["window_start"]) < to_ms:
            cell = totals.setdefault(r["page"], [0, 0, 0])
            cell[0] += r["views"]
            cell[1] += r["unique_visitors"]
            cell[2] += r["total_time_on_page_ms"]
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [
        {
            "page": page,
            "views": views,
            "visitor_windows": visitors,
            "total_time_on_page_ms": time_ms,
            "avg_time_on_page_ms": pytest.approx(time_ms / views),
        }
        for page, (views, visitors, time_ms) in ranked
    ]


# --------------------------------------------------------------------------- fixtures


def _admin(server_url: str, statement: str) -> None:
    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(statement.encode())


@dataclass
class Loaded:
    worker: Worker
    database: str
    users: list[str]
    prefix: str
    bootstrap: str


@pytest.fixture(scope="module")
def loaded(services: Services, module_worker_factory: WorkerPool) -> Iterator[Loaded]:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    name = f"history_{uuid.uuid4().hex[:10]}"
    _admin(services.database_url, f'CREATE DATABASE "{name}"')
    database = urllib.parse.urlsplit(services.database_url)._replace(path=f"/{name}").geturl()
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}-"
        worker = module_worker_factory(
            prefix, f"g{uuid.uuid4().hex[:8]}", extra_env={"DATABASE_URL": database}
        )
        worker.wait_ready(PARTITIONS, timeout=120)
        users = [f"user-{uuid.uuid4().hex[:6]}-{n}" for n in (1, 2)]
        asyncio.run(load(database, users))
        yield Loaded(worker, database, users, prefix, services.kafka_bootstrap)
    finally:
        module_worker_factory.stop_all()
        _admin(services.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _get(worker: Worker, path: str, **params: Any) -> tuple[int, Any]:
    return http(worker, f"{path}?{urllib.parse.urlencode(params)}")


# --------------------------------------------------------------------------- KPIs


@pytest.mark.parametrize(
    ("bucket", "width", "from_ms", "to_ms", "count"),
    [
        ("1h", HOUR, H0, H0 + 4 * HOUR, 4),
        ("1d", 24 * HOUR, H0, H0 + 4 * HOUR, 2),  # across the UTC midnight
        ("1m", MINUTE, H0, H0 + 30 * MINUTE, 26),  # one window each: absent windows absent
        ("1h", HOUR, H0 + 30 * MINUTE, H0 + 90 * MINUTE, 2),  # off the grid: partial buckets
    ],
)
def test_bucketed_kpis_are_sums_of_the_final_windows(
    loaded: Loaded, bucket: str, width: int, from_ms: int, to_ms: int, count: int
) -> None:
    status, body = _get(loaded.worker, "/api/kpis", bucket=bucket, **{"from": ts(from_ms)},
                        to=ts(to_ms))  # fmt: skip
    assert status == 200, body
    assert (body["source"], body["bucket"], body["from"], body["to"]) == (
        "database",
        bucket,
        ts(from_ms),
        ts(to_ms),
    )
    assert len(body["buckets"]) == count
    assert body["buckets"] == expected_buckets(width, from_ms, to_ms)


def test_a_one_minute_bucket_is_its_window(loaded: Loaded) -> None:
    n = 11
    assert n in FINAL
    status, body = _get(loaded.worker, "/api/kpis", bucket="1m", **{"from": ts(H0 + n * MINUTE)},
                        to=ts(H0 + (n + 1) * MINUTE))  # fmt: skip
    assert status == 200
    [bucket] = body["buckets"]
    window = kpi_record(n)
    for name in (
        "total_events",
        "total_revenue_cents",
        "average_order_value",
        "bounce_rate_percent",
        "average_session_duration_seconds",
        "average_engagement_score",
        "conversion_rate_percent",
    ):
        assert bucket[name] == pytest.approx(window[name]), name
    assert (bucket["session_windows"], bucket["active_user_windows"]) == (
        window["total_sessions"],
        window["active_users"],
    )


def test_live_rows_and_windows_outside_the_range_do_not_count(loaded: Loaded) -> None:
    # the live row (scaled by 1000) is window 3 of the first hour, the outside one at 21:59
    status, body = _get(loaded.worker, "/api/kpis", bucket="1h", **{"from": ts(H0 - HOUR)},
                        to=ts(H0 + HOUR))  # fmt: skip
    assert status == 200
    assert [b["bucket_start"] for b in body["buckets"]] == [ts(H0 - HOUR), ts(H0)]
    before, first = body["buckets"]
    assert before["windows"] == 1 and before["total_events"] == kpi_record(0)["total_events"] * 1000
    assert first["total_events"] == sum(kpi_record(n)["total_events"] for n in FINAL if n < 60)
    assert first["windows"] == len([n for n in FINAL if n < 60])


def test_kpis_without_a_bucket_still_read_the_live_state(loaded: Loaded) -> None:
    # no event went through this worker's pipeline: the live state is empty, the table is not
    status, body = _get(loaded.worker, "/api/kpis", **{"from": ts(H0)}, to=ts(H0 + HOUR))
    assert (status, body["source"], body["windows"]) == (200, "live", [])
    status, body = _get(loaded.worker, "/api/kpis", **{"from": ts(H0)}, bucket="")
    assert (status, body["source"]) == (200, "live")


# --------------------------------------------------------------------------- pages


def test_top_pages_over_a_range_come_from_the_database(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/pages/top", **{"from": ts(H0)},
                        to=ts(H0 + 4 * HOUR), limit=10)  # fmt: skip
    assert status == 200
    assert (body["source"], body["limit"]) == ("database", 10)
    assert body["pages"] == expected_pages(H0, H0 + 4 * HOUR, 10)
    # the 10 KB page is whole, and '/B' comes before '/b' (code points, as the live API)
    assert [p["page"] for p in body["pages"]] == ["/a", HUGE_PAGE, "/B", "/b", "/é"]

    status, body = _get(loaded.worker, "/api/pages/top", **{"from": ts(H0 + HOUR)},
                        to=ts(H0 + 4 * HOUR), limit=2)  # fmt: skip
    assert status == 200
    assert body["pages"] == expected_pages(H0 + HOUR, H0 + 4 * HOUR, 2)
    assert body["pages"][0]["views"] == 5 + 5 + 6  # windows 70, 130, 200

    status, body = _get(loaded.worker, "/api/pages/top", minutes=60)
    assert (status, body["source"], body["pages"]) == (200, "live", [])


# --------------------------------------------------------------------------- sessions


def test_sessions_of_a_user_from_the_database(loaded: Loaded) -> None:
    u1, u2 = loaded.users
    status, body = _get(loaded.worker, "/api/sessions", user_id=u1)
    assert status == 200
    assert (body["source"], body["user_id"], body["truncated"]) == ("database", u1, False)
    assert [(s["session_id"], s["window_start"]) for s in body["sessions"]] == [
        ("s1", ts(H0 + 1000)),
        ("s2", ts(H0 + HOUR)),
        ("", ts(H0 + 2 * HOUR)),
    ]
    first = body["sessions"][0]
    assert first == {
        **session_record(u1, "s1", H0 + 1000, 2550),
        "average_duration_ms": pytest.approx(4000 / 3),
        "open": False,
    }

    status, body = _get(loaded.worker, "/api/sessions", user_id=u1, **{"from": ts(H0 + HOUR)},
                        to=ts(H0 + 2 * HOUR))  # fmt: skip
    assert [s["session_id"] for s in body["sessions"]] == ["s2"]
    status, body = _get(loaded.worker, "/api/sessions", user_id=u1, limit=2)
    assert (body["truncated"], len(body["sessions"])) == (True, 2)
    status, body = _get(loaded.worker, "/api/sessions", user_id=u2)
    assert [(s["user_id"], s["revenue_cents"]) for s in body["sessions"]] == [(u2, 100)]
    status, body = _get(loaded.worker, "/api/sessions", user_id="nobody-" + u1)
    assert (status, body["sessions"], body["truncated"]) == (200, [], False)


# --------------------------------------------------------------------------- funnels


def test_the_configured_funnels(loaded: Loaded) -> None:
    assert http(loaded.worker, "/api/funnels") == (
        200,
        {
            "funnels": [
                {
                    "name": "checkout",
                    "window": "1d",
                    "window_ms": 86_400_000,
                    "stages": ["page_view:/products", "add_to_cart", "checkout", "purchase"],
                }
            ]
        },
    )


def _stages(*figures: tuple[int, float | None, float | None]) -> list[dict[str, Any]]:
    texts = ["page_view:/products", "add_to_cart", "checkout", "purchase"]
    return [
        {"stage": text, "reached": reached, "drop_off_percent": drop, "median_seconds": median}
        for text, (reached, drop, median) in zip(texts, figures, strict=True)
    ]


def test_a_funnel_over_days_adds_users_and_merges_durations(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/funnels/checkout", **{"from": "2025-06-01"},
                        to="2025-06-02")  # fmt: skip
    assert status == 200, body
    first, second = funnel_records()[:2]
    assert body == {
        "source": "database",
        "funnel": "checkout",
        "from": "2025-06-01",
        "to": "2025-06-02",
        "is_final": True,
        "days": [first, second],  # as published, the other funnel's day left out
        "total": {
            # add_to_cart after 1, 2, 4, 6 s: an even count, the mean of 2 s and 4 s (the
            # days' own medians are 5 s and 1.5 s); checkout after 3.001 s and 5 s
            "stages": _stages((5, 20.0, 3.0), (4, 50.0, 4.0005), (2, 100.0, None), (0, None, None))
        },
        "excluded_from_total": [],
    }
    assert [s["median_seconds"] for s in first["stages"][:1] + second["stages"][:1]] == [5.0, 1.5]


def test_a_funnel_range_with_a_live_day_is_live(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/funnels/checkout", **{"from": "2025-06-01"},
                        to="2025-06-03")  # fmt: skip
    assert status == 200, body
    assert body["is_final"] is False
    assert [(d["day"], d["is_final"]) for d in body["days"]] == [
        ("2025-06-01", True),
        ("2025-06-02", True),
        ("2025-06-03", False),
    ]
    # add_to_cart after 1, 2, 4, 6, 7 s: the middle one
    assert body["total"]["stages"] == _stages(
        (6, 100 * (1 / 6), 4.0), (5, 60.0, 4.0005), (2, 100.0, None), (0, None, None)
    )


def test_a_funnel_range_without_attempts_is_final_once_later_days_are(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/funnels/checkout", **{"from": "2025-05-01"},
                        to="2025-05-31")  # fmt: skip
    assert status == 200, body
    assert (body["days"], body["is_final"]) == ([], True)  # June 2 is final: May is too
    assert body["total"]["stages"] == _stages((0, 0.0, None), (0, 0.0, None), (0, 0.0, None),
                                              (0, None, None))  # fmt: skip
    status, body = _get(loaded.worker, "/api/funnels/checkout", **{"from": "2025-06-04"},
                        to="2025-06-05")  # fmt: skip
    assert (status, body["days"], body["is_final"]) == (200, [], False)


def test_a_funnel_that_is_not_configured_is_404_naming_it(loaded: Loaded) -> None:
    # signup has a day in the table, but the configuration does not name it
    status, body = _get(loaded.worker, "/api/funnels/signup", **{"from": "2025-06-01"},
                        to="2025-06-02")  # fmt: skip
    assert (status, body) == (
        404,
        {"error": "funnel 'signup' is not configured (configured: checkout)"},
    )


# --------------------------------------------------------------------------- experiments


def valid(worker: Worker, body: Any, path: str, status: str = "200") -> None:
    """Check ``body`` against the worker's own OpenAPI schema of ``path``'s answer."""
    _, document = http(worker, "/openapi.json")
    schema = document["paths"][path]["get"]["responses"][status]["content"]["application/json"]
    jsonschema.Draft202012Validator({**document, **schema["schema"]}).validate(body)


def test_the_stored_experiments_with_their_variants_as_published(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/api/experiments")
    assert status == 200, body
    valid(loaded.worker, body, "/api/experiments")
    published = experiment_stats_records()
    assert [e["experiment"] for e in body["experiments"]] == [
        "checkout_button",
        "hero banner/v2",
        "pricing",
    ]
    assert (body["source"], body["control_variant"], body["limit"], body["truncated"]) == (
        "database",
        "control",
        100,
        False,
    )
    button, hero, pricing = body["experiments"]
    # every variant exactly as experiment-stats published it, the control first
    assert button["variants"] == published[:2]
    assert [v["variant"] for v in hero["variants"]] == ["a", "b"]  # no control: by name
    assert hero["variants"] == sorted(published[2:4], key=lambda v: v["variant"])
    assert pricing["variants"] == published[4:]
    assert (button["users"], button["variant_conflicts"]) == (230, 3)
    green = button["variants"][1]
    assert (green["users"], green["converted_users"], green["conversion_rate_percent"]) == (
        110,
        22,
        20.0,
    )
    assert (green["revenue"], green["revenue_cents"], green["revenue_per_user"]) == (
        980.1,
        98_010,
        8.91,
    )
    assert green["significant"] is True and 0 < green["p_value"] < 0.05
    assert pricing["variants"][1]["significant"] is True  # 10 % against 20 %, 200+ users each
    for experiment in body["experiments"]:
        assert experiment["updated_at"].endswith("Z")


def test_the_experiment_list_is_limited_and_says_so(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/experiments", limit=2)
    assert status == 200, body
    assert [e["experiment"] for e in body["experiments"]] == ["checkout_button", "hero banner/v2"]
    assert (body["limit"], body["truncated"]) == (2, True)


def test_one_experiment_by_name(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/api/experiments/checkout_button")
    assert status == 200, body
    valid(loaded.worker, body, "/api/experiments/{name}")
    assert body["source"] == "database" and body["control_variant"] == "control"
    assert (body["experiment"], body["users"]) == ("checkout_button", 230)
    assert body["variants"] == experiment_stats_records()[:2]
    quoted = "/api/experiments/" + urllib.parse.quote("hero banner/v2", safe="")
    status, body = http(loaded.worker, quoted)
    assert (status, body["experiment"]) == (200, "hero banner/v2"), body


def test_an_experiment_without_stored_figures_is_404_naming_it(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/api/experiments/no_such_test")
    assert (status, body) == (
        404,
        {
            "error": "experiment 'no_such_test' has no stored figures (no exposure yet)",
            "source": "database",
        },
    )
    valid(loaded.worker, body, "/api/experiments/{name}", "404")


# --------------------------------------------------------------------------- cohorts


def test_a_retention_triangle_of_the_stored_cohorts(loaded: Loaded) -> None:
    status, body = _get(loaded.worker, "/api/cohorts", **{"from": "2025-06-01"}, to="2025-06-03")
    assert status == 200, body
    valid(loaded.worker, body, "/api/cohorts")
    june_1, june_2, june_3 = cohort_records()[:3], cohort_records()[3:5], cohort_records()[5:6]
    assert body == {
        "source": "database",
        "from": "2025-06-01",
        "to": "2025-06-03",
        "days": 90,  # cohorts.max_day_offset
        "cohorts": [
            {"cohort": "2025-06-01", "cohort_size": 40, "days": june_1},
            {"cohort": "2025-06-02", "cohort_size": 7, "days": june_2},
            {"cohort": "2025-06-03", "cohort_size": 3, "days": june_3},
        ],
    }
    first = body["cohorts"][0]["days"]
    assert [cell["retention_rate_percent"] for cell in first] == [100.0, 25.0, 10.0]
    assert [cell["cumulative_revenue_cents"] for cell in first] == [50_000, 123_456, 123_456]
    assert [cell["is_final"] for cell in first] == [True, True, False]


def test_a_retention_triangle_up_to_a_day_offset(loaded: Loaded) -> None:
    status, body = _get(
        loaded.worker, "/api/cohorts", **{"from": "2025-05-01"}, to="2025-06-02", days=1
    )
    assert status == 200, body
    assert [(c["cohort"], [d["day_offset"] for d in c["days"]]) for c in body["cohorts"]] == [
        ("2025-05-31", [0, 1]),
        ("2025-06-01", [0, 1]),
        ("2025-06-02", [0, 1]),
    ]
    status, body = _get(loaded.worker, "/api/cohorts", **{"from": "2025-07-01"}, to="2025-07-31")
    assert (status, body["cohorts"]) == (200, [])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/api/kpis?bucket=2h&from=2025-06-01T00:00:00Z&to=2025-06-02T00:00:00Z",
         "bucket: must be one of 1m, 1h, 1d, got '2h'"),
        ("/api/kpis?bucket=1h&to=2025-06-02T00:00:00Z", "from: required with bucket"),
        ("/api/kpis?bucket=1h&from=2025-06-02T00:00:00Z&to=2025-06-01T00:00:00Z",
         "to: must be later than from"),
        ("/api/kpis?bucket=1m&from=2025-01-01T00:00:00Z&to=2025-06-01T00:00:00Z",
         "bucket: from-to spans 217440 buckets of 1m, at most 10080"),
        ("/api/kpis?bucket=1h&from=2025-06-01T00:00:00Z&to=2025-06-02T00:00:00Z&minutes=5",
         "minutes: unknown parameter"),
        ("/api/pages/top?from=2025-06-01T00:00:00Z&minutes=60",
         "minutes: cannot be combined with from/to"),
        ("/api/pages/top?from=2025-06-01T00:00:00Z", "to: required with from or to"),
        ("/api/pages/top?from=x&to=2025-06-01T00:00:00Z", "from: must be an RFC 3339 timestamp"),
        ("/api/pages/top?from=2025-06-01T00:00:00Z&to=2025-06-02T00:00:00Z&limit=0",
         "limit: must be a whole number from 1 to 100"),
        ("/api/sessions", "user_id: required"),
        ("/api/sessions?user_id=" + "x" * 129, "user_id: must be 1 to 128 characters"),
        ("/api/sessions?user_id=u&limit=5000", "limit: must be a whole number from 1 to 1000"),
        ("/api/sessions?user_id=u&page=2", "page: unknown parameter"),
        ("/api/funnels?name=checkout", "name: unknown parameter"),
        ("/api/funnels/checkout?to=2025-06-02", "from: required, a date like 2026-01-01"),
        ("/api/funnels/checkout?from=2025-06-01", "to: required"),
        ("/api/funnels/checkout?from=2025-06-01T00:00:00Z&to=2025-06-02",
         "from: must be a date like 2026-01-01"),
        ("/api/funnels/checkout?from=2025-06-01&to=2025-06-31",
         "to: '2025-06-31' is not a calendar date"),
        ("/api/funnels/checkout?from=2025-06-02&to=2025-06-01",
         "to: must not be before from (2025-06-02)"),
        ("/api/funnels/checkout?from=2024-06-01&to=2025-06-02",
         "to: from-to spans 367 days, at most 366"),
        ("/api/funnels/checkout?from=2025-06-01&to=2025-06-02&limit=3", "limit: unknown parameter"),
        ("/api/experiments?limit=0", "limit: must be a whole number from 1 to 1000, got '0'"),
        ("/api/experiments?name=pricing", "name: unknown parameter"),
        ("/api/experiments/pricing?variant=control", "variant: unknown parameter"),
        ("/api/cohorts?to=2025-06-02", "from: required, a date like 2026-01-01"),
        ("/api/cohorts?from=2025-06-01", "to: required, a date like 2026-01-01"),
        ("/api/cohorts?from=2025-06-02&to=2025-06-01", "to: must not be before from (2025-06-02)"),
        ("/api/cohorts?from=2024-06-01&to=2025-06-02", "to: from-to spans 367 days, at most 366"),
        ("/api/cohorts?from=2025-06-01&to=2025-06-02&days=91",
         "days: must be a whole number from 0 to 90, got '91'"),
        ("/api/cohorts?from=2025-06-01&to=2025-06-02&days=x", "days: must be a whole number"),
        ("/api/cohorts?from=2025-06-01&to=2025-06-02&limit=3", "limit: unknown parameter"),
    ],
)  # fmt: skip
def test_bad_parameters_are_400_naming_the_parameter(loaded: Loaded, path: str, error: str) -> None:
    status, body = http(loaded.worker, path)
    assert status == 400
    assert list(body) == ["error"]
    assert body["error"].startswith(error)


def test_openapi_documents_the_history_endpoints(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/openapi.json")
    assert status == 200
    kpis = {p["name"] for p in body["paths"]["/api/kpis"]["get"]["parameters"]}
    pages = {p["name"] for p in body["paths"]["/api/pages/top"]["get"]["parameters"]}
    sessions = {p["name"] for p in body["paths"]["/api/sessions"]["get"]["parameters"]}
    funnel = {p["name"] for p in body["paths"]["/api/funnels/{name}"]["get"]["parameters"]}
    experiments = {p["name"] for p in body["paths"]["/api/experiments"]["get"]["parameters"]}
    experiment = {p["name"] for p in body["paths"]["/api/experiments/{name}"]["get"]["parameters"]}
    cohorts = {p["name"] for p in body["paths"]["/api/cohorts"]["get"]["parameters"]}
    assert (kpis, pages, sessions, funnel, experiments, experiment, cohorts) == (
        {"from", "to", "bucket"},
        {"minutes", "from", "to", "limit"},
        {"user_id", "from", "to", "limit"},
        {"name", "from", "to"},
        {"limit"},
        {"name"},
        {"from", "to", "days"},
    )
    for path in ("/api/experiments", "/api/experiments/{name}", "/api/cohorts"):
        assert {"200", "400", "503"} <= set(body["paths"][path]["get"]["responses"]), path
    assert "404" in body["paths"]["/api/experiments/{name}"]["get"]["responses"]
    schemas = set(body["components"]["schemas"])
    assert {"Experiment", "ExperimentVariant", "Cohort", "CohortCell"} <= schemas
    responses = body["paths"]["/api/funnels/{name}"]["get"]["responses"]
    assert {"200", "400", "404", "503"} <= set(responses)
    assert {"Funnel", "FunnelDay", "FunnelStage"} <= set(body["components"]["schemas"])
    assert "503" in body["paths"]["/api/sessions"]["get"]["responses"]
    assert "sinks" in body["components"]["schemas"]["Health"]["properties"]


# --------------------------------------------------------------------------- health


def database_mode(url: str) -> str:
    """The mode the migrations must have found: TimescaleDB once its extension is created
    (they create it wherever they can), else plain PostgreSQL."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return TIMESCALE if row is not None else PLAIN


def test_health_shows_the_sinks(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/health")
    assert status == 200
    sinks = body["sinks"]
    assert set(sinks["sinks"]) == set(TABLES)
    assert sinks["database"]["mode"] == database_mode(loaded.database)
    assert "history_" in sinks["database"]["url"]

    record = {
        "window_start": ts(H0),
        "window_end": ts(H0 + MINUTE),
        "dimension": "device",
        "value": "mobile",
        "events": 3,
        "users": 2,
        "page_views": 1,
        "revenue": 1.0,
        "revenue_cents": 100,
    }
    asyncio.run(
        produce(loaded.bootstrap, f"{loaded.prefix}traffic-stats", [(b"k", orjson.dumps(record))])
    )
    status, body = poll(
        lambda: http(loaded.worker, "/health"),
        lambda answer: answer[1]["sinks"]["sinks"]["dimension_stats"]["status"] == "ok",
        60,
        "the dimension_stats sink writing",
    )
    entry = body["sinks"]["sinks"]["dimension_stats"]
    assert (status, body["status"]) == (200, "ok")
    assert (entry["rows_written"], entry["rows_waiting"], entry["last_error"]) == (1, 0, None)
    assert entry["last_write"] is not None


# --------------------------------------------------------------------------- database down


@pytest.fixture
def scratch_postgres() -> Iterator[ScratchPostgres]:
    """A PostgreSQL cluster of this test alone, which it stops and starts."""
    if not (PG_BIN / "initdb").exists():
        service_missing("PostgreSQL server binaries", f"no initdb in {PG_BIN}")
    cluster = ScratchPostgres(Path(tempfile.mkdtemp(prefix="history-pg-")))
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()


def test_a_database_outage_gives_503_and_a_degraded_sink(
    scratch_postgres: ScratchPostgres,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
) -> None:
    """While the database is down the worker keeps running (its sinks wait): the history
    endpoints answer 503 with the reason at once, and /health stays 200 but says degraded.
    Once the database is back, the sink writes and both answer normally again."""
    worker = worker_factory(
        topic_prefix, group_id, extra_env={"DATABASE_URL": scratch_postgres.url}
    )
    worker.wait_ready(PARTITIONS, timeout=120)
    kpis = f"/api/kpis?bucket=1h&from={ts(H0)}&to={ts(H0 + HOUR)}"
    assert http(worker, kpis) == (
        200,
        {"source": "database", "from": ts(H0), "to": ts(H0 + HOUR), "bucket": "1h",
         "buckets": []},
    )  # fmt: skip

    scratch_postgres.stop("immediate")
    for path in (
        kpis,
        f"/api/pages/top?from={ts(H0)}&to={ts(H0 + HOUR)}",
        "/api/sessions?user_id=someone",
        "/api/funnels/checkout?from=2025-06-01&to=2025-06-02",
        "/api/experiments",
        "/api/experiments/pricing",
        "/api/cohorts?from=2025-06-01&to=2025-06-02",
    ):
        started = time.monotonic()
        status, body = http(worker, path)
        assert time.monotonic() - started < 10, path
        assert status == 503, (path, body)
        assert body["source"] == "database"
        assert body["error"].startswith("database unavailable: OperationalError: ")
        assert "refused" in body["error"], body
    assert http(worker, "/api/sessions")[0] == 400  # parameters are still checked first
    status, body = http(worker, "/health")
    assert (status, body["status"], body["sinks"]["status"]) == (200, "ok", "starting")

    record = kpi_record(0)
    asyncio.run(
        produce(
            services.kafka_bootstrap, f"{topic_prefix}live-kpis", [(b"w", orjson.dumps(record))]
        )
    )
    status, body = poll(
        lambda: http(worker, "/health"),
        lambda answer: answer[1]["sinks"]["status"] == "degraded",
        60,
        "the kpi_metrics sink degraded",
    )
    assert (status, body["status"], body["kafka"]["connected"]) == (200, "degraded", True)
    entry = body["sinks"]["sinks"]["kpi_metrics"]
    assert entry["status"] == "degraded" and entry["rows_waiting"] == 1
    assert entry["failed_attempts"] >= 1 and "OperationalError" in entry["last_error"]
    assert entry["degraded_since"] is not None and worker.alive

    scratch_postgres.start()
    status, body = poll(
        lambda: http(worker, "/health"),
        lambda answer: answer[1]["sinks"]["sinks"]["kpi_metrics"]["status"] == "ok",
        60,
        "the kpi_metrics sink writing again",
    )
    assert (status, body["status"]) == (200, "ok")
    assert body["sinks"]["sinks"]["kpi_metrics"]["rows_written"] == 1
    status, body = http(worker, kpis)
    assert status == 200
    assert [(b["bucket_start"], b["total_events"]) for b in body["buckets"]] == [
        (ts(H0), record["total_events"])
    ]
