"""SPEC section 3: sessions of one session key, their figures and the engagement score."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from analytics.rows import Row, order_key


def split_sessions(rows: Iterable[Row], gap_ms: int) -> list[list[Row]]:
    """Split one key's events into sessions: a gap of more than ``gap_ms`` starts a new one."""
    sessions: list[list[Row]] = []
    last_ts: int | None = None
    for row in sorted(rows, key=order_key):
        if last_ts is None or row.ts - last_ts > gap_ms:
            sessions.append([])
        sessions[-1].append(row)
        last_ts = row.ts
    return sessions


def engagement_score(
    total_events: int, unique_pages: int, total_duration_ms: int, distinct_actions: int
) -> float:
    """Events (≤30) + page diversity (≤20) + time spent (≤30) + action diversity (≤20)."""
    score = (
        min(30.0, 2.0 * total_events)
        + min(20.0, 4.0 * unique_pages)
        + min(30.0, total_duration_ms / 10_000)
        + min(20.0, 5.0 * distinct_actions)
    )
    return min(100.0, score)


def _first_non_empty(values: Iterable[str]) -> str | None:
    return next((value for value in values if value), None)


def session_figures(user_id: str, rows: Sequence[Row]) -> dict[str, Any]:
    """Every per-session figure of SPEC section 3, for rows of one session in ts order."""
    actions = Counter(row.action for row in rows)
    pages = Counter(row.page for row in rows if row.page)
    total_duration = sum(row.duration for row in rows)
    start, end = rows[0].ts, rows[-1].ts
    return {
        "user_id": user_id,
        "session_id": rows[0].session_id,
        "window_start_ms": start,
        "window_end_ms": end,
        "duration_seconds": (end - start) / 1000,
        "total_events": len(rows),
        "actions": dict(actions),
        "pages": dict(pages),
        "unique_pages": len(pages),
        "total_duration_ms": total_duration,
        "average_duration_ms": total_duration / len(rows),
        "device_type": _first_non_empty(row.device for row in rows),
        "country": _first_non_empty(row.country for row in rows),
        "is_bounce": len(rows) == 1,
        "conversions": sum(1 for row in rows if row.conversion),
        "revenue_cents": sum(row.revenue_cents for row in rows),
        "engagement_score": engagement_score(len(rows), len(pages), total_duration, len(actions)),
    }


class SessionSummary:
    """One session folded into running figures: everything SPEC section 3 publishes, in space
    that does not grow with the session's length (its distinct pages and actions aside).

    Events are folded in (ts, event_id) order, so the first non-empty device and country
    seen are the SPEC's "first non-empty value in ts order". ``window_start``/``window_end``
    of the SPEC are ``start``/``end`` here (first and last ts, epoch ms)."""

    __slots__ = (
        "actions",
        "conversions",
        "country",
        "device",
        "duration_ms",
        "end",
        "events",
        "pages",
        "revenue_cents",
        "session_id",
        "start",
    )

    def __init__(self, first: Row) -> None:
        self.session_id = first.session_id
        self.start = first.ts
        self.end = first.ts
        self.events = 0
        self.actions: dict[str, int] = {}
        self.pages: dict[str, int] = {}
        self.duration_ms = 0
        self.conversions = 0
        self.revenue_cents = 0
        self.device = ""
        self.country = ""
        self.add(first)

    def add(self, row: Row) -> None:
        """Fold the next event of the session (its ts is at or after ``end``)."""
        self.end = row.ts
        self.events += 1
        actions = self.actions
        actions[row.action] = actions.get(row.action, 0) + 1
        if row.page:
            pages = self.pages
            pages[row.page] = pages.get(row.page, 0) + 1
        self.duration_ms += row.duration
        self.conversions += row.conversion
        self.revenue_cents += row.revenue_cents
        if not self.device and row.device:
            self.device = row.device
        if not self.country and row.country:
            self.country = row.country

    def engagement(self) -> float:
        return engagement_score(self.events, len(self.pages), self.duration_ms, len(self.actions))

    def figures(self, user_id: str) -> dict[str, Any]:
        """The session's SPEC section 3 figures, in the shape of ``session_figures``."""
        return {
            "user_id": user_id,
            "session_id": self.session_id,
            "window_start_ms": self.start,
            "window_end_ms": self.end,
            "duration_seconds": (self.end - self.start) / 1000,
            "total_events": self.events,
            "actions": dict(self.actions),
            "pages": dict(self.pages),
            "unique_pages": len(self.pages),
            "total_duration_ms": self.duration_ms,
            "average_duration_ms": self.duration_ms / self.events,
            "device_type": self.device or None,
            "country": self.country or None,
            "is_bounce": self.events == 1,
            "conversions": self.conversions,
            "revenue_cents": self.revenue_cents,
            "engagement_score": self.engagement(),
        }

    def encode(self) -> list[Any]:
        return [
            self.session_id,
            self.start,
            self.end,
            self.events,
            self.actions,
            self.pages,
            self.duration_ms,
            self.conversions,
            self.revenue_cents,
            self.device,
            self.country,
        ]

    @classmethod
    def decode(cls, data: list[Any]) -> SessionSummary:
        summary = cls.__new__(cls)
        (
            summary.session_id,
            summary.start,
            summary.end,
            summary.events,
            summary.actions,
            summary.pages,
            summary.duration_ms,
            summary.conversions,
            summary.revenue_cents,
            summary.device,
            summary.country,
        ) = data
        return summary


class SessionPreview:
    """A session's figures with some later events added, without changing its summary: what a
    KPI window sees "as of its end" while those events are still inside the grace."""

    __slots__ = ("base", "duration_ms", "end", "events", "new_actions", "new_pages", "start")

    def __init__(self, base: SessionSummary | None, first: Row | None = None) -> None:
        self.base = base
        self.new_pages: set[str] = set()
        self.new_actions: set[str] = set()
        if base is not None:
            self.start, self.end = base.start, base.end
            self.events, self.duration_ms = base.events, base.duration_ms
        else:
            assert first is not None
            self.start = self.end = first.ts
            self.events = self.duration_ms = 0
        if first is not None:
            self.add(first)

    def add(self, row: Row) -> None:
        self.end = row.ts
        self.events += 1
        self.duration_ms += row.duration
        base = self.base
        if row.page and (base is None or row.page not in base.pages):
            self.new_pages.add(row.page)
        if base is None or row.action not in base.actions:
            self.new_actions.add(row.action)

    def engagement(self) -> float:
        base = self.base
        pages = len(self.new_pages) + (len(base.pages) if base is not None else 0)
        actions = len(self.new_actions) + (len(base.actions) if base is not None else 0)
        return engagement_score(self.events, pages, self.duration_ms, actions)
