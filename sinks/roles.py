"""Least privilege in the sink database: a writer role for the sinks, a reader role for the
history API, both reconciled by the migrations, which run as the tables' owner.

=========  ==============================  ====================================================
role       setting                         privileges
=========  ==============================  ====================================================
owner      ``connection_string``'s user    owns the tables; runs the migrations (DDL)
writer     ``sinks.timescaledb.writer``    ``SELECT, INSERT, UPDATE`` on the seven sink tables:
                                           the batched upsert reads the row it may replace;
                                           ``DELETE`` on ``session_metrics`` only: an erased
                                           user's rows (sinks/erasure.py)
reader     ``sinks.timescaledb.reader``    ``SELECT`` on the seven sink tables
=========  ==============================  ====================================================

Neither may delete (but the writer an erased user's sessions), truncate, alter or create
anything, nor read ``schema_migrations``. On every migration run (under the migrations'
advisory lock) each configured role is created when missing (``LOGIN``, no other attribute,
which needs ``CREATEROLE`` for the owner) or has its attributes and password set again, and
its table privileges are replaced by exactly its list.
The password travels as the verifier libpq computes from it (``PQencryptPasswordConn``,
``password_encryption`` of the server: SCRAM-SHA-256 by default), never in clear text, so it
cannot appear in the server's statement log. An empty password leaves the role without one
(local trust authentication, scripts/postgres.sh).

Role statements are the one place where SQL text is composed with values: ``CREATE ROLE`` and
``GRANT`` take no bind parameters, so names are ``sql.Identifier``s and the verifier a
``sql.Literal``, quoted by psycopg (tests/unit/test_sql_parameterised.py allows this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import errors, sql

from sinks.db import Connection, DatabaseStartupError, describe

WRITER_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")
READER_PRIVILEGES = ("SELECT",)
#: tables whose rows name a user: the writer deletes an erased user's (sinks/erasure.py)
WRITER_DELETES_FROM = ("session_metrics",)
#: everything but LOGIN is denied explicitly, whatever the role had before
ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """A login role and the privileges it gets on the sink tables."""

    user: str
    password: str
    privileges: tuple[str, ...]


async def _exists(conn: Connection, user: str) -> bool:
    cursor = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
    return await cursor.fetchone() is not None


async def _verifier(conn: Connection, grant: RoleGrant) -> sql.Composable:
    """The password as the server will store it, hashed here with its own algorithm."""
    if not grant.password:
        return sql.SQL("NULL")
    cursor = await conn.execute("SELECT current_setting('password_encryption')")
    row = await cursor.fetchone()
    algorithm = str(row[0]) if row else "scram-sha-256"
    verifier = conn.pgconn.encrypt_password(
        grant.password.encode(), grant.user.encode(), algorithm.encode()
    )
    return sql.Literal(verifier.decode())


def role_statement(create: bool, grant: RoleGrant, verifier: sql.Composable) -> sql.Composed:
    """``CREATE ROLE`` or ``ALTER ROLE`` with the attributes and the password verifier."""
    return sql.SQL("{verb} ROLE {role} WITH {attributes} PASSWORD {verifier}").format(
        verb=sql.SQL("CREATE" if create else "ALTER"),
        role=sql.Identifier(grant.user),
        attributes=sql.SQL(ATTRIBUTES),
        verifier=verifier,
    )


def grant_statements(grant: RoleGrant, tables: Sequence[str]) -> list[sql.Composed]:
    """Revoke everything on the tables, then grant exactly the role's privileges."""
    targets = sql.SQL(", ").join(sql.Identifier(table) for table in tables)
    role = sql.Identifier(grant.user)
    privileges = sql.SQL(", ").join(sql.SQL(p) for p in grant.privileges)
    statements = [
        sql.SQL("REVOKE ALL ON TABLE {tables} FROM {role}").format(tables=targets, role=role),
        sql.SQL("GRANT {privileges} ON TABLE {tables} TO {role}").format(
            privileges=privileges, tables=targets, role=role
        ),
    ]
    erasable = [table for table in WRITER_DELETES_FROM if table in tables]
    if grant.privileges == WRITER_PRIVILEGES and erasable:
        statements.append(
            sql.SQL("GRANT DELETE ON TABLE {tables} TO {role}").format(
                tables=sql.SQL(", ").join(sql.Identifier(table) for table in erasable), role=role
            )
        )
    return statements


async def reconcile_roles(
    conn: Connection, grants: Sequence[RoleGrant], tables: Sequence[str]
) -> list[str]:
    """Create or update each role and set its privileges on ``tables``; one note per role."""
    notes = []
    for grant in grants:
        try:
            async with conn.transaction():
                create = not await _exists(conn, grant.user)
                await conn.execute(role_statement(create, grant, await _verifier(conn, grant)))
                for statement in grant_statements(grant, tables):
                    await conn.execute(statement)
        except errors.InsufficientPrivilege as exc:
            raise DatabaseStartupError(
                f"cannot set up the database role {grant.user!r}: {describe(exc)} (the "
                "connection_string's user needs CREATEROLE, or create the role as "
                "docs/sinks.md, Roles, shows)"
            ) from None
        notes.append(f"role {grant.user}: {', '.join(grant.privileges)} on the sink tables")
    return notes
