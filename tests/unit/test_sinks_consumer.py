"""sinks/consumer.py with Kafka and the database mocked: batches (size or flush interval),
offsets committed only after the write, dead letters for what cannot be written, and a batch
of a partition lost to a rebalance left to its new owner."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from analytics.traffic import page_rows
from app.settings import get_settings
from sinks import consumer as sink_consumers
from sinks.consumer import DeadLetterTopic, SinkConsumer
from sinks.schema import PAGE_VIEW_STATS, Rejected, TableSpec
from sinks.writers import WriteResult

TOPIC = "t-page-view-stats"
T0 = 1_767_225_600_000


@dataclass
class Message:
    """The fields of an aiokafka ConsumerRecord the sinks read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def page(n: int) -> bytes:
    (row,) = page_rows(T0, 60_000, {f"/p{n}": [1, 1, 10]})
    return orjson.dumps(row)


class FakeConsumer:
    def __init__(self, fetches: Sequence[dict[TopicPartition, list[Message]]]) -> None:
        self.fetches = list(fetches)
        self.calls: list[tuple[int, int]] = []
        self.owned = {TopicPartition(TOPIC, p) for p in range(4)}
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail_commit = False

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Message]]:
        self.calls.append((timeout_ms, max_records))
        if self.fetches:
            return self.fetches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)  # an idle topic: the timeout passes
        return {}

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail_commit:
            raise CommitFailedError("rebalanced")
        self.commits.append(dict(offsets))


def messages(partition: int, offsets: range) -> list[Message]:
    return [Message(TOPIC, partition, o, b"k", page(o)) for o in offsets]


async def test_a_batch_is_full_at_max_records() -> None:
    consumer = FakeConsumer(
        [
            {TopicPartition(TOPIC, 0): messages(0, range(0, 60))},
            {TopicPartition(TOPIC, 1): messages(1, range(0, 40))},
        ]
    )
    batch = await sink_consumers.take_batch(consumer, 100, within_s=5)
    assert len(batch) == 100
    assert consumer.calls[1][1] == 40  # asks only for what still fits


async def test_a_batch_is_flushed_after_the_interval_from_its_first_record() -> None:
    consumer = FakeConsumer([{TopicPartition(TOPIC, 0): messages(0, range(3))}])
    batch = await sink_consumers.take_batch(consumer, 100, within_s=0.05)
    assert [m.offset for m in batch] == [0, 1, 2]


async def test_an_idle_topic_gives_an_empty_batch() -> None:
    assert await sink_consumers.take_batch(FakeConsumer([]), 100, within_s=0.01) == []


def test_offsets_to_commit_are_one_past_each_partitions_last() -> None:
    batch = messages(0, range(5, 9)) + messages(2, range(0, 2))
    assert sink_consumers.next_offsets(batch) == {
        TopicPartition(TOPIC, 0): 9,
        TopicPartition(TOPIC, 2): 2,
    }


class FakeSink:
    def __init__(self, rejected: Sequence[Rejected] = ()) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.rejected = list(rejected)

    async def write(self, batch: Sequence[Mapping[str, Any]]) -> WriteResult:
        self.batches.append([dict(record) for record in batch])
        return WriteResult(written=len(batch), rejected=self.rejected)


def sink_consumer(
    fake: FakeSink, published: list[Any], spec: TableSpec = PAGE_VIEW_STATS, topic: str = TOPIC
) -> SinkConsumer:
    """A sink of ``spec`` writing with ``fake``, its dead letters sent into ``published``."""

    async def publish(records: list[Any]) -> int:
        published.extend(records)
        return len(records)

    dead_letters = DeadLetterTopic("t-sink-dlq", publish)
    return SinkConsumer(spec, topic, fake, "g-sink", get_settings(), dead_letters)


async def test_offsets_are_committed_after_the_write(published: list[Any]) -> None:
    consumer = FakeConsumer([])
    fake = FakeSink()
    batch = messages(0, range(3)) + messages(1, range(7, 9))
    await sink_consumer(fake, published).handle(consumer, batch)
    assert len(fake.batches) == 1 and len(fake.batches[0]) == 5
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 9}]
    assert published == []


async def test_what_cannot_be_written_goes_to_the_dead_letter_topic(
    published: list[Any],
) -> None:
    consumer = FakeConsumer([])
    fake = FakeSink(rejected=[Rejected(1, "page_view_stats: CheckViolation: views", "23514")])
    batch = messages(0, range(3))
    batch.insert(1, Message(TOPIC, 0, 99, None, b"{not json"))
    await sink_consumer(fake, published).handle(consumer, batch)
    assert len(fake.batches[0]) == 3  # the value that is not JSON never reaches the writer
    letters = [value for _, _, value, _ in published]
    assert [(d["offset"], d["sqlstate"]) for d in letters] == [(99, None), (1, "23514")]
    assert letters[0]["value"] == "{not json" and "not JSON" in letters[0]["error"]
    assert letters[1]["value"] == orjson.loads(page(1)) and letters[1]["table"] == "page_view_stats"
    assert all(topic.endswith("sink-dlq") for topic, _, _, _ in published)
    # dead letters do not hold the partition: its offsets are committed with the batch
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 100}]


async def test_a_partition_lost_to_a_rebalance_is_left_to_its_new_owner(
    published: list[Any],
) -> None:
    consumer = FakeConsumer([])
    consumer.owned = {TopicPartition(TOPIC, 1)}
    fake = FakeSink()
    await sink_consumer(fake, published).handle(
        consumer, messages(0, range(3)) + messages(1, range(2))
    )
    assert len(fake.batches[0]) == 2
    assert consumer.commits == [{TopicPartition(TOPIC, 1): 2}]


async def test_a_failed_commit_only_means_the_records_are_read_again(
    published: list[Any],
) -> None:
    consumer = FakeConsumer([])
    consumer.fail_commit = True
    await sink_consumer(FakeSink(), published).handle(consumer, messages(0, range(3)))
    assert consumer.commits == []


class ErasingSink(FakeSink):
    """Records writes and erasures in the order they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Any] = []

    async def write(self, batch: Sequence[Mapping[str, Any]]) -> WriteResult:
        self.log.append(("write", [dict(record)["page"] for record in batch]))
        return await super().write(batch)

    async def erase(self, users: Sequence[str]) -> int:
        self.log.append(("erase", list(users)))
        return 0


async def test_a_tombstone_erases_its_user_between_the_records_before_and_after(
    published: list[Any],
) -> None:
    """sinks/erasure.py: rows written before the tombstone are deleted with it, a later
    one (the user back after the erasure) is written after the deletion; nothing is dead."""
    consumer = FakeConsumer([])
    fake = ErasingSink()

    async def publish(records: list[Any]) -> int:
        published.extend(records)
        return len(records)

    dead_letters = DeadLetterTopic("t-sink-dlq", publish)
    sink = SinkConsumer(
        PAGE_VIEW_STATS, TOPIC, fake, "g", get_settings(), dead_letters, eraser=fake
    )
    batch = [*messages(0, range(2)), Message(TOPIC, 0, 2, b"k", None), *messages(0, range(3, 4))]
    await sink.handle(consumer, batch)
    assert fake.log == [("write", ["/p0", "/p1"]), ("erase", ["k"]), ("write", ["/p3"])]
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]
    assert published == []
