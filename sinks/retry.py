"""The retry policy of the database sinks: which failures are retried, and how long to wait.

A batch whose write fails for a reason outside the rows themselves (connection refused or lost,
the database shutting down, read-only, out of disk, a missing table, a timeout) is retried
with capped exponential backoff and jitter, **forever**: the batch is neither dropped nor
acknowledged, its partition simply waits. Errors about the rows never get here (they are set
apart by sinks.writers), and a programming error (TypeError, ...) is not retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from sinks.writers import ROW_ERRORS


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same batch later may succeed."""
    if isinstance(exc, ROW_ERRORS):
        return False
    return isinstance(exc, psycopg.Error | OSError | TimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """First wait ``initial``, doubling up to ``maximum`` (jitter up to ``initial`` included)."""

    initial: timedelta = timedelta(milliseconds=200)
    maximum: timedelta = timedelta(seconds=5)

    def retrying(
        self,
        before_sleep: Callable[[RetryCallState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=self.wait,
            stop=stop_never,
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )

    def wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: initial * 2^(attempts - 1) plus up to ``initial``
        of jitter (so that workers do not retry in step), at most ``maximum``."""
        initial = self.initial.total_seconds()
        doublings: int = min(state.attempt_number - 1, 32)
        wait: float = initial * 2**doublings + random.uniform(0, initial)
        return min(self.maximum.total_seconds(), wait)
