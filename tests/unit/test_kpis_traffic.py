"""SPEC sections 4-5: KPI figures from summed counters, the trend rule, page and traffic rows.

analytics.kpis turns a window's integer counters into the published figures; trends are
classified on exact fractions so that a change of exactly +5 % or -5 % is ``stable`` however
the ratios would round in floating point.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from analytics.kpis import TREND_METRICS, kpi_figures, trend, trend_values, trends
from analytics.partition import PartitionRules, PartitionState, apply_batch
from analytics.rows import Arrival
from analytics.timeutil import format_ts
from analytics.traffic import add_dimensions, add_pages, dimension_rows, page_rows
from tables.memory_store import MemoryStore
from tests.reference import batch as reference

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z

# --------------------------------------------------------------------------- trend rule


@pytest.mark.parametrize(
    ("current", "previous", "change", "direction"),
    [
        (Fraction(105), Fraction(100), 5.0, "stable"),  # exactly +5: stable
        (Fraction(95), Fraction(100), -5.0, "stable"),  # exactly -5: stable
        (Fraction(1_050_001, 10_000), Fraction(100), 5.0001, "up"),
        (Fraction(949_999, 10_000), Fraction(100), -5.0001, "down"),
        (Fraction(106), Fraction(100), 6.0, "up"),
        (Fraction(50), Fraction(100), -50.0, "down"),
        (Fraction(0), Fraction(100), -100.0, "down"),
        (Fraction(100), Fraction(100), 0.0, "stable"),
        (Fraction(21), Fraction(20), 5.0, "stable"),
        (Fraction(19), Fraction(20), -5.0, "stable"),
        (Fraction(1000), Fraction(0), 0.0, "stable"),  # previous 0: change 0, stable
        (Fraction(0), Fraction(0), 0.0, "stable"),
    ],
)
def test_trend_rule(current: Fraction, previous: Fraction, change: float, direction: str) -> None:
    result = trend(current, previous)
    assert result == {"change_percent": pytest.approx(change, abs=1e-12), "trend": direction}
    assert isinstance(result["change_percent"], float)


def test_absent_previous_window_is_all_zero() -> None:
    current = {
        "active_users": 3,
        "events": 10,
        "page_views": 4,
        "sessions": 3,
        "revenue_cents": 500,
        "conversions": 1,
        "bounces": 1,
        "session_duration_ms": 9_000,
    }
    expected = {metric: {"change_percent": 0.0, "trend": "stable"} for metric in TREND_METRICS}
    assert trends(current, None) == expected
    assert trends(current, {}) == expected
    assert set(trends({}, None)) == set(TREND_METRICS)


def _window(sessions: int, bounces: int = 0, **extra: int) -> dict[str, int]:
    return {"sessions": sessions, "bounces": bounces, **extra}


@pytest.mark.parametrize(
    ("current", "previous", "metric", "direction"),
    [
        # bounce 21/40 vs 20/40: 52.5 % vs 50 % is +5 % exactly
        (_window(40, 21), _window(40, 20), "bounce_rate_percent", "stable"),
        # 7/8 vs 5/6 = 87.5 % vs 83.33 % is +5 % exactly; floats give 5.000000000000006
        (_window(8, 7), _window(6, 5), "bounce_rate_percent", "stable"),
        (_window(16, 14), _window(6, 5), "bounce_rate_percent", "stable"),
        # 19/30 vs 2/3 is -5 % exactly; floats give -5.0000000000000036
        (_window(30, 19), _window(3, 2), "bounce_rate_percent", "stable"),
        (
            _window(8, 0, conversions=7),
            _window(6, 0, conversions=5),
            "conversion_rate_percent",
            "stable",
        ),
        (
            _window(8, session_duration_ms=7_000),
            _window(6, session_duration_ms=5_000),
            "average_session_duration_seconds",
            "stable",
        ),
        (
            {"revenue_cents": 700, "active_users": 8},
            {"revenue_cents": 500, "active_users": 6},
            "revenue_per_user",
            "stable",
        ),
        # one more bounce than the exact +5 % case: up
        (_window(80, 71), _window(6, 5), "bounce_rate_percent", "up"),
    ],
)
def test_trends_classify_exact_ratios(
    current: dict[str, int], previous: dict[str, int], metric: str, direction: str
) -> None:
    result = trends(current, previous)[metric]
    assert result["trend"] == direction
    if direction == "stable":
        assert abs(result["change_percent"]) == pytest.approx(5.0, abs=1e-12)


def test_float_ratios_would_cross_the_threshold() -> None:
    """Guards the cases above: plain float arithmetic really does misclassify them."""
    float_change = 100 * (100 * 7 / 8 - 100 * 5 / 6) / (100 * 5 / 6)
    assert float_change > 5
    float_change = 100 * (100 * 19 / 30 - 100 * 2 / 3) / (100 * 2 / 3)
    assert float_change < -5


def test_trend_values_are_exact_fractions() -> None:
    values = trend_values(
        {
            "active_users": 3,
            "events": 7,
            "page_views": 2,
            "sessions": 6,
            "revenue_cents": 1_000,
            "conversions": 1,
            "bounces": 2,
            "session_duration_ms": 1_234,
        }
    )
    assert values == {
        "active_users": 3,
        "total_events": 7,
        "total_page_views": 2,
        "total_sessions": 6,
        "total_revenue": 1_000,  # compared in cents: same ratio as in currency
        "total_conversions": 1,
        "conversion_rate_percent": Fraction(100, 6),
        "bounce_rate_percent": Fraction(200, 6),
        "average_session_duration_seconds": Fraction(1_234, 6_000),
        "revenue_per_user": Fraction(1_000, 3),
    }
    assert all(isinstance(v, Fraction) for v in values.values())
    assert set(trend_values({}).values()) == {0}


def _reference_events(window: int, sessions: int, bounces: int) -> list[dict[str, Any]]:
    """``sessions`` new users in window ``window``; all but ``sessions - bounces`` bounce."""
    events = []
    for i in range(sessions):
        count = 1 if i < bounces else 2
        for j in range(count):
            events.append(
                {
                    "event_id": f"w{window}-u{i}-{j}",
                    "user_id": f"w{window}-u{i}",
                    "action": "page_view",
                    "page": "/",
                    "timestamp": format_ts(T0 + window * MINUTE + 1_000 * j),
                    "is_conversion": False,
                    "revenue_cents": 0,
                }
            )
    return events


def test_reference_trend_at_exact_five_percent_is_stable() -> None:
    events = _reference_events(0, 6, 5) + _reference_events(1, 8, 7)
    windows = reference.kpi_windows(events, MINUTE)
    second = windows[T0 + MINUTE]
    assert second["bounce_rate_percent"] == 87.5
    assert second["trends"]["bounce_rate_percent"]["trend"] == "stable"


# --------------------------------------------------------------------------- kpi_figures


def test_kpi_figures_with_no_counters_are_zero() -> None:
    figures = kpi_figures(T0, MINUTE, {})
    assert figures["window_start"] == "2026-01-01T00:00:00.000Z"
    assert figures["window_end"] == "2026-01-01T00:01:00.000Z"
    numbers = {k: v for k, v in figures.items() if k not in ("window_start", "window_end")}
    assert numbers and all(v == 0 for v in numbers.values()), numbers


def test_division_by_zero_gives_zero_everywhere() -> None:
    # events, conversions and revenue without sessions, purchases or active users
    figures = kpi_figures(
        T0, MINUTE, {"events": 5, "conversions": 3, "revenue_cents": 999, "bounces": 2}
    )
    for name in (
        "average_order_value",
        "revenue_per_user",
        "average_session_duration_seconds",
        "bounce_rate_percent",
        "average_engagement_score",
        "conversion_rate_percent",
        "conversions_per_session",
    ):
        assert figures[name] == 0, name
    assert figures["total_revenue"] == 9.99
    assert figures["total_conversions"] == 3


def test_kpi_figures_from_counters() -> None:
    sums = {
        "users_total": 40,
        "active_users": 7,
        "new_users": 2,
        "sessions": 8,
        "page_views": 20,
        "events": 31,
        "revenue_cents": 10_001,
        "conversions": 3,
        "purchases": 3,
        "session_duration_ms": 123_456,
        "bounces": 3,
        "engagement_x10000": 2_345_678,
    }
    figures = kpi_figures(T0 + MINUTE, MINUTE, sums)
    assert figures == {
        "window_start": "2026-01-01T00:01:00.000Z",
        "window_end": "2026-01-01T00:02:00.000Z",
        "total_users": 40,
        "active_users": 7,
        "new_users": 2,
        "total_sessions": 8,
        "total_page_views": 20,
        "total_events": 31,
        "total_revenue": 100.01,
        "total_revenue_cents": 10_001,
        "total_conversions": 3,
        "purchases": 3,
        "average_order_value": 33.34,  # 100.01 / 3 = 33.336...
        "revenue_per_user": 14.29,  # 100.01 / 7 = 14.287...
        "average_session_duration_seconds": pytest.approx(123.456 / 8),
        "bounce_rate_percent": pytest.approx(37.5),
        "average_engagement_score": pytest.approx(234.5678 / 8),
        "conversion_rate_percent": pytest.approx(37.5),
        "conversions_per_session": pytest.approx(0.375),
        "total_bounces": 3,
        "total_session_duration_ms": 123_456,
        "total_engagement_x10000": 2_345_678,
    }


@pytest.mark.parametrize("cents", [0, 1, 5, 10, 99, 100, 101, 1_005, 12_345, 99_999_999_999])
def test_total_revenue_shows_the_exact_cents(cents: int) -> None:
    figures = kpi_figures(T0, MINUTE, {"revenue_cents": cents})
    assert figures["total_revenue_cents"] == cents
    assert f"{figures['total_revenue']:.2f}" == f"{cents // 100}.{cents % 100:02d}"


def test_total_revenue_two_decimals_never_drift() -> None:
    for cents in range(0, 200_000, 7):
        shown = f"{kpi_figures(T0, MINUTE, {'revenue_cents': cents})['total_revenue']:.2f}"
        assert shown == f"{cents // 100}.{cents % 100:02d}"


@pytest.mark.parametrize(
    ("cents", "count", "shown"),
    [
        (1_000, 3, 3.33),
        (200, 3, 0.67),
        (1, 3, 0.0),
        (2, 3, 0.01),
        (100_000, 7, 142.86),
    ],
)
def test_money_ratios_round_to_the_cent(cents: int, count: int, shown: float) -> None:
    figures = kpi_figures(
        T0, MINUTE, {"revenue_cents": cents, "purchases": count, "active_users": count}
    )
    assert figures["average_order_value"] == shown
    assert figures["revenue_per_user"] == shown


# --------------------------------------------------------------------------- pages


def test_page_rows_top_pages_first_then_page_ascending() -> None:
    pages = {
        "/b": [3, 2, 300],
        "/a": [3, 1, 1_000],
        "/c": [7, 4, 700],
        "/Z": [1, 1, 5],
        "/z": [1, 1, 0],
        "/": [3, 3, 1],
    }
    rows = page_rows(T0, MINUTE, pages)
    assert [r["page"] for r in rows] == ["/c", "/", "/a", "/b", "/Z", "/z"]
    by_page = {r["page"]: r for r in rows}
    assert by_page["/a"] == {
        "window_start": "2026-01-01T00:00:00.000Z",
        "window_end": "2026-01-01T00:01:00.000Z",
        "page": "/a",
        "views": 3,
        "unique_visitors": 1,
        "total_time_on_page_ms": 1_000,
        "avg_time_on_page_ms": pytest.approx(1_000 / 3),
    }
    assert by_page["/z"]["avg_time_on_page_ms"] == 0


def test_page_rows_order_matches_the_reference_top_pages() -> None:
    pages = {f"/p{i % 7}{chr(97 + i % 5)}": [i % 4 + 1, 1, i] for i in range(40)}
    rows = page_rows(T0, MINUTE, pages)
    stats = {page: {"views": cells[0]} for page, cells in pages.items()}
    assert [r["page"] for r in rows] == reference.top_pages(stats, len(stats))


def test_add_pages_and_dimensions_sum_partitions() -> None:
    pages: dict[str, list[int]] = {}
    add_pages(pages, {"/a": [2, 1, 10]})
    add_pages(pages, {"/a": [3, 2, 5], "/b": [1, 1, 1]})
    assert pages == {"/a": [5, 3, 15], "/b": [1, 1, 1]}

    dims: dict[str, dict[str, list[int]]] = {}
    add_dimensions(dims, {"device": {"mobile": [2, 1, 1, 100]}})
    add_dimensions(
        dims, {"device": {"mobile": [1, 1, 0, 5], "unknown": [1, 1, 1, 0]}, "country": {}}
    )
    assert dims == {
        "device": {"mobile": [3, 2, 1, 105], "unknown": [1, 1, 1, 0]},
        "country": {},
    }


# --------------------------------------------------------------------------- dimensions


def test_dimension_rows_order_and_money() -> None:
    dims = {
        "browser": {"Safari": [1, 1, 0, 0], "Chrome": [2, 2, 1, 1_005]},
        "device": {"unknown": [4, 3, 2, 1], "desktop": [1, 1, 1, 0]},
        "country": {"US": [3, 2, 1, 99_999]},
    }
    rows = list(dimension_rows(T0, MINUTE, dims))
    assert [(r["dimension"], r["value"]) for r in rows] == [
        ("device", "desktop"),
        ("device", "unknown"),
        ("country", "US"),
        ("browser", "Chrome"),
        ("browser", "Safari"),
    ]
    chrome = rows[3]
    assert chrome == {
        "window_start": "2026-01-01T00:00:00.000Z",
        "window_end": "2026-01-01T00:01:00.000Z",
        "dimension": "browser",
        "value": "Chrome",
        "events": 2,
        "users": 2,
        "page_views": 1,
        "revenue": 10.05,
        "revenue_cents": 1_005,
    }
    assert rows[2]["revenue"] == 999.99


def _event(user: str, ts: int, n: int, **fields: Any) -> dict[str, Any]:
    event = {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "session_id": "",
        "action": "page_view",
        "page": "/",
        "timestamp": format_ts(ts),
        "duration": 0,
        "device": "mobile",
        "country": "US",
        "browser": "Chrome",
        "is_conversion": False,
        "revenue_cents": 0,
    }
    event.update(fields)
    return event


def test_missing_dimension_values_are_reported_as_unknown() -> None:
    events = [
        _event("u1", T0 + 1_000, 1, device="", country=None, browser=None),
        _event("u1", T0 + 2_000, 2, device=None, country="", browser=""),
        _event("u2", T0 + 3_000, 3, action="purchase", page="", revenue_cents=250),
        _event("u3", T0 + 4_000, 4, device="", action="click"),
        _event("u9", T0 + MINUTE + 20_000, 9),  # moves the watermark past the window
    ]
    rules = PartitionRules(window_ms=MINUTE)
    state = PartitionState(MemoryStore(), rules)
    items = [Arrival(i, T0, e) for i, e in enumerate(events)]
    out = apply_batch(state, items, rules, live=False)
    (partial,) = out.partials
    assert partial["final"] is True
    rows = {
        (r["dimension"], r["value"]): r
        for r in dimension_rows(partial["window_start"], MINUTE, partial["dims"])
    }
    # cells: events, distinct users, page views, revenue
    assert {
        k: (r["events"], r["users"], r["page_views"], r["revenue_cents"]) for k, r in rows.items()
    } == {
        ("device", "unknown"): (3, 2, 2, 0),
        ("device", "mobile"): (1, 1, 0, 250),
        ("country", "unknown"): (2, 1, 2, 0),
        ("country", "US"): (2, 2, 0, 250),
        ("browser", "unknown"): (2, 1, 2, 0),
        ("browser", "Chrome"): (2, 2, 0, 250),
    }
    expected = reference.dimension_stats(events[:4], MINUTE)
    assert {(d, v): r["events"] for (_, d, v), r in expected.items()} == {
        k: r["events"] for k, r in rows.items()
    }
