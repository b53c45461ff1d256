"""Produce to and read back from the real broker in integration tests, without sleeping.

Reading an output topic "until it looks right" proves that something arrived, not that nothing
else did. To assert exact contents, tests put a **barrier** behind the events under test:

1. ``barrier()`` produces one sentinel event to *every* partition of the input topic (their
   user_ids are chosen so the default partitioner spreads them over all partitions) and waits
   until all of them come out of the output topic. A partition's events are processed in
   offset order, so everything produced to the input topic before the barrier has been
   processed.
2. An agent gathers the acknowledgements of a whole batch, while the first sentinel may be in
   the same batch as the last events under test, so their other outputs (dead letters, events
   re-produced under another key) may still be in flight. A second round of sentinels, produced
   only after the first round came out, is necessarily in a later batch: when it comes out, the
   earlier batch's outputs are all acknowledged. Every further round covers one more hop (an
   event re-produced to the input topic by the agent and then processed there); the default of
   three rounds covers the tracker's re-keying.
3. Then ``read_to_end`` reads each topic of interest up to its end offsets, fetched *after* the
   barrier, and the test asserts on exactly what is there, sentinels left out
   (``is_sentinel``).

``TopicReader`` keeps one consumer open (no group, nothing committed) and accumulates records,
so a test can read a topic incrementally from a snapshot of its end offsets.

Every client connects with the security settings of the configuration (``sources.kafka``,
app/kafka_security.py), like the workers the tests start: the suite can run against a secured
cluster by exporting the same ``ANALYTICS__SOURCES__KAFKA__...`` variables.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from confluent_kafka.admin import AdminClient

from analytics.timeutil import format_ts
from app import faust_compat
from app.kafka_security import aiokafka_security, librdkafka_config
from app.settings import load_settings


@cache
def security() -> dict[str, Any]:
    """The clients' security options, from the configuration (as the workers read it)."""
    return aiokafka_security(load_settings())


SENTINEL_PREFIX = "__sentinel-"
SENTINEL_ACTION = "sentinel"


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record; ``timestamp`` is epoch milliseconds."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: int

    def json(self) -> Any:
        """The value decoded as JSON."""
        assert self.value is not None, f"record {self.partition}/{self.offset} has no value"
        return orjson.loads(self.value)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to produce, when the key and value alone are not enough."""

    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Produced:
    """Where the broker put a produced message."""

    partition: int
    offset: int
    timestamp: int


class ReadTimeout(AssertionError):
    """The records wanted did not arrive in time; the message shows what did."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default (murmur2) partitioner of aiokafka and Faust picks for a key."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def summarize(records: Sequence[Record], last: int = 10) -> str:
    """A short description of records for error messages."""
    shown = "\n".join(
        f"  p{r.partition}@{r.offset} key={r.key!r} value={(r.value or b'')[:300]!r}"
        for r in records[-last:]
    )
    return f"{len(records)} records, the last {min(last, len(records))}:\n{shown}"


async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes] | Outgoing],
    *,
    linger_ms: int = 0,
) -> list[Produced]:
    """Produce messages in order and wait until the broker has acknowledged every one."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", **security()
    )
    await producer.start()
    try:
        futures = []
        for message in messages:
            out = message if isinstance(message, Outgoing) else Outgoing(*message)
            futures.append(
                await producer.send(
                    topic,
                    out.value,
                    key=out.key,
                    partition=out.partition,
                    timestamp_ms=out.timestamp_ms,
                )
            )
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Produced(m.partition, m.offset, m.timestamp) for m in metadata]


class TopicReader:
    """An open consumer over every partition of one topic, accumulating what it reads.

    ``start_offsets`` maps partition -> first offset to read; partitions not named (or all,
    when it is None) are read from the beginning, or, with ``from_end``, from their end offsets
    at start (only what is produced later is read).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start_offsets: Mapping[int, int] | None = None,
        *,
        from_end: bool = False,
        partitions_timeout: float = 30,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.start_offsets = dict(start_offsets or {})
        self.from_end = from_end
        self.partitions_timeout = partitions_timeout
        self.records: list[Record] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> TopicReader:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **security(),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        try:
            self._tps = await _topic_partitions(consumer, self.topic, self.partitions_timeout)
            consumer.assign(self._tps)
            for tp in self._tps:
                start = self.start_offsets.get(tp.partition)
                if start is not None:
                    consumer.seek(tp, start)
                elif self.from_end:
                    await consumer.seek_to_end(tp)
                    await consumer.position(tp)  # resolve now, not at the first fetch
                else:
                    await consumer.seek_to_beginning(tp)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "TopicReader not started"
        return self._consumer

    @property
    def partitions(self) -> list[int]:
        return [tp.partition for tp in self._tps]

    async def poll(self, timeout_ms: int = 200) -> list[Record]:
        """Fetch what is available (waiting at most ``timeout_ms``) and return the new records."""
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        new = [
            Record(r.topic, r.key, r.value, r.partition, r.offset, r.timestamp)
            for records in batches.values()
            for r in records
        ]
        self.records.extend(new)
        return new

    async def read_until(
        self, predicate: Callable[[list[Record]], bool], timeout: float
    ) -> list[Record]:
        """Poll until ``predicate(all records read so far)`` holds; ReadTimeout at the deadline."""
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReadTimeout(
                    f"{self.topic}: condition not met after {timeout:.1f} s; "
                    f"{summarize(self.records)}"
                )
            await self.poll(timeout_ms=max(1, min(200, int(remaining * 1000))))
        return self.records

    async def end_offsets(self) -> dict[int, int]:
        ends = await self.consumer.end_offsets(self._tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def read_to_end(self, timeout: float = 30) -> list[Record]:
        """Read every partition up to its end offset as of this call, and return all records."""
        ends = await self.consumer.end_offsets(self._tps)
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await self.consumer.position(tp) for tp in self._tps}
            if all(positions[tp] >= ends[tp] for tp in self._tps):
                return self.records
            if time.monotonic() >= deadline:
                behind = {
                    tp.partition: (positions[tp], ends[tp])
                    for tp in self._tps
                    if positions[tp] < ends[tp]
                }
                raise ReadTimeout(
                    f"{self.topic}: end offsets not reached after {timeout:.1f} s "
                    f"(partition: (position, end) {behind}); {summarize(self.records)}"
                )
            await self.poll()


async def _topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float
) -> list[TopicPartition]:
    """The topic's partitions, waiting (polling metadata) until the topic exists.

    Call it before assigning partitions: from then on the client's metadata only covers the
    topics assigned.
    """
    deadline = time.monotonic() + timeout
    while True:
        await faust_compat.refresh_consumer_metadata(consumer)
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() >= deadline:
            raise ReadTimeout(f"topic {topic!r} does not exist after {timeout:.0f} s")
        await asyncio.sleep(0.2)  # polling interval, bounded by the deadline above


async def partition_count(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """How many partitions the topic has, waiting until it exists."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **security())
    await consumer.start()
    try:
        return len(await _topic_partitions(consumer, topic, timeout))
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset (the offset the next message will get) of every partition."""
    async with TopicReader(bootstrap, topic) as reader:
        return await reader.end_offsets()


async def read_until(
    bootstrap: str,
    topic: str,
    predicate: Callable[[list[Record]], bool],
    timeout: float,
    *,
    start_offsets: Mapping[int, int] | None = None,
) -> list[Record]:
    """Read from the beginning (or ``start_offsets``) until ``predicate(records)`` holds."""
    async with TopicReader(bootstrap, topic, start_offsets) as reader:
        return await reader.read_until(predicate, timeout)


async def read_to_end(
    bootstrap: str,
    topic: str,
    timeout: float = 30,
    *,
    start_offsets: Mapping[int, int] | None = None,
) -> list[Record]:
    """Everything in the topic (from ``start_offsets``) up to its end offsets as of now."""
    async with TopicReader(bootstrap, topic, start_offsets) as reader:
        return await reader.read_to_end(timeout)


async def read_all_settled(
    bootstrap: str,
    topic: str,
    expected_count: int,
    timeout: float,
    *,
    start_offsets: Mapping[int, int] | None = None,
    keep: Callable[[Record], bool] = lambda record: True,
) -> list[Record]:
    """The records ``keep`` selects, once at least ``expected_count`` of them have arrived and
    the topic has been read to its end offsets as of that moment.

    Use it after ``barrier()``: then the end offsets cover every output of the events under
    test, and the caller can assert the exact contents (``len(result) == expected_count``...).
    """
    async with TopicReader(bootstrap, topic, start_offsets) as reader:
        await reader.read_until(
            lambda records: sum(1 for r in records if keep(r)) >= expected_count, timeout
        )
        await reader.read_to_end(timeout)
        return [r for r in reader.records if keep(r)]


# --------------------------------------------------------------------------- barrier


def sentinel_event(user_id: str, event_id: str) -> dict[str, Any]:
    """The default sentinel: a minimal valid event, timestamped at ingestion."""
    return {"event_id": event_id, "user_id": user_id, "action": SENTINEL_ACTION}


def delete_topics(bootstrap: str, markers: list[str]) -> None:
    """Delete every topic whose name contains one of ``markers`` (a run's topic prefix, its
    Faust app id, which its changelogs carry). Topics left behind by every test and bench
    made each client's metadata requests slower: a worker decodes the whole cluster's
    metadata on its event loop (on a broker with 1,200 topics, stalls of up to 400 ms)."""
    security = {
        k: v for k, v in librdkafka_config(load_settings()).items() if k != "bootstrap.servers"
    }
    admin = AdminClient({**security, "bootstrap.servers": bootstrap})
    names = [
        t
        for t in admin.list_topics(timeout=30).topics
        if not t.startswith("__") and any(m in t for m in markers)  # never the broker's own
    ]
    for future in admin.delete_topics(names, operation_timeout=60).values() if names else []:
        try:
            future.result(60)
        except Exception as exc:  # a topic already gone: nothing to clean
            print(f"topic not deleted: {exc}", file=sys.stderr)


def closing_messages(partitions: int, ts_ms: int) -> list[tuple[bytes | None, bytes]]:
    """One ``closing`` event per partition at ``ts_ms``: far later in event time than a test's
    traffic, it moves every partition's watermark past it, so its figures become final."""
    messages: list[tuple[bytes | None, bytes]] = []
    for partition, user_id in sorted(sentinel_user_ids(partitions, "closing").items()):
        closing = {
            "event_id": f"closing-{partition}",
            "user_id": user_id,
            "action": "closing",
            "timestamp": format_ts(ts_ms),
        }
        messages.append((user_id.encode(), orjson.dumps(closing)))
    return messages


def sentinel_user_ids(partitions: int, tag: str | None = None) -> dict[int, str]:
    """partition -> a sentinel user_id that the default partitioner sends there."""
    tag = tag or uuid.uuid4().hex[:8]
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < partitions:
        user_id = f"{SENTINEL_PREFIX}{tag}-{n}"
        chosen.setdefault(partition_for(user_id.encode(), partitions), user_id)
        n += 1
    return chosen


def _sentinel_user(record: Record) -> str | None:
    """The sentinel user_id of a record (from its key or its JSON value), else None."""
    if record.key is not None and record.key.startswith(SENTINEL_PREFIX.encode()):
        return record.key.decode("utf-8", "replace")
    if record.value is None or SENTINEL_PREFIX.encode() not in record.value:
        return None
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    user_id = value.get("user_id") if isinstance(value, dict) else None
    return user_id if isinstance(user_id, str) and user_id.startswith(SENTINEL_PREFIX) else None


def is_sentinel(record: Record) -> bool:
    """True for the output of a barrier's sentinel event (its key or user_id is a sentinel's)."""
    return _sentinel_user(record) is not None


async def barrier(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    *,
    rounds: int = 3,
    timeout: float = 60,
    make_event: Callable[[str, str], dict[str, Any]] = sentinel_event,
) -> None:
    """Return once everything produced to ``input_topic`` before the call has been processed
    and all its outputs acknowledged (see the module docstring). The sentinels themselves end
    up in ``output_topic``; ``is_sentinel`` tells them apart.
    """
    deadline = time.monotonic() + timeout
    partitions = await partition_count(bootstrap, input_topic, timeout)
    async with TopicReader(bootstrap, output_topic, from_end=True) as reader:
        for round_number in range(rounds):
            users = sentinel_user_ids(partitions, f"{uuid.uuid4().hex[:8]}r{round_number}")
            wanted = set(users.values())
            messages = [
                (user_id.encode(), orjson.dumps(make_event(user_id, f"{user_id}-e")))
                for user_id in wanted
            ]
            await produce(bootstrap, input_topic, messages)

            def arrived(records: list[Record], wanted: set[str] = wanted) -> bool:
                return wanted <= {_sentinel_user(r) for r in records}

            try:
                await reader.read_until(arrived, max(deadline - time.monotonic(), 0.001))
            except ReadTimeout as exc:
                missing = wanted - {_sentinel_user(r) for r in reader.records}
                raise ReadTimeout(
                    f"barrier round {round_number + 1}/{rounds}: sentinels {sorted(missing)} "
                    f"did not reach {output_topic} within {timeout} s"
                ) from exc
