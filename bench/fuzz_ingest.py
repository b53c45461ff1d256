"""Fuzz HTTP ingestion and the topic path of one worker with 10,000 cases or more (issue 11,
item 3); CI runs the same properties with a few hundred cases
(tests/integration/test_no_input_stops_a_partition.py).

Cases are drawn by hypothesis from tests/fuzz_inputs.py, in rounds of ``--round-size``, each
round a ``@given`` run of that many examples seeded with ``--seed`` plus the number of cases
drawn before it (the same seed draws the same cases): about a third each ``POST /ingest``,
``POST /ingest/batch`` (with drawn content types, compression, chunked transfer) and messages
produced straight to ``user-events``. After each round tests/fuzz_http.py waits for the worker
and judges every case against the pure decision for its bytes. It prints the figures and exits
1 on any violation: a 5xx, a dropped connection, a 4xx naming no field or problem, an answer
other than the pure decision, a rejected event not on ``user-events-dlq`` exactly once, an
accepted event not enriched once, a worker that no longer answers ``/health`` and takes an
event at the end, or one that logged an error.

    PYTHONPATH=. .venv/bin/python bench/fuzz_ingest.py --cases 10000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from app.topics import TopicNames
from bench.compare import PARTITIONS, bench_services, bench_topics
from tests.fuzz_http import BATCH, SINGLE, Findings, HttpCase, Target, TopicCase, fuzz_round
from tests.fuzz_inputs import BATCH_BODIES, DELIVERIES, RAW_INPUTS
from tests.worker_process import (
    Services,
    Worker,
    WorkerPool,
)

CASES: st.SearchStrategy[HttpCase | TopicCase] = st.one_of(
    st.builds(HttpCase, st.just(SINGLE), RAW_INPUTS, DELIVERIES),
    st.builds(HttpCase, st.just(BATCH), BATCH_BODIES, DELIVERIES),
    st.builds(TopicCase, RAW_INPUTS, st.booleans()),
)
PROBE = b'{"user_id":"fuzz-probe","action":"click"}'


def draw(count: int, seed: int) -> list[HttpCase | TopicCase]:
    """``count`` cases (fewer when hypothesis finds fewer distinct ones), the same for a seed."""
    drawn: list[HttpCase | TopicCase] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(CASES)
    def collect(case: HttpCase | TopicCase) -> None:
        drawn.append(case)

    collect()
    return drawn


async def still_serving(worker: Worker) -> tuple[Any, int]:
    """``/health`` and the answer to a valid event, after the fuzzing."""
    health = worker.health()
    async with (
        aiohttp.ClientSession() as session,
        session.post(worker.url + SINGLE, data=PROBE) as response,
    ):
        return (health or (None,))[0], response.status


def report(found: Findings, events_in_batches: int, cases: int, seconds: float) -> None:
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(found.statuses.items()))
    print(f"cases: {cases} in {seconds:.1f} s ({cases / seconds:.1f} cases/s)")
    print(
        f"sent: POST /ingest {found.sent[SINGLE]}, POST /ingest/batch {found.sent[BATCH]} "
        f"(their events arrays: {events_in_batches} items), user-events {found.sent['topic']}"
    )
    print(f"answers by status: {statuses}")
    print(
        f"5xx: {len(found.server_errors)}; dropped connections: {len(found.dropped)}; "
        f"4xx naming no field or problem: {len(found.unnamed)}; "
        f"answers other than the pure decision: {len(found.wrong_answers)}"
    )
    print(
        f"dead letters: expected {found.letters_expected}, found {found.letters_found} "
        f"(missing {len(found.letters_missing)}, "
        f"unexpected or twice {len(found.letters_unexpected)})"
    )
    print(
        f"accepted events: {found.accepted}, found enriched {found.accepted_enriched} "
        f"(enriched twice {len(found.enriched_twice)}); "
        f"tracker failures nobody foresaw: {len(found.tracker_failures)}"
    )


def error_lines(log: Path) -> int:
    """Lines the worker logged at ERROR or above: a traceback of a request it did not expect."""
    lines = log.read_text(errors="replace").splitlines()
    return sum("[ERROR]" in line or "[CRITICAL]" in line for line in lines)


def _items(case: HttpCase | TopicCase) -> int:
    """How many items the ``events`` array of a batch body holds (0 for any other case)."""
    if not isinstance(case, HttpCase) or case.path != BATCH:
        return 0
    try:
        events = orjson.loads(case.body).get("events")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return len(events) if isinstance(events, list) else 0


def run(args: argparse.Namespace, services: Services, prefix: str, group: str) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    pool = WorkerPool(services, workdir)
    try:
        worker = pool.start(prefix, group)
        worker.wait_ready(PARTITIONS, timeout=120)
        target = Target(worker.url, services.kafka_bootstrap, TopicNames.with_prefix(prefix))
        found, items, sent = Findings(), 0, 0
        started = time.monotonic()
        for number in range(0, args.cases, args.round_size):
            cases = draw(min(args.round_size, args.cases - number), args.seed + number)
            http = [c for c in cases if isinstance(c, HttpCase)]
            topic = [c for c in cases if isinstance(c, TopicCase)]
            found.add(asyncio.run(fuzz_round(target, http, topic, concurrency=args.concurrency)))
            items += sum(map(_items, cases))
            sent += len(cases)
            print(f"  {sent} cases, {len(found.violations())} violations", file=sys.stderr)
        seconds = time.monotonic() - started
        health, probe = asyncio.run(still_serving(worker))
        report(found, items, sent, seconds)
        print(f"worker at the end: /health {health}, a valid event answered {probe}")
        logged = error_lines(worker.log_path)
        print(f"worker log: {logged} ERROR or CRITICAL lines ({worker.log_path})")
    finally:
        pool.stop_all()
    violations = found.violations()
    for violation in violations[:20]:
        print(f"VIOLATION {violation[:600]}")
    ok = not violations and sent >= args.cases and (health, probe, logged) == (200, 202, 0)
    print("result: " + ("no violation" if ok else f"{len(violations)} violations"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-size", type=int, default=500, help="cases per round")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP requests at once")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    args = parser.parse_args()
    services = bench_services(args.bootstrap)
    with bench_topics(services) as (prefix, group):
        return run(args, services, prefix, group)


if __name__ == "__main__":
    sys.exit(main())
