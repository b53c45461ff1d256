"""Arrival orders whose disorder stays within the grace (SPEC 6), for the property tests of the
per-user states (tests/unit/test_experiments.py, tests/unit/test_cohorts.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def arrival_order(
    events: Sequence[T], ts: Callable[[T], int], jitter: Callable[[T], int], grace_ms: int
) -> list[T]:
    """The events sorted by ts + jitter (0 <= jitter <= grace; ties keep their order): each
    event then comes no earlier than the watermark, the greatest ts before it minus the grace,
    since ts' + jitter' <= ts + jitter gives ts' - ts <= grace."""
    assert all(0 <= jitter(event) <= grace_ms for event in events)
    return sorted(events, key=lambda event: ts(event) + jitter(event))


def watermarks(events: Sequence[T], ts: Callable[[T], int], grace_ms: int) -> list[int | None]:
    """The watermark each event of an arrival order meets (None before the first), checked
    not to be above its ts."""
    marks: list[int | None] = []
    latest: int | None = None
    for event in events:
        mark = None if latest is None else latest - grace_ms
        assert mark is None or ts(event) >= mark, "disorder beyond the grace"
        marks.append(mark)
        latest = ts(event) if latest is None else max(latest, ts(event))
    return marks
