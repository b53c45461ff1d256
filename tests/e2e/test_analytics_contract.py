"""End to end: seeded traffic through the real Kafka, every final figure against the batch
definition of SPEC sections 3-5 (tests/reference/batch.py), with 1 and with 2 workers.

The traffic spans three hours of event time, arrives out of order within the grace, and has
repeated event_ids and invalid events mixed in. After it, one *closing* event per partition,
far later in event time, moves every partition's watermark past the traffic, so every window
and session of the traffic must be final. The reference is computed from what the enriched
topic holds (deduplicated), so SPEC sections 3-5 are checked independently of section 2.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from analytics.timeutil import format_ts, parse_ts
from generator.traffic import TrafficProfile, generate_labelled
from tests import contract
from tests.kafka_helpers import TopicReader, produce, sentinel_user_ids
from tests.reference import batch as reference
from tests.worker_process import Services, WorkerPool

PARTITIONS = 8
WINDOW_MS = 60_000
GAP_MS = 1_800_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPAN_MS = 3 * 3600 * 1000
CLOSING_TS = START_MS + SPAN_MS + GAP_MS + 10 * WINDOW_MS

PROFILE = TrafficProfile(
    seed=20261127,
    users=150,
    start_ms=START_MS,
    span_ms=SPAN_MS,
    events=12_000,
    disorder_ms=8_000,
    duplicate_rate=0.02,
    invalid_rate=0.01,
)


def _messages() -> tuple[list[tuple[bytes | None, bytes]], int]:
    messages: list[tuple[bytes | None, bytes]] = []
    invalid = 0
    for event, kind in generate_labelled(PROFILE):
        if isinstance(event, bytes):
            messages.append((None, event))
        else:
            user = event.get("user_id")
            key = user.encode() if isinstance(user, str) else None
            messages.append((key, orjson.dumps(event)))
        invalid += kind == "invalid"
    for partition, user_id in sorted(sentinel_user_ids(PARTITIONS, "closing").items()):
        closing = {
            "event_id": f"closing-{partition}",
            "user_id": user_id,
            "action": "closing",
            "timestamp": format_ts(CLOSING_TS),
        }
        messages.append((user_id.encode(), orjson.dumps(closing)))
    return messages, invalid


def _values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in records]


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
async def test_final_figures_equal_the_batch_definition(
    workers: int,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
) -> None:
    started = [worker_factory.start(topic_prefix, group_id) for _ in range(workers)]
    for worker in started:
        await worker.await_ready(PARTITIONS, timeout=120)
    messages, invalid_count = _messages()
    await produce(services.kafka_bootstrap, f"{topic_prefix}user-events", messages, linger_ms=20)

    last_window = (START_MS + SPAN_MS - 1) // WINDOW_MS * WINDOW_MS
    kpis = TopicReader(services.kafka_bootstrap, f"{topic_prefix}live-kpis")
    async with kpis:
        await kpis.read_until(
            lambda records: any(
                r.json()["is_final"] and parse_ts(r.json()["window_start"]) == last_window
                for r in records
            ),
            timeout=240,
        )
    sessions_reader = TopicReader(services.kafka_bootstrap, f"{topic_prefix}session-metrics")
    traffic_users = {
        e["user_id"]
        for e, kind in generate_labelled(PROFILE)
        if kind == "valid" and isinstance(e, dict)
    }
    async with sessions_reader:
        # every traffic session ends before the closing events, so all of them get written
        published_sessions = await sessions_reader.read_until(
            lambda records: {r.key.decode() for r in records if r.key} >= traffic_users,
            timeout=120,
        )
        published_sessions = await sessions_reader.read_to_end()

    readers = {
        name: TopicReader(services.kafka_bootstrap, f"{topic_prefix}{name}")
        for name in (
            "user-behavior-enriched",
            "live-kpis",
            "page-view-stats",
            "traffic-stats",
            "user-events-dlq",
        )
    }
    contents: dict[str, list[dict[str, Any]]] = {}
    for name, reader in readers.items():
        async with reader:
            contents[name] = _values(await reader.read_to_end())

    enriched = reference.dedupe(contents["user-behavior-enriched"])
    assert len(enriched) == len(contents["user-behavior-enriched"]), (
        "an event_id was enriched twice"
    )
    assert len(contents["user-events-dlq"]) == invalid_count

    finals = {
        parse_ts(k["window_start"]): k
        for k in contents["live-kpis"]
        if k["is_final"] and parse_ts(k["window_start"]) <= last_window
    }
    final_records = [k for k in contents["live-kpis"] if k["is_final"]]
    assert len({k["window_start"] for k in final_records}) == len(final_records), (
        "a window was finalised twice"
    )
    assert all(k["late_events_total"] == 0 for k in final_records)

    expected = {
        start: figures
        for start, figures in reference.kpi_windows(enriched, WINDOW_MS, GAP_MS).items()
        if start <= last_window
    }
    assert contract.compare_kpis(finals, expected) == []

    expected_sessions = [
        s for s in reference.sessions(enriched, GAP_MS) if s["user_id"] in traffic_users
    ]
    assert contract.compare_sessions(_values(published_sessions), expected_sessions) == []

    expected_pages = {
        k: v for k, v in reference.page_stats(enriched, WINDOW_MS).items() if k[0] <= last_window
    }
    published_pages = [
        p for p in contents["page-view-stats"] if parse_ts(p["window_start"]) <= last_window
    ]
    assert contract.compare_pages(published_pages, expected_pages) == []

    expected_dims = {
        k: v
        for k, v in reference.dimension_stats(enriched, WINDOW_MS).items()
        if k[0] <= last_window
    }
    published_dims = [
        d for d in contents["traffic-stats"] if parse_ts(d["window_start"]) <= last_window
    ]
    assert contract.compare_dimensions(published_dims, expected_dims) == []
