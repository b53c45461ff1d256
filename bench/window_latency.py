"""Benchmark: how long after a window closes its final ``live-kpis`` record is published.

Starts one worker on fresh topics, sends real-time traffic (event time = send time) straight to
Kafka at a steady rate for a while, and reads the final KPI records. A window [start, end)
closes when the watermark passes ``end``, i.e. once an event with time ``end + grace`` has
arrived; the delay reported is the final record's publish time (its Kafka timestamp) minus
``end + grace``, so it measures the pipeline, not the grace it is told to wait.

    PYTHONPATH=. python bench/window_latency.py --rate 1000 --seconds 150
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from analytics.timeutil import parse_ts
from generator.cli import restamp, send_to_kafka
from generator.traffic import TrafficProfile, generate_labelled
from tests.kafka_helpers import TopicReader
from tests.worker_process import WorkerPool, new_group_id, new_topic_prefix, services_from_script

GRACE_MS = 10_000


async def run(rate: float, seconds: float) -> None:
    services = services_from_script()
    prefix, group = new_topic_prefix(), new_group_id()
    with tempfile.TemporaryDirectory() as workdir:
        pool = WorkerPool(services, Path(workdir))
        try:
            worker = pool.start(prefix, group)
            await worker.await_ready(8, timeout=120)
            events = int(rate * seconds)
            profile = TrafficProfile(seed=3, users=2000, events=events)
            started = time.time()
            sent = await send_to_kafka(
                (event for event, _ in restamp(generate_labelled(profile))),
                services.kafka_bootstrap,
                f"{prefix}user-events",
                rate,
                progress=True,
                total=events,
            )
            print(f"sent {sent} events in {time.time() - started:.1f} s")
            last_end = (int(time.time() * 1000) - GRACE_MS) // 60_000 * 60_000
            async with TopicReader(services.kafka_bootstrap, f"{prefix}live-kpis") as reader:
                records = await reader.read_until(
                    lambda rs: any(
                        r.json()["is_final"] and parse_ts(r.json()["window_end"]) >= last_end
                        for r in rs
                    ),
                    timeout=120,
                )
            delays = sorted(
                r.timestamp - (parse_ts(r.json()["window_end"]) + GRACE_MS)
                for r in records
                if r.json()["is_final"]
            )
            full = delays[1:-1] or delays  # the first and last windows are partial
            print(f"final windows: {len(delays)}; delay from close to final record (ms):")
            print(
                f"  min {min(full)}  median {statistics.median(full):.0f}  max {max(full)}"
                f"  (all windows: {delays})"
            )
        finally:
            pool.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=150)
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds))


if __name__ == "__main__":
    main()
