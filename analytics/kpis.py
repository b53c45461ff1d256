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


RATIOS: dict[str, tuple[str, str, Fraction]] = {
    "average_session_duration_seconds": ("session_duration_ms", "sessions", Fraction(1, 1000)),
    "bounce_rate_percent": ("bounces", "sessions", Fraction(100)),
    "average_engagement_score": ("engagement_x10000", "sessions", Fraction(1, 10_000)),
    "conversion_rate_percent": ("conversions", "sessions", Fraction(100)),
    "conversions_per_session": ("conversions", "sessions", Fraction(1)),
}
"""SPEC 4's ratios of a window's counters, each ``scale * numerator / denominator`` (0 when
the denominator is 0). The one definition: the KPI records (``ratio_figures``), their trends
(``trend_values``, exact) and the history buckets summed in SQL (sinks/queries.py) all use it."""

SESSION_SUMS = {
    "bounces": "total_bounces",
    "session_duration_ms": "total_session_duration_ms",
    "engagement_x10000": "total_engagement_x10000",
}
"""The session counters behind the ratios, published in each KPI record (and stored) under
these names, so sums over many windows (``GET /api/kpis``) derive the ratios from sums."""


def ratio_figures(sums: Counters) -> dict[str, float]:
    """The ``RATIOS`` of summed counters, as floats (one correctly rounded division each)."""
    figures = {}
    for name, (numerator, denominator, scale) in RATIOS.items():
        below = sums.get(denominator, 0)
        above = sums.get(numerator, 0)
        figures[name] = (
            float(above * scale.numerator / (below * scale.denominator)) if below else 0.0
        )
    return figures


def exact_ratio(name: str, sums: Counters) -> Fraction:
    """One of the ``RATIOS`` as an exact fraction."""
    numerator, denominator, scale = RATIOS[name]
    below = sums.get(denominator, 0)
    return scale * Fraction(sums.get(numerator, 0), below) if below else Fraction(0)


def kpi_figures(start: int, window_ms: int, sums: Mapping[str, int]) -> dict[str, Any]:
    """Every KPI of SPEC section 4 (without trends) from the summed counters of a window."""
    purchases = sums.get("purchases", 0)
    active = sums.get("active_users", 0)
    cents = sums.get("revenue_cents", 0)
    return {
        "window_start": format_ts(start),
        "window_end": format_ts(start + window_ms),
        "total_users": sums.get("users_total", 0),
        "active_users": active,
        "new_users": sums.get("new_users", 0),
        "total_sessions": sums.get("sessions", 0),
        "total_page_views": sums.get("page_views", 0),
        "total_events": sums.get("events", 0),
        "total_revenue": currency(cents),
        "total_revenue_cents": cents,
        "total_conversions": sums.get("conversions", 0),
        "purchases": purchases,
        "average_order_value": currency_per(cents, purchases),
        "revenue_per_user": currency_per(cents, active),
        **ratio_figures(sums),
        **{published: sums.get(counter, 0) for counter, published in SESSION_SUMS.items()},
    }


Counters = Mapping[str, int | Fraction]
"""A window's summed counters: integers, or exact fractions where they are interpolated
between two moments (analytics.live_trends)."""


def trend_values(sums: Counters) -> dict[str, Fraction]:
    """The ten trend metrics as exact fractions of the window's counters, so a change of
    exactly ±5 % is classified the same however the ratios would round in floating point."""
    active = sums.get("active_users", 0)
    return {
        "active_users": Fraction(active),
        "total_events": Fraction(sums.get("events", 0)),
        "total_page_views": Fraction(sums.get("page_views", 0)),
        "total_sessions": Fraction(sums.get("sessions", 0)),
        "total_revenue": Fraction(sums.get("revenue_cents", 0)),
        "total_conversions": Fraction(sums.get("conversions", 0)),
        "conversion_rate_percent": exact_ratio("conversion_rate_percent", sums),
        "bounce_rate_percent": exact_ratio("bounce_rate_percent", sums),
        "average_session_duration_seconds": exact_ratio("average_session_duration_seconds", sums),
        "revenue_per_user": Fraction(sums.get("revenue_cents", 0), active)
        if active
        else Fraction(0),
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
