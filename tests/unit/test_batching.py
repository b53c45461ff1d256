"""agents/batching.py without Kafka: cutting batches at offset holes, and seeking back safely."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import IllegalStateError

from agents.batching import contiguous, seek_back


@dataclass
class _Message:
    offset: int


@dataclass
class _Event:
    message: _Message


def _events(*offsets: int) -> list[Any]:
    return [_Event(_Message(offset)) for offset in offsets]


def _offsets(events: list[Any]) -> list[int]:
    return [event.message.offset for event in events]


def test_a_new_state_takes_any_first_offset() -> None:
    done, fresh, seek_to = contiguous(_events(7, 8, 9), None)
    assert (_offsets(done), _offsets(fresh), seek_to) == ([], [7, 8, 9], None)


def test_applied_offsets_are_done_and_the_rest_continues_them() -> None:
    done, fresh, seek_to = contiguous(_events(4, 5, 6, 7), 5)
    assert (_offsets(done), _offsets(fresh), seek_to) == ([4, 5], [6, 7], None)


def test_a_hole_cuts_the_batch_and_asks_to_seek_back() -> None:
    done, fresh, seek_to = contiguous(_events(6, 7, 9, 10), 5)
    assert (_offsets(done), _offsets(fresh), seek_to) == ([], [6, 7], 8)


def test_a_batch_starting_after_a_hole_is_left_whole() -> None:
    done, fresh, seek_to = contiguous(_events(9, 10), 5)
    assert (_offsets(done), _offsets(fresh), seek_to) == ([], [], 6)


class _ConsumerThread:
    """Runs calls on a thread of its own, like Faust's AIOKafkaConsumerThread."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.seeks: list[tuple[Any, int, str]] = []

    def seek(self, tp: Any, offset: int) -> None:
        if self.error is not None:
            raise self.error
        self.seeks.append((tp, offset, threading.current_thread().name))

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        result: list[Any] = []

        def run() -> None:
            try:
                result.append(fun(*args))
            except Exception as exc:  # handed back to the caller
                result.append(exc)

        worker = threading.Thread(target=run, name="consumer-thread")
        worker.start()
        await asyncio.to_thread(worker.join)
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]


class _Consumer:
    def __init__(self, thread: _ConsumerThread | None) -> None:
        if thread is not None:
            self._thread = thread
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self.direct_seeks: list[tuple[Any, int]] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.direct_seeks.append((tp, offset))


async def test_seek_back_runs_on_the_consumer_thread_and_rereads_from_the_offset() -> None:
    thread = _ConsumerThread()
    consumer = _Consumer(thread)
    consumer._read_offset["tp"] = 41
    await seek_back(consumer, "tp", 12)
    assert thread.seeks == [("tp", 12, "consumer-thread")]
    assert consumer._read_offset["tp"] == 12
    assert consumer.direct_seeks == []


async def test_seek_back_of_a_revoked_partition_does_nothing() -> None:
    consumer = _Consumer(_ConsumerThread(IllegalStateError("not assigned")))
    consumer._read_offset["tp"] = 41
    await seek_back(consumer, "tp", 12)
    assert consumer._read_offset["tp"] == 41


async def test_seek_back_without_a_consumer_thread_uses_the_consumer() -> None:
    consumer = _Consumer(None)
    await seek_back(consumer, "tp", 3)
    assert consumer.direct_seeks == [("tp", 3)]


async def test_other_seek_errors_are_not_swallowed() -> None:
    consumer = _Consumer(_ConsumerThread(ValueError("Offset must be a positive integer")))
    with pytest.raises(ValueError, match="positive"):
        await seek_back(consumer, "tp", -1)
