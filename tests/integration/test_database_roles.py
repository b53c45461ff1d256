"""Least privilege in the sink database (issue 11, item 5), on the real PostgreSQL.

The migrations, run as the tables' owner, create a writer and a reader role
(sinks/roles.py). Each role then connects and does what its part of the worker does (the
sinks' batched upsert, the history API's query), and every statement outside that fails with
"permission denied" or "must be owner". The local cluster trusts local connections
(scripts/postgres.sh), so passwords are not checked here; that the roles lack the privileges
is. A worker configured with the roles writes as the writer and answers history queries as
the reader.

Roles are cluster-wide: each test names its own and drops them at the end; the tables are in a
database of the test's own (tests/databases.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from analytics.timeutil import format_ts
from sinks import queries
from sinks.erasure import erase_rows
from sinks.migrations import MigrationOptions, migrate_url
from sinks.reader import fetch
from sinks.roles import READER_PRIVILEGES, WRITER_PRIVILEGES, RoleGrant
from sinks.schema import DIMENSION_STATS
from sinks.writers import write_batch
from tests.databases import admin, fresh_database
from tests.missing_services import service_missing
from tests.polling import poll
from tests.worker_process import Services, WorkerPool

pytestmark = pytest.mark.integration

WINDOW_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Roles:
    database: str  # the owner's URL
    writer: RoleGrant
    reader: RoleGrant

    def url(self, grant: RoleGrant) -> str:
        return make_conninfo(self.database, user=grant.user, password=grant.password)


@pytest.fixture
async def roles(services: Services) -> AsyncIterator[Roles]:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    tag = uuid.uuid4().hex[:8]
    writer = RoleGrant(f"writer_{tag}", f"w-{tag}-secret", WRITER_PRIVILEGES)
    reader = RoleGrant(f"reader_{tag}", f"r-{tag}-secret", READER_PRIVILEGES)
    async with fresh_database(services.database_url, "roles") as database:
        try:
            yield Roles(database, writer, reader)
        finally:
            async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
                for grant in (writer, reader):
                    role = sql.Identifier(grant.user)
                    await conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
    for grant in (writer, reader):
        await admin(
            services.database_url,
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(grant.user)),
        )


def dimension_record(value: str, events: int) -> dict[str, Any]:
    return {
        "window_start": format_ts(WINDOW_START_MS),
        "window_end": format_ts(WINDOW_START_MS + 60_000),
        "dimension": "device",
        "value": value,
        "events": events,
        "users": 1,
        "page_views": events,
        "revenue": 0,
        "revenue_cents": 0,
    }


async def refused(url: str, statement: str) -> str:
    """The error a role gets for ``statement``; fails the test if it succeeds."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            await conn.execute(statement.encode())
    assert isinstance(raised.value, errors.InsufficientPrivilege), raised.value
    return str(raised.value)


async def test_each_role_can_do_its_work_and_nothing_else(roles: Roles) -> None:
    options = MigrationOptions(roles=(roles.writer, roles.reader))
    report = await migrate_url(roles.database, options, wait=timedelta(seconds=10))
    assert f"role {roles.writer.user}: SELECT, INSERT, UPDATE on the sink tables" in report.notes

    # the writer: the sinks' upsert, twice (the second an update), and nothing more
    async with await psycopg.AsyncConnection.connect(
        roles.url(roles.writer), autocommit=True
    ) as conn:
        assert (await write_batch(conn, DIMENSION_STATS, [dimension_record("mobile", 3)])).written
        again = await write_batch(conn, DIMENSION_STATS, [dimension_record("mobile", 4)])
        assert again.written == 1 and not again.rejected
    writer = roles.url(roles.writer)
    assert "permission denied for table dimension_stats" in await refused(
        writer, "DELETE FROM dimension_stats"
    )
    # ... but an erased user's sessions (sinks/erasure.py)
    async with await psycopg.AsyncConnection.connect(writer, autocommit=True) as conn:
        assert await erase_rows(conn, "session_metrics", ["nobody"]) == 0
    await refused(writer, "TRUNCATE session_metrics")
    await refused(writer, "TRUNCATE dimension_stats")
    assert "must be owner" in await refused(writer, "DROP TABLE kpi_metrics")
    assert "must be owner" in await refused(writer, "ALTER TABLE kpi_metrics ADD COLUMN x int")
    assert "permission denied for schema public" in await refused(
        writer, "CREATE TABLE stolen (x int)"
    )
    await refused(writer, "SELECT * FROM schema_migrations")
    await refused(writer, "CREATE ROLE another LOGIN")

    # the reader: the history API's queries, and no write of any kind
    reader = roles.url(roles.reader)
    rows = await fetch(
        reader,
        queries.kpi_buckets_sql,
        queries.kpi_bucket_params("1h", WINDOW_START_MS, WINDOW_START_MS + 3_600_000),
    )
    assert rows == []  # no final KPI window yet, but the query ran as the reader
    async with await psycopg.AsyncConnection.connect(reader, autocommit=True) as conn:
        cursor = await conn.execute("SELECT events FROM dimension_stats WHERE value = 'mobile'")
        assert await cursor.fetchall() == [(4,)]
    await refused(reader, "INSERT INTO kpi_metrics (window_start) VALUES (now())")
    await refused(reader, "UPDATE dimension_stats SET events = 0")
    await refused(reader, "DELETE FROM session_metrics")
    await refused(reader, "SELECT * FROM schema_migrations")

    # the passwords are stored as verifiers, never in clear text
    async with await psycopg.AsyncConnection.connect(roles.database, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT rolname, rolpassword, rolsuper, rolcreaterole, rolcreatedb FROM pg_authid "
            "WHERE rolname = ANY(%s) ORDER BY rolname",
            ([roles.reader.user, roles.writer.user],),
        )
        for _, verifier, *powers in await cursor.fetchall():
            assert verifier.startswith(("SCRAM-SHA-256$", "md5")) and powers == [False] * 3
            assert roles.writer.password not in verifier

    # a second run (another worker starting) changes nothing and still succeeds
    report = await migrate_url(roles.database, options, wait=timedelta(seconds=10))
    assert report.applied == []


def sink_users(owner_url: str) -> set[str]:
    """The roles the worker's sink connections logged in as."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'analytics-sink-%'"
        ).fetchall()
    return {str(row[0]) for row in rows}


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_worker_writes_as_the_writer_and_reads_as_the_reader(
    roles: Roles, services: Services, tmp_path: Path, topic_prefix: str, group_id: str
) -> None:
    pool = WorkerPool(Services(services.kafka_bootstrap, roles.database), tmp_path / "workers")
    try:
        worker = pool.start(
            topic_prefix,
            group_id,
            {
                "ANALYTICS__SINKS__TIMESCALEDB__WRITER__USER": roles.writer.user,
                "ANALYTICS__SINKS__TIMESCALEDB__WRITER__PASSWORD": roles.writer.password,
                "ANALYTICS__SINKS__TIMESCALEDB__READER__USER": roles.reader.user,
                "ANALYTICS__SINKS__TIMESCALEDB__READER__PASSWORD": roles.reader.password,
            },
        )
        worker.wait_ready(8, timeout=120)
        event = {"user_id": "roles-u1", "action": "page_view", "page": "/"}
        ingest = urllib.request.Request(
            worker.url + "/ingest",
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(ingest, timeout=30) as response:
            assert response.status == 202
        # the sinks connect with their first batch: the event's live KPI window is one
        users = poll(lambda: sink_users(roles.database), bool, 120, "a sink connection")
        assert users == {roles.writer.user}

        path = worker.url + "/api/sessions?user_id=nobody"
        assert get(path) == (200, {**get(path)[1], "sessions": []})
        # without SELECT the query fails: the API does read as the reader role
        with psycopg.connect(roles.database, autocommit=True) as conn:
            conn.execute(
                sql.SQL("REVOKE SELECT ON session_metrics FROM {}").format(
                    sql.Identifier(roles.reader.user)
                )
            )
        status, body = get(path)
        assert status == 503
        assert "permission denied for table session_metrics" in body["error"]
    finally:
        pool.stop_all()
