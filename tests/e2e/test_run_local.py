"""The README's first command, ``scripts/run-local.sh``, as a user on a fresh machine runs it.

The run gets a scratch folder that does not exist yet (``ANALYTICS_SCRATCH`` in a new temporary
directory: its own Kafka cluster, PostgreSQL cluster and worker state) and its own ports, so it
never touches the services the rest of the suite uses. The test waits for what a user looks
at: ``/health``, a non-empty ``/api/kpis/current``, ``/dashboard``, the Prometheus metrics and
rows of a final window in the database; then presses Ctrl-C (SIGINT to the script's process
group, as a terminal does) and checks that the script exits 0 and leaves only Kafka and
PostgreSQL running. ``scripts/services.sh stop`` and ``start`` keep the topics, the rows, the
addresses and the worker's state: the main job run again serves the first run's windows.
``scripts/services.sh reset`` deletes it all. Teardown ends every process of the scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import poll
from tests.worker_process import REPO_ROOT, free_port, log_tail, parse_exports

#: seconds of sample traffic; the checks need about 80 s and Ctrl-C normally ends the traffic
DURATION_S = 120
#: a fresh scratch: Kafka format and start, initdb, and the worker's first group join
READY_TIMEOUT_S = 180
#: the first final window: up to a minute of window, the grace, and the sink's flush
FINAL_WINDOW_TIMEOUT_S = 150
EVENTS_METRIC = "analytics_dashboard_events_processed"


class LocalRun:
    """``scripts/run-local.sh`` runs in one scratch folder, with their own ports."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.scratch = base / "scratch"  # does not exist: a machine that never ran the script
        web, kafka, postgres, metrics = _distinct_free_ports(4)
        self.web = f"http://127.0.0.1:{web}"
        self.metrics = f"http://127.0.0.1:{metrics}/metrics"
        self.env = _user_shell_env(
            ANALYTICS_SCRATCH=str(self.scratch),
            WEB_PORT=str(web),
            KAFKA_PORT=str(kafka),
            POSTGRES_PORT=str(postgres),
            ANALYTICS__METRICS__PORT=str(metrics),
            DURATION=str(DURATION_S),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.output = base / "run-local.out"

    def start(self) -> None:
        """Start the script, as a terminal starts a job: its own process group, Ctrl-C live."""
        self.runs += 1
        self.output = self.base / f"run-local-{self.runs}.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(REPO_ROOT / "scripts" / "run-local.sh")],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # our caller may ignore SIGINT; a terminal's foreground job does not
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    def ctrl_c(self, timeout: float = 90) -> int:
        """SIGINT to the script's process group, as Ctrl-C in a terminal; its exit status."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def running(self) -> None:
        """Fail with the output if the script has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"scripts/run-local.sh exited with {self.proc.returncode}\n{self.report()}"
            )

    def report(self) -> str:
        """The script's output and the worker log's tail, for a failure message."""
        return (
            f"--- scripts/run-local.sh output ({self.output}) ---\n{log_tail(self.output)}\n"
            f"--- worker log ---\n{log_tail(self.scratch / 'worker.log')}"
        )

    def addresses(self) -> dict[str, str]:
        """KAFKA_BOOTSTRAP and DATABASE_URL, as the scripts recorded them."""
        return parse_exports((self.scratch / "services.env").read_text())

    def services(self, action: str) -> dict[str, str]:
        """``scripts/services.sh ACTION`` in this scratch; its export lines."""
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "services.sh"), action],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"services.sh {action}: {result.stderr}"
        return parse_exports(result.stdout)

    def close(self) -> None:
        """End the script and everything it started, and delete the scratch."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.services("stop")
        _end(_scratch_processes(self.scratch))
        shutil.rmtree(self.base, ignore_errors=True)


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _user_shell_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell (none of the suite's service addresses) plus extra."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ANALYTICS") and name not in {"KAFKA_BOOTSTRAP", "DATABASE_URL"}
    }
    env.update(extra)
    return env


def _scratch_processes(scratch: Path) -> list[psutil.Process]:
    """Every process started with this run's ANALYTICS_SCRATCH (the script and its children)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("ANALYTICS_SCRATCH") == str(scratch):
                found.append(process)
    return found


def _describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
    return described


def _service_pids(scratch: Path) -> set[int]:
    """Kafka's JVM and PostgreSQL's postmaster with its children, from their pid files."""
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((scratch / "kafka" / "kafka.pid").read_text()))
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        postmaster = int((scratch / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        pids.add(postmaster)
        pids.update(child.pid for child in psutil.Process(postmaster).children(recursive=True))
    return pids


def _end(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def local_run() -> Iterator[LocalRun]:
    """A fresh scratch for ``scripts/run-local.sh``; everything of it ended at teardown."""
    base = Path(tempfile.mkdtemp(prefix="run-local-"))
    base.chmod(0o755)  # PostgreSQL runs as the postgres user when we are root
    run = LocalRun(base)
    try:
        yield run
    finally:
        run.close()


def _get(url: str) -> tuple[int, str, bytes] | None:
    """``(status, content type, body)`` of a GET; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()
    except OSError:
        return None


def _get_json(run: LocalRun, path: str) -> Any:
    run.running()
    answer = _get(run.web + path)
    if answer is None or answer[0] != 200:
        return answer
    return json.loads(answer[2])


def _events_processed(run: LocalRun) -> float:
    run.running()
    answer = _get(run.metrics)
    if answer is None or answer[0] != 200:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(answer[2].decode())
        if family.name == EVENTS_METRIC
        for sample in family.samples
        if sample.name == f"{EVENTS_METRIC}_total"
    )


def _final_rows(database_url: str, run: LocalRun | None = None) -> dict[str, Any]:
    """Final KPI windows and page rows in the database, and the first final window's start."""
    if run is not None:
        run.running()
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        kpis, first = conn.execute(
            "SELECT count(*), min(window_start) FROM kpi_metrics WHERE is_final"
        ).fetchone() or (0, None)
        (pages,) = conn.execute("SELECT count(*) FROM page_view_stats").fetchone() or (0,)
    return {"final_kpi_windows": kpis, "page_rows": pages, "first_final_window": first}


def _topics(bootstrap: str) -> set[str]:
    async def list_topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(list_topics())


def _cluster_id(scratch: Path) -> str:
    for line in (scratch / "kafka" / "data" / "meta.properties").read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.removeprefix("cluster.id=")
    raise AssertionError("no cluster.id in meta.properties")


def _serving(run: LocalRun) -> dict[str, Any]:
    """Wait for what a user looks at; the database rows of the first final window."""
    health = poll(
        lambda: _get_json(run, "/health"),
        lambda body: (
            isinstance(body, dict)
            and body.get("worker", {}).get("user_events_partitions") == list(range(8))
        ),
        READY_TIMEOUT_S,
        "GET /health with all 8 partitions",
    )
    assert health["status"] in {"ok", "degraded"}, health
    current = poll(
        lambda: _get_json(run, "/api/kpis/current"),
        lambda body: isinstance(body, dict) and (body.get("kpi") or {}).get("total_events", 0) > 0,
        60,
        "a current KPI window with events",
    )
    assert current["kpi"]["window_start"] < current["kpi"]["window_end"]
    dashboard = _get(run.web + "/dashboard")
    assert dashboard is not None and dashboard[:2] == (200, "text/html"), dashboard
    assert b"<html" in dashboard[2].lower()
    poll(lambda: _events_processed(run), lambda n: n > 0, 60, f"{EVENTS_METRIC}_total > 0")
    rows: dict[str, Any] = poll(
        lambda: _final_rows(run.addresses()["DATABASE_URL"], run),
        lambda rows: rows["final_kpi_windows"] > 0 and rows["page_rows"] > 0,
        FINAL_WINDOW_TIMEOUT_S,
        "rows of the first final window in PostgreSQL",
    )
    worker_log = (run.scratch / "worker.log").read_text()
    assert "[INFO] analytics worker ready:" in worker_log, "the worker's own INFO lines show"
    assert f"metrics={run.metrics.removeprefix('http://').removesuffix('/metrics')}" in worker_log
    return rows


def _stopped_cleanly_by_ctrl_c(run: LocalRun) -> None:
    """Exit status 0; nothing of the run left but Kafka and PostgreSQL, which keep running."""
    code = run.ctrl_c()
    assert code == 0, f"exit status {code} after Ctrl-C\n{run.report()}"
    assert "stopped the worker and the generator" in run.output.read_text()
    services = _service_pids(run.scratch)
    assert len(services) >= 2, f"Kafka and PostgreSQL should keep running: {services}"
    leftovers = poll(
        lambda: _describe([p for p in _scratch_processes(run.scratch) if p.pid not in services]),
        lambda found: not found,
        15,
        "no process of the run but Kafka and PostgreSQL",
    )
    assert not leftovers


def test_run_local_on_a_fresh_machine(local_run: LocalRun) -> None:
    run = local_run

    # --- the main job on a fresh machine: up, serving, then Ctrl-C
    run.start()
    rows = _serving(run)
    _stopped_cleanly_by_ctrl_c(run)

    # --- scripts/services.sh stop and start keep the data, the addresses and the worker state
    addresses = run.addresses()
    topics = _topics(addresses["KAFKA_BOOTSTRAP"])
    assert {"user-events", "live-kpis", "kpi-partials"} <= topics, topics
    assert any(topic.endswith("-changelog") for topic in topics), topics
    cluster = _cluster_id(run.scratch)
    run.services("stop")
    stopped = poll(
        lambda: _describe(_scratch_processes(run.scratch)),
        lambda found: not found,
        30,
        "no process of the run after scripts/services.sh stop",
    )
    assert not stopped
    assert run.services("start") == addresses
    assert _cluster_id(run.scratch) == cluster
    assert _topics(addresses["KAFKA_BOOTSTRAP"]) == topics
    kept = _final_rows(addresses["DATABASE_URL"])
    assert kept["final_kpi_windows"] >= rows["final_kpi_windows"], kept
    assert kept["first_final_window"] == rows["first_final_window"], kept
    assert (run.scratch / "worker-data" / cluster).is_dir(), "the worker's state folder is kept"

    # --- the main job again: the worker resumes with its tables (the first run's windows)
    run.start()
    first = rows["first_final_window"]
    window = f"from={_rfc3339(first)}&to={_rfc3339(first + timedelta(minutes=1))}"
    windows = poll(
        lambda: _get_json(run, f"/api/kpis?{window}"),
        lambda body: isinstance(body, dict) and bool(body.get("windows")),
        READY_TIMEOUT_S,
        "the first run's final window in the restarted worker's KPI history",
    )
    assert windows["windows"][0]["is_final"] is True, windows
    _stopped_cleanly_by_ctrl_c(run)

    # --- scripts/services.sh reset: a clean slate
    run.services("reset")
    assert not _scratch_processes(run.scratch)
    for gone in ("kafka", "postgres", "worker-data", "services.env"):
        assert not (run.scratch / gone).exists(), gone


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
