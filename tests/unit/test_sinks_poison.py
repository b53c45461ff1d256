"""No record can stop a database sink (sinks/schema.py, sinks/writers.py, sinks/consumer.py):
every way one record could fail a batch for ever ends in that record set apart with an error
naming the field or the problem, while the rest of the batch is written. The database itself
is mocked here; tests/integration/test_sinks.py sends the same records to PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest

from analytics.dead_letters import RAW_LIMIT
from analytics.kpis import kpi_figures, trends
from analytics.traffic import dimension_rows, page_rows
from sinks import dead_letters, schema
from sinks.schema import (
    DIMENSION_STATS,
    KPI_METRICS,
    PAGE_VIEW_STATS,
    SESSION_METRICS,
    RowError,
    prepare,
)
from sinks.writers import write_batch

T0 = 1_767_225_600_000
W = 60_000


def kpi(**changes: Any) -> dict[str, Any]:
    record = kpi_figures(T0, W, {"events": 3, "revenue_cents": 500, "purchases": 1})
    record |= {"trends": trends({}, None), "late_events_total": 0, "is_final": True}
    return record | changes


def page(**changes: Any) -> dict[str, Any]:
    (record,) = page_rows(T0, W, {"/a": [3, 2, 900]})
    return record | changes


def session(**changes: Any) -> dict[str, Any]:
    return {
        "user_id": "u1",
        "session_id": "s1",
        "window_start": "2026-01-01T00:00:00.000Z",
        "window_end": "2026-01-01T00:00:05.000Z",
        "duration_seconds": 5.0,
        "total_events": 2,
        "actions": {"page_view": 2},
        "pages": {"/a": 2},
        "unique_pages": 1,
        "total_duration_ms": 10,
        "average_duration_ms": 5.0,
        "device_type": "mobile",
        "country": "DE",
        "is_bounce": False,
        "conversions": 0,
        "revenue": 0.0,
        "revenue_cents": 0,
        "engagement_score": 12.0,
    } | changes


def nested(depth: int) -> Any:
    return orjson.loads(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    ("spec", "record", "message"),
    [
        (KPI_METRICS, kpi(average_order_value=1e300), "average_order_value: 1E+300 is beyond"),
        (KPI_METRICS, kpi(revenue_per_user="1e18"), "revenue_per_user: 1E+18 is beyond"),
        (KPI_METRICS, kpi(total_events=2**63), "total_events: 9223372036854775808 is beyond"),
        (KPI_METRICS, kpi(late_events_total=-(2**63) - 1), "late_events_total: -92233720368"),
        (KPI_METRICS, kpi(trends={"deep": nested(300)}), "trends: cannot be stored as JSON"),
        (SESSION_METRICS, session(total_events=2**31), "total_events: 2147483648 is beyond int"),
        (SESSION_METRICS, session(actions={"a\x00b": 1}), "actions: contains a NUL character"),
        (SESSION_METRICS, session(user_id="u\x00"), "user_id: contains a NUL character"),
        (SESSION_METRICS, session(duration_seconds=10**400), "duration_seconds: 1000000000000"),
        (PAGE_VIEW_STATS, page(page="/\x00"), "page: contains a NUL character"),
        (PAGE_VIEW_STATS, page(views="x" * 100_000), "views: expected an integer, got 'xxx"),
        (DIMENSION_STATS, {"window_start": 5}, "window_start: expected RFC 3339 text, got 5"),
    ],
)
def test_a_value_its_column_cannot_hold_is_refused_naming_the_column(
    spec: schema.TableSpec, record: dict[str, Any], message: str
) -> None:
    rows, rejected = prepare(spec, [record])
    assert rows == []
    (refused,) = rejected
    assert refused.error.startswith(f"{spec.name}: {message}")
    assert len(refused.error) < 250  # the offending value is quoted, not copied


def test_what_columns_can_hold_is_accepted() -> None:
    records = [
        kpi(total_events=2**63 - 1, revenue_per_user="999999999999999999.99"),
        kpi(trends={"deep": nested(200)}, window_start="2026-01-01T00:01:00.000Z"),
        # an escaped backslash before "u0000" is text, not a NUL character
        kpi(trends={"text": "\\u0000"}, window_start="2026-01-01T00:02:00.000Z"),
    ]
    rows, rejected = prepare(KPI_METRICS, records)
    assert rejected == [] and len(rows) == 3
    trends = rows[2][1][KPI_METRICS.columns.index("trends")]
    assert orjson.loads(trends.dumps(None)) == {"text": "\\u0000"}
    rows, rejected = prepare(SESSION_METRICS, [session(total_events=2**31 - 1)])
    assert rejected == [] and len(rows) == 1


def test_a_record_that_fails_conversion_unexpectedly_is_set_apart() -> None:
    def convert(record: Mapping[str, Any]) -> schema.Row:
        if record.get("poison"):
            raise ZeroDivisionError("a bug")
        return DIMENSION_STATS.convert(record)

    spec = dataclasses.replace(DIMENSION_STATS, convert=convert)
    good = list(dimension_rows(T0, W, {"device": {"mobile": [1, 1, 1, 0], "tablet": [1, 1, 0, 0]}}))
    rows, rejected = prepare(spec, [good[0], {"poison": True}, good[1]])
    assert [index for index, _ in rows] == [0, 2]
    assert [(r.index, r.error) for r in rejected] == [
        (1, "dimension_stats: cannot be a row: ZeroDivisionError('a bug')")
    ]
    with pytest.raises(RowError):
        DIMENSION_STATS.convert({})


# --------------------------------------------------------------------------- the writer


class FakeConnection:
    """Executes upserts: the bulk one and the rows named in ``fail`` raise ``errors``."""

    def __init__(self, fail: dict[str, BaseException], bulk: BaseException | None) -> None:
        self.fail = fail
        self.bulk = bulk
        self.written: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, statement: bytes, params: Any) -> None:
        if statement.startswith(b"INSERT") and b"unnest" in statement:
            assert self.bulk is not None
            raise self.bulk
        page = params[2]
        if page in self.fail:
            raise self.fail[page]
        self.written.append(page)


async def test_a_row_the_client_cannot_send_is_set_apart_the_others_written() -> None:
    """An exception outside psycopg's (a value nobody foresaw) is about that row."""
    conn = FakeConnection({"/b": RecursionError("too deep")}, bulk=RecursionError("too deep"))
    batch = [page(page="/a"), page(page="/b"), page(page="/c")]
    result = await write_batch(conn, PAGE_VIEW_STATS, batch)  # type: ignore[arg-type]
    assert conn.written == ["/a", "/c"] and result.written == 2
    assert [(r.index, r.error, r.sqlstate) for r in result.rejected] == [
        (1, "page_view_stats: RecursionError: too deep", None)
    ]


async def test_a_database_error_on_one_row_is_still_the_databases() -> None:
    """A lost connection while writing row by row fails the batch (it is retried whole)."""
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    conn = FakeConnection({"/b": lost}, bulk=psycopg.errors.CheckViolation("views"))
    with pytest.raises(psycopg.OperationalError):
        await write_batch(conn, PAGE_VIEW_STATS, [page(page="/a"), page(page="/b")])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- dead letters


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@pytest.mark.parametrize(
    "value",
    [
        b'"' * 1_000_000,  # not JSON: kept as text, every character escaped when encoded
        b"\x01" * 1_000_000,  # six bytes each as a JSON escape
        orjson.dumps({"page": "\x01" * 999_000}),
        b"\xff" * 1_000_000,
    ],
)
def test_a_dead_letter_fits_a_kafka_message_whatever_its_value(value: bytes) -> None:
    record = Record("t-traffic-stats", 3, 17, b"k" * 2_000_000, value)
    letter = dead_letters.dead_letter(DIMENSION_STATS, record, "x" * 10_000, None)
    encoded = orjson.dumps(letter)
    assert len(encoded) < 1_000_000  # the producer's max.request.size
    assert letter["value_truncated_from_bytes"] == len(value)
    assert len(letter["value"].encode()) <= RAW_LIMIT * 3  # replacement characters: 3 bytes
    assert (letter["partition"], letter["offset"]) == (3, 17)
    assert len(letter["error"]) == dead_letters.ERROR_LIMIT


def test_a_value_too_deep_to_write_back_is_kept_as_text() -> None:
    value = b'{"deep":' + b"[" * 1000 + b"]" * 1000 + b"}"  # orjson reads it, cannot write it
    letter = dead_letters.dead_letter(SESSION_METRICS, Record("t", 0, 1, b"k", value), "e", None)
    assert letter["value"] == value.decode()
    assert orjson.loads(orjson.dumps(letter)) == letter


def test_a_small_dead_letter_keeps_its_value_whole() -> None:
    value = orjson.dumps(page(views=-1))
    letter = dead_letters.dead_letter(PAGE_VIEW_STATS, Record("t", 0, 1, b"k", value), "e", "23514")
    assert letter["value"] == orjson.loads(value) and "value_truncated_from_bytes" not in letter
