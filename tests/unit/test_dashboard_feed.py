"""The dashboard feed's rules without Kafka (web/live_feed.py): which record is current, what
the last hour keeps, how frames are written and fanned out."""

from __future__ import annotations

from typing import Any

import orjson

from analytics.timeutil import format_ts, parse_ts
from web.live_feed import (
    KEEPALIVE,
    DashboardState,
    LiveFeed,
    Subscription,
    sse,
)

MINUTE = 60_000
T0 = parse_ts("2026-01-01T10:00:00Z")


def kpi(minute: int, events: int, final: bool) -> dict[str, Any]:
    return {
        "window_start": format_ts(T0 + minute * MINUTE),
        "window_end": format_ts(T0 + (minute + 1) * MINUTE),
        "total_events": events,
        "is_final": final,
    }


def state() -> DashboardState:
    return DashboardState(60 * MINUTE)


def test_the_newest_window_is_current_and_final_beats_live() -> None:
    s = state()
    assert s.apply(kpi(0, 5, False))
    assert s.apply(kpi(1, 1, False))
    assert s.apply(kpi(0, 7, True))  # an older window's final does not become current
    assert s.current == kpi(1, 1, False)
    assert s.apply(kpi(1, 3, True))
    assert not s.apply(kpi(1, 9, False))  # a re-delivered live record after the final
    assert s.current == kpi(1, 3, True)
    assert s.newest_final() == T0 + MINUTE


def test_records_from_the_api_never_replace_streamed_ones() -> None:
    s = state()
    s.apply(kpi(0, 8, False))
    assert not s.apply(kpi(0, 5, False), if_absent=True)
    assert s.apply(kpi(-1, 4, True), if_absent=True)
    assert [r["total_events"] for r in s.snapshot()["windows"]] == [4, 8]


def test_only_the_last_hour_is_kept() -> None:
    s = state()
    s.apply(kpi(0, 1, True))
    s.apply(kpi(1, 1, True))
    s.apply(kpi(60, 1, False))  # window 0 starts an hour before: dropped, window 1 stays
    assert sorted(s.windows) == [T0 + MINUTE, T0 + 60 * MINUTE]
    assert not s.apply(kpi(0, 2, True))


def test_sse_frames_are_one_data_line() -> None:
    frame = sse("kpi", {"text": "a\nb"})
    assert frame == b'event: kpi\ndata: {"text":"a\\nb"}\n\n'


async def test_a_slow_subscriber_is_dropped_and_ends() -> None:
    sub = Subscription(limit=2)
    sub.push(b"1")
    sub.push(b"2")
    sub.push(b"3")  # over the limit: closed, its stream ends after what it has
    assert sub.closed
    assert [await sub.next(1), await sub.next(1), await sub.next(1)] == [b"1", b"2", None]


async def test_a_quiet_stream_gets_keepalives() -> None:
    assert await Subscription().next(0.01) == KEEPALIVE


async def test_every_subscriber_gets_the_snapshot_then_each_changed_window_once() -> None:
    feed = LiveFeed(
        "live-kpis", {"bootstrap_servers": "127.0.0.1:9"}, lambda: "http://127.0.0.1:9", "test"
    )
    with feed.subscribe() as first, feed.subscribe() as second:
        assert feed.subscribers == 2
        feed.take(
            [
                orjson.dumps(kpi(0, 1, False)),
                orjson.dumps(kpi(0, 2, False)),
                b"not json",
                orjson.dumps(kpi(1, 1, False)),
            ]
        )
        for sub in (first, second):
            snapshot = await sub.next(1)
            assert snapshot is not None and snapshot.startswith(b"event: snapshot\n")
            assert [await sub.next(1), await sub.next(1)] == [
                sse("kpi", kpi(0, 2, False)),
                sse("kpi", kpi(1, 1, False)),
            ]
        feed.close_subscribers()
        assert await first.next(1) is None
    assert feed.subscribers == 0
