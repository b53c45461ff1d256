"""The one line a worker logs once it is ready: broker, database mode, partitions, addresses,
and which application and environment it belongs to.

Logged after the sink migrations (agents/database_sinks.py), the first moment the database
mode is known, so the line never guesses it. Operators find every port of a worker in one place.
"""

from __future__ import annotations

import logging
from typing import Any

from app import metrics
from app.settings import ApplicationSettings

log = logging.getLogger(__name__)

_DATABASE_MODES = {
    "timescaledb": "timescaledb",
    "postgresql": "postgresql (TimescaleDB absent)",
}


def describe_database(mode: str | None) -> str:
    """``timescaledb``, ``postgresql (TimescaleDB absent)``, or ``none`` without sinks."""
    if mode is None:
        return "none"
    return _DATABASE_MODES.get(mode, mode)


def ready_line(
    brokers: list[str],
    database_mode: str | None,
    partitions: int,
    web: str,
    metrics_at: str,
    application: ApplicationSettings,
) -> str:
    """``web`` is the web server's URL (``http://`` or ``https://``)."""
    return (
        f"analytics worker ready: broker={','.join(brokers)} "
        f"database={describe_database(database_mode)} partitions={partitions} "
        f"web={web} metrics={metrics_at} "
        f"application={application.name} environment={application.environment}"
    )


def announce(app: Any, database_mode: str | None) -> None:
    """Log the ready line of ``app`` (an AnalyticsApp) with the database mode as migrated
    (sinks.health), None without sinks."""
    exporter = metrics.exporter()
    settings = app.analytics_settings
    line = ready_line(
        settings.brokers,
        database_mode,
        settings.engine.topic_partitions,
        f"{settings.sources.http.scheme}://{app.conf.web_bind}:{app.conf.web_port}",
        exporter.address if exporter is not None else "off",
        settings.application,
    )
    log.info("%s", line)
