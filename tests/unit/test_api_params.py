"""Web API parameters (web/api_params.py) and the answers built from state (web/api_queries.py)."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.rows import Row
from analytics.timeutil import parse_ts
from analytics.user_state import SessionKey, UserState
from web.api_params import (
    BadParameter,
    KpiRange,
    TopPagesQuery,
    TrafficQuery,
    no_parameters,
    parse_user_id,
    query_values,
)
from web.api_queries import (
    kpi_windows,
    open_sessions,
    range_header,
    recent_starts,
    stream_watermark,
    top_pages,
    traffic_values,
    user_profile,
    user_sessions,
)

T0 = parse_ts("2026-01-01T00:00:00Z")
MINUTE = 60_000


def _error(call: Any, *args: Any) -> str:
    with pytest.raises(BadParameter) as caught:
        call(*args)
    return str(caught.value)


# --------------------------------------------------------------------------- parameters


def test_top_pages_defaults_and_bounds() -> None:
    assert TopPagesQuery.parse([]) == TopPagesQuery(minutes=60, limit=10)
    assert TopPagesQuery.parse([("minutes", "1"), ("limit", "100")]) == TopPagesQuery(1, 100)
    assert TopPagesQuery.parse([("minutes", "1440"), ("limit", "1")]) == TopPagesQuery(1440, 1)
    assert TopPagesQuery.parse([("minutes", ""), ("limit", "")]) == TopPagesQuery(60, 10)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([("minutes", "0")], "minutes: must be a whole number from 1 to 1440, got '0'"),
        ([("minutes", "1441")], "minutes: must be a whole number from 1 to 1440, got '1441'"),
        ([("minutes", "-5")], "minutes: must be a whole number from 1 to 1440, got '-5'"),
        ([("minutes", "1.5")], "minutes: must be a whole number from 1 to 1440, got '1.5'"),
        ([("minutes", "ten")], "minutes: must be a whole number from 1 to 1440, got 'ten'"),
        ([("minutes", "٣")], "minutes: must be a whole number from 1 to 1440, got '٣'"),
        ([("minutes", "9" * 30)], "minutes: must be a whole number from 1 to 1440, got '"),
        ([("limit", "0")], "limit: must be a whole number from 1 to 100, got '0'"),
        ([("limit", "101")], "limit: must be a whole number from 1 to 100, got '101'"),
        ([("limit", "5"), ("limit", "6")], "limit: given more than once"),
        ([("minute", "5")], "minute: unknown parameter (this endpoint takes: minutes, limit)"),
    ],
)
def test_top_pages_rejects(query: list[tuple[str, str]], message: str) -> None:
    assert _error(TopPagesQuery.parse, query).startswith(message)


def test_traffic_dimension_is_required_and_checked() -> None:
    assert TrafficQuery.parse([("dimension", "country")]) == TrafficQuery("country", 60)
    assert TrafficQuery.parse([("dimension", "browser"), ("minutes", "5")]) == TrafficQuery(
        "browser", 5
    )
    assert _error(TrafficQuery.parse, []) == (
        "dimension: required, one of device, country, browser"
    )
    assert _error(TrafficQuery.parse, [("dimension", "")]) == (
        "dimension: required, one of device, country, browser"
    )
    assert _error(TrafficQuery.parse, [("dimension", "os")]) == (
        "dimension: must be one of device, country, browser, got 'os'"
    )
    assert _error(TrafficQuery.parse, [("dimension", "Device")]).startswith("dimension: ")
    assert _error(TrafficQuery.parse, [("dimension", "device"), ("limit", "3")]).startswith(
        "limit: unknown parameter"
    )


def test_kpi_range() -> None:
    assert KpiRange.parse([]) == KpiRange(None, None)
    assert KpiRange.parse([("from", ""), ("to", "")]) == KpiRange(None, None)
    assert KpiRange.parse(
        [("from", "2026-01-01T00:00:00Z"), ("to", "2026-01-01T02:00:00+01:00")]
    ) == KpiRange(T0, T0 + 60 * MINUTE)
    assert KpiRange.parse([("from", "2026-01-01 00:00:00")]) == KpiRange(T0, None)
    assert KpiRange.parse([("to", "2026-01-01T00:00:00.5Z")]) == KpiRange(None, T0 + 500)
    assert _error(KpiRange.parse, [("from", "yesterday")]) == (
        "from: must be an RFC 3339 timestamp like 2026-01-01T00:00:00Z, got 'yesterday'"
    )
    assert _error(KpiRange.parse, [("to", "1767225600000")]).startswith("to: must be an RFC")
    assert _error(KpiRange.parse, [("from", "2026-02-30T00:00:00Z")]).startswith("from: ")
    same = [("from", "2026-01-01T00:00:00Z"), ("to", "2026-01-01T01:00:00+01:00")]
    assert _error(KpiRange.parse, same) == "to: must be later than from"


def test_kpi_range_contains_is_half_open() -> None:
    selected = KpiRange(T0, T0 + 2 * MINUTE)
    assert [selected.contains(T0 + n * MINUTE) for n in (-1, 0, 1, 2)] == [
        False,
        True,
        True,
        False,
    ]
    assert KpiRange(None, None).contains(-(10**15))


def test_user_id_and_parameterless_endpoints() -> None:
    assert parse_user_id("u") == "u"
    assert parse_user_id("ü" * 128) == "ü" * 128
    assert _error(parse_user_id, "x" * 129) == "user_id: must be 1 to 128 characters, got 129"
    assert _error(parse_user_id, "") == "user_id: must be 1 to 128 characters, got 0"
    no_parameters([])
    assert _error(no_parameters, [("x", "1")]) == (
        "x: unknown parameter (this endpoint takes: none)"
    )


def test_query_values_keeps_only_non_empty_values() -> None:
    assert query_values([("a", "1"), ("b", "")], ("a", "b", "c")) == {"a": "1"}


# --------------------------------------------------------------------------- answers


def _row(ts: int, event_id: str, session_id: str, action: str, **extra: Any) -> list[Any]:
    fields: dict[str, Any] = {
        "page": "",
        "duration": 0,
        "device": "",
        "country": "",
        "browser": "",
        "conversion": False,
        "revenue_cents": 0,
        **extra,
    }
    return Row(ts=ts, event_id=event_id, session_id=session_id, action=action, **fields).encode()


def _user() -> UserState:
    user = UserState()
    user.first_seen = T0 + 1000
    user.last_seen = T0 + 3 * 3_600_000
    user.events = 4
    user.revenue_cents = 2550
    user.devices = ["mobile"]
    user.countries = ["DE"]
    user.closed_sessions = 2
    rows = {
        "s1": [
            _row(T0 + 1000, "e1", "s1", "page_view", page="/home", duration=1000),
            _row(T0 + 10_000, "e3", "s1", "purchase", conversion=True, revenue_cents=2550),
            _row(T0 + 5000, "e2", "s1", "page_view", page="/p", duration=3000, device="mobile"),
        ],
        # two sessions of the same key: more than the 30 min gap between them
        "": [
            _row(T0 + 2000, "e4", "", "click", country="DE"),
            _row(T0 + 3 * 3_600_000, "e5", "", "click"),
        ],
    }
    for session_id, encoded in rows.items():
        key = user.keys[session_id] = SessionKey()
        for row in encoded:
            key.add(Row.decode(row), 1_800_000)
    # the first event of s1 already folded into a summary: the API shows both parts as one
    user.keys["s1"].fold(T0 + 2000, 1_800_000)
    return user


def test_user_profile() -> None:
    assert user_profile("u1", _user(), 1_800_000) == {
        "user_id": "u1",
        "first_seen": "2026-01-01T00:00:01.000Z",
        "last_seen": "2026-01-01T03:00:00.000Z",
        "events": 4,
        "revenue": 25.5,
        "revenue_cents": 2550,
        "devices": ["mobile"],
        "countries": ["DE"],
        "closed_sessions": 2,
        "open_sessions": 3,
    }


def test_open_sessions_follow_spec_section_3() -> None:
    sessions = open_sessions("u1", _user(), 1_800_000)
    assert [(s["session_id"], s["window_start"]) for s in sessions] == [
        ("s1", "2026-01-01T00:00:01.000Z"),
        ("", "2026-01-01T00:00:02.000Z"),
        ("", "2026-01-01T03:00:00.000Z"),
    ]
    assert sessions[0] == {
        "user_id": "u1",
        "session_id": "s1",
        "window_start": "2026-01-01T00:00:01.000Z",
        "window_end": "2026-01-01T00:00:10.000Z",
        "duration_seconds": 9.0,
        "total_events": 3,
        "actions": {"page_view": 2, "purchase": 1},
        "pages": {"/home": 1, "/p": 1},
        "unique_pages": 2,
        "total_duration_ms": 4000,
        "average_duration_ms": 4000 / 3,
        "device_type": "mobile",
        "country": None,
        "is_bounce": False,
        "conversions": 1,
        "revenue": 25.5,
        "revenue_cents": 2550,
        "engagement_score": 6 + 8 + 0.4 + 10,
        "open": True,
    }
    assert sessions[1]["is_bounce"] and sessions[1]["country"] == "DE"
    whole = user_sessions("u1", _user(), 1_800_000)
    assert whole["sessions"] == sessions
    assert whole["recent"] == []
    assert whole["profile"]["open_sessions"] == 3


def test_recent_sessions_are_shown_closed_newest_first() -> None:
    user = _user()
    user.recent = [
        {
            "session_id": "old",
            "start_ms": T0 - 600_000,
            "end_ms": T0 - 540_000,
            "total_events": 2,
            "unique_pages": 1,
            "total_duration_ms": 3_000,
            "is_bounce": False,
            "conversions": 1,
            "revenue_cents": 1999,
            "engagement_score": 21.3,
            "device_type": "desktop",
            "country": None,
        }
    ]
    assert user_sessions("u1", user, 1_800_000)["recent"] == [
        {
            "user_id": "u1",
            "session_id": "old",
            "window_start": "2025-12-31T23:50:00.000Z",
            "window_end": "2025-12-31T23:51:00.000Z",
            "duration_seconds": 60.0,
            "total_events": 2,
            "unique_pages": 1,
            "total_duration_ms": 3_000,
            "device_type": "desktop",
            "country": None,
            "is_bounce": False,
            "conversions": 1,
            "revenue": 19.99,
            "revenue_cents": 1999,
            "engagement_score": 21.3,
            "open": False,
        }
    ]


def test_stream_watermark_ignores_partitions_without_events() -> None:
    assert stream_watermark(None) is None
    assert stream_watermark({"progress": {}}) is None
    progress = {"0": {"wm": 50, "late": 0}, "1": {"wm": None, "late": 0}, "2": {"wm": 40}}
    assert stream_watermark({"progress": progress}) == 40


def test_recent_starts_overlap_the_minutes_before_as_of() -> None:
    starts = [T0, T0 + MINUTE, T0 + 5 * MINUTE]
    as_of = T0 + 6 * MINUTE + 30_000
    assert recent_starts(starts, as_of, 1, MINUTE) == [T0 + 5 * MINUTE]
    # the window ending exactly at as_of - minutes does not overlap
    assert recent_starts(starts, T0 + 7 * MINUTE, 5, MINUTE) == [T0 + 5 * MINUTE]
    assert recent_starts(starts, T0 + 7 * MINUTE, 6, MINUTE) == [T0 + MINUTE, T0 + 5 * MINUTE]
    assert range_header(as_of, 2, [T0]) == {
        "as_of": "2026-01-01T00:06:30.000Z",
        "from": "2026-01-01T00:04:30.000Z",
        "minutes": 2,
        "windows": ["2026-01-01T00:00:00.000Z"],
    }
    assert range_header(None, 2, [])["from"] is None


def test_top_pages_add_windows_and_rank() -> None:
    windows = [
        {"/home": [2, 2, 3000], "/b": [1, 1, 10], "/a": [1, 1, 20]},
        {"/home": [1, 1, 500], "/c": [4, 1, 0]},
    ]
    assert top_pages(windows, 10) == [
        {
            "page": "/c",
            "views": 4,
            "visitor_windows": 1,
            "total_time_on_page_ms": 0,
            "avg_time_on_page_ms": 0.0,
        },
        {
            "page": "/home",
            "views": 3,
            "visitor_windows": 3,
            "total_time_on_page_ms": 3500,
            "avg_time_on_page_ms": 3500 / 3,
        },
        {
            "page": "/a",
            "views": 1,
            "visitor_windows": 1,
            "total_time_on_page_ms": 20,
            "avg_time_on_page_ms": 20.0,
        },
        {
            "page": "/b",
            "views": 1,
            "visitor_windows": 1,
            "total_time_on_page_ms": 10,
            "avg_time_on_page_ms": 10.0,
        },
    ]
    assert [p["page"] for p in top_pages(windows, 2)] == ["/c", "/home"]
    assert top_pages([], 5) == []


def test_traffic_values_add_windows_and_rank() -> None:
    windows = [
        {"device": {"mobile": [3, 1, 2, 2550], "unknown": [1, 1, 0, 0]}, "country": {}},
        {"device": {"unknown": [2, 2, 0, 1], "desktop": [3, 1, 1, 0]}},
    ]
    assert traffic_values(windows, "device") == [
        {
            "value": "desktop",
            "events": 3,
            "user_windows": 1,
            "page_views": 1,
            "revenue": 0.0,
            "revenue_cents": 0,
        },
        {
            "value": "mobile",
            "events": 3,
            "user_windows": 1,
            "page_views": 2,
            "revenue": 25.5,
            "revenue_cents": 2550,
        },
        {
            "value": "unknown",
            "events": 3,
            "user_windows": 3,
            "page_views": 0,
            "revenue": 0.01,
            "revenue_cents": 1,
        },
    ]
    assert traffic_values(windows, "browser") == []


def test_kpi_windows_add_the_live_window_in_range() -> None:
    finals = [(T0, {"w": 0, "is_final": True}), (T0 + MINUTE, {"w": 1, "is_final": True})]
    live = {"w": 2, "is_final": False}
    everything = KpiRange(None, None)
    assert kpi_windows(finals, live, T0 + 2 * MINUTE, everything) == [
        {"w": 0, "is_final": True},
        {"w": 1, "is_final": True},
        {"w": 2, "is_final": False},
    ]
    assert kpi_windows(finals, live, T0 + 2 * MINUTE, KpiRange(T0, T0 + 2 * MINUTE)) == [
        {"w": 0, "is_final": True},
        {"w": 1, "is_final": True},
    ]
    # the live key holding a final record adds nothing
    final_live = {"w": 1, "is_final": True}
    assert len(kpi_windows(finals, final_live, T0 + MINUTE, everything)) == 2
    assert kpi_windows([], None, None, everything) == []
