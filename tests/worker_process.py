"""Run ``faust -A app worker`` as a subprocess, for integration tests and benchmarks.

Each worker gets its own HTTP port, data directory and log file, and is configured only through
the environment (app.settings): the topic prefix and consumer group name keep tests that share
one broker apart, and the short session timeout makes a fresh group ready in seconds
(../shared/FACTS.md). Readiness is decided by polling ``GET /health`` against a deadline, never
by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.tls_files import TlsFiles

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 80

# Worker processes started by this interpreter and not yet reaped: killed at exit, so an
# interrupted test run never leaves a worker consuming from the shared broker.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@dataclass(frozen=True)
class Services:
    """Where the broker and the database are."""

    kafka_bootstrap: str
    database_url: str


def parse_exports(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of ``scripts/services.sh start|env`` as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def services_from_script(action: str = "start", timeout: float = 180) -> Services:
    """Start (or describe) the local services with ``scripts/services.sh``; raises on failure."""
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "services.sh"), action],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    exports = parse_exports(result.stdout)
    if result.returncode != 0 or "KAFKA_BOOTSTRAP" not in exports:
        raise RuntimeError(
            f"scripts/services.sh {action} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return Services(exports["KAFKA_BOOTSTRAP"], exports.get("DATABASE_URL", ""))


def new_topic_prefix() -> str:
    """A topic prefix no other test uses, like ``t1a2b3c4d-``."""
    return f"t{uuid.uuid4().hex[:8]}-"


def new_group_id() -> str:
    """A consumer group (Faust app id) no other test uses."""
    return f"g{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            tail = deque(handle, maxlen=lines)
    except FileNotFoundError:
        return ""
    return b"".join(tail).decode("utf-8", "replace")


class WorkerNotReady(RuntimeError):
    """A worker did not become ready in time, or exited; the message holds its log tail."""


class Worker:
    """One ``faust -A app worker`` subprocess."""

    def __init__(
        self,
        pool: WorkerPool,
        name: str,
        group_id: str,
        topic_prefix: str,
        port: int,
        log_path: Path,
        proc: subprocess.Popen[bytes],
        tls: TlsFiles | None = None,
    ) -> None:
        self.pool = pool
        self.name = name
        self.group_id = group_id
        self.topic_prefix = topic_prefix
        self.port = port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        #: for urllib and aiohttp: trusts the CA of the worker's certificate (HTTPS workers)
        self.ssl_context = ssl.create_default_context(cafile=str(tls.ca)) if tls else None
        self.log_path = log_path
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.proc.returncode}"
        return f"<Worker {self.name} pid={self.pid} {self.url} {state}>"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def health(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` of ``GET /health``; None when the server does not answer."""
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=timeout, context=self.ssl_context
            ) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                body = {}
            return exc.code, body
        except (OSError, ValueError):
            return None

    def wait_ready(self, partitions_expected: int | None = None, timeout: float = 90) -> None:
        """Poll ``GET /health`` until it answers 200 and, when ``partitions_expected`` is given,
        the live workers of this group together own exactly partitions ``0..n-1`` of
        ``user-events`` with none of them rebalancing (seen on two polls in a row).

        Raises WorkerNotReady with the last log lines at the deadline or if a worker exits.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        stable = 0
        while True:
            group = [w for w in self.pool.workers if w.group_id == self.group_id and w.alive]
            if not self.alive:
                raise WorkerNotReady(self._report(f"exited with code {self.proc.returncode}"))
            ok, last = self._check(group, partitions_expected)
            stable = stable + 1 if ok else 0
            if stable >= (1 if partitions_expected is None else 2):
                return
            if time.monotonic() >= deadline:
                raise WorkerNotReady(self._report(f"not ready after {timeout:.0f} s: {last}"))
            time.sleep(POLL_INTERVAL_S)

    def _check(self, group: list[Worker], partitions_expected: int | None) -> tuple[bool, str]:
        own = self.health()
        if own is None or own[0] != 200:
            return False, f"GET /health -> {own}"
        if partitions_expected is None:
            return True, "ok"
        owned: list[int] = []
        for worker in group:
            answer = own if worker is self else worker.health()
            if answer is None or answer[0] != 200:
                return False, f"{worker.name}: GET /health -> {answer}"
            state = answer[1].get("worker", {})
            if state.get("rebalancing", True):
                return False, f"{worker.name} is rebalancing"
            owned += state.get("user_events_partitions", [])
        if sorted(owned) != list(range(partitions_expected)):
            return (
                False,
                f"workers own partitions {sorted(owned)}, want 0..{partitions_expected - 1}",
            )
        return True, "ok"

    async def await_ready(
        self, partitions_expected: int | None = None, timeout: float = 90
    ) -> None:
        """``wait_ready`` from async code, without blocking the event loop."""
        await asyncio.to_thread(self.wait_ready, partitions_expected, timeout)

    def _report(self, problem: str) -> str:
        return f"worker {self.name} ({self.url}) {problem}; last log lines:\n{self.log_tail()}"

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> int:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.alive:
            self.proc.kill()
        return self._reap(30)

    def _reap(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        _LIVE.pop(self.pid, None)
        return code

    def peak_rss_kib(self) -> int | None:
        """VmHWM (peak resident set) from /proc, in KiB; None once the process has gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None


class WorkerPool:
    """Starts workers against one set of services and stops them all at the end."""

    def __init__(self, services: Services, workdir: Path) -> None:
        self.services = services
        self.workdir = workdir
        self.workers: list[Worker] = []
        self._launches: dict[str, tuple[str, str, dict[str, str] | None, TlsFiles | None]] = {}

    def start(
        self,
        topic_prefix: str,
        group_id: str,
        extra_env: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        *,
        again: Worker | None = None,
        log_level: str = "info",
    ) -> Worker:
        """Launch ``python -m faust -A app worker``; call ``wait_ready`` before using it.

        With ``tls`` (a certificate for 127.0.0.1) the worker serves HTTPS only. ``again``:
        a worker that has exited, started anew with its name, port and data directory (its
        local RocksDB state kept); ``restart`` does that with its settings. ``log_level``:
        the project's loggers' level (``-l``; libraries: app/log_levels.py)."""
        if again is None:
            name = f"w{len(self.workers) + 1}"
            port = free_port()
        else:
            name, port = again.name, again.port
        self._launches[name] = (topic_prefix, group_id, extra_env, tls)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "PYTHONUNBUFFERED": "1",
                "KAFKA_BOOTSTRAP": self.services.kafka_bootstrap,
                "DATABASE_URL": self.services.database_url,
                "ANALYTICS__ENGINE__TOPIC_PREFIX": topic_prefix,
                "ANALYTICS__SOURCES__KAFKA__GROUP_ID": group_id,
                "ANALYTICS__ENGINE__SESSION_TIMEOUT": "10s",
                "ANALYTICS__ENGINE__HEARTBEAT_INTERVAL": "1s",
                "ANALYTICS__ENGINE__BATCH_WITHIN": "100ms",
                "ANALYTICS__SOURCES__HTTP__LISTEN_ADDR": f"127.0.0.1:{port}",
                "ANALYTICS__METRICS__ENABLED": "false",
            }
        )
        if not self.services.database_url:
            del env["DATABASE_URL"]
        if tls is not None:
            env.update(
                {
                    "ANALYTICS__SOURCES__HTTP__TLS__ENABLED": "true",
                    "ANALYTICS__SOURCES__HTTP__TLS__CERT_FILE": str(tls.cert),
                    "ANALYTICS__SOURCES__HTTP__TLS__KEY_FILE": str(tls.key),
                }
            )
        env.update(extra_env or {})
        command = [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "app",
            "--datadir",
            str(self.workdir / name),
            "worker",
            "-l",
            log_level,
        ]
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches it only through us
            )
        _LIVE[proc.pid] = proc
        worker = Worker(self, name, group_id, topic_prefix, port, log_path, proc, tls)
        self.workers.append(worker)
        return worker

    __call__ = start

    def restart(self, worker: Worker) -> Worker:
        """Start an exited worker again, as it was (same settings, port and data directory)."""
        if worker.alive:
            raise RuntimeError(f"{worker!r} is still running")
        topic_prefix, group_id, extra_env, tls = self._launches[worker.name]
        return self.start(topic_prefix, group_id, extra_env, tls, again=worker)

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM every live worker at once, then wait for each (SIGKILL after ``timeout``)."""
        for worker in self.workers:
            if worker.alive:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            worker.stop(timeout)

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """Every worker's log tail, for a failure report."""
        return "\n".join(
            f"===== {worker!r} log {worker.log_path} (last {lines} lines) =====\n"
            f"{worker.log_tail(lines)}"
            for worker in self.workers
        )


def faust_command(
    args: list[str], services: Services, topic_prefix: str, group_id: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m faust -A app ARGS`` (an operator command, not a worker) against the
    test's topics; ``env`` adds to or overrides the environment (DATABASE_URL, ...)."""
    environment = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        KAFKA_BOOTSTRAP=services.kafka_bootstrap,
        DATABASE_URL=services.database_url,
        ANALYTICS__ENGINE__TOPIC_PREFIX=topic_prefix,
        ANALYTICS__SOURCES__KAFKA__GROUP_ID=group_id,
    )
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
