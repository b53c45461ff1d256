"""sinks/: record → row conversion, the batch preparation (one row per key, final KPI records
win), the upsert SQL, the migrations' SQL and mode choice, URL redaction and error triage.

No database here: tests/integration/test_sinks.py runs the same code against PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from analytics.cohorts import MAX_DAY_OFFSET, cohort_row
from analytics.experiments import ExperimentPartial, ExperimentsSpec
from analytics.experiments import rows as experiment_rows
from analytics.funnels import DayPartial, FunnelSpec, Stage, day_row
from analytics.kpis import kpi_figures, trends
from analytics.rows import Row as EventRow
from analytics.sessions import session_figures
from analytics.timeutil import day_number, format_ts
from analytics.traffic import dimension_rows, page_rows
from app.settings import SINK_TABLES, DatabaseSinkSettings
from sinks import migrations
from sinks.db import describe, redact_url, worth_waiting
from sinks.schema import (
    COHORT_STATS,
    DIMENSION_STATS,
    EXPERIMENT_STATS,
    FUNNEL_STATS,
    KPI_METRICS,
    PAGE_VIEW_STATS,
    SESSION_METRICS,
    TABLES,
    RowError,
    TableSpec,
    bulk_upsert_statement,
    check_columns,
    column_arrays,
    prepare,
    upsert_statement,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
WINDOW = 60_000
START = datetime(2026, 1, 1, tzinfo=UTC)
SUMS = {
    "events": 10,
    "page_views": 4,
    "revenue_cents": 12_345,
    "purchases": 2,
    "active_users": 3,
    "users_total": 5,
    "new_users": 1,
    "sessions": 2,
    "bounces": 1,
    "session_duration_ms": 5_000,
    "engagement_x10000": 500_000,
    "conversions": 2,
}


def kpi_record(*, is_final: bool = True, start: int = T0, **changes: Any) -> dict[str, Any]:
    """A live-kpis record as agents/kpi_combiner.py publishes it."""
    record = kpi_figures(start, WINDOW, SUMS)
    record["trends"] = trends(SUMS, None)
    record["late_events_total"] = 0
    record["is_final"] = is_final
    record.update(changes)
    return record


def session_record() -> dict[str, Any]:
    """A session-metrics record as agents/behavior_tracker.session_record publishes it."""
    rows = [
        EventRow(T0, "e1", "s1", "page_view", "/home", 1_000, "mobile", "DE", "Safari", False, 0),
        EventRow(T0 + 5_000, "e2", "s1", "purchase", "", 0, "", "", "", True, 1_999),
    ]
    record = session_figures("u1", rows)
    record["window_start"] = format_ts(record.pop("window_start_ms"))
    record["window_end"] = format_ts(record.pop("window_end_ms"))
    record["revenue"] = round(record["revenue_cents"] / 100, 2)
    return record


def as_dict(spec: TableSpec, record: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(spec.columns, spec.convert(record), strict=True))


# --------------------------------------------------------------------------- conversion


def test_a_kpi_record_becomes_a_row_with_exact_money() -> None:
    row = as_dict(KPI_METRICS, kpi_record())
    assert row["window_start"] == START
    assert row["window_end"] == START + timedelta(minutes=1)
    assert row["total_revenue"] == Decimal("123.45")  # from the cents, not the float
    assert row["average_order_value"] == Decimal("61.73")  # 123.45 / 2, as published
    assert row["revenue_per_user"] == Decimal("41.15")
    assert row["total_events"] == 10 and row["is_final"] is True
    assert (
        isinstance(row["trends"], Jsonb) and row["trends"].obj["total_events"]["trend"] == "stable"
    )
    assert row["bounce_rate_percent"] == 50.0


def test_a_live_kpi_record_becomes_a_live_row() -> None:
    row = as_dict(KPI_METRICS, kpi_record(is_final=False))
    assert row["is_final"] is False
    assert row["total_sessions"] == 2 and row["total_events"] == 10


def test_a_live_kpi_record_without_session_figures_keeps_them_null() -> None:
    """Live records of earlier versions carried null session figures; they still load."""
    record = kpi_record(is_final=False, total_sessions=None, average_engagement_score=None)
    row = as_dict(KPI_METRICS, record)
    assert row["total_sessions"] is None and row["average_engagement_score"] is None
    assert row["total_events"] == 10


def test_a_session_record_becomes_a_row() -> None:
    row = as_dict(SESSION_METRICS, session_record())
    assert (row["user_id"], row["session_id"], row["window_start"]) == ("u1", "s1", START)
    assert row["window_end"] == START + timedelta(seconds=5)
    assert row["revenue"] == Decimal("19.99")
    assert row["actions"].obj == {"page_view": 1, "purchase": 1}
    assert row["pages"].obj == {"/home": 1}
    assert row["device_type"] == "mobile" and row["country"] == "DE"
    assert row["duration_seconds"] == 5.0 and row["is_bounce"] is False


def test_page_and_dimension_records_become_rows() -> None:
    (page,) = page_rows(T0, WINDOW, {"/a": [3, 2, 900]})
    row = as_dict(PAGE_VIEW_STATS, page)
    assert row == {
        "window_start": START,
        "window_end": START + timedelta(minutes=1),
        "page": "/a",
        "views": 3,
        "unique_visitors": 2,
        "total_time_on_page_ms": 900,
        "avg_time_on_page_ms": 300.0,
    }
    (dim,) = dimension_rows(T0, WINDOW, {"device": {"mobile": [4, 2, 1, 1_005]}})
    row = as_dict(DIMENSION_STATS, dim)
    assert (row["dimension"], row["value"], row["revenue"]) == (
        "device",
        "mobile",
        Decimal("10.05"),
    )


def test_money_without_cents_is_rounded_half_up_to_the_cent() -> None:
    dim = next(iter(dimension_rows(T0, WINDOW, {"country": {"FR": [1, 1, 0, 0]}})))
    del dim["revenue_cents"]
    dim["revenue"] = 0.125
    row = as_dict(DIMENSION_STATS, dim)
    assert row["revenue"] == Decimal("0.13")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"views": "3"}, "views: expected an integer"),
        ({"views": True}, "views: expected an integer"),
        ({"window_start": "yesterday"}, "window_start: not an RFC 3339 timestamp"),
        ({"window_start": 1_767_225_600_000}, "window_start: expected RFC 3339 text"),
        ({"page": None}, "page: expected text"),
        ({"avg_time_on_page_ms": "fast"}, "avg_time_on_page_ms: expected a number"),
    ],
)
def test_a_record_that_cannot_be_a_row_names_the_field(
    change: dict[str, Any], message: str
) -> None:
    (page,) = page_rows(T0, WINDOW, {"/a": [3, 2, 900]})
    with pytest.raises(RowError, match=message):
        PAGE_VIEW_STATS.convert(page | change)


def test_a_missing_field_is_named() -> None:
    record = kpi_record()
    del record["is_final"]
    with pytest.raises(RowError, match="missing field 'is_final'"):
        KPI_METRICS.convert(record)


def test_infinite_or_unparsable_amounts_are_refused() -> None:
    for amount in ("lots", "Infinity", float("nan")):
        record = kpi_record()
        record["average_order_value"] = amount
        with pytest.raises(RowError, match="average_order_value"):
            KPI_METRICS.convert(record)


# --------------------------------------------------------------------------- funnel records


CHECKOUT = FunnelSpec(
    "checkout",
    (Stage("page_view", "/products"), Stage("add_to_cart"), Stage("checkout"), Stage("purchase")),
)
DAY = date(2026, 1, 1)
DAY_MS = 86_400_000


def funnel_record(
    attempts: tuple[tuple[int, ...], ...] = ((0, 4_000, 9_000), (0, 6_000), (0,)),
    *,
    is_final: bool = True,
    day: date = DAY,
) -> dict[str, Any]:
    """A funnel-stats record of the shipped ``checkout`` funnel as
    analytics/journey_combiner.publish makes it, each attempt the ms of its stages from the
    day's start; by default three users, two reaching add_to_cart (after 4 s and 6 s), one of
    them checkout, nobody purchase."""
    number = day_number(day)
    part = DayPartial()
    for stamps in attempts:
        part.add([number * DAY_MS + ms for ms in stamps], +1)
    final_at = (number + 1) * DAY_MS + CHECKOUT.window_ms
    record = day_row(CHECKOUT, number, part, final_at if is_final else final_at - 1)
    record["durations_ms"] = part.encode()[1]
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(record))  # as the sink decodes it
    return parsed


def test_a_funnel_record_becomes_a_row_keeping_its_stages_and_durations() -> None:
    record = funnel_record()
    assert record["durations_ms"] == [[4_000, 1, 6_000, 1], [5_000, 1]]  # checkout: none
    row = as_dict(FUNNEL_STATS, record)
    assert (row["funnel"], row["day"], row["is_final"]) == ("checkout", DAY, True)
    assert isinstance(row["stages"], Jsonb) and row["stages"].obj == record["stages"]
    assert [stage["reached"] for stage in row["stages"].obj] == [3, 2, 1, 0]
    assert row["stages"].obj[0]["median_seconds"] == 5.0  # (4 s + 6 s) / 2
    assert row["durations_ms"].obj == record["durations_ms"]
    assert FUNNEL_STATS.key_of(FUNNEL_STATS.convert(record)) == ("checkout", DAY)
    assert as_dict(FUNNEL_STATS, funnel_record(is_final=False))["is_final"] is False


def assert_refused(
    spec: TableSpec, record: dict[str, Any], change: Any, message: str | None
) -> None:
    """``record`` changed by ``change`` (fields to set, or a function that edits it) is refused
    with an error starting with ``message``; with ``message`` None it becomes a row."""
    if callable(change):
        change(record)
    else:
        record |= change
    if message is None:
        check_columns(spec, spec.convert(record))
        return
    with pytest.raises(RowError) as raised:
        check_columns(spec, spec.convert(record))
    assert str(raised.value).startswith(message), str(raised.value)


def _stage(k: int, **changes: Any) -> Any:
    def change(record: dict[str, Any]) -> None:
        record["stages"][k].update(changes)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"day": "2026-1-1"}, "day: expected a date YYYY-MM-DD, got '2026-1-1'"),
        ({"day": "2026-W01-1"}, "day: expected a date YYYY-MM-DD"),
        ({"day": 20_454}, "day: expected a date YYYY-MM-DD, got 20454"),
        ({"day": "2026-02-30"}, "day: '2026-02-30' is not a calendar date"),
        ({"funnel": None}, "funnel: expected text"),
        ({"is_final": "yes"}, "is_final: expected true or false"),
        ({"stages": []}, "stages: expected a list of 2 to 10 stages, got []"),
        ({"stages": {"0": 1}}, "stages: expected a list of 2 to 10 stages"),
        ({"durations_ms": {}}, "durations_ms: expected a list of at most 3 lists"),
        ({"durations_ms": [[4_000, 1, 6_000, 1], [5_000, 1], [], []]},
         "durations_ms: expected a list of at most 3"),
        ({"durations_ms": [[4_000, 1, 6_000], [5_000, 1]]}, "durations_ms[0]: expected [ms, count"),
        ({"durations_ms": [[6_000, 1, 4_000, 1], [5_000, 1]]}, "durations_ms[0]: expected whole ms "
         "ascending from 0, each once, with counts of 1 or more, got 4000, 1"),
        ({"durations_ms": [[4_000, 2], [5_000, 1]]}, None),  # the same multiset as 4 s twice
        ({"durations_ms": [[4_000, 1, 4_000, 1], [5_000, 1]]}, "durations_ms[0]: expected whole"),
        ({"durations_ms": [[4_000, 1, 6_000, 0], [5_000, 1]]}, "durations_ms[0]: expected whole"),
        ({"durations_ms": [[-1, 2], [5_000, 1]]}, "durations_ms[0]: expected whole"),
        ({"durations_ms": [[4_000.0, 2], [5_000, 1]]}, "durations_ms[0]: expected whole"),
        ({"durations_ms": [[4_000, 1], [5_000, 1]]},
         "durations_ms[0]: 1 durations, but stages[1].reached is 2"),
        ({"durations_ms": [[4_000, 1, 6_000, 1]]},
         "durations_ms[1]: 0 durations, but stages[2].reached is 1"),
        (_stage(1, reached=4), "stages[1]: reached 4 is below 0 or above the stage before's 3"),
        (_stage(0, reached=-1), "stages[0]: reached -1 is below 0"),
        (_stage(2, reached="1"), "stages[2]: reached: expected an integer, got '1'"),
        (_stage(0, stage=None), "stages[0]: stage: expected text"),
        (_stage(0, median_seconds="5"), "stages[0]: median_seconds: expected a number"),
        (_stage(3, drop_off_percent=[]), "stages[3]: drop_off_percent: expected a number"),
        (_stage(0, stage="page_view:/\x00"), "stages: contains a NUL character"),
        (lambda record: record["stages"][1].pop("reached"), "stages[1]: missing field 'reached'"),
        (lambda record: record.pop("durations_ms"), "missing field 'durations_ms'"),
        (lambda record: record["stages"].__setitem__(2, 1), "stages[2]: expected a JSON object"),
    ],
)  # fmt: skip
def test_a_funnel_record_its_readers_cannot_use_is_refused_naming_the_field(
    change: Any, message: str | None
) -> None:
    assert_refused(FUNNEL_STATS, funnel_record(), change, message)


def test_a_funnel_record_may_leave_out_transitions_nobody_made() -> None:
    """The combiner's lists stop at the deepest stage reached (analytics.funnels.DayPartial)."""
    record = funnel_record(((0,), (0,)))
    assert record["durations_ms"] == [] and record["stages"][0]["reached"] == 2
    assert as_dict(FUNNEL_STATS, record)["durations_ms"].obj == []


def test_a_final_funnel_day_is_never_replaced_by_a_later_live_one() -> None:
    live = funnel_record(((0, 4_000),), is_final=False)
    final = funnel_record()
    other_day = funnel_record() | {"day": "2026-01-02"}
    rows, rejected = prepare(FUNNEL_STATS, [live, final, other_day, live])
    assert rejected == []
    assert [(index, row[1], row[2]) for index, row in rows] == [
        (1, DAY, True),
        (2, date(2026, 1, 2), True),
    ]
    text = bulk_upsert_statement(FUNNEL_STATS).decode()
    assert 'ON CONFLICT ("funnel", "day") DO UPDATE SET' in text
    assert 'WHERE (NOT "funnel_stats".is_final OR EXCLUDED.is_final) AND (' in text
    assert "%b::date[]" in text and text.count("%b::jsonb[]") == 2


# --------------------------------------------------------------------------- experiment records

#: per variant: users, converted users, revenue cents, users who also saw another variant
Counters = tuple[int, int, int, int]
BUTTON: dict[str, Counters] = {"control": (120, 12, 59_880, 1), "green": (110, 22, 98_010, 2)}


def experiment_records(
    variants: Mapping[str, Counters] = BUTTON, experiment: str = "checkout_button"
) -> list[dict[str, Any]]:
    """experiment-stats records as analytics/journey_combiner.publish_experiments makes them
    (analytics.experiments.rows): the control first, then the variants by name."""
    partial = ExperimentPartial()
    for variant, counters in variants.items():
        partial.add((experiment, variant), counters)
    records: list[dict[str, Any]] = orjson.loads(
        orjson.dumps(experiment_rows(ExperimentsSpec(), partial))
    )  # as the sink decodes them
    return records


def test_experiment_records_become_rows_with_money_from_cents() -> None:
    control, green = experiment_records()
    assert (control["variant"], green["variant"]) == ("control", "green")
    row = as_dict(EXPERIMENT_STATS, green)
    assert (row["experiment"], row["variant"], row["users"], row["converted_users"]) == (
        "checkout_button",
        "green",
        110,
        22,
    )
    assert row["conversion_rate_percent"] == 20.0
    assert (row["revenue"], row["revenue_per_user"]) == (Decimal("980.10"), Decimal("8.91"))
    assert row["variant_conflicts"] == 3  # the experiment's: 1 + 2 users
    assert row["p_value"] == green["p_value"] and 0 < row["p_value"] < 0.05
    assert row["probability_to_beat_control"] == green["probability_to_beat_control"] > 0.9
    assert row["significant"] is True  # p < 0.05, 110 and 120 users
    control_row = as_dict(EXPERIMENT_STATS, control)
    assert (control_row["p_value"], control_row["probability_to_beat_control"]) == (None, None)
    assert control_row["significant"] is False
    assert EXPERIMENT_STATS.key_of(EXPERIMENT_STATS.convert(green)) == ("checkout_button", "green")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"experiment": ""}, "experiment: expected a non-empty name, got ''"),
        ({"variant": None}, "variant: expected text, got None"),
        ({"users": -1}, "users: expected a whole number from 0, got -1"),
        ({"users": 1.5}, "users: expected an integer, got 1.5"),
        ({"converted_users": 111},
         "converted_users: expected a whole number from 0 to 110, got 111"),
        ({"converted_users": -1}, "converted_users: expected a whole number from 0 to 110"),
        ({"variant_conflicts": -2}, "variant_conflicts: expected a whole number from 0, got -2"),
        ({"conversion_rate_percent": "20"}, "conversion_rate_percent: expected a number"),
        ({"revenue_cents": "98010"}, "revenue_cents: expected an integer"),
        ({"revenue_per_user": None}, "revenue_per_user: expected an amount, got None"),
        ({"p_value": 1.5}, "p_value: expected a probability from 0 to 1 or null, got 1.5"),
        ({"p_value": -0.0}, None),
        ({"p_value": 1}, None),
        ({"probability_to_beat_control": -0.1},
         "probability_to_beat_control: expected a probability from 0 to 1 or null, got -0.1"),
        ({"significant": None}, "significant: expected true or false, got None"),
        ({"experiment": "x\x00"}, "experiment: contains a NUL character"),
        (lambda record: record.pop("variant_conflicts"), "missing field 'variant_conflicts'"),
        (lambda record: record.pop("revenue_cents"), None),  # then from revenue, to the cent
    ],
)  # fmt: skip
def test_an_experiment_record_that_cannot_be_is_refused_naming_the_field(
    change: Any, message: str | None
) -> None:
    assert_refused(EXPERIMENT_STATS, experiment_records()[1], change, message)


def test_an_experiment_row_is_the_latest_record_of_its_variant() -> None:
    """No is_final (SPEC 9 counts all events so far): a later record replaces an earlier one,
    whatever it says, even with fewer users (a late exposure moved one to another variant)."""
    first = experiment_records()[1]
    later = experiment_records({"control": BUTTON["control"], "green": (109, 22, 98_010, 2)})[1]
    rows, rejected = prepare(EXPERIMENT_STATS, [first, experiment_records()[0], later])
    assert rejected == []
    assert [(index, row[1], row[2]) for index, row in rows] == [
        (2, "green", 109),
        (1, "control", 120),
    ]
    text = bulk_upsert_statement(EXPERIMENT_STATS).decode()
    assert 'ON CONFLICT ("experiment", "variant") DO UPDATE SET' in text
    assert "is_final" not in text
    assert text.count("%b::numeric[]") == 2 and text.count("%b::float8[]") == 3


# --------------------------------------------------------------------------- cohort records


COHORT = date(2026, 1, 1)


def cohort_record(
    offset: int = 1,
    *,
    size: int = 40,
    retained: int = 10,
    cumulative_cents: int = 123_456,
    engagement: tuple[int, int] = (2_500_000, 5),
    is_final: bool = True,
    cohort: date = COHORT,
) -> dict[str, Any]:
    """A cohort-stats record as analytics/journey_combiner.publish_cohorts makes it
    (analytics.cohorts.cohort_row): ``engagement`` is (sum of scores x 10,000, sessions)."""
    counters = [retained, 0, *engagement]
    record = cohort_row(
        day_number(cohort), offset, size, counters, cumulative_cents, final=is_final
    )
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(record))
    return parsed


def test_a_cohort_record_becomes_a_row_with_revenue_from_cents() -> None:
    record = cohort_record()
    assert record["cohort"] == "2026-01-01" and record["retention_rate_percent"] == 25.0
    row = as_dict(COHORT_STATS, record)
    assert (row["cohort"], row["day_offset"], row["is_final"]) == (COHORT, 1, True)
    assert (row["cohort_size"], row["retained_users"]) == (40, 10)
    assert row["retention_rate_percent"] == 25.0
    assert row["cumulative_revenue"] == Decimal("1234.56")
    assert row["cumulative_revenue_per_user"] == Decimal("30.86")  # 1234.56 / 40 = 30.864
    assert row["average_engagement_score"] == 50.0  # 250 over 5 sessions
    assert COHORT_STATS.key_of(COHORT_STATS.convert(record)) == (COHORT, 1)
    assert as_dict(COHORT_STATS, cohort_record(is_final=False))["is_final"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cohort": "2026-01-01T00:00:00Z"}, "cohort: expected a date YYYY-MM-DD"),
        ({"cohort": "2026-02-29"}, "cohort: '2026-02-29' is not a calendar date"),
        ({"day_offset": -1}, "day_offset: expected a whole number from 0 to 3660, got -1"),
        ({"day_offset": MAX_DAY_OFFSET + 1}, "day_offset: expected a whole number from 0 to 3660"),
        ({"day_offset": MAX_DAY_OFFSET}, None),
        ({"day_offset": "1"}, "day_offset: expected an integer, got '1'"),
        ({"cohort_size": 0}, "cohort_size: expected a whole number from 1, got 0"),
        ({"retained_users": 41}, "retained_users: expected a whole number from 0 to 40, got 41"),
        ({"retention_rate_percent": None}, "retention_rate_percent: expected a number"),
        ({"cumulative_revenue_cents": 1.5}, "cumulative_revenue_cents: expected an integer"),
        ({"cumulative_revenue_per_user": "x"}, "cumulative_revenue_per_user: expected an amount"),
        ({"average_engagement_score": True}, "average_engagement_score: expected a number"),
        ({"is_final": 1}, "is_final: expected true or false, got 1"),
        ({"cumulative_revenue_cents": 10**20 + 1},
         "cumulative_revenue: 1.00000000000000000001E+18 is beyond numeric(20, 2)"),
        (lambda record: record.pop("cohort_size"), "missing field 'cohort_size'"),
    ],
)  # fmt: skip
def test_a_cohort_record_that_cannot_be_is_refused_naming_the_field(
    change: Any, message: str | None
) -> None:
    assert_refused(COHORT_STATS, cohort_record(), change, message)


def test_a_final_cohort_row_is_never_replaced_by_a_later_live_one() -> None:
    live = cohort_record(retained=9, is_final=False)
    final = cohort_record()
    next_offset = cohort_record(2, retained=4, is_final=False)
    rows, rejected = prepare(COHORT_STATS, [live, final, next_offset, live])
    assert rejected == []
    columns = ("day_offset", "is_final", "retained_users")
    assert [
        (index, *(row[COHORT_STATS.columns.index(c)] for c in columns)) for index, row in rows
    ] == [
        (1, 1, True, 10),
        (2, 2, False, 4),
    ]
    text = bulk_upsert_statement(COHORT_STATS).decode()
    assert 'ON CONFLICT ("cohort", "day_offset") DO UPDATE SET' in text
    assert 'WHERE (NOT "cohort_stats".is_final OR EXCLUDED.is_final) AND (' in text
    assert "%b::date[]" in text and "%b::integer[]" in text


# --------------------------------------------------------------------------- batch preparation


def test_an_experiment_row_is_never_replaced_by_one_of_a_lower_version() -> None:
    """A sink that waited for the database while its partition moved to another worker
    writes an older batch after the new owner wrote a newer one: the version keeps the newer
    row, in a batch and in the database; a record without a version (published before
    versions existed) counts as version 0."""
    control, green = experiment_records()
    newer = dict(green, users=green["users"] + 5, version=20)
    older = dict(green, version=10)
    rows, rejected = prepare(EXPERIMENT_STATS, [control, newer, older])
    assert rejected == []
    assert [(index, row[1], row[-1]) for index, row in rows] == [
        (0, "control", 0),
        (1, "green", 20),
    ]
    text = bulk_upsert_statement(EXPERIMENT_STATS).decode()
    assert 'WHERE EXCLUDED."version" >= "experiment_stats"."version" AND (' in text


def test_prepare_keeps_the_latest_record_per_key() -> None:
    records = [
        kpi_record(is_final=False, total_events=1),
        kpi_record(is_final=False, start=T0 + WINDOW, total_events=2),
        kpi_record(is_final=False, total_events=3),
    ]
    rows, rejected = prepare(KPI_METRICS, records)
    assert rejected == []
    assert [(index, row[7]) for index, row in rows] == [(2, 3), (1, 2)]


def test_a_final_kpi_record_is_never_replaced_by_a_later_live_one() -> None:
    records = [
        kpi_record(is_final=False, total_events=1),
        kpi_record(is_final=True, total_events=7),
        kpi_record(is_final=False, total_events=9),  # a live record re-delivered late
    ]
    rows, _ = prepare(KPI_METRICS, records)
    assert [(index, row[7]) for index, row in rows] == [(1, 7)]
    # a later final record does replace an earlier final one
    rows, _ = prepare(KPI_METRICS, [*records, kpi_record(is_final=True, total_events=8)])
    assert [(index, row[7]) for index, row in rows] == [(3, 8)]


def test_prepare_sets_apart_records_that_do_not_convert() -> None:
    (page,) = page_rows(T0, WINDOW, {"/a": [3, 2, 900]})
    rows, rejected = prepare(PAGE_VIEW_STATS, [page, {"page": "/b"}, page | {"views": -1}])
    assert [index for index, _ in rows] == [2]  # same key as 0, later: it wins (the database
    # refuses -1, see the integration test); the record without fields is rejected here
    assert [(r.index, r.sqlstate) for r in rejected] == [(1, None)]
    assert "page_view_stats: missing field 'window_start'" in rejected[0].error


def test_sessions_are_keyed_by_user_session_and_start() -> None:
    first = session_record()
    second = session_record() | {"window_start": format_ts(T0 + 3_600_000)}
    other_user = session_record() | {"user_id": "u2"}
    rows, _ = prepare(SESSION_METRICS, [first, second, other_user, first])
    assert len(rows) == 3


def test_the_bulk_parameters_are_one_array_per_column() -> None:
    pages = [page_rows(T0, WINDOW, {f"/{n}": [n + 1, 1, 10]})[0] for n in range(3)]
    rows, _ = prepare(PAGE_VIEW_STATS, pages)
    arrays = column_arrays(rows)
    assert len(arrays) == len(PAGE_VIEW_STATS.columns)
    assert arrays[2] == ["/0", "/1", "/2"] and arrays[3] == [1, 2, 3]
    assert column_arrays([]) == []


# --------------------------------------------------------------------------- SQL


def test_the_bulk_upsert_unnests_one_typed_array_per_column() -> None:
    text = bulk_upsert_statement(PAGE_VIEW_STATS).decode()
    assert text.startswith('INSERT INTO "page_view_stats" ("window_start", "window_end", "page"')
    assert (
        "SELECT * FROM unnest(%b::timestamptz[], %b::timestamptz[], %b::text[], %b::bigint[], "
        "%b::bigint[], %b::bigint[], %b::float8[])" in text
    )
    for spec in TABLES.values():
        assert len(spec.types) == len(spec.columns), spec.name
        assert bulk_upsert_statement(spec).count(b"%b::") == len(spec.columns)


def test_the_upsert_updates_to_the_latest_value_only_when_something_changed() -> None:
    for text in (
        bulk_upsert_statement(PAGE_VIEW_STATS).decode(),
        upsert_statement(PAGE_VIEW_STATS).decode(),
    ):
        # the conflict target is the generated hash of the page (migration 4), not the page
        assert 'ON CONFLICT ("window_start", "page_hash") DO UPDATE SET' in text
        assert '"page" = EXCLUDED' not in text
        assert '"views" = EXCLUDED."views"' in text and "updated_at = now()" in text
        assert '"window_start" = EXCLUDED' not in text  # the key is never updated
        assert (
            'WHERE ("page_view_stats"."window_end", "page_view_stats"."views"' in text
            and 'IS DISTINCT FROM ("excluded"."window_end", "excluded"."views"' in text
        )
    assert (
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT"
        in upsert_statement(PAGE_VIEW_STATS).decode()
    )


def test_a_live_kpi_record_never_overwrites_a_final_row() -> None:
    text = bulk_upsert_statement(KPI_METRICS).decode()
    assert 'ON CONFLICT ("window_start")' in text
    assert 'WHERE (NOT "kpi_metrics".is_final OR EXCLUDED.is_final) AND (' in text
    assert "is_final" not in upsert_statement(DIMENSION_STATS).decode().split("WHERE")[1]
    assert "%b::jsonb[]" in text and "%b::numeric[]" in text


def test_column_types_match_the_tables() -> None:
    ddl_type = {
        "timestamptz": "timestamptz",
        "bigint": "bigint",
        "integer": "integer",
        "numeric": "numeric",
        "float8": "double precision",
        "jsonb": "jsonb",
        "text": "text",
        "boolean": "boolean",
        "date": "date",
    }
    for spec in TABLES.values():
        block = create_table(spec.name)
        for column, sql_type in zip(spec.columns, spec.types, strict=True):
            line = next(x for x in block.splitlines() if x.split()[:1] == [column])
            declared = line.split()[1].split("(")[0].rstrip(",")
            assert declared == ddl_type[sql_type].split()[0], (spec.name, column)


def create_table(name: str) -> str:
    """The body of the one migration's ``CREATE TABLE`` of ``name``, with a line per column
    later migrations add (``ALTER TABLE name ADD COLUMN IF NOT EXISTS column type ...``)."""
    head = f"CREATE TABLE IF NOT EXISTS {name} ("
    (sql,) = [m.sql for m in migrations.MIGRATIONS if head in m.sql]
    added = re.compile(rf"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS (\w+ [^;]+);")
    later = [f"\n    {c}" for m in migrations.MIGRATIONS for c in added.findall(m.sql)]
    return sql.split(head)[1].split("\n);")[0] + "".join(later)


def test_every_table_of_the_settings_has_a_spec_and_a_create_statement() -> None:
    assert set(TABLES) == set(SINK_TABLES) == set(migrations.SINK_TABLES)
    assert set(TABLES) == {
        "kpi_metrics",
        "session_metrics",
        "page_view_stats",
        "dimension_stats",
        "funnel_stats",
        "experiment_stats",
        "cohort_stats",
    }
    # a plain table on TimescaleDB too: no time column to partition or retain by
    assert set(migrations.HYPERTABLES) == set(TABLES) - {"experiment_stats"}
    assert set(DatabaseSinkSettings().tables) == set(TABLES)  # every sink runs by default
    for spec in TABLES.values():
        block = create_table(spec.name)
        for column in spec.columns:
            assert f"\n    {column} " in block, (spec.name, column)
        assert f"PRIMARY KEY ({', '.join(spec.key)})" in block
        assert "updated_at" in block


# --------------------------------------------------------------------------- migrations


def test_migrations_are_numbered_in_order_and_idempotent_sql() -> None:
    versions = [m.version for m in migrations.MIGRATIONS]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for migration in migrations.MIGRATIONS:
        for statement in migration.sql.split(";"):
            head = " ".join(statement.split()).upper()
            if head.startswith(
                ("CREATE TABLE", "CREATE INDEX", "CREATE MATERIALIZED", "CREATE EXT")
            ):
                assert "IF NOT EXISTS" in head, head[:80]
            if head.startswith("DROP "):
                assert "IF EXISTS" in head, head[:80]
            adds_policy = "ADD_" in head and "POLICY(" in head  # removing one may be if_exists
            if head.startswith("SELECT CREATE_HYPERTABLE") or adds_policy:
                assert "IF_NOT_EXISTS => TRUE" in head, head[:80]


def test_pending_migrations_depend_on_the_mode() -> None:
    plain = [m.version for m in migrations.pending(set(), migrations.PLAIN)]
    timescale = [m.version for m in migrations.pending(set(), migrations.TIMESCALE)]
    assert plain == [1, 2, 4, 6, 8, 9, 11, 12] and timescale == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert migrations.pending({1, 2, 4, 6, 8, 9, 11, 12}, migrations.PLAIN) == []
    # a server that gains TimescaleDB later gets its migrations on the next run
    timescale_later = migrations.pending({1, 2, 4, 6, 8, 9, 11, 12}, migrations.TIMESCALE)
    assert [m.version for m in timescale_later] == [3, 5, 7, 10]


def test_pages_are_keyed_on_a_generated_hash_in_both_modes() -> None:
    (migration,) = [m for m in migrations.MIGRATIONS if m.version == 4]
    assert migration.mode == migrations.ANY
    sql = " ".join(migration.sql.split())
    assert "RETURNS bytea LANGUAGE sql IMMUTABLE" in sql
    assert "sha256(convert_to(page, 'UTF8'))" in sql
    assert "page_hash bytea GENERATED ALWAYS AS (page_key(page)) STORED" in sql
    assert "PRIMARY KEY (window_start, page_hash)" in sql
    # on a hypertable, compression is switched off for the change and back on with the new key
    assert "decompress_chunk(chunk, if_compressed => TRUE)" in sql
    assert "timescaledb.compress_segmentby = 'page_hash'" in sql


def test_plain_mode_indexes_time_with_brin() -> None:
    """The tables of windows; funnel_stats (a row per funnel and day), experiment_stats (a row
    per variant) and cohort_stats (a row per cohort and offset) have their keys alone."""
    windowed = [spec.name for spec in TABLES.values() if "window_start" in spec.columns]
    keyed = {"funnel_stats", "experiment_stats", "cohort_stats"}
    assert set(windowed) == set(TABLES) - keyed
    for table in windowed:
        assert f"ON {table} USING brin (window_start)" in migrations.BRIN_TIME_INDEXES
    plain_sql = "".join(m.sql for m in migrations.pending(set(), migrations.PLAIN))
    for table in keyed:
        assert table not in migrations.BRIN_TIME_INDEXES
        assert f"ON {table} " not in plain_sql  # no index but the primary key


def test_timescale_mode_creates_hypertables_and_compression() -> None:
    """Migration 3 as applied (its kpi_hourly is dropped again by migration 5)."""
    sql = migrations.TIMESCALE_HYPERTABLES
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in sql
    for table in set(migrations.HYPERTABLES) - {"funnel_stats", "cohort_stats"}:  # 7's, 10's
        assert f"create_hypertable('{table}', 'window_start'" in sql
        assert f"ALTER TABLE {table} SET (timescaledb.compress" in sql
    assert "CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_hourly" in sql
    assert "WITH (timescaledb.continuous)" in sql and "WHERE is_final" in sql
    assert "time_bucket(INTERVAL '1 hour', window_start)" in sql
    assert "WITH NO DATA" in sql  # allowed inside the migration's transaction
    assert "add_continuous_aggregate_policy('kpi_hourly'" in sql
    # compression needs every primary key column among the segmentby / orderby columns
    for spec in TABLES.values():
        if spec in (FUNNEL_STATS, EXPERIMENT_STATS, COHORT_STATS):
            continue
        settings = sql.split(f"ALTER TABLE {spec.name} SET (")[1].split(");")[0]
        for column in spec.key:
            assert column in settings, (spec.name, column)


def test_funnel_stats_is_a_table_in_both_modes_and_a_hypertable_on_timescaledb() -> None:
    (table,) = [m for m in migrations.MIGRATIONS if "funnel_stats (" in m.sql]
    (hyper,) = [m for m in migrations.MIGRATIONS if "create_hypertable('funnel_stats'" in m.sql]
    assert (table.mode, hyper.mode) == (migrations.ANY, migrations.TIMESCALE)
    assert table.version < hyper.version
    assert "create_hypertable('funnel_stats', 'day'" in hyper.sql
    settings = hyper.sql.split("ALTER TABLE funnel_stats SET (")[1].split(");")[0]
    assert (
        "compress_segmentby = 'funnel'" in settings and "compress_orderby = 'day DESC'" in settings
    )
    block = create_table("funnel_stats")
    assert "CHECK (funnel ~ '^[a-z0-9][a-z0-9_-]{0,62}$')" in block  # analytics.funnels' names
    assert "day          date        NOT NULL" in block


def test_cohort_stats_is_a_table_in_both_modes_and_a_hypertable_on_its_date() -> None:
    (table,) = [m for m in migrations.MIGRATIONS if "cohort_stats (" in m.sql]
    (hyper,) = [m for m in migrations.MIGRATIONS if "create_hypertable('cohort_stats'" in m.sql]
    assert (table.mode, hyper.mode) == (migrations.ANY, migrations.TIMESCALE)
    assert table.version < hyper.version
    assert "create_hypertable('cohort_stats', 'cohort'" in hyper.sql
    # the primary key starts with cohort: no (cohort DESC) index beside it (migration 5's lesson)
    assert "create_default_indexes => FALSE" in hyper.sql
    settings = hyper.sql.split("ALTER TABLE cohort_stats SET (")[1].split(");")[0]
    assert "compress_orderby = 'cohort DESC, day_offset'" in settings  # every key column
    block = " ".join(create_table("cohort_stats").split())
    assert f"CHECK (day_offset BETWEEN 0 AND {MAX_DAY_OFFSET})" in block
    assert "CHECK (retained_users BETWEEN 0 AND cohort_size)" in block
    assert "cohort date NOT NULL" in block


def test_experiment_stats_is_a_plain_table_in_both_modes() -> None:
    (table,) = [m for m in migrations.MIGRATIONS if "experiment_stats (" in m.sql]
    assert table.mode == migrations.ANY
    assert not [m for m in migrations.MIGRATIONS if "experiment_stats'" in m.sql]
    assert "experiment_stats" in migrations.SINK_TABLES  # the roles get it
    assert "experiment_stats" not in migrations.HYPERTABLES  # no policies
    block = " ".join(create_table("experiment_stats").split())
    assert "CHECK (converted_users BETWEEN 0 AND users)" in block
    assert "CHECK (NOT significant OR p_value IS NOT NULL)" in block
    assert "p_value double precision," in block  # null for the control


class FakeCursor:
    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row

    async def fetchone(self) -> tuple[Any, ...]:
        return self.row


class FakeConnection:
    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.queries: list[str] = []

    async def execute(self, query: str, params: Any = None) -> FakeCursor:
        self.queries.append(query)
        return FakeCursor(self.row)


@pytest.mark.parametrize(
    ("available", "installed", "preload", "mode", "note"),
    [
        (False, False, "", migrations.PLAIN, None),
        (True, False, "pg_stat_statements,timescaledb", migrations.TIMESCALE, None),
        (True, True, "timescaledb", migrations.TIMESCALE, None),
        (True, False, "", migrations.PLAIN, "not in shared_preload_libraries"),
    ],
)
async def test_the_mode_follows_what_the_server_offers(
    available: bool, installed: bool, preload: str, mode: str, note: str | None
) -> None:
    conn = FakeConnection((available, installed, preload))
    got_mode, got_note = await migrations.detect_mode(conn)  # type: ignore[arg-type]
    assert got_mode == mode
    assert (got_note is None) == (note is None) and (note is None or note in str(got_note))
    assert "pg_available_extensions WHERE name = 'timescaledb'" in conn.queries[0]


def test_a_report_says_which_mode_is_on() -> None:
    report = migrations.MigrationReport(migrations.PLAIN, list(migrations.MIGRATIONS[:2]))
    assert report.summary().startswith("database mode postgresql; migrations applied: 1 (")
    assert "none (up to date)" in migrations.MigrationReport(migrations.TIMESCALE).summary()


# --------------------------------------------------------------------------- connection errors


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://analytics:s3cret@db:5432/analytics",
            "postgresql://analytics:***@db:5432/analytics",
        ),
        ("postgresql://analytics@db/analytics", "postgresql://analytics@db/analytics"),
        ("postgres://u:p%40ss@h/d?sslmode=require", "postgres://u:***@h/d?sslmode=require"),
        ("postgresql://h/d?user=u&password=pw", "postgresql://h/d?user=u&password=***"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("exc", "wait"),
    [
        (
            psycopg.OperationalError(
                'connection to server at "h", port 1 failed: Connection refused'
            ),
            True,
        ),
        (psycopg.OperationalError("failed to resolve host 'db.invalid'"), True),
        (psycopg.OperationalError('FATAL:  database "x" does not exist'), False),
        (psycopg.OperationalError('FATAL:  password authentication failed for user "u"'), False),
        (psycopg.OperationalError("FATAL:  the database system is starting up"), True),
        (psycopg.OperationalError("FATAL:  sorry, too many clients already"), True),
        (psycopg.OperationalError('invalid integer value "x" for connection option "port"'), False),
        (psycopg.ProgrammingError('invalid URI query parameter: "foo"'), False),
        # TLS settings the server does not meet (messages of libpq 17, as psycopg-binary ships)
        (
            psycopg.OperationalError("failed: server does not support SSL, but SSL was required"),
            False,
        ),
        (psycopg.OperationalError("failed: SSL error: certificate verify failed"), False),
        (
            psycopg.OperationalError(
                'failed: server certificate for "127.0.0.1" does not match host name "localhost"'
            ),
            False,
        ),
        (psycopg.OperationalError('failed: root certificate file "/x" does not exist'), False),
        (psycopg.OperationalError("failed: SSL SYSCALL error: EOF detected"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (ValueError("bug"), False),
    ],
)
def test_at_start_only_an_absent_database_is_waited_for(exc: BaseException, wait: bool) -> None:
    assert worth_waiting(exc) is wait


def test_errors_are_described_on_one_line() -> None:
    assert describe(psycopg.OperationalError("first\nsecond")) == "OperationalError: first"
    assert describe(TimeoutError()) == "TimeoutError"
