"""``faust -A app sinks rebuild``: the sink tables again from the result topics.

The configured sinks (sinks.runner.SinkRunner: the same TableSink writers, row conversion,
upserts, chunk gathering and retries as the worker's) read every partition of their topic
from its first offset up to the end it had when the rebuild started, without a consumer
group (nothing is committed, no running sink is disturbed), into tables that are empty: the
migrations run first, and tables that hold rows are refused unless ``force`` truncates them.
Records the database refuses are counted, not sent to ``sink-dlq`` again (the live sink sent
them there when it met them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from app import faust_compat
from app.kafka_security import aiokafka_kwargs
from app.settings import Settings
from app.topics import TopicNames
from sinks.consumer import SinkConsumer, take_batch
from sinks.runner import SinkRunner


class RebuildRefused(Exception):
    """The tables are not empty and ``force`` was not given."""


@dataclass(slots=True)
class Rebuilt:
    """Per table: the records read and the ones the database refused."""

    records: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        def one(table: str, count: int) -> str:
            refused = self.refused.get(table, 0)
            return f"{table} {count} records" + (f" ({refused} refused)" if refused else "")

        return ", ".join(one(table, count) for table, count in self.records.items())


async def tables_with_rows(url: str, tables: list[str]) -> list[str]:
    """The tables among ``tables`` that hold at least one row."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        found = []
        for table in tables:
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
            row = await (await conn.execute(query)).fetchone()
            if row is not None and row[0]:
                found.append(table)
        return found


async def truncate(url: str, tables: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        names = sql.SQL(", ").join(sql.Identifier(table) for table in tables)
        await conn.execute(sql.SQL("TRUNCATE {}").format(names))


async def _discard(_records: list[Any]) -> None:
    """Dead letters of a rebuild: counted by the caller, not published again."""


async def rebuild(
    settings: Settings,
    topics: TopicNames,
    app_id: str,
    *,
    force: bool,
    progress: Callable[[str, int], None] = lambda _table, _count: None,
) -> Rebuilt:
    """Migrate, check (or truncate) the tables, then write each table from its topic."""
    database = settings.sinks.timescaledb
    runner = SinkRunner(settings, topics, app_id, _discard)
    await runner.schema.at_startup(database.startup_timeout)
    tables = list(runner.sinks)
    full = await tables_with_rows(database.url, tables)
    if full and not force:
        raise RebuildRefused(
            f"tables {', '.join(full)} are not empty: rebuild into an empty database, "
            "or give --force to truncate them first"
        )
    if full:
        await truncate(database.url, full)
    done = Rebuilt()
    for table, sink in runner.sinks.items():
        done.records[table], done.refused[table] = await _from_start(sink, settings, progress)
    return done


FETCH_WAIT_S = 0.2
"""How long a rebuild waits for a fetch to fill its batch: the topic's records up to its end
are in the broker already, so only the fetch round trips (the live sinks' ``flush_interval``
of 5 s would be paid by every batch short of ``batch_size``)."""


async def _from_start(
    sink: SinkConsumer, settings: Settings, progress: Callable[[str, int], None]
) -> tuple[int, int]:
    """Write every record of the sink's topic up to its current end; ``(read, refused)``."""
    database = settings.sinks.timescaledb
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await faust_compat.refresh_consumer_metadata(consumer)
        partitions = consumer.partitions_for_topic(sink.topic)
        if not partitions:
            raise RebuildRefused(f"no topic {sink.topic!r}")
        tps = [TopicPartition(sink.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        read = refused = 0
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            # the records are all there: no waiting for a batch to fill (flush_interval)
            records = await take_batch(consumer, database.batch_size, FETCH_WAIT_S)
            records = [r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]]
            if records:
                refused += await sink.write(records)
                read += len(records)
                progress(sink.spec.name, len(records))
        return read, refused
    finally:
        await consumer.stop()
