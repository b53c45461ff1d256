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

A cancelled actor ends quietly: Faust would otherwise count the cancellation of a revoked
partition's actor as a crash and restart it until its supervisor gives up and the worker exits.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from faust.streams import _current_event

BatchHandler = Callable[[list[Any]], Awaitable[None]]


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
                await handle(events)
            finally:
                _current_event.set(previous)
            for event in events:
                await stream.ack(event)
    except asyncio.CancelledError:
        return
