"""Trends of a live KPI window: like with like (SPEC 4 defines trends for final windows only).

A live record holds a window *so far*. Against the whole previous window, almost every count
falls early in each window (20 s into a minute, a third of the events). So a live record's
trends compare it with the previous window *at the same elapsed point*: the previous window's
counters when event time was as far into it as it now is into this one, and the SPEC 4 rule
(change_percent, ±5 %) applied to those. Ratios (bounce rate, conversion rate, revenue per
user, average session duration) are recomputed from the previous window's counters at that
point, never scaled.

Event time "now" is the latest event time the partitions have seen: the greatest watermark
reported plus ``grace`` (on an idle partition the watermark moves on with the wall clock, so
"now" does too). The elapsed point of a window is ``now - start``, clamped to [0, window].

The combiner keeps, for each open window, its counters at the moments it was published live
(checkpoints, at most one per 1/60 of the window), and reads the previous window's counters at
an elapsed point by linear interpolation between the checkpoints around it. Two anchors make
every case defined: the window's start (elapsed 0, nothing counted) and its end (its final
counters, or its latest ones while it is still open). With no checkpoints, as after a replay
that took a window from nothing to final in one batch, this is the previous final window
scaled to the elapsed fraction: counts and sums scaled, ratios unchanged. A previous window
without events counts as all zero, as in SPEC 4 (every trend ``stable``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from analytics.kpis import trends

TREND_COUNTERS = (
    "events",
    "page_views",
    "revenue_cents",
    "conversions",
    "active_users",
    "sessions",
    "bounces",
    "session_duration_ms",
)
"""The counters the ten trend metrics are computed from (analytics.kpis.trend_values)."""

CHECKPOINTS_PER_WINDOW = 60

Checkpoint = list[int]
"""``[elapsed_ms, *counters in TREND_COUNTERS order]``: a window's counters at one moment (a
list, so the combiner's JSON state stays small)."""


def event_time_now(watermarks: Iterable[int | None], grace_ms: int) -> int | None:
    """The latest event time seen by any partition (greatest watermark + grace); None before
    any partition has seen an event."""
    known = [wm for wm in watermarks if wm is not None]
    return max(known) + grace_ms if known else None


def elapsed_ms(start: int, window_ms: int, now: int | None) -> int:
    """How far event time is into the window starting at ``start``, in [0, window_ms]; 0
    when no partition has reported a watermark yet."""
    if now is None:
        return 0
    return min(max(now - start, 0), window_ms)


def checkpoint(elapsed: int, sums: Mapping[str, int]) -> Checkpoint:
    return [elapsed, *(sums.get(name, 0) for name in TREND_COUNTERS)]


def with_checkpoint(
    points: Sequence[Checkpoint], point: Checkpoint, window_ms: int
) -> list[Checkpoint]:
    """``points`` with ``point`` added, ordered by elapsed time, keeping one checkpoint (the
    latest added) per 1/CHECKPOINTS_PER_WINDOW of the window, so a window keeps at most
    CHECKPOINTS_PER_WINDOW + 1 of them however often it is published."""
    slot_ms = max(1, window_ms // CHECKPOINTS_PER_WINDOW)
    slot = point[0] // slot_ms
    kept = [p for p in points if p[0] // slot_ms != slot]
    kept.append(point)
    return sorted(kept, key=lambda p: p[0])


def counters_at(points: Sequence[Checkpoint], elapsed: int) -> dict[str, Fraction]:
    """A window's counters at ``elapsed`` ms into it: linear between the checkpoints around
    that point (the window's start counts as all zero), the last one's beyond them."""
    lower: Checkpoint = [0] + [0] * len(TREND_COUNTERS)
    upper: Checkpoint | None = None
    for point in sorted(points, key=lambda p: p[0]):
        if point[0] <= elapsed:
            lower = point
        else:
            upper = point
            break
    values = [Fraction(v) for v in lower[1:]]
    if upper is not None and lower[0] < elapsed:
        share = Fraction(elapsed - lower[0], upper[0] - lower[0])
        values = [v + (u - v) * share for v, u in zip(values, upper[1:], strict=True)]
    return dict(zip(TREND_COUNTERS, values, strict=True))


def provisional_trends(
    current: Mapping[str, int], elapsed: int, previous: Sequence[Checkpoint]
) -> dict[str, Any]:
    """The trend fields of a live record: SPEC 4's rule applied to the window so far against
    the previous window's checkpoints at the same elapsed point, and the marks that say so."""
    return {
        "trends": trends(current, counters_at(previous, elapsed)),
        "trends_provisional": True,
        "trends_elapsed_seconds": elapsed / 1000,
    }
