"""The database sinks of one worker: one SinkConsumer per configured table, sharing one schema
gate, run together until the worker stops (agents/database_sinks.py starts them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app.settings import Settings
from app.topics import TopicNames
from sinks.consumer import DeadLetterTopic, Publish, SinkConsumer
from sinks.erasure import ERASE_STATEMENTS
from sinks.migrations import MigrationOptions
from sinks.retry import RetryPolicy
from sinks.schema import TABLES, TableSpec
from sinks.sink import SchemaGate, TableSink


class SinkRunner:
    """``sinks.timescaledb.tables``' sinks: built from the settings, started by ``run``."""

    def __init__(
        self, settings: Settings, topics: TopicNames, app_id: str, publish: Publish
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.app_id = app_id
        database = settings.sinks.timescaledb
        self.schema = SchemaGate(database.url, MigrationOptions.of(database))  # as tables' owner
        self.policy = RetryPolicy(initial=database.retry_initial, maximum=database.retry_max)
        self.dead_letters = DeadLetterTopic(topics.sink_dead_letters, publish)
        self.sinks = {name: self._sink(TABLES[name]) for name in database.tables}

    def _sink(self, spec: TableSpec) -> SinkConsumer:
        topic: str = getattr(self.topics, spec.topic_field)
        url = self.settings.sinks.timescaledb.writer_url  # sinks/roles.py
        writer = TableSink(spec, topic, url, self.schema, self.policy)
        group = f"{self.app_id}-sink-{spec.name}"
        eraser = writer if spec.name in ERASE_STATEMENTS else None  # sinks/erasure.py
        return SinkConsumer(spec, topic, writer, group, self.settings, self.dead_letters, eraser)

    async def run(
        self, ready: Callable[[], None], failed: Callable[[Exception], Awaitable[None]]
    ) -> None:
        """Run every sink until cancelled, and migrate. The sinks start at once (a batch waits
        in its writer until the schema is there); ``ready()`` is called once the migrations are
        done. ``failed(exc)`` is awaited, before the sinks are stopped, when the database cannot
        be used at start (DatabaseStartupError, after ``startup_timeout``) or a sink fails for a
        reason other than the database."""
        running = [asyncio.ensure_future(sink.run()) for sink in self.sinks.values()]
        try:
            await self.schema.at_startup(self.settings.sinks.timescaledb.startup_timeout)
            ready()  # the database mode is known from here on
            await asyncio.gather(*running)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await failed(exc)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
