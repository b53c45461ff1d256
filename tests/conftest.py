"""Fixtures shared by every integration and end-to-end test.

``services`` finds a Kafka broker and a PostgreSQL database, in this order: the
``KAFKA_BOOTSTRAP`` / ``DATABASE_URL`` environment variables; containers (testcontainers) when
Docker is usable; ``scripts/services.sh start``. When none of them works, tests marked
``integration`` fail under CI (``CI=true``) and are skipped elsewhere, with the service and the
reasons named in each test's report and in a "missing services" section at the end of the run
(tests/missing_services.py).

``worker_factory`` (and ``module_worker_factory``, for a module sharing one worker) starts
``faust -A app worker`` subprocesses (tests/worker_process.py) and stops them all at teardown;
when a test fails, every worker's log tail is attached to its report. Each test gets its own
topics and consumer group through ``topic_prefix`` and ``group_id``: a consumer group keeps the
session timeout of its first join (../shared/FACTS.md), and fresh topics make exact assertions
about their contents possible. tests/kafka_helpers.py has the produce/read/barrier helpers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.missing_services import report_missing, service_missing
from tests.worker_process import (
    Services,
    WorkerPool,
    new_group_id,
    new_topic_prefix,
    services_from_script,
)

_POOLS: list[WorkerPool] = []

# --------------------------------------------------------------------------- hypothesis

# Property tests (tests/fuzz_inputs.py): a few hundred examples each in CI, the same ones every
# run (derandomized: a gate must not pass or fail by the draw), thousands of fresh ones with
# HYPOTHESIS_PROFILE=thorough and in bench/fuzz_ingest.py. No deadline: the first examples
# warm caches (ua-parser).
_SLOW_INPUTS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=_SLOW_INPUTS,
)
settings.register_profile(
    "thorough", max_examples=5_000, deadline=None, suppress_health_check=_SLOW_INPUTS
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["pytester"]  # tests/unit/test_missing_services.py runs pytest in pytest


# --------------------------------------------------------------------------- services


def _reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout):
            return True
    except (OSError, ValueError):
        return False


def _docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextlib.contextmanager
def _containers() -> Iterator[Services]:
    """Kafka (KRaft) and PostgreSQL containers for the session."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(KafkaContainer().with_kraft())
        postgres = stack.enter_context(
            PostgresContainer("postgres:15", username="analytics", dbname="analytics", driver=None)
        )
        yield Services(kafka.get_bootstrap_server(), postgres.get_connection_url())


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The broker and database every integration test talks to (see the module docstring)."""
    problems: list[str] = []
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        if _reachable(bootstrap):
            yield Services(bootstrap, os.environ.get("DATABASE_URL", ""))
            return
        problems.append(f"KAFKA_BOOTSTRAP={bootstrap} does not accept connections")
    else:
        problems.append("KAFKA_BOOTSTRAP is not set")

    if _docker_usable():
        stack = contextlib.ExitStack()
        try:
            found = stack.enter_context(_containers())
        except Exception as exc:  # any failure: fall back to the local services
            stack.close()
            problems.append(f"testcontainers failed: {type(exc).__name__}: {exc}")
        else:
            with stack:
                yield found
            return
    else:
        problems.append("Docker is not usable (`docker info` fails)")

    try:
        found = services_from_script("start")
    except Exception as exc:  # no Java, no PostgreSQL binaries, ...
        problems.append(f"{type(exc).__name__}: {exc}")
    else:
        yield found
        return
    service_missing("Kafka", "; ".join(problems))


@pytest.fixture(autouse=True)
def _integration_needs_services(request: pytest.FixtureRequest) -> None:
    """Tests marked ``integration`` fail under CI, or skip loudly, when no services are found."""
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("services")


# --------------------------------------------------------------------------- workers


@contextlib.contextmanager
def _pool(services: Services, workdir: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(services, workdir)
    _POOLS.append(pool)
    try:
        yield pool
    finally:
        _POOLS.remove(pool)
        pool.stop_all()


@pytest.fixture
def worker_factory(services: Services, tmp_path: Path) -> Iterator[WorkerPool]:
    """``worker_factory(topic_prefix, group_id, extra_env=None) -> Worker``, for one test."""
    with _pool(services, tmp_path / "workers") as pool:
        yield pool


@pytest.fixture(scope="module")
def module_worker_factory(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPool]:
    """Like ``worker_factory``, for workers shared by the tests of one module."""
    with _pool(services, tmp_path_factory.mktemp("workers")) as pool:
        yield pool


@pytest.fixture
def topic_prefix() -> str:
    """Fresh topics for this test: ``<prefix>user-events`` and so on."""
    return new_topic_prefix()


@pytest.fixture
def group_id() -> str:
    """A fresh consumer group (Faust app id) for this test."""
    return new_group_id()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the missing services, and the tests they skipped, at the end of the run."""
    report_missing(terminalreporter)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Attach every running pool's worker log tails to a failed test's report."""
    report = yield
    if report.failed:
        tails = "\n".join(pool.log_tails() for pool in _POOLS if pool.workers)
        if tails:
            report.sections.append(("worker logs", tails))
    return report
