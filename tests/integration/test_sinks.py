"""Database sinks against the real Kafka and PostgreSQL (SPEC sections 3-6, sinks/).

Every test works in a database of its own: a fresh ``CREATE DATABASE`` on the shared server,
or, for the outage test, a scratch cluster (initdb in a temporary directory, a free port) that
the test stops and starts while traffic flows. Workers get it through ``DATABASE_URL``.

The tables are checked against the batch reference (tests/reference/batch.py) computed from
what the enriched topic holds, like tests/e2e/test_analytics_contract.py, and against the
output topics themselves: one row per record key, with the latest value (a final KPI, funnel
or cohort record wins over live ones), nothing missing, nothing extra. The traffic walks the
configured ``checkout`` funnel and carries an A/B test, and the closing events come two days
later, so its funnel day and its cohort's first two days are final too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from agents.behavior_tracker import session_record
from analytics.kpis import kpi_figures, trends
from analytics.sessions import SessionSummary
from analytics.timeutil import format_ts, parse_ts
from analytics.traffic import dimension_rows, page_rows
from analytics.validation import MAX_AMOUNT
from app.settings import load_settings
from generator.traffic import TrafficProfile, generate_labelled
from sinks import migrations as migrations_module
from sinks import queries, reader
from sinks.migrations import MIGRATIONS, migrate_url
from sinks.schema import TABLES, Row
from sinks.writers import write_batch, write_one_by_one
from tests import contract
from tests.databases import fresh_database
from tests.kafka_helpers import (
    SENTINEL_PREFIX,
    Outgoing,
    TopicReader,
    closing_messages,
    produce,
    read_until,
)
from tests.missing_services import service_missing
from tests.reference import batch as reference
from tests.scratch_postgres import ScratchPostgres
from tests.scratch_postgres import missing as missing_postgres_binaries
from tests.scratch_postgres import scratch_postgres as own_postgres
from tests.sink_tables import SINK_TOPICS, differences, latest_rows, table_rows
from tests.unit.test_sinks_schema import (
    BUTTON,
    cohort_record,
    experiment_records,
    funnel_record,
)
from tests.worker_process import REPO_ROOT, Services, Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
WINDOW_MS = 60_000
GAP_MS = 1_800_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPAN_MS = 3600 * 1000
DAY_MS = 86_400_000
#: past the traffic's sessions and windows, and past its funnel days' end + window (24 h)
CLOSING_TS = START_MS + 2 * DAY_MS + 10 * WINDOW_MS
LAST_WINDOW = (START_MS + SPAN_MS - 1) // WINDOW_MS * WINDOW_MS
SETTINGS = load_settings()
#: the funnels of the shipped configuration (configs/analytics-dashboard.yaml), as the
#: reference reads them
FUNNELS = contract.funnel_config(SETTINGS.funnels)
PROFILE = TrafficProfile(
    seed=20261128,
    users=120,
    start_ms=START_MS,
    span_ms=SPAN_MS,
    events=6_000,
    disorder_ms=8_000,
    duplicate_rate=0.02,
    invalid_rate=0.01,
    experiment="checkout_button",
)
#: the traffic's cohort (its first and only day) and the days the closing events make final
COHORT_DAY, LAST_FINAL_DAY = "2026-01-01", "2026-01-02"


# --------------------------------------------------------------------------- databases


@pytest.fixture
async def database(services: Services) -> AsyncIterator[str]:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    async with fresh_database(services.database_url) as url:
        yield url


@pytest.fixture
def scratch_postgres() -> Iterator[ScratchPostgres]:
    problem = missing_postgres_binaries()
    if problem:
        service_missing("PostgreSQL server binaries", problem)
    with own_postgres(Path(tempfile.mkdtemp(prefix="sink-pg-"))) as cluster:
        yield cluster


# --------------------------------------------------------------------------- traffic


Messages = list[tuple[bytes | None, bytes]]


def _traffic() -> tuple[Messages, Messages]:
    """The seeded traffic, then one closing event per partition far later in event time, which
    moves every watermark past the traffic: all its windows and sessions become final."""
    traffic: Messages = []
    for event, _kind in generate_labelled(PROFILE):
        if isinstance(event, bytes):
            traffic.append((None, event))
        else:
            user = event.get("user_id")
            traffic.append((user.encode() if isinstance(user, str) else None, orjson.dumps(event)))
    return traffic, closing_messages(PARTITIONS, CLOSING_TS)


def _traffic_users() -> set[str]:
    return {
        e["user_id"]
        for e, kind in generate_labelled(PROFILE)
        if kind == "valid" and isinstance(e, dict)
    }


async def _wait_for_pipeline(bootstrap: str, prefix: str, timeout: float = 240) -> None:
    """Until the last traffic window is final on live-kpis, every traffic user's sessions
    are on session-metrics, every funnel day of the reference is final on funnel-stats, the
    latest experiment-stats rows are the reference's and the cohort rows of the days the
    closing events passed are final: the pipeline has published every row of the traffic."""
    await read_until(
        bootstrap,
        f"{prefix}live-kpis",
        lambda records: any(
            r.json()["is_final"] and parse_ts(r.json()["window_start"]) == LAST_WINDOW
            for r in records
        ),
        timeout,
    )
    users = _traffic_users()
    await read_until(
        bootstrap,
        f"{prefix}session-metrics",
        lambda records: {r.key.decode() for r in records if r.key} >= users,
        timeout,
    )
    enriched = await _topic_values(bootstrap, f"{prefix}user-behavior-enriched")
    days = set(reference.funnel_stats(enriched, FUNNELS))
    assert days, "the traffic walks no funnel: the funnel_stats checks would hold vacuously"
    await read_until(
        bootstrap,
        f"{prefix}funnel-stats",
        lambda records: (
            {(r.json()["funnel"], r.json()["day"]) for r in records if r.json()["is_final"]} >= days
        ),
        timeout,
    )
    traffic = _traffic_events(enriched)
    experiments = reference.experiments(traffic)
    assert experiments["checkout_button"]["variant_conflicts"] > 0, "no conflicts to store"
    spec = SETTINGS.experiments.spec()

    def latest(records: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r.json()["experiment"], r.json()["variant"]): r.json() for r in records}

    # experiment rows come on change, at most once a second: until the last one is there
    await read_until(
        bootstrap,
        f"{prefix}experiment-stats",
        lambda records: not contract.compare_experiments(latest(records), experiments, spec),
        timeout,
    )
    cells = set(_expected_cohorts(traffic))
    await read_until(
        bootstrap,
        f"{prefix}cohort-stats",
        lambda records: (
            {(r.json()["cohort"], r.json()["day_offset"]) for r in records if r.json()["is_final"]}
            >= cells
        ),
        timeout,
    )


def _traffic_events(enriched: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The enriched events of the traffic: one copy each, without the closing events."""
    return [
        e
        for e in contract.one_copy_each(enriched, lambda e: e["event_id"])
        if not str(e["user_id"]).startswith(SENTINEL_PREFIX)
    ]


def _expected_cohorts(traffic: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The reference's cohort rows of the days the closing events made final."""
    cells = reference.cohorts(traffic, SETTINGS.cohorts.max_day_offset, GAP_MS, LAST_FINAL_DAY)
    assert set(cells) == {(COHORT_DAY, 0), (COHORT_DAY, 1)}, sorted(cells)
    return cells


def settled(table: str, row: Mapping[str, Any]) -> bool:
    """Rows of the traffic, which no longer change once the pipeline has published them. The
    closing events' own window stays open until the partitions have been idle for a window
    and the grace (event time then follows the wall clock), and their sessions for half an
    hour: those rows are still moving while a test looks."""
    if table == "session_metrics":
        return not str(row["user_id"]).startswith(SENTINEL_PREFIX)
    if table in ("funnel_stats", "cohort_stats"):
        return bool(row["is_final"])
    if table == "experiment_stats":  # no final rows: the latest, once the traffic is in
        return True
    return _ms(row["window_start"]) <= LAST_WINDOW


async def _topic_values(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of the topic, partition by partition in offset order."""
    async with TopicReader(bootstrap, topic) as reader:
        records = await reader.read_to_end()
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return [orjson.loads(r.value) for r in ordered if r.value]


# --------------------------------------------------------------------------- expected rows


@dataclass
class Expected:
    """What the tables must hold: the latest row per key of each output topic, and the batch
    reference figures of SPEC sections 3-5 computed from the enriched topic."""

    rows: dict[str, dict[tuple[Any, ...], Row]]
    kpis: dict[int, dict[str, Any]]
    sessions: list[dict[str, Any]]
    pages: dict[tuple[int, str], dict[str, Any]]
    dimensions: dict[tuple[int, str, str], dict[str, Any]]
    funnels: dict[tuple[str, str], dict[str, Any]]
    experiments: dict[str, dict[str, Any]]
    cohorts: dict[tuple[str, int], dict[str, Any]]


async def _expected(bootstrap: str, prefix: str) -> Expected:
    values = {
        table: await _topic_values(bootstrap, f"{prefix}{topic}")
        for table, topic in SINK_TOPICS.items()
    }
    enriched_all = await _topic_values(bootstrap, f"{prefix}user-behavior-enriched")
    enriched = list({e["event_id"]: e for e in enriched_all}.values())
    users = _traffic_users()
    return Expected(
        rows={
            table: latest_rows(TABLES[table], records, settled) for table, records in values.items()
        },
        kpis={
            start: figures
            for start, figures in reference.kpi_windows(
                enriched, WINDOW_MS, GAP_MS, contract.shipped_custom_kpis()
            ).items()
            if start <= LAST_WINDOW
        },
        sessions=[s for s in reference.sessions(enriched, GAP_MS) if s["user_id"] in users],
        pages={
            k: v
            for k, v in reference.page_stats(enriched, WINDOW_MS).items()
            if k[0] <= LAST_WINDOW
        },
        dimensions={
            k: v
            for k, v in reference.dimension_stats(enriched, WINDOW_MS).items()
            if k[0] <= LAST_WINDOW
        },
        funnels=reference.funnel_stats(enriched, FUNNELS),
        experiments=reference.experiments(_traffic_events(enriched_all)),
        cohorts=_expected_cohorts(_traffic_events(enriched_all)),
    )


# --------------------------------------------------------------------------- table contents


def _ms(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _cents(value: Decimal) -> int:
    return int(value * 100)


def kpi_records(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """kpi_metrics rows in the form tests/contract.compare_kpis reads."""
    out = {}
    for row in rows:
        record = dict(row)
        record["total_revenue_cents"] = _cents(row["total_revenue"])
        record["average_order_value"] = float(row["average_order_value"])
        record["revenue_per_user"] = float(row["revenue_per_user"])
        out[_ms(row["window_start"])] = record
    return out


def session_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(
            row,
            window_start=format_ts(_ms(row["window_start"])),
            window_end=format_ts(_ms(row["window_end"])),
            revenue_cents=_cents(row["revenue"]),
        )
        for row in rows
    ]


def window_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        dict(
            row,
            window_start=format_ts(_ms(row["window_start"])),
            **({"revenue_cents": _cents(row["revenue"])} if "revenue" in row else {}),
        )
        for row in rows
    ]


async def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    """The settled rows of every table, with their updated_at and xmin."""
    tables = {}
    for table in SINK_TOPICS:
        rows = await table_rows(url, table)
        tables[table] = sorted(
            (row for row in rows if settled(table, row)), key=lambda row: repr(row)
        )
    return tables


def _values(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without what a write changes (updated_at, xmin), in a stable order."""
    values = [{k: v for k, v in row.items() if k not in ("updated_at", "xmin")} for row in rows]
    return sorted(values, key=repr)


def assert_replay_changed_nothing(
    after: Mapping[str, list[dict[str, Any]]], before: Mapping[str, list[dict[str, Any]]]
) -> None:
    """Every settled row as it was, not even rewritten (same updated_at and xmin). An
    experiment_stats row holds the same values again, but may have been rewritten: a replay
    passes through a variant's earlier records before its latest, and with no is_final
    nothing tells the sink which record is the newer (docs/sinks.md, "A/B tests")."""
    assert set(after) == set(before)
    for table in before:
        if table == "experiment_stats":
            assert _values(after[table]) == _values(before[table])
        else:
            assert after[table] == before[table], table


def _problems_against_topics(
    tables: Mapping[str, list[dict[str, Any]]], expected: Expected
) -> list[str]:
    problems = []
    for table, rows in tables.items():
        problems += differences(TABLES[table], rows, expected.rows[table])
    return problems


def check_tables(tables: Mapping[str, list[dict[str, Any]]], expected: Expected) -> list[str]:
    """Every mismatch between the (settled) tables and (a) the topics, (b) the batch reference."""
    problems = _problems_against_topics(tables, expected)
    kpis = kpi_records(tables["kpi_metrics"])
    problems += [f"kpi {format_ts(s)} is not final" for s, r in kpis.items() if not r["is_final"]]
    problems += contract.compare_kpis(kpis, expected.kpis)
    problems += contract.compare_sessions(
        session_records(tables["session_metrics"]), expected.sessions
    )
    problems += contract.compare_pages(window_records(tables["page_view_stats"]), expected.pages)
    problems += contract.compare_dimensions(
        window_records(tables["dimension_stats"]), expected.dimensions
    )
    problems += compare_funnels(tables["funnel_stats"], expected.funnels)
    problems += contract.compare_experiments(
        experiment_records_of(tables["experiment_stats"]),
        expected.experiments,
        SETTINGS.experiments.spec(),
    )
    problems += contract.compare_cohorts(
        cohort_records_of(tables["cohort_stats"]), expected.cohorts
    )
    return problems


def cohort_records_of(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """cohort_stats rows in the form tests/contract.compare_cohorts reads."""
    return {
        (row["cohort"].isoformat(), row["day_offset"]): dict(
            row, cumulative_revenue_cents=_cents(row["cumulative_revenue"])
        )
        for row in rows
    }


def experiment_records_of(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """experiment_stats rows in the form tests/contract.compare_experiments reads."""
    return {
        (row["experiment"], row["variant"]): dict(row, revenue_cents=_cents(row["revenue"]))
        for row in rows
    }


def _same(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    """Equal, numbers within float rounding (drop-off is computed in another order here)."""
    return all(
        a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b))
        for a, b in zip(got, want, strict=True)
    )


def compare_funnels(
    rows: list[dict[str, Any]], expected: Mapping[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """Every funnel_stats row against the reference's (funnel, day): final, and per stage its
    text, reached, drop-off and median; the stored durations hold the medians' multisets."""
    problems = []
    stored = {(row["funnel"], row["day"].isoformat()): row for row in rows}
    for key in sorted(set(stored) | set(expected)):
        row, want = stored.get(key), expected.get(key)
        if row is None or want is None:
            problems.append(f"funnel_stats {key}: stored={row is not None} reference={want}")
            continue
        got = [
            (s["stage"], s["reached"], s["drop_off_percent"], s["median_seconds"])
            for s in row["stages"]
        ]
        wanted = [
            (
                s["action"] if s["page_prefix"] is None else f"{s['action']}:{s['page_prefix']}",
                s["reached"],
                s["drop_off_percent"],
                s["median_seconds"],
            )
            for s in want["stages"]
        ]
        if not (row["is_final"] and len(got) == len(wanted) and all(map(_same, got, wanted))):
            problems.append(f"funnel_stats {key}: {got} final={row['is_final']} != {wanted}")
        counts = [sum(flat[1::2]) for flat in row["durations_ms"]]
        if counts != [s["reached"] for s in row["stages"][1 : len(counts) + 1]]:
            problems.append(f"funnel_stats {key}: durations {counts} != reached")
    return problems


async def wait_for_tables(url: str, expected: Expected, timeout: float) -> float:
    """Poll until every table matches; returns the seconds it took. At the deadline, fails
    with the mismatches."""
    started = time.monotonic()
    problems = ["not read yet"]
    while time.monotonic() - started < timeout:
        with contextlib.suppress(psycopg.OperationalError):
            problems = _problems_against_topics(await snapshot(url), expected)
            if not problems:
                return time.monotonic() - started
        await asyncio.sleep(0.25)  # polling interval, bounded by the deadline
    raise AssertionError(
        f"tables incomplete after {timeout} s: {len(problems)} problems\n"
        + "\n".join(problems[:40])
    )


def _assert_none(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:60])


async def replay_topics(bootstrap: str, prefix: str, url: str) -> None:
    """Write every record of the output topics again, from the beginning, through the sink's
    write path, 100 records a batch."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table, topic in SINK_TOPICS.items():
            records = await _topic_values(bootstrap, f"{prefix}{topic}")
            for start in range(0, len(records), 100):
                result = await write_batch(conn, TABLES[table], records[start : start + 100])
                assert not result.rejected


async def _tables_unreachable(url: str) -> bool:
    try:
        await table_rows(url, "kpi_metrics")
    except psycopg.OperationalError:
        return True
    return False


async def _wait_for_log(worker: Worker, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in the worker log after {timeout} s"
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline


# --------------------------------------------------------------------------- tests


async def test_tables_equal_the_batch_reference_and_a_replay_changes_nothing(
    database: str, worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    bootstrap = services.kafka_bootstrap
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": database})
    await worker.await_ready(PARTITIONS, timeout=120)
    traffic, closing = _traffic()
    await produce(bootstrap, f"{topic_prefix}user-events", traffic, linger_ms=20)
    await produce(bootstrap, f"{topic_prefix}user-events", closing)
    await _wait_for_pipeline(bootstrap, topic_prefix)

    expected = await _expected(bootstrap, topic_prefix)
    await wait_for_tables(database, expected, timeout=60)
    before = await snapshot(database)
    _assert_none(check_tables(before, expected))
    assert len(before["kpi_metrics"]) == len(expected.kpis)
    assert await _topic_values(bootstrap, f"{topic_prefix}sink-dlq") == []

    await replay_topics(bootstrap, topic_prefix, database)
    assert_replay_changed_nothing(await snapshot(database), before)


async def test_database_outage_loses_nothing_and_duplicates_nothing(
    scratch_postgres: ScratchPostgres,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
    record_property: Any,
) -> None:
    """The database stops (immediate shutdown) while traffic flows, and a second worker joins
    during the outage: the rest of the pipeline keeps publishing, the waiting sinks let the
    rebalance through, and once the database is back every row arrives exactly once."""
    bootstrap = services.kafka_bootstrap
    url = scratch_postgres.url
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": url})
    await worker.await_ready(PARTITIONS, timeout=120)
    traffic, closing = _traffic()
    half = len(traffic) // 2
    await produce(bootstrap, f"{topic_prefix}user-events", traffic[:half], linger_ms=20)
    deadline = time.monotonic() + 120
    while not await table_rows(url, "page_view_stats"):  # the sinks are writing
        assert time.monotonic() < deadline, "no rows written before the outage"
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline

    scratch_postgres.stop("immediate")
    quarter = half + (len(traffic) - half) // 2
    await produce(bootstrap, f"{topic_prefix}user-events", traffic[half:quarter], linger_ms=20)
    await _wait_for_log(worker, "degraded", timeout=30)
    # a second worker joins during the outage: both the pipeline's consumer group and the
    # sinks' groups rebalance while batches wait for the database
    second = worker_factory.start(
        topic_prefix,
        group_id,
        extra_env={"DATABASE_URL": url, "ANALYTICS__SINKS__TIMESCALEDB__STARTUP_TIMEOUT": "10m"},
    )
    await second.await_ready(PARTITIONS, timeout=120)
    await produce(bootstrap, f"{topic_prefix}user-events", traffic[quarter:], linger_ms=20)
    await produce(bootstrap, f"{topic_prefix}user-events", closing)
    # the rest of the pipeline keeps running: everything reaches the output topics
    await _wait_for_pipeline(bootstrap, topic_prefix)
    expected = await _expected(bootstrap, topic_prefix)
    await _wait_for_log(second, "waiting for the database", timeout=10)
    assert worker.alive and second.alive
    assert await _tables_unreachable(url)
    scratch_postgres.start()
    converged = await wait_for_tables(url, expected, timeout=120)
    record_property("outage_convergence_s", round(converged, 2))
    print(f"tables complete {converged:.2f} s after the database came back")
    tables = await snapshot(url)
    _assert_none(check_tables(tables, expected))
    await _wait_for_log(worker, "writing again after", timeout=10)
    assert worker.alive and second.alive

    await replay_topics(bootstrap, topic_prefix, url)
    assert_replay_changed_nothing(await snapshot(url), tables)


async def test_upsert_rules_and_dead_letters_through_the_sinks(
    database: str, worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    """Live → final → late live KPI records leave the final row; a row the database refuses,
    a record missing a field and a value that is not JSON go to sink-dlq with the error,
    and the records after them in the same partition are still written."""
    bootstrap = services.kafka_bootstrap
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": database})
    await worker.await_ready(PARTITIONS, timeout=120)

    start = format_ts(START_MS)
    end = format_ts(START_MS + WINDOW_MS)
    dim = {
        "window_start": start,
        "window_end": end,
        "dimension": "device",
        "value": "mobile",
        "events": 3,
        "users": 2,
        "page_views": 1,
        "revenue": 12.34,
        "revenue_cents": 1234,
    }
    bad_dimension = dict(dim, dimension="planet", value="mars")
    missing_field = {k: v for k, v in dim.items() if k != "users"} | {"value": "tablet"}
    later = dict(dim, value="desktop", revenue=0.5, revenue_cents=50)
    await produce(
        bootstrap,
        f"{topic_prefix}traffic-stats",
        [
            Outgoing(b"k", orjson.dumps(dim), partition=3),
            Outgoing(b"k", orjson.dumps(bad_dimension), partition=3),
            Outgoing(b"k", b"{not json", partition=3),
            Outgoing(b"k", orjson.dumps(missing_field), partition=3),
            Outgoing(b"k", orjson.dumps(later), partition=3),
        ],
    )
    kpi = _kpi(start, end, total_events=5, is_final=False)
    next_start, next_end = format_ts(START_MS + WINDOW_MS), format_ts(START_MS + 2 * WINDOW_MS)
    marker = _kpi(next_start, next_end, total_events=1, is_final=False)
    await produce(
        bootstrap,
        f"{topic_prefix}live-kpis",
        [
            Outgoing(b"w", orjson.dumps(kpi), partition=1),
            Outgoing(b"w", orjson.dumps(dict(kpi, total_events=7, is_final=True)), partition=1),
            Outgoing(b"w", orjson.dumps(dict(kpi, total_events=11)), partition=1),  # late, live
            Outgoing(b"w", orjson.dumps(marker), partition=1),  # written after all of them
        ],
    )

    dead = await read_until(
        bootstrap, f"{topic_prefix}sink-dlq", lambda records: len(records) >= 3, timeout=60
    )
    letters = sorted((r.json() for r in dead), key=lambda d: d["offset"])
    assert [(d["table"], d["partition"], d["offset"]) for d in letters] == [
        ("dimension_stats", 3, 1),
        ("dimension_stats", 3, 2),
        ("dimension_stats", 3, 3),
    ]
    assert (
        letters[0]["sqlstate"] == "23514"
        and "dimension_stats_dimension_check" in letters[0]["error"]
    )
    assert letters[0]["value"] == bad_dimension
    assert "not JSON" in letters[1]["error"] and letters[1]["value"] == "{not json"
    assert "missing field 'users'" in letters[2]["error"]
    assert all(d["topic"] == f"{topic_prefix}traffic-stats" for d in letters)

    deadline = time.monotonic() + 30
    while True:
        dims = {r["value"]: r for r in await table_rows(database, "dimension_stats")}
        kpis = {_ms(r["window_start"]): r for r in await table_rows(database, "kpi_metrics")}
        if set(dims) == {"mobile", "desktop"} and len(kpis) == 2:
            break
        assert time.monotonic() < deadline, (dims, kpis)
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    assert dims["desktop"]["revenue"] == Decimal("0.50")
    assert dims["mobile"]["revenue"] == Decimal("12.34")
    # the late live record (11) came after the final one (7) and did not replace it
    assert kpis[START_MS]["is_final"] and kpis[START_MS]["total_events"] == 7
    assert kpis[START_MS]["total_revenue"] == Decimal("10.00")
    assert not kpis[START_MS + WINDOW_MS]["is_final"]


async def test_funnel_days_through_the_sink_final_wins_and_bad_days_are_dead_lettered(
    database: str, worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    """funnel-stats → funnel_stats: live → final → late live leaves the final day; a day the
    database refuses (a name outside the funnel names' pattern) and one whose durations do not
    add up to its users (refused before the database) go to sink-dlq naming the problem; the
    day after them in the partition is written."""
    bootstrap = services.kafka_bootstrap
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": database})
    await worker.await_ready(PARTITIONS, timeout=120)

    live = funnel_record(((0, 4_000),), is_final=False)
    final = funnel_record()
    late_live = funnel_record(((0,),), is_final=False)
    bad_name = funnel_record() | {"funnel": "Checkout!"}
    uneven = funnel_record() | {"durations_ms": [[4_000, 1], [5_000, 1]]}
    next_day = funnel_record(is_final=False) | {"day": "2026-01-02"}
    await produce(
        bootstrap,
        f"{topic_prefix}funnel-stats",
        [
            Outgoing(b"checkout|2026-01-01", orjson.dumps(record), partition=5)
            for record in (live, final, late_live, bad_name, uneven, next_day)
        ],
    )

    dead = await read_until(
        bootstrap, f"{topic_prefix}sink-dlq", lambda records: len(records) >= 2, timeout=60
    )
    letters = sorted((r.json() for r in dead), key=lambda d: d["offset"])
    assert [(d["table"], d["topic"], d["partition"], d["offset"]) for d in letters] == [
        ("funnel_stats", f"{topic_prefix}funnel-stats", 5, 3),
        ("funnel_stats", f"{topic_prefix}funnel-stats", 5, 4),
    ]
    assert letters[0]["sqlstate"] == "23514" and "funnel_stats_funnel_check" in letters[0]["error"]
    assert letters[0]["value"] == bad_name
    assert letters[1]["sqlstate"] is None
    assert "durations_ms[0]: 1 durations, but stages[1].reached is 2" in letters[1]["error"]

    deadline = time.monotonic() + 30
    while len(rows := await table_rows(database, "funnel_stats")) < 2:
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    days = {row["day"].isoformat(): row for row in rows}
    assert len(days) == 2, rows
    assert days["2026-01-01"]["is_final"] and not days["2026-01-02"]["is_final"]
    # the final day, not the live one before it nor the late live one after it
    assert days["2026-01-01"]["stages"] == final["stages"]
    assert (
        days["2026-01-01"]["durations_ms"]
        == final["durations_ms"]
        == [
            [4_000, 1, 6_000, 1],
            [5_000, 1],
        ]
    )
    assert worker.alive


async def test_experiment_and_cohort_rows_through_the_sinks_and_bad_ones_dead_lettered(
    database: str, worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    """experiment-stats → experiment_stats: a variant's later record replaces the earlier one
    (fewer users included: no is_final); cohort-stats → cohort_stats: live → final → late live
    leaves the final cell. On each topic a record the database refuses (negative revenue) and
    one refused before it (more converted or retained users than users) go to sink-dlq naming
    the problem, and the records after them in the partition are written. (The records the
    database refuses have keys of their own: a record followed by another of its key in the
    same batch is replaced by it before the database is asked.)"""
    bootstrap = services.kafka_bootstrap
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": database})
    await worker.await_ready(PARTITIONS, timeout=120)

    control, green = experiment_records()
    fewer = experiment_records(BUTTON | {"green": (109, 22, 98_010, 2)})[1]
    refunded = green | {"variant": "blue", "revenue": -1.0, "revenue_cents": -100}
    too_many = green | {"converted_users": 111}
    experiments = [green, refunded, too_many, fewer, control]
    live, final = cohort_record(retained=9, is_final=False), cohort_record()
    late_live = cohort_record(retained=8, is_final=False)
    negative = cohort_record(3) | {"cumulative_revenue_cents": -1}
    overfull = cohort_record(2) | {"retained_users": 41}
    next_cell = cohort_record(2, retained=4, is_final=False)
    cohorts = [live, final, late_live, negative, overfull, next_cell]
    for topic, records in (("experiment-stats", experiments), ("cohort-stats", cohorts)):
        await produce(
            bootstrap,
            f"{topic_prefix}{topic}",
            [Outgoing(b"k", orjson.dumps(record), partition=6) for record in records],
        )

    dead = await read_until(
        bootstrap, f"{topic_prefix}sink-dlq", lambda records: len(records) >= 4, timeout=60
    )
    letters = sorted((r.json() for r in dead), key=lambda d: (d["table"], d["offset"]))
    assert [(d["table"], d["topic"], d["partition"], d["offset"]) for d in letters] == [
        ("cohort_stats", f"{topic_prefix}cohort-stats", 6, 3),
        ("cohort_stats", f"{topic_prefix}cohort-stats", 6, 4),
        ("experiment_stats", f"{topic_prefix}experiment-stats", 6, 1),
        ("experiment_stats", f"{topic_prefix}experiment-stats", 6, 2),
    ]
    assert letters[0]["sqlstate"] == "23514"
    assert "cohort_stats_cumulative_revenue_check" in letters[0]["error"]
    assert letters[0]["value"] == negative
    assert letters[1]["sqlstate"] is None
    assert "retained_users: expected a whole number from 0 to 40, got 41" in letters[1]["error"]
    assert letters[2]["sqlstate"] == "23514"
    assert "experiment_stats_revenue_check" in letters[2]["error"]
    assert letters[3]["sqlstate"] is None
    assert "converted_users: expected a whole number from 0 to 110, got 111" in letters[3]["error"]

    deadline = time.monotonic() + 30
    while True:
        experiment_rows = await table_rows(database, "experiment_stats")
        cohort_rows = await table_rows(database, "cohort_stats")
        variants = {row["variant"]: row for row in experiment_rows}
        cells = {row["day_offset"]: row for row in cohort_rows}
        if set(variants) == {"control", "green"} and set(cells) == {1, 2}:
            break
        assert time.monotonic() < deadline, (experiment_rows, cohort_rows)
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    assert len(experiment_rows) == 2 and len(cohort_rows) == 2
    assert variants["green"]["users"] == 109  # the later record, fewer users and all
    assert variants["green"]["revenue"] == Decimal("980.10")
    assert variants["control"]["p_value"] is None and variants["green"]["p_value"] > 0
    # the final cell, not the live one before it nor the late live one after it
    assert cells[1]["is_final"] and cells[1]["retained_users"] == 10
    assert cells[1]["cumulative_revenue"] == Decimal("1234.56")
    assert not cells[2]["is_final"] and cells[2]["retained_users"] == 4
    assert worker.alive


async def test_records_that_stopped_the_sinks_are_dead_lettered_and_the_worker_goes_on(
    database: str, worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    """Each of these once stopped the worker, again at every restart: a session whose JSON is
    nested 1,000 deep (json.dumps raised RecursionError), money beyond what Decimal rounds
    (1e300: InvalidOperation), a value whose dead letter outgrew a Kafka message (900 KB of
    quotes, twice that as JSON text). Now each goes to sink-dlq with its error and the records
    behind it in the same partition are written."""
    bootstrap = services.kafka_bootstrap
    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": database})
    await worker.await_ready(PARTITIONS, timeout=120)
    start, end = format_ts(START_MS), format_ts(START_MS + WINDOW_MS)
    session = _session(start, end)
    deep = b'{"deep":' + b"[" * 1000 + b"]" * 1000 + b"}"
    deep_session = orjson.dumps(session | {"user_id": "u0", "actions": orjson.Fragment(deep)})
    sent = {
        "session-metrics": [deep_session, orjson.dumps(session)],
        "live-kpis": [
            orjson.dumps(
                _kpi(start, end, total_events=5, is_final=True) | {"revenue_per_user": 1e300}
            ),
            orjson.dumps(
                _kpi(end, format_ts(START_MS + 2 * WINDOW_MS), total_events=6, is_final=True)
            ),
        ],
        "page-view-stats": [
            b'"' * 900_000,
            orjson.dumps(
                {"window_start": start, "window_end": end, "page": "/ok", "views": 1}
                | {"unique_visitors": 1, "total_time_on_page_ms": 5, "avg_time_on_page_ms": 5.0}
            ),
        ],
    }
    for topic, values in sent.items():
        await produce(
            bootstrap, f"{topic_prefix}{topic}", [Outgoing(b"k", v, partition=2) for v in values]
        )

    dead = await read_until(
        bootstrap, f"{topic_prefix}sink-dlq", lambda records: len(records) >= 3, timeout=90
    )
    letters = {d["table"]: d for d in (r.json() for r in dead)}
    assert sorted(letters) == ["kpi_metrics", "page_view_stats", "session_metrics"]
    assert "actions: cannot be stored as JSON" in letters["session_metrics"]["error"]
    assert "revenue_per_user: 1E+300 is beyond numeric(20, 2)" in letters["kpi_metrics"]["error"]
    page_letter = letters["page_view_stats"]
    assert "not JSON" in page_letter["error"]
    assert page_letter["value_truncated_from_bytes"] == 900_000
    assert all(d["offset"] == 0 and d["partition"] == 2 for d in letters.values())

    deadline = time.monotonic() + 60
    while True:
        counts = [len(await table_rows(database, t)) for t in ("session_metrics", "kpi_metrics")]
        pages = await table_rows(database, "page_view_stats")
        if counts == [1, 1] and len(pages) == 1:
            break
        assert time.monotonic() < deadline, (counts, pages)
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    assert worker.alive and (worker.health() or (0,))[0] == 200


def _session(start: str, end: str) -> dict[str, Any]:
    """A session-metrics record of user u1 in [start, end]."""
    return {
        "user_id": "u1",
        "session_id": "s1",
        "window_start": start,
        "window_end": end,
        "duration_seconds": 1.0,
        "total_events": 2,
        "actions": {"click": 2},
        "pages": {},
        "unique_pages": 0,
        "total_duration_ms": 0,
        "average_duration_ms": 0.0,
        "device_type": None,
        "country": None,
        "is_bounce": False,
        "conversions": 0,
        "revenue": 0.0,
        "revenue_cents": 0,
        "engagement_score": 10.0,
    }


def _kpi(start: str, end: str, *, total_events: int, is_final: bool) -> dict[str, Any]:
    return {
        "window_start": start,
        "window_end": end,
        "total_users": 4,
        "active_users": 3,
        "new_users": 1,
        "total_sessions": 3,
        "total_page_views": 2,
        "total_events": total_events,
        "total_revenue": 10.0,
        "total_revenue_cents": 1000,
        "total_conversions": 1,
        "purchases": 1,
        "average_order_value": 10.0,
        "revenue_per_user": 3.33,
        "average_session_duration_seconds": 12.5,
        "bounce_rate_percent": 33.33333333333333,
        "average_engagement_score": 40.0,
        "conversion_rate_percent": 33.33333333333333,
        "conversions_per_session": 0.3333333333333333,
        "trends": {},
        "late_events_total": 0,
        "is_final": is_final,
    }


async def test_migrations_twice_are_a_no_op(database: str) -> None:
    first = await migrate_url(database)
    assert [m.version for m in first.applied] == [
        m.version for m in MIGRATIONS if m.mode in ("any", first.mode)
    ]
    schema_before = await _schema(database)
    second = await migrate_url(database)
    assert second.applied == [] and second.mode == first.mode
    assert await _schema(database) == schema_before

    # the command line does the same
    result = _faust("migrate", database)
    assert result.returncode == 0, result.stderr
    assert "migrations applied: none (up to date)" in result.stdout
    assert await _schema(database) == schema_before


async def _schema(url: str) -> list[tuple[Any, ...]]:
    """Columns, constraints, indexes and applied migrations: the whole schema, comparably."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        rows: list[tuple[Any, ...]] = []
        for query in (
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' ORDER BY 1, 2",
            "SELECT version, name, mode, applied_at FROM schema_migrations ORDER BY 1",
        ):
            cursor = await conn.execute(query.encode())
            rows += await cursor.fetchall()
        return rows


def _faust(command: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=database_url, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_wrong_database_url_stops_the_worker_with_a_clear_error(
    worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    host = conninfo_to_dict(services.database_url or "postgresql://127.0.0.1:5432/x")
    wrong = (
        f"postgresql://analytics:hunter2@{host.get('host', '127.0.0.1')}:"
        f"{host.get('port', '5432')}/no_such_database_{uuid.uuid4().hex[:6]}"
    )
    shown = wrong.replace(":hunter2@", ":***@")

    result = _faust("migrate", wrong)
    assert result.returncode == 1
    assert shown in result.stderr and "does not exist" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr

    worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": wrong})
    deadline = time.monotonic() + 90
    while worker.alive:
        assert time.monotonic() < deadline, "the worker did not stop"
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    assert worker.proc.returncode != 0
    log = worker.log_path.read_text(errors="replace")
    assert f"cannot use the database at {shown}" in log
    assert "hunter2" not in log


#: 2,048 characters (the most SPEC section 1 allows), 6 KiB of UTF-8 that does not compress
LONG_PAGE = "/" + "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(2047))


async def test_the_writer_sets_apart_only_the_rows_the_database_refuses(database: str) -> None:
    """One transaction per batch; when the database refuses some rows, the others are still
    committed together and the bad ones come back with the error (no worker involved)."""
    await migrate_url(database)
    start, end = format_ts(START_MS), format_ts(START_MS + WINDOW_MS)

    def page(name: str, **changes: Any) -> dict[str, Any]:
        record = {
            "window_start": start,
            "window_end": end,
            "page": name,
            "views": 2,
            "unique_visitors": 1,
            "total_time_on_page_ms": 100,
            "avg_time_on_page_ms": 50.0,
        }
        return record | changes

    batch = [
        page("/a"),
        page("/nul\x00byte"),  # psycopg refuses it before sending: DataError
        page("/negative", views=-1),  # CHECK (views > 0): IntegrityError
        page("/huge", total_time_on_page_ms=2**70),  # beyond bigint: refused before sending
        page(LONG_PAGE),  # 6 KiB: keyed on its hash, it fits the primary key (migration 4)
        page("/b"),
        {"page": "/missing-fields"},
    ]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        result = await write_batch(conn, TABLES["page_view_stats"], batch)
    assert result.written == 3
    assert [r.index for r in result.rejected] == [1, 2, 3, 6]
    by_index = {r.index: r for r in result.rejected}
    assert by_index[2].sqlstate == "23514" and "page_view_stats_views_check" in by_index[2].error
    assert "total_time_on_page_ms: 1180591620717411303424 is beyond bigint" in by_index[3].error
    assert "NUL" in by_index[1].error and "missing field" in by_index[6].error
    rows = await table_rows(database, "page_view_stats")
    assert sorted(r["page"] for r in rows) == sorted(["/a", "/b", LONG_PAGE])

    # writing the same batch again changes nothing: no row is even rewritten
    before = await table_rows(database, "page_view_stats")
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await write_batch(conn, TABLES["page_view_stats"], batch)
    assert await table_rows(database, "page_view_stats") == before


async def test_a_final_funnel_day_is_kept_and_a_replay_rewrites_nothing(database: str) -> None:
    """Upserts by (funnel, day): a live day is replaced by the final one, which no live record
    replaces, in a batch of its own, in one batch, or row by row; writing the same records
    again rewrites no row (same xmin and updated_at)."""
    await migrate_url(database)
    spec = TABLES["funnel_stats"]
    live = funnel_record(((0, 4_000),), is_final=False)
    final = funnel_record()
    late_live = funnel_record(((0,),), is_final=False)
    other = funnel_record() | {"funnel": "signup"}
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await write_batch(conn, spec, [live])).written == 1
        (row,) = await table_rows(database, "funnel_stats")
        assert not row["is_final"] and row["stages"] == live["stages"]
        assert (await write_batch(conn, spec, [final, other])).written == 2
        before = await table_rows(database, "funnel_stats")
        for batch in ([late_live], [live, final, late_live], [final, other]):
            result = await write_batch(conn, spec, batch)
            assert result.rejected == []
        assert await write_one_by_one(conn, spec, [(0, spec.convert(late_live))]) == []
    after = await table_rows(database, "funnel_stats")
    assert after == before
    by_key = {(row["funnel"], row["day"].isoformat()): row for row in after}
    assert set(by_key) == {("checkout", "2026-01-01"), ("signup", "2026-01-01")}
    stored = by_key["checkout", "2026-01-01"]
    assert stored["is_final"] and stored["stages"] == final["stages"]
    assert stored["durations_ms"] == final["durations_ms"]


async def test_a_final_cohort_cell_is_kept_and_a_replay_rewrites_nothing(database: str) -> None:
    """Upserts by (cohort, day_offset): a live cell is replaced by the final one, which no live
    record replaces, in a batch of its own, in one batch, or row by row; writing the same
    records again rewrites no row (same xmin and updated_at)."""
    await migrate_url(database)
    spec = TABLES["cohort_stats"]
    live = cohort_record(retained=9, is_final=False)
    final = cohort_record()
    late_live = cohort_record(retained=8, is_final=False)
    day_0 = cohort_record(0, retained=40)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await write_batch(conn, spec, [live])).written == 1
        (row,) = await table_rows(database, "cohort_stats")
        assert not row["is_final"] and row["retained_users"] == 9
        assert (await write_batch(conn, spec, [final, day_0])).written == 2
        before = await table_rows(database, "cohort_stats")
        for batch in ([late_live], [live, final, late_live], [final, day_0]):
            result = await write_batch(conn, spec, batch)
            assert result.rejected == []
        assert await write_one_by_one(conn, spec, [(0, spec.convert(late_live))]) == []
    after = await table_rows(database, "cohort_stats")
    assert after == before
    by_offset = {row["day_offset"]: row for row in after}
    assert set(by_offset) == {0, 1}
    assert by_offset[0]["retention_rate_percent"] == 100.0
    stored = by_offset[1]
    assert stored["is_final"] and stored["retained_users"] == 10
    assert (stored["cumulative_revenue"], stored["cumulative_revenue_per_user"]) == (
        Decimal("1234.56"),
        Decimal("30.86"),
    )
    assert stored["average_engagement_score"] == 50.0


async def test_experiment_rows_are_the_latest_records_and_a_replay_rewrites_nothing(
    database: str,
) -> None:
    """Upserts by (experiment, variant): the latest record wins, with fewer users too (a late
    exposure can move a user to another variant), unless the row holds a higher version;
    writing the same records again rewrites no row. A pair of names too long for the
    primary key's index is refused by the database alone (SQLSTATE 54000); the other
    variants are written."""
    await migrate_url(database)
    spec = TABLES["experiment_stats"]
    control, green = experiment_records()
    fewer = experiment_records(BUTTON | {"green": (109, 22, 98_010, 2)})[1]
    long_name = experiment_records(experiment=HUGE_PAGE)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await write_batch(conn, spec, [control, green])).written == 2
        result = await write_batch(conn, spec, [fewer, *long_name])
        assert result.written == 1
        assert [(r.index, r.sqlstate) for r in result.rejected] == [(1, "54000"), (2, "54000")]
        assert "experiment_stats: ProgramLimitExceeded: index row" in result.rejected[0].error
        before = await table_rows(database, "experiment_stats")
        assert (await write_batch(conn, spec, [control, fewer])).rejected == []
    after = await table_rows(database, "experiment_stats")
    assert after == before
    by_variant = {row["variant"]: row for row in after}
    assert set(by_variant) == {"control", "green"}
    assert by_variant["green"]["users"] == 109 and by_variant["green"]["converted_users"] == 22
    assert by_variant["green"]["conversion_rate_percent"] == pytest.approx(100 * 22 / 109)
    assert by_variant["green"]["revenue_per_user"] == Decimal("8.99")  # 980.10 / 109
    assert by_variant["green"]["p_value"] == fewer["p_value"]
    assert by_variant["control"]["significant"] is False
    assert by_variant["control"]["probability_to_beat_control"] is None
    assert by_variant["green"]["version"] == 0  # records without one

    # a stale batch (a sink that waited for the database while its partition moved) after
    # the newer row: the version keeps the newer
    newer, stale = dict(green, version=7), dict(fewer, version=3)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await write_batch(conn, spec, [newer])).written == 1
        assert (await write_batch(conn, spec, [stale])).rejected == []
    kept = {row["variant"]: row for row in await table_rows(database, "experiment_stats")}
    assert (kept["green"]["users"], kept["green"]["version"]) == (green["users"], 7)


async def test_no_record_stops_a_batch_the_others_are_written(database: str) -> None:
    """Every way one record could fail its batch for ever (issue 9): a value too big for an
    index, for its integer or money column, JSON nested too deep for the client to send or
    holding a NUL, text with a NUL. Each is set apart with an error naming the column or the
    problem; the records around it are written."""
    await migrate_url(database)
    start, end = format_ts(START_MS), format_ts(START_MS + WINDOW_MS)
    deep = orjson.loads(b"[" * 1000 + b"]" * 1000)  # json.dumps fails on it: RecursionError

    def dim(value: str, **changes: Any) -> dict[str, Any]:
        record = {
            "window_start": start,
            "window_end": end,
            "dimension": "browser",
            "value": value,
            "events": 2,
            "users": 1,
            "page_views": 1,
            "revenue": 1.5,
            "revenue_cents": 150,
        }
        return record | changes

    dims = [dim("Firefox"), dim(HUGE_PAGE), dim("Edge", revenue_cents=2**64 - 1), dim("Opera")]
    dims.insert(3, dim("Chrome", events=2**63))
    session = _session(start, end)
    sessions = [
        session,
        session | {"user_id": "u2", "actions": {"deep": deep}},
        session | {"user_id": "u3", "pages": {"/\x00": 1}},
        session | {"user_id": HUGE_PAGE},
        session | {"user_id": "u5", "total_events": 2**31},
        session | {"user_id": "u6"},
    ]
    spec_dims, spec_sessions = TABLES["dimension_stats"], TABLES["session_metrics"]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        dim_result = await write_batch(conn, spec_dims, dims)
        session_result = await write_batch(conn, spec_sessions, sessions)
    assert [(r.index, r.sqlstate) for r in dim_result.rejected] == [(1, "54000"), (3, None)]
    assert "index row" in dim_result.rejected[0].error
    assert "events: 9223372036854775808 is beyond bigint" in dim_result.rejected[1].error
    stored = {r["value"]: r for r in await table_rows(database, "dimension_stats")}
    assert sorted(stored) == ["Edge", "Firefox", "Opera"]
    assert stored["Edge"]["revenue"] == Decimal(2**64 - 1) / 100  # the most cents JSON holds
    errors = {r.index: r.error for r in session_result.rejected}
    assert sorted(errors) == [1, 2, 3, 4]
    assert "actions: cannot be stored as JSON" in errors[1]
    assert "pages: contains a NUL character" in errors[2]
    assert "index row" in errors[3]
    assert "total_events: 2147483648 is beyond integer" in errors[4]
    users = sorted(r["user_id"] for r in await table_rows(database, "session_metrics"))
    assert users == ["u1", "u6"]


async def test_the_largest_sums_go_into_the_columns_and_come_back_exact(database: str) -> None:
    """Ten million purchases of the largest amount (SPEC 1: 1e9, so 1e18 cents) in one
    window and one session: written, read back and summed by the history queries, exact."""
    await migrate_url(database)
    count, cents = 10_000_000, 10_000_000 * MAX_AMOUNT * 100
    sums = {"events": count, "purchases": count, "conversions": count, "revenue_cents": cents}
    sums |= {"active_users": 1, "users_total": 1, "new_users": 1, "sessions": 1}
    kpi = kpi_figures(START_MS, WINDOW_MS, sums)
    kpi |= {"trends": trends(sums, None), "late_events_total": 0, "is_final": True}
    day = 86_400_000
    summary = SessionSummary.decode(
        ["s1", START_MS, START_MS + day, count, {"purchase": count}, {}, 0, count, cents, "", ""]
    )
    session = session_record(summary.figures("whale"))
    (page,) = page_rows(START_MS, WINDOW_MS, {"/buy": [count, 1, count * day]})
    (dim,) = dimension_rows(START_MS, WINDOW_MS, {"device": {"desktop": [count, 1, 0, cents]}})
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for table, record in [
            ("kpi_metrics", kpi),
            ("session_metrics", session),
            ("page_view_stats", page),
            ("dimension_stats", dim),
        ]:
            result = await write_batch(conn, TABLES[table], [orjson.loads(orjson.dumps(record))])
            assert (result.written, result.rejected) == (1, []), table
    (stored_kpi,) = await table_rows(database, "kpi_metrics")
    assert stored_kpi["total_revenue"] == Decimal(10**16)
    assert stored_kpi["revenue_per_user"] == Decimal(10**16)
    assert stored_kpi["total_events"] == count
    (stored_session,) = await table_rows(database, "session_metrics")
    assert (stored_session["total_events"], stored_session["revenue"]) == (count, Decimal(10**16))
    (stored_dim,) = await table_rows(database, "dimension_stats")
    assert stored_dim["revenue"] == Decimal(10**16)

    for bucket in ("1m", "1h", "1d"):
        params = queries.kpi_bucket_params(bucket, START_MS, START_MS + day)
        (row,) = await reader.fetch(database, queries.kpi_buckets_sql, params)
        answer = queries.kpi_bucket(row, queries.BUCKETS[bucket])
        assert answer["total_revenue_cents"] == cents and answer["total_events"] == count
        assert orjson.loads(orjson.dumps(answer)) == answer
    params = queries.user_sessions_params("whale", None, None, 10)
    (row,) = await reader.fetch(database, queries.USER_SESSIONS, params)
    closed = queries.closed_session(row)
    assert closed["revenue_cents"] == cents and closed["total_events"] == count
    params = queries.top_pages_params(START_MS, START_MS + day, 10)
    (row,) = await reader.fetch(database, queries.TOP_PAGES, params)
    assert queries.top_page(row)["total_time_on_page_ms"] == count * day


#: 10,240 characters of UTF-8 that does not compress, over 25 KiB: far past a B-tree entry
HUGE_PAGE = "/" + "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(10_239))


async def test_a_10_kb_page_is_written_once_and_a_replay_adds_nothing(database: str) -> None:
    """Keyed on the page's hash, a page of any length is one row, written once; writing the
    same records again (a replay, or a batch re-delivered) neither duplicates nor rewrites it."""
    await migrate_url(database)
    start, end = format_ts(START_MS), format_ts(START_MS + WINDOW_MS)
    record = {
        "window_start": start,
        "window_end": end,
        "page": HUGE_PAGE,
        "views": 4,
        "unique_visitors": 3,
        "total_time_on_page_ms": 1000,
        "avg_time_on_page_ms": 250.0,
    }
    later = dict(record, window_start=end, window_end=format_ts(START_MS + 2 * WINDOW_MS))
    spec = TABLES["page_view_stats"]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        first = await write_batch(conn, spec, [record, later])
        assert (first.written, first.rejected) == (2, [])
        before = await table_rows(database, "page_view_stats")
        for batch in ([record], [later, record], [record, record]):
            replay = await write_batch(conn, spec, batch)
            assert replay.rejected == []
        # one by one, as after a rejected batch, goes through the same conflict target
        assert await write_one_by_one(conn, spec, [(0, spec.convert(record))]) == []
    rows = await table_rows(database, "page_view_stats")
    assert rows == before  # same rows, same updated_at and xmin: nothing was rewritten
    assert len(rows) == 2
    assert all(row["page"] == HUGE_PAGE and row["views"] == 4 for row in rows)
    assert len(HUGE_PAGE.encode()) > 25_000
    assert {bytes(row["page_hash"]) for row in rows} == {
        hashlib.sha256(HUGE_PAGE.encode()).digest()
    }

    # a changed figure updates the one row in place
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await write_batch(conn, spec, [dict(record, views=5)])
    rows = await table_rows(database, "page_view_stats")
    assert sorted(row["views"] for row in rows) == [4, 5]


async def test_the_page_hash_migration_keeps_existing_rows(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before migration 4 (pages keyed on their text) gets the hash
    column filled for its rows and the new key; running the migrations again changes nothing."""
    monkeypatch.setattr(migrations_module, "MIGRATIONS", MIGRATIONS[:3])
    old = await migrate_url(database)
    assert 4 not in [m.version for m in old.applied]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO page_view_stats (window_start, window_end, page, views, unique_visitors,"
            " total_time_on_page_ms, avg_time_on_page_ms) VALUES"
            " ('2026-01-01T00:00Z', '2026-01-01T00:01Z', '/old', 2, 1, 10, 5.0),"
            " ('2026-01-01T00:00Z', '2026-01-01T00:01Z', '/ünïcode', 1, 1, 0, 0.0)"
        )
    monkeypatch.setattr(migrations_module, "MIGRATIONS", MIGRATIONS)
    new = await migrate_url(database)
    assert [m.version for m in new.applied] == [4, 6, 8, 9, 11, 12]  # and the later migrations
    rows = {row["page"]: row for row in await table_rows(database, "page_view_stats")}
    assert set(rows) == {"/old", "/ünïcode"}
    for page, row in rows.items():
        assert bytes(row["page_hash"]) == hashlib.sha256(page.encode()).digest()
    assert rows["/old"]["views"] == 2
    schema = await _schema(database)
    assert ("page_view_stats", "page_view_stats_pkey", "PRIMARY KEY (window_start, page_hash)") in [
        row[:3] for row in schema
    ]
    # the sink's upsert now lands on the migrated rows
    spec = TABLES["page_view_stats"]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        result = await write_batch(
            conn,
            spec,
            [
                {
                    "window_start": "2026-01-01T00:00:00Z",
                    "window_end": "2026-01-01T00:01:00Z",
                    "page": "/old",
                    "views": 3,
                    "unique_visitors": 1,
                    "total_time_on_page_ms": 10,
                    "avg_time_on_page_ms": 10 / 3,
                }
            ],
        )
    assert result.written == 1
    rows = {row["page"]: row for row in await table_rows(database, "page_view_stats")}
    assert len(rows) == 2 and rows["/old"]["views"] == 3
    before = await _schema(database)
    again = await migrate_url(database)
    assert again.applied == [] and await _schema(database) == before


async def test_kpi_windows_stored_before_the_session_counters_get_them_worked_back(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 12: a final window stored before KPI records carried their session counters
    gets them from its rates once (the history API sums them); a row without session figures
    (a live one of an old version) stays null."""
    monkeypatch.setattr(migrations_module, "MIGRATIONS", MIGRATIONS[:11])
    await migrate_url(database)
    columns = (
        "window_start, window_end, total_users, active_users, new_users, total_sessions,"
        " total_page_views, total_events, total_conversions, purchases, total_revenue,"
        " average_order_value, revenue_per_user, average_session_duration_seconds,"
        " bounce_rate_percent, average_engagement_score, trends, late_events_total, is_final"
    )
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            f"INSERT INTO kpi_metrics ({columns}) VALUES"
            " ('2026-01-01T00:00Z', '2026-01-01T00:01Z', 3, 3, 3, 3, 1, 5, 0, 0, 0, 0, 0,"
            "  12.345666666666666, 66.66666666666667, 41.23456666666667, '{}', 0, true),"
            " ('2026-01-01T00:01Z', '2026-01-01T00:02Z', 3, 1, 0, NULL, 1, 1, 0, 0, 0, 0, 0,"
            "  NULL, NULL, NULL, '{}', 0, false)"
        )
    monkeypatch.setattr(migrations_module, "MIGRATIONS", MIGRATIONS)
    assert [m.version for m in (await migrate_url(database)).applied] == [12]
    rows = sorted(await table_rows(database, "kpi_metrics"), key=lambda r: r["window_start"])
    sums = [
        (r["total_bounces"], r["total_session_duration_ms"], r["total_engagement_x10000"])
        for r in rows
    ]
    assert sums == [(2, 37_037, 1_237_037), (None, None, None)]
    assert all(r["custom"] == {} for r in rows)
