"""A backoff for aiokafka's metadata refresh while no broker answers.

aiokafka 0.14 retries a failed cluster-metadata refresh at once: a producer with a batch for a
partition asks for a refresh (``force_metadata_update``) every time its sender loop turns, and
the refresh fails as fast as the connection is refused, so the loop spins. With the broker
stopped for 30 s under HTTP traffic (the scenario of tests/integration/test_kafka_outage.py)
a worker wrote 171,325 log lines, nearly all "Unable connect to node with id 1" and "Unable to
update metadata from [1]" (docs/reliability.md); a single client forced to refresh towards a
closed port made 8,323 attempts in 1.5 s (with the backoff, tests/unit/test_log_summary.py
allows 3 to 8). aiokafka has no setting for it (``retry_backoff_ms`` only paces
``_wait_on_metadata``; there is no ``reconnect_backoff_ms``), so the background refresh of
each client waits after a failure: 100 ms, doubling, at most ``MAX_BACKOFF_S``, reset by the
first success. Only the client's own refresh (of ``client.cluster``) waits: a one-off
``fetch_all_metadata()`` (``/health``) still answers at once. Recovery after the broker returns
is delayed by at most ``MAX_BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from app import faust_compat
from app.faust_compat import MetadataUpdate

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0

_failures: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def backoff_s(failures: int) -> float:
    """The wait after ``failures`` failed refreshes in a row (1, 2, ...)."""
    return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (failures - 1)))


def with_backoff(original: MetadataUpdate) -> MetadataUpdate:
    """``original`` (aiokafka's metadata refresh), pausing after each failure of the
    client's own refresh."""

    async def metadata_update(self: Any, cluster_metadata: Any, topics: Any) -> bool:
        updated = await original(self, cluster_metadata, topics)
        if cluster_metadata is not self.cluster:  # fetch_all_metadata: no waiting
            return updated
        if updated:
            _failures.pop(self, None)
            return True
        failures = _failures[self] = _failures.get(self, 0) + 1
        await asyncio.sleep(backoff_s(failures))
        return False

    return metadata_update


def install() -> None:
    """Wrap aiokafka's metadata refresh once per process (app/faust_compat.py)."""
    faust_compat.wrap_metadata_update(with_backoff)
