"""A database of the test's own on the shared PostgreSQL server: created empty, dropped after.

Roles are cluster-wide, databases are not: a test that creates tables works in its own
database, so its rows and grants never meet another test's.
"""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at the database ``dbname`` of the same server, as the same user."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    host, port, user = params.get("host"), params.get("port"), params.get("user")
    return f"postgresql://{user}@{host}:{port}/{dbname}"


async def admin(url: str, statement: sql.Composed) -> None:
    """Run ``statement`` on the server's ``postgres`` database, outside any transaction."""
    async with await psycopg.AsyncConnection.connect(
        make_conninfo(url, dbname="postgres"), autocommit=True
    ) as conn:
        await conn.execute(statement)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str = "sinks") -> AsyncIterator[str]:
    """A new, empty database on the server of ``server_url``; dropped afterwards."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:10]}"
    name = sql.Identifier(dbname)
    await admin(server_url, sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield with_dbname(server_url, dbname)
    finally:
        with contextlib.suppress(psycopg.Error):
            await admin(server_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "scratch") -> Iterator[str]:
    """``fresh_database`` for synchronous tests (a browser test's thread is playwright's); the
    URL keeps ``server_url``'s password, if any, so workers can be given it."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:10]}"
    name = sql.Identifier(dbname)
    postgres = make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield urllib.parse.urlsplit(server_url)._replace(path=f"/{dbname}").geturl()
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
