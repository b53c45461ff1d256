"""One ``user-events`` partition of the hot path: its state in memory, its table partitions,
and its rounds still on their way to the broker.

A round's records go out in two steps (the order of docs/architecture.md, "Exactness"): its
outputs with its dedup records, and, once the broker has acknowledged those, its state's
changelog records; local RocksDB takes either only once the broker has acknowledged it.
Rounds keep their order in every step. Meanwhile the next rounds are computed, reading the
changes in flight through overlays (tables/overlay_store.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Message

from agents.kafka_io import Delivery
from analytics.erasure import ERASE_HEADER, Erased
from analytics.partition import PartitionOutput, PartitionRules, PartitionState
from analytics.state_store import Write
from analytics.tracking import RawMessage, SeenEvent, TrackedBatch
from app.metrics import BatchFigures
from tables.overlay_store import OverlayStore
from tables.partition_state import partition_state
from tables.rocksdb_store import RocksStore
from tables.seen_events import seen_events

TICK_HEADER = "x-analytics-tick"
LIVE_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.025
HEARTBEAT_S = 1.0


def _is_tick(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    return bool(headers) and any(key == TICK_HEADER for key, _ in headers or ())


def _is_erasure(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    return bool(headers) and any(key == ERASE_HEADER for key, _ in headers or ())


def raw_message(message: Message) -> RawMessage:
    headers = message.headers()
    return RawMessage(
        message.key(),
        message.value() or b"",
        message.partition() or 0,
        message.offset() or 0,
        message.timestamp()[1],
        _is_tick(headers),
        _is_erasure(headers),
    )


@dataclass
class PartitionRound:
    """What one round computed for one partition, until it is acknowledged and written."""

    tracked: TrackedBatch
    analysed: PartitionOutput
    arrived_ms: int
    applied: int
    """The last offset the round's state includes."""
    state_writes: list[Write]
    seen_writes: list[Write]
    erased: list[Erased] = field(default_factory=list)
    """The erasures it did (analytics.erasure): tombstones to send, requests to answer."""


@dataclass
class InFlight:
    """A round once its outputs are handed to the producer: what is left to do for it
    (metrics, RocksDB writes, its state's changelog), without its bulky records."""

    figures: BatchFigures
    applied: int
    state_writes: list[Write]
    seen_writes: list[Write]
    outputs: Delivery
    seen: Delivery
    state: Delivery | None = None
    """Set once its state's changelog records are sent."""
    sent_at: float = field(default_factory=time.monotonic)
    """When its outputs were handed to the producer: a round waiting long says so."""
    erased: list[Erased] = field(default_factory=list)
    """Its erasures, answered once its state is in RocksDB (agents/erasures.py)."""

    @property
    def published(self) -> bool:
        """Its outputs and dedup records are acknowledged."""
        return self.outputs.done and self.seen.done


@dataclass
class PartitionTask:
    """One partition this worker owns (module docstring)."""

    partition: int
    state: PartitionState
    state_store: RocksStore
    state_reads: OverlayStore
    seen_store: RocksStore
    seen_reads: OverlayStore
    live_at: float = 0.0
    progress_at: float = 0.0
    progress_sent: tuple[int | None, int] | None = None
    in_flight: deque[InFlight] = field(default_factory=deque)
    """Its rounds not yet in RocksDB, oldest first."""
    flushed_at: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, partition: int, rules: PartitionRules, max_users: int) -> PartitionTask:
        """The partition as durable in this worker's RocksDB (recovered by Faust)."""
        state_store = RocksStore.of(partition_state, partition)
        seen_store = RocksStore.of(seen_events, partition)
        state_reads = OverlayStore(state_store)
        return cls(
            partition,
            PartitionState(state_reads, rules, max_users),
            state_store,
            state_reads,
            seen_store,
            OverlayStore(seen_store),
        )

    @property
    def position(self) -> int | None:
        """The next offset to read: after the last one the state applied."""
        applied = self.state.clock.applied
        return applied + 1 if applied >= 0 else None

    def live_due(self) -> bool:
        now = time.monotonic()
        if now - self.live_at >= LIVE_INTERVAL_S:
            self.live_at = now
            return True
        return False

    def progress_due(self, with_partials: bool) -> bool:
        """Whether a round reports the partition's progress (watermark, late events) to the
        combiner: always with partials; else when it moved, at most every
        ``PROGRESS_INTERVAL_S``, and once a ``HEARTBEAT_S`` anyway (the append time of its
        latest message matters for partitions without events). Each report is a message the
        combiner reads: at a steady rate, one per partition per round was most of its work."""
        now = time.monotonic()
        clock = self.state.clock
        current = (clock.wm, clock.late)
        waited = now - self.progress_at
        if not with_partials and (
            waited < PROGRESS_INTERVAL_S or (current == self.progress_sent and waited < HEARTBEAT_S)
        ):
            return False
        self.progress_at, self.progress_sent = now, current
        return True

    def lookup(self, key: bytes) -> SeenEvent | None:
        stored = self.seen_reads.get(key)
        return SeenEvent.decode(stored) if stored is not None else None

    def computed(self, done: PartitionRound) -> None:
        """A round is computed: the next one reads its changes before they are written."""
        self.state_reads.stage(done.state_writes)
        self.seen_reads.stage(done.seen_writes)

    def flush_due(self, interval_s: float) -> bool:
        """Time to persist RocksDB's memtables (they are written without a log)."""
        now = time.monotonic()
        if now - self.flushed_at >= interval_s:
            self.flushed_at = now
            return True
        return False
