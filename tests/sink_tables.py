"""What the database sinks' tables hold against what their topics say they must hold.

A sink keeps one row per record key with the latest record's value (a final KPI, funnel or
cohort record wins over live ones). ``latest_rows`` computes that from a topic's records in
offset order through the sink's own row conversion (sinks/schema.py); ``differences`` lists
every row missing, extra or different. Used by tests/integration/test_sinks.py and the soak
(bench/soak.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from sinks.schema import Row, TableSpec, prepare

#: table -> the output topic its sink reads
SINK_TOPICS = {
    "kpi_metrics": "live-kpis",
    "session_metrics": "session-metrics",
    "page_view_stats": "page-view-stats",
    "dimension_stats": "traffic-stats",
    "funnel_stats": "funnel-stats",
    "experiment_stats": "experiment-stats",
    "cohort_stats": "cohort-stats",
}

Key = tuple[Any, ...]


async def table_rows(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as a dict, with its ``xmin`` (changes when the row is written)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute(f"SELECT *, xmin::text AS xmin FROM {table}".encode())
        return list(await cursor.fetchall())


def row_of(spec: TableSpec, stored: Mapping[str, Any]) -> Row:
    """A stored row in the sink's row form (the columns the sink writes, in order)."""
    return tuple(stored[column] for column in spec.columns)


def comparable(value: Any) -> Any:
    if isinstance(value, psycopg.types.json.Jsonb):
        return value.obj
    return value


def figures(spec: TableSpec, row: Row) -> tuple[Any, ...]:
    """A row's values without its version: an experiment published again with the same
    figures (its changed shares arrived after the publish interval) has a higher version,
    and may do so after a test read the topic."""
    return tuple(
        comparable(value)
        for column, value in zip(spec.columns, row, strict=True)
        if column != spec.version
    )


def latest_rows(
    spec: TableSpec,
    records: list[dict[str, Any]],
    keep: Callable[[str, dict[str, Any]], bool] = lambda _table, _row: True,
) -> dict[Key, Row]:
    """One row per key, as the sink must leave it after consuming ``records`` in offset
    order; only the rows ``keep(table, row as dict)`` accepts."""
    rows, rejected = prepare(spec, records)
    assert not rejected, rejected
    return {
        spec.key_of(row): row
        for _, row in rows
        if keep(spec.name, dict(zip(spec.columns, row, strict=True)))
    }


def differences(
    spec: TableSpec, stored_rows: list[dict[str, Any]], want: Mapping[Key, Row]
) -> list[str]:
    """Every row of ``stored_rows`` (a table's) that is missing, extra, doubled or differs
    from ``want`` (``latest_rows`` of its topic)."""
    problems = []
    stored = {spec.key_of(row_of(spec, row)): row_of(spec, row) for row in stored_rows}
    if len(stored) != len(stored_rows):
        problems.append(f"{spec.name}: {len(stored_rows) - len(stored)} duplicate keys")
    for key in sorted(set(stored) | set(want), key=repr):
        got_row, want_row = stored.get(key), want.get(key)
        if got_row is None or want_row is None:
            problems.append(f"{spec.name} {key}: stored={got_row is not None} topic={want_row}")
        elif figures(spec, got_row) != figures(spec, want_row):
            problems.append(f"{spec.name} {key}: stored {got_row} != latest record {want_row}")
    return problems
