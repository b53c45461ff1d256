"""Drive an agent one batch of events at a time, one partition at a time, safely.

Faust's per-event stream machinery costs ~200 µs an event here (../shared/FACTS.md), so agents
take events in batches and hand plain data to pure functions. Three Faust details shape this:

* Agents run with ``isolated_partitions=True``: one actor per partition, so a batch never mixes
  partitions and every state key written for it belongs to that partition.
* Faust tables choose the changelog partition and the local RocksDB of a write from the
  *current event*, which is unset while a batch is being handled. We set it to the batch's
  last event for the duration of the batch.
* ``take_events`` acknowledges a batch in a ``finally`` block, even when the handler was
  interrupted half-way (a revoked partition cancels its actor), and an acknowledged offset is
  committed: the rest of the batch would be lost. We take with ``noack_take`` and acknowledge
  only after the handler has returned, so an interrupted batch is delivered again.
* Table writes go to the changelog through a buffer. If a partition is revoked and assigned
  again while a write still sits there, recovery restores the older value from the changelog
  and the committed offset may already be past the batch: its update would be lost. So the
  producer is flushed (state durable in the changelog) before a batch is acknowledged.

* After a rebalance, messages fetched for an earlier actor of the partition can be missing
  from the new actor's stream while later ones arrive: offsets jump. State records the last
  offset it applied, so a batch is cut where its offsets stop being contiguous with that, the
  partition is sought back, and the missing messages are delivered again (``contiguous``).

A cancelled actor ends quietly: Faust would otherwise count the cancellation of a revoked
partition's actor as a crash and restart it until its supervisor gives up and the worker exits.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.streams import _current_event


@dataclass(frozen=True, slots=True)
class Handled:
    """What a handler did with a batch: the events to acknowledge, and where to seek back to
    when the batch had a gap (None: no gap)."""

    ack: list[Any]
    seek_to: int | None = None


BatchHandler = Callable[[list[Any]], Awaitable[Handled | None]]


def contiguous(events: list[Any], applied: int | None) -> tuple[list[Any], list[Any], int | None]:
    """Split a batch into (already applied, fresh, seek_to).

    ``applied`` is the last offset the state includes (None: the state is new and any offset
    may come first). Fresh events continue it without a hole; at the first hole the rest of the
    batch is left for re-delivery from ``seek_to``."""
    done: list[Any] = []
    fresh: list[Any] = []
    expected = None if applied is None else applied + 1
    for event in events:
        offset = event.message.offset
        if applied is not None and offset <= applied:
            done.append(event)
            continue
        if expected is not None and offset != expected:
            return done, fresh, expected
        fresh.append(event)
        expected = offset + 1
    return done, fresh, None


async def run_in_batches(
    stream: Any, max_events: int, within: timedelta, handle: BatchHandler
) -> None:
    """Call ``handle(events)`` for each batch of one partition; acknowledge after it returns."""
    try:
        async for events in stream.noack_take(max_events, within=within.total_seconds()):
            partitions = {event.message.tp for event in events}
            if len(partitions) != 1:
                raise RuntimeError(
                    f"a batch mixes partitions {partitions}: use isolated_partitions"
                )
            previous = _current_event.get(None)
            _current_event.set(weakref.ref(events[-1]))
            try:
                handled = await handle(events)
            finally:
                _current_event.set(previous)
            await stream.app.producer.flush()
            for event in events if handled is None else handled.ack:
                await stream.ack(event)
            if handled is not None and handled.seek_to is not None:
                await seek_back(stream.app.consumer, events[0].message.tp, handled.seek_to)
    except asyncio.CancelledError:
        return


async def seek_back(consumer: Any, tp: Any, offset: int) -> None:
    """``Consumer.seek``, with the part that touches aiokafka run on the consumer's thread.

    Faust's threaded consumer calls aiokafka's ``seek`` from the caller's thread; it deletes
    the partition's fetched records while the consumer thread may be iterating them, and the
    worker crashed with a KeyError in aiokafka's ``fetched_records`` (seen right after a worker
    was killed, when several partitions sought back at once). A partition revoked meanwhile
    needs no seek: its next owner starts from the committed offset."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:  # a consumer without its own thread
        await consumer.seek(tp, offset)
        return
    try:
        await thread.call_thread(thread.seek, tp, offset)
    except IllegalStateError:
        return
    # what Consumer.seek does after its fetcher seek: messages from ``offset`` on are read again
    consumer._read_offset[tp] = offset or None
