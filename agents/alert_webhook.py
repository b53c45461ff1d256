"""POSTs alert transitions to the configured webhook (``alerts.webhook``), in order, retried.

Each transition is POSTed as its ``kpi-alerts`` record (JSON) with the header
``Idempotency-Key: <rule>|<state>|<window_start ms>``, the same whenever the same transition
is delivered again, so a receiver keeps one. Connection errors, timeouts, 429 and 5xx are
retried with exponential backoff (tenacity) up to ``attempts``; another 4xx is not. Deliveries
wait in a queue of their own: a slow or failing receiver never holds the evaluation or the
``kpi-alerts`` record, and a delivery that fails for good is logged and counted
(``alert_webhook_failures``), never retried later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from analytics.alerts import Transition
from app.settings import AlertWebhookSettings

log = logging.getLogger(__name__)
IDEMPOTENCY_HEADER = "Idempotency-Key"


class RetryableStatus(Exception):
    """The receiver answered 429 or 5xx: worth another attempt."""


class WebhookDelivery:
    """A queue of transitions and the task that POSTs them one after the other."""

    def __init__(self, settings: AlertWebhookSettings) -> None:
        self.settings = settings
        self.queue: asyncio.Queue[Transition] = asyncio.Queue()
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def send(self, transitions: Iterable[Transition]) -> None:
        """Queue ``transitions``; they are POSTed in this order, this call does not wait."""
        for transition in transitions:
            self.queue.put_nowait(transition)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._deliver_all())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until every queued transition was delivered or given up."""
        await self.queue.join()

    async def _deliver_all(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout.total_seconds())
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                transition = await self.queue.get()
                try:
                    if not await self.deliver(session, transition):
                        self.failures += 1
                finally:
                    self.queue.task_done()

    async def deliver(self, session: aiohttp.ClientSession, transition: Transition) -> bool:
        """POST one transition, retried; whether the receiver took it."""
        settings = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.attempts),
            wait=wait_exponential(
                multiplier=settings.backoff_initial.total_seconds(),
                max=settings.backoff_max.total_seconds(),
            ),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, RetryableStatus)),
            reraise=True,
        )
        headers = {IDEMPOTENCY_HEADER: transition.idempotency_key}
        try:
            async for attempt in retrying:
                with attempt:
                    async with session.post(
                        str(settings.url), json=transition.record(), headers=headers
                    ) as answer:
                        if answer.status == 429 or answer.status >= 500:
                            raise RetryableStatus(f"HTTP {answer.status}")
                        if answer.status >= 400:
                            log.error(
                                "alert webhook refused %s: HTTP %d (not retried)",
                                transition.idempotency_key,
                                answer.status,
                            )
                            return False
        except (aiohttp.ClientError, TimeoutError, RetryableStatus) as exc:
            log.error(
                "alert webhook: %s not delivered after %d attempts: %r",
                transition.idempotency_key,
                settings.attempts,
                exc,
            )
            return False
        return True
