"""SPEC section 4 figures from summed partition partials, and the trend rule."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from analytics.money import currency, currency_per
from analytics.timeutil import format_ts

TREND_METRICS = (
    "active_users",
    "total_events",
    "total_page_views",
    "total_sessions",
    "total_revenue",
    "total_conversions",
    "conversion_rate_percent",
    "bounce_rate_percent",
    "average_session_duration_seconds",
    "revenue_per_user",
)
TREND_THRESHOLD_PERCENT = 5


def ratio(numerator: float, denominator: float) -> float:
    """Division where a zero denominator gives 0 (SPEC section 4)."""
    return numerator / denominator if denominator else 0.0


def kpi_figures(start: int, window_ms: int, sums: Mapping[str, int]) -> dict[str, Any]:
    """Every KPI of SPEC section 4 (without trends) from the summed counters of a window."""
    sessions = sums.get("sessions", 0)
    purchases = sums.get("purchases", 0)
    active = sums.get("active_users", 0)
    cents = sums.get("revenue_cents", 0)
    conversions = sums.get("conversions", 0)
    return {
        "window_start": format_ts(start),
        "window_end": format_ts(start + window_ms),
        "total_users": sums.get("users_total", 0),
        "active_users": active,
        "new_users": sums.get("new_users", 0),
        "total_sessions": sessions,
        "total_page_views": sums.get("page_views", 0),
        "total_events": sums.get("events", 0),
        "total_revenue": currency(cents),
        "total_revenue_cents": cents,
        "total_conversions": conversions,
        "purchases": purchases,
        "average_order_value": currency_per(cents, purchases),
        "revenue_per_user": currency_per(cents, active),
        "average_session_duration_seconds": ratio(
            sums.get("session_duration_ms", 0), 1000 * sessions
        ),
        "bounce_rate_percent": 100 * ratio(sums.get("bounces", 0), sessions),
        "average_engagement_score": ratio(sums.get("engagement_x10000", 0), 10_000 * sessions),
        "conversion_rate_percent": 100 * ratio(conversions, sessions),
        "conversions_per_session": ratio(conversions, sessions),
    }


Counters = Mapping[str, int | Fraction]
"""A window's summed counters: integers, or exact fractions where they are interpolated
between two moments (analytics.live_trends)."""


def _exact(numerator: int | Fraction, denominator: int | Fraction) -> Fraction:
    return Fraction(numerator, denominator) if denominator else Fraction(0)


def trend_values(sums: Counters) -> dict[str, Fraction]:
    """The ten trend metrics as exact fractions of the window's counters, so a change of
    exactly ±5 % is classified the same however the ratios would round in floating point."""
    sessions = sums.get("sessions", 0)
    return {
        "active_users": Fraction(sums.get("active_users", 0)),
        "total_events": Fraction(sums.get("events", 0)),
        "total_page_views": Fraction(sums.get("page_views", 0)),
        "total_sessions": Fraction(sessions),
        "total_revenue": Fraction(sums.get("revenue_cents", 0)),
        "total_conversions": Fraction(sums.get("conversions", 0)),
        "conversion_rate_percent": 100 * _exact(sums.get("conversions", 0), sessions),
        "bounce_rate_percent": 100 * _exact(sums.get("bounces", 0), sessions),
        "average_session_duration_seconds": _exact(
            sums.get("session_duration_ms", 0), 1000 * sessions
        ),
        "revenue_per_user": _exact(sums.get("revenue_cents", 0), sums.get("active_users", 0)),
    }


def trend(current: Fraction, previous: Fraction) -> dict[str, Any]:
    """change_percent against the previous window; up above +5, down below -5, else stable."""
    change = 100 * (current - previous) / previous if previous else Fraction(0)
    if change > TREND_THRESHOLD_PERCENT:
        direction = "up"
    elif change < -TREND_THRESHOLD_PERCENT:
        direction = "down"
    else:
        direction = "stable"
    return {"change_percent": float(change), "trend": direction}


def trends(current: Counters, previous: Counters | None) -> dict[str, Any]:
    """Trends of the ten SPEC metrics from two windows' counters; a previous window with no
    events counts as all zero."""
    now, before = trend_values(current), trend_values(previous or {})
    return {metric: trend(now[metric], before[metric]) for metric in TREND_METRICS}
