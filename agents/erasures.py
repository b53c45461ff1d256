"""Erasure requests between the web API and the tracker (analytics.erasure).

``request`` produces the request record to ``user-events`` (keyed by the user_id, no value,
the erase header) and returns where it landed; the tracker calls ``done`` with the erasures
of each round once that round's state is in RocksDB, and ``outcome`` waits for that. Both
run on the worker that owns the user's partition (the web API routes the request there), in
one event loop: a result that comes before anyone waits is kept for a while.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from analytics.erasure import ERASE_HEADER, Erased
from app import app

KEEP_RESULTS = 1_000
"""Results kept for requests nobody waits for yet (a worker answers one at a time)."""

_results: OrderedDict[tuple[int, int], Erased] = OrderedDict()
_waiting: dict[tuple[int, int], asyncio.Future[Erased]] = {}


async def request(user_id: str) -> tuple[int, int]:
    """Produce the erasure request of ``user_id``; (partition, offset) once acknowledged."""
    sent = await app.producer.send(
        app.topic_names.user_events, user_id.encode(), None, None, None, [(ERASE_HEADER, b"1")]
    )
    metadata = await sent
    return metadata.partition, metadata.offset


def done(erasures: Iterable[Erased]) -> None:
    """These erasures are durable (the tracker, once their round is in RocksDB)."""
    for erased in erasures:
        at = (erased.partition, erased.offset)
        waiter = _waiting.pop(at, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(erased)
            continue
        _results[at] = erased
        while len(_results) > KEEP_RESULTS:
            _results.popitem(last=False)


async def outcome(partition: int, offset: int, timeout_s: float) -> Erased | None:
    """What the erasure at ``(partition, offset)`` removed, once durable; None when that
    took longer than ``timeout_s`` (the tracker is behind, or the partition moved)."""
    at = (partition, offset)
    found = _results.pop(at, None)
    if found is not None:
        return found
    waiter = _waiting.setdefault(at, asyncio.get_running_loop().create_future())
    try:
        return await asyncio.wait_for(waiter, timeout_s)
    except TimeoutError:
        return None
    finally:
        _waiting.pop(at, None)  # a result that comes later is kept by ``done``
