"""sinks.timescaledb.tls against the real PostgreSQL, with TLS switched on for the test.

The scratch cluster gets a certificate for 127.0.0.1 from a CA of the test's own
(``ALTER SYSTEM`` + reload, reverted afterwards). The server then speaks TLS to every client that
asks (libpq's default ``sslmode=prefer`` asks), so what shows that the settings reach the
connections is verification: the right CA under ``verify-full`` works, another CA stops the
worker at once, naming the database and the reason.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.polling import poll
from tests.tls_files import TlsFiles, make_tls_files
from tests.worker_process import Services, WorkerPool

pytestmark = pytest.mark.integration

SERVER_FILES = ("analytics-test-server.crt", "analytics-test-server.key")


@dataclass
class TlsServer:
    """The scratch PostgreSQL with TLS on: ``tls`` is the CA and certificate it serves now."""

    url: str
    data: Path
    tls: TlsFiles

    def serve(self, tls: TlsFiles) -> None:
        """Serve ``tls``'s certificate (for 127.0.0.1) from now on."""
        owner = self.data.stat()
        for name, source in zip(SERVER_FILES, (tls.cert, tls.key), strict=True):
            target = self.data / name
            target.write_bytes(source.read_bytes())
            os.chown(target, owner.st_uid, owner.st_gid)
            target.chmod(0o600)  # PostgreSQL refuses a key others can read
        _configure(self.url, ssl="on", ssl_cert_file=SERVER_FILES[0], ssl_key_file=SERVER_FILES[1])
        verified = f"{self.url}?sslmode=verify-full&sslrootcert={tls.ca}"
        poll(lambda: _ssl_in_use(verified), bool, 30, "the new certificate on the server")
        self.tls = tls


@pytest.fixture
def tls_database(services: Services, tmp_path: Path) -> Iterator[TlsServer]:
    """The services' PostgreSQL with TLS on, until the test ends."""
    if not services.database_url:
        pytest.skip("no DATABASE_URL: the database TLS test needs the scratch PostgreSQL")
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    data = Path(row[0])
    if not data.is_dir() or os.geteuid() not in (0, data.stat().st_uid):
        pytest.skip(f"the server's data directory {data} is not writable here (not root)")
    server = TlsServer(services.database_url, data, make_tls_files(tmp_path / "ca-1", "127.0.0.1"))
    try:
        server.serve(server.tls)
        yield server
    finally:
        _configure(services.database_url, ssl=None, ssl_cert_file=None, ssl_key_file=None)
        for name in SERVER_FILES:
            (data / name).unlink(missing_ok=True)


def _configure(url: str, **settings: str | None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            if value is None:
                conn.execute(f"ALTER SYSTEM RESET {name}")
            else:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def _ssl_in_use(url: str) -> bool:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return bool(row.fetchone() == (True,))
    except psycopg.OperationalError:
        return False


def _tls_env(tls_ca: Path) -> dict[str, str]:
    return {
        "ANALYTICS__SINKS__TIMESCALEDB__TLS__MODE": "verify-full",
        "ANALYTICS__SINKS__TIMESCALEDB__TLS__CA_FILE": str(tls_ca),
        "ANALYTICS__SINKS__TIMESCALEDB__STARTUP_TIMEOUT": "10m",  # a refusal must not wait
    }


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_migrations_sinks_and_history_api_verify_the_server_as_configured(
    tls_database: TlsServer,
    worker_factory: WorkerPool,
    topic_prefix: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    """The worker migrates over verify-full and its history API answers; once the server shows
    a certificate of another CA, the API's next connection refuses it and says so."""
    worker = worker_factory.start(topic_prefix, group_id, _tls_env(tls_database.tls.ca))
    worker.wait_ready(timeout=120)
    sessions = worker.url + "/api/sessions?user_id=nobody"
    status, body = poll(lambda: _get(sessions), lambda a: a[0] == 200, 60, "GET /api/sessions")
    assert body["source"] == "database", body

    tls_database.serve(make_tls_files(tmp_path / "ca-2", "127.0.0.1"))
    status, body = _get(sessions)
    assert status == 503, body
    assert "certificate verify failed" in body["error"], body


def test_a_certificate_from_another_ca_stops_the_worker_at_once(
    tls_database: TlsServer,
    worker_factory: WorkerPool,
    topic_prefix: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    stranger = make_tls_files(tmp_path / "stranger", "127.0.0.1")
    started = time.monotonic()
    worker = worker_factory.start(topic_prefix, group_id, _tls_env(stranger.ca))
    poll(lambda: worker.alive, lambda alive: not alive, 90, "the worker to stop")
    assert worker.proc.returncode != 0
    assert time.monotonic() - started < 90  # not the 10 minutes of startup_timeout
    log = worker.log_path.read_text(errors="replace")
    host = conninfo_to_dict(worker_factory.services.database_url)
    assert f"cannot use the database at postgresql://analytics@{host['host']}" in log
    assert "certificate verify failed" in log
    assert "sslmode=verify-full" in log
