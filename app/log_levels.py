"""The log levels of the libraries under the worker, set in one place.

``faust worker`` configures the root logger from ``-l`` (``--loglevel``); without it, Faust's
terminal spinner sets the root logger to DEBUG and filters in its handler, so every library
whose logger follows the root builds a record for each of its debug calls. aiokafka's
``Producer.send`` makes one per message: about 4 % of a busy worker's time in a profile
(../shared/FACTS.md). The libraries therefore get fixed levels here; the project's own loggers
(app, agents, analytics, sinks, web, ...) follow ``-l``, so the worker's INFO lines show with
``-l info``. To see a library's debug records, lower its level in LIBRARY_LOG_LEVELS.
"""

from __future__ import annotations

from typing import Any

#: logger name -> level, applied after Faust (mode) has configured the root logger
LIBRARY_LOG_LEVELS: dict[str, str] = {
    # debug records on the per-message produce and fetch paths; its INFO lines are consumer
    # group chatter that Faust reports itself (rebalances, assignments)
    "aiokafka": "WARNING",
    # service start/stop and rebalance lines at INFO; their debug records are per-service noise
    "faust": "INFO",
    "mode": "INFO",
    # the web server's access log is off (Faust); errors and warnings only
    "aiohttp": "WARNING",
    # connection attempts and notices: warnings only (psycopg's own default)
    "psycopg": "WARNING",
}


def faust_logging_config() -> dict[str, Any]:
    """Faust's ``logging_config`` setting: merged into the root set-up ``faust worker`` makes
    (``merge``: keep its handlers and formatters, add these loggers)."""
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "loggers": {name: {"level": level} for name, level in LIBRARY_LOG_LEVELS.items()},
    }
