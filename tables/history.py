"""Final window figures kept for the web API: what the combiner published, by window start.

Three one-partition tables, co-partitioned with ``combiner-state``: the worker that owns the
combiner (agents/kpi_combiner.py) also holds the history and writes it (through
tables/staged_table.py), and the API routes its KPI, page and traffic queries there
(web/api.py).

* ``kpi-history``: window start (epoch ms, ASCII digits) -> the final KPI record as published
  to ``live-kpis``; plus ``b"live"`` -> the newest window's latest record (live or final).
* ``page-history``: window start -> {page: [views, unique_visitors, total_time_ms]}.
* ``traffic-history``: window start -> {dimension: {value: [events, users, page_views,
  revenue_cents]}}.

Retention is measured in event time: a window is dropped once it starts more than
``engine.history_retention`` before the newest stored window, so replays of old traffic keep
their history and a quiet stream keeps its last day.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from analytics import wide_json
from analytics.combiner import CombinerOutput
from analytics.timeutil import parse_ts
from app import app
from tables import large_values
from tables.rocksdb_options import rocksdb_options

LIVE_KEY = b"live"

_settings = app.analytics_settings


def _table(name: str, help_text: str) -> Any:
    return app.Table(
        name,
        partitions=1,
        key_type=bytes,
        value_type=bytes,
        help=help_text,
        options=rocksdb_options(_settings),
    )


kpi_history: Any = _table("kpi-history", "final KPI records by window start, and the live one")
page_history: Any = _table("page-history", "final page statistics by window start")
traffic_history: Any = _table("traffic-history", "final traffic statistics by window start")


class WritableTable(Protocol):
    """What the writer needs of a table: a Faust table, a StagedTable, a dict in tests."""

    def get(self, key: bytes) -> bytes | None: ...
    def keys(self) -> Iterable[bytes]: ...
    def __contains__(self, key: object) -> bool: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...


class HistoryTables(NamedTuple):
    kpi: WritableTable
    page: WritableTable
    traffic: WritableTable


PageStats = dict[str, list[int]]
TrafficStats = dict[str, dict[str, list[int]]]


def window_key(start_ms: int) -> bytes:
    return str(start_ms).encode()


def window_starts(keys: Iterable[bytes]) -> list[int]:
    """The window starts among table keys (``b"live"`` and any other key left out), sorted."""
    return sorted(int(key) for key in keys if key.lstrip(b"-").isdigit())


def pages_by_window(rows: Iterable[Mapping[str, Any]]) -> dict[int, PageStats]:
    """page-view-stats rows (analytics.traffic.page_rows) back to {start: {page: cells}}."""
    windows: dict[int, PageStats] = {}
    for row in rows:
        cells = [row["views"], row["unique_visitors"], row["total_time_on_page_ms"]]
        windows.setdefault(parse_ts(row["window_start"]), {})[row["page"]] = cells
    return windows


def traffic_by_window(rows: Iterable[Mapping[str, Any]]) -> dict[int, TrafficStats]:
    """traffic-stats rows (analytics.traffic.dimension_rows) back to {start: {dim: {value:
    cells}}}."""
    windows: dict[int, TrafficStats] = {}
    for row in rows:
        cells = [row["events"], row["users"], row["page_views"], row["revenue_cents"]]
        dims = windows.setdefault(parse_ts(row["window_start"]), {})
        dims.setdefault(row["dimension"], {})[row["value"]] = cells
    return windows


def newer_live(stored: Mapping[str, Any] | None, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` should replace the stored live record: a later window, or the same
    window again (a fresher live value, or its final one)."""
    if stored is None:
        return True
    before = (parse_ts(stored["window_start"]), bool(stored["is_final"]))
    after = (parse_ts(record["window_start"]), bool(record["is_final"]))
    return after >= before


class HistoryWriter:
    """Writes the combiner's output into the history tables and prunes them.

    The combiner calls ``record`` after the batch has been published and saves its state
    with the history's changes: a crash before that re-delivers the batch and its finals
    are written again, identically.
    The stored window starts are read at the first batch after each rebalance (the table is
    recovered by then, and may have been written by another worker meanwhile) and then
    followed in memory, so pruning does not scan the tables.
    """

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self._starts: list[int] | None = None
        self._generation: int | None = None

    def record(self, out: CombinerOutput, tables: HistoryTables) -> None:
        if not out.kpis:
            return
        if self._starts is None or self._generation != app.consumer_generation_id:
            self._starts = window_starts(tables.kpi.keys())
            self._generation = app.consumer_generation_id
        pages = pages_by_window(out.pages)
        traffic = traffic_by_window(out.traffic)
        for kpi in out.kpis:
            if not kpi["is_final"]:
                continue
            start = parse_ts(kpi["window_start"])
            key = window_key(start)
            tables.kpi[key] = wide_json.dumps(kpi)
            # a window's pages (and values of a dimension) have no bound (tables/large_values)
            large_values.put(tables.page, key, wide_json.dumps(pages.get(start, {})))
            large_values.put(tables.traffic, key, wide_json.dumps(traffic.get(start, {})))
            index = bisect.bisect_left(self._starts, start)
            if index == len(self._starts) or self._starts[index] != start:
                self._starts.insert(index, start)
        self._update_live(out.kpis, tables.kpi)
        self._prune(tables)

    def _update_live(self, records: list[dict[str, Any]], kpis: WritableTable) -> None:
        newest = max(records, key=lambda k: (parse_ts(k["window_start"]), bool(k["is_final"])))
        stored_bytes = kpis.get(LIVE_KEY)
        stored = wide_json.loads(stored_bytes) if stored_bytes is not None else None
        if newer_live(stored, newest):
            kpis[LIVE_KEY] = wide_json.dumps(newest)

    def _prune(self, tables: HistoryTables) -> None:
        assert self._starts is not None
        if not self._starts:
            return
        cutoff = self._starts[-1] - self.retention_ms
        drop = bisect.bisect_left(self._starts, cutoff)
        for start in self._starts[:drop]:
            key = window_key(start)
            for table in tables:
                large_values.delete(table, key)
        del self._starts[:drop]


def load(table: Any, key: bytes) -> Any:
    """A stored JSON value, or None."""
    stored = large_values.get(table, key)
    return wide_json.loads(stored) if stored is not None else None
