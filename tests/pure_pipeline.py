"""The pipeline's pure stages wired together without Kafka, the way the agents wire them.

``PurePartition`` is one ``user-events`` partition as agents/behavior_tracker.py runs it:
raw messages through ``track_batch`` (SPEC 1-2), the timeline through ``apply_batch`` on a
``PartitionState`` read back from its table (a MemoryStore) every batch, the state's writes
applied, and the ``kpi-partials`` messages the tracker would publish. ``PureCombiner`` folds
those messages as agents/kpi_combiner.py does (checked by analytics.partials first), with the
state through JSON between batches like its table. Unit and property tests drive these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from analytics import record_chunks, wide_json
from analytics.combiner import CombinerOutput, CombinerRules, combine, new_state
from analytics.partials import PartialLimits, decode_message
from analytics.partition import PartitionOutput, PartitionRules, PartitionState, apply_batch
from analytics.tracking import RawMessage, SeenEvent, TrackedBatch, TrackerRules, track_batch
from tables.memory_store import MemoryStore

TOPIC = "user-events"


@dataclass
class PartitionRound:
    """What one batch of a partition produced."""

    tracked: TrackedBatch
    analysed: PartitionOutput
    partials: list[bytes]
    """The kpi-partials messages, encoded as the tracker publishes them."""


@dataclass
class PurePartition:
    """One partition: its state table, its dedup records and its input offsets."""

    index: int
    rules: PartitionRules = field(default_factory=PartitionRules)
    tracker: TrackerRules = field(default_factory=TrackerRules)
    store: MemoryStore = field(default_factory=MemoryStore)
    seen: dict[bytes, SeenEvent] = field(default_factory=dict)
    offset: int = 0

    def messages(
        self, values: list[bytes], keys: list[bytes | None], arrived_ms: int
    ) -> list[RawMessage]:
        """Raw messages at the next offsets, all appended at ``arrived_ms``."""
        raw = []
        for key, value in zip(keys, values, strict=True):
            raw.append(RawMessage(key, value, self.index, self.offset, arrived_ms))
            self.offset += 1
        return raw

    def tick(self, now_ms: int) -> RawMessage:
        self.offset += 1
        return RawMessage(None, b"", self.index, self.offset - 1, now_ms, tick=True)

    def run(self, messages: list[RawMessage], *, live: bool = False) -> PartitionRound:
        """One batch, as the tracker runs it; the state's writes are applied to the table."""
        tracked = track_batch(messages, topic=TOPIC, lookup=self.seen.get, rules=self.tracker)
        self.seen.update(tracked.seen)
        state = PartitionState(self.store, self.rules)
        analysed = apply_batch(state, tracked.timeline, self.rules, live=live)
        self.store.apply(state.take_writes())
        partials = [  # a large one as chunks
            chunk
            for partial in analysed.partials
            for chunk in record_chunks.encode(
                {"type": "partial", "partition": self.index, **partial}, record_chunks.PARTIAL
            )
        ]
        partials += [orjson.dumps({"partition": self.index, **s}) for s in analysed.journeys]
        progress = {
            "type": "progress",
            "partition": self.index,
            "wm": state.clock.wm,
            "late": state.clock.late,
            "arrived": max((m.timestamp_ms for m in messages), default=0),
        }
        partials.append(orjson.dumps(progress))
        return PartitionRound(tracked, analysed, partials)


@dataclass
class PureCombiner:
    """The combiner: checks each message, folds the batch, keeps its state as JSON."""

    rules: CombinerRules
    state: bytes = field(default_factory=lambda: orjson.dumps(new_state()))

    @property
    def limits(self) -> PartialLimits:
        return PartialLimits(self.rules.partitions, self.rules.window_ms)

    def fold(self, raw: list[bytes], *, live: bool = True) -> CombinerOutput:
        state = wide_json.loads(self.state)
        out = combine(state, [decode_message(r, self.limits) for r in raw], self.rules, live=live)
        self.state = wide_json.dumps(state)
        return out


def encoded(value: Any) -> Any:
    """``value`` after a trip through JSON, as a consumer of a topic sees it."""
    return orjson.loads(orjson.dumps(value))
