"""Writing one batch of published records into its table: plain async functions over lists of
dicts, so tests and the benchmark call them directly.

A batch is written in **one transaction** by one upsert whose parameters are one array per
column (``INSERT … SELECT * FROM unnest(…) ON CONFLICT … DO UPDATE``, sinks.schema). When the
database rejects the data itself (DataError, IntegrityError other than the upsert conflict, an
index row too large), the transaction is rolled back and the rows are written again one by one,
each under a savepoint, in one new transaction: the good rows are committed together and the
bad ones come back as ``Rejected`` (the sink sends them to the sink dead-letter topic). So
does a row the client cannot even send (an exception outside psycopg's, from a value nobody
foresaw: sinks.schema refuses the ones known). Any other database error (connection lost,
database down or read-only, missing table) propagates: the caller retries the whole batch
(sinks.retry), which is harmless because every write is an idempotent upsert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import errors

from sinks.db import Connection, describe
from sinks.schema import (
    Rejected,
    Row,
    TableSpec,
    bulk_upsert_statement,
    column_arrays,
    prepare,
    upsert_statement,
)

#: Errors about the rows themselves: retrying cannot help, the rows go to the dead-letter topic.
ROW_ERRORS: tuple[type[psycopg.Error], ...] = (
    errors.DataError,
    errors.IntegrityError,
    errors.ProgramLimitExceeded,  # e.g. a page too long for the primary key's index
)


@dataclass(slots=True)
class WriteResult:
    """``written``: rows upserted (after keeping the latest record per key); ``superseded``:
    records replaced by a later one of the same batch; ``rejected``: records set apart."""

    written: int = 0
    superseded: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class BatchWriter(Protocol):
    """What a sink writes its batches with (sinks.sink.TableSink; a fake in unit tests)."""

    async def write(self, batch: Sequence[Mapping[str, Any]]) -> WriteResult:
        """Write ``batch`` (one topic's decoded records) and return only once it is committed,
        however long that takes; the records the database can never take come back in
        ``WriteResult.rejected``, they are not raised."""
        ...


async def write_batch(
    conn: Connection, spec: TableSpec, records: Sequence[Mapping[str, Any]]
) -> WriteResult:
    """Upsert a batch of records of ``spec``'s topic; returns once the transaction committed."""
    rows, rejected = prepare(spec, records)
    result = WriteResult(superseded=len(records) - len(rows) - len(rejected), rejected=rejected)
    if not rows:
        return result
    try:
        async with conn.transaction():
            await conn.execute(bulk_upsert_statement(spec), column_arrays(rows))
    except Exception as exc:
        if isinstance(exc, psycopg.Error) and not isinstance(exc, ROW_ERRORS):
            raise  # about the database, not the rows: the caller retries
        # a row the database refuses, or a value the client could not send: find them
        bad = await write_one_by_one(conn, spec, rows)
        result.rejected.extend(bad)
        result.written = len(rows) - len(bad)
    else:
        result.written = len(rows)
    result.rejected.sort(key=lambda rejected: rejected.index)
    return result


async def write_one_by_one(
    conn: Connection, spec: TableSpec, rows: Sequence[tuple[int, Row]]
) -> list[Rejected]:
    """Each row under its own savepoint, all in one transaction; the rows the database refuses
    are returned, the others committed."""
    statement = upsert_statement(spec)
    bad: list[Rejected] = []
    async with conn.transaction():
        for index, row in rows:
            try:
                async with conn.transaction():
                    await conn.execute(statement, row)
            except ROW_ERRORS as exc:
                bad.append(
                    Rejected(index, f"{spec.name}: {describe(exc, spec.name)}", exc.sqlstate)
                )
            except psycopg.Error:
                raise  # about the database, not the row: the caller retries the batch
            except Exception as exc:  # the client could not send the row
                bad.append(Rejected(index, f"{spec.name}: {describe(exc)}"))
    return bad


async def write_naive(
    conn: Connection, spec: TableSpec, records: Sequence[Mapping[str, Any]]
) -> int:
    """The baseline of bench/sink_throughput.py: one single-row upsert per transaction."""
    statement = upsert_statement(spec)
    for record in records:
        async with conn.transaction():
            await conn.execute(statement, spec.convert(record))
    return len(records)
