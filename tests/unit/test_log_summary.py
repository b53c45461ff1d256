"""app/log_summary.py: library records said once per interval and counted, the project's own
records untouched; app/kafka_backoff.py: the waits between failed metadata refreshes, and a
real aiokafka client against a closed port refreshing a few times, not thousands."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.structs import BrokerMetadata

from app import kafka_backoff
from app.log_summary import RepeatSummary
from tests.worker_process import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def logs() -> Iterator[tuple[Collect, Collect, RepeatSummary, Clock]]:
    clock = Clock()
    summary = RepeatSummary(60, clock=clock)
    first, second = Collect(), Collect()
    root = logging.getLogger()
    for handler in (first, second):
        handler.addFilter(summary)
        root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "agents", "aiohttp")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield first, second, summary, clock
    finally:
        for handler in (first, second):
            root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_repeated_library_record_passes_once_then_is_counted(
    logs: tuple[Collect, Collect, RepeatSummary, Clock],
) -> None:
    first, second, summary, clock = logs
    client = logging.getLogger("aiokafka.client")
    for n in range(1000):
        client.error("Unable connect to node with id %s: %s", 1, f"refused {n}")
    client.error("Unable to update metadata from %s", [1])
    assert first.lines == second.lines  # one decision per record, whatever the handlers
    assert first.lines == [
        "aiokafka.client: Unable connect to node with id 1: refused 0",
        "aiokafka.client: Unable to update metadata from [1]",
    ]
    clock.now += 61
    assert summary.flush() == 1
    assert first.lines[-1] == (
        'app.log_summary: aiokafka.client: 999 more like "Unable connect to node with id %s: %s"'
        " in the last 61 s"
    )
    client.error("Unable connect to node with id %s: %s", 1, "again")  # a new interval
    assert first.lines[-1] == "aiokafka.client: Unable connect to node with id 1: again"


def test_the_count_comes_with_the_next_record_after_the_interval(
    logs: tuple[Collect, Collect, RepeatSummary, Clock],
) -> None:
    first, _, _, clock = logs
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for _ in range(5):
        fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    clock.now += 60
    fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    assert first.lines[-2:] == [
        'app.log_summary: aiokafka.consumer.fetcher: 4 more like "Failed fetch messages from '
        '%s: %s" in the last 60 s',
        "aiokafka.consumer.fetcher: Failed fetch messages from 1: NodeNotReadyError",
    ]


def test_requests_aiohttp_cannot_parse_are_logged_once_then_counted(
    logs: tuple[Collect, Collect, RepeatSummary, Clock],
) -> None:
    first, *_ = logs
    for n in range(50):
        logging.getLogger("aiohttp.server").error("Error handling request from %s", f"10.0.0.{n}")
    logging.getLogger("aiohttp.access").info("%s %s", "GET", "/health")  # access lines pass
    logging.getLogger("aiohttp.access").info("%s %s", "GET", "/health")
    assert first.lines == [
        "aiohttp.server: Error handling request from 10.0.0.0",
        "aiohttp.access: GET /health",
        "aiohttp.access: GET /health",
    ]


def test_the_projects_own_records_are_never_summarised(
    logs: tuple[Collect, Collect, RepeatSummary, Clock],
) -> None:
    first, *_ = logs
    for n in range(3):
        logging.getLogger("sinks.sink").warning("sink %s degraded", n)
    assert len(first.lines) == 3


def test_the_backoff_doubles_up_to_its_cap() -> None:
    waits = [kafka_backoff.backoff_s(n) for n in range(1, 8)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def test_a_client_whose_broker_is_gone_refreshes_with_pauses() -> None:
    """Forced refreshes (what the producer's sender asks for on every turn) towards a port
    nothing listens on: without the backoff this loop makes thousands of attempts a second."""
    kafka_backoff.install()
    port = free_port()
    client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}")
    attempts = 0
    original = client._get_conn

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal attempts
        attempts += 1
        return await original(*args, **kwargs)

    client._get_conn = counted
    # as if the broker had been up: the client knows it from earlier metadata
    client.cluster._brokers = {1: BrokerMetadata(1, "127.0.0.1", port, None)}
    client._sync_task = asyncio.ensure_future(client._md_synchronizer())
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(client.force_metadata_update(), 3)
    finally:
        await client.close()
    assert 3 <= attempts <= 8, attempts  # 0.1 + 0.2 + 0.4 + 0.8 s of pauses fill 1.5 s
