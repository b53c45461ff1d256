"""What a test does when a service it needs (Kafka, PostgreSQL) cannot be found.

Under CI (``CI=true``) it fails, naming the service and why: CI must never turn green by
skipping the integration tests. Elsewhere it skips, loudly: a ``MissingServiceWarning`` in the
warnings summary, and a "missing services" section at the end of the run that names each
missing service, the reason and how many tests it skipped (tests/conftest.py calls
``report_missing``).
"""

from __future__ import annotations

import os
import warnings
from typing import NoReturn

import pytest

#: reasons given so far in this run, as "<service>: <why>"
_MISSING: set[str] = set()


class MissingServiceWarning(UserWarning):
    """A test was skipped because a service it needs is missing (outside CI)."""


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``true``, ``1`` or ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def service_missing(service: str, why: str) -> NoReturn:
    """Fail (under CI) or skip the current test: ``service`` is missing because of ``why``."""
    reason = f"{service}: {why}"
    if in_ci():
        pytest.fail(
            f"{service} is missing, and under CI (CI=true) a missing service fails the run: {why}",
            pytrace=False,
        )
    _MISSING.add(reason)
    warnings.warn(MissingServiceWarning(f"skipped, {reason}"), stacklevel=2)
    pytest.skip(f"missing service: {reason}")


def report_missing(terminalreporter: pytest.TerminalReporter) -> None:
    """The end-of-run section: each missing service, why, and the tests it skipped."""
    if not _MISSING:
        return
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.section("missing services: tests skipped", sep="=", yellow=True, bold=True)
    for reason in sorted(_MISSING):
        count = sum(1 for report in skipped if reason in str(report.longrepr))
        terminalreporter.write_line(f"SKIPPED {count} tests, {reason}", yellow=True, bold=True)
    terminalreporter.write_line("(under CI, CI=true, these are failures)")
