"""Batch writes to a Faust table: local store and changelog together, without Faust's buffer.

A plain ``table[key] = value`` queues one changelog message in Faust's producer buffer, which
hands them to Kafka one at a time with a task switch each; at one write per event that queue,
not RocksDB, limited the tracker (bench/tracker_throughput.py). Here a batch's values go into
the partition's store directly and their changelog records are produced like any output record,
in order, and awaited: when this returns, every value is durable in the changelog, which is
what Faust's own path guarantees only after a producer flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faust.types import TP


async def write_through(table: Any, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
    """Set ``items`` (key, value) in ``table`` for ``partition``, in order, and wait until the
    changelog has them. Must run while the batch's event is Faust's current event."""
    if not items:
        return
    store = table.data
    topic = table.changelog_topic.get_topic_name()
    producer = table.app.producer
    pending = []
    for key, value in items:
        store[key] = value
        pending.append(await producer.send(topic, key, value, partition, None, None))
    sent = await asyncio.gather(*pending)
    store.set_persisted_offset(TP(topic, partition), max(meta.offset for meta in sent))
