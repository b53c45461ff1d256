"""The TimescaleDB path of the sinks, without the extension (it cannot be installed here).

What a run on TimescaleDB 2.28.3 / PostgreSQL 15.18 showed (issue 9), each tested on what can
be tested here: the migrations' SQL and their order in both modes; ``migrate()`` against a
scripted connection that answers like a TimescaleDB server (migrations, policies reconciled
with the settings, a second run changing nothing, the summary line's durations); chunk names
in error texts mapped back to the table, on error texts of the forms TimescaleDB produces; and
the check of the server settings the policy jobs need, on fake ``pg_settings`` rows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from sinks import migrations
from sinks.chunks import name_hypertable
from sinks.db import describe
from sinks.schema import PAGE_VIEW_STATS, TABLES
from sinks.timescale_settings import (
    BACKGROUND_WORKERS,
    PARALLEL_WORKERS,
    PRELOAD,
    WORKER_PROCESSES,
    check_worker_settings,
    worker_setting_problems,
)
from sinks.writers import write_batch

# --------------------------------------------------------------------------- chunk names


@pytest.mark.parametrize(
    ("table", "error", "shown"),
    [
        (
            "page_view_stats",
            'new row for relation "_hyper_3_1_chunk" violates check constraint '
            '"page_view_stats_views_check"',
            'new row for relation "page_view_stats" violates check constraint '
            '"page_view_stats_views_check"',
        ),
        (
            "session_metrics",
            'null value in column "page" of relation "_hyper_2_3_chunk" violates not-null '
            "constraint",
            'null value in column "page" of relation "session_metrics" violates not-null '
            "constraint",
        ),
        (
            "kpi_metrics",
            'duplicate key value violates unique constraint "1_1_kpi_metrics_pkey"',
            'duplicate key value violates unique constraint "kpi_metrics_pkey"',
        ),
        (
            "page_view_stats",
            "index row size 2720 exceeds btree version 4 maximum 2704 for index "
            '"12_34_page_view_stats_pkey"',
            "index row size 2720 exceeds btree version 4 maximum 2704 for index "
            '"page_view_stats_pkey"',
        ),
        (
            "session_metrics",
            "index row size 3016 exceeds btree version 4 maximum 2704 for index "
            '"_hyper_2_17_chunk_session_metrics_user_time"',
            "index row size 3016 exceeds btree version 4 maximum 2704 for index "
            '"session_metrics_user_time"',
        ),
        (
            "dimension_stats",
            'relation "_timescaledb_internal._hyper_4_210_chunk" does not exist',
            'relation "dimension_stats" does not exist',
        ),
        (
            "page_view_stats",
            'duplicate key value violates unique constraint "compress_hyper_7_88_chunk_'
            '_compressed_hypertable_7_page_hash__ts_meta_min_1__ts_meta_max_1_idx"',
            'duplicate key value violates unique constraint "page_view_stats (compressed)"',
        ),
        (
            "kpi_metrics",
            'check constraint "kpi_metrics_check" of relation "_hyper_1_5_chunk" is violated '
            "by some row",
            'check constraint "kpi_metrics_check" of relation "kpi_metrics" is violated by '
            "some row",
        ),
        # nothing to map: left alone, names that merely look similar included
        (
            "page_view_stats",
            'numeric field overflow; column "my_hyper_3_1_chunk_x" of "t_1_2_x"',
            'numeric field overflow; column "my_hyper_3_1_chunk_x" of "t_1_2_x"',
        ),
        (
            "kpi_metrics",
            'value for domain x violates check constraint "2024_05_limits"',
            'value for domain x violates check constraint "2024_05_limits"',
        ),
    ],
)
def test_chunks_in_errors_are_named_as_their_table(table: str, error: str, shown: str) -> None:
    assert name_hypertable(error, table) == shown


def test_a_described_error_names_the_table_the_sink_writes() -> None:
    exc = psycopg.errors.CheckViolation(
        'new row for relation "_hyper_3_1_chunk" violates check constraint "views"\n'
        "DETAIL:  Failing row contains (…)."
    )
    assert describe(exc, "page_view_stats") == (
        'CheckViolation: new row for relation "page_view_stats" violates check constraint "views"'
    )
    assert "_hyper_3_1_chunk" in describe(exc)  # without a table nothing is guessed


class RefusingChunk:
    """A connection whose hypertable refuses the row of page '/bad' as its chunk would."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, query: bytes, params: Any = None) -> None:
        pages = params[2] if isinstance(params[2], list) else [params[2]]
        if "/bad" in pages:
            raise psycopg.errors.CheckViolation(
                'new row for relation "_hyper_3_1_chunk" violates check constraint '
                '"3_9_page_view_stats_views_check"'
            )


async def test_dead_letters_name_the_table_not_the_chunk() -> None:
    records = [
        {"window_start": "2026-01-01T00:00:00.000Z", "window_end": "2026-01-01T00:01:00.000Z",
         "page": page, "views": 1, "unique_visitors": 1, "total_time_on_page_ms": 5,
         "avg_time_on_page_ms": 5.0}
        for page in ("/good", "/bad")
    ]  # fmt: skip
    result = await write_batch(RefusingChunk(), PAGE_VIEW_STATS, records)  # type: ignore[arg-type]
    (rejected,) = result.rejected
    assert (rejected.index, result.written) == (1, 1)
    assert rejected.error == (
        'page_view_stats: CheckViolation: new row for relation "page_view_stats" violates check '
        'constraint "page_view_stats_views_check"'
    )


# --------------------------------------------------------------------------- server settings

GOOD = {
    PRELOAD: "timescaledb",
    BACKGROUND_WORKERS: "16",
    PARALLEL_WORKERS: "8",
    WORKER_PROCESSES: "27",
}


def test_settings_that_fit_give_no_warning() -> None:
    assert worker_setting_problems(GOOD, jobs=11) == []
    assert worker_setting_problems({**GOOD, PRELOAD: "pg_stat_statements, timescaledb"}, 11) == []


def test_postgresqls_default_pool_is_too_small() -> None:
    """The server of issue 9: max_worker_processes left at 8, TimescaleDB's defaults."""
    settings = {**GOOD, WORKER_PROCESSES: "8"}
    assert worker_setting_problems(settings, jobs=11) == [
        "max_worker_processes is 8: set it to at least 27 (timescaledb.max_background_workers "
        "16 + max_parallel_workers 8 + 3) and restart PostgreSQL, or TimescaleDB's jobs fail "
        "to start"
    ]


def test_too_few_background_workers_for_the_jobs() -> None:
    settings = {**GOOD, BACKGROUND_WORKERS: "4"}
    (problem,) = worker_setting_problems(settings, jobs=11)
    assert problem.startswith("timescaledb.max_background_workers is 4: set it to at least 12 ")
    # raising it raises what the pool needs too
    settings = {**GOOD, BACKGROUND_WORKERS: "4", WORKER_PROCESSES: "20"}
    problems = worker_setting_problems(settings, jobs=11)
    assert [p.split(" is ")[0] for p in problems] == [BACKGROUND_WORKERS, WORKER_PROCESSES]
    assert "set it to at least 23 (timescaledb.max_background_workers 12 " in problems[1]


def test_timescaledb_missing_from_the_preload_libraries() -> None:
    settings = {**GOOD, PRELOAD: "pg_stat_statements"}
    (problem,) = worker_setting_problems(settings, jobs=11)
    assert problem.startswith(
        "shared_preload_libraries is 'pg_stat_statements': set it to "
        "'pg_stat_statements,timescaledb'"
    )
    assert worker_setting_problems({**GOOD, PRELOAD: "timescaledb_toolkit"}, 11) != []


def test_unreported_settings_count_at_their_defaults() -> None:
    """Without the library preloaded, pg_settings has no timescaledb.* row: 16 is assumed."""
    problems = worker_setting_problems({PRELOAD: "", WORKER_PROCESSES: "8"}, jobs=11)
    assert [p.split(" is ")[0] for p in problems] == [PRELOAD, WORKER_PROCESSES]
    assert (
        "at least 27 (timescaledb.max_background_workers 16 + max_parallel_workers 8"
        in (problems[1])
    )


# --------------------------------------------------------------------------- a scripted server


class Cursor:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


class TimescaleServer:
    """Answers the migrations' queries like a server with TimescaleDB; records the SQL run."""

    def __init__(self, settings: dict[str, str], applied: set[int] | None = None) -> None:
        self.settings = settings
        self.applied = set(applied or ())
        #: (job procedure, table) -> its interval
        self.policies: dict[tuple[str, str], timedelta] = {}
        self.statements: list[str] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, query: str | bytes, params: Any = None) -> Cursor:
        text = query.decode() if isinstance(query, bytes) else query
        self.statements.append(text)
        if text == migrations.DETECT_MODE:
            return Cursor([(True, True, "timescaledb")])
        if text.startswith("SELECT version FROM schema_migrations"):
            return Cursor([(version,) for version in sorted(self.applied)])
        if text.startswith("INSERT INTO schema_migrations"):
            self.applied.add(params[0])
        if "FROM timescaledb_information.jobs" in text and "proc_name" in text:
            _key, proc, table = params
            found = self.policies.get((proc, table))
            return Cursor([(found,)] if found is not None else [])
        for proc, verb in (
            ("policy_compression", "compression"),
            ("policy_retention", "retention"),
        ):
            if text.startswith(f"SELECT remove_{verb}_policy"):
                self.policies.pop((proc, params[0]), None)
            if text.startswith(f"SELECT add_{verb}_policy"):
                self.policies[(proc, params[0])] = params[1]
        if "FROM pg_settings" in text:
            return Cursor(
                [(name, self.settings[name]) for name in params[0] if name in self.settings]
            )
        if "FROM timescaledb_information.jobs WHERE scheduled" in text:
            return Cursor([(len(self.policies) + 2,)])  # + telemetry and job history retention
        return Cursor([])

    def ran(self, sql: str) -> bool:
        return sql in self.statements


async def test_a_new_timescaledb_database_gets_its_migrations_and_policies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = TimescaleServer({**GOOD, WORKER_PROCESSES: "8"})
    with caplog.at_level(logging.INFO, logger="sinks.migrations"):
        report = await migrations.migrate(server)  # type: ignore[arg-type]
    assert report.mode == migrations.TIMESCALE
    assert [m.version for m in report.applied] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert server.applied == {1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
    # the hypertables are made (3), then what 3 left behind is dropped (5); funnel_stats is
    # made (6) and becomes a hypertable (7); experiment_stats is made (8) and stays a table;
    # cohort_stats is made (9) and becomes a hypertable (10)
    order = [
        migrations.TIMESCALE_HYPERTABLES,
        migrations.TIMESCALE_CLEANUP,
        migrations.FUNNEL_TABLE,
        migrations.FUNNEL_HYPERTABLE,
        migrations.EXPERIMENT_TABLE,
        migrations.COHORT_TABLE,
        migrations.COHORT_HYPERTABLE,
    ]
    assert all(server.ran(sql) for sql in order)
    assert [server.statements.index(sql) for sql in order] == sorted(
        server.statements.index(sql) for sql in order
    )
    assert {"funnel_stats", "cohort_stats"} <= set(migrations.HYPERTABLES)
    assert "experiment_stats" not in migrations.HYPERTABLES  # no policies for it
    assert server.policies == {
        **{("policy_compression", t): timedelta(days=7) for t in migrations.HYPERTABLES},
        **{("policy_retention", t): timedelta(days=90) for t in migrations.HYPERTABLES},
    }
    # the summary line writes durations as the settings do; the settings check warns
    summary = report.summary()
    assert summary.endswith("; compress_after 7d; retention 90d"), summary
    assert "days" not in summary
    (warning,) = report.warnings
    assert warning.startswith("max_worker_processes is 8: set it to at least 27 ")
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, f"TimescaleDB: {warning}") in logged


async def test_a_second_run_changes_nothing() -> None:
    server = TimescaleServer(GOOD)
    await migrations.migrate(server)  # type: ignore[arg-type]
    first = len(server.statements)
    report = await migrations.migrate(server)  # type: ignore[arg-type]
    again = server.statements[first:]
    assert report.applied == [] and report.warnings == []
    assert not [s for s in again if "_policy(" in s or s.startswith("INSERT")], again
    assert server.applied == {1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}


async def test_changed_settings_replace_the_policies() -> None:
    server = TimescaleServer(GOOD, applied={1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
    options = migrations.MigrationOptions(
        compress_after=timedelta(hours=36), retention=timedelta(0)
    )
    report = await migrations.migrate(server, options)  # type: ignore[arg-type]
    assert report.summary().endswith("; compress_after 36h; retention off")
    assert server.policies == {
        ("policy_compression", t): timedelta(hours=36) for t in migrations.HYPERTABLES
    }


async def test_the_settings_check_reads_pg_settings_and_the_jobs() -> None:
    server = TimescaleServer({**GOOD, BACKGROUND_WORKERS: "2"})
    server.policies = {("policy_retention", t): timedelta(days=1) for t in migrations.HYPERTABLES}
    (problem,) = await check_worker_settings(server)  # type: ignore[arg-type]
    # 6 policies + 2 of TimescaleDB's own jobs + a scheduler
    assert problem.startswith("timescaledb.max_background_workers is 2: set it to at least 9 ")


async def test_a_settings_check_that_fails_is_a_warning_not_a_stop() -> None:
    class NoJobsView(TimescaleServer):
        async def execute(self, query: str | bytes, params: Any = None) -> Cursor:
            if "timescaledb_information.jobs WHERE scheduled" in str(query):
                raise psycopg.errors.InsufficientPrivilege("permission denied for view jobs")
            return await super().execute(query, params)

    problems = await check_worker_settings(NoJobsView(GOOD))  # type: ignore[arg-type]
    assert problems == [
        "cannot check the settings TimescaleDB's jobs need: InsufficientPrivilege: "
        "permission denied for view jobs"
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(days=90), "90d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=30), "30m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(microseconds=1500), "0.0015s"),
    ],
)
def test_durations_read_as_the_settings_write_them(value: timedelta, text: str) -> None:
    assert migrations.duration_text(value) == text


# --------------------------------------------------------------------------- migration 5


def test_the_cleanup_drops_kpi_hourly_and_time_indexes_that_repeat_a_key() -> None:
    (migration,) = [m for m in migrations.MIGRATIONS if m.version == 5]
    assert migration.mode == migrations.TIMESCALE
    sql = migration.sql
    assert "DROP MATERIALIZED VIEW IF EXISTS kpi_hourly;" in sql
    for spec in TABLES.values():
        if spec.name in ("funnel_stats", "experiment_stats", "cohort_stats"):  # made later
            continue
        default_index = f"{spec.name}_window_start_idx"
        if (spec.conflict or spec.key)[0] == "window_start":
            assert f"DROP INDEX IF EXISTS {default_index};" in sql
        else:  # session_metrics: its key starts with user_id, this is its time index
            assert default_index not in sql
    assert set(migrations.HYPERTABLES) == set(TABLES) - {"experiment_stats"}


def test_the_migrations_order_in_both_modes() -> None:
    plain = migrations.pending(set(), migrations.PLAIN)
    assert [m.version for m in plain] == [1, 2, 4, 6, 8, 9, 11, 12]
    timescale = migrations.pending(set(), migrations.TIMESCALE)
    assert [m.version for m in timescale] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    # a database made before migration 5: it and the SPEC 7-9 tables run
    before_5 = migrations.pending({1, 3, 4}, migrations.TIMESCALE)
    assert [m.version for m in before_5] == [5, 6, 7, 8, 9, 10, 11, 12]
    # a plain database that gains TimescaleDB later gets 3, 5, 7 and 10
    later = migrations.pending({1, 2, 4, 6, 8, 9, 11, 12}, migrations.TIMESCALE)
    assert [m.version for m in later] == [3, 5, 7, 10]
