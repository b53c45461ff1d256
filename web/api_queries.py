"""The web API's answers, built from stored state by plain functions (web/api.py reads the
tables and calls these; tests call them directly).

Ranges of minutes are measured back from the stream's watermark (the combiner's view of event
time, which follows the wall clock when the stream is quiet, SPEC section 6), so replayed or
back-dated traffic is queried like live traffic.

Distinct counts (page visitors, dimension users) are exact per window only; over several
windows the API adds up the windows' distinct counts and says so in the field name
(``visitor_windows``, ``user_windows``): a visitor seen in three windows counts three times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from analytics.money import currency
from analytics.partition import UserState
from analytics.timeutil import format_ts
from analytics.traffic import add_dimensions, add_pages, avg_time_on_page_ms, page_rank
from web.api_params import KpiRange

MINUTE_MS = 60_000


def _ts(ms: int | None) -> str | None:
    return format_ts(ms) if ms is not None else None


def user_profile(user_id: str, user: UserState, gap_ms: int) -> dict[str, Any]:
    """``GET /api/users/{user_id}``: the profile counters of analytics.partition.UserState."""
    return {
        "user_id": user_id,
        "first_seen": _ts(user.first_seen),
        "last_seen": _ts(user.last_seen),
        "events": user.events,
        "revenue": currency(user.revenue_cents),
        "revenue_cents": user.revenue_cents,
        "devices": list(user.devices),
        "countries": list(user.countries),
        "closed_sessions": user.closed_sessions,
        "open_sessions": len(open_sessions(user_id, user, gap_ms)),
    }


def open_sessions(user_id: str, user: UserState, gap_ms: int) -> list[dict[str, Any]]:
    """The user's sessions not yet written out (SPEC section 3 figures), oldest first."""
    sessions = [session_view(figures) for figures in user.open_sessions(user_id, gap_ms)]
    return sorted(sessions, key=lambda s: (s["window_start"], s["session_id"]))


def session_view(figures: Mapping[str, Any]) -> dict[str, Any]:
    """A session as the API shows it: like a ``session-metrics`` record, plus ``open``."""
    view = dict(figures)
    view["window_start"] = format_ts(view.pop("window_start_ms"))
    view["window_end"] = format_ts(view.pop("window_end_ms"))
    view["revenue"] = currency(view["revenue_cents"])
    view["open"] = True
    return view


def recent_sessions(user_id: str, user: UserState) -> list[dict[str, Any]]:
    """The user's last closed sessions (analytics.partition.RECENT_SESSIONS), newest first."""
    return [
        {
            "user_id": user_id,
            "session_id": summary["session_id"],
            "window_start": format_ts(summary["start_ms"]),
            "window_end": format_ts(summary["end_ms"]),
            "duration_seconds": (summary["end_ms"] - summary["start_ms"]) / 1000,
            "total_events": summary["total_events"],
            "unique_pages": summary["unique_pages"],
            "total_duration_ms": summary["total_duration_ms"],
            "device_type": summary["device_type"],
            "country": summary["country"],
            "is_bounce": summary["is_bounce"],
            "conversions": summary["conversions"],
            "revenue": currency(summary["revenue_cents"]),
            "revenue_cents": summary["revenue_cents"],
            "engagement_score": summary["engagement_score"],
            "open": False,
        }
        for summary in user.recent
    ]


def user_sessions(user_id: str, user: UserState, gap_ms: int) -> dict[str, Any]:
    """``GET /api/sessions/{user_id}``: open sessions, the last closed ones, the profile."""
    return {
        "user_id": user_id,
        "sessions": open_sessions(user_id, user, gap_ms),
        "recent": recent_sessions(user_id, user),
        "profile": user_profile(user_id, user, gap_ms),
    }


def stream_watermark(combiner: Mapping[str, Any] | None) -> int | None:
    """The global watermark of the combiner state: the least partition watermark (partitions
    that have seen no event report none and hold nothing back)."""
    if not combiner:
        return None
    marks = [p["wm"] for p in combiner.get("progress", {}).values() if p["wm"] is not None]
    return min(marks) if marks else None


def kpi_windows(
    finals: Iterable[tuple[int, dict[str, Any]]],
    live: dict[str, Any] | None,
    live_start: int | None,
    selected: KpiRange,
) -> list[dict[str, Any]]:
    """``GET /api/kpis``: final records with start in the range, plus the live (not yet final)
    window when it falls in the range, in window order."""
    chosen = {start: record for start, record in finals if selected.contains(start)}
    if (
        live is not None
        and live_start is not None
        and not live["is_final"]
        and live_start not in chosen
        and selected.contains(live_start)
    ):
        chosen[live_start] = live
    return [chosen[start] for start in sorted(chosen)]


def recent_starts(starts: Iterable[int], as_of_ms: int, minutes: int, window_ms: int) -> list[int]:
    """Windows that overlap the ``minutes`` minutes before ``as_of_ms``."""
    since = as_of_ms - minutes * MINUTE_MS
    return sorted(start for start in starts if start + window_ms > since)


def top_pages(windows: Iterable[Mapping[str, list[int]]], limit: int) -> list[dict[str, Any]]:
    """Pages over several windows: views descending, then page ascending (SPEC section 5)."""
    totals: dict[str, list[int]] = {}
    for pages in windows:
        add_pages(totals, pages)
    ranked = sorted(totals.items(), key=lambda item: page_rank(item[0], item[1][0]))
    return [
        {
            "page": page,
            "views": views,
            "visitor_windows": visitors,
            "total_time_on_page_ms": time_ms,
            "avg_time_on_page_ms": avg_time_on_page_ms(time_ms, views),
        }
        for page, (views, visitors, time_ms) in ranked[:limit]
    ]


def traffic_values(
    windows: Iterable[Mapping[str, Mapping[str, list[int]]]], dimension: str
) -> list[dict[str, Any]]:
    """One dimension's values over several windows: events descending, then value."""
    summed: dict[str, dict[str, list[int]]] = {dimension: {}}
    for dims in windows:
        add_dimensions(summed, {dimension: dims.get(dimension, {})})
    totals = summed[dimension]
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        {
            "value": value,
            "events": events,
            "user_windows": users,
            "page_views": page_views,
            "revenue": currency(cents),
            "revenue_cents": cents,
        }
        for value, (events, users, page_views, cents) in ranked
    ]


def range_header(as_of_ms: int | None, minutes: int, starts: list[int]) -> dict[str, Any]:
    """The common head of the minutes-based answers."""
    return {
        "as_of": _ts(as_of_ms),
        "from": _ts(as_of_ms - minutes * MINUTE_MS) if as_of_ms is not None else None,
        "minutes": minutes,
        "windows": [format_ts(start) for start in starts],
    }
