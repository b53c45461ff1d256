"""analytics.user_state.SessionKey: previews that go on from the last walk equal a walk from
scratch, whatever came in between (rows in and out of order, folds, other windows)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from analytics.rows import Row
from analytics.sessions import SessionPreview
from analytics.user_state import SessionKey

GAP = 1_000  # much shorter than a window: a window holds several sessions
WINDOW = 10_000


def _row(ts: int, n: int) -> Row:
    return Row(
        ts,
        f"e{n:05d}",
        "s",
        ("click", "page_view")[n % 2],
        f"/p{n % 3}",
        n % 7 * 100,
        "mobile",
        "DE",
        "Chrome",
        n % 5 == 0,
        0,
    )


def _figures(previews: list[SessionPreview]) -> list[tuple[Any, ...]]:
    return [(p.start, p.end, p.events, p.duration_ms, p.engagement()) for p in previews]


def _fresh(key: SessionKey) -> SessionKey:
    copy = SessionKey()
    copy.summaries, copy.pending = key.summaries, list(key.pending)
    return copy


@pytest.mark.parametrize("seed", range(5))
def test_previews_from_the_last_walk_equal_a_walk_from_scratch(seed: int) -> None:
    """Seeded random histories: rows in and out of order, windows asked in any order (the
    same one again as it grows, later ones, earlier ones), folds; 200 keys per seed."""
    rng = random.Random(seed)
    mismatches = compared = 0
    for _ in range(200):
        key, folded_to = SessionKey(), 0
        for n in range(80):
            step = rng.random()
            if step < 0.6:
                ts = rng.randrange(0, 60_000)
                if ts >= folded_to:  # rows before the fold limit never come (they'd be late)
                    key.add(_row(ts, n), GAP)
            elif step < 0.9:
                start = rng.randrange(0, 7) * WINDOW
                lo, hi = key.window_rows(start, start + WINDOW)
                if start < folded_to or lo == hi:
                    continue
                expected = _figures(_fresh(key).previews(lo, hi, GAP))
                compared += 1
                mismatches += _figures(key.previews(lo, hi, GAP)) != expected
            else:
                limit = rng.randrange(0, 7) * WINDOW
                if limit > folded_to:
                    key.fold(limit, GAP)
                    folded_to = limit
    assert compared > 500
    assert mismatches == 0
