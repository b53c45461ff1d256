"""Trends of live KPI windows (analytics.live_trends, driven by analytics.combiner).

A live record compares the window so far with the previous window at the same elapsed point of
event time, marked ``trends_provisional``; final records keep SPEC 4's trends against the whole
previous window, unchanged. The combiner is fed partials and progress reports by hand, as the
partitions publish them on ``kpi-partials``: no Kafka.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import jsonschema
import orjson
import pytest

from analytics.combiner import CombinerRules, CombinerState, combine, new_state
from analytics.kpis import TREND_METRICS, trends
from analytics.live_trends import (
    CHECKPOINTS_PER_WINDOW,
    TREND_COUNTERS,
    checkpoint,
    counters_at,
    elapsed_ms,
    event_time_now,
    provisional_trends,
    with_checkpoint,
)
from analytics.timeutil import parse_ts
from web.openapi import OPENAPI

W = 60_000
GRACE = 10_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z, a window start
RULES = CombinerRules(partitions=1, window_ms=W, grace_ms=GRACE)
STABLE = {"change_percent": 0.0, "trend": "stable"}
PROVISIONAL_FIELDS = {"trends_provisional", "trends_elapsed_seconds"}


def so_far(elapsed: int, rate: int = 1) -> dict[str, int]:
    """A window's counters ``elapsed`` ms into it under steady traffic: events, page views,
    revenue and conversions grow with time; users and sessions show up early (most are already
    active when the window begins), and the longer a window runs the fewer sessions are
    bounces. Like real traffic, the window so far is not a scaled-down whole window."""
    seconds = elapsed // 1000
    users = rate * (20 + seconds // 3) if elapsed else 0
    return {
        "events": rate * 2 * seconds,
        "page_views": rate * seconds,
        "revenue_cents": rate * 500 * seconds,
        "conversions": rate * (seconds // 10),
        "active_users": users,
        "users_total": 1_000 + users,
        "sessions": users,
        "bounces": users // (2 + seconds // 20),
        "session_duration_ms": users * 1_000 * (30 + seconds),
    }


def partial(start: int, kpi: dict[str, int], *, final: bool) -> dict[str, Any]:
    return {
        "type": "partial",
        "partition": 0,
        "window_start": start,
        "kpi": kpi,
        "pages": {},
        "dims": {},
        "final": final,
    }


def progress(event_time: int) -> dict[str, Any]:
    """Partition 0 has seen events up to ``event_time``: its watermark is that minus grace."""
    return {"type": "progress", "partition": 0, "wm": event_time - GRACE, "late": 0, "arrived": 0}


class Feed:
    """One partition publishing its open windows at moments of event time, as the tracker
    does; the combiner's state goes through JSON between batches, like the agent's table."""

    def __init__(self, rates: dict[int, int]) -> None:
        self.rates = rates  # window start -> traffic rate (so_far); windows not listed: empty
        self.state: CombinerState = new_state()
        self.final: set[int] = set()

    def at(
        self, event_time: int, *, live: bool = True, **kpis: dict[str, int]
    ) -> list[dict[str, Any]]:
        """Every window started by ``event_time`` and not yet final publishes its counters so
        far (``kpis["w<minute>"]`` instead, where given), final once the watermark is past its
        end, then the progress report; returns what the combiner publishes."""
        wm = event_time - GRACE
        messages = []
        for start, rate in self.rates.items():
            if start > event_time or start in self.final:
                continue
            kpi = kpis.get(f"w{(start - T0) // W}", so_far(min(event_time - start, W), rate))
            if start + W <= wm:
                self.final.add(start)
            messages.append(partial(start, kpi, final=start in self.final))
        out = combine(self.state, [*messages, progress(event_time)], RULES, live=live)
        self.state = orjson.loads(orjson.dumps(self.state))
        return out.kpis

    def run(self, since: int, until: int, step: int = 5_000, *, live: bool = True) -> list[Any]:
        """Publish every ``step`` ms of event time from ``since`` through ``until``."""
        records = []
        for event_time in range(since, until + 1, step):
            records += self.at(event_time, live=live)
        return records


def only(records: list[dict[str, Any]], start: int, *, final: bool) -> dict[str, Any]:
    (record,) = [
        r for r in records if parse_ts(r["window_start"]) == start and r["is_final"] is final
    ]
    return record


# --------------------------------------------------------------------------- pure functions


def test_event_time_now_is_the_latest_watermark_plus_grace() -> None:
    assert event_time_now([T0 - GRACE, None, T0 + 5_000 - GRACE], GRACE) == T0 + 5_000
    assert event_time_now([None, None], GRACE) is None
    assert event_time_now([], GRACE) is None


@pytest.mark.parametrize(
    ("now", "elapsed"),
    [(T0, 0), (T0 + 1, 1), (T0 + 15_000, 15_000), (T0 + W, W), (T0 + 5 * W, W), (T0 - 3, 0)],
)
def test_elapsed_is_clamped_to_the_window(now: int, elapsed: int) -> None:
    assert elapsed_ms(T0, W, now) == elapsed


def test_elapsed_without_any_watermark_is_zero() -> None:
    assert elapsed_ms(T0, W, None) == 0


def test_checkpoints_keep_one_per_slot_and_stay_ordered() -> None:
    points: list[list[int]] = []
    for elapsed in [*range(0, W, 7), W]:  # a record every 7 ms: 8,573 of them
        points = with_checkpoint(points, checkpoint(elapsed, {"events": elapsed}), W)
    assert len(points) == CHECKPOINTS_PER_WINDOW + 1
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert points[-1] == checkpoint(W, {"events": W})
    # the latest point of a slot replaces the earlier one
    points = with_checkpoint(points, checkpoint(1_500, {"events": 7}), W)
    assert [p for p in points if 1_000 <= p[0] < 2_000] == [checkpoint(1_500, {"events": 7})]


def test_counters_between_checkpoints_are_interpolated() -> None:
    points = [checkpoint(10_000, {"events": 100}), checkpoint(20_000, {"events": 300})]
    assert counters_at(points, 0)["events"] == 0  # the window's start: nothing yet
    assert counters_at(points, 5_000)["events"] == 50  # between the start and the first
    assert counters_at(points, 10_000)["events"] == 100
    assert counters_at(points, 12_500)["events"] == 150
    assert counters_at(points, 20_000)["events"] == 300
    assert counters_at(points, 45_000)["events"] == 300  # nothing later known: the last
    assert counters_at(points, 1)["events"] == Fraction(1, 100)  # exact, not rounded
    assert set(counters_at(points, 7)) == set(TREND_COUNTERS)
    assert set(counters_at([], 30_000).values()) == {0}


def test_a_point_at_the_window_start_is_used_as_it_is() -> None:
    points = [checkpoint(0, {"events": 4}), checkpoint(10_000, {"events": 14})]
    assert counters_at(points, 0)["events"] == 4
    assert counters_at(points, 5_000)["events"] == 9


def test_ratios_are_compared_unscaled_when_only_the_final_counters_are_known() -> None:
    """Only the end anchor known: counts and sums are scaled to the elapsed fraction, the
    ratios computed from them are the previous window's, not scaled."""
    final = {"events": 400, "sessions": 100, "bounces": 40, "conversions": 12}
    final |= {"active_users": 80, "revenue_cents": 8_000, "session_duration_ms": 6_000_000}
    quarter = {name: value // 4 for name, value in final.items()}
    result = provisional_trends(quarter, W // 4, [checkpoint(W, final)])
    assert result["trends"] == {metric: STABLE for metric in TREND_METRICS}
    # half the bounces of the previous window's rate: the rate falls, the counts do not
    fewer = {**quarter, "bounces": 5}
    result = provisional_trends(fewer, W // 4, [checkpoint(W, final)])
    assert result["trends"]["bounce_rate_percent"] == {"change_percent": -50.0, "trend": "down"}
    assert result["trends"]["total_events"] == STABLE


def test_provisional_trends_say_so() -> None:
    result = provisional_trends(so_far(15_000), 15_000, [checkpoint(W, so_far(W))])
    assert result["trends_provisional"] is True
    assert result["trends_elapsed_seconds"] == 15.0
    assert set(result["trends"]) == set(TREND_METRICS)


# --------------------------------------------------------------------------- the combiner


def test_live_window_is_compared_with_the_previous_one_at_the_same_point() -> None:
    feed = Feed({T0: 1, T0 + W: 1})
    feed.run(T0, T0 + W + GRACE)
    for elapsed in (15_000, 20_000, 42_500, W):
        live = only(feed.at(T0 + W + elapsed), T0 + W, final=False)
        assert live["trends_provisional"] is True
        assert live["trends_elapsed_seconds"] == elapsed / 1000
        if elapsed % 5_000 == 0:  # a checkpoint of the previous window at exactly this point
            assert live["trends"] == {metric: STABLE for metric in TREND_METRICS}, elapsed
        assert live["trends"]["total_events"]["trend"] == "stable"
        if elapsed < W:  # against the whole previous window it would fall: what this fixes
            assert trends(so_far(elapsed), so_far(W))["total_events"]["trend"] == "down"


def test_more_traffic_than_at_the_same_point_before_shows_up() -> None:
    feed = Feed({T0: 1, T0 + W: 2})
    feed.run(T0, T0 + W + 20_000)
    live = only(feed.at(T0 + W + 20_000), T0 + W, final=False)
    assert live["trends"]["total_events"] == {"change_percent": 100.0, "trend": "up"}
    assert live["trends"]["active_users"] == {"change_percent": 100.0, "trend": "up"}
    assert live["trends"]["conversion_rate_percent"] == STABLE  # a rate: not doubled


def test_first_seconds_of_a_window() -> None:
    """While the previous window is still open (within its grace), its checkpoints end in its
    latest counters; just after the start the comparison is with its first moments."""
    feed = Feed({T0: 1, T0 + W: 1})
    feed.run(T0, T0 + W - 5_000)
    # 0 ms in: the previous window at 0 ms counted nothing, so every trend is stable
    records = feed.at(T0 + W, w1=so_far(0) | {"events": 1, "active_users": 1})
    assert not any(r["is_final"] for r in records)
    live = only(records, T0 + W, final=False)
    assert (live["trends_elapsed_seconds"], live["trends_provisional"]) == (0.0, True)
    assert live["trends"] == {metric: STABLE for metric in TREND_METRICS}
    # 2.5 s in, the previous window still open: halfway between its points at 0 and 5 s
    records = feed.at(T0 + W + 2_500, w1=so_far(2_000) | {"events": 5})
    assert not any(r["is_final"] for r in records)
    live = only(records, T0 + W, final=False)
    assert live["trends_elapsed_seconds"] == 2.5
    assert live["trends"]["total_events"] == STABLE  # 5 against 10 * 2.5 / 5
    assert live["trends"]["active_users"]["trend"] == "up"  # 20 against 21 * 2.5 / 5


def test_previous_window_without_events_gives_stable_trends() -> None:
    feed = Feed({T0: 1, T0 + 2 * W: 1})  # nothing in T0 + W
    feed.run(T0, T0 + 2 * W + 25_000)
    live = only(feed.at(T0 + 2 * W + 30_000), T0 + 2 * W, final=False)
    assert live["trends_provisional"] is True
    assert live["trends"] == {metric: STABLE for metric in TREND_METRICS}


def test_without_checkpoints_the_previous_final_window_is_scaled() -> None:
    """A previous window never seen live (replayed into final in one go) has only its final
    counters: they are scaled to the elapsed fraction."""
    feed = Feed({T0: 1, T0 + W: 1})
    feed.at(T0 + W + GRACE, w0=so_far(W), w1=so_far(5_000), live=False)
    assert feed.state["checkpoints"] == {}
    live = only(feed.at(T0 + W + 15_000), T0 + W, final=False)
    scaled = {name: Fraction(value, 4) for name, value in so_far(W).items()}
    assert live["trends"] == trends(so_far(15_000), scaled)
    assert live["trends"]["total_events"] == STABLE


def test_final_records_are_untouched() -> None:
    """The same partials, with and without live records: the final records are identical,
    carry no provisional marks, and their trends are SPEC 4's against the whole previous
    window."""
    finals = []
    for live in (True, False):
        feed = Feed({T0: 1, T0 + W: 2, T0 + 3 * W: 1})
        records = feed.run(T0, T0 + 4 * W + GRACE, step=2_500, live=live)
        assert any(not r["is_final"] for r in records) is live
        published = {parse_ts(r["window_start"]): r for r in records if r["is_final"]}
        assert list(published) == [T0, T0 + W, T0 + 3 * W]
        for record in published.values():
            assert not PROVISIONAL_FIELDS & set(record)
        assert published[T0]["trends"] == {metric: STABLE for metric in TREND_METRICS}
        assert published[T0 + W]["trends"] == trends(so_far(W, rate=2), so_far(W))
        assert published[T0 + W]["trends"]["total_events"]["trend"] == "up"
        assert published[T0 + 3 * W]["trends"] == {metric: STABLE for metric in TREND_METRICS}
        finals.append(published)
    assert finals[0] == finals[1]


def test_checkpoints_are_kept_for_the_open_windows_and_the_last_final_only() -> None:
    feed = Feed({T0 + minute * W: 1 for minute in range(4)})
    for minute in range(4):
        start = T0 + minute * W
        feed.run(start, start + W - 250, step=250)
        kept = feed.state["checkpoints"]
        assert set(kept) <= {str(start - W), str(start)}
        assert str(start) in kept
        assert all(len(points) <= CHECKPOINTS_PER_WINDOW + 1 for points in kept.values())


# --------------------------------------------------------------------------- the API description


def test_the_openapi_document_describes_live_and_final_records() -> None:
    """/api/kpis/current and /api/kpis answer these records as published: every field is
    described in the OpenAPI document, and both kinds validate against it."""
    feed = Feed({T0: 1, T0 + W: 1})
    records = feed.run(T0, T0 + W + GRACE + 20_000)
    final = only(records, T0, final=True)
    live = only(feed.at(T0 + W + 25_000), T0 + W, final=False)
    schema = OPENAPI["components"]["schemas"]["KpiRecord"]
    validator = jsonschema.Draft202012Validator(
        {**OPENAPI, "$ref": "#/components/schemas/KpiRecord"}
    )
    for record in (live, final):
        assert set(record) <= set(schema["properties"])
        validator.validate(orjson.loads(orjson.dumps(record)))
    assert set(live) >= PROVISIONAL_FIELDS
    assert not PROVISIONAL_FIELDS & set(schema["required"])
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**live, "trends_provisional": False})
