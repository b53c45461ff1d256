"""Versioned, idempotent schema migrations of the sink database.

Run at worker start (sinks/runner.py) and by ``faust -A app migrate``. Each migration is
frozen SQL with a version number; ``schema_migrations`` records the versions applied, and a
session advisory lock makes concurrent starters (two workers) apply each one exactly once, in
its own transaction. Running the migrations again is a no-op.

Two modes, decided by what the server offers:

* **timescaledb** (the extension is available and preloaded, or already created): the tables
  become hypertables on their time column (all but ``experiment_stats``, which has none), with
  a compression and a retention policy
  (``sinks.timescaledb.compress_after`` / ``retention``, reconciled on every run). The server
  settings the policy jobs need are checked on every run (sinks.timescale_settings), with a
  warning naming each one that is too low.
* **postgresql** (no TimescaleDB): the same tables in plain PostgreSQL, with BRIN indexes on the
  time columns; no compression and no retention (rows are kept).

A log line says which mode is on. Migrations marked for one mode are skipped (and not recorded)
in the other, so a server that gains TimescaleDB later gets its migrations on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from app.settings import DatabaseSinkSettings
from sinks.db import Connection, DatabaseStartupError, connect, describe, redact_url, worth_waiting
from sinks.roles import READER_PRIVILEGES, WRITER_PRIVILEGES, RoleGrant, reconcile_roles
from sinks.timescale_settings import check_worker_settings

log = logging.getLogger(__name__)

ANY = "any"
PLAIN = "postgresql"
TIMESCALE = "timescaledb"
#: pg_advisory_lock key of the migrations (any constant shared by every worker)
LOCK_KEY = 7_438_112_001


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    mode: str  # ANY, PLAIN or TIMESCALE
    sql: str


CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS kpi_metrics (
    window_start                     timestamptz      NOT NULL,
    window_end                       timestamptz      NOT NULL,
    total_users                      bigint           NOT NULL CHECK (total_users >= 0),
    active_users                     bigint           NOT NULL CHECK (active_users >= 0),
    new_users                        bigint           NOT NULL CHECK (new_users >= 0),
    total_sessions                   bigint           CHECK (total_sessions >= 0),
    total_page_views                 bigint           NOT NULL CHECK (total_page_views >= 0),
    total_events                     bigint           NOT NULL CHECK (total_events >= 0),
    total_conversions                bigint           NOT NULL CHECK (total_conversions >= 0),
    purchases                        bigint           NOT NULL CHECK (purchases >= 0),
    total_revenue                    numeric(20, 2)   NOT NULL CHECK (total_revenue >= 0),
    average_order_value              numeric(20, 2)   NOT NULL,
    revenue_per_user                 numeric(20, 2)   NOT NULL,
    average_session_duration_seconds double precision,
    bounce_rate_percent              double precision,
    average_engagement_score         double precision,
    conversion_rate_percent          double precision,
    conversions_per_session          double precision,
    trends                           jsonb            NOT NULL,
    late_events_total                bigint           NOT NULL CHECK (late_events_total >= 0),
    is_final                         boolean          NOT NULL,
    updated_at                       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start),
    CHECK (window_end > window_start),
    CHECK (NOT is_final OR total_sessions IS NOT NULL)
);
COMMENT ON TABLE kpi_metrics IS
    'SPEC 4: one row per KPI window (topic live-kpis); live rows (is_final false) are replaced '
    'by the final one; session figures are null while a window is live';

CREATE TABLE IF NOT EXISTS session_metrics (
    user_id             text             NOT NULL,
    session_id          text             NOT NULL,
    window_start        timestamptz      NOT NULL,
    window_end          timestamptz      NOT NULL,
    duration_seconds    double precision NOT NULL CHECK (duration_seconds >= 0),
    total_events        integer          NOT NULL CHECK (total_events > 0),
    actions             jsonb            NOT NULL,
    pages               jsonb            NOT NULL,
    unique_pages        integer          NOT NULL CHECK (unique_pages >= 0),
    total_duration_ms   bigint           NOT NULL CHECK (total_duration_ms >= 0),
    average_duration_ms double precision NOT NULL,
    device_type         text,
    country             text,
    is_bounce           boolean          NOT NULL,
    conversions         integer          NOT NULL CHECK (conversions >= 0),
    revenue             numeric(20, 2)   NOT NULL CHECK (revenue >= 0),
    engagement_score    double precision NOT NULL CHECK (engagement_score BETWEEN 0 AND 100),
    updated_at          timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, session_id, window_start),
    CHECK (window_end >= window_start)
);
COMMENT ON TABLE session_metrics IS
    'SPEC 3: one row per closed session (topic session-metrics); session_id '''' means none';
CREATE INDEX IF NOT EXISTS session_metrics_user_time
    ON session_metrics (user_id, window_start);

CREATE TABLE IF NOT EXISTS page_view_stats (
    window_start          timestamptz      NOT NULL,
    window_end            timestamptz      NOT NULL,
    page                  text             NOT NULL,
    views                 bigint           NOT NULL CHECK (views > 0),
    unique_visitors       bigint           NOT NULL CHECK (unique_visitors > 0),
    total_time_on_page_ms bigint           NOT NULL CHECK (total_time_on_page_ms >= 0),
    avg_time_on_page_ms   double precision NOT NULL,
    updated_at            timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, page),
    CHECK (window_end > window_start)
);
COMMENT ON TABLE page_view_stats IS
    'SPEC 5: page_view figures per final window and page (topic page-view-stats)';

CREATE TABLE IF NOT EXISTS dimension_stats (
    window_start timestamptz    NOT NULL,
    window_end   timestamptz    NOT NULL,
    dimension    text           NOT NULL CHECK (dimension IN ('device', 'country', 'browser')),
    value        text           NOT NULL,
    events       bigint         NOT NULL CHECK (events > 0),
    users        bigint         NOT NULL CHECK (users > 0),
    page_views   bigint         NOT NULL CHECK (page_views >= 0),
    revenue      numeric(20, 2) NOT NULL CHECK (revenue >= 0),
    updated_at   timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, dimension, value),
    CHECK (window_end > window_start)
);
COMMENT ON TABLE dimension_stats IS
    'SPEC 5: traffic per final window, dimension (device, country, browser) and value '
    '(topic traffic-stats); a missing value is ''unknown''';
"""

BRIN_TIME_INDEXES = """
CREATE INDEX IF NOT EXISTS kpi_metrics_time_brin ON kpi_metrics USING brin (window_start);
CREATE INDEX IF NOT EXISTS session_metrics_time_brin ON session_metrics USING brin (window_start);
CREATE INDEX IF NOT EXISTS page_view_stats_time_brin ON page_view_stats USING brin (window_start);
CREATE INDEX IF NOT EXISTS dimension_stats_time_brin ON dimension_stats USING brin (window_start);
"""

# Compression needs every column of a unique index among the segmentby / orderby columns.
TIMESCALE_HYPERTABLES = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('kpi_metrics', 'window_start', chunk_time_interval => INTERVAL '7 days',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('session_metrics', 'window_start', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('page_view_stats', 'window_start', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('dimension_stats', 'window_start', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
ALTER TABLE kpi_metrics SET (timescaledb.compress,
    timescaledb.compress_orderby = 'window_start DESC');
ALTER TABLE session_metrics SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'user_id',
    timescaledb.compress_orderby = 'window_start DESC, session_id');
ALTER TABLE page_view_stats SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'page',
    timescaledb.compress_orderby = 'window_start DESC');
ALTER TABLE dimension_stats SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'dimension, value',
    timescaledb.compress_orderby = 'window_start DESC');
CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_hourly
WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 hour', window_start) AS bucket,
       count(*)                AS windows,
       sum(total_events)       AS total_events,
       sum(total_page_views)   AS total_page_views,
       sum(total_conversions)  AS total_conversions,
       sum(purchases)          AS purchases,
       sum(total_revenue)      AS total_revenue,
       sum(new_users)          AS new_users,
       max(total_users)        AS total_users,
       max(active_users)       AS peak_active_users,
       max(late_events_total)  AS late_events_total
FROM kpi_metrics
WHERE is_final
GROUP BY bucket
WITH NO DATA;
SELECT add_continuous_aggregate_policy('kpi_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes', if_not_exists => TRUE);
"""

# A B-tree index entry holds at most about 2.7 KB, so a long page could not be part of the
# primary key. The key becomes a SHA-256 of the page's UTF-8 form, generated by the database
# (which also fills it for existing rows); the page stays whole in ``page``. convert_to() is
# only STABLE in the catalogue, but converting to UTF8 in a UTF8 database never changes, so the
# wrapper may be IMMUTABLE, as a generated column requires. On a hypertable, compression
# (migration 3, segmented by page) is switched off for the change and back on segmented by the
# new key column; reconcile_policies() then adds the compression policy again.
PAGE_HASH_KEY = """
CREATE OR REPLACE FUNCTION page_key(page text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN sha256(convert_to(page, 'UTF8'));
DO $$
BEGIN
    -- nested: the inner query is planned only where TimescaleDB's catalogue exists
    IF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
        IF EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = 'page_view_stats'
              AND compression_enabled
        ) THEN
            PERFORM remove_compression_policy('page_view_stats', if_exists => TRUE);
            PERFORM decompress_chunk(chunk, if_compressed => TRUE)
                FROM show_chunks('page_view_stats') AS chunk;
            ALTER TABLE page_view_stats SET (timescaledb.compress = FALSE);
        END IF;
    END IF;
END
$$;
ALTER TABLE page_view_stats
    ADD COLUMN IF NOT EXISTS page_hash bytea GENERATED ALWAYS AS (page_key(page)) STORED;
ALTER TABLE page_view_stats DROP CONSTRAINT IF EXISTS page_view_stats_pkey;
ALTER TABLE page_view_stats
    ADD CONSTRAINT page_view_stats_pkey PRIMARY KEY (window_start, page_hash);
DO $$
BEGIN
    IF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
        IF EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = 'page_view_stats'
        ) THEN
            ALTER TABLE page_view_stats SET (timescaledb.compress,
                timescaledb.compress_segmentby = 'page_hash',
                timescaledb.compress_orderby = 'window_start DESC');
        END IF;
    END IF;
END
$$;
COMMENT ON COLUMN page_view_stats.page_hash IS
    'sha256 of the page''s UTF-8 form: the key, so that pages of any length fit its index';
"""

# Migration 3's continuous aggregate kpi_hourly was read by nothing (the history API sums the
# final windows of kpi_metrics itself, with figures kpi_hourly lacks) and, materialized only
# up to an hour ago, lagged 1 to 1.25 h: dropped, with its refresh policy. create_hypertable
# (migration 3) added a (window_start DESC) index to each table without a one-column index
# on window_start; where the primary key starts with window_start it serves the same scans:
# dropped too. session_metrics keeps its one: its key starts with user_id. Migration 3 itself
# stays as applied; on a new database this one follows it at once.
TIMESCALE_CLEANUP = """
DROP MATERIALIZED VIEW IF EXISTS kpi_hourly;
DROP INDEX IF EXISTS kpi_metrics_window_start_idx;
DROP INDEX IF EXISTS page_view_stats_window_start_idx;
DROP INDEX IF EXISTS dimension_stats_window_start_idx;
"""

# SPEC 7: one row per funnel and UTC day of the attempts' first stage, live until the watermark
# passes the day's end plus the funnel's window, then final. ``stages`` and ``durations_ms`` are
# the record's lists as published (sinks.schema.funnel_row checks their shape); the primary key
# (funnel, day) serves the web API's ranges of one funnel. No BRIN index on plain PostgreSQL:
# the table holds one row per funnel and day, the key serves every query.
FUNNEL_TABLE = """
CREATE TABLE IF NOT EXISTS funnel_stats (
    funnel       text        NOT NULL CHECK (funnel ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    day          date        NOT NULL,
    is_final     boolean     NOT NULL,
    stages       jsonb       NOT NULL CHECK (jsonb_typeof(stages) = 'array'),
    durations_ms jsonb       NOT NULL CHECK (jsonb_typeof(durations_ms) = 'array'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (funnel, day)
);
COMMENT ON TABLE funnel_stats IS
    'SPEC 7: one row per funnel and UTC day of the first stage (topic funnel-stats); live rows '
    '(is_final false) are replaced by the final one; durations_ms holds per transition the '
    '[ms, count, ...] multiset the median comes from, so days merge exactly';
"""

# Monthly chunks: a funnel adds one row a day. create_hypertable keeps its (day DESC) index here
# (the primary key starts with funnel), which serves day ranges over every funnel (Grafana).
FUNNEL_HYPERTABLE = """
SELECT create_hypertable('funnel_stats', 'day', chunk_time_interval => INTERVAL '30 days',
                         if_not_exists => TRUE, migrate_data => TRUE);
ALTER TABLE funnel_stats SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'funnel',
    timescaledb.compress_orderby = 'day DESC');
"""

# SPEC 9: the current figures of each experiment's variants, one row per (experiment, variant),
# the latest experiment-stats record (no is_final: the figures count every event so far).
# The names are the exposures' metadata values (non-empty strings, sinks.schema.experiment_row);
# a pair too long for the primary key's index (about 2.7 KB) is refused by the database.
EXPERIMENT_TABLE = """
CREATE TABLE IF NOT EXISTS experiment_stats (
    experiment                  text             NOT NULL CHECK (experiment <> ''),
    variant                     text             NOT NULL CHECK (variant <> ''),
    users                       bigint           NOT NULL CHECK (users >= 0),
    converted_users             bigint           NOT NULL,
    conversion_rate_percent     double precision NOT NULL,
    revenue                     numeric(20, 2)   NOT NULL CHECK (revenue >= 0),
    revenue_per_user            numeric(20, 2)   NOT NULL CHECK (revenue_per_user >= 0),
    variant_conflicts           bigint           NOT NULL CHECK (variant_conflicts >= 0),
    p_value                     double precision,
    probability_to_beat_control double precision,
    significant                 boolean          NOT NULL,
    updated_at                  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment, variant),
    CHECK (converted_users BETWEEN 0 AND users),
    CHECK (conversion_rate_percent BETWEEN 0 AND 100),
    CHECK (p_value BETWEEN 0 AND 1),
    CHECK (probability_to_beat_control BETWEEN 0 AND 1),
    CHECK (NOT significant OR p_value IS NOT NULL)
);
COMMENT ON TABLE experiment_stats IS
    'SPEC 9: the latest figures of each experiment and variant (topic experiment-stats), over '
    'all events so far; p_value and probability_to_beat_control are null for the control and '
    'in experiments without one';
"""

# SPEC 8: one row per cohort (UTC date of the users' first event) and day offset, live until the
# watermark passes the end of day cohort + day_offset, then final. The primary key
# (cohort, day_offset) serves the web API's retention triangles (a range of cohorts).
COHORT_TABLE = """
CREATE TABLE IF NOT EXISTS cohort_stats (
    cohort                      date             NOT NULL,
    day_offset                  integer          NOT NULL CHECK (day_offset BETWEEN 0 AND 3660),
    is_final                    boolean          NOT NULL,
    cohort_size                 bigint           NOT NULL CHECK (cohort_size > 0),
    retained_users              bigint           NOT NULL,
    retention_rate_percent      double precision NOT NULL,
    cumulative_revenue          numeric(20, 2)   NOT NULL CHECK (cumulative_revenue >= 0),
    cumulative_revenue_per_user numeric(20, 2)   NOT NULL,
    average_engagement_score    double precision NOT NULL,
    updated_at                  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (cohort, day_offset),
    CHECK (retained_users BETWEEN 0 AND cohort_size),
    CHECK (retention_rate_percent BETWEEN 0 AND 100),
    CHECK (cumulative_revenue_per_user >= 0),
    CHECK (average_engagement_score BETWEEN 0 AND 100)
);
COMMENT ON TABLE cohort_stats IS
    'SPEC 8: one row per cohort date and day offset (topic cohort-stats); live rows (is_final '
    'false) are replaced by the final one; cumulative_revenue is the cohort''s revenue up to the '
    'end of day cohort + day_offset';
"""

# Monthly chunks on the cohort date (a cohort adds max_day_offset + 1 rows over as many days).
# The primary key starts with cohort and serves every time range, so no default (cohort DESC)
# index (what migration 5 had to drop on the window tables).
COHORT_HYPERTABLE = """
SELECT create_hypertable('cohort_stats', 'cohort', chunk_time_interval => INTERVAL '30 days',
                         create_default_indexes => FALSE,
                         if_not_exists => TRUE, migrate_data => TRUE);
ALTER TABLE cohort_stats SET (timescaledb.compress,
    timescaledb.compress_orderby = 'cohort DESC, day_offset');
"""

# SPEC 9 rows are "latest wins": each experiment-stats record carries the combiner's number of
# its publication (``version``), and the upsert keeps a row of a higher one (sinks.schema).
# Rows written before this migration count as version 0.
EXPERIMENT_VERSION = """
ALTER TABLE experiment_stats ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN experiment_stats.version IS
    'the combiner''s number of this publication of the experiment: grows with each one; a '
    'record of a lower version never replaces the row';
"""

# SPEC 10 custom KPIs: every KPI record carries them under "custom" ({name: number}); rows
# written before this migration have none ({}). And the session counters behind SPEC 4's
# ratios (analytics.kpis.SESSION_SUMS), so the history API sums counters instead of working
# them back out of the rates; final rows written before get them worked back once, here.
# Plain nullable columns, no CHECK: on a compressed TimescaleDB hypertable ADD COLUMN takes a
# default and NOT NULL but not every constraint (sums of counts, never below 0 as published).
KPI_CUSTOM_AND_SUMS = """
ALTER TABLE kpi_metrics ADD COLUMN IF NOT EXISTS custom jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN kpi_metrics.custom IS
    'SPEC 10: the custom KPIs of the window by name (custom_kpis in the configuration): '
    'counts of matching events and ratio_percent of two counts';
ALTER TABLE kpi_metrics ADD COLUMN IF NOT EXISTS total_bounces bigint;
ALTER TABLE kpi_metrics ADD COLUMN IF NOT EXISTS total_session_duration_ms bigint;
ALTER TABLE kpi_metrics ADD COLUMN IF NOT EXISTS total_engagement_x10000 bigint;
UPDATE kpi_metrics
SET total_bounces = round(bounce_rate_percent * total_sessions / 100),
    total_session_duration_ms = round(average_session_duration_seconds * total_sessions * 1000),
    total_engagement_x10000 = round(average_engagement_score * total_sessions * 10000)
WHERE total_bounces IS NULL AND total_sessions IS NOT NULL;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sink tables and their natural keys", ANY, CREATE_TABLES),
    Migration(2, "BRIN indexes on the time columns", PLAIN, BRIN_TIME_INDEXES),
    Migration(
        3, "hypertables, compression, hourly KPI aggregate", TIMESCALE, TIMESCALE_HYPERTABLES
    ),
    Migration(4, "page_view_stats keyed on a hash of the page", ANY, PAGE_HASH_KEY),
    Migration(
        5, "no kpi_hourly, no time index repeating a primary key", TIMESCALE, TIMESCALE_CLEANUP
    ),
    Migration(6, "funnel_stats (SPEC 7)", ANY, FUNNEL_TABLE),
    Migration(7, "funnel_stats as a hypertable, compressed", TIMESCALE, FUNNEL_HYPERTABLE),
    Migration(8, "experiment_stats (SPEC 9)", ANY, EXPERIMENT_TABLE),
    Migration(9, "cohort_stats (SPEC 8)", ANY, COHORT_TABLE),
    Migration(10, "cohort_stats as a hypertable, compressed", TIMESCALE, COHORT_HYPERTABLE),
    Migration(
        11, "experiment_stats rows carry their publication's version", ANY, EXPERIMENT_VERSION
    ),
    Migration(12, "kpi_metrics: SPEC 10 custom KPIs, session counters", ANY, KPI_CUSTOM_AND_SUMS),
)
#: the sink tables that are hypertables on TimescaleDB, with compression and retention policies
HYPERTABLES = (
    "kpi_metrics",
    "session_metrics",
    "page_view_stats",
    "dimension_stats",
    "funnel_stats",
    "cohort_stats",
)
#: every sink table, what the roles get privileges on: experiment_stats stays a plain table on
#: TimescaleDB too (a row per variant, current figures, no time to partition or retain by)
SINK_TABLES = (*HYPERTABLES, "experiment_stats")

DETECT_MODE = """
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
       coalesce(current_setting('shared_preload_libraries', true), '')
"""
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    mode       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    """TimescaleDB policies (a zero duration means no policy), and the login roles to set up
    with their privileges on the sink tables (sinks/roles.py)."""

    compress_after: timedelta = timedelta(days=7)
    retention: timedelta = timedelta(days=90)
    roles: tuple[RoleGrant, ...] = ()

    @classmethod
    def of(cls, database: DatabaseSinkSettings) -> MigrationOptions:
        """The options ``sinks.timescaledb`` sets."""
        roles = [
            RoleGrant(role.user, role.password.get_secret_value(), privileges)
            for role, privileges in (
                (database.writer, WRITER_PRIVILEGES),
                (database.reader, READER_PRIVILEGES),
            )
            if role.user
        ]
        return cls(database.compress_after, database.retention, tuple(roles))


@dataclass(slots=True)
class MigrationReport:
    mode: str
    applied: list[Migration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: server settings TimescaleDB needs and lacks (sinks.timescale_settings), logged as warnings
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        done = ", ".join(f"{m.version} ({m.name})" for m in self.applied) or "none (up to date)"
        return f"database mode {self.mode}; migrations applied: {done}" + "".join(
            f"; {note}" for note in self.notes
        )


async def detect_mode(conn: Connection) -> tuple[str, str | None]:
    """``(mode, note)``: TimescaleDB when the extension exists or can be created."""
    cursor = await conn.execute(DETECT_MODE)
    row = await cursor.fetchone()
    assert row is not None
    available, installed, preload = bool(row[0]), bool(row[1]), str(row[2])
    if installed:
        return TIMESCALE, None
    if available and "timescaledb" in preload:
        return TIMESCALE, None
    if available:
        return PLAIN, (
            "the timescaledb extension is installed on the server but not in "
            "shared_preload_libraries: using plain PostgreSQL"
        )
    return PLAIN, None


def pending(applied: set[int], mode: str) -> list[Migration]:
    """The migrations still to run in this mode, in version order."""
    return [m for m in MIGRATIONS if m.version not in applied and m.mode in (ANY, mode)]


async def migrate(conn: Connection, options: MigrationOptions | None = None) -> MigrationReport:
    """Apply the pending migrations (each in its own transaction) under an advisory lock."""
    options = options or MigrationOptions()
    await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        await conn.execute(MIGRATIONS_TABLE)
        mode, note = await detect_mode(conn)
        report = MigrationReport(mode)
        if note:
            report.notes.append(note)
        cursor = await conn.execute("SELECT version FROM schema_migrations")
        applied = {int(version) for (version,) in await cursor.fetchall()}
        for migration in pending(applied, mode):
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, mode) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, mode),
                )
            report.applied.append(migration)
        report.notes.extend(await reconcile_roles(conn, options.roles, SINK_TABLES))
        if mode == TIMESCALE:
            report.notes.extend(await reconcile_policies(conn, options))
            report.warnings.extend(await check_worker_settings(conn))
        else:
            report.notes.append(
                "no TimescaleDB: plain tables, BRIN indexes on time, "
                "no compression or retention policies"
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    log.info("%s", report.summary())
    for warning in report.warnings:
        log.warning("TimescaleDB: %s", warning)
    return report


_POLICIES = (
    # (setting, job procedure, config key, remove, add)
    (
        "compress_after",
        "policy_compression",
        "compress_after",
        "SELECT remove_compression_policy(%s::regclass, if_exists => TRUE)",
        "SELECT add_compression_policy(%s::regclass, compress_after => %s::interval)",
    ),
    (
        "retention",
        "policy_retention",
        "drop_after",
        "SELECT remove_retention_policy(%s::regclass, if_exists => TRUE)",
        "SELECT add_retention_policy(%s::regclass, drop_after => %s::interval)",
    ),
)
_CURRENT_POLICY = """
SELECT (config ->> %s)::interval FROM timescaledb_information.jobs
WHERE proc_name = %s AND hypertable_schema = current_schema() AND hypertable_name = %s
"""


async def reconcile_policies(conn: Connection, options: MigrationOptions) -> list[str]:
    """Make each hypertable's compression and retention policy match the settings (replacing a
    policy only when its interval differs, so a second run changes nothing)."""
    notes = []
    for setting, proc, key, remove, add in _POLICIES:
        wanted: timedelta = getattr(options, setting)
        for table in HYPERTABLES:
            cursor = await conn.execute(_CURRENT_POLICY.encode(), (key, proc, table))
            current = [row[0] for row in await cursor.fetchall()]
            target = [wanted] if wanted > timedelta(0) else []
            if current == target:
                continue
            async with conn.transaction():
                await conn.execute(remove.encode(), (table,))
                if target:
                    await conn.execute(add.encode(), (table, wanted))
        notes.append(f"{setting} {duration_text(wanted) if wanted > timedelta(0) else 'off'}")
    return notes


_UNITS = (("d", timedelta(days=1)), ("h", timedelta(hours=1)), ("m", timedelta(minutes=1)),
          ("s", timedelta(seconds=1)), ("ms", timedelta(milliseconds=1)))  # fmt: skip


def duration_text(value: timedelta) -> str:
    """A duration as the settings write it (``7d``, ``36h``, ``90s``, ``500ms``): a whole
    number of the largest unit that divides it."""
    for unit, size in _UNITS:
        if value % size == timedelta(0):
            return f"{value // size}{unit}"
    return f"{value.total_seconds():g}s"


async def migrate_url(
    url: str,
    options: MigrationOptions | None = None,
    *,
    wait: timedelta = timedelta(seconds=30),
    retry_every: Sequence[float] = (0.2, 0.5, 1.0, 2.0),
) -> MigrationReport:
    """Connect and migrate. A database that is not up yet is waited for until ``wait`` has
    passed; anything else (bad URL, authentication, unknown database, privileges, SQL errors)
    raises DatabaseStartupError at once. Messages name the URL without its password."""
    deadline = time.monotonic() + wait.total_seconds()
    attempt = 0
    while True:
        try:
            conn = await connect(url, "migrations")
            try:
                return await migrate(conn, options)
            finally:
                await conn.close()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            where = redact_url(url)
            if not worth_waiting(exc):
                raise DatabaseStartupError(
                    f"cannot use the database at {where}: {describe(exc)} "
                    "(check DATABASE_URL / sinks.timescaledb.connection_string and .tls)"
                ) from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseStartupError(
                    f"the database at {where} is not reachable after {wait.total_seconds():g} s: "
                    f"{describe(exc)} "
                    "(check DATABASE_URL / sinks.timescaledb.connection_string and .tls)"
                ) from None
            if attempt == 0:
                log.warning("waiting for the database at %s: %s", where, describe(exc))
            delay = retry_every[min(attempt, len(retry_every) - 1)]
            attempt += 1
            await asyncio.sleep(min(delay, remaining))  # retry backoff, bounded by the deadline
