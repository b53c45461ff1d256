"""History endpoints: which source answers (web/history_params.py), their parameters, the SQL
of both database modes and the answers built from rows (sinks/queries.py), and the bounded
waiting of sinks/reader.py (against local sockets, no database)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from analytics.funnels import DayPartial, FunnelSpec, Stage, day_row
from analytics.journey_combiner import final_at
from analytics.timeutil import day_number, format_ts, parse_ts
from models.records import ClosedSession, field_names
from sinks import health, queries, reader
from sinks.migrations import PLAIN, TIMESCALE
from sinks.schema import COHORT_STATS, EXPERIMENT_STATS
from tests.unit.test_sinks_schema import BUTTON, cohort_record, experiment_records
from web.api_params import BadParameter
from web.history_params import (
    DATABASE,
    LIVE,
    MAX_BUCKETS,
    MAX_COHORT_DAYS,
    MAX_FUNNEL_DAYS,
    CohortRangeQuery,
    ExperimentsQuery,
    FunnelRangeQuery,
    KpiBucketsQuery,
    PageRangeQuery,
    SessionsQuery,
    kpis_source,
    top_pages_source,
)

T0 = parse_ts("2026-01-01T00:00:00Z")
MINUTE = 60_000
DAY = 1440 * MINUTE
FROM = ("from", "2026-01-01T00:00:00Z")
TO = ("to", "2026-01-01T01:00:00Z")


def _error(call: Any, *args: Any) -> str:
    with pytest.raises(BadParameter) as caught:
        call(*args)
    return str(caught.value)


# --------------------------------------------------------------------------- routing


def test_kpis_with_a_bucket_read_the_database() -> None:
    assert kpis_source([FROM, TO, ("bucket", "1h")]) == (DATABASE, [FROM, TO, ("bucket", "1h")])
    assert kpis_source([FROM, TO]) == (LIVE, [FROM, TO])
    # an empty bucket counts as absent, and the live parser does not see it
    assert kpis_source([FROM, ("bucket", "")]) == (LIVE, [FROM])
    assert kpis_source([]) == (LIVE, [])


def test_top_pages_with_a_range_read_the_database() -> None:
    assert top_pages_source([FROM, TO, ("limit", "3")]) == (DATABASE, [FROM, TO, ("limit", "3")])
    assert top_pages_source([FROM])[0] == DATABASE
    assert top_pages_source([("to", "2026-01-01T00:00:00Z")])[0] == DATABASE
    assert top_pages_source([("minutes", "5")]) == (LIVE, [("minutes", "5")])
    assert top_pages_source([]) == (LIVE, [])
    assert top_pages_source([("from", ""), ("minutes", "5")]) == (LIVE, [("minutes", "5")])
    assert top_pages_source([FROM, TO, ("minutes", "")]) == (DATABASE, [FROM, TO])


def test_minutes_with_a_range_is_a_conflict() -> None:
    message = _error(top_pages_source, [FROM, ("minutes", "5")])
    assert message.startswith("minutes: cannot be combined with from/to")
    assert "live state" in message and "database" in message


# --------------------------------------------------------------------------- parameters


def test_bucketed_kpis_need_a_known_bucket_and_both_bounds() -> None:
    query = KpiBucketsQuery.parse([FROM, TO, ("bucket", "1m")])
    assert query == KpiBucketsQuery("1m", T0, T0 + 60 * MINUTE)
    assert query.width == timedelta(minutes=1)
    assert KpiBucketsQuery.parse([FROM, TO, ("bucket", "1d")]).width == timedelta(days=1)
    assert _error(KpiBucketsQuery.parse, [FROM, TO, ("bucket", "2m")]) == (
        "bucket: must be one of 1m, 1h, 1d, got '2m'"
    )
    assert _error(KpiBucketsQuery.parse, [TO, ("bucket", "1h")]) == ("from: required with bucket")
    assert _error(KpiBucketsQuery.parse, [FROM, ("bucket", "1h")]) == "to: required with bucket"
    assert _error(KpiBucketsQuery.parse, [FROM, ("to", FROM[1]), ("bucket", "1h")]) == (
        "to: must be later than from"
    )
    assert _error(KpiBucketsQuery.parse, [("from", "soon"), TO, ("bucket", "1h")]).startswith(
        "from: must be an RFC 3339 timestamp"
    )
    assert _error(KpiBucketsQuery.parse, [FROM, TO, ("bucket", "1h"), ("minutes", "5")]).startswith(
        "minutes: unknown parameter (this endpoint takes: from, to, bucket)"
    )


def test_the_number_of_buckets_is_capped_on_the_utc_grid() -> None:
    week = 7 * DAY
    assert week // MINUTE == MAX_BUCKETS
    ok = [("from", "2026-01-01T00:00:00Z"), ("to", "2026-01-08T00:00:00Z"), ("bucket", "1m")]
    assert KpiBucketsQuery.parse(ok).to_ms - KpiBucketsQuery.parse(ok).from_ms == week
    # the same length off the grid touches one bucket more
    off = [("from", "2026-01-01T00:00:30Z"), ("to", "2026-01-08T00:00:30Z"), ("bucket", "1m")]
    assert _error(KpiBucketsQuery.parse, off) == (
        f"bucket: from-to spans {MAX_BUCKETS + 1} buckets of 1m, at most {MAX_BUCKETS}: "
        "use a wider bucket or a shorter range"
    )
    wide = [("from", "2000-01-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z"), ("bucket", "1d")]
    assert KpiBucketsQuery.parse(wide).bucket == "1d"


def test_a_page_range_needs_both_bounds_and_a_limit_in_range() -> None:
    assert PageRangeQuery.parse([FROM, TO]) == PageRangeQuery(T0, T0 + 60 * MINUTE, 10)
    assert PageRangeQuery.parse([FROM, TO, ("limit", "100")]).limit == 100
    assert _error(PageRangeQuery.parse, [FROM]).startswith("to: required with from or to")
    assert _error(PageRangeQuery.parse, [FROM, TO, ("limit", "0")]) == (
        "limit: must be a whole number from 1 to 100, got '0'"
    )
    assert _error(PageRangeQuery.parse, [FROM, TO, ("limit", "1"), ("limit", "2")]) == (
        "limit: given more than once"
    )


def test_sessions_need_a_user_and_take_open_bounds() -> None:
    assert SessionsQuery.parse([("user_id", "u1")]) == SessionsQuery("u1", None, None, 100)
    assert SessionsQuery.parse([("user_id", "u1"), FROM, ("limit", "1000")]) == SessionsQuery(
        "u1", T0, None, 1000
    )
    assert _error(SessionsQuery.parse, []) == "user_id: required"
    assert _error(SessionsQuery.parse, [("user_id", "")]) == "user_id: required"
    assert _error(SessionsQuery.parse, [("user_id", "x" * 129)]) == (
        "user_id: must be 1 to 128 characters, got 129"
    )
    assert _error(SessionsQuery.parse, [("user_id", "u"), ("limit", "1001")]) == (
        "limit: must be a whole number from 1 to 1000, got '1001'"
    )
    assert _error(SessionsQuery.parse, [("user_id", "u"), TO, ("from", TO[1])]) == (
        "to: must be later than from"
    )


# --------------------------------------------------------------------------- SQL


def test_timescaledb_buckets_with_time_bucket_and_postgresql_with_date_bin() -> None:
    timescale = queries.kpi_buckets_sql(TIMESCALE).as_string()
    plain = queries.kpi_buckets_sql(PLAIN).as_string()
    assert "SELECT time_bucket(%(width)s::interval, window_start) AS bucket_start" in timescale
    assert "date_bin" not in timescale
    assert (
        "SELECT date_bin(%(width)s::interval, window_start, %(origin)s::timestamptz) "
        "AS bucket_start" in plain
    )
    assert "time_bucket" not in plain
    assert (
        queries.kpi_buckets_sql(None).as_string() == plain
    )  # mode unknown: date_bin works everywhere
    for sql in (timescale, plain):
        assert "WHERE is_final AND window_start >= %(from)s AND window_start < %(to)s" in sql
        assert "GROUP BY 1\nORDER BY 1" in sql
        assert "{" not in sql and "sum(total_events)::bigint" in sql


def test_parameters_are_bound_never_formatted_into_the_sql() -> None:
    params = queries.kpi_bucket_params("1h", T0, T0 + DAY)
    assert params == {
        "width": timedelta(hours=1),
        "origin": datetime(2000, 1, 1, tzinfo=UTC),
        "from": datetime(2026, 1, 1, tzinfo=UTC),
        "to": datetime(2026, 1, 2, tzinfo=UTC),
    }
    assert queries.top_pages_params(T0, T0 + MINUTE, 5)["limit"] == 5
    assert "LIMIT %(limit)s" in queries.TOP_PAGES
    assert 'ORDER BY views DESC, page COLLATE "C"' in queries.TOP_PAGES
    sessions = queries.user_sessions_params("u'1", None, T0, 10)
    assert sessions == {"user_id": "u'1", "from": None, "to": datetime(2026, 1, 1, tzinfo=UTC),
                        "limit": 11}  # fmt: skip
    user_sessions = queries.USER_SESSIONS.as_string()
    assert "user_id = %(user_id)s" in user_sessions
    assert "%(from)s::timestamptz IS NULL OR window_start >= %(from)s" in user_sessions


# --------------------------------------------------------------------------- answers


def _bucket_row(**changes: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {
        "start": datetime(2026, 1, 1, 1, tzinfo=UTC),
        "windows": 3,
        "events": 40,
        "page_views": 20,
        "conversions": 3,
        "purchases": 2,
        "revenue": Decimal("30.10"),
        "new_users": 5,
        "total_users": 12,
        "peak_active": 6,
        "active_windows": 15,
        "sessions": 8,
        "duration_ms": 96_000,
        "bounces": 2,
        "engagement_x10000": 3_200_000,  # 320 points over 8 session windows
        "late": 4,
    }
    row.update(changes)
    return tuple(row.values())


def test_a_bucket_sums_and_recomputes_ratios_from_the_sums() -> None:
    bucket = queries.kpi_bucket(_bucket_row(), timedelta(hours=1))
    assert bucket == {
        "bucket_start": "2026-01-01T01:00:00.000Z",
        "bucket_end": "2026-01-01T02:00:00.000Z",
        "windows": 3,
        "total_events": 40,
        "total_page_views": 20,
        "total_conversions": 3,
        "purchases": 2,
        "total_revenue": 30.1,
        "total_revenue_cents": 3010,
        "new_users": 5,
        "total_users": 12,
        "peak_active_users": 6,
        "active_user_windows": 15,
        "session_windows": 8,
        "average_order_value": 15.05,
        "average_session_duration_seconds": 12.0,
        "bounce_rate_percent": 25.0,
        "average_engagement_score": 40.0,
        "conversion_rate_percent": 37.5,
        "conversions_per_session": 0.375,
        "late_events_total": 4,
    }
    assert "revenue_per_user" not in bucket


def test_a_bucket_without_sessions_or_purchases_divides_to_zero() -> None:
    row = _bucket_row(purchases=0, sessions=0, duration_ms=0, bounces=0, engagement_x10000=0)
    bucket = queries.kpi_bucket(row, timedelta(minutes=1))
    assert bucket["bucket_end"] == "2026-01-01T01:01:00.000Z"
    for name in (
        "average_order_value",
        "average_session_duration_seconds",
        "bounce_rate_percent",
        "average_engagement_score",
        "conversion_rate_percent",
        "conversions_per_session",
    ):
        assert bucket[name] == 0, name


def test_pages_and_sessions_are_shaped_like_the_live_answers() -> None:
    assert queries.top_page(("/a", 3, 2, 900)) == {
        "page": "/a",
        "views": 3,
        "visitor_windows": 2,
        "total_time_on_page_ms": 900,
        "avg_time_on_page_ms": 300.0,
    }
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(seconds=9)
    stored = {"user_id": "u1", "session_id": "s1", "window_start": start, "window_end": end,
              "duration_seconds": 9.0, "total_events": 3, "actions": {"page_view": 2},
              "pages": {"/a": 2}, "unique_pages": 1, "total_duration_ms": 4000,
              "average_duration_ms": 1333.3, "device_type": "mobile", "country": "DE",
              "is_bounce": False, "conversions": 1, "revenue": Decimal("25.50"),
              "engagement_score": 24.4}  # fmt: skip
    session = queries.closed_session([stored[column] for column in queries.SESSION_COLUMNS])
    assert session["window_start"] == "2026-01-01T00:00:00.000Z"
    assert session["window_end"] == "2026-01-01T00:00:09.000Z"
    assert (session["revenue"], session["revenue_cents"]) == (25.5, 2550)
    assert session["open"] is False and session["actions"] == {"page_view": 2}
    assert list(session) == list(field_names(ClosedSession))  # every field, in its order


# --------------------------------------------------------------------------- funnels


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], "from: required, a date like 2026-01-01"),
        ([("from", ""), ("to", "2026-01-01")], "from: required"),
        ([("from", "2026-01-01")], "to: required, a date like 2026-01-01"),
        ([("from", "2026-1-01"), ("to", "2026-01-02")],
         "from: must be a date like 2026-01-01, got '2026-1-01'"),
        ([("from", "2026-01-01T00:00:00Z"), ("to", "2026-01-02")], "from: must be a date like"),
        ([("from", "2026-01-01"), ("to", "2026-02-30")], "to: '2026-02-30' is not a calendar date"),
        ([("from", "2026-01-02"), ("to", "2026-01-01")],
         "to: must not be before from (2026-01-02)"),
        ([("from", "2024-01-01"), ("to", "2025-01-01")],
         "to: from-to spans 367 days, at most 366: ask for fewer days"),
        ([("from", "2026-01-01"), ("to", "2026-01-02"), ("day", "x")], "day: unknown parameter"),
        ([("from", "2026-01-01"), ("from", "2026-01-01")], "from: given more than once"),
    ],
)  # fmt: skip
def test_a_funnel_range_needs_two_dates_in_order_and_at_most_a_year(
    query: list[tuple[str, str]], message: str
) -> None:
    assert _error(FunnelRangeQuery.parse, query).startswith(message)


def test_a_funnel_range_is_inclusive() -> None:
    one = FunnelRangeQuery.parse([("from", "2026-01-01"), ("to", "2026-01-01")])
    assert (one.first, one.last) == (date(2026, 1, 1), date(2026, 1, 1))
    leap_year = FunnelRangeQuery.parse([("from", "2024-01-01"), ("to", "2024-12-31")])
    assert (leap_year.last - leap_year.first).days + 1 == MAX_FUNNEL_DAYS == 366


CHECKOUT = FunnelSpec(
    "checkout",
    (Stage("page_view", "/products"), Stage("add_to_cart"), Stage("checkout"), Stage("purchase")),
)
JAN_1, JAN_2, JAN_3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)


def funnel_day(day: date, attempts: list[tuple[int, ...]], *, final: bool = True) -> list[Any]:
    """A stored day (``FUNNEL_DAYS`` columns but the first) made as the combiner makes it."""
    part = DayPartial()
    for stamps in attempts:
        part.add(stamps, +1)
    number = day_number(day)
    row = day_row(CHECKOUT, number, part, final_at(CHECKOUT, number) - (0 if final else 1))
    return [day, row["is_final"], row["stages"], part.encode()[1]]


def funnel_rows(latest_final: date | None, *days: list[Any]) -> list[tuple[Any, ...]]:
    if not days:
        return [(latest_final, None, None, None, None)]  # the LEFT JOIN's one row
    return [(latest_final, *day) for day in days]


#: Jan 1: three users; to add_to_cart after 4 s and 6 s, one on to checkout after 5 s.
#: Jan 2: two users, both to add_to_cart (1 s, 2 s), one on to checkout after 3.001 s.
FIRST = funnel_day(JAN_1, [(0, 4_000, 9_000), (0, 6_000), (0,)])
SECOND = funnel_day(JAN_2, [(0, 1_000), (0, 2_000, 5_001)])


def test_a_funnel_range_adds_the_days_and_merges_their_durations() -> None:
    answer = queries.funnel_range(CHECKOUT, JAN_1, JAN_2, funnel_rows(JAN_2, FIRST, SECOND))
    assert [day["day"] for day in answer["days"]] == ["2026-01-01", "2026-01-02"]
    assert answer["days"][1]["durations_ms"] == [[1_000, 1, 2_000, 1], [3_001, 1]]
    assert answer["days"][0]["stages"][0]["median_seconds"] == 5.0  # that day's own
    assert answer["days"][1]["stages"][0]["median_seconds"] == 1.5
    assert answer["total"] == {
        "stages": [
            # 1, 2, 4, 6 s: the mean of the two middle ones (not 3.25, the mean of the medians)
            {"stage": "page_view:/products", "reached": 5, "drop_off_percent": 20.0,
             "median_seconds": 3.0},
            # 3.001 s and 5 s: half a millisecond survives
            {"stage": "add_to_cart", "reached": 4, "drop_off_percent": 50.0,
             "median_seconds": 4.0005},
            {"stage": "checkout", "reached": 2, "drop_off_percent": 100.0,
             "median_seconds": None},
            {"stage": "purchase", "reached": 0, "drop_off_percent": None,
             "median_seconds": None},
        ]
    }  # fmt: skip
    assert (answer["funnel"], answer["from"], answer["to"]) == (
        "checkout",
        "2026-01-01",
        "2026-01-02",
    )
    assert answer["is_final"] is True and answer["excluded_from_total"] == []
    # one day alone: its own figures
    alone = queries.funnel_range(CHECKOUT, JAN_1, JAN_1, funnel_rows(JAN_2, FIRST))
    assert alone["total"]["stages"] == FIRST[2]


@pytest.mark.parametrize(
    ("latest_final", "days", "last", "final"),
    [
        (JAN_2, [FIRST, SECOND], JAN_2, True),
        (JAN_3, [FIRST, SECOND], JAN_3, True),  # Jan 3 had no attempt, and is final
        (JAN_1, [FIRST, SECOND], JAN_2, False),  # Jan 2 is not final yet
        (JAN_3, [FIRST, funnel_day(JAN_2, [(0,)], final=False)], JAN_2, False),  # not stored yet
        (None, [], JAN_2, False),  # nothing stored: nothing known to be final
        (JAN_3, [], JAN_2, True),  # no attempt in the range, which is final
    ],
)
def test_a_funnel_range_is_final_once_every_day_of_it_is(
    latest_final: date | None, days: list[list[Any]], last: date, final: bool
) -> None:
    answer = queries.funnel_range(CHECKOUT, JAN_1, last, funnel_rows(latest_final, *days))
    assert answer["is_final"] is final
    assert len(answer["days"]) == len(days)


def test_a_funnel_range_without_days_has_a_total_of_nobody() -> None:
    answer = queries.funnel_range(CHECKOUT, JAN_1, JAN_3, funnel_rows(None))
    assert answer["days"] == []
    assert [s["reached"] for s in answer["total"]["stages"]] == [0, 0, 0, 0]
    assert [s["drop_off_percent"] for s in answer["total"]["stages"]] == [0.0, 0.0, 0.0, None]
    assert all(s["median_seconds"] is None for s in answer["total"]["stages"])


def test_a_day_stored_with_other_stages_is_shown_but_not_added() -> None:
    """The funnel was changed under its name (analytics.funnels: not supported): such a day
    cannot be added to the configured stages, and the answer says which days were left out."""
    changed = funnel_day(JAN_1, [(0, 4_000)])
    changed[2] = [dict(stage, stage=f"x{k}") for k, stage in enumerate(changed[2])]
    answer = queries.funnel_range(CHECKOUT, JAN_1, JAN_2, funnel_rows(JAN_2, changed, SECOND))
    assert [day["day"] for day in answer["days"]] == ["2026-01-01", "2026-01-02"]
    assert answer["excluded_from_total"] == ["2026-01-01"]
    assert answer["total"]["stages"] == SECOND[2]


def test_the_funnel_query_binds_its_parameters() -> None:
    params = queries.funnel_days_params("checkout", JAN_1, JAN_2)
    assert params == {"funnel": "checkout", "from": JAN_1, "to": JAN_2}
    for name in params:
        assert f"%({name})s" in queries.FUNNEL_DAYS
    assert "LEFT JOIN funnel_stats" in queries.FUNNEL_DAYS  # one row even without days


# --------------------------------------------------------------------------- experiments


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([("limit", "0")], "limit: must be a whole number from 1 to 1000, got '0'"),
        ([("limit", "1001")], "limit: must be a whole number from 1 to 1000"),
        ([("limit", "ten")], "limit: must be a whole number from 1 to 1000, got 'ten'"),
        ([("experiment", "x")], "experiment: unknown parameter (this endpoint takes: limit)"),
    ],
)
def test_the_experiment_list_takes_a_limit_only(query: list[tuple[str, str]], message: str) -> None:
    assert _error(ExperimentsQuery.parse, query).startswith(message)


def test_the_experiment_list_shows_100_experiments_unless_asked() -> None:
    assert ExperimentsQuery.parse([]).limit == 100
    assert ExperimentsQuery.parse([("limit", "")]).limit == 100
    assert ExperimentsQuery.parse([("limit", "1000")]).limit == 1000


#: when the rows were written (the stored rows' updated_at)
WRITTEN = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def stored_variants(
    experiment: str,
    variants: dict[str, tuple[int, int, int, int]],
    written: datetime = WRITTEN,
) -> list[tuple[Any, ...]]:
    """Rows of ``EXPERIMENTS`` as the sink stores experiment-stats records (by variant name)."""
    records = experiment_records(variants, experiment)
    rows = [(*EXPERIMENT_STATS.convert(record), written) for record in records]
    return sorted(rows, key=lambda row: row[1].encode())


def test_stored_variants_are_shown_as_published_the_control_first() -> None:
    rows = stored_variants("checkout_button", BUTTON | {"Blue": (30, 3, 0, 0)})
    assert [row[1] for row in rows] == ["Blue", "control", "green"]  # as the SQL orders them
    (experiment,) = queries.experiment_groups(rows, "control")
    published = {r["variant"]: r for r in experiment_records(BUTTON | {"Blue": (30, 3, 0, 0)})}
    assert [v["variant"] for v in experiment["variants"]] == ["control", "Blue", "green"]
    for variant in experiment["variants"]:
        assert variant == published[variant["variant"]]  # every field, as published
    assert experiment["variants"][2]["revenue"] == 980.1
    assert experiment["variants"][2]["revenue_cents"] == 98_010
    assert experiment["variants"][2]["revenue_per_user"] == 8.91
    assert (experiment["experiment"], experiment["users"]) == ("checkout_button", 260)
    assert experiment["variant_conflicts"] == 3
    assert experiment["updated_at"] == "2026-01-02T03:04:05.678Z"


def test_an_experiment_without_a_control_is_shown_by_variant_name() -> None:
    rows = stored_variants("hero", {"b": (5, 1, 0, 0), "a": (4, 0, 0, 0)})
    (experiment,) = queries.experiment_groups(rows, "control")
    assert [v["variant"] for v in experiment["variants"]] == ["a", "b"]
    assert all(v["p_value"] is None and v["significant"] is False for v in experiment["variants"])


def test_the_experiment_list_says_when_more_are_stored() -> None:
    later = WRITTEN + timedelta(seconds=1)
    rows = [
        *stored_variants("a_test", {"control": (10, 1, 0, 0), "x": (10, 2, 0, 0)}),
        *stored_variants("b_test", {"control": (1, 0, 0, 0)}, later),
        *stored_variants("c_test", {"control": (1, 0, 0, 0)}),
    ]
    answer = queries.experiment_list(rows, "control", 2)
    assert [e["experiment"] for e in answer["experiments"]] == ["a_test", "b_test"]
    assert (answer["limit"], answer["truncated"], answer["control_variant"]) == (2, True, "control")
    assert answer["experiments"][1]["updated_at"] == format_ts(parse_ts("2026-01-02T03:04:06.678Z"))
    whole = queries.experiment_list(rows, "control", 3)
    assert (len(whole["experiments"]), whole["truncated"]) == (3, False)
    assert queries.experiment_list([], "control", 100) == {
        "control_variant": "control",
        "limit": 100,
        "truncated": False,
        "experiments": [],
    }


def test_the_experiment_queries_bind_their_parameters() -> None:
    assert queries.experiments_params(100) == {"limit": 101}  # one more: are there more?
    assert "LIMIT %(limit)s" in queries.EXPERIMENTS.as_string(None)
    assert queries.experiment_params("a b/c") == {"experiment": "a b/c"}
    assert "WHERE s.experiment = %(experiment)s" in queries.EXPERIMENT.as_string(None)
    for query in (queries.EXPERIMENTS, queries.EXPERIMENT):
        assert 'COLLATE "C"' in query.as_string(None)  # code point order, as the answer sorts


# --------------------------------------------------------------------------- cohorts


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], "from: required, a date like 2026-01-01"),
        ([("from", "2026-01-01")], "to: required, a date like 2026-01-01"),
        ([("from", "2026-01-01"), ("to", "2026-1-2")],
         "to: must be a date like 2026-01-01, got '2026-1-2'"),
        ([("from", "2026-01-02"), ("to", "2026-01-01")],
         "to: must not be before from (2026-01-02)"),
        ([("from", "2025-01-01"), ("to", "2026-01-02")],
         "to: from-to spans 367 days, at most 366: ask for fewer days"),
        ([("from", "2026-01-01"), ("to", "2026-01-02"), ("days", "91")],
         "days: must be a whole number from 0 to 90, got '91'"),
        ([("from", "2026-01-01"), ("to", "2026-01-02"), ("days", "-1")],
         "days: must be a whole number from 0 to 90"),
        ([("from", "2026-01-01"), ("to", "2026-01-02"), ("day", "1")],
         "day: unknown parameter (this endpoint takes: from, to, days)"),
        ([("from", "2026-01-01"), ("to", "2026-01-02"), ("days", "1"), ("days", "2")],
         "days: given more than once"),
    ],
)  # fmt: skip
def test_a_cohort_range_needs_two_dates_and_days_up_to_the_configured_offset(
    query: list[tuple[str, str]], message: str
) -> None:
    assert _error(CohortRangeQuery.parse, query, 90).startswith(message)


def test_a_cohort_range_defaults_to_every_configured_offset() -> None:
    every = CohortRangeQuery.parse([("from", "2026-01-01"), ("to", "2026-01-07")], 90)
    assert (every.first, every.last, every.days) == (date(2026, 1, 1), date(2026, 1, 7), 90)
    day_0 = CohortRangeQuery.parse(
        [("from", "2026-01-01"), ("to", "2026-01-01"), ("days", "0")], 90
    )
    assert day_0.days == 0
    year = CohortRangeQuery.parse([("from", "2024-01-01"), ("to", "2024-12-31")], 30)
    assert (year.last - year.first).days + 1 == MAX_COHORT_DAYS == 366


def stored_cells(*records: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of ``COHORT_CELLS`` as the sink stores cohort-stats records (by cohort, offset)."""
    rows = [COHORT_STATS.convert(record) for record in records]
    return sorted(rows, key=lambda row: (row[0], row[1]))


def test_a_retention_triangle_shows_each_cohort_with_its_cells_as_published() -> None:
    jan_1 = [
        cohort_record(0, retained=40, cumulative_cents=50_000),
        cohort_record(1, retained=10, cumulative_cents=123_456),
        cohort_record(2, retained=4, cumulative_cents=123_456, engagement=(0, 0), is_final=False),
    ]
    # a later cohort whose first day is live: two of its users may still move to Jan 1
    jan_2 = [cohort_record(0, size=7, retained=7, cohort=JAN_2, is_final=False)]
    answer = queries.retention_triangle(JAN_1, JAN_3, 2, stored_cells(*jan_2, *jan_1))
    assert (answer["from"], answer["to"], answer["days"]) == ("2026-01-01", "2026-01-03", 2)
    first, second = answer["cohorts"]
    assert (first["cohort"], first["cohort_size"], first["days"]) == ("2026-01-01", 40, jan_1)
    assert (second["cohort"], second["cohort_size"], second["days"]) == ("2026-01-02", 7, jan_2)
    assert [cell["retention_rate_percent"] for cell in first["days"]] == [100.0, 25.0, 10.0]
    assert first["days"][1]["cumulative_revenue_cents"] == 123_456
    assert first["days"][1]["cumulative_revenue_per_user"] == 30.86
    assert first["days"][2]["average_engagement_score"] == 0.0
    assert queries.retention_triangle(JAN_1, JAN_1, 0, [])["cohorts"] == []


def test_a_cohort_size_is_its_latest_cells() -> None:
    """While a cohort's first day is live its users can move to an earlier cohort (a late
    event), so an earlier cell may carry an older size."""
    cells = stored_cells(
        cohort_record(0, size=9, retained=9, is_final=False),
        cohort_record(1, size=8, retained=2, is_final=False),
    )
    (cohort,) = queries.retention_triangle(JAN_1, JAN_1, 90, cells)["cohorts"]
    assert cohort["cohort_size"] == 8


def test_the_cohort_query_binds_its_parameters() -> None:
    params = queries.cohort_cells_params(JAN_1, JAN_3, 7)
    assert params == {"from": JAN_1, "to": JAN_3, "days": 7}
    text = queries.COHORT_CELLS.as_string(None)
    for name in params:
        assert f"%({name})s" in text
    assert "ORDER BY cohort, day_offset" in text


# --------------------------------------------------------------------------- reader


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a stuck database)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_database_that_never_answers_is_unavailable_within_the_timeout(
    silent_server: int,
) -> None:
    url = f"postgresql://analytics@127.0.0.1:{silent_server}/analytics"
    started = time.monotonic()
    with pytest.raises(reader.DatabaseUnavailable) as caught:
        await reader.fetch(url, "SELECT 1", {}, timeout=timedelta(milliseconds=500))
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3, elapsed
    assert str(caught.value) == "no answer within 0.5 s"


async def test_a_refused_connection_is_unavailable_with_the_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        url = f"postgresql://analytics@127.0.0.1:{port}/analytics"
        with pytest.raises(reader.DatabaseUnavailable) as caught:
            await reader.fetch(url, "SELECT 1", {})
    assert str(caught.value).startswith("OperationalError: ")
    assert "refused" in str(caught.value)


def test_the_connection_is_bounded_and_in_utc() -> None:
    info = reader.conninfo("postgresql://a@h:5/d", timedelta(seconds=5))
    assert "connect_timeout=3" in info
    assert "statement_timeout=5000" in info and "TimeZone=UTC" in info


async def test_the_mode_is_the_sinks_when_they_know_it() -> None:
    class NoQueries:
        async def execute(self, *args: Any) -> None:
            raise AssertionError("the mode was known")

    health.reset()
    try:
        health.set_database("postgresql://a@h/d", TIMESCALE)
        assert await reader.mode_of(NoQueries(), "postgresql://a@h/d") == TIMESCALE  # type: ignore[arg-type]
    finally:
        health.reset()
