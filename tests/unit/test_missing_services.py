"""A missing Kafka or PostgreSQL fails the run under CI and skips loudly elsewhere
(tests/missing_services.py, the ``services`` fixture of tests/conftest.py).

Each test runs pytest in pytest (pytester) on a small test file that uses the real ``services``
fixture with a KAFKA_BOOTSTRAP nothing listens on; the fallbacks (Docker, scripts/services.sh)
are made to fail, since here they would find the suite's own services.
"""

from __future__ import annotations

import pytest

from tests import conftest, missing_services
from tests.worker_process import free_port

TESTS = """
import pytest
from tests.missing_services import service_missing

@pytest.fixture
def database():
    service_missing("PostgreSQL", "DATABASE_URL is not set")

def test_needs_kafka(services):
    pass

def test_needs_kafka_too(services):
    pass

def test_needs_postgres(database):
    pass

def test_needs_nothing():
    pass
"""


@pytest.fixture
def no_services(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test file above, with Kafka nowhere to be found; returns the bad KAFKA_BOOTSTRAP."""
    bootstrap = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setattr(conftest, "_docker_usable", lambda: False)

    def script_fails(action: str = "start") -> None:
        raise RuntimeError(f"scripts/services.sh {action} failed (exit 1): no Java")

    monkeypatch.setattr(conftest, "services_from_script", script_fails)
    monkeypatch.setattr(missing_services, "_MISSING", set())  # the outer run's own list
    pytester.makeconftest(
        "from tests.conftest import pytest_terminal_summary, services  # noqa: F401\n"
    )
    pytester.makepyfile(TESTS)
    return bootstrap


def test_under_ci_a_missing_service_fails_the_run_naming_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_services: str
) -> None:
    monkeypatch.setenv("CI", "true")

    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio")

    result.assert_outcomes(passed=1, errors=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*Kafka is missing, and under CI (CI=true) a missing service fails the run: "
            f"KAFKA_BOOTSTRAP={no_services} does not accept connections; *"
            "scripts/services.sh start failed (exit 1): no Java*",
            "*PostgreSQL is missing, and under CI*: DATABASE_URL is not set*",
        ]
    )


def test_outside_ci_a_missing_service_skips_loudly(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_services: str
) -> None:
    monkeypatch.delenv("CI", raising=False)

    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio")

    result.assert_outcomes(passed=1, skipped=3, warnings=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*MissingServiceWarning: skipped, Kafka: KAFKA_BOOTSTRAP=*",
            "*= missing services: tests skipped =*",
            f"SKIPPED 2 tests, Kafka: KAFKA_BOOTSTRAP={no_services} does not accept connections*",
            "SKIPPED 1 tests, PostgreSQL: DATABASE_URL is not set",
            "(under CI, CI=true, these are failures)",
        ]
    )
