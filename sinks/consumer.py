"""One table's sink on the Kafka side: its consumer group, batches, dead letters, offset commits.

Each sink reads its topic with a consumer of its own, in a consumer group of its own
(``<app id>-sink-<table>``), so the workers share each topic's partitions. It takes a batch
(``sinks.timescaledb.batch_size`` records, or what came within ``flush_interval`` of the first
one), hands the records to its writer and commits the batch's offsets only after that (the
order and what a failure does: the package docstring, sinks/__init__.py).

Why not Faust agents (``@app.agent`` taking batches of a stream): a Faust worker has one consumer,
and before it lets partitions go (rebalance, shutdown) it waits until every record any agent
has taken is acknowledged (``Consumer.wait_empty``). A sink that waits for the database would
hold every rebalance and shutdown of the worker, and with it the whole pipeline, until the
database returns; and giving the batch up half-way lets Faust acknowledge records nobody
processed (a stream acknowledges what it skips while flow is suspended, and the commit
skips a gap at the head of a partition). A consumer of its own leaves Faust's consumer alone:
a database outage only holds the sinks; the tracker, the combiner and the topics go on.

A session too large for one Kafka message comes as chunks (analytics.record_chunks): the
session sink keeps them, per partition, until the last one is there and writes the session
whole; it commits no offset past the first chunk of a session it has not written, so after a
crash or a rebalance the chunks are read again from there (a chunk read twice changes
nothing). Records are decoded with integers of any size (analytics.wide_json).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from analytics import wide_json
from analytics.record_chunks import SESSION, ChunkError, Shape, first_offset, gather
from app import metrics
from app.kafka_security import aiokafka_kwargs
from app.settings import Settings
from sinks.dead_letters import dead_letter
from sinks.erasure import Eraser, runs
from sinks.lag import watch_lag
from sinks.schema import SESSION_METRICS, TableSpec
from sinks.writers import BatchWriter

log = logging.getLogger(__name__)

#: a batch may wait this long for the database before the group hands its partitions to
#: another member (which then waits too); the batch is read again there, never lost
MAX_POLL_INTERVAL_MS = 30 * 60 * 1000

#: the tables whose records may come as chunks, and how they are split
CHUNKED: dict[str, Shape] = {SESSION_METRICS.name: SESSION}

#: sends ``(topic, key, value, partition)`` records and returns once the broker has them all
Publish = Callable[[list[tuple[str, None, dict[str, Any], None]]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class DeadLetterTopic:
    """Where a sink's rejects go (``<prefix>sink-dlq``), and how they are sent there."""

    name: str
    publish: Publish

    async def send(self, letters: Sequence[dict[str, Any]]) -> None:
        await self.publish([(self.name, None, letter, None) for letter in letters])


def decode(
    spec: TableSpec, records: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
    """``(values, their records, dead letters)``: JSON objects go on, anything else is dead."""
    values: list[dict[str, Any]] = []
    sources: list[Any] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        try:
            value = wide_json.loads(record.value or b"")
        except orjson.JSONDecodeError as exc:
            dead.append(dead_letter(spec, record, f"{spec.name}: not JSON: {exc}", None))
            continue
        if not isinstance(value, dict):
            dead.append(dead_letter(spec, record, f"{spec.name}: not a JSON object", None))
            continue
        values.append(value)
        sources.append(record)
    return values, sources, dead


async def take_batch(consumer: Any, max_records: int, within_s: float) -> list[Any]:
    """Up to ``max_records`` records, or what arrived within ``within_s`` of the first one;
    each partition's records in offset order. Empty after ``within_s`` without any record."""
    loop = asyncio.get_running_loop()
    records: list[Any] = []
    deadline: float | None = None
    while len(records) < max_records:
        wait = within_s if deadline is None else deadline - loop.time()
        if wait <= 0:
            break
        fetched = await consumer.getmany(
            timeout_ms=max(1, int(wait * 1000)), max_records=max_records - len(records)
        )
        for partition_records in fetched.values():
            records.extend(partition_records)
        if not records:
            break  # idle for a whole interval: let the caller look around
        if deadline is None:
            deadline = loop.time() + within_s
    return records


def next_offsets(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """The offsets to commit once ``records`` are written: one past each partition's last."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


class SinkConsumer:
    """One table's sink: its consumer group, batches, writes, dead letters, offset commits."""

    def __init__(
        self,
        spec: TableSpec,
        topic: str,
        writer: BatchWriter,
        group_id: str,
        settings: Settings,
        dead_letters: DeadLetterTopic,
        eraser: Eraser | None = None,
    ) -> None:
        self.spec = spec
        self.topic = topic
        self.writer = writer
        self.group_id = group_id
        self.settings = settings
        self.dead_letters = dead_letters
        self.eraser = eraser
        """Deletes the rows of users whose tombstones come (tables with users only)."""
        self.shape = CHUNKED.get(spec.name)
        self.pending: dict[TopicPartition, dict[str, Any]] = {}
        """Per partition: chunks of records not yet whole (analytics.record_chunks)."""

    def consumer(self) -> AIOKafkaConsumer:
        engine = self.settings.engine
        return AIOKafkaConsumer(
            self.topic,
            **aiokafka_kwargs(self.settings),
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(engine.session_timeout.total_seconds() * 1000),
            heartbeat_interval_ms=int(engine.heartbeat_interval.total_seconds() * 1000),
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        )

    async def run(self) -> None:
        database = self.settings.sinks.timescaledb
        consumer = self.consumer()
        await consumer.start()
        lag = asyncio.ensure_future(watch_lag(self.spec.name, consumer))
        try:
            while True:
                records = await take_batch(
                    consumer, database.batch_size, database.flush_interval.total_seconds()
                )
                if records:
                    await self.handle(consumer, records)
        finally:
            lag.cancel()
            await consumer.stop()

    async def handle(self, consumer: Any, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Write a batch (until committed), dead-letter its rejects, then commit its offsets."""
        owned = consumer.assignment()
        # a partition lost to a rebalance since the fetch is read again by its new owner
        records = [r for r in records if TopicPartition(r.topic, r.partition) in owned]
        for lost in [tp for tp in self.pending if tp not in owned]:
            del self.pending[lost]  # its new owner reads the chunks again
        await self.write(records)
        offsets = next_offsets(records)
        owned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
        for tp, chunks in self.pending.items():
            first = first_offset(chunks)
            if tp in offsets and first is not None:
                offsets[tp] = min(offsets[tp], first)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # the group moved on (rebalance): the new owner reads these records again
            log.info(
                "sink %s: offsets not committed (%s); they will be read again", self.spec.name, exc
            )

    async def write(self, records: list[ConsumerRecord[Any, Any]]) -> int:
        """Write a batch of records in offset order (until committed), deleting the rows of
        users erased in between (tombstones, sinks.erasure), and dead-letter its rejects;
        returns how many were dead-lettered. ``faust -A app sinks rebuild`` writes through
        this too (sinks/rebuild.py)."""
        dead: list[dict[str, Any]] = []
        written = 0
        cut = runs(records) if self.eraser is not None else [(records, [])]
        for run, erased in cut:  # tombstones: the users' rows deleted in order (sinks.erasure)
            if run or len(cut) == 1:
                written += await self._write(run, dead)
            if erased and self.eraser is not None:
                await self.eraser.erase(erased)
        metrics.sink_batch(self.spec.name, len(records), written, len(dead))
        if dead:
            log.warning(
                "sink %s: %d records to %s", self.spec.name, len(dead), self.dead_letters.name
            )
            await self.dead_letters.send(dead)
        return len(dead)

    async def _write(self, records: list[ConsumerRecord[Any, Any]], dead: list[Any]) -> int:
        """Write records (until committed); their dead letters go into ``dead``."""
        values, sources, undecoded = decode(self.spec, records)
        dead += undecoded
        if self.shape is not None:
            values, sources, incomplete = self.gathered(values, sources, self.shape)
            dead += incomplete
        result = await self.writer.write(values)
        dead += [
            dead_letter(self.spec, sources[bad.index], bad.error, bad.sqlstate)
            for bad in result.rejected
        ]
        return result.written

    def gathered(
        self, values: list[dict[str, Any]], sources: list[Any], shape: Shape
    ) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
        """The batch with chunks put together: ``(values, their records, dead letters)``.
        A record whole from its chunks comes with the record of its last chunk; chunks that
        cannot be put together go to the dead letters with the reason."""
        whole_values: list[dict[str, Any]] = []
        whole_sources: list[Any] = []
        dead: list[dict[str, Any]] = []
        for value, record in zip(values, sources, strict=True):
            if "chunk" in value:
                pending = self.pending.setdefault(
                    TopicPartition(record.topic, record.partition), {}
                )
                try:
                    assembled = gather(pending, value, shape, record.offset)
                except ChunkError as exc:
                    dead.append(dead_letter(self.spec, record, f"{self.spec.name}: {exc}", None))
                    continue
                if assembled is None:
                    continue
                value = assembled
            whole_values.append(value)
            whole_sources.append(record)
        return whole_values, whole_sources, dead
