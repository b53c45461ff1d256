"""Run a real Prometheus server as a subprocess, for the dashboard's PromQL test.

The binary is Debian's (scripts/prometheus.sh installs it; ``PROMETHEUS`` names another). The
server gets the scrape configuration of docker/prometheus.yml with the test's targets and a
short scrape interval, listens on 127.0.0.1 on a free port and keeps its data in a folder of the
test; ``stop()`` ends it. Readiness is polled on ``/-/ready`` against a deadline.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.worker_process import REPO_ROOT, free_port, log_tail

DOCKER_CONFIG = REPO_ROOT / "docker" / "prometheus.yml"
WORKERS_JOB = "analytics-workers"


def prometheus_binary() -> str | None:
    """``$PROMETHEUS``, else ``prometheus`` on the PATH, else None."""
    configured = os.environ.get("PROMETHEUS")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")


def scrape_config(targets: list[str], scrape_interval_s: int) -> dict[str, Any]:
    """docker/prometheus.yml with only its workers' job, scraping ``targets``."""
    config: dict[str, Any] = yaml.safe_load(DOCKER_CONFIG.read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = f"{scrape_interval_s}s"
    config["global"]["evaluation_interval"] = f"{scrape_interval_s}s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == WORKERS_JOB]
    (static,) = job["static_configs"]
    static["targets"] = targets
    config["scrape_configs"] = [job]
    return config


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error (the message says which)."""


class Prometheus:
    """One ``prometheus`` process on 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self._kill)  # an interrupted test run leaves no server behind

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def _get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(self._report(f"exited with code {self.proc.returncode}"))
            try:
                status, _ = self._get("/-/ready", timeout=2)
                if status == 200:
                    return
                last = f"/-/ready -> {status}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise PrometheusError(self._report(f"not ready after {timeout:.0f} s: {last}"))
            time.sleep(0.2)  # polling interval, bounded by the deadline

    def api(self, path: str, **params: str | list[str]) -> Any:
        """``data`` of a ``/api/v1/...`` answer; PrometheusError with its error otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = self._get(f"/api/v1/{path}?{query}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {status}, not JSON: {body[:200]!r}") from None
        if answer.get("status") != "success":
            raise PrometheusError(
                f"{answer.get('errorType', f'HTTP {status}')}: {answer.get('error', answer)}"
            )
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not an instant vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> list[str]:
        """The scrape URLs of the targets whose last scrape succeeded."""
        data = self.api("targets", state="active")
        return [t["scrapeUrl"] for t in data["activeTargets"] if t["health"] == "up"]

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def _report(self, problem: str) -> str:
        return f"prometheus ({self.url}) {problem}; last log lines:\n{self.log_tail()}"

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)
