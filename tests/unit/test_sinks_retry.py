"""The sinks' retry policy and health, with the database mocked: which errors are retried,
the capped exponential backoff, a batch that waits (never dropped) until the database is back,
and what sink_health() reports meanwhile."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors

from sinks import health, sink
from sinks.migrations import MigrationOptions, MigrationReport
from sinks.retry import RetryPolicy, is_transient
from sinks.schema import PAGE_VIEW_STATS
from sinks.writers import WriteResult

FAST = RetryPolicy(initial=timedelta(milliseconds=1), maximum=timedelta(milliseconds=4))


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (errors.AdminShutdown("terminating connection due to administrator command"), True),
        (errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), True),
        (errors.DiskFull("could not extend file"), True),
        (errors.UndefinedTable('relation "kpi_metrics" does not exist'), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        # about the rows themselves: set apart by the writer, never retried
        (errors.CheckViolation("violates check constraint"), False),
        (errors.NotNullViolation("null value"), False),
        (errors.NumericValueOutOfRange("numeric field overflow"), False),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
        (errors.ProgramLimitExceeded("index row size exceeds btree maximum"), False),
        # bugs are not retried either
        (TypeError("unsupported operand"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_which_errors_are_retried(exc: BaseException, retried: bool) -> None:
    assert is_transient(exc) is retried


async def test_backoff_doubles_from_initial_and_is_capped() -> None:
    policy = RetryPolicy(initial=timedelta(seconds=0.2), maximum=timedelta(seconds=5))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    failures = 12
    async for attempt in policy.retrying(sleep=record):
        with attempt:
            if attempt.retry_state.attempt_number <= failures:
                raise psycopg.OperationalError("connection refused")
    assert len(waits) == failures
    for n, wait in enumerate(waits):
        exponential = 0.2 * 2**n
        assert min(exponential, 5.0) <= wait + 1e-9 <= min(exponential + 0.2, 5.0) + 1e-9
    assert waits[-1] == 5.0  # capped, jitter included


async def test_a_row_error_or_a_bug_is_raised_at_once() -> None:
    for exc in (errors.CheckViolation("x"), TypeError("bug")):
        attempts = 0
        with pytest.raises(type(exc)):
            async for attempt in FAST.retrying():
                with attempt:
                    attempts += 1
                    raise exc
        assert attempts == 1


class FakeConnection:
    closed = False
    broken = False

    async def close(self) -> None:
        self.closed = True


class FakeDatabase:
    """connect() fails while ``down``; write_batch answers with what the test sets."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.connects = 0
        self.writes: list[list[dict[str, Any]]] = []
        self.migrations = 0

    async def connect(self, url: str, purpose: str) -> FakeConnection:
        self.connects += 1
        if self.connects <= self.down_for:
            raise psycopg.OperationalError(f'connection to server at "{url}" failed: refused')
        return FakeConnection()

    async def write_batch(self, conn: Any, spec: Any, records: Any) -> WriteResult:
        self.writes.append(list(records))
        return WriteResult(written=len(records))

    async def migrate(self, conn: Any, options: Any) -> MigrationReport:
        self.migrations += 1
        return MigrationReport("postgresql")


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> FakeDatabase:
    fake = FakeDatabase(down_for=0)
    monkeypatch.setattr(sink, "connect", fake.connect)
    monkeypatch.setattr(sink, "write_batch", fake.write_batch)
    monkeypatch.setattr(sink, "migrate", fake.migrate)
    health.reset()
    return fake


def table_sink(policy: RetryPolicy = FAST) -> sink.TableSink:
    url = "postgresql://analytics:pw@127.0.0.1:1/analytics"
    gate = sink.SchemaGate(url, MigrationOptions())
    return sink.TableSink(PAGE_VIEW_STATS, "page-view-stats", url, gate, policy)


async def test_a_batch_waits_for_the_database_and_is_written_once(
    database: FakeDatabase,
) -> None:
    database.down_for = 5
    records = [{"n": 1}, {"n": 2}]
    result = await table_sink().write(records)
    assert result.written == 2
    assert database.writes == [records]  # written once, after the outage, never dropped
    assert database.connects == 7  # 5 refused, 1 for the migrations, 1 for the sink
    assert database.migrations == 1
    state = health.sink_health()
    assert state["status"] == "ok"
    assert state["database"] == {
        "mode": "postgresql",
        "url": "postgresql://analytics:***@127.0.0.1:1/analytics",
    }
    entry = state["sinks"]["page_view_stats"]
    assert entry["status"] == "ok" and entry["rows_written"] == 2 and entry["rows_waiting"] == 0
    assert entry["failed_attempts"] == 0 and entry["degraded_since"] is None
    assert "refused" in entry["last_error"]


async def test_health_is_degraded_while_a_batch_waits(database: FakeDatabase) -> None:
    database.down_for = 10**9
    slow = RetryPolicy(initial=timedelta(milliseconds=1), maximum=timedelta(milliseconds=2))
    writing = asyncio.ensure_future(table_sink(slow).write([{"n": 1}] * 3))
    deadline = asyncio.get_running_loop().time() + 5
    while health.sink_health()["status"] != "degraded":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)  # polling interval, bounded by the deadline
    entry = health.sink_health()["sinks"]["page_view_stats"]
    assert entry["rows_waiting"] == 3 and entry["degraded_since"] is not None
    assert entry["rows_written"] == 0

    database.down_for = 0  # the database is back
    result = await writing
    assert result.written == 3
    assert health.sink_health()["sinks"]["page_view_stats"]["status"] == "ok"


async def test_a_cancelled_write_leaves_nothing_waiting(database: FakeDatabase) -> None:
    database.down_for = 10**9
    writing = asyncio.ensure_future(table_sink().write([{"n": 1}]))
    deadline = asyncio.get_running_loop().time() + 5
    while database.connects < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)  # polling interval, bounded by the deadline
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert health.sink_health()["sinks"]["page_view_stats"]["rows_waiting"] == 0
    assert database.writes == []


async def test_a_bug_in_the_writer_is_not_retried(
    database: FakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken(conn: Any, spec: Any, records: Any) -> WriteResult:
        nonlocal calls
        calls += 1
        raise TypeError("bug")

    monkeypatch.setattr(sink, "write_batch", broken)
    with pytest.raises(TypeError):
        await table_sink().write([{"n": 1}])
    assert calls == 1


async def test_the_connection_is_replaced_after_a_failure(
    database: FakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    fail = [True]

    async def flaky(conn: Any, spec: Any, records: Any) -> WriteResult:
        seen.append(conn)
        if fail.pop():
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return WriteResult(written=len(records))

    fail.insert(0, False)
    monkeypatch.setattr(sink, "write_batch", flaky)
    await table_sink().write([{"n": 1}])
    assert len(seen) == 2 and seen[0] is not seen[1] and seen[0].closed
