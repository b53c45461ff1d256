"""Process-wide state of the database sinks, for ``/health`` and operators: ``sink_health()``.

A sink is ``starting`` until its first successful write, ``ok`` after it, and ``degraded``
from a failed write attempt (database down, refusing writes) until the next success. A
degraded sink loses nothing: its batch waits, unacknowledged, and is retried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from analytics.timeutil import format_ts, now_ms

STARTING = "starting"
OK = "ok"
DEGRADED = "degraded"


@dataclass(slots=True)
class SinkState:
    table: str
    topic: str
    status: str = STARTING
    rows_written: int = 0
    rows_dead_lettered: int = 0
    rows_waiting: int = 0
    failed_attempts: int = 0  # consecutive, since the last success
    last_error: str | None = None
    degraded_since_ms: int | None = None
    last_write_ms: int | None = None


_SINKS: dict[str, SinkState] = {}
_DATABASE: dict[str, Any] = {"mode": None, "url": None}


def register(table: str, topic: str) -> SinkState:
    """The state of a sink (created on first use)."""
    state = _SINKS.get(table)
    if state is None:
        state = _SINKS[table] = SinkState(table, topic)
    return state


def set_database(url: str, mode: str | None) -> None:
    """The database in use (URL without password) and its mode (timescaledb / postgresql)."""
    _DATABASE.update(url=url, mode=mode)


def waiting(table: str, rows: int) -> None:
    _SINKS[table].rows_waiting += rows


def failed(table: str, error: str) -> bool:
    """Record a failed attempt; True when this turned the sink degraded."""
    state = _SINKS[table]
    state.failed_attempts += 1
    state.last_error = error
    if state.status == DEGRADED:
        return False
    state.status = DEGRADED
    state.degraded_since_ms = now_ms()
    return True


def succeeded(table: str, written: int, dead_lettered: int) -> float | None:
    """Record a committed batch; returns how long the sink had been degraded (s), if it was."""
    state = _SINKS[table]
    outage = None
    if state.status == DEGRADED and state.degraded_since_ms is not None:
        outage = (now_ms() - state.degraded_since_ms) / 1000
    state.status = OK
    state.rows_written += written
    state.rows_dead_lettered += dead_lettered
    state.failed_attempts = 0
    state.degraded_since_ms = None
    state.last_write_ms = now_ms()
    return outage


def sink_health() -> dict[str, Any]:
    """``{"status": ok|degraded|starting, "database": {...}, "sinks": {table: {...}}}``;
    the overall status is the worst of the sinks'."""
    sinks: dict[str, Any] = {}
    for table, state in sorted(_SINKS.items()):
        entry = asdict(state)
        for name in ("degraded_since_ms", "last_write_ms"):
            ms = entry.pop(name)
            entry[name.removesuffix("_ms")] = format_ts(ms) if ms is not None else None
        sinks[table] = entry
    statuses = {state.status for state in _SINKS.values()}
    overall = DEGRADED if DEGRADED in statuses else STARTING if STARTING in statuses else OK
    return {"status": overall, "database": dict(_DATABASE), "sinks": sinks}


def reset() -> None:
    """Forget every sink (tests)."""
    _SINKS.clear()
    _DATABASE.update(mode=None, url=None)
