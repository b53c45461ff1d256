"""SPEC section 6 end to end without Kafka: partition state machines plus the combiner.

Part A drives analytics.partition.apply_batch and analytics.combiner.combine by hand through
small scenarios with exact expected figures: when a window becomes final, live partials,
lateness, the idle advance of the watermark by ticks, and when sessions close.

Part B is property-style: seeded generated traffic, 4 partitions by crc32(user_id) % 4, random
batch sizes, disorder within the grace, partitions consumed at different speeds, and the
combiner fed at random moments. All final KPI windows, closed sessions, page statistics and
dimension statistics must equal the batch reference (tests/reference/batch.py). Then the same
with simulated crashes: persistence is modelled like the agent's changelog (after each batch,
the writes ``PartitionState.take_writes`` hands out, in their order; a crash keeps only a
prefix of that write sequence, so a restored state may hold users newer than its clock), the
partition is re-delivered from the restored clock's offset, and its outputs are published
again. Between crashes a partition keeps its state in memory, as the agent does, and now and
then reads it back from its table instead, so both paths are exercised.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

import orjson
import pytest

from analytics import partition_codec as codec
from analytics.cohorts import CohortsSpec
from analytics.combiner import CombinerRules, CombinerState, combine, new_state
from analytics.custom_kpis import parse_custom_kpis
from analytics.enrichment import enrich
from analytics.experiments import ExperimentsSpec
from analytics.funnels import parse_funnels
from analytics.journeys import JourneyRules
from analytics.partition import (
    RECENT_SESSIONS,
    Clock,
    PartitionOutput,
    PartitionRules,
    PartitionState,
    UserState,
    Write,
    apply_batch,
    running_figures_hold,
)
from analytics.rows import Arrival, Tick, row_of
from analytics.sessions import session_figures, split_sessions
from analytics.timeutil import format_ts, parse_ts
from analytics.validation import validate_event
from app.settings import parse_duration
from generator.traffic import TrafficProfile, generate_labelled
from tables.memory_store import MemoryStore
from tests import contract
from tests.reference import batch as reference

W = 60_000  # kpi window
GAP = 1_800_000  # session gap
GRACE = 10_000
IDLE = 5_000
RULES = PartitionRules(window_ms=W, gap_ms=GAP, grace_ms=GRACE, idle_ms=IDLE)
CLOSE_AFTER = GAP + W
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z, a window start


def event(
    user: str,
    ts: int,
    *,
    action: str = "page_view",
    page: str = "/home",
    session: str = "s1",
    duration: int = 1_000,
    device: str = "mobile",
    country: str = "US",
    browser: str = "Chrome",
    revenue_cents: int = 0,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An enriched event (the fields analytics.rows.row_of and the reference read)."""
    return {
        "event_id": event_id or f"{user}@{ts - T0}",
        "user_id": user,
        "session_id": session,
        "action": action,
        "page": page,
        "timestamp": format_ts(ts),
        "duration": duration,
        "device": device,
        "country": country,
        "browser": browser,
        "is_conversion": action in ("purchase", "signup"),
        "revenue_cents": revenue_cents,
    }


def _json(value: Any) -> Any:
    """What a value looks like after a trip through Kafka or a table (JSON)."""
    return orjson.loads(orjson.dumps(value))


# =========================================================================== Part A


def clock_of(store: MemoryStore) -> Clock:
    stored = store.get(codec.CLOCK_KEY)
    assert stored is not None
    return codec.decode_clock(stored)


def closing_of(store: MemoryStore) -> dict[str, int]:
    """The close index: user -> when it is due (the latest entry of each user)."""
    return {user: at for _, at, user in codec.scan_due(store, 2**62)}


def windows_of(store: MemoryStore) -> list[int]:
    """Starts of the windows stored as open (values or members)."""
    starts = {start for start, _ in codec.scan_windows(store)}
    return sorted(starts | {start for start, _ in codec.scan_members(store)})


@dataclass
class Part:
    """One partition with durable state between batches (its table, like the agent's)."""

    index: int
    rules: PartitionRules = RULES
    store: MemoryStore = field(default_factory=MemoryStore)
    offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    last_writes: list[Write] = field(default_factory=list)

    def arrival(self, ev: dict[str, Any], arrived_ms: int | None = None) -> Arrival:
        self.offset += 1
        self.events.append(ev)
        return Arrival(
            self.offset, parse_ts(ev["timestamp"]) if arrived_ms is None else arrived_ms, ev
        )

    def tick(self, now_ms: int) -> Tick:
        self.offset += 1
        return Tick(self.offset, now_ms)

    def run(
        self, items: Sequence[Arrival | Tick], *, live: bool = False
    ) -> tuple[PartitionOutput, list[dict[str, Any]]]:
        """One batch on state read back from the table (the codec is part of every run)."""
        state = PartitionState(self.store, self.rules)
        out = apply_batch(state, items, self.rules, live=live)
        self.last_writes = state.take_writes()
        self.store.apply(self.last_writes)
        return out, messages(self.index, out, state.clock, items)

    def send(
        self, *events: dict[str, Any], live: bool = False
    ) -> tuple[PartitionOutput, list[dict[str, Any]]]:
        return self.run([self.arrival(ev) for ev in events], live=live)

    @property
    def clock(self) -> Clock:
        return clock_of(self.store)

    def user(self, user_id: str) -> UserState | None:
        loaded = codec.load_user(self.store, user_id)
        return loaded[0] if loaded is not None else None

    def closing(self) -> dict[str, int]:
        return closing_of(self.store)


def appended_at(item: Arrival | Tick) -> int:
    """When a message was appended to its partition (its Kafka message timestamp)."""
    return item.arrived_ms if isinstance(item, Arrival) else item.timestamp_ms


def messages(
    index: int, out: PartitionOutput, clock: Clock, items: Sequence[Arrival | Tick]
) -> list[dict[str, Any]]:
    """What the agent publishes to kpi-partials after a batch: partials, then progress
    (watermark, late count, and the latest append time among the batch's messages)."""
    msgs = [{"type": "partial", "partition": index, **partial} for partial in out.partials]
    msgs += [{"partition": index, **share} for share in out.journeys]
    progress = {"type": "progress", "partition": index, "wm": clock.wm, "late": clock.late}
    progress["arrived"] = max(appended_at(item) for item in items)
    msgs.append(progress)
    return _json(msgs)  # type: ignore[no-any-return]


def finals(kpis: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {parse_ts(k["window_start"]): k for k in kpis if k["is_final"]}


def test_window_is_final_only_when_every_partition_passes_its_end() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)

    _, m = p0.send(event("a", T0 + 1_000), event("a", T0 + 20_000, page="/products"))
    assert m == [
        {"type": "progress", "partition": 0, "wm": T0 + 10_000, "late": 0, "arrived": T0 + 20_000}
    ]
    assert combine(cs, m, rules).kpis == []
    _, m = p1.send(event("b", T0 + 5_000, device="desktop"))
    assert not finals(combine(cs, m, rules).kpis)

    # p0's watermark reaches W0's end exactly (ts - grace == end): final there
    out, m = p0.send(event("a", T0 + W + GRACE))
    assert p0.clock.wm == T0 + W
    assert [(p["window_start"], p["final"], p["kpi"]["events"]) for p in out.partials] == [
        (T0, True, 2)
    ]
    result = combine(cs, m, rules)
    assert not finals(result.kpis), "p1 has not passed W0's end"
    assert result.pages == [] and result.traffic == []

    # one millisecond short on p1: still not final anywhere
    out, m = p1.send(event("b", T0 + W + GRACE - 1))
    assert out.partials == []
    assert not finals(combine(cs, m, rules).kpis)

    out, m = p1.send(event("b", T0 + W + GRACE))
    assert [(p["window_start"], p["final"]) for p in out.partials] == [(T0, True)]
    result = combine(cs, m, rules)
    published = finals(result.kpis)
    assert list(published) == [T0]
    w0 = published[T0]
    assert (w0["total_events"], w0["total_page_views"], w0["active_users"]) == (3, 3, 2)
    assert (w0["new_users"], w0["total_users"], w0["total_sessions"]) == (2, 2, 2)
    assert w0["late_events_total"] == 0
    assert {(p["page"], p["views"]) for p in result.pages} == {("/home", 2), ("/products", 1)}
    devices = {r["value"]: r["events"] for r in result.traffic if r["dimension"] == "device"}
    assert devices == {"mobile": 2, "desktop": 1}

    expected = reference.kpi_windows(p0.events + p1.events, W, GAP)
    assert contract.compare_kpis({T0: w0}, {T0: expected[T0]}) == []
    # W1 is open on both partitions: nothing more is final, and W0 is never published again
    _, m = p0.send(event("a", T0 + W + 30_000))
    assert not finals(combine(cs, m, rules).kpis)


def test_partition_without_events_does_not_block_but_an_unreported_one_does() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    _, m = p0.send(event("a", T0 + 1_000), event("a", T0 + W + GRACE + 5_000))
    assert not finals(combine(cs, m, rules).kpis), "p1 never reported: it must hold W0 back"

    out, m = p1.run([p1.tick(T0 + 3 * W)])  # a tick only: no event, no watermark
    assert out.partials == [] and p1.clock.wm is None
    assert m == [{"type": "progress", "partition": 1, "wm": None, "late": 0, "arrived": T0 + 3 * W}]
    published = finals(combine(cs, m, rules).kpis)
    assert list(published) == [T0]
    assert published[T0]["total_events"] == 1
    assert published[T0]["total_users"] == 1


def test_total_users_carry_over_for_a_partition_without_events_in_the_window() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    kpis: list[dict[str, Any]] = []
    for p, events in (
        (p0, [event("a", T0 + 1_000), event("a", T0 + W + 1_000)]),
        (p1, [event("b", T0 + 2_000), event("c", T0 + 2 * W + 1)]),
        (p0, [event("a", T0 + 2 * W + GRACE)]),
        (p1, [event("b", T0 + 2 * W + GRACE)]),
    ):
        kpis += combine(cs, p.send(*events)[1], rules).kpis
    published = finals(kpis)
    assert sorted(published) == [T0, T0 + W]
    w1 = published[T0 + W]
    # only p0's "a" is active in W1; p1's "b" (first seen in W0) still counts in total_users
    assert (w1["active_users"], w1["new_users"], w1["total_users"]) == (1, 0, 2)
    expected = reference.kpi_windows(p0.events + p1.events, W, GAP)
    assert contract.compare_kpis(published, {s: expected[s] for s in published}) == []


def test_live_partials_are_not_final_and_the_final_one_replaces_them() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)

    out, m0 = p0.send(event("a", T0 + 1_000), live=True)
    assert [(p["window_start"], p["final"], p["kpi"]["events"]) for p in out.partials] == [
        (T0, False, 1)
    ]
    (live,) = combine(cs, m0, rules, live=True).kpis
    assert (live["is_final"], live["total_events"]) == (False, 1)
    stale_live = m0[0]

    out, m = p1.send(event("b", T0 + 2_000), live=True)
    (live,) = combine(cs, m, rules, live=True).kpis
    assert (live["is_final"], live["total_events"]) == (False, 2)

    out, m = p0.send(event("a", T0 + 30_000), event("a", T0 + W + GRACE), live=True)
    assert [(p["window_start"], p["final"], p["kpi"]["events"]) for p in out.partials] == [
        (T0, True, 2),
        (T0 + W, False, 1),
    ]
    result = combine(cs, m, rules, live=True)
    assert not finals(result.kpis)
    assert {parse_ts(k["window_start"]): k["total_events"] for k in result.kpis} == {
        T0: 3,  # p0's final partial replaced its live one: 2 + 1, not 1 + 2 + 1
        T0 + W: 1,
    }

    _, m = p1.send(event("b", T0 + W + GRACE))
    published = finals(combine(cs, m, rules, live=True).kpis)
    assert list(published) == [T0]
    assert published[T0]["total_events"] == 3
    assert published[T0]["is_final"] is True

    # a stale live partial re-delivered after the window went final changes nothing
    result = combine(cs, [stale_live], rules, live=True)
    assert result.kpis == [] and result.ignored_partials == 1


def test_live_records_carry_the_sessions_seen_so_far() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    _, m0 = p0.send(
        event("a", T0 + 1_000, duration=20_000),
        event("a", T0 + 4_000, action="purchase", page="", revenue_cents=5_000),
        live=True,
    )
    combine(cs, m0, rules, live=True)
    _, m1 = p1.send(event("b", T0 + 2_000), live=True)
    (live,) = combine(cs, m1, rules, live=True).kpis
    assert live["is_final"] is False
    # a: one session of 2 events over 3 s with a purchase; b: a bounce
    assert live["total_sessions"] == 2
    assert live["bounce_rate_percent"] == 50.0
    assert live["average_session_duration_seconds"] == 1.5
    assert live["conversion_rate_percent"] == 50.0
    a_score = 4 + 4 + 2.1 + 10  # 2 events, 1 page, 21 s on pages, 2 actions
    assert live["average_engagement_score"] == pytest.approx((a_score + 2 + 4 + 0.1 + 5) / 2)
    assert live["trends"]["total_sessions"] == {"change_percent": 0.0, "trend": "stable"}


def test_replayed_live_partial_does_not_replace_a_final_one() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    combine(cs, p1.send(event("b", T0 + 5_000))[1], rules)
    first = p0.arrival(event("a", T0 + 1_000))
    second = p0.arrival(event("a", T0 + 30_000))
    closer = p0.arrival(event("a", T0 + W + GRACE))
    combine(cs, p0.run([first, second, closer], live=True)[1], rules)  # W0 final on p0

    # p0 crashes before its state write survives; Kafka re-delivers from offset 1 and the
    # first re-delivered batch happens to be shorter and live
    p0.store = MemoryStore()
    combine(cs, p0.run([first], live=True)[1], rules)
    result = combine(cs, p1.send(event("b", T0 + W + GRACE))[1], rules)  # p1 passes W0
    published = finals(result.kpis)
    # W0 holds a@1 s, a@30 s and b@5 s; the replay's live partial (a@1 s only) must not count
    assert published[T0]["total_events"] == 3


def test_lagging_partition_without_events_yet_loses_nothing() -> None:
    """A partition that has only seen ticks (watermark None) releases a window only once it
    has consumed everything appended to it up to when the others passed the window's end:
    otherwise a slow consumer would lose its first events into already published windows."""
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    # production order: p1 gets a tick, then b@30 s, while p0 gets a@1 s and a@75 s; the
    # input is in time order (no disorder), only p1's consumer is slower than p0's
    tick = p1.tick(T0 + 1_000)
    late_consumed = p1.arrival(event("b", T0 + 30_000))
    kpis = combine(cs, p1.run([tick])[1], rules).kpis
    _, m = p0.send(event("a", T0 + 1_000), event("a", T0 + W + 15_000))
    kpis += combine(cs, m, rules).kpis
    assert not finals(kpis), "p1 has not consumed up to where p0 passed W0's end"
    kpis += combine(cs, p1.run([late_consumed])[1], rules).kpis
    assert not finals(kpis), "p1 has an event now: its own watermark holds W0 back"
    kpis += combine(cs, p1.send(event("b", T0 + W + 15_000))[1], rules).kpis
    published = finals(kpis)
    expected = reference.kpi_windows(p0.events + p1.events, W, GAP)
    assert published[T0]["total_events"] == expected[T0]["total_events"] == 2
    assert published[T0]["late_events_total"] == 0


def test_lagging_partition_that_stays_empty_releases_the_window_once_caught_up() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    assert not finals(combine(cs, p1.run([p1.tick(T0 + 1_000)])[1], rules).kpis)
    _, m = p0.send(event("a", T0 + 1_000), event("a", T0 + W + 15_000))
    assert not finals(combine(cs, m, rules).kpis)
    _, m = p1.run([p1.tick(T0 + W + 15_000 - 1)])  # appended before p0 passed W0's end
    assert not finals(combine(cs, m, rules).kpis)
    _, m = p1.run([p1.tick(T0 + W + 15_000)])
    published = finals(combine(cs, m, rules).kpis)
    assert list(published) == [T0]
    assert published[T0]["total_events"] == 1


def test_late_event_is_counted_and_left_out() -> None:
    rules = CombinerRules(partitions=1, window_ms=W)
    cs = new_state()
    p0 = Part(0)
    out, m = p0.send(event("a", T0 + 1_000), event("a", T0 + W + GRACE))
    assert [p["window_start"] for p in out.partials] == [T0]
    assert list(finals(combine(cs, m, rules).kpis)) == [T0]

    # W0 is closed (end <= watermark): late, counted, no state, no partial
    out, m = p0.send(event("late-user", T0 + W - 1))
    assert out.late_events == 1 and out.partials == [] and out.sessions == []
    assert p0.clock.late == 1
    assert p0.user("late-user") is None
    # older than the watermark but its window W1 is still open: on time
    out, m2 = p0.send(event("a", T0 + W, event_id="on-time"))
    assert out.late_events == 0
    assert p0.clock.late == 1

    out, m3 = p0.send(event("a", T0 + 2 * W + GRACE))
    assert [(p["window_start"], p["kpi"]["events"]) for p in out.partials] == [(T0 + W, 2)]
    published = finals(combine(cs, m + m2 + m3, rules).kpis)
    w1 = published[T0 + W]
    assert (w1["total_events"], w1["active_users"], w1["total_users"]) == (2, 1, 1)
    assert w1["late_events_total"] == 1
    # a late event never re-opens a final window
    out, m = p0.send(event("a", T0 + 30_000))
    assert out.late_events == 1 and out.partials == []
    assert combine(cs, m, rules).kpis == []


def test_tick_after_idle_advances_the_watermark_of_a_quiet_partition() -> None:
    rules = CombinerRules(partitions=2, window_ms=W)
    cs = new_state()
    p0, p1 = Part(0), Part(1)
    last_ts, arrived = T0 + 5_000, T0 + 5_050
    _, m = p0.run([p0.arrival(event("quiet", last_ts), arrived_ms=arrived)])
    combine(cs, m, rules)
    assert p0.clock.wm == last_ts - GRACE
    _, m = p1.send(event("busy", T0 + 2 * W + GRACE))  # p1 is far ahead
    assert not finals(combine(cs, m, rules).kpis)

    def wall_for(wm: int) -> int:
        """The tick time at which p0's idle watermark reaches ``wm``."""
        return arrived + wm - (last_ts - GRACE)

    p0.run([p0.tick(arrived + IDLE - 1)])  # not idle long enough: no change
    assert p0.clock.wm == last_ts - GRACE
    p0.run([p0.tick(arrived + IDLE)])
    assert p0.clock.wm == last_ts - GRACE + IDLE

    out, m = p0.run([p0.tick(wall_for(T0 + W) - 1)])
    assert out.partials == [] and not finals(combine(cs, m, rules).kpis)
    out, m = p0.run([p0.tick(wall_for(T0 + W))])
    assert p0.clock.wm == T0 + W
    assert [(p["window_start"], p["final"]) for p in out.partials] == [(T0, True)]
    published = finals(combine(cs, m, rules).kpis)
    assert list(published) == [T0]
    assert published[T0]["total_events"] == 1  # p1's event is in W2

    # an older tick does not move the watermark back
    p0.run([p0.tick(arrived + IDLE)])
    assert p0.clock.wm == T0 + W

    # the quiet user's session closes once a batch *starts* with wm >= last + gap + window
    deadline = last_ts + CLOSE_AFTER
    out, _ = p0.run([p0.tick(wall_for(deadline - 1))])
    assert out.sessions == []
    out, _ = p0.run([p0.tick(wall_for(deadline))])  # wm reaches the deadline in this batch
    assert out.sessions == [], "closing is judged on the watermark at the start of a batch"
    out, _ = p0.run([p0.tick(wall_for(deadline))])
    (closed,) = out.sessions
    assert (closed["user_id"], closed["window_start_ms"], closed["total_events"]) == (
        "quiet",
        last_ts,
        1,
    )
    assert closed["is_bounce"] is True
    quiet = p0.user("quiet")
    assert quiet is not None and quiet.keys == {}
    assert p0.closing() == {}
    out, _ = p0.run([p0.tick(wall_for(deadline + W))])
    assert out.sessions == [], "a session is written once"


def test_ticks_before_any_event_change_nothing() -> None:
    p0 = Part(0)
    out, m = p0.run([p0.tick(T0), p0.tick(T0 + 10 * IDLE)])
    assert out.partials == [] and out.sessions == []
    assert p0.clock.wm is None and p0.clock.max_ts is None
    assert m[-1]["wm"] is None


def test_session_closes_when_the_watermark_passes_last_event_plus_gap_plus_window() -> None:
    p0 = Part(0)
    user_events = [
        event("u", T0 + 1_000, session="s1"),
        event("u", T0 + 2_000, session="", action="signup", page=""),
        event("u", T0 + 1_000 + GAP, session="s1", page="/products"),  # exactly one gap later
    ]
    p0.send(*user_events)
    assert p0.clock.late == 0
    last = T0 + 1_000 + GAP
    deadline = last + CLOSE_AFTER
    assert p0.closing() == {"u": T0 + 2_000 + CLOSE_AFTER}  # the earliest of u's sessions

    out, _ = p0.send(event("other", deadline - 1 + GRACE))  # wm = deadline - 1
    out, _ = p0.send(event("other", deadline - 1 + GRACE))
    # only the session-id-less "signup" session (last event at T0 + 2 s) is due
    assert [(s["session_id"], s["total_events"]) for s in out.sessions] == [("", 1)]
    out, _ = p0.send(event("other", deadline + GRACE))  # wm = deadline, judged next batch
    assert out.sessions == []
    out, _ = p0.run([p0.tick(0)])  # a tick that does nothing but start a new batch
    (closed,) = out.sessions
    assert closed["session_id"] == "s1" and closed["total_events"] == 2
    rows = [row_of(e) for e in (user_events[0], user_events[2])]
    assert closed == session_figures("u", split_sessions(rows, GAP)[0])
    assert "u" not in p0.closing()
    # "other" keeps its open session: its last event is far from due
    assert "other" in p0.closing()
    other = p0.user("other")
    assert other is not None and other.keys


def test_an_event_joining_a_session_postpones_its_closing() -> None:
    p0 = Part(0)
    p0.send(event("u", T0))
    p0.send(event("other", T0 + CLOSE_AFTER - 60_000 + GRACE))  # wm: deadline - 1 minute
    # ts exactly gap after the first event: joins it, moving the deadline a gap further
    out, _ = p0.send(event("u", T0 + GAP))
    assert out.late_events == 0 and out.sessions == []
    p0.send(event("other", T0 + CLOSE_AFTER + GRACE))
    out, _ = p0.run([p0.tick(0)])
    assert out.sessions == []
    p0.send(event("other", T0 + GAP + CLOSE_AFTER + GRACE))
    out, _ = p0.run([p0.tick(0)])
    assert [(s["user_id"], s["total_events"]) for s in out.sessions] == [("u", 2)]


def test_closed_sessions_are_kept_as_recent_summaries_newest_first() -> None:
    p0 = Part(0)
    sessions = RECENT_SESSIONS + 2
    for n in range(sessions):  # one session per gap-and-a-bit, each closed by the next ones
        start = T0 + n * (CLOSE_AFTER + GRACE + W)
        p0.send(event("u", start, session=f"s{n}"), event("u", start + 5_000, session=f"s{n}"))
        p0.run([p0.tick(0)])
    user = p0.user("u")
    assert user is not None
    closed = user.closed_sessions
    assert closed == sessions - 1  # the last one is still open
    recent = user.recent
    assert [s["session_id"] for s in recent] == [
        f"s{n}" for n in range(closed - 1, closed - 1 - RECENT_SESSIONS, -1)
    ]
    newest = T0 + (closed - 1) * (CLOSE_AFTER + GRACE + W)
    assert recent[0] == {
        "session_id": f"s{closed - 1}",
        "start_ms": newest,
        "end_ms": newest + 5_000,
        "total_events": 2,
        "unique_pages": 1,
        "total_duration_ms": 2_000,
        "is_bounce": False,
        "conversions": 0,
        "revenue_cents": 0,
        "engagement_score": 4 + 4 + 0.2 + 5,
        "device_type": "mobile",
        "country": "US",
    }


def test_replaying_a_batch_changes_nothing() -> None:
    p0 = Part(0)
    items = [
        p0.arrival(event("a", T0 + 1_000)),
        p0.arrival(event("b", T0 + 2_000)),
        p0.arrival(event("a", T0 + W + GRACE + 1)),
    ]
    first, m1 = p0.run(items)
    snapshot = dict(p0.store.data)
    again, m2 = p0.run(items)
    assert first.partials and again.partials == [] and again.sessions == []
    assert p0.store.data == snapshot
    assert m2[-1] == m1[-1]  # the same progress report


def test_replay_from_any_prefix_of_a_batchs_writes_repeats_the_same_outputs() -> None:
    """A crash can cut a batch's writes anywhere: users newer than the clock, windows half
    written, the clock written but not the deletion of the windows it finalised. Replaying
    the batch from every such prefix gives the same partials and sessions (none once the
    clock survived: the batch was complete, its outputs published before any write), and
    ends in the same state."""
    p0 = Part(0)
    p0.send(event("a", T0 + 1_000), event("b", T0 + 2_000, session="x"))
    p0.send(event("b", T0 + W + 5_000, session="x"))  # b's session spans two windows
    before = dict(p0.store.data)
    batch = [
        p0.arrival(event("a", T0 + 3_000, action="purchase", revenue_cents=1_250)),
        p0.arrival(event("c", T0 + 4_000)),
        p0.arrival(event("b", T0 + 2 * W + GRACE + 1, session="x")),
    ]
    original, _ = p0.run(batch)
    writes = p0.last_writes
    after = dict(p0.store.data)
    assert [p["window_start"] for p in original.partials] == [T0, T0 + W]
    assert original.partials[0]["kpi"]["events"] == 4
    assert original.partials[0]["kpi"]["revenue_cents"] == 1_250
    assert len(writes) > 5
    clock_at = [key for key, _ in writes].index(codec.CLOCK_KEY)
    assert clock_at < len(writes) - 1, "windows are deleted after the clock"
    for cut in range(len(writes) + 1):
        p0.store = MemoryStore(before)
        p0.store.apply(writes[:cut])
        replayed, _ = p0.run(batch)
        if cut <= clock_at:
            assert _json(replayed.partials) == _json(original.partials), cut
            assert _json(replayed.sessions) == _json(original.sessions), cut
        else:
            assert replayed.partials == [] and replayed.sessions == [], cut
        assert p0.store.data == after, cut


def test_a_long_session_keeps_only_the_rows_inside_the_grace() -> None:
    """Rows older than the last final window are folded into the session's summary in the
    batch after: a user's value does not grow with the length of its session."""
    p0 = Part(0)
    sizes = []
    for n in range(600):
        p0.send(event("long", T0 + n * 1_000, page=f"/p{n % 7}"))
        sizes.append(len(p0.store.get(b"long") or b""))
    user = p0.user("long")
    assert user is not None
    (key,) = user.keys.values()
    assert len(key.summaries) == 1 and key.summaries[0].events > 500
    newest = T0 + 599 * 1_000
    assert all(row.ts >= newest - GRACE - 2 * W for row in key.pending)
    assert max(sizes[300:]) <= max(sizes[100:200]) + 16, "the value must not grow"


# =========================================================================== Part B

PARTITIONS = 4
#: SPEC 10 custom KPIs as the YAML file has them: an action, a page prefix, a metadata value,
#: a filter of every event, and ratios (one of them over a count that is often 0)
CUSTOM_KPIS: list[dict[str, Any]] = [
    {"name": "carts", "count": {"action": "add_to_cart"}},
    {"name": "product_views", "count": {"action": "page_view", "page_prefix": "/products"}},
    {"name": "usd_purchases", "count": {"action": "purchase", "metadata": {"currency": "USD"}}},
    {"name": "everything", "count": {}},
    {
        "name": "carts_per_view",
        "ratio_percent": {"numerator": "carts", "denominator": "product_views"},
    },
    {"name": "usd_share", "ratio_percent": {"numerator": "usd_purchases", "denominator": "carts"}},
]
B_RULES = replace(RULES, custom_kpis=parse_custom_kpis(CUSTOM_KPIS))
COMBINER_RULES = CombinerRules(
    partitions=PARTITIONS, window_ms=W, custom_kpis=parse_custom_kpis(CUSTOM_KPIS)
)
DAY = 86_400_000
FUNNELS = parse_funnels(
    [
        {
            "name": "checkout",
            "window": "20m",
            "stages": ["page_view:/products", "add_to_cart", "page_view:/checkout", "purchase"],
        },
        {"name": "browse", "window": "90s", "stages": ["page_view", "page_view", "page_view"]},
    ],
    parse_duration,
)
EXPERIMENTS = ExperimentsSpec(min_users=5, publish_interval_ms=1)
COHORTS = CohortsSpec(max_day_offset=3)
FUNNEL_RULES = replace(
    B_RULES, journeys=JourneyRules(funnels=FUNNELS, experiments=EXPERIMENTS, cohorts=COHORTS)
)
FUNNEL_COMBINER_RULES = replace(
    COMBINER_RULES, funnels=FUNNELS, experiments=EXPERIMENTS, cohorts=COHORTS
)
LATENCY = 50  # ms from an event's time to its arrival, for the simulated wall clock
TICK_EVERY = 2_000
SEEDS = (1, 2, 3, 4)


@dataclass
class Traffic:
    events: list[dict[str, Any]]  # enriched, in production order
    logs: list[list[Arrival | Tick]]  # each partition's log; offset = index


def traffic(seed: int, start_ms: int = T0, experiment: str = "") -> Traffic:
    """Generated events routed by crc32(user_id) % 4, with ticks carrying the wall clock.

    The wall clock is the greatest event time produced so far plus LATENCY, so an event
    arrives when it happens and the idle advance of a quiet partition never overtakes an
    on-time event. Ticks go to every partition from the first event on, so a partition whose
    users come later starts with ticks only (watermark None) while the others run ahead. The
    log ends with a tick far in the future (two days), which moves every watermark past all
    windows, sessions and funnel days.
    """
    profile = TrafficProfile(
        seed=seed,
        users=40,
        start_ms=start_ms,
        experiment=experiment,
        span_ms=90 * 60_000,
        events=1_200,
        disorder_ms=9_000,
    )
    events: list[dict[str, Any]] = []
    logs: list[list[Arrival | Tick]] = [[] for _ in range(PARTITIONS)]
    wall = T0
    next_tick: int | None = None
    for raw, kind in generate_labelled(profile):
        assert kind == "valid" and isinstance(raw, dict)
        ev = enrich(validate_event(raw, received_at_ms=T0 + 10**10, default_event_id="x"))
        events.append(ev)
        wall = max(wall, parse_ts(ev["timestamp"]) + LATENCY)
        partition = zlib.crc32(ev["user_id"].encode()) % PARTITIONS
        while next_tick is not None and next_tick <= wall:
            for log in logs:
                log.append(Tick(len(log), next_tick))
            next_tick += TICK_EVERY
        logs[partition].append(Arrival(len(logs[partition]), wall, ev))
        if next_tick is None:
            next_tick = wall + TICK_EVERY
    for log in logs:
        log.append(Tick(len(log), wall + 2 * DAY))
    return Traffic(events, logs)


class Node:
    """One partition's worker: its table, the table's changelog, and its consumer position."""

    def __init__(
        self,
        index: int,
        log: list[Arrival | Tick],
        rng: random.Random,
        rules: PartitionRules = RULES,
    ) -> None:
        self.index = index
        self.rules = rules
        self.log = log
        self.rng = rng
        self.table = MemoryStore()
        self.state: PartitionState | None = None  # in memory between batches, like the agent
        self.changelog: list[Write] = []
        self.batch_writes: list[int] = []  # changelog length when each batch began writing
        self.position = 0
        self.crashes = 0
        self.users_newer_than_clock = 0
        self.checks = self.figures_wrong = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.log)

    def process(
        self, size: int, *, live: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One batch: apply, return (kpi-partials messages, closed sessions), write state."""
        items = self.log[self.position : self.position + size]
        if self.state is None or self.rng.random() < 0.2:  # now and then read back
            self.state = PartitionState(self.table, self.rules, max_users=self.rng.choice([0, 3]))
        state = self.state
        out = apply_batch(state, items, self.rules, live=live)
        self.checks += 1
        self.figures_wrong += not running_figures_hold(state)
        self.position += len(items)
        self.batch_writes.append(len(self.changelog))
        writes = state.take_writes()
        self.changelog += writes
        self.table.apply(writes)
        return messages(self.index, out, state.clock, items), _json(out.sessions)

    def crash(self, batches: int, *, during_last_publish: bool) -> None:
        """Lose the changelog's suffix from somewhere in the last ``batches`` batches, rebuild
        the table from what is left, and go back to the restored clock's offset (or earlier:
        committed consumer offsets may lag, which the offsets in the state make harmless)."""
        lowest = self.batch_writes[-batches] if len(self.batch_writes) >= batches else 0
        # a crash while publishing a batch's outputs comes before any of its writes
        highest = self.batch_writes[-1] if during_last_publish else len(self.changelog)
        cut = self.rng.randint(min(lowest, highest), highest)
        self.changelog = self.changelog[:cut]
        self.batch_writes = [b for b in self.batch_writes if b < cut]
        self.table = MemoryStore()
        self.table.apply(self.changelog)
        self.state = None
        self.crashes += 1
        clock_at = max(
            (i for i, (k, _) in enumerate(self.changelog) if k == codec.CLOCK_KEY), default=-1
        )
        if clock_at < len(self.changelog) - 1:
            self.users_newer_than_clock += 1
        stored_clock = self.table.get(codec.CLOCK_KEY)
        resume = codec.decode_clock(stored_clock).applied + 1 if stored_clock is not None else 0
        self.position = self.rng.randint(max(0, resume - 3), resume)


@dataclass
class Published:
    kpis: dict[int, dict[str, Any]] = field(default_factory=dict)
    pages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    traffic: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    sessions: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    funnels: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    experiments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    cohorts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    republished_sessions: int = 0
    problems: list[str] = field(default_factory=list)


@functools.cache
def simulate(
    seed: int, *, crashes: bool, live: float, funnels: bool = False
) -> tuple[Traffic, Published, list[Node]]:
    """Run the partitions and the combiner over ``traffic(seed)``; cached, tests only read it.
    With ``funnels``, the traffic crosses midnight and SPEC 7's funnels are computed too."""
    data = traffic(seed, T0 - 45 * 60_000, "checkout_button") if funnels else traffic(seed)
    rng = random.Random(f"{seed}/{crashes}/{live}/{funnels}")
    rules = FUNNEL_RULES if funnels else B_RULES
    combiner_rules = FUNNEL_COMBINER_RULES if funnels else COMBINER_RULES
    nodes = [Node(i, log, rng, rules) for i, log in enumerate(data.logs)]
    combiner: CombinerState = new_state()
    pending: list[dict[str, Any]] = []
    result = Published()

    def run_combiner(count: int) -> None:
        nonlocal combiner
        batch = pending[:count]
        del pending[:count]
        out = combine(combiner, batch, combiner_rules, live=live > 0 and rng.random() < 0.5)
        combiner = _json(combiner)  # the combiner's state is a JSON table value too
        for kpi in out.kpis:
            if not kpi["is_final"]:
                continue
            start = parse_ts(kpi["window_start"])
            if start in result.kpis:
                result.problems.append(f"window {kpi['window_start']} finalised twice")
            result.kpis[start] = kpi
        for page in out.pages:
            key = (page["window_start"], page["page"])
            if key in result.pages:
                result.problems.append(f"page row {key} published twice")
            result.pages[key] = page
        for row in out.traffic:
            tkey = (row["window_start"], row["dimension"], row["value"])
            if tkey in result.traffic:
                result.problems.append(f"traffic row {tkey} published twice")
            result.traffic[tkey] = row
        for funnel in out.funnels:
            if not funnel["is_final"]:
                continue
            fkey = (funnel["funnel"], funnel["day"])
            if fkey in result.funnels:
                result.problems.append(f"funnel row {fkey} published twice")
            result.funnels[fkey] = funnel
        for row in out.experiments:  # the latest row of each variant counts
            result.experiments[row["experiment"], row["variant"]] = row
        for row in out.cohorts:
            ckey = (row["cohort"], row["day_offset"])
            if not row["is_final"]:
                if ckey in result.cohorts:
                    result.problems.append(f"cohort row {ckey} live after final")
                continue
            if ckey in result.cohorts:
                result.problems.append(f"cohort row {ckey} published twice")
            result.cohorts[ckey] = row

    def publish(msgs: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> None:
        pending.extend(msgs)
        if crashes and rng.random() < 0.05:  # a producer retry: the batch's records twice
            pending.extend(msgs)
        for session in sessions:
            key = (session["user_id"], session["session_id"], session["window_start_ms"])
            if key in result.sessions:
                result.republished_sessions += 1
                if result.sessions[key] != session:
                    result.problems.append(f"session {key} re-published with other figures")
            result.sessions[key] = session

    while not all(node.done for node in nodes):
        node = rng.choice([n for n in nodes if not n.done])  # consumers run at any speed
        msgs, sessions = node.process(rng.randint(1, 40), live=rng.random() < live)
        if crashes and rng.random() < 0.08:
            during_publish = rng.random() < 0.3
            if during_publish:  # only part of the batch's outputs reached the broker
                msgs = msgs[: rng.randint(0, len(msgs))]
                sessions = sessions[: rng.randint(0, len(sessions))]
            publish(msgs, sessions)
            node.crash(rng.randint(1, 4), during_last_publish=during_publish)
        else:
            publish(msgs, sessions)
        if pending and rng.random() < 0.4:
            run_combiner(rng.randint(1, len(pending)))
    for _ in range(2):  # two more batches per partition: sessions close on the batch after
        for node in nodes:
            last = node.log[-1]
            assert isinstance(last, Tick)
            node.log.append(Tick(len(node.log), last.timestamp_ms + 1))
            publish(*node.process(1, live=True))  # live: experiments go out on live rounds
    run_combiner(len(pending))
    return data, result, nodes


def exact_trends(expected: dict[int, dict[str, Any]]) -> int:
    """Re-derive the reference's trends with exact fractions of its integer figures.

    The reference classifies trends on float ratios, so a change of exactly +5 % can come out
    as 5.000000000000006 and 'up' (see test_kpis_traffic). Returns how many trends changed;
    each change must be such a boundary case."""

    def values(window: dict[str, Any] | None) -> dict[str, Fraction]:
        if window is None:
            return {}
        sessions = window["total_sessions"]
        bounces = round(window["bounce_rate_percent"] * sessions / 100)
        duration_ms = round(window["average_session_duration_seconds"] * sessions * 1000)
        return {
            "active_users": Fraction(window["active_users"]),
            "total_events": Fraction(window["total_events"]),
            "total_page_views": Fraction(window["total_page_views"]),
            "total_sessions": Fraction(sessions),
            "total_revenue": Fraction(window["total_revenue_cents"]),
            "total_conversions": Fraction(window["total_conversions"]),
            "conversion_rate_percent": Fraction(100 * window["total_conversions"], sessions or 1),
            "bounce_rate_percent": Fraction(100 * bounces, sessions or 1),
            "average_session_duration_seconds": Fraction(duration_ms, 1000 * (sessions or 1)),
            "revenue_per_user": Fraction(
                window["total_revenue_cents"], window["active_users"] or 1
            ),
        }

    changed = 0
    for start, window in expected.items():
        now, before = values(window), values(expected.get(start - W))
        for metric, old in window["trends"].items():
            previous = before.get(metric, Fraction(0))
            change = 100 * (now[metric] - previous) / previous if previous else Fraction(0)
            direction = "up" if change > 5 else "down" if change < -5 else "stable"
            if direction != old["trend"]:
                assert abs(change) == 5, (start, metric, change, old)
                changed += 1
            window["trends"][metric] = {"change_percent": float(change), "trend": direction}
    return changed


def check_against_reference(data: Traffic, result: Published, nodes: list[Node]) -> None:
    assert result.problems == []
    for node in nodes:
        assert clock_of(node.table).late == 0, "disorder within grace: nothing may be late"
        assert windows_of(node.table) == [], "every window of the traffic is final"
        assert closing_of(node.table) == {}, "every session of the traffic is closed"
        assert codec.count_index(node.table) == 0
    assert all(k["late_events_total"] == 0 for k in result.kpis.values())

    expected = reference.kpi_windows(data.events, W, GAP, CUSTOM_KPIS)
    exact_trends(expected)
    custom = [k["custom"] for k in expected.values()]
    assert all(c["everything"] > 0 for c in custom) and any(c["usd_purchases"] for c in custom)
    assert any(c["usd_share"] not in (0, 100) for c in custom), "ratios must be exercised"
    assert len(result.kpis) == len(expected) > 80
    assert contract.compare_kpis(result.kpis, expected) == []

    records = []
    for figures in result.sessions.values():
        record = dict(figures)
        record["window_start"] = format_ts(record.pop("window_start_ms"))
        record["window_end"] = format_ts(record.pop("window_end_ms"))
        records.append(record)
    expected_sessions = reference.sessions(data.events, GAP)
    assert len(records) == len(expected_sessions) > 100
    assert contract.compare_sessions(records, expected_sessions) == []

    assert contract.compare_pages(result.pages.values(), reference.page_stats(data.events, W)) == []
    assert (
        contract.compare_dimensions(
            result.traffic.values(), reference.dimension_stats(data.events, W)
        )
        == []
    )


@pytest.mark.parametrize("live", [0.0, 0.3], ids=["final-only", "with-live-partials"])
@pytest.mark.parametrize("seed", SEEDS)
def test_final_figures_equal_the_reference(seed: int, live: float) -> None:
    data, result, nodes = simulate(seed, crashes=False, live=live)
    check_against_reference(data, result, nodes)
    assert result.republished_sessions == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_final_figures_survive_crashes_and_redelivery(seed: int) -> None:
    data, result, nodes = simulate(seed, crashes=True, live=0.0)
    check_against_reference(data, result, nodes)
    assert sum(node.crashes for node in nodes) >= 5, "the simulation must really crash"


def test_simulation_covers_the_interesting_cases() -> None:
    """Across the seeds: partitions that start with ticks only, restores with users newer
    than their clock, and sessions published again; without them the tests above would
    prove less than they claim."""
    newer = republished = tick_first = 0
    for seed in SEEDS:
        data, result, nodes = simulate(seed, crashes=True, live=0.0)
        newer += sum(node.users_newer_than_clock for node in nodes)
        republished += result.republished_sessions
        tick_first += sum(isinstance(log[0], Tick) for log in data.logs)
    assert tick_first > 0
    assert newer > 0
    assert republished > 0


def test_running_window_figures_equal_those_worked_out_from_the_rows() -> None:
    """Open windows keep their session, page and dimension figures up to date row by row
    (analytics.partition.PartitionState.row_added); after every batch of every simulation
    (live partials, crashes, re-reads, evictions) they equal a computation from scratch."""
    checks = 0
    for seed in SEEDS:
        for crashes, live in ((False, 1.0), (True, 1.0), (True, 0.3)):
            _, _, nodes = simulate(seed, crashes=crashes, live=live)
            assert [node.figures_wrong for node in nodes] == [0] * PARTITIONS
            checks += sum(node.checks for node in nodes)
    assert checks > 1_000


def test_final_figures_survive_crashes_with_live_partials() -> None:
    """Every batch live, replays included. Several seeds in one test: a seed exposes the bug
    only when a replay's live partial meets another partition's lag, so one seed is not
    enough for a strict xfail (with the bug, most of these seeds fail)."""
    problems: list[str] = []
    for seed in (*SEEDS, 5, 6):
        data, result, nodes = simulate(seed, crashes=True, live=1.0)
        try:
            check_against_reference(data, result, nodes)
        except AssertionError as exc:
            problems.append(f"seed {seed}: {str(exc)[:300]}")
    assert problems == []


def test_state_written_by_the_previous_version_is_taken_over() -> None:
    """The previous layout kept each user's open rows and, inside the clock, the open
    windows, their live counters and the users with sessions to close. A worker upgraded
    with such state finishes the open window and closes the session exactly."""
    a1 = event("a", T0 + 1_000, page="/home")
    a2 = event("a", T0 + 20_000, page="/products")
    legacy_rows = [list(row_of(e)) for e in (a1, a2)]
    user = {
        "first_seen": T0 + 1_000,
        "last_seen": T0 + 20_000,
        "events": 2,
        "revenue_cents": 0,
        "devices": ["mobile"],
        "countries": ["US"],
        "closed_sessions": 0,
        "recent": [],
        "applied": 2,
        "open": {"s1": legacy_rows},
    }
    clock = {
        "max_ts": T0 + 20_000,
        "wm": T0 + 10_000,
        "last_arrival": T0 + 20_000,
        "applied": 2,
        "users_total": 0,
        "late": 0,
        "windows": {str(T0): {"a": 1}},
        "live": {str(T0): {"events": 2, "page_views": 2}},
        "newcomers": {"a": T0},
        "closing": {"a": T0 + 20_000 + CLOSE_AFTER},
    }
    p0 = Part(
        0, store=MemoryStore({b"a": orjson.dumps(user), codec.CLOCK_KEY: orjson.dumps(clock)})
    )
    p0.offset = 2
    p0.events += [a1, a2]
    out, _ = p0.send(event("b", T0 + W + GRACE))
    (partial,) = out.partials
    assert (partial["window_start"], partial["final"]) == (T0, True)
    assert partial["kpi"]["events"] == 2 and partial["kpi"]["new_users"] == 1
    assert partial["kpi"]["sessions"] == 1 and partial["kpi"]["users_total"] == 1
    assert windows_of(p0.store) == [T0 + W]
    assert p0.closing()["a"] == T0 + 20_000 + CLOSE_AFTER
    p0.send(event("b", T0 + 20_000 + CLOSE_AFTER + GRACE))
    out, _ = p0.run([p0.tick(0)])
    (closed,) = [s for s in out.sessions if s["user_id"] == "a"]
    assert closed == session_figures("a", split_sessions([row_of(a1), row_of(a2)], GAP)[0])


@pytest.mark.parametrize("crashes", [False, True], ids=["steady", "crashes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_funnel_days_equal_the_reference(seed: int, crashes: bool) -> None:
    """SPEC 7 across partitions, batches, disorder within grace, live shares and crashes
    that keep any prefix of a batch's writes; the traffic crosses midnight."""
    data, result, nodes = simulate(seed, crashes=crashes, live=0.3, funnels=True)
    assert result.problems == []
    expected = reference.funnel_stats(data.events, contract.funnel_config(FUNNELS))
    assert len(expected) >= 4  # two funnels, two days
    assert any(row["stages"][-1]["reached"] for row in expected.values())
    assert contract.compare_funnels(result.funnels, expected) == []
    for node in nodes:  # every day final: nothing of the funnels is left in the tables
        assert [k for k in node.table.data if k.startswith(b"\xff\xfd" + b"F")] == []
        users = [codec.decode_user(v) for k, v in node.table.data.items() if k[:1] != b"\xff"]
        journeys = [u.journey for u in users if u.journey is not None]
        assert journeys, "the users' values carry their SPEC 7-9 state"
        assert all(j[2] == {} for j in journeys), "funnel events of final days kept"


@pytest.mark.parametrize("crashes", [False, True], ids=["steady", "crashes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_experiments_equal_the_reference(seed: int, crashes: bool) -> None:
    """SPEC 9: the last published row of each variant equals the batch figures."""
    data, result, _ = simulate(seed, crashes=crashes, live=0.3, funnels=True)
    assert result.problems == []
    expected = reference.experiments(data.events)
    assert set(expected) == {"checkout_button"}
    assert contract.compare_experiments(result.experiments, expected, EXPERIMENTS) == []


@pytest.mark.parametrize("crashes", [False, True], ids=["steady", "crashes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cohort_rows_equal_the_reference(seed: int, crashes: bool) -> None:
    """SPEC 8 final rows, engagement of sessions cut at midnight included."""
    data, result, _ = simulate(seed, crashes=crashes, live=0.3, funnels=True)
    assert result.problems == []
    last = max(date.fromisoformat(c) + timedelta(days=d) for c, d in result.cohorts)
    expected = reference.cohorts(data.events, COHORTS.max_day_offset, GAP, last.isoformat())
    assert len(expected) >= 3
    assert contract.compare_cohorts(result.cohorts, expected) == []
    assert any(row["average_engagement_score"] for row in result.cohorts.values())
