"""The compact form of an enriched event that the stateful stages keep (SPEC sections 3-5).

State holds many events, so each is a short JSON list rather than the full enriched record.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from analytics.timeutil import parse_ts


class Row(NamedTuple):
    """One enriched event, reduced to what sessions, KPIs, pages and traffic need."""

    ts: int
    event_id: str
    session_id: str
    action: str
    page: str
    duration: int
    device: str
    country: str
    browser: str
    conversion: bool
    revenue_cents: int

    def encode(self) -> list[Any]:
        return list(self)

    @classmethod
    def decode(cls, data: list[Any]) -> Row:
        return cls(*data)


def row_of(enriched: dict[str, Any], ts_ms: int | None = None) -> Row:
    """Reduce an enriched event (SPEC section 2) to a Row; ``ts_ms`` is its time when the
    caller has it already (else it is parsed from the event)."""
    return Row._make(  # positional: the hot path makes one per event
        (
            parse_ts(enriched["timestamp"]) if ts_ms is None else ts_ms,
            enriched["event_id"],
            enriched["session_id"] or "",
            enriched["action"],
            enriched["page"] or "",
            enriched["duration"],
            enriched["device"] or "",
            enriched["country"] or "",
            enriched["browser"] or "",
            bool(enriched["is_conversion"]),
            enriched["revenue_cents"],
        )
    )


def order_key(row: Row) -> tuple[int, str]:
    """SPEC section 3: events in ts order, ties by event_id."""
    return (row.ts, row.event_id)


class Arrival(NamedTuple):
    """One enriched event, where it sits in its partition and when it arrived. ``row`` is
    its compact form when the tracker has built it already (else it is derived from
    ``event``)."""

    offset: int
    arrived_ms: int
    event: dict[str, Any]
    row: Row | None = None
    payload: bytes = b""
    """The enriched event as JSON, as the tracker publishes it."""
    user: str = ""
    """Its user_id, when the tracker has read it already."""

    @property
    def user_id(self) -> str:
        user_id: str = self.user or self.event["user_id"]
        return user_id


class Tick(NamedTuple):
    """A timer message: it carries the wall-clock time (its message timestamp) into a partition."""

    offset: int
    timestamp_ms: int
