"""The server settings TimescaleDB's policy jobs need, checked at start with a warning.

Each compression and retention policy is a job that TimescaleDB runs in a background worker.
A job gets one only if both pools have room: ``timescaledb.max_background_workers`` (a
scheduler per database with TimescaleDB, plus the jobs running at once) and PostgreSQL's
``max_worker_processes``, shared with parallel query (``max_parallel_workers``), TimescaleDB's
launcher and PostgreSQL's own background workers. A job that finds no free worker logs
"failed to start a background worker" and waits for its next run; on a server left at
PostgreSQL's default ``max_worker_processes = 8``, 3 of the 9 jobs this project then created
failed their first start (issue 9, TimescaleDB 2.28.3). The rule used here is Timescale's
(its configuration docs and ``timescaledb-tune``): max_worker_processes ≥
max_background_workers + max_parallel_workers + 3. All three settings, and
``shared_preload_libraries``, take effect at a server restart only.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from sinks.db import Connection, describe

PRELOAD = "shared_preload_libraries"
WORKER_PROCESSES = "max_worker_processes"
PARALLEL_WORKERS = "max_parallel_workers"
BACKGROUND_WORKERS = "timescaledb.max_background_workers"
SETTINGS = (PRELOAD, WORKER_PROCESSES, PARALLEL_WORKERS, BACKGROUND_WORKERS)
#: PostgreSQL's and TimescaleDB's defaults, for a setting the server does not report
DEFAULTS = {WORKER_PROCESSES: 8, PARALLEL_WORKERS: 8, BACKGROUND_WORKERS: 16}
#: workers outside both pools' counts: TimescaleDB's launcher, PostgreSQL's logical replication
#: launcher, and one to spare (Timescale's "+ 3")
LAUNCHERS = 3

READ_SETTINGS = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)"
COUNT_JOBS = "SELECT count(*) FROM timescaledb_information.jobs WHERE scheduled"


def _number(settings: Mapping[str, str], name: str) -> int:
    value = settings.get(name)
    return int(value) if value is not None and value.strip().isdigit() else DEFAULTS[name]


def worker_setting_problems(settings: Mapping[str, str], jobs: int) -> list[str]:
    """Warnings naming each setting (``pg_settings`` name -> value) that keeps ``jobs``
    scheduled TimescaleDB jobs of this database from starting, and the value it needs."""
    problems = []
    preload = settings.get(PRELOAD, "")
    if "timescaledb" not in [name.strip() for name in preload.split(",")]:
        wanted = ",".join(filter(None, [preload.strip(), "timescaledb"]))
        problems.append(
            f"{PRELOAD} is {preload!r}: set it to '{wanted}' (and restart PostgreSQL); "
            "without it TimescaleDB runs no background jobs"
        )
    background = _number(settings, BACKGROUND_WORKERS)
    needed_background = 1 + jobs  # this database's scheduler and every job at once
    if background < needed_background:
        problems.append(
            f"{BACKGROUND_WORKERS} is {background}: set it to at least {needed_background} "
            f"(a scheduler + this database's {jobs} jobs; 1 more per other database with "
            "TimescaleDB) and restart PostgreSQL, or jobs wait for a free worker"
        )
        background = needed_background
    parallel = _number(settings, PARALLEL_WORKERS)
    processes = _number(settings, WORKER_PROCESSES)
    needed_processes = background + parallel + LAUNCHERS
    if processes < needed_processes:
        problems.append(
            f"{WORKER_PROCESSES} is {processes}: set it to at least {needed_processes} "
            f"({BACKGROUND_WORKERS} {background} + {PARALLEL_WORKERS} {parallel} + "
            f"{LAUNCHERS}) and restart PostgreSQL, or TimescaleDB's jobs fail to start"
        )
    return problems


async def check_worker_settings(conn: Connection) -> list[str]:
    """``worker_setting_problems`` of the server ``conn`` is on (TimescaleDB installed). The
    check only advises: if it cannot be made, that is the one warning."""
    try:
        cursor = await conn.execute(READ_SETTINGS, (list(SETTINGS),))
        settings = {str(name): str(value) for name, value in await cursor.fetchall()}
        cursor = await conn.execute(COUNT_JOBS)
        row = await cursor.fetchone()
    except psycopg.Error as exc:
        return [f"cannot check the settings TimescaleDB's jobs need: {describe(exc)}"]
    return worker_setting_problems(settings, int(row[0]) if row else 0)
