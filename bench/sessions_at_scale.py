"""Memory with many open sessions, and recovery after kill -9 (issue 10, items 3 and 5).

One worker reads ``--sessions`` events of as many users (one open session each: the event
times span less than the session gap, so none closes). While it works, the bench samples the
worker's resident memory and prints it at every 100,000 open sessions; at the end it reads
the worker's own gauge of users with open sessions to check the count. Then it kills the
worker (SIGKILL), starts it again on the same data directory (its RocksDB state kept),
produces a probe event every 20 ms, and prints how long after the restart the first probe
came out enriched: when the worker was processing again.

    PYTHONPATH=. python bench/sessions_at_scale.py --sessions 1000000

KAFKA_BOOTSTRAP is used when set, else ``scripts/services.sh start``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.compare import PARTITIONS, bench_services, create_topic
from generator.traffic import format_ts
from tests.kafka_helpers import delete_topics
from tests.worker_process import (
    Worker,
    WorkerPool,
    new_group_id,
    new_topic_prefix,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPAN_MS = 20 * 60_000  # under the 30-minute gap: every session stays open
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
STEP = 100_000


def event(n: int, count: int, prefix: str = "u") -> tuple[bytes, bytes]:
    user = f"{prefix}{n:08d}"
    value = {
        "event_id": f"{prefix}-{n}",
        "user_id": user,
        "session_id": "s",
        "action": "page_view",
        "page": f"/p{n % 50}",
        "timestamp": format_ts(START_MS + n * SPAN_MS // max(count, 1)),
        "duration": 1_000,
        "user_agent": USER_AGENT,
        "country": "DE",
    }
    return user.encode(), orjson.dumps(value)


def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"}
    )
    for n in range(count):
        key, value = event(n, count)
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)


def rss_mib(worker: Worker) -> float:
    try:
        status = Path(f"/proc/{worker.pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def end_offsets(consumer: Consumer, topic: str) -> int:
    total = 0
    for partition in range(PARTITIONS):
        try:
            total += consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1]
        except Exception:  # not created yet
            return 0
    return total


def open_sessions_gauge(worker: Worker) -> float | None:
    try:
        with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("analytics_dashboard_session_count "):
            return float(line.split()[1])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="worker settings"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.worker_env)
    services = bench_services()
    prefix = new_topic_prefix()
    source, enriched = f"{prefix}user-events", f"{prefix}user-behavior-enriched"
    create_topic(services.kafka_bootstrap, source)
    workdir = Path(tempfile.mkdtemp(prefix="sessions-bench-"))
    pool = WorkerPool(services, workdir)
    watcher = Consumer({"bootstrap.servers": services.kafka_bootstrap, "group.id": "watch"})
    group = new_group_id()
    try:
        worker = pool.start(prefix, group, env)
        worker.wait_ready(PARTITIONS, timeout=120)
        filler = threading.Thread(
            target=produce, args=(services.kafka_bootstrap, source, args.sessions), daemon=True
        )
        filler.start()
        print(f"{'open sessions':>14} {'worker RSS':>11}  (logs in {workdir})", flush=True)
        deadline = time.monotonic() + args.timeout
        next_step, done = STEP, 0
        while done < args.sessions:
            if time.monotonic() > deadline or not worker.alive:
                raise RuntimeError(f"stopped at {done:,} sessions:\n{worker.log_tail()}")
            done = end_offsets(watcher, enriched)
            while done >= next_step:
                print(f"{next_step:>14,} {rss_mib(worker):>7,.0f} MiB", flush=True)
                next_step += STEP
            time.sleep(0.2)  # a sampling interval, not synchronisation
        gauge = open_sessions_gauge(worker)
        print(f"gauge of users with open sessions: {gauge:,.0f}" if gauge else "gauge: none")
        print(f"peak RSS (VmHWM): {(worker.peak_rss_kib() or 0) / 1024:,.0f} MiB", flush=True)

        worker.kill()
        before = end_offsets(watcher, enriched)
        restarted = pool.restart(worker)
        started = time.monotonic()
        probe = Producer({"bootstrap.servers": services.kafka_bootstrap, "linger.ms": 0})
        n = 0
        while end_offsets(watcher, enriched) <= before:
            if time.monotonic() - started > 300 or not restarted.alive:
                raise RuntimeError(f"not processing after restart:\n{restarted.log_tail()}")
            key, value = event(n, args.sessions, prefix="probe")
            probe.produce(source, value, key)
            probe.poll(0)
            n += 1
            time.sleep(0.02)  # the probe rate
        print(
            f"killed (SIGKILL) with {args.sessions:,} open sessions; processing again "
            f"{time.monotonic() - started:.1f} s after the restart",
            flush=True,
        )
        return 0
    finally:
        watcher.close()
        pool.stop_all()
        delete_topics(services.kafka_bootstrap, [prefix, group])


if __name__ == "__main__":
    sys.exit(main())
