"""Unit tests of the batch reference itself, on small hand-computed examples."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .batch import (
    TREND_METRICS,
    dedupe,
    dimension_stats,
    drop_late,
    engagement_score,
    kpi_windows,
    page_stats,
    pages_in_window,
    sessions,
    to_epoch_ms,
    top_pages,
    trend,
    user_profiles,
    window_start,
)

MIN = 60_000
GAP = 1_800_000
T0 = 1_705_314_600_000  # 2024-01-15T10:30:00.000Z, a multiple of 60 s


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
