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

from analytics.timeutil import parse_ts
from generator.traffic import TrafficProfile, generate_labelled
from tests import contract
from tests.kafka_helpers import TopicReader, closing_messages, produce
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
    messages += closing_messages(PARTITIONS, CLOSING_TS)
    return messages, invalid


def _values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in records]


def _assert_none(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:60])


async def _wait_for_enriched(bootstrap: str, topic: str, count: int) -> None:
    async with TopicReader(bootstrap, topic) as reader:
        await reader.read_until(lambda records: len(records) >= count, timeout=120)


@pytest.mark.integration
@pytest.mark.parametrize(
    "scenario",
    [
        "one-worker",
        "two-workers",
        "worker-stopped-and-restarted",
        "worker-killed-and-restarted",
    ],
)
async def test_final_figures_equal_the_batch_definition(
    scenario: str,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
) -> None:
    bootstrap = services.kafka_bootstrap
    workers = [worker_factory.start(topic_prefix, group_id)]
    if scenario != "one-worker":
        workers.append(worker_factory.start(topic_prefix, group_id))
    for worker in workers:
        await worker.await_ready(PARTITIONS, timeout=180)
    messages, invalid_count = _messages()
    traffic, closing = messages[:-PARTITIONS], messages[-PARTITIONS:]
    if scenario.endswith("-and-restarted"):
        half = len(traffic) // 2
        await produce(bootstrap, f"{topic_prefix}user-events", traffic[:half], linger_ms=20)
        await _wait_for_enriched(bootstrap, f"{topic_prefix}user-behavior-enriched", half // 3)
        if scenario == "worker-killed-and-restarted":
            workers[1].kill()
        else:
            workers[1].stop()
        await produce(bootstrap, f"{topic_prefix}user-events", traffic[half:], linger_ms=20)
        await workers[0].await_ready(PARTITIONS, timeout=180)
        restarted = worker_factory.start(topic_prefix, group_id)
        await restarted.await_ready(PARTITIONS, timeout=180)
        await workers[0].await_ready(PARTITIONS, timeout=180)
    else:
        await produce(bootstrap, f"{topic_prefix}user-events", traffic, linger_ms=20)
    await produce(bootstrap, f"{topic_prefix}user-events", closing)

    last_window = (START_MS + SPAN_MS - 1) // WINDOW_MS * WINDOW_MS
    async with TopicReader(bootstrap, f"{topic_prefix}live-kpis") as kpis:
        await kpis.read_until(
            lambda records: any(
                r.json()["is_final"] and parse_ts(r.json()["window_start"]) == last_window
                for r in records
            ),
            timeout=240,
        )
    valid = [e for e, kind in generate_labelled(PROFILE) if kind == "valid" and isinstance(e, dict)]
    traffic_users = {e["user_id"] for e in valid}
    # every traffic event is processed once the last window is final; every traffic session
    # ends long before the closing events, so each is written one batch later at the latest
    async with TopicReader(bootstrap, f"{topic_prefix}user-behavior-enriched") as reader:
        processed = contract.one_copy_each(
            _values(await reader.read_to_end()), lambda e: e["event_id"]
        )
    expected_keys = {
        (s["user_id"], s["session_id"], s["window_start_ms"])
        for s in reference.sessions(processed, GAP_MS)
        if s["user_id"] in traffic_users
    }
    async with TopicReader(bootstrap, f"{topic_prefix}session-metrics") as sessions_reader:
        await sessions_reader.read_until(
            lambda records: contract.session_keys(r.json() for r in records) >= expected_keys,
            timeout=120,
        )

    contents: dict[str, list[dict[str, Any]]] = {}
    for name in (
        "user-behavior-enriched",
        "live-kpis",
        "session-metrics",
        "page-view-stats",
        "traffic-stats",
        "user-events-dlq",
    ):
        async with TopicReader(bootstrap, f"{topic_prefix}{name}") as reader:
            contents[name] = _values(await reader.read_to_end())

    enriched = contract.one_copy_each(contents["user-behavior-enriched"], lambda e: e["event_id"])
    missing = {e["event_id"] for e in valid} - {e["event_id"] for e in enriched}
    assert not missing, f"{len(missing)} valid events never enriched, e.g. {sorted(missing)[:3]}"
    if not scenario.endswith("-and-restarted"):
        assert len(enriched) == len(contents["user-behavior-enriched"]), "an event enriched twice"
        assert len(contents["user-events-dlq"]) == invalid_count
    else:
        rejected = {(d["partition"], d["offset"]) for d in contents["user-events-dlq"]}
        assert len(rejected) == invalid_count

    final_records = contract.one_copy_each(
        [k for k in contents["live-kpis"] if k["is_final"]], lambda k: k["window_start"]
    )
    assert all(k["late_events_total"] == 0 for k in final_records)
    finals = {
        parse_ts(k["window_start"]): k
        for k in final_records
        if parse_ts(k["window_start"]) <= last_window
    }
    expected = {
        start: figures
        for start, figures in reference.kpi_windows(
            enriched, WINDOW_MS, GAP_MS, contract.shipped_custom_kpis()
        ).items()
        if start <= last_window
    }
    _assert_none(contract.compare_kpis(finals, expected))

    sessions = contract.one_copy_each(
        contents["session-metrics"], lambda s: (s["user_id"], s["session_id"], s["window_start"])
    )
    expected_sessions = [
        s for s in reference.sessions(enriched, GAP_MS) if s["user_id"] in traffic_users
    ]
    _assert_none(contract.compare_sessions(sessions, expected_sessions))

    pages = contract.one_copy_each(
        contents["page-view-stats"], lambda p: (p["window_start"], p["page"])
    )
    expected_pages = {
        k: v for k, v in reference.page_stats(enriched, WINDOW_MS).items() if k[0] <= last_window
    }
    published_pages = [p for p in pages if parse_ts(p["window_start"]) <= last_window]
    _assert_none(contract.compare_pages(published_pages, expected_pages))

    dims = contract.one_copy_each(
        contents["traffic-stats"], lambda d: (d["window_start"], d["dimension"], d["value"])
    )
    expected_dims = {
        k: v
        for k, v in reference.dimension_stats(enriched, WINDOW_MS).items()
        if k[0] <= last_window
    }
    published_dims = [d for d in dims if parse_ts(d["window_start"]) <= last_window]
    _assert_none(contract.compare_dimensions(published_dims, expected_dims))
