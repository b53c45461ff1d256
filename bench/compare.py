"""Side by side on one broker, one workload, one invocation: the raw consume ceiling, Quix
Streams, and this pipeline (issue 10).

For each session length asked for, it fills a fresh 8-partition topic with the seeded workload
of bench/workload.py (keyed by user_id, Kafka's default murmur2 partitioner), then reads that
backlog from the start with, in turn:

- ``ceiling``: an aiokafka consumer that only JSON-decodes (bench/peers/ceiling.py);
- ``quix``: Quix Streams with per-user first-seen state and a one-minute tumbling window per
  user (count, revenue) on RocksDB with changelogs (bench/peers/quix_pipeline.py);
- ``pipeline``: ``faust -A app worker`` processes (1 by default): validation, dedup,
  enrichment and the enriched topic, sessions, KPI windows, page and traffic statistics.

Each is a separate process started after the backlog is complete; its rate is events divided
by the time from its first to its last processed event (for the pipeline: the first and last
enriched record's timestamp), so start-up and group joins are not counted. The machine is
shared, so read the ratios: they come from the same minutes on the same broker.

    PYTHONPATH=. python bench/compare.py --events 200000 --users 2000 --session-events 20
    PYTHONPATH=. python bench/compare.py --events 100000 --users 200 --session-events 10,500

KAFKA_BOOTSTRAP is used when set, else ``scripts/services.sh start``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.workload import Workload, events
from tests.kafka_helpers import delete_topics
from tests.worker_process import (
    REPO_ROOT,
    Services,
    WorkerPool,
    new_group_id,
    new_topic_prefix,
    services_from_script,
)

PARTITIONS = 8
PEERS = REPO_ROOT / "bench" / "peers"


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    peak_rss_mib: float
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    for future in futures.values():
        future.result(30)


CROWDED_TOPICS = 100
WITHOUT_JOURNEYS = {
    "ANALYTICS__FUNNELS": "[]",
    "ANALYTICS__EXPERIMENTS__ENABLED": "false",
    "ANALYTICS__COHORTS__ENABLED": "false",
}
"""Worker settings that turn funnels, cohorts and A/B tests off (``--only plain``)."""


def warn_if_crowded(bootstrap: str) -> None:
    """Say when the broker holds many topics (left by interrupted test runs): aiokafka decodes
    the whole cluster's metadata on the worker's event loop, which on a broker with 1,200
    topics / 6,700 partitions held it up to 400 ms at a time and made latency figures
    meaningless. ``scripts/services.sh reset`` gives a clean broker."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    partitions = sum(len(topic.partitions) for topic in metadata.topics.values())
    if len(metadata.topics) > CROWDED_TOPICS:
        print(
            f"warning: the broker holds {len(metadata.topics):,} topics ({partitions:,} "
            "partitions); figures will be slower than on a clean broker",
            file=sys.stderr,
        )


def bench_services(bootstrap: str | None = None) -> Services:
    """The broker of ``bootstrap`` or ``KAFKA_BOOTSTRAP`` (and ``DATABASE_URL``), or else the
    project's own, started by scripts/services.sh."""
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        return Services(bootstrap, os.environ.get("DATABASE_URL", ""))
    return services_from_script("start")


@contextmanager
def bench_topics(services: Services) -> Iterator[tuple[str, str]]:
    """A new topic prefix and consumer group with its ``user-events`` topic; every topic that
    names either is deleted afterwards (``delete_topics``)."""
    prefix, group = new_topic_prefix(), new_group_id()
    warn_if_crowded(services.kafka_bootstrap)
    create_topic(services.kafka_bootstrap, f"{prefix}user-events")
    try:
        yield prefix, group
    finally:
        delete_topics(services.kafka_bootstrap, [prefix, group])


def fill(bootstrap: str, topic: str, workload: Workload) -> float:
    """Produce the workload; returns events/s of the produce."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 512 * 1024,
            "partitioner": "murmur2_random",
        }
    )
    started = time.monotonic()
    for key, value in events(workload):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} events not acknowledged")
    return workload.events / (time.monotonic() - started)


def peer(
    script: str,
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float,
    *options: str,
    name: str | None = None,
) -> Run:
    """Run a peer process to the end of the backlog and read its JSON line."""
    result = subprocess.run(
        [
            sys.executable,
            str(PEERS / script),
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--events",
            str(count),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{script} failed ({result.returncode}): {result.stderr[-3000:]}")
    figures = json.loads(lines[-1])
    return Run(
        name or script.removesuffix(".py"),
        int(figures["events"]),
        float(figures["last"]) - float(figures["first"]),
        figures["peak_rss_kib"] / 1024,
    )


def _end_offsets(consumer: Consumer, topic: str) -> int:
    total = 0
    for partition in range(PARTITIONS):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        total += high
    return total


def _read_enriched(bootstrap: str, topic: str) -> tuple[set[str], int, int]:
    """Distinct event_ids and the first and last record timestamps of the enriched topic."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-reader", "enable.auto.commit": False}
    )
    try:
        ends = {}
        for partition in range(PARTITIONS):
            ends[partition] = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )[1]
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        ids: set[str] = set()
        first, last = 2**63, 0
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < PARTITIONS:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error():
                    continue
                value = json.loads(message.value())
                ids.add(value["event_id"])
                stamp = message.timestamp()[1]
                first, last = min(first, stamp), max(last, stamp)
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
        return ids, first, last
    finally:
        consumer.close()


def pipeline(
    services: Services,
    prefix: str,
    group: str,
    count: int,
    workers: int,
    timeout: float,
    profile: Path | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Start the workers on the filled ``<prefix>user-events`` and wait for every event.
    With ``profile``, py-spy samples the first worker into that file (collapsed stacks)."""
    workdir = Path(tempfile.mkdtemp(prefix="compare-bench-"))
    pool = WorkerPool(services, workdir)
    enriched = f"{prefix}user-behavior-enriched"
    watcher = Consumer({"bootstrap.servers": services.kafka_bootstrap, "group.id": "bench-watch"})
    spy: subprocess.Popen[bytes] | None = None
    try:
        started = [pool.start(prefix, group, env) for _ in range(workers)]
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-r",
                    "200",
                    "-o",
                    str(profile),
                    "--pid",
                    str(started[0].pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline did not finish in {timeout} s; logs in {workdir}")
            if not all(worker.alive for worker in started):
                raise RuntimeError(f"a worker exited:\n{pool.log_tails()}")
            try:
                produced = _end_offsets(watcher, enriched)
            except Exception:  # the topic does not exist until the worker creates it
                produced = 0
            if produced >= count:
                ids, first, last = _read_enriched(services.kafka_bootstrap, enriched)
                if len(ids) >= count:
                    break
            time.sleep(0.5)  # a benchmark's poll interval, not test synchronisation
        rss = [(worker.peak_rss_kib() or 0) / 1024 for worker in started]
        phases = _phases(started[0].url)
        run = Run("pipeline", len(ids), (last - first) / 1000, max(rss))
        run.notes.append(f"{produced - len(ids)} enriched records repeated")
        run.notes.append("peak RSS per worker: " + ", ".join(f"{m:,.0f} MiB" for m in rss))
        if phases:
            busy = sum(phases.values()) or 1.0
            run.notes.append(
                "worker 1's hot path: "
                + ", ".join(f"{name} {100 * t / busy:.0f}%" for name, t in phases.items())
            )
        run.notes.append(f"worker logs: {workdir}")
        return run
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        watcher.close()
        pool.stop_all()


def _phases(url: str) -> dict[str, float]:
    """Seconds per hot-path phase (the ``hot_path_seconds_total`` counter) of a worker."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    phases = {}
    for line in text.splitlines():
        if line.startswith("analytics_dashboard_hot_path_seconds_total{"):
            label, _, value = line.rpartition(" ")
            phases[label.split('phase="')[1].split('"')[0]] = float(value)
    return phases


def compare(
    services: Services,
    workload: Workload,
    workers: int,
    only: set[str],
    profile: Path | None = None,
    env: dict[str, str] | None = None,
) -> list[Run]:
    with bench_topics(services) as (prefix, group):
        return run_all(services, workload, workers, only, prefix, group, profile, env)


def run_all(
    services: Services,
    workload: Workload,
    workers: int,
    only: set[str],
    prefix: str,
    group: str,
    profile: Path | None,
    env: dict[str, str] | None,
) -> list[Run]:
    """Fill ``<prefix>user-events`` and read it with each consumer in turn."""
    topic = f"{prefix}user-events"
    rate = fill(services.kafka_bootstrap, topic, workload)
    print(
        f"filled {topic}: {workload.events:,} events of {workload.users:,} users, sessions of "
        f"~{workload.session_events} events, {workload.span_ms / 60000:.0f} min of event time "
        f"({rate:,.0f} events/s produced)",
        file=sys.stderr,
    )
    timeout = max(600.0, workload.events / 200)
    runs: list[Run] = []
    if "ceiling" in only:
        runs.append(peer("ceiling.py", services.kafka_bootstrap, topic, workload.events, timeout))
    if "quix" in only:
        for emit in ("final", "current"):
            runs.append(
                peer(
                    "quix_pipeline.py",
                    services.kafka_bootstrap,
                    topic,
                    workload.events,
                    timeout,
                    "--emit",
                    emit,
                    name=f"quix ({emit})",
                )
            )
    if "pipeline" in only:
        runs.append(
            pipeline(services, prefix, group, workload.events, workers, timeout, profile, env)
        )
    if "plain" in only:  # the same pipeline without SPEC 7-9, on its own copy of the input
        with bench_topics(services) as (plain_prefix, plain_group):
            fill(services.kafka_bootstrap, f"{plain_prefix}user-events", workload)
            plain_env = {**(env or {}), **WITHOUT_JOURNEYS}
            run = pipeline(
                services,
                plain_prefix,
                plain_group,
                workload.events,
                workers,
                timeout,
                None,
                plain_env,
            )
            run.name = "without SPEC 7-9"
            runs.append(run)
    return runs


def report(workload: Workload, runs: list[Run]) -> str:
    by_name = {run.name: run for run in runs}
    lines = [
        f"session length ~{workload.session_events} events, {workload.events:,} events, "
        f"{workload.users:,} users",
        f"{'consumer':<16} {'events/s':>10} {'peak RSS':>10}  ratio",
    ]
    pipeline_rate = by_name["pipeline"].rate if "pipeline" in by_name else None
    for run in runs:
        ratio = ""
        if pipeline_rate and run.name != "pipeline":
            ratio = f"pipeline = {pipeline_rate / run.rate:.2f}x {run.name}"
        lines.append(f"{run.name:<16} {run.rate:>10,.0f} {run.peak_rss_mib:>7,.0f} MiB  {ratio}")
        lines += [f"    {note}" for note in run.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument(
        "--session-events", default="20", help="comma-separated session lengths, one run each"
    )
    parser.add_argument("--events-per-second", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only",
        default="ceiling,quix,pipeline",
        help="which consumers to run, comma-separated (plain: the pipeline without SPEC 7-9)",
    )
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="page views of /pricing and /checkout expose users to an A/B test (SPEC 9)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the first worker into this file (collapsed stacks)"
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment setting for the workers, e.g. ANALYTICS__ENGINE__BATCH_SIZE=5000",
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.worker_env)
    services = bench_services()
    only = set(args.only.split(","))
    for length in (int(x) for x in args.session_events.split(",")):
        workload = Workload(
            events=args.events,
            users=args.users,
            session_events=length,
            events_per_second=args.events_per_second,
            seed=args.seed,
            experiment=args.experiment,
        )
        runs = compare(services, workload, args.workers, only, args.profile, env)
        print(report(workload, runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
