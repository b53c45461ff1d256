"""Latency at a steady rate below capacity (issue 10, item 4): per event, and per window.

One worker on fresh topics; events sent straight to ``user-events`` at ``--rate`` events/s for
``--seconds``, stamped with their send time (event time = now), by a librdkafka producer in
a thread of this process. Then, from the records' own Kafka timestamps:

- produce → enriched: each enriched record's timestamp (set when the worker produced it)
  minus its input record's timestamp (set when this bench produced it), per event;
- window close → final record: a window [start, end) can close once an event with time
  ``end + grace`` has arrived; the final ``live-kpis`` record's timestamp minus that moment,
  per window. A short ``--kpi-window`` gives many windows in a short run.

Prints p50/p95/p99/max of both and the worker's peak RSS.

    PYTHONPATH=. python bench/latency.py --rate 5000 --seconds 120 --kpi-window 2s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from analytics.timeutil import format_ts, parse_ts
from app.settings import parse_duration
from bench.compare import PARTITIONS, bench_services, bench_topics
from bench.workload import USER_AGENTS
from tests.worker_process import (
    Services,
    WorkerPool,
)

GRACE_MS = 10_000
WARM_UP_MS = 5_000


def send(bootstrap: str, topic: str, rate: float, seconds: float, users: int) -> int:
    """Events at ``rate`` per second for ``seconds``, each stamped with its send time."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 1, "partitioner": "murmur2_random"}
    )
    # connected, with the topic's leaders known, before the first timestamp: else the first
    # second's events carry this producer's own start-up (~1 s) as the pipeline's latency
    producer.list_topics(topic, timeout=30)
    started = time.monotonic()
    n = 0
    total = int(rate * seconds)
    while n < total:
        due = int((time.monotonic() - started) * rate) + 1
        while n < min(due, total):
            user = f"user-{n % users:05d}"
            value = {
                "event_id": f"e{n}",
                "user_id": user,
                "session_id": f"s{n % users}",
                "action": "page_view",
                "page": f"/p{n % 40}",
                "timestamp": format_ts(time.time_ns() // 1_000_000),
                "duration": 2_000,
                "user_agent": USER_AGENTS[n % len(USER_AGENTS)],
            }
            producer.produce(topic, orjson.dumps(value), user.encode())
            n += 1
        producer.poll(0)
        time.sleep(0.001)  # the send schedule's tick
    producer.flush(60)
    return n


def read_all(
    bootstrap: str, topic: str, partitions: int = PARTITIONS
) -> list[tuple[bytes | None, int]]:
    """(value, timestamp) of every record of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "latency-bench"})
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for p in range(partitions)
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in ends if ends[p]])
        records: list[tuple[bytes | None, int]] = []
        remaining = sum(ends.values())
        while remaining > 0:
            for message in consumer.consume(10_000, 1.0):
                if message.error() is None:
                    records.append((message.value(), message.timestamp()[1]))
                    remaining -= 1
        return records
    finally:
        consumer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values}"
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, p99 {q[98]:.0f} ms, max {max(values):.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--kpi-window", default="60s", help="the workers' engine.kpi_window")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment setting for the worker, e.g. ANALYTICS__ENGINE__ROUND_INTERVAL=20ms",
    )
    args = parser.parse_args()
    services = bench_services()
    with bench_topics(services) as (prefix, group):
        return measure(args, services, prefix, group)


def measure(args: argparse.Namespace, services: Services, prefix: str, group: str) -> int:
    """Run the worker at the steady rate, then read the topics and print the figures."""
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    window_ms = int(parse_duration(args.kpi_window).total_seconds() * 1000)
    workdir = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    pool = WorkerPool(services, workdir)
    try:
        worker = pool.start(
            prefix,
            group,
            {"ANALYTICS__ENGINE__KPI_WINDOW": args.kpi_window, **worker_env},
        )
        worker.wait_ready(PARTITIONS, timeout=120)
        sender = threading.Thread(
            target=send,
            args=(
                services.kafka_bootstrap,
                f"{prefix}user-events",
                args.rate,
                args.seconds,
                args.users,
            ),
        )
        started_ms = time.time_ns() // 1_000_000
        cpu_before = cpu_seconds(worker.pid)
        sender.start()
        sender.join()
        worker_cpu = (cpu_seconds(worker.pid) - cpu_before) / args.seconds
        last_closable = time.time_ns() // 1_000_000 - GRACE_MS
        # wait until the worker has published the last window that could close
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            finals = [
                orjson.loads(v or b"{}")
                for v, _ in read_all(services.kafka_bootstrap, f"{prefix}live-kpis")
            ]
            ends = [parse_ts(k["window_end"]) for k in finals if k.get("is_final")]
            if ends and max(ends) + window_ms > last_closable:
                break
            time.sleep(1)  # a poll interval of the bench, not synchronisation
        rss = (worker.peak_rss_kib() or 0) / 1024
    finally:
        pool.stop_all()

    inputs = {
        orjson.loads(v or b"{}")["event_id"]: ts
        for v, ts in read_all(services.kafka_bootstrap, f"{prefix}user-events")
        if v
    }
    timed = [
        (inputs[event["event_id"]], float(ts - inputs[event["event_id"]]))
        for v, ts in read_all(services.kafka_bootstrap, f"{prefix}user-behavior-enriched")
        if (event := orjson.loads(v or b"{}"))["event_id"] in inputs
    ]
    per_event = [latency for _, latency in timed]
    # a fresh worker's first rounds (connections, first fetches, first writes of every
    # store) are not the steady state the targets are about: shown apart
    warm = [latency for sent_ms, latency in timed if sent_ms - started_ms >= WARM_UP_MS]
    worst: dict[int, float] = {}
    for sent_ms, latency in timed:
        second = (sent_ms - started_ms) // 1000
        worst[second] = max(worst.get(second, 0.0), latency)
    per_window = [
        float(ts - (parse_ts(kpi["window_end"]) + GRACE_MS))
        for v, ts in read_all(services.kafka_bootstrap, f"{prefix}live-kpis")
        if (kpi := orjson.loads(v or b"{}")).get("is_final")
        and parse_ts(kpi["window_start"]) >= started_ms  # whole windows of steady traffic
        and parse_ts(kpi["window_end"]) + GRACE_MS <= last_closable
    ]
    # the split: when the last partition's final partial of each window was produced
    last_partial: dict[int, int] = {}
    for v, ts in read_all(services.kafka_bootstrap, f"{prefix}kpi-partials", 1):
        partial = orjson.loads(v or b"{}")
        if partial.get("type") == "partial" and partial.get("final"):
            start = int(partial["window_start"])
            last_partial[start] = max(last_partial.get(start, 0), ts)
    to_partials = [
        float(ts - (start + window_ms + GRACE_MS))
        for start, ts in last_partial.items()
        if start >= started_ms and start + window_ms + GRACE_MS <= last_closable
    ]
    print(
        f"{len(inputs):,} events at {args.rate:,.0f}/s for {args.seconds:.0f} s; worker logs in "
        f"{workdir}"
    )
    print(f"produce -> enriched ({len(per_event):,} events): {quantiles(per_event)}")
    print(f"  after the first {WARM_UP_MS // 1000} s ({len(warm):,} events): {quantiles(warm)}")
    print(
        f"window close -> final record ({len(per_window)} windows of {args.kpi_window}): "
        f"{quantiles(per_window)}"
    )
    print(f"  of which close -> last partition's final partial: {quantiles(to_partials)}")
    print(f"worker peak RSS: {rss:,.0f} MiB; worker CPU while sending: {worker_cpu:.0%} of a core")
    slowest = sorted(worst.items(), key=lambda item: -item[1])[:5]
    print(
        "slowest seconds of the run (second: max latency): "
        + ", ".join(f"{second} s: {latency:.0f} ms" for second, latency in slowest)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
