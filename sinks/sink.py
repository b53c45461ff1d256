"""One table's writer: its connection, the schema check, retries and health.

``TableSink.write(batch)`` (sinks.writers.BatchWriter) returns only once the batch is committed
(or its bad rows set apart), however long the database is away: the sink's consumer commits the
batch's Kafka offsets after that, never before (sinks/consumer.py). One connection per table,
one batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from tenacity import RetryCallState

from app import metrics
from sinks import health
from sinks.db import Connection, connect, describe, redact_url
from sinks.erasure import erase_rows
from sinks.migrations import MigrationOptions, MigrationReport, migrate, migrate_url
from sinks.retry import RetryPolicy
from sinks.schema import TableSpec
from sinks.writers import WriteResult, write_batch

log = logging.getLogger(__name__)
T = TypeVar("T")

#: One attempt (connect, migrate when needed, write) longer than this is abandoned and retried
#: on a new connection: a database host that vanished must not hold a batch forever.
ATTEMPT_TIMEOUT = timedelta(seconds=60)
#: While degraded, a log line every this many failed attempts (the first one always logs).
LOG_EVERY_ATTEMPTS = 10


class SchemaGate:
    """Runs the migrations once per process, before the first write."""

    def __init__(self, url: str, options: MigrationOptions) -> None:
        self.url = url
        self.options = options
        self.report: MigrationReport | None = None
        self._lock = asyncio.Lock()

    async def at_startup(self, wait: timedelta) -> MigrationReport:
        """Migrate, waiting up to ``wait`` for the database; DatabaseStartupError otherwise."""
        async with self._lock:
            if self.report is None:
                self._done(await migrate_url(self.url, self.options, wait=wait))
            assert self.report is not None
            return self.report

    async def ensure(self) -> None:
        if self.report is not None:
            return
        async with self._lock:
            if self.report is None:
                conn = await connect(self.url, "migrations")
                try:
                    self._done(await migrate(conn, self.options))
                finally:
                    await conn.close()

    def _done(self, report: MigrationReport) -> None:
        self.report = report
        health.set_database(redact_url(self.url), report.mode)


class TableSink:
    """Writes batches of one topic's records into one table."""

    def __init__(
        self,
        spec: TableSpec,
        topic: str,
        url: str,
        schema: SchemaGate,
        policy: RetryPolicy,
        attempt_timeout: timedelta = ATTEMPT_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.url = url
        self.schema = schema
        self.policy = policy
        self.attempt_timeout = attempt_timeout.total_seconds()
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        health.register(spec.name, topic)
        metrics.sink_registered(spec.name)

    @property
    def name(self) -> str:
        return self.spec.name

    async def write(self, batch: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Write a batch, retrying until it is committed; the result lists rejected records."""
        health.waiting(self.name, len(batch))
        try:
            async with self._lock:
                async for attempt in self.policy.retrying(before_sleep=self._on_retry):
                    with attempt:
                        result = await self._attempt(
                            lambda conn: write_batch(conn, self.spec, batch)
                        )
        finally:
            health.waiting(self.name, -len(batch))
        outage = health.succeeded(self.name, result.written, len(result.rejected))
        if outage is not None:
            log.warning("sink %s: writing again after %.1f s degraded", self.name, outage)
        return result

    async def erase(self, users: Sequence[str]) -> int:
        """Delete the rows of ``users`` (sinks.erasure), retrying until committed."""
        async with self._lock:
            async for attempt in self.policy.retrying(before_sleep=self._on_retry):
                with attempt:
                    deleted = await self._attempt(lambda conn: erase_rows(conn, self.name, users))
        log.info("sink %s: erased %d rows of %d users", self.name, deleted, len(users))
        return deleted

    async def _attempt(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.attempt_timeout):
                await self.schema.ensure()
                conn = await self._connection()
                return await work(conn)
        except BaseException:
            await self.close()  # whatever happened, the connection's state is unknown
            raise

    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = await connect(self.url, f"sink-{self.name}")
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception as exc:  # closing a broken connection: nothing more to do
                log.debug("sink %s: closing the connection: %s", self.name, exc)

    def _on_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error = describe(exc, self.name) if exc is not None else "unknown error"
        first = health.failed(self.name, error)
        metrics.sink_retried(self.name)
        if first or state.attempt_number % LOG_EVERY_ATTEMPTS == 0:
            waiting = health.sink_health()["sinks"][self.name]["rows_waiting"]
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "sink %s degraded (database %s): %s; %d rows waiting, retry %d in %.1f s",
                self.name,
                redact_url(self.url),
                error,
                waiting,
                state.attempt_number,
                delay,
            )
