"""The history queries the web API answers from the sink tables: their SQL and parameters, and
the answers built from the rows. Pure functions (sinks/reader.py runs the SQL), unit-tested
directly.

Every value travels as a bound parameter (sums come back as ``bigint``, never ``numeric``, so
counts are Python ints); the statements are composed with psycopg's ``sql`` module, never by
string formatting (tests/unit/test_sql_parameterised.py), and the only text chosen at run time
is the bucket function, one of two constant strings picked by the database mode:

* TimescaleDB: ``time_bucket(width, window_start)``;
* plain PostgreSQL: ``date_bin(width, window_start, 2000-01-01 UTC)``.

Both cut the time line at whole UTC minutes, hours and days, whatever the session time zone.

Only **final** KPI windows are read: a live row is a partial window that the final record
replaces, and the live API (``/api/kpis`` without ``bucket``) shows it. Per bucket, additive
figures are summed (events, page views, conversions, purchases, revenue, new users: each
event and each first-seen user falls in exactly one window, so the sums are exact). Distinct
counts per window cannot be added into distinct counts per bucket; like web/api_queries.py,
their sums are named for what they are: ``active_user_windows`` (a user active in n windows of
the bucket counts n times) and ``session_windows`` (a session active in n windows counts n
times). Session figures are means over those session windows, from the sums of each window's
session counters (``total_bounces``, ``total_session_duration_ms``,
``total_engagement_x10000``) by the same function as a window's (analytics.kpis.ratio_figures);
for a bucket of one window they equal that window's. ``revenue_per_user``
needs the bucket's distinct active users, which the table does not hold: it is left out.

Funnels (SPEC 7) over a range of days are merged the way the pipeline merges partitions
(analytics.funnels): users reached add up per stage (a user counts once per day with an
attempt), drop-off follows from those sums, and medians come from the merged duration
multisets each stored day carries (``durations_ms``), so they are exact, not means of medians.

Experiments (SPEC 9) and cohorts (SPEC 8) are shown as stored, in the form their topics
published them (money as 2 decimals with the exact cents beside it): an experiment's rows are
its variants' latest figures over all events so far; a range of cohorts is a retention
triangle, each cohort's cells from day offset 0 up to the offset asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg import sql

from analytics.funnels import DayPartial, FunnelPartials, FunnelSpec, range_row
from analytics.journey_combiner import final_at
from analytics.kpis import ratio_figures
from analytics.money import cents_of, currency, currency_per
from analytics.timeutil import datetime_of, day_number, format_ts, ms_of
from analytics.traffic import avg_time_on_page_ms
from models.records import stored_fields
from sinks.migrations import TIMESCALE
from sinks.schema import COHORT_STATS, EXPERIMENT_STATS, SESSION_METRICS, TableSpec

BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
#: date_bin's origin: a UTC midnight, so buckets start at whole UTC minutes, hours and days
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)

TIME_BUCKET = "time_bucket(%(width)s::interval, window_start)"
DATE_BIN = "date_bin(%(width)s::interval, window_start, %(origin)s::timestamptz)"

KPI_BUCKETS = sql.SQL("""
SELECT {bucket} AS bucket_start,
       count(*) AS windows,
       sum(total_events)::bigint AS total_events,
       sum(total_page_views)::bigint AS total_page_views,
       sum(total_conversions)::bigint AS total_conversions,
       sum(purchases)::bigint AS purchases,
       sum(total_revenue) AS total_revenue,
       sum(new_users)::bigint AS new_users,
       max(total_users) AS total_users,
       max(active_users) AS peak_active_users,
       sum(active_users)::bigint AS active_user_windows,
       sum(total_sessions)::bigint AS session_windows,
       sum(total_session_duration_ms)::bigint AS session_duration_ms,
       sum(total_bounces)::bigint AS bounces,
       sum(total_engagement_x10000)::bigint AS engagement_x10000,
       max(late_events_total) AS late_events_total
FROM kpi_metrics
WHERE is_final AND window_start >= %(from)s AND window_start < %(to)s
GROUP BY 1
ORDER BY 1
""")

# Pages ordered by analytics.traffic.page_rank: views descending, then the page in code point
# order (the C collation compares UTF-8 bytes, which is the same order).
TOP_PAGES = """
SELECT page,
       sum(views)::bigint AS views,
       sum(unique_visitors)::bigint AS visitor_windows,
       sum(total_time_on_page_ms)::bigint AS total_time_on_page_ms
FROM page_view_stats
WHERE window_start >= %(from)s AND window_start < %(to)s
GROUP BY page_hash, page
ORDER BY views DESC, page COLLATE "C"
LIMIT %(limit)s
"""

SESSION_COLUMNS = SESSION_METRICS.columns  # every column the sink writes, in its order
# An absent bound is a NULL parameter; the user's index (user_id, window_start) serves both.
USER_SESSIONS = sql.SQL("""
SELECT {columns}
FROM session_metrics
WHERE user_id = %(user_id)s
  AND (%(from)s::timestamptz IS NULL OR window_start >= %(from)s)
  AND (%(to)s::timestamptz IS NULL OR window_start < %(to)s)
ORDER BY window_start, session_id
LIMIT %(limit)s
""").format(columns=sql.SQL(", ").join(sql.Identifier(column) for column in SESSION_COLUMNS))


def bucket_function(mode: str | None) -> str:
    """The bucketing expression of the mode: time_bucket on TimescaleDB, else date_bin."""
    return TIME_BUCKET if mode == TIMESCALE else DATE_BIN


def kpi_buckets_sql(mode: str | None) -> sql.Composed:
    return KPI_BUCKETS.format(bucket=sql.SQL(bucket_function(mode)))


def kpi_bucket_params(bucket: str, from_ms: int, to_ms: int) -> dict[str, Any]:
    return {
        "width": BUCKETS[bucket],
        "origin": ORIGIN,
        "from": datetime_of(from_ms),
        "to": datetime_of(to_ms),
    }


def top_pages_params(from_ms: int, to_ms: int, limit: int) -> dict[str, Any]:
    return {"from": datetime_of(from_ms), "to": datetime_of(to_ms), "limit": limit}


def user_sessions_params(
    user_id: str, from_ms: int | None, to_ms: int | None, limit: int
) -> dict[str, Any]:
    """``limit + 1`` rows are asked for: the extra one says the answer was cut."""
    return {
        "user_id": user_id,
        "from": datetime_of(from_ms) if from_ms is not None else None,
        "to": datetime_of(to_ms) if to_ms is not None else None,
        "limit": limit + 1,
    }


def kpi_bucket(row: Sequence[Any], width: timedelta) -> dict[str, Any]:
    """One row of ``KPI_BUCKETS`` as the API shows it."""
    (
        start,
        windows,
        events,
        page_views,
        conversions,
        purchases,
        revenue,
        new_users,
        total_users,
        peak_active,
        active_windows,
        sessions,
        duration_ms,
        bounces,
        engagement,
        late,
    ) = row
    cents = cents_of(revenue)
    return {
        "bucket_start": format_ts(ms_of(start)),
        "bucket_end": format_ts(ms_of(start + width)),
        "windows": windows,
        "total_events": events,
        "total_page_views": page_views,
        "total_conversions": conversions,
        "purchases": purchases,
        "total_revenue": currency(cents),
        "total_revenue_cents": cents,
        "new_users": new_users,
        "total_users": total_users,
        "peak_active_users": peak_active,
        "active_user_windows": active_windows,
        "session_windows": sessions,
        "average_order_value": currency_per(cents, purchases),
        **ratio_figures(
            {
                "sessions": sessions,
                "session_duration_ms": duration_ms or 0,
                "bounces": bounces or 0,
                "engagement_x10000": engagement or 0,
                "conversions": conversions,
            }
        ),
        "late_events_total": late,
    }


def top_page(row: Sequence[Any]) -> dict[str, Any]:
    """One row of ``TOP_PAGES``, shaped like web/api_queries.top_pages."""
    page, views, visitors, time_ms = row
    return {
        "page": page,
        "views": views,
        "visitor_windows": visitors,
        "total_time_on_page_ms": time_ms,
        "avg_time_on_page_ms": avg_time_on_page_ms(time_ms, views),
    }


def record_of(spec: TableSpec, row: Sequence[Any]) -> dict[str, Any]:
    """A stored row (``spec.columns``, in order) as its record was published: the fields of the
    table's record definition, times in RFC 3339, dates ``YYYY-MM-DD``, money in currency units
    with its exact cents field beside it (models/records.py says which)."""
    assert spec.record is not None, spec.name
    values = dict(zip(spec.columns, row, strict=True))
    record: dict[str, Any] = {}
    for stored in stored_fields(spec.record):
        value = values[stored.column]
        sql_type, cents_field = stored.spec.sql, stored.spec.cents
        if value is None:
            record[stored.field] = None
        elif sql_type == "timestamptz":
            record[stored.field] = format_ts(ms_of(value))
        elif sql_type == "date":
            record[stored.field] = value.isoformat()
        elif sql_type == "numeric" and cents_field == stored.field:
            record[stored.field] = cents_of(value)
        elif sql_type == "numeric" and cents_field is not None:
            cents = cents_of(value)
            record[stored.field] = currency(cents)
            record[cents_field] = cents
        elif sql_type == "numeric":
            record[stored.field] = float(value)
        else:
            record[stored.field] = value
    return record


def closed_session(row: Sequence[Any]) -> dict[str, Any]:
    """One row of ``USER_SESSIONS``, shaped like the live API's sessions, ``open`` false."""
    return {**record_of(SESSION_METRICS, row), "open": False}


# --------------------------------------------------------------------------- funnels

# The stored days of one funnel in [from, to], each with the funnel's latest final day (one row
# of nulls but that when the range has none). A final day means the pipeline's watermark has
# passed its end + the window (analytics/journey_combiner.py), so every day up to it is final.
FUNNEL_DAYS = """
SELECT f.latest_final, d.day, d.is_final, d.stages, d.durations_ms
FROM (SELECT max(day) AS latest_final FROM funnel_stats
      WHERE funnel = %(funnel)s AND is_final) AS f
LEFT JOIN funnel_stats AS d
       ON d.funnel = %(funnel)s AND d.day >= %(from)s AND d.day <= %(to)s
ORDER BY d.day
"""
#: the watermark when no final day is stored: before every day, so none is final
_NO_WATERMARK_MS = -(2**63)


def funnel_days_params(name: str, first: date, last: date) -> dict[str, Any]:
    return {"funnel": name, "from": first, "to": last}


def stored_partial(stages: Sequence[Mapping[str, Any]], durations: Sequence[Any]) -> DayPartial:
    """A stored day's figures as analytics.funnels adds them: users reached per stage up to the
    deepest one reached, and the duration multisets of those transitions (sinks.schema has
    checked that they add up)."""
    reached = [int(stage["reached"]) for stage in stages]
    while reached and not reached[-1]:
        reached.pop()
    return DayPartial.decode([reached, list(durations[: max(len(reached) - 1, 0)])])


def funnel_range(
    spec: FunnelSpec, first: date, last: date, rows: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """The answer of ``/api/funnels/{name}``: the stored days (rows of ``FUNNEL_DAYS``) as
    published, and their total (analytics.funnels.range_row). A day stored with other stages
    than the configured funnel's (the funnel was changed under its name) is shown but not
    added, and named in ``excluded_from_total``. ``is_final``: every day of the range is final
    (a final day at or after ``to`` is stored) and every stored day of it is."""
    days, excluded = [], []
    partials = FunnelPartials()
    texts = [stage.text for stage in spec.stages]
    for _, day, is_final, stages, durations in rows:
        if day is None:
            continue
        days.append(
            {
                "funnel": spec.name,
                "day": day.isoformat(),
                "is_final": is_final,
                "stages": stages,
                "durations_ms": durations,
            }
        )
        if [stage["stage"] for stage in stages] != texts:
            excluded.append(day.isoformat())
            continue
        partials.days[spec.name, day_number(day)] = stored_partial(stages, durations)
    latest_final = rows[0][0] if rows else None
    watermark = (
        final_at(spec, day_number(latest_final)) if latest_final is not None else _NO_WATERMARK_MS
    )
    total = range_row(spec, partials, first, last, watermark)
    return {
        "funnel": spec.name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "is_final": total["is_final"] and all(day["is_final"] for day in days),
        "days": days,
        "total": {"stages": total["stages"]},
        "excluded_from_total": excluded,
    }


# --------------------------------------------------------------------------- experiments

#: an experiment_stats row as the queries read it: the record's columns, then when it was written
_VARIANT_COLUMNS = sql.SQL(", ").join(
    sql.Identifier("s", column) for column in (*EXPERIMENT_STATS.columns, "updated_at")
)
# The first ``limit`` experiments by name (code point order) and every row of their variants;
# the view asks for one experiment more than it shows, to tell whether more exist.
EXPERIMENTS = sql.SQL("""
SELECT {columns}
FROM (SELECT experiment FROM experiment_stats GROUP BY experiment
      ORDER BY experiment COLLATE "C" LIMIT %(limit)s) AS e
JOIN experiment_stats AS s ON s.experiment = e.experiment
ORDER BY s.experiment COLLATE "C", s.variant COLLATE "C"
""").format(columns=_VARIANT_COLUMNS)
#: one experiment's variants (a range of the primary key), the same columns
EXPERIMENT = sql.SQL("""
SELECT {columns}
FROM experiment_stats AS s WHERE s.experiment = %(experiment)s
ORDER BY s.variant COLLATE "C"
""").format(columns=_VARIANT_COLUMNS)


def experiments_params(limit: int) -> dict[str, Any]:
    return {"limit": limit + 1}


def experiment_params(name: str) -> dict[str, Any]:
    return {"experiment": name}


def _variant(row: Sequence[Any]) -> dict[str, Any]:
    """A stored variant as experiment-stats published it (analytics.experiments.rows), without
    its ``version`` (the sink's ordering of publications)."""
    variant = record_of(EXPERIMENT_STATS, row[:-1])
    del variant["version"]
    return variant


def experiment_groups(rows: Sequence[Sequence[Any]], control: str) -> list[dict[str, Any]]:
    """Rows of ``EXPERIMENTS`` or ``EXPERIMENT`` (ordered by experiment) as one object per
    experiment: its users (the variants' added up: a user is in one variant), its
    ``variant_conflicts`` (the experiment's figure, carried by every variant row; the largest
    if a write is half done), when a row of it was last written, and its variants, the control
    first, then by name (as analytics.experiments.rows publishes them)."""
    groups: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    answer = []
    for experiment, members in groups.items():
        variants = [_variant(row) for row in members]
        variants.sort(key=lambda v: (v["variant"] != control, v["variant"].encode()))
        answer.append(
            {
                "experiment": experiment,
                "users": sum(v["users"] for v in variants),
                "variant_conflicts": max(v["variant_conflicts"] for v in variants),
                "updated_at": format_ts(ms_of(max(row[-1] for row in members))),
                "variants": variants,
            }
        )
    return answer


def experiment_list(rows: Sequence[Sequence[Any]], control: str, limit: int) -> dict[str, Any]:
    """The answer of ``/api/experiments``: at most ``limit`` experiments, ``truncated`` when
    the database holds more (``rows`` come from ``experiments_params(limit)``)."""
    groups = experiment_groups(rows, control)
    return {
        "control_variant": control,
        "limit": limit,
        "truncated": len(groups) > limit,
        "experiments": groups[:limit],
    }


# --------------------------------------------------------------------------- cohorts

# The stored cells of the cohorts from ``from`` to ``to`` (both included) up to day offset
# ``days``: a range of the primary key (cohort, day_offset).
COHORT_CELLS = sql.SQL("""
SELECT {columns}
FROM cohort_stats
WHERE cohort >= %(from)s AND cohort <= %(to)s AND day_offset <= %(days)s
ORDER BY cohort, day_offset
""").format(columns=sql.SQL(", ").join(sql.Identifier(column) for column in COHORT_STATS.columns))


def cohort_cells_params(first: date, last: date, days: int) -> dict[str, Any]:
    return {"from": first, "to": last, "days": days}


def retention_triangle(
    first: date, last: date, days: int, rows: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """The answer of ``/api/cohorts``: per stored cohort of the range (oldest first) its size
    and its stored cells from day offset 0 up to ``days``, as published (live or final). A
    cohort's size is its latest cell's (the largest offset stored): a cohort can still lose
    users to an earlier one while its first day is live, never after."""
    cohorts: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        cell = record_of(COHORT_STATS, row)
        cohorts.setdefault(cell["cohort"], []).append(cell)
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": days,
        "cohorts": [
            {"cohort": cohort, "cohort_size": cells[-1]["cohort_size"], "days": cells}
            for cohort, cells in cohorts.items()
        ],
    }
