"""The hot path's pure code without Kafka: CPU cost per event of each stage.

Runs bench/workload.py's events through what a worker does to one partition's batch, in
batches, on one partition with a dict store (tables/memory_store.py): the tracker (decode,
validate, dedup lookup, enrich, encode), the partition state (sessions, windows, partials),
the state's writes, and encoding the outputs. Prints µs per event for each stage and in all,
and the records per event a worker would produce (outputs, changelog records);
the Kafka side (librdkafka) and RocksDB are measured by bench/compare.py instead. Times are
the thread's CPU time, so other load on the machine disturbs them less than wall time.

    PYTHONPATH=. python bench/hot_path.py --events 100000 --session-events 20
    PYTHONPATH=. python -m cProfile -s cumtime bench/hot_path.py --events 50000 | head -60
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from analytics.journeys import JourneyRules
from analytics.partition import PartitionOutput, PartitionRules, PartitionState, apply_batch
from analytics.rows import Arrival
from analytics.tracking import RawMessage, SeenEvent, TrackedBatch, TrackerRules, track_batch
from app.settings import get_settings
from bench.workload import Workload, events
from tables.memory_store import MemoryStore


def journey_rules() -> JourneyRules:
    """SPEC 7-9 as the shipped configuration has them (funnels, experiments, cohorts)."""
    settings = get_settings()
    return JourneyRules(
        funnels=settings.funnels,
        experiments=settings.experiments.spec(),
        cohorts=settings.cohorts.spec(),
    )


def run(
    workload: Workload, batch: int, journeys: bool = False
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU µs per event of each stage, and records per event a worker would produce."""
    step_ms = 1000 / workload.events_per_second
    messages = [  # each arrives 50 ms after its event time
        RawMessage(key, value, 0, offset, workload.start_ms + int(offset * step_ms) + 50)
        for offset, (key, value) in enumerate(events(workload))
    ]
    seen_store = MemoryStore()
    store = MemoryStore()
    rules_ = PartitionRules(journeys=journey_rules()) if journeys else PartitionRules()
    state = PartitionState(store, rules_)
    timings = {"track": 0.0, "analyse": 0.0, "state writes": 0.0, "outputs": 0.0}
    records = {"outputs": 0, "dedup changelog": 0, "state changelog": 0}

    def timed(stage: str, work: Callable[[], Any]) -> Any:
        started = time.thread_time()
        result = work()
        timings[stage] += time.thread_time() - started
        return result

    def lookup(key: bytes) -> SeenEvent | None:
        stored = seen_store.get(key)
        return SeenEvent.decode(stored) if stored is not None else None

    rules = TrackerRules()
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]

        def track(chunk: list[RawMessage] = chunk) -> TrackedBatch:
            return track_batch(chunk, topic="t", lookup=lookup, rules=rules)

        tracked: TrackedBatch = timed("track", track)

        def analyse(t: TrackedBatch = tracked) -> PartitionOutput:
            return apply_batch(state, t.timeline, state.rules)

        out: PartitionOutput = timed("analyse", analyse)

        def outputs(t: Any = tracked, o: Any = out) -> None:
            for item in t.timeline:
                if isinstance(item, Arrival):
                    item.user_id.encode()
            for session in o.sessions:
                orjson.dumps(session)
            for partial in o.partials:
                orjson.dumps(partial)
            for share in o.journeys:
                orjson.dumps(share)

        timed("outputs", outputs)
        writes = timed("state writes", state.take_writes)
        records["outputs"] += len(chunk) + len(out.sessions) + len(out.partials) + len(out.journeys)
        records["dedup changelog"] += len(tracked.seen)
        records["state changelog"] += len(writes)
        store.apply(writes)
        seen_store.apply((key, seen.encode()) for key, seen in tracked.seen.items())
    micros = {stage: seconds / len(messages) * 1e6 for stage, seconds in timings.items()}
    return micros, {kind: count / len(messages) for kind, count in records.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=250, help="users of the one partition")
    parser.add_argument("--session-events", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1_000, help="events per batch")
    parser.add_argument(
        "--journeys",
        action="store_true",
        help="with SPEC 7-9 (the shipped funnels, experiments, cohorts) and A/B exposures",
    )
    args = parser.parse_args()
    workload = Workload(
        events=args.events,
        users=args.users,
        session_events=args.session_events,
        events_per_second=100 / 8,  # one partition's share of the compare workload
        experiment=args.journeys,
    )
    costs, records = run(workload, args.batch, args.journeys)
    for stage, micros in costs.items():
        print(f"{stage:<14} {micros:6.2f} µs/event")
    total = sum(costs.values())
    print(f"{'all':<14} {total:6.2f} µs/event  ({1e6 / total:,.0f} events/s on one core)")
    for kind, per_event in records.items():
        print(f"{kind:<16} {per_event:5.2f} records/event")
    print(f"{'records':<16} {sum(records.values()):5.2f} records/event produced in all")


if __name__ == "__main__":
    main()
