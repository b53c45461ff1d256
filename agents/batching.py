"""Batches of events from one partition, with Faust's table context pointing into the batch.

Faust's per-event stream machinery costs ~200 µs an event here (../shared/FACTS.md), so agents
take events in batches and hand plain data to pure functions. Two Faust details make that safe:

* Agents run with ``isolated_partitions=True``: one actor per partition, so a batch never mixes
  partitions and every state key written for it belongs to that partition.
* Faust tables choose the changelog partition and the local RocksDB of a write from the
  *current event*, which is unset while a ``take_events`` batch is being handled. We set it to
  the batch's last event for the duration of the batch.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from faust.streams import _current_event


async def partition_batches(
    stream: Any, max_events: int, within: timedelta
) -> AsyncIterator[list[Any]]:
    """Yield lists of Faust events, all from one partition, acknowledged after each batch."""
    try:
        async for events in stream.take_events(max_events, within=within.total_seconds()):
            partitions = {event.message.tp for event in events}
            if len(partitions) != 1:
                raise RuntimeError(
                    f"a batch mixes partitions {partitions}: use isolated_partitions"
                )
            previous = _current_event.get(None)
            _current_event.set(weakref.ref(events[-1]))
            try:
                yield events
            finally:
                _current_event.set(previous)
    except asyncio.CancelledError:
        # Faust cancels a partition's actor when the partition is revoked and would count the
        # cancellation as a crash, restarting the actor until the supervisor gives up and the
        # worker exits. Ending normally lets the actor stop quietly; its batch was not acked.
        return
