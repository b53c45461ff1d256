"""The database sinks in the worker: the Faust task that runs them, ``faust -A app migrate`` and
``faust -A app sinks rebuild`` (sinks/rebuild.py).

    live-kpis       → kpi_metrics        session-metrics → session_metrics
    page-view-stats → page_view_stats    traffic-stats   → dimension_stats
    funnel-stats    → funnel_stats       experiment-stats → experiment_stats
    cohort-stats    → cohort_stats

The sinks themselves (consumer groups, batches, writes, dead letters, offset commits, in that
order) are the ``sinks`` package; this module only hands them the worker's settings, topics and
producer and ties them to the worker's life. The migrations run once at worker start; a
database that cannot be used (wrong URL, credentials, database name, or unreachable for
``startup_timeout``) stops the worker with a message naming the URL without its password.
"""

from __future__ import annotations

import logging
import sys

import click
from faust.cli import argument, option

from agents.outputs import publish
from app import app, metrics, startup
from sinks import health
from sinks.db import DatabaseStartupError
from sinks.migrations import MigrationOptions, migrate_url
from sinks.rebuild import RebuildRefused, rebuild
from sinks.runner import SinkRunner

log = logging.getLogger(__name__)

_database = app.analytics_settings.sinks.timescaledb

database_sinks = SinkRunner(app.analytics_settings, app.topic_names, app.conf.id, publish)
metrics.watch_sink_health(health.sink_health)  # sink_healthy says what GET /health says


def _announce() -> None:
    startup.announce(app, health.sink_health()["database"]["mode"])


async def _crash(exc: Exception) -> None:
    if isinstance(exc, DatabaseStartupError):
        log.critical("%s; stopping the worker", exc)
    else:
        log.exception("database sinks failed; stopping the worker", exc_info=exc)
    await app.crash(exc)


@app.task  # type: ignore[untyped-decorator]
async def run_sinks() -> None:
    """Run every sink until the worker stops, and migrate (sinks.runner.SinkRunner.run); a
    database that cannot be used at start, or a sink failing for a reason other than the
    database, stops the worker."""
    if not database_sinks.sinks:
        _announce()
        return
    await database_sinks.run(ready=_announce, failed=_crash)


@app.command()
async def migrate(self: object) -> None:
    """Create or upgrade the sink database schema (the worker also does this at start)."""
    try:
        report = await migrate_url(
            _database.url, MigrationOptions.of(_database), wait=_database.startup_timeout
        )
    except DatabaseStartupError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(report.summary())
    for warning in report.warnings:
        print(f"warning: TimescaleDB: {warning}", file=sys.stderr)


@app.command(
    argument("action", type=click.Choice(["rebuild"])),
    option("--force", is_flag=True, help="Truncate the sink tables when they hold rows."),
)
async def sinks(self: object, action: str, force: bool) -> None:
    """rebuild: migrate, then write the sink tables again from their topics' first records
    (into empty tables; --force truncates them first)."""
    try:
        done = await rebuild(app.analytics_settings, app.topic_names, app.conf.id, force=force)
    except (RebuildRefused, DatabaseStartupError) as exc:
        print(f"sinks {action}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"sinks {action}: {done.text()}")
