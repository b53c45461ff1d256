"""web/broker_gate.py with the producer replaced by futures the test resolves: the bounded
wait, refusing at once while Kafka is down, the pending-bytes limit, and the probe that lets
requests in again. tests/integration/test_kafka_outage.py does the same with a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from web.broker_gate import BrokerGate, KafkaUnavailable
from web.kafka_probe import describe_error


class Probe:
    """Answers what ``error`` says (None: reachable) and counts the questions."""

    def __init__(self) -> None:
        self.error: str | None = "Connection refused"
        self.asked = 0

    async def __call__(self) -> str | None:
        self.asked += 1
        return self.error


def gate(probe: Probe, timeout_s: float = 0.2, max_pending: int = 1000) -> BrokerGate:
    return BrokerGate(probe, timeout_s, 2.5, max_pending, probe_every_s=0.01)


def delivered(*results: Any) -> Any:
    async def enqueue() -> Sequence[Awaitable[Any]]:
        futures = []
        for result in results:
            future = asyncio.get_running_loop().create_future()
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
            futures.append(future)
        return futures

    return enqueue


def never_confirmed(handed: list[asyncio.Future[Any]]) -> Any:
    async def enqueue() -> Sequence[Awaitable[Any]]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        handed.append(future)
        return [future]

    return enqueue


async def blocked_enqueue() -> Sequence[Awaitable[Any]]:
    await asyncio.Event().wait()  # like producer.send waiting for metadata that never comes
    return []


async def test_confirmed_events_pass_and_leave_nothing_pending() -> None:
    subject = gate(Probe())
    await subject.publish(10, delivered("meta", "meta"))
    assert subject.accepting and subject.pending_bytes == 0


async def test_an_unconfirmed_request_is_refused_within_the_timeout_and_marks_kafka_down() -> None:
    probe = Probe()
    subject = gate(probe, timeout_s=0.2)
    handed: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as refused:
        await subject.publish(10, never_confirmed(handed))
    assert 0.2 <= time.monotonic() - started < 1.0
    assert refused.value.handed_over is True
    assert refused.value.retry_after_s == 3  # 2.5 s rounded up
    assert "did not confirm the events within 0.2 s" in str(refused.value)
    assert not handed[0].cancelled()  # a late confirmation is not thrown away
    assert not subject.accepting and subject.pending_bytes == 0
    await subject.close()


async def test_an_enqueue_that_blocks_is_cut_at_the_timeout() -> None:
    subject = gate(Probe(), timeout_s=0.1)
    with pytest.raises(KafkaUnavailable):
        await asyncio.wait_for(subject.publish(10, blocked_enqueue), 2)
    assert not subject.accepting
    await subject.close()


async def test_while_down_requests_are_refused_at_once_without_touching_the_producer() -> None:
    probe = Probe()
    subject = gate(probe)
    with pytest.raises(KafkaUnavailable):
        await subject.publish(1, delivered(KafkaConnectionError("Connection refused")))
    touched: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as refused:
        await subject.publish(1, never_confirmed(touched))
    assert time.monotonic() - started < 0.05
    assert touched == [] and refused.value.handed_over is False
    assert subject.status()["refused_since_down"] == 1
    assert subject.status()["error"] == "KafkaConnectionError: Connection refused"
    await subject.close()


async def test_the_probe_lets_requests_in_once_kafka_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = Probe()
    subject = gate(probe)
    with pytest.raises(KafkaUnavailable):
        await subject.publish(1, delivered(KafkaConnectionError("Connection refused")))
    while probe.asked < 3:  # still down: the probe keeps asking
        await asyncio.sleep(0.01)
    assert subject.status()["error"] == "Connection refused"
    probe.error = None
    async with asyncio.timeout(2):
        while not subject.accepting:
            await asyncio.sleep(0.01)
    await subject.publish(1, delivered("meta"))
    messages = [r.getMessage() for r in caplog.records if r.name == "web.broker_gate"]
    assert len(messages) == 2
    assert messages[0].startswith("Kafka unreachable for HTTP ingestion")
    assert messages[1].startswith("Kafka reachable again after")


async def test_pending_bytes_are_bounded() -> None:
    subject = gate(Probe(), timeout_s=5, max_pending=100)
    handed: list[asyncio.Future[Any]] = []
    first = asyncio.ensure_future(subject.publish(80, never_confirmed(handed)))
    while not handed:
        await asyncio.sleep(0)
    assert subject.pending_bytes == 80
    with pytest.raises(KafkaUnavailable, match="80 bytes of events already wait for Kafka"):
        await subject.publish(30, delivered("meta"))
    await subject.publish(20, delivered("meta"))  # fits
    handed[0].set_result("meta")
    await first
    assert subject.pending_bytes == 0 and subject.accepting


def test_error_descriptions_name_the_class_once() -> None:
    assert describe_error(KafkaConnectionError("Connection refused")) == (
        "KafkaConnectionError: Connection refused"
    )
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ConnectionRefusedError(111, "refused")) == (
        "ConnectionRefusedError: [Errno 111] refused"
    )
