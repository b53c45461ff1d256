"""Database sinks: one per output topic, each writing its table (sinks/).

    live-kpis       → kpi_metrics        session-metrics → session_metrics
    page-view-stats → page_view_stats    traffic-stats   → dimension_stats

Each sink reads its topic with a consumer of its own, in a consumer group of its own
(``<app id>-sink-<table>``), so the workers share each topic's partitions. It takes a batch
(``sinks.timescaledb.batch_size`` records, or what came within ``flush_interval`` of the first
one), hands the records to its ``TableSink``, which returns once they are committed in one
transaction (retrying for as long as the database is away), sends the records the database can
never take (and values that are not JSON objects) to ``<prefix>sink-dlq`` with the error, and
only then commits the batch's offsets. A crash, a rebalance or an outage therefore re-delivers
a batch, never loses one, and the upserts make the repeat harmless.

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

The migrations run once at worker start; a database that cannot be used (wrong URL,
credentials, database name, or unreachable for ``startup_timeout``) stops the worker with a
message naming the URL without its password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from agents.outputs import Record, publish
from agents.sink_lag import watch_lag
from analytics import wide_json
from analytics.dead_letters import RAW_LIMIT, utf8_prefix
from analytics.record_chunks import SESSION, ChunkError, Shape, first_offset, gather
from analytics.timeutil import format_ts, now_ms
from app import app, metrics, startup
from app.kafka_security import aiokafka_kwargs
from sinks.db import DatabaseStartupError
from sinks.migrations import MigrationOptions
from sinks.retry import RetryPolicy
from sinks.schema import SESSION_METRICS, TABLES, TableSpec
from sinks.sink import SchemaGate, TableSink
from sinks.writers import WriteResult

log = logging.getLogger(__name__)

TOPICS = app.topic_names
_settings = app.analytics_settings
_engine = _settings.engine
_database = _settings.sinks.timescaledb
#: a batch may wait this long for the database before the group hands its partitions to
#: another member (which then waits too); the batch is read again there, never lost
MAX_POLL_INTERVAL_MS = 30 * 60 * 1000
#: characters of a dead letter's error, bytes of its key (its value: RAW_LIMIT bytes)
ERROR_LIMIT = 1000
KEY_LIMIT = 1024

#: the tables whose records may come as chunks, and how they are split
CHUNKED: dict[str, Shape] = {SESSION_METRICS.name: SESSION}

schema = SchemaGate(_database.url, MigrationOptions.of(_database))  # as the tables' owner
_policy = RetryPolicy(initial=_database.retry_initial, maximum=_database.retry_max)


def dead_letter(spec: TableSpec, record: Any, error: str, sqlstate: str | None) -> dict[str, Any]:
    """The sink-dlq record of a message that cannot be written: where it came from, its value
    (decoded when it is JSON orjson can write back, else as text) and why. A value over
    RAW_LIMIT bytes is kept as the text of its first RAW_LIMIT bytes, with
    ``value_truncated_from_bytes``: a dead letter must always be sent, or sending it would
    stop the sink."""
    raw: bytes = record.value or b""
    letter: dict[str, Any] = {
        "table": spec.name,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": _text(record.key, KEY_LIMIT) if record.key else None,
        "value": None,
        "error": error[:ERROR_LIMIT],
        "sqlstate": sqlstate,
        "time": format_ts(now_ms()),
    }
    if len(raw) > RAW_LIMIT:
        letter["value"] = _text(raw, RAW_LIMIT)
        letter["value_truncated_from_bytes"] = len(raw)
        return letter
    try:
        value = orjson.loads(raw)
        orjson.dumps(value)  # orjson reads 1,024 levels of nesting but writes only 254
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        value = _text(raw, RAW_LIMIT)
    letter["value"] = value
    return letter


def _text(raw: bytes, limit: int) -> str:
    return utf8_prefix(raw, limit).decode("utf-8", "replace")


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

    def __init__(self, spec: TableSpec, topic: str, sink: TableSink, group_id: str) -> None:
        self.spec = spec
        self.topic = topic
        self.sink = sink
        self.group_id = group_id
        self.shape = CHUNKED.get(spec.name)
        self.pending: dict[TopicPartition, dict[str, Any]] = {}
        """Per partition: chunks of records not yet whole (analytics.record_chunks)."""

    def consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self.topic,
            **aiokafka_kwargs(_settings),
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(_engine.session_timeout.total_seconds() * 1000),
            heartbeat_interval_ms=int(_engine.heartbeat_interval.total_seconds() * 1000),
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        )

    async def run(self) -> None:
        consumer = self.consumer()
        await consumer.start()
        lag = asyncio.ensure_future(watch_lag(self.spec.name, consumer))
        try:
            while True:
                records = await take_batch(
                    consumer, _database.batch_size, _database.flush_interval.total_seconds()
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
        values, sources, dead = decode(self.spec, records)
        if self.shape is not None:
            values, sources, incomplete = self.gathered(values, sources, self.shape)
            dead += incomplete
        result: WriteResult = await self.sink.write(values)
        dead += [
            dead_letter(self.spec, sources[bad.index], bad.error, bad.sqlstate)
            for bad in result.rejected
        ]
        metrics.sink_batch(self.spec.name, len(records), result.written, len(dead))
        if dead:
            log.warning(
                "sink %s: %d records to %s", self.spec.name, len(dead), TOPICS.sink_dead_letters
            )
            letters: list[Record] = [(TOPICS.sink_dead_letters, None, d, None) for d in dead]
            await publish(letters)
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


def _sink(spec: TableSpec) -> SinkConsumer:
    topic = getattr(TOPICS, spec.topic_field)
    sink = TableSink(spec, topic, _database.writer_url, schema, _policy)  # sinks/roles.py
    return SinkConsumer(spec, topic, sink, f"{app.conf.id}-sink-{spec.name}")


table_sinks = {name: _sink(TABLES[name]) for name in _database.tables}


@app.task  # type: ignore[untyped-decorator]
async def run_sinks() -> None:
    """Run every sink until the worker stops, and migrate. The sinks start at once (a batch
    waits in its sink until the schema is there); a database that cannot be used at start, or
    a sink failing for a reason other than the database, stops the worker."""
    if not table_sinks:
        startup.announce(app)
        return
    running = [asyncio.ensure_future(sink.run()) for sink in table_sinks.values()]
    try:
        await schema.at_startup(_database.startup_timeout)
        startup.announce(app)  # the database mode is known from here on
        await asyncio.gather(*running)
    except DatabaseStartupError as exc:
        log.critical("%s; stopping the worker", exc)
        await app.crash(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("database sinks failed; stopping the worker")
        await app.crash(exc)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
