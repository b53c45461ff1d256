"""The pure parts of the soak (bench/soak.py): the seeded fault order, which fault a moment
belongs to, and the events the clients send."""

from __future__ import annotations

import collections

from analytics.timeutil import parse_ts
from bench.soak import (
    BROKER,
    DATABASE,
    KILL,
    NONE,
    OFFSET_MS,
    SIGTERM,
    EventSource,
    FaultRun,
    Plan,
    fault_of,
    now_ms,
)


def test_every_fault_comes_as_often_as_planned_in_an_order_the_seed_decides() -> None:
    plan = Plan(kills=10, seed=11)
    faults = plan.faults()
    assert collections.Counter(faults) == {KILL: 10, SIGTERM: 1, BROKER: 1, DATABASE: 1}
    assert faults == Plan(kills=10, seed=11).faults()
    orders = {tuple(Plan(kills=10, seed=seed).faults()) for seed in range(20)}
    assert len(orders) > 10


def test_a_moment_belongs_to_the_latest_fault_whose_span_covers_it() -> None:
    plan = Plan(broker_down_s=30, database_down_s=60)
    runs = [
        FaultRun(KILL, 100_000, 110_000, 10.0, "w1"),
        # an outage's run starts when the service is back; the fault began down_s before
        FaultRun(BROKER, 200_000, 204_000, 4.0, "down 30 s"),
        FaultRun(KILL, 205_000, 215_000, 10.0, "w2"),
    ]
    fault = fault_of(runs, plan)
    assert fault(50_000, 50_001) == NONE
    assert fault(99_500, 99_501) == KILL  # a second before: the kill was under way
    assert fault(114_000, 114_001) == KILL  # 5 s of slack after the recovery
    assert fault(116_000, 116_001) == NONE
    assert fault(171_000, 171_001) == BROKER
    assert fault(206_000, 206_001) == KILL  # both cover it: the later one
    assert fault(160_000, 230_000) == KILL  # a window overlapping both


def test_events_are_stamped_with_the_clock_two_hours_ago_and_some_are_invalid() -> None:
    source = EventSource(Plan(invalid_share=0.1, seed=3), "t", seed=3)
    before = now_ms()
    sent = [source.next() for _ in range(1000)]
    after = now_ms()
    ids = [event["event_id"] for _key, event, _valid in sent]
    assert len(set(ids)) == len(ids)
    for key, event, valid in sent:
        assert before - OFFSET_MS <= parse_ts(event["timestamp"]) <= after - OFFSET_MS
        assert key == event["user_id"].encode()
        assert valid == isinstance(event["action"], str)
    assert 50 < sum(not valid for _key, _event, valid in sent) < 150
