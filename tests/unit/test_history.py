"""tables/history.py: what the combiner keeps for the web API, with dicts for the Faust tables."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from analytics.combiner import CombinerOutput
from analytics.timeutil import format_ts, parse_ts
from analytics.traffic import dimension_rows, page_rows
from app import app
from tables.history import (
    LIVE_KEY,
    HistoryTables,
    HistoryWriter,
    load,
    newer_live,
    window_key,
    window_starts,
)

T0 = parse_ts("2026-01-01T00:00:00Z")
MINUTE = 60_000


class FakeTable(dict[bytes, bytes]):
    """The part of a Faust table the writer uses."""


@pytest.fixture
def tables() -> dict[str, FakeTable]:
    return {name: FakeTable() for name in ("kpi_history", "page_history", "traffic_history")}


def _kpi(start: int, final: bool, events: int = 1) -> dict[str, Any]:
    return {"window_start": format_ts(start), "is_final": final, "total_events": events}


def _final(start: int, pages: dict[str, list[int]] | None = None) -> CombinerOutput:
    pages = pages if pages is not None else {"/a": [2, 1, 30]}
    dims = {"device": {"mobile": [2, 1, 2, 150]}, "country": {}, "browser": {"x": [2, 1, 2, 150]}}
    return CombinerOutput(
        kpis=[_kpi(start, True)],
        pages=page_rows(start, MINUTE, pages),
        traffic=list(dimension_rows(start, MINUTE, dims)),
    )


def _json(table: FakeTable, key: bytes) -> Any:
    return orjson.loads(table[key])


def test_finals_are_stored_by_window_start(tables: dict[str, FakeTable]) -> None:
    writer = HistoryWriter(retention_ms=60 * MINUTE)
    writer.record(_final(T0, {"/a": [2, 1, 30], "/b": [1, 1, 0]}), HistoryTables(*tables.values()))
    key = window_key(T0)
    assert key == b"1767225600000"
    assert _json(tables["kpi_history"], key) == _kpi(T0, True)
    assert _json(tables["page_history"], key) == {"/a": [2, 1, 30], "/b": [1, 1, 0]}
    assert _json(tables["traffic_history"], key) == {
        "device": {"mobile": [2, 1, 2, 150]},
        "browser": {"x": [2, 1, 2, 150]},
    }
    assert _json(tables["kpi_history"], LIVE_KEY) == _kpi(T0, True)
    assert window_starts(tables["kpi_history"].keys()) == [T0]


def test_live_key_keeps_the_newest_window(tables: dict[str, FakeTable]) -> None:
    writer = HistoryWriter(retention_ms=60 * MINUTE)
    writer.record(
        CombinerOutput(kpis=[_kpi(T0 + MINUTE, False, 1)]), HistoryTables(*tables.values())
    )
    writer.record(
        CombinerOutput(kpis=[_kpi(T0 + MINUTE, False, 2)]), HistoryTables(*tables.values())
    )
    assert _json(tables["kpi_history"], LIVE_KEY) == _kpi(T0 + MINUTE, False, 2)
    # an older window's live or final value does not replace it
    writer.record(CombinerOutput(kpis=[_kpi(T0, False, 9)]), HistoryTables(*tables.values()))
    writer.record(_final(T0), HistoryTables(*tables.values()))
    assert _json(tables["kpi_history"], LIVE_KEY) == _kpi(T0 + MINUTE, False, 2)
    # its own final does; a late live value of it does not undo that
    writer.record(_final(T0 + MINUTE), HistoryTables(*tables.values()))
    writer.record(
        CombinerOutput(kpis=[_kpi(T0 + MINUTE, False, 5)]), HistoryTables(*tables.values())
    )
    assert _json(tables["kpi_history"], LIVE_KEY) == _kpi(T0 + MINUTE, True)
    assert window_starts(tables["kpi_history"]) == [T0, T0 + MINUTE]


def test_windows_older_than_the_retention_are_dropped(tables: dict[str, FakeTable]) -> None:
    writer = HistoryWriter(retention_ms=10 * MINUTE)
    for n in (0, 1, 5, 10):
        writer.record(_final(T0 + n * MINUTE), HistoryTables(*tables.values()))
    assert window_starts(tables["kpi_history"]) == [
        T0,
        T0 + MINUTE,
        T0 + 5 * MINUTE,
        T0 + 10 * MINUTE,
    ]
    writer.record(_final(T0 + 12 * MINUTE), HistoryTables(*tables.values()))
    for table in tables.values():
        assert window_starts(table) == [T0 + 5 * MINUTE, T0 + 10 * MINUTE, T0 + 12 * MINUTE]
    assert LIVE_KEY in tables["kpi_history"]


def test_the_index_is_read_again_after_a_rebalance(
    tables: dict[str, FakeTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = HistoryWriter(retention_ms=10 * MINUTE)
    writer.record(_final(T0 + 5 * MINUTE), HistoryTables(*tables.values()))
    # meanwhile another worker owned the combiner and stored an older window
    tables["kpi_history"][window_key(T0)] = orjson.dumps(_kpi(T0, True))
    monkeypatch.setattr(app, "consumer_generation_id", app.consumer_generation_id + 1)
    writer.record(_final(T0 + 20 * MINUTE), HistoryTables(*tables.values()))
    assert window_starts(tables["kpi_history"]) == [T0 + 20 * MINUTE]


def test_newer_live() -> None:
    assert newer_live(None, _kpi(T0, False))
    assert newer_live(_kpi(T0, False), _kpi(T0, False))
    assert newer_live(_kpi(T0, False), _kpi(T0, True))
    assert not newer_live(_kpi(T0, True), _kpi(T0, False))
    assert not newer_live(_kpi(T0 + MINUTE, False), _kpi(T0, True))


def test_a_window_of_many_long_pages_is_kept_in_pieces(tables: dict[str, FakeTable]) -> None:
    """100 pages of 2,048 control characters: over a changelog record as one value, so the
    window's pages are stored in pieces (tables/large_values.py), read back whole, and
    dropped with their pieces when the window leaves the retention."""
    pages = {f"/{n:04d}" + "\x01" * 2043: [1, 1, n] for n in range(100)}
    writer = HistoryWriter(retention_ms=10 * MINUTE)
    writer.record(_final(T0, pages), HistoryTables(*tables.values()))
    stored = tables["page_history"]
    assert all(len(value) < 1_000_000 for value in stored.values()) and len(stored) > 2
    assert load(stored, window_key(T0)) == pages
    writer.record(_final(T0 + 20 * MINUTE), HistoryTables(*tables.values()))
    assert dict(stored) == {window_key(T0 + 20 * MINUTE): orjson.dumps({"/a": [2, 1, 30]})}
