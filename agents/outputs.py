"""Producing a batch's records and waiting until the broker has all of them.

Every agent finishes a batch the same way: produce its records, wait for the acknowledgements,
then write its state. State therefore never runs ahead of what was published; a crash before
the state write re-delivers the batch, and every consumer of our topics treats a repeated
record as an overwrite (keys: window, page, session) or drops it (event_id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from analytics import wide_json
from app import app

Record = tuple[str, bytes | None, Any, int | None]


async def publish(records: Iterable[Record], timestamp_s: float | None = None) -> int:
    """Send (topic, key, value, partition) records; values are JSON-encoded unless bytes."""
    producer = app.producer
    pending = []
    for topic, key, value, partition in records:
        payload = value if isinstance(value, bytes) else wide_json.dumps(value)
        pending.append(await producer.send(topic, key, payload, partition, timestamp_s, None))
    if pending:
        await asyncio.gather(*pending)
    return len(pending)
