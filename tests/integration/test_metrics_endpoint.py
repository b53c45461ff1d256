"""Prometheus metrics of real workers (app/metrics.py, docs/metrics.md).

Two workers of one group run on this host with the same configured metrics port: each must
serve on its own port, announce it in its start-up line and in ``GET /health``, and together
count exactly what a handful of known events imply: valid events, a repeat, an invalid event
over HTTP and one produced straight to the topic. Counters are summed over both workers, since
each tracks its own partitions. Everything is polled against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from analytics.timeutil import format_ts, now_ms
from tests.kafka_helpers import produce
from tests.polling import poll
from tests.sink_tables import SINK_TOPICS
from tests.worker_process import Services, Worker, WorkerPool, free_port

pytestmark = pytest.mark.integration

PARTITIONS = 8
NS = "analytics_dashboard"
SINK_TABLES = tuple(SINK_TOPICS)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http(url: str, body: Any = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    status, body = http(url)
    assert status == 200, (url, status)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """A sample summed over workers; labels not given are summed over too."""
    wanted = set(labels.items())
    return sum(
        value
        for scraped in samples
        for (sample, sample_labels), value in scraped.items()
        if sample == name and wanted <= set(sample_labels)
    )


def metrics_port(worker: Worker) -> int:
    answer = worker.health()
    assert answer is not None and answer[0] == 200, answer
    section = answer[1]["metrics"]
    assert section["enabled"] is True
    assert section["url"] == f"http://127.0.0.1:{section['port']}/metrics"
    port: int = section["port"]
    return port


def test_two_workers_count_known_events(
    worker_factory: WorkerPool, services: Services, topic_prefix: str, group_id: str
) -> None:
    base = free_port()
    env = {"ANALYTICS__METRICS__ENABLED": "true", "ANALYTICS__METRICS__PORT": str(base)}
    workers = [worker_factory(topic_prefix, group_id, env) for _ in range(2)]
    for worker in workers:
        worker.wait_ready(PARTITIONS, timeout=180)

    # one port each, from the configured one upwards, shown by /health
    ports = [metrics_port(worker) for worker in workers]
    assert len(set(ports)) == 2, ports
    assert all(base <= port < base + 10 for port in ports), (base, ports)

    # the start-up line, once the database mode is known
    def ready_lines() -> list[str]:
        found = []
        for worker in workers:
            log = worker.log_path.read_text(errors="replace")
            match = re.search(r"analytics worker ready: .*", log)
            found.append(match.group(0) if match else "")
        return found

    lines = poll(ready_lines, all, 120, "start-up lines", interval=0.5)
    for worker, port, line in zip(workers, ports, lines, strict=True):
        assert re.fullmatch(
            rf"analytics worker ready: broker={re.escape(services.kafka_bootstrap)} "
            rf"database=(timescaledb|postgresql \(TimescaleDB absent\)) partitions={PARTITIONS} "
            rf"web=http://127\.0\.0\.1:{worker.port} metrics=127\.0\.0\.1:{port} "
            r"application=analytics-dashboard environment=development",
            line.strip(),
        ), line

    # known traffic: 5 distinct events of 3 users, a repeat, an invalid event over HTTP and
    # an invalid one straight on the topic
    tag = uuid.uuid4().hex[:8]
    users = [f"user-{tag}-{n}" for n in range(3)]
    stamp = format_ts(now_ms())
    events = [
        {"user_id": users[n % 3], "event_id": f"e-{tag}-{n}", "action": "page_view",
         "page": f"/p{n}", "session_id": f"s-{n % 3}", "timestamp": stamp}
        for n in range(5)
    ]  # fmt: skip
    url = workers[0].url
    status, body = http(f"{url}/ingest/batch", {"events": events[:4]})
    assert status == 202, body
    assert http(f"{url}/ingest", events[4])[0] == 202
    assert http(f"{url}/ingest", events[0])[0] == 202  # the repeat: accepted, then dropped
    assert http(f"{url}/ingest", {"action": "click"})[0] == 400  # no user_id
    asyncio.run(
        produce(services.kafka_bootstrap, f"{topic_prefix}user-events", [(b"k", b"not json")])
    )

    expected = {
        (f"{NS}_events_processed_total", ()): 5,
        (f"{NS}_processing_latency_seconds_count", ()): 5,
        (f"{NS}_events_filtered_total", (("reason", "duplicate"),)): 1,
        (f"{NS}_events_filtered_total", (("reason", "invalid"),)): 2,
        (f"{NS}_events_filtered_total", (("reason", "late"),)): 0,
        (f"{NS}_dlq_events_total", (("source", "http"),)): 1,
        (f"{NS}_dlq_events_total", (("source", "topic"),)): 1,
        (f"{NS}_events_ingested_total", (("endpoint", "batch"),)): 4,
        (f"{NS}_events_ingested_total", (("endpoint", "ingest"),)): 2,
        (f"{NS}_user_count", ()): 3,
        (f"{NS}_session_count", ()): 3,
        (f"{NS}_table_keys", (("table", "seen-event-ids"),)): 5,
    }

    def figures() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        scraped = [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]
        return {key: total(scraped, key[0], **dict(key[1])) for key in expected}

    poll(figures, lambda now: now == expected, 90, f"metrics {expected}", interval=0.5)

    # the sinks: healthy, measured, and writing the live KPI windows
    def sinks() -> list[Samples]:
        return [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]

    def sinks_done(scraped: list[Samples]) -> bool:
        per_table = all(
            total(scraped, f"{NS}_sink_healthy", table=table) == 2
            and any((f"{NS}_sink_lag_records", (("table", table),)) in s for s in scraped)
            for table in SINK_TABLES
        )
        written = total(scraped, f"{NS}_sink_rows_written_total", table="kpi_metrics")
        batches = total(scraped, f"{NS}_sink_batch_size_rows_count", table="kpi_metrics")
        return per_table and written > 0 and batches > 0

    scraped = poll(sinks, sinks_done, 90, "sink metrics", interval=0.5)
    assert total(scraped, f"{NS}_sink_errors_total", kind="retry") == 0
    latency = total(scraped, f"{NS}_processing_latency_seconds_sum")
    assert 0 < latency < 5 * 60, latency

    # the same registry on the web port
    status, body = http(f"{workers[1].url}/metrics")
    assert status == 200
    text = body.decode()
    assert f"# TYPE {NS}_events_processed_total counter" in text
    assert f"{NS}_dlq_events_total" in text
