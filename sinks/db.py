"""Connections to the sink database, and the errors that make the database unusable at start."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from sinks.chunks import name_hypertable

Connection = psycopg.AsyncConnection[TupleRow]

#: Socket keepalives notice a database host that vanished without closing the connection.
_CONNECT_OPTIONS: dict[str, str | int | None] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_PASSWORD_IN_NETLOC = re.compile(r"(://[^:/@]*):[^@/]*@")


#: libpq messages of a connection that cannot work as configured (URL, sinks.timescaledb.tls)
_SETTING_ERRORS = (
    "connection is bad",
    "connection option",
    "invalid URI",
    'missing "="',
    "does not support SSL",
    "certificate verify failed",
    "does not match host name",
    "certificate file",
    "private key file",
    "invalid sslmode value",
)


class DatabaseStartupError(RuntimeError):
    """The database cannot be used at start: wrong URL, credentials, database or privileges."""


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = urlencode(
            [
                (name, "***" if name == "password" else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return _PASSWORD_IN_NETLOC.sub(r"\1:***@", url)


async def connect(url: str, purpose: str) -> Connection:
    """An autocommit connection (each transaction is an explicit ``conn.transaction()``)."""
    conninfo = make_conninfo(url, application_name=f"analytics-{purpose}", **_CONNECT_OPTIONS)
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)


#: SQLSTATE classes worth waiting for at start: connection exceptions, "the database system
#: is starting up / shutting down", too many connections.
_WAITABLE_CLASSES = ("08", "57", "53")
_WAITABLE_REFUSALS = (
    "starting up",
    "shutting down",
    "recovery mode",
    "not yet accepting connections",
    "too many clients",
    "remaining connection slots",
)


def worth_waiting(exc: BaseException) -> bool:
    """At start, whether an error may go away by itself (database not up yet) rather than being
    a wrong setting (authentication, unknown database, bad URL, missing privileges)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if exc.sqlstate is not None:
        return exc.sqlstate[:2] in _WAITABLE_CLASSES
    # libpq's connection errors carry no SQLSTATE: read the message
    message = str(exc)
    if "FATAL:" in message:  # the server answered and refused
        return any(reason in message for reason in _WAITABLE_REFUSALS)
    # a URL libpq cannot parse or a TLS setting the server or its certificate does not meet,
    # else refused, unreachable, timed out or an unresolved host
    return not any(sign in message for sign in _SETTING_ERRORS)


def describe(exc: BaseException, table: str | None = None) -> str:
    """One line: the error class and its first message line; given the ``table`` the error is
    about, TimescaleDB's chunk names in it become that table's (sinks.chunks)."""
    message = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")
    return line if table is None else name_hypertable(line, table)
