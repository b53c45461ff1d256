"""Benchmark: rows per second the database sinks sustain into PostgreSQL, per table.

Writes generated records of each output topic through the sinks' own write path
(``sinks.writers.write_batch``: one transaction per batch, multi-row upserts) and, in the same
run and database, through a naive baseline that writes one row per transaction
(``write_naive``). Every run uses a fresh database (``CREATE DATABASE`` on the server of
``DATABASE_URL``), migrated first and dropped at the end. Three cases per table:

- ``naive``: one single-row upsert per transaction (the baseline);
- ``batch N``: the sinks' method, N records per transaction (100 is the default
  ``sinks.timescaledb.batch_size``), new rows;
- ``batch N, replay``: the same records again (a re-delivery): the upsert finds every row
  unchanged and leaves it alone.

Run from the repository root:

    PYTHONPATH=. python bench/sink_throughput.py --rows 20000 --naive-rows 2000

DATABASE_URL defaults to postgresql://analytics@127.0.0.1:5432/analytics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from analytics.kpis import kpi_figures, trends
from analytics.money import currency
from analytics.rows import Row
from analytics.sessions import session_figures
from analytics.timeutil import format_ts
from analytics.traffic import dimension_rows, page_rows
from sinks.db import redact_url
from sinks.migrations import migrate_url
from sinks.schema import TABLES, TableSpec
from sinks.writers import write_batch, write_naive

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_MS = 60_000


def kpi_records(n: int, offset: int) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + n):
        sums = {
            "events": 500 + i % 97,
            "page_views": 300 + i % 31,
            "revenue_cents": 1_999 * (i % 13),
            "purchases": i % 13,
            "active_users": 120 + i % 17,
            "users_total": 10_000 + i,
            "new_users": i % 7,
            "sessions": 140 + i % 11,
            "bounces": 40 + i % 5,
            "session_duration_ms": 9_000_000 + i,
            "engagement_x10000": 4_000_000 + i,
            "conversions": i % 9,
        }
        record = kpi_figures(T0 + i * WINDOW_MS, WINDOW_MS, sums)
        record["trends"] = trends(sums, None)
        record["late_events_total"] = 0
        record["is_final"] = True
        out.append(record)
    return out


def session_records(n: int, offset: int) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + n):
        ts = T0 + i * 1_000
        user, session = f"user-{i % 5_000:05d}", f"s{i}"
        rows = [
            Row(ts, f"e{i}a", session, "page_view", "/home", 4_000, "mobile", "DE", "Safari",
                False, 0),
            Row(ts + 9_000, f"e{i}b", session, "page_view", f"/products/{i % 300}", 12_000,
                "", "", "", False, 0),
            Row(ts + 30_000, f"e{i}c", session, "purchase", "/checkout", 2_000, "", "", "",
                True, 4_999),
        ]  # fmt: skip
        figures = session_figures(user, rows)
        figures["window_start"] = format_ts(figures.pop("window_start_ms"))
        figures["window_end"] = format_ts(figures.pop("window_end_ms"))
        figures["revenue"] = currency(figures["revenue_cents"])
        out.append(figures)
    return out


def page_records(n: int, offset: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = offset
    while len(out) < n:
        window = T0 + (i // 50) * WINDOW_MS
        out.extend(page_rows(window, WINDOW_MS, {f"/products/{i % 50}": [3 + i % 7, 2, 12_345]}))
        i += 1
    return out


def dimension_records(n: int, offset: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = offset
    while len(out) < n:
        window = T0 + (i // 30) * WINDOW_MS
        dims = {"country": {f"C{i % 30:02d}": [10 + i % 5, 4, 6, 1_999 * (i % 3)]}}
        out.extend(dimension_rows(window, WINDOW_MS, dims))
        i += 1
    return out


GENERATORS: dict[str, Callable[[int, int], list[dict[str, Any]]]] = {
    "kpi_metrics": kpi_records,
    "session_metrics": session_records,
    "page_view_stats": page_records,
    "dimension_stats": dimension_records,
}


@dataclass
class Measurement:
    table: str
    method: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


async def batched(
    conn: psycopg.AsyncConnection[Any], spec: TableSpec, records: Sequence[Any], size: int
) -> None:
    for start in range(0, len(records), size):
        result = await write_batch(conn, spec, records[start : start + size])
        assert not result.rejected, result.rejected[:3]


async def measure(
    url: str, table: str, rows: int, naive_rows: int, batch_sizes: Sequence[int]
) -> list[Measurement]:
    spec = TABLES[table]
    make = GENERATORS[table]
    out: list[Measurement] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        offset = 0
        records = make(naive_rows, offset)
        started = time.perf_counter()
        await write_naive(conn, spec, records)
        out.append(
            Measurement(
                table, "naive: 1 row per transaction", len(records), time.perf_counter() - started
            )
        )
        offset += 10 * naive_rows + 1_000_000
        for size in batch_sizes:
            records = make(rows, offset)
            offset += 10 * rows + 1_000_000
            started = time.perf_counter()
            await batched(conn, spec, records, size)
            out.append(
                Measurement(
                    table, f"batch {size}, new rows", len(records), time.perf_counter() - started
                )
            )
            started = time.perf_counter()
            await batched(conn, spec, records, size)
            out.append(
                Measurement(
                    table,
                    f"batch {size}, replay (unchanged)",
                    len(records),
                    time.perf_counter() - started,
                )
            )
    return out  # fmt: skip


async def admin(server_url: str, statement: str) -> None:
    conninfo = make_conninfo(server_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(statement.encode())


async def main(args: argparse.Namespace) -> None:
    server = os.environ.get("DATABASE_URL", "postgresql://analytics@127.0.0.1:5432/analytics")
    name = f"sink_bench_{uuid.uuid4().hex[:8]}"
    await admin(server, f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    try:
        report = await migrate_url(url)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            version = (await (await conn.execute("SHOW server_version")).fetchone() or ["?"])[0]
            settings = await (
                await conn.execute(
                    "SELECT name, setting FROM pg_settings "
                    "WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name"
                )
            ).fetchall()
        print(
            f"PostgreSQL {version} at {redact_url(server)} (database {name}, mode {report.mode}; "
            + ", ".join(f"{k}={v}" for k, v in settings)
            + ")"
        )
        results: list[Measurement] = []
        for table in args.tables:
            results += await measure(url, table, args.rows, args.naive_rows, args.batch)
        print()
        header = ("table", "method", "rows", "seconds", "rows/s", "vs naive")
        print("| {:<16} | {:<32} | {:>7} | {:>7} | {:>9} | {:>8} |".format(*header))
        print(f"|{'-' * 18}|{'-' * 34}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 10}|")
        for table in args.tables:
            rows = [m for m in results if m.table == table]
            naive = rows[0].rate
            for m in rows:
                print(
                    f"| {m.table:<16} | {m.method:<32} | {m.rows:>7,} | {m.seconds:>7.2f} | "
                    f"{m.rate:>9,.0f} | {m.rate / naive:>7.1f}x |"
                )
    finally:
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per batched case")
    parser.add_argument("--naive-rows", type=int, default=2_000, help="rows of the baseline")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[100, 1000], help="batch sizes to measure"
    )
    parser.add_argument("--tables", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
