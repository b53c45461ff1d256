"""End to end: funnels, cohorts and A/B tests (SPEC 7-9) through the real Kafka, every
published row against the batch definition (tests/reference/batch.py), with 1 and 2 workers
and with a worker killed -9 mid-stream.

The traffic starts an hour before midnight and runs three hours, so cohorts have two days and
offsets, funnels attempts cross midnight, and it carries an experiment whose users a few see
both variants. Then one *closing* event per partition, two days later in event time, moves
every watermark past the end of both days plus the funnel window (24 h, the shipped
``checkout`` funnel), so every funnel day and the traffic's cohort rows are final. The
reference is computed from the enriched topic (deduplicated).
"""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from app.settings import get_settings
from generator.traffic import TrafficProfile, generate_labelled
from tests import contract
from tests.kafka_helpers import ReadTimeout, TopicReader, closing_messages, produce
from tests.reference import batch as reference
from tests.worker_process import Services, WorkerPool

PARTITIONS = 8
GAP_MS = 1_800_000
DAY_MS = 86_400_000
START_MS = 1_767_222_000_000  # 2025-12-31T23:00:00Z
SPAN_MS = 3 * 3600 * 1000
CLOSING_TS = START_MS + 2 * DAY_MS + 2 * 3600 * 1000  # past both days' end + 24 h

PROFILE = TrafficProfile(
    seed=20261129,
    users=120,
    start_ms=START_MS,
    span_ms=SPAN_MS,
    events=6_000,
    disorder_ms=8_000,
    duplicate_rate=0.02,
    checkout_action=True,
    experiment="checkout_button",
)
SETTINGS = get_settings()


def _messages() -> list[tuple[bytes | None, bytes]]:
    messages: list[tuple[bytes | None, bytes]] = []
    for event, _ in generate_labelled(PROFILE):
        assert isinstance(event, dict)
        messages.append((event["user_id"].encode(), orjson.dumps(event)))
    return messages + closing_messages(PARTITIONS, CLOSING_TS)


def _latest(records: list[Any], key: Any) -> dict[Any, dict[str, Any]]:
    """The last record of each key (later ones replace earlier ones, as for a table)."""
    latest: dict[Any, dict[str, Any]] = {}
    for record in records:
        value = record.json()
        latest[key(value)] = value
    return latest


def _assert_none(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:60])


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["one-worker", "two-workers", "worker-killed"])
async def test_funnels_cohorts_and_experiments_equal_the_batch_definition(
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
    messages = _messages()
    traffic, closing = messages[:-PARTITIONS], messages[-PARTITIONS:]
    events_topic = f"{topic_prefix}user-events"
    if scenario == "worker-killed":
        half = len(traffic) // 2
        await produce(bootstrap, events_topic, traffic[:half], linger_ms=20)
        async with TopicReader(bootstrap, f"{topic_prefix}user-behavior-enriched") as reader:
            await reader.read_until(lambda records: len(records) >= half // 3, timeout=120)
        workers[1].kill()
        await produce(bootstrap, events_topic, traffic[half:], linger_ms=20)
        restarted = worker_factory.start(topic_prefix, group_id)
        await restarted.await_ready(PARTITIONS, timeout=180)
        await workers[0].await_ready(PARTITIONS, timeout=180)
    else:
        await produce(bootstrap, events_topic, traffic, linger_ms=20)
    await produce(bootstrap, events_topic, closing)

    funnels = contract.funnel_config(SETTINGS.funnels)
    days = {(spec["name"], d) for spec in funnels for d in ("2025-12-31", "2026-01-01")}
    async with TopicReader(bootstrap, f"{topic_prefix}funnel-stats") as reader:
        records = await reader.read_until(
            lambda rs: (
                days <= {(r.json()["funnel"], r.json()["day"]) for r in rs if r.json()["is_final"]}
            ),
            timeout=240,
        )
    final_funnels = {
        key: row
        for key, row in _latest(records, lambda r: (r["funnel"], r["day"])).items()
        if row["is_final"]
    }
    async with TopicReader(bootstrap, f"{topic_prefix}user-behavior-enriched") as reader:
        enriched = contract.one_copy_each(
            [r.json() for r in await reader.read_to_end()], lambda e: e["event_id"]
        )
    valid = [e for e, kind in generate_labelled(PROFILE) if kind == "valid"]
    assert len(enriched) >= len(valid)
    traffic_events = [e for e in enriched if e["action"] != "closing"]

    expected_funnels = reference.funnel_stats(traffic_events, funnels)
    assert any(row["stages"][-1]["reached"] for row in expected_funnels.values())
    _assert_none(contract.compare_funnels(final_funnels, expected_funnels))

    experiments = reference.experiments(traffic_events)
    assert experiments["checkout_button"]["variant_conflicts"] > 0
    spec = SETTINGS.experiments.spec()

    def experiments_match(records: list[Any]) -> bool:
        latest = _latest(records, lambda r: (r["experiment"], r["variant"]))
        return not contract.compare_experiments(latest, experiments, spec)

    async with TopicReader(bootstrap, f"{topic_prefix}experiment-stats") as reader:
        # rows come on change, at most once a second: wait for the last one (on a timeout,
        # the comparison below names what differs)
        with contextlib.suppress(ReadTimeout):
            await reader.read_until(experiments_match, timeout=120)
        latest = _latest(reader.records, lambda r: (r["experiment"], r["variant"]))
    _assert_none(contract.compare_experiments(latest, experiments, spec))

    last_day = date(2026, 1, 1) + timedelta(days=1)  # final: the closing moved past its end
    expected_cohorts = reference.cohorts(
        traffic_events, SETTINGS.cohorts.max_day_offset, GAP_MS, last_day.isoformat()
    )
    async with TopicReader(bootstrap, f"{topic_prefix}cohort-stats") as reader:
        records = await reader.read_until(
            lambda rs: (
                set(expected_cohorts)
                <= {
                    (r.json()["cohort"], r.json()["day_offset"]) for r in rs if r.json()["is_final"]
                }
            ),
            timeout=120,
        )
    final_cohorts = {
        key: row
        for key, row in _latest(records, lambda r: (r["cohort"], r["day_offset"])).items()
        if row["is_final"] and key in expected_cohorts
    }
    assert len(expected_cohorts) >= 5
    assert any(row["average_engagement_score"] for row in expected_cohorts.values())
    _assert_none(contract.compare_cohorts(final_cohorts, expected_cohorts))
