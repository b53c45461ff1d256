"""The enriched event on ``user-behavior-enriched`` (SPEC section 2)."""

from __future__ import annotations

from typing import Any, TypedDict


class EnrichedEvent(TypedDict):
    """A validated input event plus the fields the behaviour tracker adds."""

    event_id: str
    user_id: str
    session_id: str
    action: str
    page: str
    timestamp: str
    timestamp_clamped: bool
    received_at: str
    duration: int
    metadata: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    country: str | None
    device: str
    is_conversion: bool
    revenue: float
    revenue_cents: int
    is_high_value: bool
    hour_of_day: int
    day_of_week: str
    browser: str
    os: str
