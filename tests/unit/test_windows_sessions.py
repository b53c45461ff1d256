"""SPEC sections 3-4: epoch-aligned tumbling windows, session splitting and session figures.

analytics.windows, analytics.sessions and analytics.rows are pure, so every rule is checked on
hand-made rows with exact expected values, and the session figures also against the batch
reference (tests/reference/batch.py) on the same events.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from analytics.rows import Row, order_key, row_of
from analytics.sessions import engagement_score, session_figures, split_sessions
from analytics.timeutil import format_ts
from analytics.windows import window_end, window_start
from tests.reference import batch as reference

MINUTE = 60_000
GAP = 1_800_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z, a whole day, hour and minute


def row(
    ts: int,
    event_id: str = "e",
    *,
    session_id: str = "s",
    action: str = "page_view",
    page: str = "/home",
    duration: int = 0,
    device: str = "",
    country: str = "",
    browser: str = "",
    conversion: bool = False,
    revenue_cents: int = 0,
) -> Row:
    return Row(
        ts=ts,
        event_id=event_id,
        session_id=session_id,
        action=action,
        page=page,
        duration=duration,
        device=device,
        country=country,
        browser=browser,
        conversion=conversion,
        revenue_cents=revenue_cents,
    )


def enriched(user_id: str, r: Row) -> dict[str, Any]:
    """The enriched-event dict a Row comes from (what the batch reference reads)."""
    return {
        "event_id": r.event_id,
        "user_id": user_id,
        "session_id": r.session_id,
        "action": r.action,
        "page": r.page,
        "timestamp": format_ts(r.ts),
        "duration": r.duration,
        "device": r.device,
        "country": r.country,
        "browser": r.browser,
        "is_conversion": r.conversion,
        "revenue_cents": r.revenue_cents,
    }


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("ts", "size", "start"),
    [
        (0, MINUTE, 0),
        (1, MINUTE, 0),
        (MINUTE - 1, MINUTE, 0),
        (MINUTE, MINUTE, MINUTE),  # the end belongs to the next window
        (T0, MINUTE, T0),
        (T0 + 59_999, MINUTE, T0),
        (T0 + 60_000, MINUTE, T0 + MINUTE),
        (T0 + 90_123, MINUTE, T0 + MINUTE),
        (-1, MINUTE, -MINUTE),  # floor, not truncation toward zero
        (-MINUTE, MINUTE, -MINUTE),
        (-MINUTE - 1, MINUTE, -2 * MINUTE),
        (-59_999, MINUTE, -MINUTE),
        (T0 + 1_234, 1_000, T0 + 1_000),
        (T0 + 299_999, 300_000, T0),
        (T0 + 300_000, 300_000, T0 + 300_000),
        (T0 + 3_599_999, 3_600_000, T0),
        (T0 + 86_399_999, 86_400_000, T0),
        (10_000, 7_000, 7_000),  # sizes that do not divide a minute stay epoch-aligned
        (13_999, 7_000, 7_000),
        (14_000, 7_000, 14_000),
        (-1, 7_000, -7_000),
    ],
)
def test_window_start_is_epoch_aligned(ts: int, size: int, start: int) -> None:
    assert window_start(ts, size) == start
    assert window_end(ts, size) == start + size


def test_window_bounds_hold_for_random_times_and_sizes() -> None:
    rng = random.Random(3)
    for _ in range(5_000):
        size = rng.choice([1, 1_000, 7_000, MINUTE, 300_000, 3_600_000, 86_400_000])
        ts = rng.randint(-(10**13), 10**13)
        start, end = window_start(ts, size), window_end(ts, size)
        assert start % size == 0
        assert start <= ts < end
        assert end - start == size
        assert start == reference.window_start(ts, size)


# --------------------------------------------------------------------------- split_sessions


def _ids(sessions: list[list[Row]]) -> list[list[str]]:
    return [[r.event_id for r in session] for session in sessions]


def test_gap_equal_to_the_limit_stays_in_the_session() -> None:
    rows = [row(T0, "a"), row(T0 + GAP, "b"), row(T0 + 2 * GAP, "c")]
    assert _ids(split_sessions(rows, GAP)) == [["a", "b", "c"]]


def test_gap_one_millisecond_over_the_limit_splits() -> None:
    rows = [row(T0, "a"), row(T0 + GAP + 1, "b"), row(T0 + 2 * GAP + 1, "c")]
    assert _ids(split_sessions(rows, GAP)) == [["a"], ["b", "c"]]


def test_same_session_id_after_a_long_gap_is_a_new_session() -> None:
    rows = [row(T0, "a", session_id="s1"), row(T0 + 2 * 3_600_000, "b", session_id="s1")]
    sessions = split_sessions(rows, GAP)
    assert _ids(sessions) == [["a"], ["b"]]
    assert [s[0].session_id for s in sessions] == ["s1", "s1"]


def test_gap_is_measured_between_consecutive_events_not_from_the_start() -> None:
    step = GAP - 1
    rows = [row(T0 + i * step, f"e{i}") for i in range(6)]  # spans 2.5 gaps, never one gap
    assert _ids(split_sessions(rows, GAP)) == [[f"e{i}" for i in range(6)]]


def test_ties_in_timestamp_are_ordered_by_event_id() -> None:
    rows = [row(T0, "b"), row(T0, "c"), row(T0, "a"), row(T0 - 1, "z")]
    assert _ids(split_sessions(rows, GAP)) == [["z", "a", "b", "c"]]
    assert order_key(row(T0, "b")) < order_key(row(T0, "c"))
    # plain string order: "10" sorts before "9"
    assert _ids(split_sessions([row(T0, "9"), row(T0, "10")], GAP)) == [["10", "9"]]


def test_unsorted_input_is_sorted_before_splitting() -> None:
    rows = [
        row(T0 + 3 * GAP, "d"),
        row(T0 + 1_000, "b"),
        row(T0 + GAP + 1_001, "c"),  # exactly one gap + 1 after "b": a new session
        row(T0, "a"),
    ]
    assert _ids(split_sessions(rows, GAP)) == [["a", "b"], ["c"], ["d"]]
    assert _ids(split_sessions(iter(rows), GAP)) == [["a", "b"], ["c"], ["d"]]


def test_empty_input_has_no_sessions() -> None:
    assert split_sessions([], GAP) == []


def test_split_matches_the_reference_on_random_keys() -> None:
    rng = random.Random(11)
    for _ in range(200):
        ts = T0
        rows: list[Row] = []
        for i in range(rng.randint(1, 25)):
            ts += rng.choice([0, 1, 1_000, GAP - 1, GAP, GAP + 1, 5 * GAP])
            rows.append(row(ts, f"e{rng.randint(0, 99):02d}-{i}"))
        rng.shuffle(rows)
        got = [session_figures("u", s) for s in split_sessions(rows, GAP)]
        want = reference.sessions([enriched("u", r) for r in rows], GAP)
        assert [(g["window_start_ms"], g["window_end_ms"], g["total_events"]) for g in got] == [
            (w["window_start_ms"], w["window_end_ms"], w["total_events"]) for w in want
        ]


# --------------------------------------------------------------------------- engagement


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 0, 0, 0), 0.0),
        ((1, 0, 0, 0), 2.0),
        ((14, 0, 0, 0), 28.0),
        ((15, 0, 0, 0), 30.0),  # events cap reached exactly
        ((1_000, 0, 0, 0), 30.0),
        ((0, 4, 0, 0), 16.0),
        ((0, 5, 0, 0), 20.0),  # page cap reached exactly
        ((0, 50, 0, 0), 20.0),
        ((0, 0, 299_999, 0), 29.9999),
        ((0, 0, 300_000, 0), 30.0),  # time cap reached exactly
        ((0, 0, 86_400_000, 0), 30.0),
        ((0, 0, 0, 3), 15.0),
        ((0, 0, 0, 4), 20.0),  # action cap reached exactly
        ((0, 0, 0, 40), 20.0),
        ((15, 5, 300_000, 4), 100.0),  # every cap at once: exactly 100
        ((10**6, 10**6, 10**12, 10**6), 100.0),  # never above 100
    ],
)
def test_engagement_score_caps(args: tuple[int, int, int, int], expected: float) -> None:
    assert engagement_score(*args) == pytest.approx(expected, abs=1e-12)
    assert engagement_score(*args) <= 100.0


def test_engagement_time_component_is_fractional() -> None:
    assert engagement_score(0, 0, 12_345, 0) == pytest.approx(1.2345, abs=1e-12)
    assert engagement_score(0, 0, 1, 0) == pytest.approx(0.0001, abs=1e-15)
    # 1 event (2) + 1 page (4) + 12.345 s (1.2345) + 1 action (5)
    assert engagement_score(1, 1, 12_345, 1) == pytest.approx(12.2345, abs=1e-12)
    assert isinstance(engagement_score(1, 1, 1, 1), float)


def test_engagement_score_equals_the_reference() -> None:
    rng = random.Random(5)
    for _ in range(2_000):
        args = (
            rng.randint(0, 20),
            rng.randint(0, 8),
            rng.randint(0, 400_000),
            rng.randint(0, 6),
        )
        assert engagement_score(*args) == pytest.approx(
            reference.engagement_score(*args), abs=1e-12
        )


# --------------------------------------------------------------------------- session_figures


def test_session_figures_fields() -> None:
    rows = [
        row(T0 + 1_000, "a", session_id="s9", page="/home", duration=2_000),
        row(T0 + 2_000, "b", session_id="s9", action="click", page="", device="desktop"),
        row(T0 + 3_000, "c", session_id="s9", page="/products", duration=4_000, country="DE"),
        row(
            T0 + 64_500,
            "d",
            session_id="s9",
            action="purchase",
            page="/checkout",
            duration=6_345,
            device="mobile",
            country="FR",
            conversion=True,
            revenue_cents=12_345,
        ),
        row(T0 + 70_000, "e", session_id="s9", page="/home"),
    ]
    figures = session_figures("user-1", rows)
    assert figures == {
        "user_id": "user-1",
        "session_id": "s9",
        "window_start_ms": T0 + 1_000,
        "window_end_ms": T0 + 70_000,
        "duration_seconds": 69.0,
        "total_events": 5,
        "actions": {"page_view": 3, "click": 1, "purchase": 1},
        # pages of any action with a non-empty page; the click without a page is left out
        "pages": {"/home": 2, "/products": 1, "/checkout": 1},
        "unique_pages": 3,
        "total_duration_ms": 12_345,
        "average_duration_ms": 12_345 / 5,
        "device_type": "desktop",  # first non-empty in ts order, not the first row's ""
        "country": "DE",
        "is_bounce": False,
        "conversions": 1,
        "revenue_cents": 12_345,
        # 5 events (10) + 3 pages (12) + 12.345 s (1.2345) + 3 actions (15)
        "engagement_score": pytest.approx(38.2345, abs=1e-12),
    }


def test_single_event_session_is_a_bounce_of_zero_seconds() -> None:
    figures = session_figures("u", [row(T0, "a", page="", action="signup", conversion=True)])
    assert figures["is_bounce"] is True
    assert figures["duration_seconds"] == 0
    assert figures["window_start_ms"] == figures["window_end_ms"] == T0
    assert figures["pages"] == {}
    assert figures["unique_pages"] == 0
    assert figures["average_duration_ms"] == 0
    assert figures["device_type"] is None
    assert figures["country"] is None
    assert figures["conversions"] == 1
    assert figures["engagement_score"] == pytest.approx(2 + 5)


def test_two_event_session_is_not_a_bounce() -> None:
    figures = session_figures("u", [row(T0, "a"), row(T0 + 1_500, "b")])
    assert figures["is_bounce"] is False
    assert figures["duration_seconds"] == 1.5


def test_session_figures_equal_the_reference_on_random_sessions() -> None:
    rng = random.Random(8)
    for case in range(150):
        user = f"u{case}"
        rows = [
            row(
                T0 + rng.randint(0, 600_000),
                f"e{i:03d}",
                session_id="s",
                action=rng.choice(["page_view", "click", "purchase", "signup"]),
                page=rng.choice(["", "/a", "/b", "/c"]),
                duration=rng.randint(0, 40_000),
                device=rng.choice(["", "", "mobile", "desktop"]),
                country=rng.choice(["", "", "US", "DE"]),
                conversion=rng.random() < 0.2,
                revenue_cents=rng.choice([0, 0, 1, 999, 12_345]),
            )
            for i in range(rng.randint(1, 12))
        ]
        (session,) = split_sessions(rows, GAP)  # 10 minutes of events: one session
        got = session_figures(user, session)
        (want,) = reference.sessions([enriched(user, r) for r in rows], GAP)
        for name in want:
            if name in ("engagement_score", "duration_seconds", "average_duration_ms"):
                assert got[name] == pytest.approx(want[name], abs=1e-9), name
            else:
                assert got[name] == want[name], name


def test_row_of_reduces_an_enriched_event() -> None:
    event = {
        "event_id": "ev-1",
        "user_id": "u",
        "session_id": None,
        "action": "purchase",
        "page": None,
        "timestamp": "2026-01-01T00:00:01.234Z",
        "duration": 50,
        "device": None,
        "country": "US",
        "browser": None,
        "is_conversion": True,
        "revenue_cents": 1_999,
    }
    r = row_of(event)
    assert r == row(
        T0 + 1_234,
        "ev-1",
        session_id="",
        action="purchase",
        page="",
        duration=50,
        country="US",
        conversion=True,
        revenue_cents=1_999,
    )
    assert Row.decode(r.encode()) == r
