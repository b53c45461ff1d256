"""Benchmark: behaviour tracker throughput and latency end to end, on the real broker.

Starts 1 or 2 workers on fresh topics and a fresh consumer group (tests/worker_process.py),
produces N generated events (generator.traffic; event times are the send times, or with
``--replay`` the generator's own hour of event time) straight to
``<prefix>user-events`` as fast as one aiokafka producer goes (generator.cli.send_to_kafka),
and reads ``<prefix>user-behavior-enriched`` until every event_id is there. All times come from
Kafka message timestamps (CreateTime), so reading the output later does not distort them:

- an enriched record's ``received_at`` is its input message's timestamp: the producer's send
  time (CreateTime), or the broker's append time when ``user-events`` is a LogAppendTime
  topic; the enriched message's own timestamp is the worker's send time (CreateTime);
- latency = enriched timestamp - received_at, per event. Everything is produced at once, so
  with a worker slower than the producer this is mostly time spent queued in the backlog;
- sustained rate = events / (last enriched - first enriched);
- end-to-end rate = events / (last enriched - produce start).

Peak RSS is each worker's VmHWM from /proc. Run from the repository root:

    PYTHONPATH=. python bench/tracker_throughput.py --events 100000 --workers 1

KAFKA_BOOTSTRAP / DATABASE_URL are used when set, else ``scripts/services.sh start``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from app.topics import TopicNames
from generator.cli import restamp, send_to_kafka
from generator.traffic import Event, TrafficProfile, generate_labelled
from tests.kafka_helpers import TopicReader, end_offsets
from tests.worker_process import (
    Services,
    WorkerPool,
    new_group_id,
    new_topic_prefix,
    services_from_script,
)

PARTITIONS = 8


@dataclass
class Result:
    events: int
    workers: int
    produce_s: float
    enriched: int
    redelivered: int
    dead_letters: int
    first_to_last_s: float
    start_to_last_s: float
    latencies_ms: list[int]
    peak_rss_mib: list[float]

    def rows(self) -> list[tuple[str, str]]:
        q = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return [
            ("events produced", f"{self.events:,}"),
            ("workers", str(self.workers)),
            ("produce rate", f"{self.events / self.produce_s:,.0f} events/s"),
            ("enriched (distinct event_ids)", f"{self.enriched:,}"),
            ("enriched records repeated", f"{self.redelivered:,}"),
            ("dead letters", f"{self.dead_letters:,}"),
            (
                "sustained, first to last enriched",
                f"{self.enriched / self.first_to_last_s:,.0f} events/s "
                f"({self.first_to_last_s:.2f} s)",
            ),
            (
                "end to end, produce start to last",
                f"{self.enriched / self.start_to_last_s:,.0f} events/s "
                f"({self.start_to_last_s:.2f} s)",
            ),
            ("latency p50", f"{q[49]:,.0f} ms"),
            ("latency p95", f"{q[94]:,.0f} ms"),
            ("latency p99", f"{q[98]:,.0f} ms"),
            ("latency max", f"{max(self.latencies_ms):,} ms"),
            ("worker peak RSS (VmHWM)", ", ".join(f"{m:,.0f} MiB" for m in self.peak_rss_mib)),
        ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _parse_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 timestamp such as received_at."""
    return (datetime.fromisoformat(text) - _EPOCH) // _MS


def _events(events: int, seed: int) -> list[Event]:
    """Only valid, distinct events: every one must come out of the tracker exactly once."""
    profile = TrafficProfile(seed=seed, events=events, users=max(500, events // 20))
    return [event for event, _ in generate_labelled(profile) if isinstance(event, dict)]


async def run(
    services: Services,
    events: int,
    workers: int,
    seed: int,
    timeout: float,
    replay: bool,
    rate: float = 0,
) -> Result:
    prefix = new_topic_prefix()
    topics = TopicNames.with_prefix(prefix)
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    pool = WorkerPool(services, workdir)
    print(f"topics {prefix}*, worker logs in {workdir}", file=sys.stderr)
    try:
        group = new_group_id()
        started = [pool.start(prefix, group) for _ in range(workers)]
        for worker in started:
            await worker.await_ready(PARTITIONS)
        # Generated up front, not timed; restamp gives each event its send time as it goes out.
        payloads = _events(events, seed)
        print(f"{len(payloads):,} events generated, producing...", file=sys.stderr)

        produce_start_ms = time.time_ns() // 1_000_000
        t0 = time.monotonic()
        acked = await send_to_kafka(
            payloads if replay else (event for event, _ in restamp((p, "valid") for p in payloads)),
            services.kafka_bootstrap,
            topics.user_events,
            rate=rate,
            progress=sys.stderr.isatty(),
        )
        produce_s = time.monotonic() - t0
        if acked != len(payloads):
            raise RuntimeError(f"only {acked} of {len(payloads)} events acknowledged")
        print(f"produced in {produce_s:.2f} s, waiting for the enriched topic...", file=sys.stderr)

        first_ms: int | None = None
        last_ms = 0
        seen: set[str] = set()
        latencies: list[int] = []
        repeated = 0
        async with TopicReader(services.kafka_bootstrap, topics.enriched) as reader:
            deadline = time.monotonic() + timeout
            next_report = time.monotonic() + 5
            while len(seen) < len(payloads):
                if time.monotonic() >= next_report:
                    print(f"  {len(seen):,} of {len(payloads):,} enriched", file=sys.stderr)
                    next_report += 5
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{len(seen):,} of {len(payloads):,} events enriched after {timeout} s"
                    )
                for record in await reader.poll(timeout_ms=500):
                    value = orjson.loads(record.value or b"{}")
                    if value["event_id"] in seen:
                        repeated += 1
                        continue
                    seen.add(value["event_id"])
                    latencies.append(record.timestamp - _parse_ms(value["received_at"]))
                    first_ms = (
                        record.timestamp if first_ms is None else min(first_ms, record.timestamp)
                    )
                    last_ms = max(last_ms, record.timestamp)
                reader.records.clear()  # keep memory flat: only the figures matter here
        rss = [(w.peak_rss_kib() or 0) / 1024 for w in started]
        dead = sum((await end_offsets(services.kafka_bootstrap, topics.dead_letters)).values())
        assert first_ms is not None
        return Result(
            events=len(payloads),
            workers=workers,
            produce_s=produce_s,
            enriched=len(seen),
            redelivered=repeated,
            dead_letters=dead,
            first_to_last_s=max(last_ms - first_ms, 1) / 1000,
            start_to_last_s=max(last_ms - produce_start_ms, 1) / 1000,
            latencies_ms=latencies,
            peak_rss_mib=rss,
        )
    finally:
        pool.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events to produce")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seed", type=int, default=42, help="traffic generator seed")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for output")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="keep the generator's event times (one hour from 2024-01-15T10:00Z) instead of "
        "stamping each event with its send time",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="events/s to produce (0: as fast as possible). Below the pipeline's capacity the "
        "latency is the per-event latency instead of time queued behind a backlog",
    )
    args = parser.parse_args(argv)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        services = Services(bootstrap, os.environ.get("DATABASE_URL", ""))
    else:
        services = services_from_script("start")
    result = asyncio.run(
        run(services, args.events, args.workers, args.seed, args.timeout, args.replay, args.rate)
    )
    rows = result.rows()
    width = max(len(name) for name, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
