"""One actor per ``user-events`` partition: the behaviour tracker, then the partition's analytics.

Tracker (SPEC 1-2): validate, drop repeats, enrich → ``user-behavior-enriched``; rejects →
``user-events-dlq``; wrongly keyed events are produced again keyed by user_id.
Analytics (SPEC 3-6): the same batch's enriched events and ticks update this partition's users,
sessions and windows; closed sessions → ``session-metrics``; window partials and the watermark →
``kpi-partials`` for the combiner.

Both run in the same actor because they need the same partition of users and the same batch:
one Faust pass per event instead of two (Faust's per-event cost dominates, FACTS.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents.batching import Handled, contiguous, run_in_batches
from agents.outputs import Record, publish
from analytics.enrichment import EnrichmentRules
from analytics.partition import PartitionRules, PartitionState, apply_batch
from analytics.rows import Arrival
from analytics.timeutil import format_ts
from analytics.tracking import RawMessage, SeenEvent, TrackerRules, track_batch
from app import app, metrics
from tables import partition_state as state_table
from tables.seen_events import seen_events
from tables.write_through import write_through

log = logging.getLogger(__name__)
TOPICS = app.topic_names
TICK_HEADER = "x-analytics-tick"
LIVE_INTERVAL_S = 1.0

_settings = app.analytics_settings
_engine = _settings.engine
TRACKER_RULES = TrackerRules(
    enrichment=EnrichmentRules(
        conversion_actions=frozenset(_settings.analytics.conversion_actions),
        high_value_revenue_cents=int(_settings.analytics.high_value_revenue * 100),
        high_value_duration_ms=_settings.analytics.high_value_duration_ms,
    ),
    dedup_window_ms=int(_engine.dedup_window.total_seconds() * 1000),
    future_tolerance_ms=int(_settings.analytics.future_tolerance.total_seconds() * 1000),
)
PARTITION_RULES = PartitionRules(
    window_ms=int(_engine.kpi_window.total_seconds() * 1000),
    gap_ms=int(_engine.session_gap.total_seconds() * 1000),
    grace_ms=int(_engine.grace.total_seconds() * 1000),
    idle_ms=int(_engine.idle_timeout.total_seconds() * 1000),
)

user_events_topic = app.topic(TOPICS.user_events, partitions=_engine.topic_partitions)


def _lookup(key: bytes) -> SeenEvent | None:
    stored = seen_events.get(key)
    return SeenEvent.decode(stored) if stored is not None else None


def _is_tick(headers: Any) -> bool:
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(key == TICK_HEADER for key, _ in pairs)


def _to_raw(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        key=message.key,
        value=message.value or b"",
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=round(message.timestamp * 1000),
        tick=_is_tick(message.headers),
    )


def session_record(figures: dict[str, Any]) -> dict[str, Any]:
    """A closed session as published: times in RFC 3339, money in currency units."""
    record = dict(figures)
    record["window_start"] = format_ts(record.pop("window_start_ms"))
    record["window_end"] = format_ts(record.pop("window_end_ms"))
    record["revenue"] = round(record["revenue_cents"] / 100, 2)
    return record


class _LiveThrottle:
    """Open windows are published at most once a second per partition."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def due(self, partition: int) -> bool:
        now = time.monotonic()
        if now - self.last.get(partition, 0.0) >= LIVE_INTERVAL_S:
            self.last[partition] = now
            return True
        return False


_live = _LiveThrottle()


async def handle_batch(events: list[Any]) -> Handled:
    """One partition's batch: track, analyse, publish, then save state."""
    partition = events[0].message.partition
    clock = state_table.load_clock()
    done, fresh, seek_to = contiguous(events, None if clock is None else clock["applied"])
    if seek_to is not None:
        log.info("partition %d: offsets jump before %d; seeking back", partition, seek_to)
    if not fresh:
        return Handled(done, seek_to)
    events = fresh
    tracked = track_batch(
        (_to_raw(event) for event in events),
        topic=TOPICS.user_events,
        lookup=_lookup,
        rules=TRACKER_RULES,
    )
    state = PartitionState(clock, state_table.load_user)
    with metrics.partition_analytics():
        analysed = apply_batch(state, tracked.timeline, PARTITION_RULES, live=_live.due(partition))

    records: list[Record] = []
    for item in tracked.timeline:
        if isinstance(item, Arrival):
            key = item.event["user_id"].encode()
            records.append((TOPICS.enriched, key, item.event, partition))
    records += [(TOPICS.dead_letters, None, dead, None) for dead in tracked.dead_letters]
    for session in analysed.sessions:
        key = session["user_id"].encode()
        records.append((TOPICS.session_metrics, key, session_record(session), partition))
    for partial in analysed.partials:
        message = {"type": "partial", "partition": partition, **partial}
        records.append((TOPICS.kpi_partials, None, message, 0))
    progress = {
        "type": "progress",
        "partition": partition,
        "wm": state.clock["wm"],
        "late": state.clock["late"],
        "arrived": max(round(event.message.timestamp * 1000) for event in events),
    }
    records.append((TOPICS.kpi_partials, None, progress, 0))
    await publish(records)
    metrics.tracker_batch(tracked, analysed)
    for moved in tracked.rekeyed:
        await publish(
            [(TOPICS.user_events, moved.key, moved.value, None)], moved.timestamp_ms / 1000
        )

    seen = [(key, value.encode()) for key, value in tracked.seen.items()]
    await write_through(seen_events, partition, seen)
    state.clock["applied"] = max(state.clock["applied"], events[-1].message.offset)
    await state_table.save(partition, state.users, state.dirty_users, state.clock)
    metrics.partition_clock(partition, state.clock)

    return Handled(done + fresh, seek_to)


@app.agent(user_events_topic, isolated_partitions=True, name="behavior-tracker")
async def behavior_tracker(stream: Any) -> None:
    """Consume raw events one partition batch at a time."""
    await run_in_batches(stream, _engine.batch_size, _engine.batch_within, handle_batch)


@app.timer(interval=_engine.watermark_interval.total_seconds(), on_leader=True)  # type: ignore[untyped-decorator]
async def send_ticks() -> None:
    """Carry the wall clock into every partition, so quiet partitions close their windows."""
    producer = app.producer
    for partition in range(_engine.topic_partitions):
        await producer.send(TOPICS.user_events, None, b"", partition, None, [(TICK_HEADER, b"1")])
