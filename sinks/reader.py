"""Running the history queries (sinks/queries.py) for the web API, with bounded waiting.

One short-lived connection per request: the history endpoints are dashboard queries, not a hot
path, and a connection of their own keeps them apart from the sinks' write connections (which
may be waiting out an outage) without adding a pool dependency. Every step is bounded: libpq's
``connect_timeout``, the server's ``statement_timeout`` and an overall deadline around both,
so a database that is down, unreachable or stuck answers ``DatabaseUnavailable`` with the
reason within ``QUERY_TIMEOUT`` instead of holding the HTTP request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sinks import health
from sinks.db import describe
from sinks.migrations import PLAIN, TIMESCALE

log = logging.getLogger(__name__)

#: the longest a history request waits for the database, connection included
QUERY_TIMEOUT = timedelta(seconds=5)
_CONNECT_TIMEOUT_S = 3  # libpq's minimum is 2 s

DETECT_TIMESCALE = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"

#: the database mode each URL was found in, when the sinks have not said (see ``mode_of``)
_MODES: dict[str, str] = {}

Query = str | sql.Composed | Callable[[str], sql.Composed]


class DatabaseUnavailable(RuntimeError):
    """The database cannot answer now; ``str()`` says why (connection refused, timeout...)."""


def conninfo(url: str, timeout: timedelta) -> str:
    """The URL with a connect timeout, a statement timeout and UTC as the session time zone."""
    statement_ms = max(1, int(timeout.total_seconds() * 1000))
    return make_conninfo(
        url,
        application_name="analytics-api",
        connect_timeout=_CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={statement_ms} -c TimeZone=UTC",
    )


async def mode_of(conn: psycopg.AsyncConnection[Any], url: str) -> str:
    """TimescaleDB or plain PostgreSQL: what the sinks' migrations found, else asked once."""
    known = health.sink_health()["database"]["mode"]
    if known in (PLAIN, TIMESCALE):
        return str(known)
    if url not in _MODES:
        cursor = await conn.execute(DETECT_TIMESCALE)
        row = await cursor.fetchone()
        _MODES[url] = TIMESCALE if row is not None and row[0] else PLAIN
    return _MODES[url]


async def fetch(
    url: str,
    query: Query,
    params: Mapping[str, Any],
    timeout: timedelta = QUERY_TIMEOUT,
) -> list[tuple[Any, ...]]:
    """The rows of ``query`` (SQL, or a function of the database mode giving it)."""
    seconds = timeout.total_seconds()
    try:
        async with asyncio.timeout(seconds):
            conn = await psycopg.AsyncConnection.connect(conninfo(url, timeout), autocommit=True)
            try:
                if isinstance(query, str):
                    statement: bytes | sql.Composed = query.encode()
                elif isinstance(query, sql.Composed):
                    statement = query
                else:
                    statement = query(await mode_of(conn, url))
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall()
            finally:
                await conn.close()
    except TimeoutError:
        raise DatabaseUnavailable(f"no answer within {seconds:g} s") from None
    except psycopg.Error as exc:
        log.warning("history query failed: %s", describe(exc))
        raise DatabaseUnavailable(describe(exc)) from None
