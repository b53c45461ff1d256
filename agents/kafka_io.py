"""Kafka input and output of the hot path, through librdkafka (confluent-kafka).

Faust's stream path costs about 200 µs a message here (a task per message in its consumer's
drain loop, an Event and a queue hand-over each), and aiokafka's producer about 26 µs a
message of Python. librdkafka fetches, decodes and batches in its own threads: one Python
call hands over thousands of consumed messages, and a produce call costs about 2 µs
(bench/compare.py). Faust still owns the consumer group, the tables and their recovery; these
clients only move the messages of the partitions Faust assigned (agents/behavior_tracker.py).

Output records are acknowledged per ``Delivery``: the records of one step of one round are
sent with it, and it is done once the broker has acknowledged every one (or holds the
errors it refused them with). Acknowledgements arrive while Python goes on computing, through
``Outbox.poll``. The producer is idempotent, so retries inside librdkafka neither duplicate
nor reorder records of a partition; a broker that is down leaves a delivery pending (the
hot path waits, and says so), never drops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition

log = logging.getLogger(__name__)
SETTLE_WARN_S = 10.0  # say so when the broker takes longer than this to acknowledge
METADATA_REFRESH_MS = 10_000
"""How often librdkafka re-reads the cluster's metadata (its default is 5 minutes). After a
broker restart librdkafka may keep a partition on no broker ("new leader 1 not found in
cache") until its next full refresh: the soak (bench/soak.py) saw a worker's records wait
four minutes for it. A metadata request every 10 s bounds that wait and costs nothing."""


class DeliveryFailed(RuntimeError):
    """The broker refused records; ``errors`` holds (topic, partition, error) for each."""

    def __init__(self, errors: list[tuple[str, int, str]]) -> None:
        self.errors = errors
        shown = "; ".join(f"{t}[{p}]: {e}" for t, p, e in errors[:5])
        super().__init__(f"{len(errors)} records not delivered: {shown}")


class Delivery:
    """Records handed to the producer together: done when the broker has taken them all."""

    __slots__ = ("failed", "last_offset", "pending", "sent_at")

    def __init__(self) -> None:
        self.pending = 0
        self.failed: list[tuple[str, int, str]] = []
        self.last_offset = -1
        """The highest offset the broker gave one of them."""
        self.sent_at = time.monotonic()

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery report for one of the records."""
        self.pending -= 1
        if error is not None:
            self.failed.append((message.topic() or "", message.partition() or 0, str(error)))
            return
        offset = message.offset() or 0
        if offset > self.last_offset:
            self.last_offset = offset

    @property
    def done(self) -> bool:
        return self.pending <= 0

    def check(self) -> None:
        """Raise DeliveryFailed if the broker refused any record."""
        if self.failed:
            raise DeliveryFailed(self.failed)


class Outbox:
    """An idempotent librdkafka producer; acknowledgements arrive through ``poll``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "message.max.bytes": 16 * 1024 * 1024,
                "message.timeout.ms": 0,  # never give up on a record: wait for the broker
                "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                "partitioner": "murmur2_random",  # Kafka's default for keyed records
                **config,
            }
        )

    def send(
        self,
        delivery: Delivery,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        """Queue one record as part of ``delivery``; ``partition`` None lets the key choose
        (murmur2, as Kafka); ``timestamp_ms`` 0 stamps it with the time of sending. A record
        librdkafka refuses at once (too large, say) counts as refused by the broker."""
        produce = self._producer.produce
        report = delivery.delivered
        delivery.pending += 1
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, on_delivery=report, timestamp=timestamp_ms)
                else:
                    produce(
                        topic, value, key, partition, on_delivery=report, timestamp=timestamp_ms
                    )
                return
            except BufferError:  # librdkafka's queue is full: let it drain
                self._producer.poll(0.05)
            except KafkaException as exc:
                delivery.pending -= 1
                delivery.failed.append((topic, -1 if partition is None else partition, str(exc)))
                return

    def poll(self) -> None:
        """Take the acknowledgements that have arrived (their deliveries count them)."""
        self._producer.poll(0)

    async def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for acknowledgements, in a thread: the event loop (web,
        heartbeats) runs on."""
        await asyncio.to_thread(self._producer.poll, timeout_s)

    async def settle(self, deliveries: Sequence[Delivery], poll_s: float = 0.005) -> None:
        """Wait until the broker has answered for every record of ``deliveries`` (however
        long a broker that is away takes), then raise DeliveryFailed if it refused any."""
        started = time.monotonic()
        warned = False
        while True:
            self.poll()
            if all(delivery.done for delivery in deliveries):
                break
            if not warned and time.monotonic() - started > SETTLE_WARN_S:
                log.warning("waiting for the broker to acknowledge %d deliveries", len(deliveries))
                warned = True
            await self.wait(poll_s)
        for delivery in deliveries:
            delivery.check()

    def close(self) -> None:
        self._producer.flush(5.0)


class InputReader:
    """A librdkafka consumer of assigned partitions (no group membership: Faust's group
    assigns them; positions come from the state). Offsets are committed under
    ``group_id`` only so that lag tools see progress."""

    def __init__(self, config: dict[str, Any], group_id: str) -> None:
        self._consumer = Consumer(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": 16_384,
                "fetch.wait.max.ms": 10,
                "enable.partition.eof": False,
                "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                **config,
            }
        )

    def assign(self, topic: str, positions: dict[int, int | None]) -> None:
        """Start reading ``topic`` partitions at the given offsets (None: the beginning)."""
        self._consumer.incremental_assign(
            [
                KafkaTopicPartition(topic, partition, OFFSET_BEGINNING if at is None else at)
                for partition, at in positions.items()
            ]
        )

    def unassign(self, topic: str, partitions: Sequence[int]) -> None:
        if partitions:
            self._consumer.incremental_unassign(
                [KafkaTopicPartition(topic, partition) for partition in partitions]
            )

    async def poll(self, max_messages: int, wait_s: float) -> list[Message]:
        """What is fetched already, up to ``max_messages``; when nothing is, wait up to
        ``wait_s`` (in a thread) for the first message and take what came with it."""
        consumer = self._consumer
        messages: list[Message] = consumer.consume(max_messages, 0)
        if not messages:
            messages = await asyncio.to_thread(consumer.consume, 1, wait_s)
            if messages:
                messages += consumer.consume(max_messages - 1, 0)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif not error.retriable() and error.fatal():
                raise RuntimeError(f"input consumer failed: {error}")
            else:
                log.warning("input consumer: %s", error)
        return good

    def seek(self, topic: str, partition: int, at: int | None) -> None:
        """Read ``partition`` again from offset ``at`` (None: the beginning)."""
        self._consumer.seek(
            KafkaTopicPartition(topic, partition, OFFSET_BEGINNING if at is None else at)
        )

    def commit(self, topic: str, positions: dict[int, int]) -> None:
        """Record the next offset to read per partition (for lag monitoring only)."""
        if positions:
            self._consumer.commit(
                offsets=[KafkaTopicPartition(topic, p, at) for p, at in positions.items()],
                asynchronous=True,
            )

    def close(self) -> None:
        self._consumer.close()
