"""The seven tables the sinks write (SPEC sections 3-5 and 7-9): which topic feeds each, its
columns and natural key, how a published record becomes a row, and the upsert that writes a
batch.

Everything here is pure (no connection), so it is unit-tested directly. A table's columns, their
SQL types and the conversion of a record into a row come from the record's definition
(models/records.py: the fields annotated with a ``Column``), so a field is named once. The DDL
itself lives in ``sinks.migrations``: a migration is frozen text, while the columns here follow
the latest schema (tests/unit/test_sinks_schema.py compares them with the migrations' DDL).

Row identity is natural, so a record delivered twice is an overwrite with the same value:

=================  ==================================  ===================================
table              topic                               key
=================  ==================================  ===================================
kpi_metrics        live-kpis                           window_start
session_metrics    session-metrics                     user_id, session_id, window_start
page_view_stats    page-view-stats                     window_start, page
dimension_stats    traffic-stats                       window_start, dimension, value
funnel_stats       funnel-stats                        funnel, day
experiment_stats   experiment-stats                    experiment, variant
cohort_stats       cohort-stats                        cohort, day_offset
=================  ==================================  ===================================

``page_view_stats`` is keyed in the database on ``page_hash``, a column the database generates
from the page (SHA-256 of its UTF-8 form, migration 4): a page of any length fits the primary
key's index, and the page itself is kept whole in ``page``.

Money is ``numeric(20,2)``, taken from the record's integer cents when it has them (exact).

A record that cannot become a row is refused here, naming the field, before the database sees
it (sinks/consumer.py sends it to ``sink-dlq``): a missing field, a wrong type, a number
beyond its column (``integer``, ``bigint``, ``numeric(20,2)``), text with a NUL character
(PostgreSQL text cannot hold one), or a JSON value nested deeper than a JSON column takes.
JSON columns travel as orjson's encoding, made once here. What the database still refuses
comes back from sinks.writers.
``kpi_metrics`` holds live (``is_final`` false) and final windows, ``funnel_stats`` live and
final days, ``cohort_stats`` live and final (cohort, day offset) cells: a live record updates a
live row, the final record overwrites it, and nothing overwrites a final row except a final
record. ``experiment_stats`` has no final rows (SPEC 9 counts all events so far): the latest
record of a variant is its row, and a record never replaces one of a higher ``version`` (the
combiner numbers an experiment's publications; a sink whose partition moved to another worker
while it waited for the database must not overwrite the newer row written there).
A funnel record is checked for the shape its readers rely on
(``funnel_row``): its stages, and per transition a duration multiset holding one duration per
user who reached the next stage, so days merge exactly (web API, SPEC 7). Experiment and
cohort records are checked for counts that cannot be (``experiment_row``, ``cohort_row``):
more converted or retained users than users, a probability outside [0, 1], an offset beyond
the ones a cohort can have.
An upsert that would not change a row leaves it alone (``updated_at`` stays), so replaying a
topic into a populated table changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache, partial
from typing import Any

import orjson
from psycopg import sql
from psycopg.adapt import PyFormat
from psycopg.types.json import Jsonb

from analytics.cohorts import MAX_DAY_OFFSET
from analytics.funnels import MAX_STAGES, MIN_STAGES
from analytics.timeutil import datetime_of, parse_ts
from models.records import (
    CohortCell,
    ExperimentVariantRecord,
    FunnelDay,
    KpiRecord,
    PageRow,
    SessionRecord,
    StoredField,
    TrafficRow,
    stored_fields,
)

Row = tuple[Any, ...]

_CENT = Decimal("0.01")
#: numeric(20, 2) holds 18 digits before the point
_MONEY_DIGITS = 18
#: the integers each column type holds
INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
#: a NUL character in orjson's encoding: ``\u0000`` not itself escaped
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHOW = 60  # characters of an offending value quoted in an error


class RowError(ValueError):
    """A record that cannot become a row of its table (missing field, wrong type)."""


def _show(value: Any) -> str:
    """An offending value in an error, bounded: a dead letter carries the error."""
    text = repr(value)
    return text if len(text) <= _SHOW else f"{text[: _SHOW - 3]}... ({len(text)} characters)"


class _Encoded:
    """A JSON column's value, encoded already: psycopg's dumps function for it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self, _obj: Any) -> bytes:
        return self.data


# --------------------------------------------------------------------------- field readers


def _get(record: Mapping[str, Any], name: str) -> Any:
    try:
        return record[name]
    except KeyError:
        raise RowError(f"missing field {name!r}") from None


def _time(record: Mapping[str, Any], name: str) -> datetime:
    value = _get(record, name)
    if not isinstance(value, str):
        raise RowError(f"{name}: expected RFC 3339 text, got {_show(value)}")
    try:
        ms = parse_ts(value)
    except ValueError as exc:
        raise RowError(f"{name}: {exc}") from None
    return datetime_of(ms)


def _int(record: Mapping[str, Any], name: str, *, nullable: bool = False) -> int | None:
    value = _get(record, name)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"{name}: expected an integer, got {_show(value)}")
    return value


def _float(record: Mapping[str, Any], name: str, *, nullable: bool = False) -> float | None:
    value = _get(record, name)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"{name}: expected a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise RowError(f"{name}: {_show(value)} is beyond a double precision number") from None


def _text(record: Mapping[str, Any], name: str, *, nullable: bool = False) -> str | None:
    value = _get(record, name)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise RowError(f"{name}: expected text, got {_show(value)}")
    return value


def _bool(record: Mapping[str, Any], name: str) -> bool:
    value = _get(record, name)
    if not isinstance(value, bool):
        raise RowError(f"{name}: expected true or false, got {_show(value)}")
    return value


def _object(record: Mapping[str, Any], name: str) -> Jsonb:
    """A JSON object for a jsonb column."""
    value = _get(record, name)
    if not isinstance(value, dict):
        raise RowError(f"{name}: expected a JSON object, got {_show(value)}")
    return _jsonb(name, value)


def _jsonb(name: str, value: Any) -> Jsonb:
    """A jsonb column's value, encoded once here (orjson, the value's own form)."""
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (254 levels)
        raise RowError(f"{name}: cannot be stored as JSON: {exc}") from None
    if b"\\u0000" in data and _JSON_NUL.search(data):
        raise RowError(f"{name}: contains a NUL character, which PostgreSQL jsonb cannot hold")
    return Jsonb(value, dumps=_Encoded(data))


def _date(record: Mapping[str, Any], name: str) -> date:
    """A calendar date written ``YYYY-MM-DD`` (only that form: ``date.fromisoformat`` would
    take week dates and basic forms too)."""
    value = _get(record, name)
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise RowError(f"{name}: expected a date YYYY-MM-DD, got {_show(value)}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RowError(f"{name}: {value!r} is not a calendar date") from None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _money(record: Mapping[str, Any], name: str, cents_name: str | None = None) -> Decimal:
    """Currency units with 2 decimals: from the integer cents field when the record has it
    (exact), else from the published amount rounded half-up to the cent."""
    if cents_name is not None and cents_name in record:
        cents = _int(record, cents_name)
        assert cents is not None
        amount = Decimal(cents).scaleb(-2)
    else:
        value = _get(record, name)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise RowError(f"{name}: expected an amount, got {_show(value)}")
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise RowError(f"{name}: expected an amount, got {_show(value)}") from None
        if not amount.is_finite():
            raise RowError(f"{name}: expected a finite amount, got {_show(value)}")
    if amount and amount.adjusted() >= _MONEY_DIGITS:
        raise RowError(f"{name}: {amount:E} is beyond numeric(20, 2)")
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- record -> row


def _json(record: Mapping[str, Any], name: str, *, array: bool) -> Jsonb:
    """A jsonb column's value: a JSON list when the record's field is one, else an object."""
    if not array:
        return _object(record, name)
    value = _get(record, name)
    if not isinstance(value, list):
        raise RowError(f"{name}: expected a JSON list, got {_show(value)}")
    return _jsonb(name, value)


def _reader(stored: StoredField) -> Callable[[Mapping[str, Any]], Any]:
    """How one field of a record becomes its column's value (RowError when it cannot)."""
    name, column = stored.field, stored.column
    sql_type, nullable = stored.spec.sql, stored.spec.nullable
    read: Callable[[Mapping[str, Any]], Any]
    if sql_type == "numeric":
        cents = stored.spec.cents
        read = lambda r: _money(r, column, cents)  # noqa: E731
    elif sql_type == "jsonb":
        read = lambda r: _json(r, name, array=stored.array)  # noqa: E731
    elif sql_type in INTEGER_RANGES:
        read = lambda r: _int(r, name, nullable=nullable)  # noqa: E731
    elif sql_type == "float8":
        read = lambda r: _float(r, name, nullable=nullable)  # noqa: E731
    elif sql_type == "text":
        read = lambda r: _text(r, name, nullable=nullable)  # noqa: E731
    else:
        read = partial({"timestamptz": _time, "date": _date, "boolean": _bool}[sql_type], name=name)
    if not stored.spec.optional:
        return read
    default = _jsonb(column, stored.spec.default) if sql_type == "jsonb" else stored.spec.default
    return lambda r: read(r) if name in r else default


def row_converter(
    fields: Sequence[StoredField], check: Callable[[Mapping[str, Any]], None] | None = None
) -> Callable[[Mapping[str, Any]], Row]:
    """The conversion of a record into its table's row: ``check`` (what a record of the kind
    must satisfy beyond its fields' types), then each stored field read in column order."""
    readers = tuple(_reader(stored) for stored in fields)

    def convert(record: Mapping[str, Any]) -> Row:
        if check is not None:
            check(record)
        return tuple([read(record) for read in readers])

    return convert


def _funnel_stages(record: Mapping[str, Any]) -> list[int]:
    """``stages`` (SPEC 7, analytics.funnels.stage_figures) checked, and its ``reached`` counts:
    2 to 10 stages, each with its text, users reached (never more than the stage before),
    and the nullable drop-off and median towards the next stage."""
    stages = _get(record, "stages")
    if not isinstance(stages, list) or not MIN_STAGES <= len(stages) <= MAX_STAGES:
        raise RowError(
            f"stages: expected a list of {MIN_STAGES} to {MAX_STAGES} stages, got {_show(stages)}"
        )
    reached: list[int] = []
    for k, stage in enumerate(stages):
        where = f"stages[{k}]"
        if not isinstance(stage, dict):
            raise RowError(f"{where}: expected a JSON object, got {_show(stage)}")
        try:
            _text(stage, "stage")
            users = _int(stage, "reached")
            _float(stage, "drop_off_percent", nullable=True)
            _float(stage, "median_seconds", nullable=True)
        except RowError as exc:
            raise RowError(f"{where}: {exc}") from None
        assert users is not None
        if users < 0 or (reached and users > reached[-1]):
            raise RowError(
                f"{where}: reached {users} is below 0 or above the stage before's "
                f"{reached[-1] if reached else 0}"
            )
        reached.append(users)
    return reached


def _funnel_durations(record: Mapping[str, Any], reached: Sequence[int]) -> None:
    """``durations_ms``: per transition k -> k+1, the flat ``[ms, count, ...]`` multiset of
    the users who reached stage k+1 (ms ascending, each once: analytics.funnels.DayPartial
    reads it as a dict), as many durations as ``stages[k+1].reached``. Transitions nobody
    made may be left out at the end."""
    value = _get(record, "durations_ms")
    transitions = len(reached) - 1
    if not isinstance(value, list) or len(value) > transitions:
        raise RowError(
            f"durations_ms: expected a list of at most {transitions} lists (one per "
            f"transition), got {_show(value)}"
        )
    for k in range(transitions):
        flat = value[k] if k < len(value) else []
        where = f"durations_ms[{k}]"
        if not isinstance(flat, list) or len(flat) % 2:
            raise RowError(f"{where}: expected [ms, count, ms, count, ...], got {_show(flat)}")
        users, previous = 0, -1
        for ms, count in zip(flat[::2], flat[1::2], strict=True):
            if not (_whole(ms) and _whole(count) and ms > previous and count >= 1):
                raise RowError(
                    f"{where}: expected whole ms ascending from 0, each once, with counts of 1 "
                    f"or more, got {_show(ms)}, {_show(count)}"
                )
            users, previous = users + count, ms
        if users != reached[k + 1]:
            raise RowError(
                f"{where}: {users} durations, but stages[{k + 1}].reached is {reached[k + 1]}"
            )


def _funnel_check(r: Mapping[str, Any]) -> None:
    """A ``funnel-stats`` record (analytics/journey_combiner.publish): stages and durations
    that add up."""
    _funnel_durations(r, _funnel_stages(r))


def _count(record: Mapping[str, Any], name: str, low: int = 0, high: int | None = None) -> int:
    """A whole number of users (or days) from ``low`` to ``high`` (another field's value)."""
    value = _int(record, name)
    assert value is not None
    if value < low or (high is not None and value > high):
        bounds = f"from {low}" + ("" if high is None else f" to {high}")
        raise RowError(f"{name}: expected a whole number {bounds}, got {value}")
    return value


def _probability(record: Mapping[str, Any], name: str) -> float | None:
    """A probability: null (nothing to compare with) or a number from 0 to 1."""
    value = _float(record, name, nullable=True)
    if value is not None and not 0.0 <= value <= 1.0:
        raise RowError(f"{name}: expected a probability from 0 to 1 or null, got {value!r}")
    return value


def _experiment_check(r: Mapping[str, Any]) -> None:
    """An ``experiment-stats`` record (analytics.experiments.rows, published by
    analytics/journey_combiner.publish_experiments): names, counts and probabilities that can
    be."""
    for name in ("experiment", "variant"):
        if not _text(r, name):
            raise RowError(f"{name}: expected a non-empty name, got ''")
    _count(r, "converted_users", 0, _count(r, "users"))
    _count(r, "variant_conflicts")
    _probability(r, "p_value")
    _probability(r, "probability_to_beat_control")
    if "version" in r:
        _count(r, "version")


def _cohort_check(r: Mapping[str, Any]) -> None:
    """A ``cohort-stats`` record (analytics.cohorts.cohort_row, published by
    analytics/journey_combiner.publish_cohorts): a cell of a cohort that can be."""
    _count(r, "retained_users", 0, _count(r, "cohort_size", 1))
    _count(r, "day_offset", 0, MAX_DAY_OFFSET)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One sink table: its source topic (a ``TopicNames`` field), columns in row order, natural
    key, and the conversion of a record into a row. ``table()`` derives the columns, their
    types and the conversion from the record's definition (models/records.py)."""

    name: str
    topic_field: str
    columns: tuple[str, ...]
    types: tuple[str, ...]  # each column's SQL type, for the arrays of the bulk upsert
    key: tuple[str, ...]
    convert: Callable[[Mapping[str, Any]], Row]
    #: kpi_metrics, funnel_stats, cohort_stats: a final row is only overwritten by a final record
    final_guard: bool = False
    #: experiment_stats: a column that grows with each publication of a key; a row is never
    #: replaced by a record of a lower one (a sink that waited for the database while its
    #: partition moved to another worker must not overwrite the newer row written there)
    version: str | None = None
    #: the upsert's ON CONFLICT target when it is not ``key`` (a unique index on columns the
    #: database derives from the key, like page_view_stats' page_hash)
    conflict: tuple[str, ...] = ()
    #: the record's definition (models/records.py), None for a table made by hand (tests)
    record: type | None = None

    def key_of(self, row: Row) -> tuple[Any, ...]:
        return tuple(row[self.columns.index(column)] for column in self.key)

    def is_final(self, row: Row) -> bool:
        return bool(row[self.columns.index("is_final")])

    def is_older(self, row: Row, than: Row) -> bool:
        """Whether ``row`` may not replace ``than`` (an older version of the key's row)."""
        if self.version is None:
            return False
        at = self.columns.index(self.version)
        older: bool = row[at] < than[at]
        return older


def table(
    name: str,
    topic_field: str,
    record: type,
    key: tuple[str, ...],
    check: Callable[[Mapping[str, Any]], None] | None = None,
    **options: Any,
) -> TableSpec:
    """The table of ``record``: a column per field it stores (``models.records.Column``)."""
    fields = stored_fields(record)
    return TableSpec(
        name=name,
        topic_field=topic_field,
        columns=tuple(stored.column for stored in fields),
        types=tuple(stored.spec.sql for stored in fields),
        key=key,
        convert=row_converter(fields, check),
        record=record,
        **options,
    )


KPI_METRICS = table("kpi_metrics", "live_kpis", KpiRecord, ("window_start",), final_guard=True)
SESSION_METRICS = table(
    "session_metrics", "session_metrics", SessionRecord, ("user_id", "session_id", "window_start")
)
PAGE_VIEW_STATS = table(
    "page_view_stats",
    "page_view_stats",
    PageRow,
    ("window_start", "page"),
    conflict=("window_start", "page_hash"),
)
DIMENSION_STATS = table(
    "dimension_stats", "traffic_stats", TrafficRow, ("window_start", "dimension", "value")
)
FUNNEL_STATS = table(
    "funnel_stats", "funnel_stats", FunnelDay, ("funnel", "day"), _funnel_check, final_guard=True
)
EXPERIMENT_STATS = table(
    "experiment_stats",
    "experiment_stats",
    ExperimentVariantRecord,
    ("experiment", "variant"),
    _experiment_check,
    version="version",
)
COHORT_STATS = table(
    "cohort_stats",
    "cohort_stats",
    CohortCell,
    ("cohort", "day_offset"),
    _cohort_check,
    final_guard=True,
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        KPI_METRICS,
        SESSION_METRICS,
        PAGE_VIEW_STATS,
        DIMENSION_STATS,
        FUNNEL_STATS,
        EXPERIMENT_STATS,
        COHORT_STATS,
    )
}


# --------------------------------------------------------------------------- batch preparation


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record of a batch that cannot be written: its index in the batch and why."""

    index: int
    error: str
    sqlstate: str | None = None


@lru_cache(maxsize=16)
def _bounded_columns(spec: TableSpec) -> tuple[tuple[int, str, str], ...]:
    """(index, name, type) of the columns whose values ``check_columns`` looks at."""
    return tuple(
        (index, column, sql_type)
        for index, (column, sql_type) in enumerate(zip(spec.columns, spec.types, strict=True))
        if sql_type in INTEGER_RANGES or sql_type == "text"
    )


def check_columns(spec: TableSpec, row: Row) -> None:
    """RowError naming the column when a value does not fit it: an integer beyond its type,
    text with a NUL character."""
    for index, column, sql_type in _bounded_columns(spec):
        value = row[index]
        if value is None:
            continue
        if sql_type == "text":
            if "\x00" in value:
                raise RowError(f"{column}: contains a NUL character, which text cannot hold")
            continue
        lo, hi = INTEGER_RANGES[sql_type]
        if not lo <= value <= hi:
            raise RowError(f"{column}: {value} is beyond {sql_type} ({lo} to {hi})")


def prepare(
    spec: TableSpec, records: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[int, Row]], list[Rejected]]:
    """Convert a batch's records to rows and keep one row per key: the latest, except that a
    final KPI, funnel or cohort record is never replaced by a later live one, nor an
    experiment record by one of a lower version. Returns
    ``(index, row)`` pairs in first-seen key order (an upsert may not touch the same row twice)
    and the records that do not convert."""
    chosen: dict[tuple[Any, ...], tuple[int, Row]] = {}
    rejected: list[Rejected] = []
    for index, record in enumerate(records):
        try:
            row = spec.convert(record)
            check_columns(spec, row)
        except RowError as exc:
            rejected.append(Rejected(index, f"{spec.name}: {exc}"))
            continue
        except Exception as exc:  # a record nobody foresaw must not stop the sink
            rejected.append(Rejected(index, f"{spec.name}: cannot be a row: {exc!r}"[:1000]))
            continue
        key = spec.key_of(row)
        known = chosen.get(key)
        if known is not None and (
            (spec.final_guard and spec.is_final(known[1]) and not spec.is_final(row))
            or spec.is_older(row, known[1])
        ):
            continue
        chosen[key] = (index, row)
    return list(chosen.values()), rejected


# --------------------------------------------------------------------------- SQL


def _columns(names: Iterable[str], prefix: str | None = None) -> sql.Composable:
    if prefix is None:
        return sql.SQL(", ").join(sql.Identifier(name) for name in names)
    return sql.SQL(", ").join(sql.Identifier(prefix, name) for name in names)


def _on_conflict(spec: TableSpec) -> sql.Composed:
    """``ON CONFLICT (key) DO UPDATE``: to the latest value, only when it changes something (so
    a replay leaves rows and their ``updated_at`` alone) and, for the tables with a
    ``final_guard``, never replacing a final row with a live one, for those with a
    ``version``, never with a lower version."""
    updated = [column for column in spec.columns if column not in spec.key]
    assignments = sql.SQL(", ").join(
        [
            *(
                sql.SQL("{column} = EXCLUDED.{column}").format(column=sql.Identifier(column))
                for column in updated
            ),
            sql.SQL("updated_at = now()"),
        ]
    )
    condition: sql.Composable = sql.SQL("({current}) IS DISTINCT FROM ({new})").format(
        current=_columns(updated, spec.name), new=_columns(updated, "excluded")
    )
    if spec.final_guard:
        condition = sql.SQL("(NOT {table}.is_final OR EXCLUDED.is_final) AND {changed}").format(
            table=sql.Identifier(spec.name), changed=condition
        )
    if spec.version is not None:
        condition = sql.SQL("EXCLUDED.{version} >= {table}.{version} AND {changed}").format(
            version=sql.Identifier(spec.version),
            table=sql.Identifier(spec.name),
            changed=condition,
        )
    return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {assignments} WHERE {condition}").format(
        key=_columns(spec.conflict or spec.key), assignments=assignments, condition=condition
    )


@lru_cache(maxsize=16)
def bulk_upsert_statement(spec: TableSpec) -> bytes:
    """The upsert of a whole batch: one array parameter per column, unnested into rows.

    The statement is the same whatever the batch size, so PostgreSQL parses and plans it once
    per connection (psycopg prepares it after a few executions), and it is rendered here once.
    The arrays travel in binary: the text form would escape every quote of every JSON value.
    """
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Placeholder(format=PyFormat.BINARY), sql.SQL(sql_type))
        for sql_type in spec.types
    )
    statement = sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) {conflict}"
    ).format(
        table=sql.Identifier(spec.name),
        columns=_columns(spec.columns),
        arrays=arrays,
        conflict=_on_conflict(spec),
    )
    return statement.as_bytes(None)


@lru_cache(maxsize=16)
def upsert_statement(spec: TableSpec) -> bytes:
    """The upsert of one row (``INSERT … VALUES (…) ON CONFLICT …``): for the row-by-row
    retry that finds the rows the database refuses, and for the naive baseline."""
    statement = sql.SQL("INSERT INTO {table} ({columns}) VALUES ({values}) {conflict}").format(
        table=sql.Identifier(spec.name),
        columns=_columns(spec.columns),
        values=sql.SQL(", ").join([sql.Placeholder()] * len(spec.columns)),
        conflict=_on_conflict(spec),
    )
    return statement.as_bytes(None)


def column_arrays(rows: Sequence[tuple[int, Row]]) -> list[list[Any]]:
    """The bulk upsert's parameters: the rows transposed into one list per column."""
    if not rows:
        return []
    return [list(column) for column in zip(*(row for _, row in rows), strict=True)]
