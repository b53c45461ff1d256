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
