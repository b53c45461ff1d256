"""HTTP ingestion while Kafka is away: answer 503 within a bound, never queue without limit.

An ingest request is accepted (202) only once Kafka has confirmed its events. The gate bounds
that wait (``sources.http.publish_timeout``) and the bytes waiting for confirmation over all
requests (``sources.http.max_pending_mib``). A request that is not confirmed in time marks
Kafka *down*: from then on requests are refused at once with 503 and ``Retry-After``, nothing
is handed to the producer, and a probe asks the broker every ``PROBE_EVERY_S`` until it
answers, when requests are taken again. The log says "unreachable" once when Kafka goes down
and "reachable again" once when it returns, with how many requests were refused meanwhile.

What a 503 means for the events: those refused while Kafka was known to be down were never
handed to the producer. Those of a request that timed out are in the producer's buffer and may
still be written when the broker returns; the 503 carries their ``event_id``s, and a client
that retries with them (or sent its own) is counted once (SPEC 1, dedup window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from analytics.timeutil import format_ts, now_ms
from web.kafka_probe import describe_error

log = logging.getLogger(__name__)

PROBE_EVERY_S = 1.0

#: answers ``None`` when Kafka is reachable, else why not
Probe = Callable[[], Awaitable[str | None]]
#: hands a request's events to the producer; returns their delivery futures
Enqueue = Callable[[], Awaitable[Sequence[Awaitable[Any]]]]


class KafkaUnavailable(RuntimeError):
    """Answer 503 with ``retry_after_s``. ``handed_over``: the events went to the producer
    but were not confirmed in time, so they may still be stored; otherwise they were not."""

    def __init__(self, reason: str, retry_after_s: int, *, handed_over: bool = False) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.handed_over = handed_over


@dataclass(slots=True)
class _Outage:
    since_ms: int
    started: float
    error: str
    refused: int = 0


class BrokerGate:
    """One per worker: the state of Kafka as ingestion sees it, and the bounded wait."""

    def __init__(
        self,
        probe: Probe,
        timeout_s: float,
        retry_after_s: float,
        max_pending_bytes: int,
        probe_every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.probe = probe
        self.timeout_s = timeout_s
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.max_pending_bytes = max_pending_bytes
        self.probe_every_s = probe_every_s
        self.pending_bytes = 0
        self._outage: _Outage | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def accepting(self) -> bool:
        return self._outage is None

    def status(self) -> dict[str, Any]:
        """For ``/health``: whether ingestion takes requests, and why not."""
        outage = self._outage
        return {
            "accepting": outage is None,
            "pending_bytes": self.pending_bytes,
            "max_pending_bytes": self.max_pending_bytes,
            "unavailable_since": format_ts(outage.since_ms) if outage else None,
            "error": outage.error if outage else None,
            "refused_since_down": outage.refused if outage else 0,
        }

    async def publish(self, size: int, enqueue: Enqueue) -> None:
        """Run ``enqueue`` and wait for its deliveries, for at most the timeout; raises
        KafkaUnavailable when Kafka is known to be down, too much waits, or the broker did
        not confirm in time."""
        outage = self._outage
        if outage is not None:
            outage.refused += 1
            raise KafkaUnavailable(f"Kafka is unreachable: {outage.error}", self.retry_after_s)
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            raise KafkaUnavailable(
                f"{self.pending_bytes} bytes of events already wait for Kafka "
                f"(limit {self.max_pending_bytes}, sources.http.max_pending_mib)",
                self.retry_after_s,
            )
        self.pending_bytes += size
        try:
            await self._deliver(enqueue)
        finally:
            self.pending_bytes -= size

    async def _deliver(self, enqueue: Enqueue) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        late = f"Kafka did not confirm the events within {self.timeout_s:g} s"
        try:
            async with asyncio.timeout_at(deadline):
                deliveries = [asyncio.ensure_future(d) for d in await enqueue()]
        except TimeoutError:
            raise self._down(late, handed_over=True) from None
        except KafkaError as exc:
            raise self._down(describe_error(exc), handed_over=True) from None
        if not deliveries:
            return
        # waited for, never cancelled: a delivery the broker confirms later is still counted
        done, waiting = await asyncio.wait(deliveries, timeout=max(0.0, deadline - loop.time()))
        if waiting:
            raise self._down(late, handed_over=True)
        for delivery in done:
            failure = delivery.exception()
            if failure is not None:
                raise self._down(describe_error(failure), handed_over=True)

    def _down(self, error: str, *, handed_over: bool) -> KafkaUnavailable:
        if self._outage is None:
            self._outage = _Outage(now_ms(), time.monotonic(), error)
            log.warning(
                "Kafka unreachable for HTTP ingestion (%s): answering 503 until it returns",
                error,
            )
            self._prober = asyncio.ensure_future(self._probe_until_back())
        return KafkaUnavailable(
            f"Kafka is unreachable: {error}", self.retry_after_s, handed_over=handed_over
        )

    async def _probe_until_back(self) -> None:
        while self._outage is not None:
            await asyncio.sleep(self.probe_every_s)  # probe interval while Kafka is down
            error = await self.probe()
            if error is not None:
                self._outage.error = error
                continue
            outage, self._outage = self._outage, None
            log.warning(
                "Kafka reachable again after %.1f s: HTTP ingestion resumed "
                "(%d requests answered 503 meanwhile)",
                time.monotonic() - outage.started,
                outage.refused,
            )

    async def close(self) -> None:
        """Stop probing (worker shutdown)."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
