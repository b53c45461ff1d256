"""Unit tests of the batch reference itself, on small hand-computed examples."""

from __future__ import annotations

import itertools
import math
import random
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from statistics import NormalDist
from typing import Any

import pytest

from .batch import (
    SPEC_EXAMPLE_FUNNEL,
    TREND_METRICS,
    best_attempts,
    cohorts,
    day_index,
    day_text,
    dedupe,
    dimension_stats,
    drop_late,
    engagement_score,
    experiments,
    funnel_stats,
    kpi_windows,
    page_stats,
    pages_in_window,
    probability_to_beat,
    sessions,
    to_epoch_ms,
    top_pages,
    trend,
    two_proportion_p_value,
    user_profiles,
    window_start,
)

MIN = 60_000
GAP = 1_800_000
T0 = 1_705_314_600_000  # 2024-01-15T10:30:00.000Z, a multiple of 60 s
SEC = 1_000
HOUR = 3_600_000
DAY = 86_400_000
MIDNIGHT = -10 * HOUR - 30 * MIN  # 2024-01-15T00:00:00.000Z, relative to T0


def iso(ms: int) -> str:
    """Epoch ms -> enriched timestamp text (UTC, milliseconds, Z)."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ev(
    event_id: str,
    ts: int,
    *,
    user: str = "u1",
    session: str | None = "",
    action: str = "click",
    page: str | None = "",
    duration: int = 0,
    cents: int = 0,
    device: str | None = "desktop",
    country: str | None = "US",
    browser: str | None = "Chrome",
    conversion: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An enriched event at T0 + ts ms (ts given relative to T0)."""
    if conversion is None:
        conversion = action in {"purchase", "signup", "subscribe", "download", "submit_form"}
    return {
        "event_id": event_id,
        "user_id": user,
        "session_id": session,
        "action": action,
        "page": page,
        "timestamp": iso(T0 + ts),
        "duration": duration,
        "revenue": cents / 100,
        "revenue_cents": cents,
        "is_conversion": conversion,
        "device": device,
        "country": country,
        "browser": browser,
        "metadata": {} if metadata is None else metadata,
    }


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


def test_to_epoch_ms_parses_rfc3339() -> None:
    assert to_epoch_ms("1970-01-01T00:00:00.000Z") == 0
    assert to_epoch_ms("2024-01-15T10:30:00.000Z") == T0
    assert to_epoch_ms("2024-01-15T10:30:00.123Z") == T0 + 123
    assert to_epoch_ms("2024-01-15T10:30:00Z") == T0
    assert to_epoch_ms("2024-01-15t10:30:00.000z") == T0
    assert to_epoch_ms("2024-01-15T11:30:00.000+01:00") == T0
    assert to_epoch_ms("2024-01-15T10:30:00.000") == T0  # no offset means UTC
    assert to_epoch_ms("2024-01-15T10:30:00.999999Z") == T0 + 999  # floored
    assert to_epoch_ms("1969-12-31T23:59:59.999Z") == -1
    assert to_epoch_ms(T0) == T0
    assert iso(T0 + 1) == "2024-01-15T10:30:00.001Z"


def test_window_start_is_epoch_aligned() -> None:
    assert window_start(T0 + 59_999) == T0
    assert window_start(T0 + 60_000) == T0 + MIN
    assert window_start(-1) == -MIN
    assert window_start(125, 100) == 100


# --------------------------------------------------------------------------------------------
# Section 3: sessions
# --------------------------------------------------------------------------------------------


def test_session_full_example() -> None:
    rows = sessions(
        [
            ev("e4", 70_000, action="purchase", duration=1_000, cents=1999),
            ev(
                "e1",
                0,
                action="page_view",
                page="/home",
                duration=5_000,
                device="mobile",
                country=None,
            ),
            ev(
                "e2",
                10_000,
                action="page_view",
                page="/products",
                duration=20_000,
                device="desktop",
                country="DE",
            ),
            ev("e3", 20_000, action="add_to_cart", page="/products", country="FR"),
        ]
    )
    assert rows == [
        {
            "user_id": "u1",
            "session_id": "",
            "window_start_ms": T0,
            "window_end_ms": T0 + 70_000,
            "duration_seconds": 70.0,
            "total_events": 4,
            "actions": {"page_view": 2, "add_to_cart": 1, "purchase": 1},
            "pages": {"/home": 1, "/products": 2},
            "unique_pages": 2,
            "total_duration_ms": 26_000,
            "average_duration_ms": 6_500.0,
            "device_type": "mobile",
            "country": "DE",
            "is_bounce": False,
            "conversions": 1,
            "revenue_cents": 1999,
            # min(30, 8) + min(20, 8) + min(30, 2.6) + min(20, 15)
            "engagement_score": pytest.approx(33.6),
        }
    ]


def test_gap_exactly_equal_to_limit_stays_in_session() -> None:
    rows = sessions([ev("a", 0), ev("b", GAP)])
    assert len(rows) == 1
    assert rows[0]["total_events"] == 2
    assert rows[0]["duration_seconds"] == 1800.0


def test_gap_one_ms_over_limit_starts_new_session() -> None:
    rows = sessions([ev("a", 0), ev("b", GAP + 1)])
    assert [(r["window_start_ms"], r["total_events"]) for r in rows] == [
        (T0, 1),
        (T0 + GAP + 1, 1),
    ]


def test_gap_is_between_consecutive_events_not_from_start() -> None:
    rows = sessions([ev("a", 0), ev("b", GAP), ev("c", 2 * GAP)])
    assert len(rows) == 1
    assert rows[0]["duration_seconds"] == 3600.0


def test_custom_gap() -> None:
    events = [ev("a", 0), ev("b", 1_000), ev("c", 2_001)]
    assert [r["total_events"] for r in sessions(events, gap_ms=1_000)] == [2, 1]


def test_same_session_id_after_long_gap_is_new_session() -> None:
    rows = sessions([ev("a", 0, session="s1"), ev("b", GAP + 5_000, session="s1")])
    assert [(r["session_id"], r["window_start_ms"]) for r in rows] == [
        ("s1", T0),
        ("s1", T0 + GAP + 5_000),
    ]


def test_session_key_is_user_and_session_id() -> None:
    rows = sessions(
        [
            ev("a", 0, session="s1"),
            ev("b", 1_000, session="s2"),
            ev("c", 2_000, session=""),
            ev("d", 3_000, session=None),  # None is the same as ""
            ev("e", 4_000, session="s1", user="u2"),
        ]
    )
    assert [(r["user_id"], r["session_id"], r["total_events"]) for r in rows] == [
        ("u1", "", 2),
        ("u1", "s1", 1),
        ("u1", "s2", 1),
        ("u2", "s1", 1),
    ]


def test_timestamp_ties_ordered_by_event_id() -> None:
    events = [
        ev("b", 0, device="mobile", country="DE"),
        ev("a", 0, device="tablet", country=""),
        ev("c", 0, device="desktop", country="FR"),
    ]
    for order in (events, list(reversed(events))):
        [row] = sessions(order)
        assert row["device_type"] == "tablet"  # event "a" comes first
        assert row["country"] == "DE"  # "a" has no country, "b" is next
        assert row["duration_seconds"] == 0.0


def test_device_and_country_first_non_empty_unknown_counts() -> None:
    [row] = sessions(
        [
            ev("a", 0, device=None, country=None),
            ev("b", 1, device="unknown", country=None),
            ev("c", 2, device="mobile", country=None),
        ]
    )
    assert row["device_type"] == "unknown"
    assert row["country"] is None
    [row] = sessions([ev("a", 0, device="", country="")])
    assert row["device_type"] is None
    assert row["country"] is None


def test_bounce_session() -> None:
    [row] = sessions([ev("a", 0, action="page_view", page="/x", duration=12_000)])
    assert row["is_bounce"] is True
    assert row["duration_seconds"] == 0.0
    assert row["window_start_ms"] == row["window_end_ms"] == T0
    # 2 + 4 + 1.2 + 5
    assert row["engagement_score"] == pytest.approx(12.2)


def test_pages_exclude_empty_and_count_any_action() -> None:
    [row] = sessions(
        [
            ev("a", 0, action="page_view", page="/a"),
            ev("b", 1, action="click", page="/a"),
            ev("c", 2, action="click", page=""),
            ev("d", 3, action="click", page=None),
        ]
    )
    assert row["pages"] == {"/a": 2}
    assert row["unique_pages"] == 1
    assert row["actions"] == {"page_view": 1, "click": 3}


def test_engagement_components_capped() -> None:
    assert engagement_score(14, 0, 0, 0) == 28.0
    assert engagement_score(15, 0, 0, 0) == 30.0
    assert engagement_score(1_000, 0, 0, 0) == 30.0
    assert engagement_score(0, 4, 0, 0) == 16.0
    assert engagement_score(0, 5, 0, 0) == 20.0
    assert engagement_score(0, 50, 0, 0) == 20.0
    assert engagement_score(0, 0, 299_999, 0) == pytest.approx(29.9999)
    assert engagement_score(0, 0, 300_000, 0) == 30.0
    assert engagement_score(0, 0, 86_400_000, 0) == 30.0
    assert engagement_score(0, 0, 0, 3) == 15.0
    assert engagement_score(0, 0, 0, 4) == 20.0
    assert engagement_score(0, 0, 0, 9) == 20.0
    assert engagement_score(10**6, 10**6, 10**12, 10**6) == 100.0
    assert engagement_score(0, 0, 0, 0) == 0.0
    assert isinstance(engagement_score(1, 1, 1, 1), float)


def test_session_engagement_at_full_cap() -> None:
    actions = ["page_view", "click", "add_to_cart", "purchase"]
    events = [
        ev(f"e{i:02d}", i * 1_000, action=actions[i % 4], page=f"/p{i % 6}", duration=30_000)
        for i in range(20)
    ]
    [row] = sessions(events)
    assert row["total_events"] == 20
    assert row["unique_pages"] == 6
    assert row["total_duration_ms"] == 600_000
    assert row["engagement_score"] == 100.0  # 30 + 20 + 30 + 20


def test_session_money_and_conversions() -> None:
    [row] = sessions(
        [
            ev("a", 0, action="purchase", cents=1),
            ev("b", 1, action="purchase", cents=10),
            ev("c", 2, action="signup"),
            ev("d", 3, action="click", conversion=True),  # is_conversion is trusted
        ]
    )
    assert row["revenue_cents"] == 11
    assert row["conversions"] == 4


def test_sessions_empty_input() -> None:
    assert sessions([]) == []


def test_duplicate_event_id_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        sessions([ev("a", 0), ev("a", 1)])


def test_revenue_disagreeing_with_cents_rejected() -> None:
    bad = ev("a", 0, action="purchase", cents=100)
    bad["revenue"] = 1.01
    with pytest.raises(ValueError, match="disagrees"):
        sessions([bad])


def test_revenue_cents_derived_when_missing() -> None:
    event = ev("a", 0, action="purchase")
    del event["revenue_cents"]
    event["revenue"] = 19.99
    [row] = sessions([event])
    assert row["revenue_cents"] == 1999


# --------------------------------------------------------------------------------------------
# Section 4: KPI windows
# --------------------------------------------------------------------------------------------


def test_kpi_event_figures() -> None:
    events = [
        ev("a", 1_000, user="u1", action="page_view", page="/a"),
        ev("b", 2_000, user="u1", action="purchase", cents=1_000),
        ev("c", 3_000, user="u2", action="purchase", cents=2_001),
        ev("d", 4_000, user="u3", action="signup"),
        ev("e", 59_999, user="u3", action="page_view", page="/b"),
        ev("f", 60_000, user="u1", action="click"),  # next window
    ]
    result = kpi_windows(events)
    assert sorted(result) == [T0, T0 + MIN]
    w = result[T0]
    assert w["window_start_ms"] == T0
    assert w["window_end_ms"] == T0 + MIN
    assert w["total_events"] == 5
    assert w["total_page_views"] == 2
    assert w["total_conversions"] == 3
    assert w["total_revenue_cents"] == 3_001
    assert w["purchases"] == 2
    assert w["active_users"] == 3
    assert w["average_order_value"] == pytest.approx(15.005)
    assert w["revenue_per_user"] == pytest.approx(30.01 / 3)
    assert w["total_sessions"] == 3
    assert w["conversion_rate_percent"] == pytest.approx(100.0)
    assert w["conversions_per_session"] == pytest.approx(1.0)

    w1 = result[T0 + MIN]
    assert w1["total_events"] == 1
    assert w1["average_order_value"] == 0.0  # no purchases: division by zero gives 0
    assert w1["total_revenue_cents"] == 0
    assert w1["revenue_per_user"] == 0.0


def test_kpi_no_window_without_events() -> None:
    result = kpi_windows([ev("a", 0), ev("b", 3 * MIN + 5)])
    assert sorted(result) == [T0, T0 + 3 * MIN]
    assert kpi_windows([]) == {}


def test_kpi_custom_window_size() -> None:
    result = kpi_windows([ev("a", 0), ev("b", 9_999), ev("c", 10_000)], window_ms=10_000)
    assert {k - T0: v["total_events"] for k, v in result.items()} == {0: 2, 10_000: 1}


def test_new_users_vs_total_users() -> None:
    events = [
        ev("a", 10_000, user="u1"),
        ev("b", 70_000, user="u1"),
        ev("c", 80_000, user="u2"),
        ev("d", 130_000, user="u3"),
        ev("e", 200_000, user="u2"),
    ]
    result = kpi_windows(events)
    figures = {
        (k - T0) // MIN: (w["active_users"], w["new_users"], w["total_users"])
        for k, w in result.items()
    }
    assert figures == {0: (1, 1, 1), 1: (2, 1, 2), 2: (1, 1, 3), 3: (1, 0, 3)}


def test_snapshot_session_spanning_two_windows() -> None:
    # One session: 30 s (window 0), 90 s and 100 s (window 1).
    events = [
        ev("a", 30_000, action="page_view", page="/a", duration=10_000),
        ev("b", 90_000, action="page_view", page="/b", duration=20_000),
        ev("c", 100_000, action="purchase", cents=500),
    ]
    result = kpi_windows(events)
    w0, w1 = result[T0], result[T0 + MIN]
    # Window 0 sees the session cut at its end: one event, a bounce, duration 0.
    assert w0["total_sessions"] == 1
    assert w0["average_session_duration_seconds"] == 0.0
    assert w0["bounce_rate_percent"] == 100.0
    assert w0["average_engagement_score"] == pytest.approx(2 + 4 + 1 + 5)
    # Window 1 sees the whole session, active there too.
    assert w1["total_sessions"] == 1
    assert w1["average_session_duration_seconds"] == 70.0
    assert w1["bounce_rate_percent"] == 0.0
    # min(30, 6) + min(20, 8) + 3 + min(20, 10)
    assert w1["average_engagement_score"] == pytest.approx(27.0)
    assert w1["conversion_rate_percent"] == 100.0


def test_snapshot_truncation_keeps_earlier_part_and_ignores_future() -> None:
    # Session of u1 keeps going after window 0, but window 0 only sees its first 2 events.
    events = [
        ev("a", 0, user="u1"),
        ev("b", 50_000, user="u1"),
        ev("c", 61_000, user="u1"),
        ev("d", 10_000, user="u2"),
    ]
    w0 = kpi_windows(events)[T0]
    assert w0["total_sessions"] == 2
    assert w0["average_session_duration_seconds"] == pytest.approx((50 + 0) / 2)
    assert w0["bounce_rate_percent"] == 50.0


def test_session_without_event_in_window_is_not_active() -> None:
    # u1's session has events in windows 0 and 2 (gap < 30 min) and none in window 1.
    events = [
        ev("a", 10_000, user="u1"),
        ev("b", 130_000, user="u1"),
        ev("c", 70_000, user="u2"),
    ]
    result = kpi_windows(events)
    assert result[T0 + MIN]["total_sessions"] == 1
    assert result[T0 + MIN]["average_session_duration_seconds"] == 0.0
    assert result[T0 + 2 * MIN]["total_sessions"] == 1
    assert result[T0 + 2 * MIN]["average_session_duration_seconds"] == 120.0


def test_two_sessions_of_one_key_in_one_window() -> None:
    # With a 10 s gap, one key yields two sessions inside the same minute.
    events = [ev("a", 0), ev("b", 5_000), ev("c", 30_000)]
    w = kpi_windows(events, gap_ms=10_000)[T0]
    assert w["total_sessions"] == 2
    assert w["bounce_rate_percent"] == 50.0
    assert w["average_session_duration_seconds"] == 2.5
    assert w["active_users"] == 1


def test_trend_rule_boundaries() -> None:
    assert trend(105, 100) == {"change_percent": 5.0, "trend": "stable"}
    assert trend(95, 100) == {"change_percent": -5.0, "trend": "stable"}
    assert trend(106, 100) == {"change_percent": 6.0, "trend": "up"}
    assert trend(94, 100) == {"change_percent": -6.0, "trend": "down"}
    assert trend(21, 20) == {"change_percent": 5.0, "trend": "stable"}
    assert trend(10, 0) == {"change_percent": 0.0, "trend": "stable"}
    assert trend(0, 0) == {"change_percent": 0.0, "trend": "stable"}
    assert trend(0, 10) == {"change_percent": -100.0, "trend": "down"}
    up = trend(100.0001, 95)
    assert up["trend"] == "up"


def test_kpi_trends_against_previous_window() -> None:
    window0 = [ev(f"a{i:02d}", i * 100, user=f"u{i}") for i in range(20)]
    window1 = [ev(f"b{i:02d}", MIN + i * 100, user=f"u{i}") for i in range(21)]
    window2 = [ev(f"c{i:02d}", 2 * MIN + i * 100, user=f"u{i}") for i in range(23)]
    result = kpi_windows(window0 + window1 + window2)
    t0, t1, t2 = (result[T0 + i * MIN]["trends"] for i in range(3))
    assert set(t0) == set(TREND_METRICS)
    # Window 0: no previous window -> every change 0, stable.
    assert all(t == {"change_percent": 0.0, "trend": "stable"} for t in t0.values())
    # 20 -> 21 events is exactly +5 %: stable.
    assert t1["total_events"] == {"change_percent": 5.0, "trend": "stable"}
    assert t1["active_users"] == {"change_percent": 5.0, "trend": "stable"}
    assert t1["total_sessions"] == {"change_percent": 5.0, "trend": "stable"}
    # Revenue 0 -> 0 and bounce 100 -> 100 % (sessions span windows: not bounces in w1).
    assert t1["total_revenue"] == {"change_percent": 0.0, "trend": "stable"}
    assert result[T0]["bounce_rate_percent"] == 100.0
    assert result[T0 + MIN]["bounce_rate_percent"] == pytest.approx(100 / 21)
    assert t1["bounce_rate_percent"]["trend"] == "down"
    # 21 -> 23 is +9.52 %: up.
    assert t2["total_events"]["change_percent"] == pytest.approx(100 * 2 / 21)
    assert t2["total_events"]["trend"] == "up"


def test_kpi_trends_previous_window_empty_and_revenue() -> None:
    events = [
        ev("a", 0, action="purchase", cents=1_000),
        ev("b", 2 * MIN, action="purchase", cents=1_000),  # window 1 is empty
        ev("c", 3 * MIN, action="purchase", cents=800),
    ]
    result = kpi_windows(events)
    t2 = result[T0 + 2 * MIN]["trends"]
    assert all(t == {"change_percent": 0.0, "trend": "stable"} for t in t2.values())
    t3 = result[T0 + 3 * MIN]["trends"]
    assert t3["total_revenue"] == {"change_percent": pytest.approx(-20.0), "trend": "down"}
    assert t3["revenue_per_user"] == {"change_percent": pytest.approx(-20.0), "trend": "down"}
    assert t3["total_conversions"] == {"change_percent": 0.0, "trend": "stable"}


def _literal_session_figures(
    events: list[dict[str, Any]], start: int, end: int
) -> tuple[int, float, float, float]:
    """SPEC 4 session figures computed word for word: sessions of all events with ts < end."""
    before_end = [e for e in events if to_epoch_ms(e["timestamp"]) < end]
    active = [s for s in sessions(before_end) if s["window_end_ms"] >= start]
    n = len(active)
    if n == 0:
        return 0, 0.0, 0.0, 0.0
    return (
        n,
        sum(s["duration_seconds"] for s in active) / n,
        100 * sum(1 for s in active if s["is_bounce"]) / n,
        sum(s["engagement_score"] for s in active) / n,
    )


def _random_events(rng: random.Random, n: int, users: int, span_ms: int) -> list[dict[str, Any]]:
    actions = ["page_view", "page_view", "click", "add_to_cart", "purchase", "signup"]
    return [
        ev(
            f"e{i:06d}",
            rng.randrange(span_ms),
            user=f"u{rng.randrange(users)}",
            session=rng.choice(["", "s1", "s2"]),
            action=(action := rng.choice(actions)),
            page=rng.choice(["/a", "/b", "/c", ""]) if action != "page_view" else "/p",
            duration=rng.randrange(40_000),
            cents=rng.randrange(1, 10_000) if action == "purchase" else 0,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_snapshot_matches_literal_definition(seed: int) -> None:
    rng = random.Random(seed)
    events = _random_events(rng, 300, users=8, span_ms=4 * 3_600_000)
    gap = 600_000
    for start, w in kpi_windows(events, gap_ms=gap).items():
        end = start + MIN
        before_end = [e for e in events if to_epoch_ms(e["timestamp"]) < end]
        active = [s for s in sessions(before_end, gap) if s["window_end_ms"] >= start]
        n = len(active)
        assert w["total_sessions"] == n
        assert n >= 1
        assert w["average_session_duration_seconds"] == pytest.approx(
            sum(s["duration_seconds"] for s in active) / n
        )
        assert w["bounce_rate_percent"] == pytest.approx(
            100 * sum(1 for s in active if s["is_bounce"]) / n
        )
        assert w["average_engagement_score"] == pytest.approx(
            sum(s["engagement_score"] for s in active) / n
        )


def test_literal_helper_agrees_on_hand_example() -> None:
    events = [ev("a", 30_000), ev("b", 90_000), ev("c", 100_000)]
    assert _literal_session_figures(events, T0, T0 + MIN) == (1, 0.0, 100.0, 7.0)
    assert _literal_session_figures(events, T0 + MIN, T0 + 2 * MIN) == (1, 70.0, 0.0, 11.0)


def test_event_figures_match_naive_count() -> None:
    rng = random.Random(42)
    events = _random_events(rng, 500, users=20, span_ms=30 * MIN)
    for start, w in kpi_windows(events).items():
        inside = [e for e in events if start <= to_epoch_ms(e["timestamp"]) < start + MIN]
        assert w["total_events"] == len(inside)
        assert w["total_revenue_cents"] == sum(e["revenue_cents"] for e in inside)
        assert w["active_users"] == len({e["user_id"] for e in inside})


# --------------------------------------------------------------------------------------------
# Section 5: pages and dimensions
# --------------------------------------------------------------------------------------------


def test_page_stats() -> None:
    events = [
        ev("a", 0, user="u1", action="page_view", page="/a", duration=1_000),
        ev("b", 1_000, user="u1", action="page_view", page="/a", duration=2_000),
        ev("c", 2_000, user="u2", action="page_view", page="/a", duration=4_000),
        ev("d", 3_000, user="u2", action="page_view", page="/b", duration=0),
        ev("e", 4_000, user="u2", action="click", page="/a", duration=9_999),  # not a view
        ev("f", MIN, user="u3", action="page_view", page="/a", duration=5),
    ]
    stats = page_stats(events)
    assert stats == {
        (T0, "/a"): {
            "views": 3,
            "unique_visitors": 2,
            "total_time_on_page_ms": 7_000,
            "avg_time_on_page_ms": pytest.approx(7_000 / 3),
        },
        (T0, "/b"): {
            "views": 1,
            "unique_visitors": 1,
            "total_time_on_page_ms": 0,
            "avg_time_on_page_ms": 0.0,
        },
        (T0 + MIN, "/a"): {
            "views": 1,
            "unique_visitors": 1,
            "total_time_on_page_ms": 5,
            "avg_time_on_page_ms": 5.0,
        },
    }
    assert set(pages_in_window(stats, T0)) == {"/a", "/b"}
    assert top_pages(pages_in_window(stats, T0), 10) == ["/a", "/b"]


def test_top_pages_ties_and_limit() -> None:
    window = {
        "/z": {"views": 5},
        "/b": {"views": 7},
        "/a": {"views": 5},
        "/c": {"views": 5},
        "/d": {"views": 1},
    }
    assert top_pages(window, 10) == ["/b", "/a", "/c", "/z", "/d"]
    assert top_pages(window, 3) == ["/b", "/a", "/c"]
    assert top_pages(window, 0) == []
    assert top_pages({}, 5) == []


def test_dimension_stats_unknown() -> None:
    events = [
        ev(
            "a",
            0,
            user="u1",
            device=None,
            country=None,
            browser="Firefox",
            action="page_view",
            page="/a",
        ),
        ev(
            "b",
            1,
            user="u2",
            device="",
            country="",
            browser="Firefox",
            action="purchase",
            cents=250,
        ),
        ev("c", 2, user="u1", device="unknown", country="DE", browser="Firefox"),
        ev("d", MIN, user="u3", device="mobile", country="DE", browser="Safari"),
    ]
    del events[2]["browser"]  # missing key -> unknown
    stats = dimension_stats(events)
    assert stats == {
        (T0, "device", "unknown"): {"events": 3, "users": 2, "page_views": 1, "revenue_cents": 250},
        (T0, "country", "unknown"): {
            "events": 2,
            "users": 2,
            "page_views": 1,
            "revenue_cents": 250,
        },
        (T0, "country", "DE"): {"events": 1, "users": 1, "page_views": 0, "revenue_cents": 0},
        (T0, "browser", "Firefox"): {
            "events": 2,
            "users": 2,
            "page_views": 1,
            "revenue_cents": 250,
        },
        (T0, "browser", "unknown"): {"events": 1, "users": 1, "page_views": 0, "revenue_cents": 0},
        (T0 + MIN, "device", "mobile"): {
            "events": 1,
            "users": 1,
            "page_views": 0,
            "revenue_cents": 0,
        },
        (T0 + MIN, "country", "DE"): {"events": 1, "users": 1, "page_views": 0, "revenue_cents": 0},
        (T0 + MIN, "browser", "Safari"): {
            "events": 1,
            "users": 1,
            "page_views": 0,
            "revenue_cents": 0,
        },
    }


# --------------------------------------------------------------------------------------------
# Days
# --------------------------------------------------------------------------------------------


def test_days_are_utc_and_end_exclusive() -> None:
    assert day_text(day_index(T0)) == "2024-01-15"
    assert day_text(day_index(T0 + MIDNIGHT)) == "2024-01-15"
    assert day_text(day_index(T0 + MIDNIGHT - 1)) == "2024-01-14"
    assert day_text(day_index(T0 + MIDNIGHT + DAY)) == "2024-01-16"
    assert day_text(day_index(-1)) == "1969-12-31"


# --------------------------------------------------------------------------------------------
# Section 7: funnels
# --------------------------------------------------------------------------------------------


def two_stage(first: str, second: str, window_ms: int = DAY) -> dict[str, Any]:
    return {
        "name": "f",
        "window_ms": window_ms,
        "stages": [{"action": first, "page_prefix": None}, {"action": second}],
    }


def figures(row: dict[str, Any], key: str) -> list[Any]:
    return [stage[key] for stage in row["stages"]]


def test_funnel_full_example() -> None:
    events = [
        ev("a1", 0, user="u1", action="page_view", page="/products/1"),
        ev("a2", 10 * SEC, user="u1", action="add_to_cart", page="/products/1"),
        ev("a3", 40 * SEC, user="u1", action="checkout", page="/checkout"),
        ev("a4", 100 * SEC, user="u1", action="purchase", cents=999),
        ev("b1", 0, user="u2", action="page_view", page="/products"),
        ev("b2", 20 * SEC, user="u2", action="add_to_cart"),
        ev("c1", 0, user="u3", action="page_view", page="/home"),  # no stage 1
        ev("d1", 0, user="u4", action="add_to_cart"),  # stage 2 without stage 1
        ev("e1", 0, user="u5", action="page_view", page="/product"),  # prefix not matched
    ]
    rows = funnel_stats(events, [SPEC_EXAMPLE_FUNNEL])
    assert list(rows) == [("checkout", "2024-01-15")]
    row = rows[("checkout", "2024-01-15")]
    assert row["funnel"] == "checkout" and row["day"] == "2024-01-15"
    assert figures(row, "stage") == [1, 2, 3, 4]
    assert figures(row, "action") == ["page_view", "add_to_cart", "checkout", "purchase"]
    assert figures(row, "page_prefix") == ["/products", None, None, None]
    assert figures(row, "reached") == [2, 2, 1, 1]
    assert figures(row, "drop_off_percent") == [0.0, 50.0, 0.0, None]  # last stage: None
    # 1 -> 2 over u1 (10 s) and u2 (20 s): an even count gives the mean of the middle two.
    assert figures(row, "median_seconds") == [15.0, 30.0, 60.0, None]


def test_funnel_median_odd_count_and_milliseconds() -> None:
    events = [ev(f"{u}1", 0, user=u, action="a") for u in ("u1", "u2", "u3")] + [
        ev("u12", 10, user="u1", action="b"),
        ev("u22", 20_001, user="u2", action="b"),
        ev("u32", 90_000, user="u3", action="b"),
    ]
    (row,) = funnel_stats(events, [two_stage("a", "b")]).values()
    assert figures(row, "median_seconds") == [20.001, None]
    events.append(ev("u42", 20_000, user="u4", action="b"))
    events.append(ev("u41", 0, user="u4", action="a"))  # 4 values: (20.000 + 20.001) / 2
    (row,) = funnel_stats(events, [two_stage("a", "b")]).values()
    assert figures(row, "median_seconds") == [pytest.approx(20.0005), None]


def test_funnel_window_edge_is_inside() -> None:
    window = 60 * SEC
    inside = [ev("a", 0, action="a"), ev("b", window, action="b")]
    outside = [ev("a", 0, action="a"), ev("b", window + 1, action="b")]
    (row,) = funnel_stats(inside, [two_stage("a", "b", window)]).values()
    assert figures(row, "reached") == [1, 1]
    assert figures(row, "median_seconds") == [60.0, None]
    (row,) = funnel_stats(outside, [two_stage("a", "b", window)]).values()
    assert figures(row, "reached") == [1, 0]
    assert figures(row, "drop_off_percent") == [100.0, None]
    assert figures(row, "median_seconds") == [None, None]


def test_funnel_window_counts_from_t1_not_previous_stage() -> None:
    window = 60 * SEC
    funnel = {
        "name": "f",
        "window_ms": window,
        "stages": [{"action": "a"}, {"action": "b"}, {"action": "c"}],
    }
    events = [ev("1", 0, action="a"), ev("2", 50 * SEC, action="b"), ev("3", 70 * SEC, action="c")]
    (row,) = funnel_stats(events, [funnel]).values()
    assert figures(row, "reached") == [1, 1, 0]
    # reached(3) = 0 below a non-empty stage: 100 % drop; from 3 on nothing to divide: None.
    assert figures(row, "drop_off_percent") == [0.0, 100.0, None]


def test_funnel_drop_off_zero_when_nobody_reached_the_stage() -> None:
    funnel = {
        "name": "f",
        "stages": [{"action": "a"}, {"action": "b"}, {"action": "c"}, {"action": "d"}],
    }  # window_ms defaults to 24 h
    (row,) = funnel_stats([ev("1", 0, action="a")], [funnel]).values()
    assert figures(row, "reached") == [1, 0, 0, 0]
    assert figures(row, "drop_off_percent") == [100.0, 0.0, 0.0, None]
    (row,) = funnel_stats([ev("1", 0, action="a"), ev("2", DAY, action="b")], [funnel]).values()
    assert figures(row, "reached") == [1, 1, 0, 0]  # default window: 24 h, edge inside


def test_funnel_one_event_fills_one_stage() -> None:
    same = {"name": "f", "stages": [{"action": "click"}, {"action": "click"}]}
    (row,) = funnel_stats([ev("a", 0)], [same]).values()
    assert figures(row, "reached") == [1, 0]
    # Each click starts an attempt; the first reaches stage 2 with the second click.
    (row,) = funnel_stats([ev("a", 0), ev("b", 5 * SEC)], [same]).values()
    assert figures(row, "reached") == [1, 1]
    assert figures(row, "median_seconds") == [5.0, None]
    # An event matching stages 1 and 2 (prefixes /p and /p/1) fills stage 1 of its attempt.
    nested = {
        "name": "g",
        "stages": [
            {"action": "page_view", "page_prefix": "/p"},
            {"action": "page_view", "page_prefix": "/p/1"},
        ],
    }
    (row,) = funnel_stats([ev("a", 0, action="page_view", page="/p/1")], [nested]).values()
    assert figures(row, "reached") == [1, 0]


def test_funnel_stages_at_the_same_ts_follow_event_id_order() -> None:
    funnel = two_stage("page_view", "add_to_cart")
    # add_to_cart "a" sorts before page_view "b": not after it, so stage 2 is not reached.
    before = [ev("b", 0, action="page_view", page="/x"), ev("a", 0, action="add_to_cart")]
    (row,) = funnel_stats(before, [funnel]).values()
    assert figures(row, "reached") == [1, 0]
    after = [ev("a", 0, action="page_view", page="/x"), ev("b", 0, action="add_to_cart")]
    (row,) = funnel_stats(after, [funnel]).values()
    assert figures(row, "reached") == [1, 1]
    assert figures(row, "median_seconds") == [0.0, None]


def test_funnel_best_attempt_most_stages_then_earliest() -> None:
    funnel = {
        "name": "f",
        "window_ms": 100 * SEC,
        "stages": [{"action": "a"}, {"action": "b"}, {"action": "c"}],
    }
    events = [
        ev("1", 0, action="a"),
        ev("2", 50 * SEC, action="b"),
        ev("3", 100 * SEC, action="a"),  # this attempt: b at 105 s, also 2 stages, later
        ev("4", 105 * SEC, action="b"),
    ]
    assert best_attempts(events, funnel) == {("u1", "2024-01-15"): [T0, T0 + 50 * SEC]}
    (row,) = funnel_stats(events, [funnel]).values()
    assert figures(row, "median_seconds") == [50.0, None, None]
    # A later attempt reaching more stages wins (c at 203 s is outside the first two windows).
    events += [ev("5", 200 * SEC, action="a"), ev("6", 201 * SEC, action="b")]
    events += [ev("7", 203 * SEC, action="c")]
    assert best_attempts(events, funnel) == {
        ("u1", "2024-01-15"): [T0 + 200 * SEC, T0 + 201 * SEC, T0 + 203 * SEC]
    }
    (row,) = funnel_stats(events, [funnel]).values()
    assert figures(row, "reached") == [1, 1, 1]
    assert figures(row, "median_seconds") == [1.0, 2.0, None]


def test_funnel_tie_on_t1_goes_to_the_smaller_event_id() -> None:
    # Two clicks at the same ts both start attempts: "a" reaches stage 2 with "b" (0 s later),
    # "b" reaches it with "c" (10 s later). Same stages, same t1: "a" comes first.
    events = [ev("c", 10 * SEC), ev("b", 0), ev("a", 0)]
    same = {"name": "f", "stages": [{"action": "click"}, {"action": "click"}]}
    assert best_attempts(events, same) == {("u1", "2024-01-15"): [T0, T0]}
    (row,) = funnel_stats(events, [same]).values()
    assert figures(row, "median_seconds") == [0.0, None]


def test_funnel_attempt_belongs_to_the_day_of_t1() -> None:
    funnel = two_stage("a", "b")
    late = MIDNIGHT + DAY - MIN  # 2024-01-15T23:59
    events = [
        ev("1", late, action="a"),
        ev("2", late + 2 * MIN, action="b"),  # 00:01 the next day
        ev("3", late + 5 * MIN, action="a"),  # an attempt of 2024-01-16 that stops at stage 1
        ev("4", MIDNIGHT + 3 * DAY, action="b"),  # a day without stage 1: no row
    ]
    rows = funnel_stats(events, [funnel])
    assert list(rows) == [("f", "2024-01-15"), ("f", "2024-01-16")]
    assert figures(rows[("f", "2024-01-15")], "reached") == [1, 1]
    assert figures(rows[("f", "2024-01-15")], "median_seconds") == [120.0, None]
    assert figures(rows[("f", "2024-01-16")], "reached") == [1, 0]


def test_funnel_every_stage_one_event_starts_an_attempt() -> None:
    # "a" at 0 reaches b only after the window; "a" at 30 s (inside a running attempt)
    # starts its own, which does reach it: one user, best attempt 2 stages.
    funnel = two_stage("a", "b", window_ms=60 * SEC)
    events = [ev("1", 0, action="a"), ev("2", 30 * SEC, action="a"), ev("3", 80 * SEC, action="b")]
    assert best_attempts(events, funnel) == {("u1", "2024-01-15"): [T0 + 30 * SEC, T0 + 80 * SEC]}


def test_funnel_several_funnels_and_users_per_day() -> None:
    events = [
        ev("1", 0, user="u1", action="a"),
        ev("2", 1, user="u1", action="b"),
        ev("3", 0, user="u2", action="a"),
    ]
    rows = funnel_stats(events, [two_stage("a", "b"), {**two_stage("b", "a"), "name": "g"}])
    assert figures(rows[("f", "2024-01-15")], "reached") == [2, 1]
    assert figures(rows[("f", "2024-01-15")], "drop_off_percent") == [50.0, None]
    assert figures(rows[("g", "2024-01-15")], "reached") == [1, 0]


@pytest.mark.parametrize(
    "config",
    [
        {"name": "f", "stages": [{"action": "a"}]},
        {"name": "f", "stages": [{"action": f"a{i}"} for i in range(11)]},
        {"name": "", "stages": [{"action": "a"}, {"action": "b"}]},
        {"name": "f", "window_ms": -1, "stages": [{"action": "a"}, {"action": "b"}]},
        {"name": "f", "stages": [{"action": "a"}, {"action": ""}]},
        {"name": "f", "stages": [{"action": "a"}, {"action": "b", "page_prefix": 3}]},
        {"name": "f", "stages": ["page_view:/products", "add_to_cart"]},
        {"name": "f", "stages": "ab"},
    ],
)
def test_funnel_config_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        funnel_stats([ev("a", 0)], [config])


def test_funnel_names_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        funnel_stats([], [two_stage("a", "b"), two_stage("c", "d")])


def _most_stages(ordered: list[dict[str, Any]], first: int, funnel: dict[str, Any]) -> int:
    """Exhaustive: the most stages any strictly increasing choice of events reaches."""
    stages, window = funnel["stages"], funnel["window_ms"]
    t1 = to_epoch_ms(ordered[first]["timestamp"])

    def matches(e: dict[str, Any], k: int) -> bool:
        prefix = stages[k].get("page_prefix") or ""
        return bool(e["action"] == stages[k]["action"] and (e["page"] or "").startswith(prefix))

    def deepest(position: int, k: int) -> int:
        if k == len(stages):
            return k
        best = k
        for index in range(position + 1, len(ordered)):
            e = ordered[index]
            if to_epoch_ms(e["timestamp"]) <= t1 + window and matches(e, k):
                best = max(best, deepest(index, k + 1))
        return best

    return deepest(first, 1)


@pytest.mark.parametrize("seed", range(4))
def test_funnel_greedy_reaches_as_far_as_any_choice(seed: int) -> None:
    rng = random.Random(seed)
    funnel = {
        "name": "f",
        "window_ms": 20 * MIN,
        "stages": [
            {"action": "page_view", "page_prefix": "/p"},
            {"action": "click", "page_prefix": None},
            {"action": "page_view", "page_prefix": "/p/1"},
            {"action": "add_to_cart", "page_prefix": None},
        ],
    }
    events = [
        ev(
            f"e{i:03d}",
            rng.randrange(0, HOUR, 30 * SEC),  # many equal timestamps
            user=f"u{rng.randrange(3)}",
            action=(action := rng.choice(["page_view", "click", "add_to_cart"])),
            page=rng.choice(["/p", "/p/1", "/q"]) if action == "page_view" else "",
        )
        for i in range(90)
    ]
    best = best_attempts(events, funnel)
    expected: dict[tuple[str, str], int] = {}
    for user in {e["user_id"] for e in events}:
        ordered = sorted(
            (e for e in events if e["user_id"] == user),
            key=lambda e: (to_epoch_ms(e["timestamp"]), e["event_id"]),
        )
        for i, e in enumerate(ordered):
            if e["action"] == "page_view" and e["page"].startswith("/p"):
                key = (user, day_text(day_index(to_epoch_ms(e["timestamp"]))))
                expected[key] = max(expected.get(key, 0), _most_stages(ordered, i, funnel))
    assert {key: len(times) for key, times in best.items()} == expected
    assert max(expected.values()) >= 3


# --------------------------------------------------------------------------------------------
# Section 8: cohorts
# --------------------------------------------------------------------------------------------


def _cohort_events() -> list[dict[str, Any]]:
    d0, d1, d2 = MIDNIGHT, MIDNIGHT + DAY, MIDNIGHT + 2 * DAY
    return [
        # u1, cohort 2024-01-15: a session of 2 events, score 4 + 4 + 0 + 10 = 18
        ev("a1", d0 + 10 * HOUR, user="u1", action="page_view", page="/a"),
        ev("a2", d0 + 10 * HOUR + MIN, user="u1", action="purchase", cents=1_000),
        # a session from 23:50 to 00:10: cut at midnight it is "a3" alone, 2 + 4 + 0 + 5 = 11
        ev("a3", d1 - 10 * MIN, user="u1", action="page_view", page="/b"),
        ev("a4", d1 + 10 * MIN, user="u1", action="click", page="/c"),
        # day 2: a one-event session, 2 + 0 + 0 + 5 = 7, and 5.00 of revenue
        ev("a5", d2 + 8 * HOUR, user="u1", action="purchase", cents=500),
        # u2, cohort 2024-01-15: one click, 7
        ev("b1", d0 + 12 * HOUR, user="u2"),
        # u3, cohort 2024-01-16: one page view, 11; the event at midnight is on its day
        ev("c1", d1, user="u3", action="page_view", page="/c"),
    ]


def test_cohorts_example() -> None:
    rows = cohorts(_cohort_events())
    assert list(rows) == [
        ("2024-01-15", 0),
        ("2024-01-15", 1),
        ("2024-01-15", 2),
        ("2024-01-16", 0),
        ("2024-01-16", 1),
    ]
    assert rows[("2024-01-15", 0)] == {
        "cohort": "2024-01-15",
        "day_offset": 0,
        "cohort_size": 2,
        "retained_users": 2,
        "retention_rate_percent": 100.0,
        "cumulative_revenue_cents": 1_000,
        "cumulative_revenue_per_user": 5.0,
        "average_engagement_score": 12.0,  # (18 + 11 + 7) / 3: the midnight session cut
    }
    day1 = rows[("2024-01-15", 1)]
    assert day1["retained_users"] == 1  # u1's 00:10 click
    assert day1["retention_rate_percent"] == 50.0
    assert day1["cumulative_revenue_per_user"] == 5.0
    assert day1["average_engagement_score"] == 0.0  # the session crossing midnight started on d0
    day2 = rows[("2024-01-15", 2)]
    assert (day2["retained_users"], day2["cumulative_revenue_cents"]) == (1, 1_500)
    assert day2["cumulative_revenue_per_user"] == 7.5
    assert day2["average_engagement_score"] == 7.0
    assert rows[("2024-01-16", 0)] == {
        "cohort": "2024-01-16",
        "day_offset": 0,
        "cohort_size": 1,
        "retained_users": 1,
        "retention_rate_percent": 100.0,
        "cumulative_revenue_cents": 0,
        "cumulative_revenue_per_user": 0.0,
        "average_engagement_score": 11.0,
    }
    assert rows[("2024-01-16", 1)]["retained_users"] == 0
    assert rows[("2024-01-16", 1)]["average_engagement_score"] == 0.0


def test_cohorts_uncut_session_would_score_more() -> None:
    """The crossing session scored whole is 4 + 8 + 0 + 10 = 22, not the 11 used above."""
    scores = {s["window_start_ms"]: s["engagement_score"] for s in sessions(_cohort_events())}
    assert scores[T0 + MIDNIGHT + DAY - 10 * MIN] == 22.0


def test_cohorts_days_limits() -> None:
    events = _cohort_events()
    assert list(cohorts(events, max_days=1)) == [
        ("2024-01-15", 0),
        ("2024-01-15", 1),
        ("2024-01-16", 0),
        ("2024-01-16", 1),
    ]
    rows = cohorts(events, last_day="2024-01-18")
    assert len(rows) == 4 + 3
    assert rows[("2024-01-15", 3)]["retained_users"] == 0
    assert rows[("2024-01-15", 3)]["cumulative_revenue_cents"] == 1_500
    assert list(cohorts(events, last_day="2024-01-15")) == [("2024-01-15", 0)]
    assert cohorts([]) == {}


def test_cohorts_session_gap_is_used() -> None:
    # With a 5 minute gap the midnight session splits: "a4" starts a session on day 1.
    rows = cohorts(_cohort_events(), gap_ms=5 * MIN)
    assert rows[("2024-01-15", 0)]["average_engagement_score"] == 12.0  # "a3" alone either way
    assert rows[("2024-01-15", 1)]["average_engagement_score"] == 11.0  # "a4": 2 + 4 + 0 + 5


@pytest.mark.parametrize("seed", range(3))
def test_cohorts_consistent_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    events = _random_events(rng, 400, users=30, span_ms=5 * DAY)
    rows = cohorts(events)
    first_day: dict[str, str] = {}
    for e in sorted(events, key=lambda e: to_epoch_ms(e["timestamp"])):
        first_day.setdefault(e["user_id"], day_text(day_index(to_epoch_ms(e["timestamp"]))))
    assert sum(r["cohort_size"] for (_, d), r in rows.items() if d == 0) == len(first_day)
    for (cohort, offset), row in rows.items():
        members = {u for u, c in first_day.items() if c == cohort}
        assert row["cohort_size"] == len(members)
        day = day_index(to_epoch_ms(cohort + "T00:00:00Z")) + offset
        assert row["retained_users"] == len(
            {
                e["user_id"]
                for e in events
                if e["user_id"] in members and day_index(to_epoch_ms(e["timestamp"])) == day
            }
        )
        if offset == 0:
            assert row["retention_rate_percent"] == 100.0


# --------------------------------------------------------------------------------------------
# Section 9: A/B tests
# --------------------------------------------------------------------------------------------


def exposed(event_id: str, ts: int, user: str, variant: Any, **kw: Any) -> dict[str, Any]:
    """A page view exposing ``user`` to experiment "btn" (``variant`` may be anything)."""
    meta = {"experiment": "btn", "variant": variant}
    return ev(event_id, ts, user=user, action="page_view", page="/checkout", metadata=meta, **kw)


def test_experiment_example() -> None:
    events = [
        exposed("u1-1", 0, "u1", "control"),
        ev("u1-2", 10 * SEC, user="u1", action="purchase", cents=2_000),
        ev("u2-0", -5 * SEC, user="u2", action="signup"),  # converted BEFORE exposure
        ev("u2-1", -1 * SEC, user="u2", action="purchase", cents=700),  # revenue before too
        exposed("u2-2", 0, "u2", "control"),
        exposed("u3-2", 0, "u3", "green"),
        ev("u3-1", 0, user="u3", action="purchase", cents=1_500),  # same ts, smaller id: counts
        exposed("u3-3", 5 * SEC, "u3", "control"),  # conflict: stays green
        exposed("u3-4", 6 * SEC, "u3", "blue"),  # still one conflict
        exposed("u4-1", 0, "u4", "green"),
        ev("u4-2", 3 * SEC, user="u4", action="add_to_cart", cents=0),
        exposed("u6-b", 0, "u6", "green"),  # same ts: "u6-a" comes first
        exposed("u6-a", 0, "u6", "control"),
    ]
    result = experiments(events)
    assert list(result) == ["btn"]
    btn = result["btn"]
    assert btn["experiment"] == "btn"
    assert btn["variant_conflicts"] == 2  # u3 and u6, once each
    assert list(btn["variants"]) == ["control", "green"]
    control, green = btn["variants"]["control"], btn["variants"]["green"]
    assert control == {
        "users": 3,  # u1, u2, u6
        "converted_users": 1,
        "conversion_rate_percent": pytest.approx(100 / 3),
        "revenue_cents": 2_000,
        "revenue_per_user": pytest.approx(20 / 3),
        "p_value": None,
        "probability_to_beat_control": None,
        "significant": None,
    }
    assert green["users"] == 2  # u3, u4
    assert green["converted_users"] == 1
    assert green["conversion_rate_percent"] == 50.0
    assert green["revenue_cents"] == 1_500
    assert green["revenue_per_user"] == 7.5
    # pooled 2/5; z = (1/2 - 1/3) / sqrt(2/5 * 3/5 * (1/2 + 1/3)) = (1/6) / sqrt(0.2)
    z = (1 / 6) / math.sqrt(0.2)
    assert green["p_value"] == pytest.approx(2 * (1 - NormalDist().cdf(z)), abs=1e-12)
    # Beta(2, 2) against Beta(2, 3): integral of 12 y (1 - y)^2 (1 - 3 y^2 + 2 y^3) = 22/35
    assert green["probability_to_beat_control"] == pytest.approx(22 / 35, abs=1e-15)
    assert green["significant"] is False


def test_exposure_needs_string_experiment_and_variant() -> None:
    events = [
        exposed("a", 0, "u1", None),  # variant missing
        exposed("b", 1, "u1", 5),  # variant not a string
        exposed("c", 2, "u1", ""),  # variant empty
        exposed("d", 3, "u1", "green"),  # the first real exposure
        ev("e", 4, user="u2", metadata={"experiment": "btn"}),
        ev("f", 5, user="u3", metadata={"experiment": 7, "variant": "control"}),
        ev("g", 6, user="u3", metadata={"experiment": "", "variant": "control"}),
        ev("h", 7, user="u4", metadata={"experiment": "BTN", "variant": "control"}),
    ]
    del events[0]["metadata"]["variant"]
    result = experiments(events)
    assert sorted(result) == ["BTN", "btn"]  # case-sensitive names
    assert result["btn"]["variants"]["green"]["users"] == 1
    assert list(result["btn"]["variants"]) == ["green"]
    assert result["btn"]["variant_conflicts"] == 0
    # No control in "btn": nothing to compare with.
    assert result["btn"]["variants"]["green"]["p_value"] is None
    assert result["btn"]["variants"]["green"]["significant"] is None


def test_experiments_are_independent_per_name() -> None:
    events = [
        exposed("a", 0, "u1", "control"),
        ev("b", 1, user="u1", metadata={"experiment": "other", "variant": "x"}),
        ev("c", 2, user="u1", metadata={"experiment": "other", "variant": "y"}),
        ev("d", 3, user="u1", action="signup"),
    ]
    result = experiments(events)
    assert result["btn"]["variant_conflicts"] == 0
    assert result["other"]["variant_conflicts"] == 1
    assert result["other"]["variants"]["x"]["converted_users"] == 1
    assert "y" not in result["other"]["variants"]
    assert experiments([ev("z", 0)]) == {}


def test_p_value_pooled_rate_zero_or_one() -> None:
    assert two_proportion_p_value(0, 50, 0, 70) == 1.0
    assert two_proportion_p_value(50, 50, 70, 70) == 1.0
    assert two_proportion_p_value(3, 10, 3, 10) == 1.0  # z = 0
    z = (0.5 - 0.25) / math.sqrt(0.375 * 0.625 * (1 / 8 + 1 / 8))
    assert two_proportion_p_value(4, 8, 2, 8) == pytest.approx(2 * NormalDist().cdf(-z), 1e-12)
    assert two_proportion_p_value(2, 8, 4, 8) == two_proportion_p_value(4, 8, 2, 8)


def test_experiment_pooled_rates_zero_and_one_in_rows() -> None:
    nobody = [exposed(f"{v}{i}", i, f"{v}{i}", v) for v in ("control", "green") for i in range(3)]
    row = experiments(nobody)["btn"]["variants"]["green"]
    assert (row["p_value"], row["probability_to_beat_control"]) == (1.0, 0.5)
    everybody = nobody + [
        ev(f"{v}{i}-buy", 10 + i, user=f"{v}{i}", action="purchase", cents=100)
        for v in ("control", "green")
        for i in range(3)
    ]
    row = experiments(everybody)["btn"]["variants"]["green"]
    assert (row["p_value"], row["probability_to_beat_control"]) == (1.0, 0.5)
    assert row["revenue_cents"] == 300 and row["significant"] is False


def _ab_events(n_control: int, x_control: int, n_green: int, x_green: int) -> list[dict[str, Any]]:
    events = []
    for variant, n, x in (("control", n_control, x_control), ("green", n_green, x_green)):
        for i in range(n):
            user = f"{variant}-{i}"
            events.append(exposed(f"{user}-x", 0, user, variant))
            if i < x:
                events.append(ev(f"{user}-c", SEC, user=user, action="signup"))
    return events


def test_significance_needs_100_users_in_both_variants() -> None:
    row = experiments(_ab_events(100, 10, 100, 30))["btn"]["variants"]["green"]
    assert row["p_value"] < 0.001
    assert row["significant"] is True
    assert row["probability_to_beat_control"] > 0.999
    row = experiments(_ab_events(99, 10, 200, 60))["btn"]["variants"]["green"]
    assert row["p_value"] < 0.001
    assert row["significant"] is False  # control under 100 users
    row = experiments(_ab_events(100, 10, 100, 12))["btn"]["variants"]["green"]
    assert row["p_value"] > 0.05
    assert row["significant"] is False


def _interleavings(x_v: int, n_v: int, x_c: int, n_c: int) -> Fraction:
    """P(pV > pC) by enumerating every interleaving of the two sets of uniforms (tiny n)."""
    n1, n2 = n_v + 1, n_c + 1
    wins = total = 0
    for positions in itertools.combinations(range(n1 + n2), n1):
        v_seen = c_seen = 0
        for index in range(n1 + n2):
            if index in positions:
                v_seen += 1
                if v_seen == x_v + 1:  # pV's uniform first: pV < pC
                    break
            else:
                c_seen += 1
                if c_seen == x_c + 1:
                    wins += 1
                    break
        total += 1
    return Fraction(wins, total)


def _integrated(x_v: int, n_v: int, x_c: int, n_c: int, steps: int = 100_000) -> float:
    """P(pV > pC) = integral of f_V(x) * F_C(x) dx by the trapezoid rule on a uniform grid, with
    F_C accumulated on the same grid (densities from log-gamma). Error O(1 / steps^2): with
    100,000 steps and these parameters it is below 1e-8."""

    def log_density(a: int, b: int) -> Any:
        norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)

        def f(x: float) -> float:
            if x <= 0.0 or x >= 1.0:
                return math.exp(norm) if (x <= 0.0 and a == 1) or (x >= 1.0 and b == 1) else 0.0
            return math.exp(norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x))

        return f

    f_v = log_density(1 + x_v, 1 + n_v - x_v)
    f_c = log_density(1 + x_c, 1 + n_c - x_c)
    h = 1.0 / steps
    cdf = 0.0
    previous_c = f_c(0.0)
    previous = f_v(0.0) * cdf
    total = 0.0
    for i in range(1, steps + 1):
        x = i * h
        current_c = f_c(x)
        cdf += h * (previous_c + current_c) / 2
        current = f_v(x) * cdf
        total += h * (previous + current) / 2
        previous_c, previous = current_c, current
    return total


@pytest.mark.parametrize(
    "counts", [(0, 0, 0, 0), (0, 1, 0, 1), (1, 2, 0, 2), (2, 3, 1, 4), (0, 3, 3, 3), (2, 2, 0, 4)]
)
def test_probability_to_beat_matches_enumeration(counts: tuple[int, int, int, int]) -> None:
    x_v, n_v, x_c, n_c = counts
    assert probability_to_beat(x_v, n_v, x_c, n_c) == _interleavings(x_v, n_v, x_c, n_c)


@pytest.mark.parametrize(
    "counts", [(1, 2, 1, 3), (45, 100, 30, 100), (3, 10, 0, 1), (0, 40, 2, 60), (120, 400, 95, 380)]
)
def test_probability_to_beat_matches_integration(counts: tuple[int, int, int, int]) -> None:
    exact = probability_to_beat(*counts)
    assert float(exact) == pytest.approx(_integrated(*counts), abs=1e-6)


def test_probability_to_beat_symmetry() -> None:
    for counts in [(5, 20, 7, 25), (0, 3, 1, 1), (300, 1000, 280, 990)]:
        x_v, n_v, x_c, n_c = counts
        both = probability_to_beat(x_v, n_v, x_c, n_c) + probability_to_beat(x_c, n_c, x_v, n_v)
        assert both == 1
        assert probability_to_beat(x_v, n_v, x_v, n_v) == Fraction(1, 2)


# --------------------------------------------------------------------------------------------
# Users, duplicates and lateness
# --------------------------------------------------------------------------------------------


def test_user_profiles() -> None:
    events = [
        ev("a", 0, user="u1", session="s1", device="mobile", country="DE"),
        ev("b", 1_000, user="u1", session="s2", device="desktop", country=None),
        ev(
            "c",
            2 * GAP,
            user="u1",
            session="s1",
            device="mobile",
            country="AT",
            action="purchase",
            cents=1_234,
        ),
        ev("d", 5_000, user="u2", device="tablet", country=""),
    ]
    assert user_profiles(events, GAP) == {
        "u1": {
            "first_seen_ms": T0,
            "last_seen_ms": T0 + 2 * GAP,
            "events": 3,
            "sessions": 3,  # s1 twice (long gap) + s2
            "revenue_cents": 1_234,
            "devices": ["desktop", "mobile"],
            "countries": ["AT", "DE"],
        },
        "u2": {
            "first_seen_ms": T0 + 5_000,
            "last_seen_ms": T0 + 5_000,
            "events": 1,
            "sessions": 1,
            "revenue_cents": 0,
            "devices": ["tablet"],
            "countries": [],
        },
    }


def test_dedupe_keeps_first_occurrence() -> None:
    first = ev("a", 0, action="click")
    second = ev("a", 5, action="purchase", cents=100)
    other = ev("b", 1)
    no_id: dict[str, Any] = {"user_id": "u1", "action": "x"}
    assert dedupe([first, other, second, no_id, dict(no_id)]) == [first, other, no_id, no_id]
    assert dedupe([first, other, second])[0] is first


def test_drop_late() -> None:
    grace = 10_000
    stream = [
        ev("a", 65_000),  # max 65 s, watermark 55 s: window 0 still open
        ev("b", 5_000),  # window [0, 60 s) not closed (60 > 55): on time, though ts < watermark
        ev("c", 70_000),  # max 70 s, watermark 60 s: window 0 closes (end 60 <= 60)
        ev("d", 59_999),  # window 0 closed: late
        ev("e", 60_000),  # window 1 open: on time
        ev("f", 200_000),  # watermark 190 s
        ev("g", 120_000),  # window [120, 180) closed: late
        ev("h", 180_000),  # window [180, 240) open: on time
    ]
    on_time, late = drop_late(stream, grace)
    assert [e["event_id"] for e in on_time] == ["a", "b", "c", "e", "f", "h"]
    assert [e["event_id"] for e in late] == ["d", "g"]


def test_drop_late_disorder_within_grace_is_never_late() -> None:
    rng = random.Random(7)
    base = sorted(rng.randrange(3_600_000) for _ in range(500))
    jittered = [ts + rng.randrange(10_001) for ts in base]  # disorder <= grace
    stream = [ev(f"e{i:04d}", ts) for i, ts in enumerate(jittered)]
    on_time, late = drop_late(stream, 10_000)
    assert late == []
    assert len(on_time) == 500


def test_drop_late_window_size() -> None:
    # Watermark after "a" is 20 s; 10 s windows [0, 10) and [10, 20) are closed.
    stream = [ev("a", 40_000), ev("b", 9_999), ev("c", 10_000), ev("d", 20_000)]
    on_time, late = drop_late(stream, 20_000, window_ms=10_000)
    assert [e["event_id"] for e in late] == ["b", "c"]
    assert [e["event_id"] for e in on_time] == ["a", "d"]


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------


def test_speed_100k_events() -> None:
    rng = random.Random(1)
    events = _random_events(rng, 100_000, users=2_000, span_ms=6 * 3_600_000)
    started = time.perf_counter()
    result = kpi_windows(events)
    sessions(events)
    page_stats(events)
    dimension_stats(events)
    user_profiles(events)
    elapsed = time.perf_counter() - started
    print(f"reference on 100k events: {elapsed:.2f} s")
    assert sum(w["total_events"] for w in result.values()) == 100_000
    assert elapsed < 60, f"reference too slow: {elapsed:.1f} s"
