"""sinks/runner.py and its wiring (agents/database_sinks.py) with the database and Kafka
mocked: a sink per configured table, the ready line after the migrations, and a failure
reported before the sinks stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app import app, metrics
from app.settings import get_settings
from sinks import health
from sinks.db import DatabaseStartupError
from sinks.migrations import MigrationReport
from sinks.runner import SinkRunner


async def _publish(records: list[Any]) -> int:
    return len(records)


class Steps:
    """What happened, in order: migrations, ready, failures, sinks started and stopped."""

    def __init__(self, runner: SinkRunner, migrations: BaseException | None) -> None:
        self.seen: list[str] = []
        self.migrations = migrations
        self.is_ready = asyncio.Event()
        self.sinks = len(runner.sinks)
        self.all_started = asyncio.Event()
        for name, sink in runner.sinks.items():
            sink.run = self._sink(name)  # type: ignore[method-assign]
        runner.schema.at_startup = self._at_startup  # type: ignore[method-assign]

    def _sink(self, name: str) -> Any:
        async def run() -> None:
            self.seen.append(f"start {name}")
            if sum(step.startswith("start") for step in self.seen) == self.sinks:
                self.all_started.set()
            try:
                await asyncio.Event().wait()
            finally:
                self.seen.append(f"stop {name}")

        return run

    async def _at_startup(self, wait: Any) -> MigrationReport:
        await asyncio.wait_for(self.all_started.wait(), timeout=10)  # the sinks start first
        self.seen.append("migrated")
        if self.migrations is not None:
            raise self.migrations
        return MigrationReport(mode="postgresql")

    def ready(self) -> None:
        self.seen.append("ready")
        self.is_ready.set()

    async def failed(self, exc: Exception) -> None:
        self.seen.append(f"failed {type(exc).__name__}")


def runner(tables: list[str]) -> SinkRunner:
    settings = get_settings()
    settings = settings.model_copy(
        update={
            "sinks": settings.sinks.model_copy(
                update={
                    "timescaledb": settings.sinks.timescaledb.model_copy(update={"tables": tables})
                }
            )
        }
    )
    return SinkRunner(settings, app.topic_names, "g", _publish)


async def test_a_database_unusable_at_start_is_reported_before_the_sinks_stop() -> None:
    sinks = runner(["kpi_metrics"])
    steps = Steps(sinks, DatabaseStartupError("no database"))
    await sinks.run(steps.ready, steps.failed)
    assert steps.seen == [
        "start kpi_metrics",
        "migrated",
        "failed DatabaseStartupError",
        "stop kpi_metrics",
    ]


async def test_the_ready_line_waits_for_the_migrations_and_the_sinks_run_until_cancelled() -> None:
    sinks = runner(["kpi_metrics", "page_view_stats"])
    steps = Steps(sinks, None)
    task = asyncio.ensure_future(sinks.run(steps.ready, steps.failed))
    await asyncio.wait_for(steps.is_ready.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps.seen[:3] == ["start kpi_metrics", "start page_view_stats", "migrated"]
    assert steps.seen[3] == "ready" and sorted(steps.seen[4:]) == [
        "stop kpi_metrics",
        "stop page_view_stats",
    ]


def test_the_worker_runs_a_sink_per_configured_table_and_reports_their_health() -> None:
    from agents import database_sinks

    tables = get_settings().sinks.timescaledb.tables
    sinks = database_sinks.database_sinks.sinks
    assert list(sinks) == tables
    assert [sink.group_id for sink in sinks.values()] == [
        f"{app.conf.id}-sink-{table}" for table in tables
    ]
    assert {sink.dead_letters.name for sink in sinks.values()} == {
        app.topic_names.sink_dead_letters
    }
    assert metrics.worker_metrics.sink_health.source == health.sink_health
