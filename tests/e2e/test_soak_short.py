"""The soak under faults (bench/soak.py) scaled down for CI: two workers under HTTP and
direct traffic while, in a seeded order, a worker is killed with -9 twice, the worker serving
HTTP gets SIGTERM, the broker and PostgreSQL each stop for a few seconds. Every final figure
must equal the batch reference, every accepted event be counted once, the tables equal the
topics and the DLQ hold exactly the rejected events. About 90 s of wall time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.soak import Plan, soak
from tests.missing_services import service_missing
from tests.scratch_postgres import missing as missing_postgres_binaries

pytestmark = pytest.mark.integration

PLAN = Plan(
    seconds=25,
    workers=2,
    seed=7,
    kills=2,
    broker_down_s=5,
    database_down_s=5,
    rate=40,
    invalid_share=0.02,
)


def test_a_short_soak_under_faults(tmp_path: Path) -> None:
    problem = missing_postgres_binaries()
    if problem:
        service_missing("PostgreSQL server binaries", problem)
    started = time.monotonic()
    report = soak(PLAN, tmp_path)
    print(report.text())
    print(f"short soak: {time.monotonic() - started:.0f} s")
    assert len(report.runs) == len(PLAN.faults())
    assert report.outcome.summary["enriched distinct"] > PLAN.rate * PLAN.seconds / 4
    assert report.passed, report.text()
