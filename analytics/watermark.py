"""A partition's event time (SPEC 6): the clock value written last in every batch, the lowest
timestamp still on time, and the idle advance that moves a quiet partition's watermark on."""

from __future__ import annotations

from dataclasses import dataclass

from analytics.windows import window_start


@dataclass(slots=True)
class Clock:
    """The partition's time and counters, one value written last in every batch."""

    max_ts: int | None = None
    wm: int | None = None
    last_arrival: int | None = None
    applied: int = -1
    users_total: int = 0
    late: int = 0
    finalized_through: int | None = None


def accept_from(clock: Clock, window_ms: int) -> int | None:
    """The lowest ts an event can still have to be on time (SPEC 6): an event is late when
    its window ends at or before the watermark. None before the first event."""
    return None if clock.wm is None else window_start(clock.wm, window_ms)


def advance_idle(clock: Clock, now_ms: int, idle_ms: int, grace_ms: int) -> None:
    """A tick ``idle_ms`` or more after the last event moves event time on with the wall
    clock (SPEC 6): watermark = max ts - grace + (tick time - last arrival)."""
    if clock.max_ts is None or clock.last_arrival is None or clock.wm is None:
        return
    idle = now_ms - clock.last_arrival
    if idle >= idle_ms:
        clock.wm = max(clock.wm, clock.max_ts - grace_ms + idle)
