"""No input stops the pipeline (issue 9), on a real worker, broker and database.

* The combiner: malformed records on ``kpi-partials`` (not JSON, a partition the worker does
  not have, negative or fractional counters, an unknown kind) go to ``kpi-partials-dlq`` with
  errors naming the fields, and the windows after them are still published as final.
* Records larger than a Kafka message: 101 page views of one user on distinct pages of 2,048
  control characters make the window's partial and the session's record several MB; they are
  published as chunks, the window is final with every page, the session lands whole in
  ``session_metrics``, and the partition goes on.
* Ingestion (issue 11, item 3): rounds of hypothesis-drawn adversarial inputs
  (tests/fuzz_inputs.py) are posted to ``POST /ingest`` and ``/ingest/batch`` with drawn
  content types, compression and transfer encodings, and produced straight to
  ``user-events``; tests/fuzz_http.py judges each against the pure decision: no 5xx, no
  dropped connection, every 4xx naming the field or the problem, every rejected event on
  ``user-events-dlq`` exactly once, every accepted one enriched once; the worker still answers
  ``/health`` and still publishes a final window afterwards. bench/fuzz_ingest.py runs the
  same with 10,000 cases and more.

Each test has a worker and topics of its own, so one test's event times cannot make another's
late.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from analytics.timeutil import format_ts, parse_ts
from app.topics import TopicNames
from tests.databases import fresh_database
from tests.fuzz_http import BATCH, SINGLE, HttpCase, Target, TopicCase, fuzz_round
from tests.fuzz_inputs import BATCH_BODIES, DELIVERIES, RAW_INPUTS
from tests.kafka_helpers import (
    Outgoing,
    Record,
    produce,
    read_to_end,
    read_until,
    sentinel_user_ids,
)
from tests.worker_process import Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
MINUTE = 60_000


async def start_worker(factory: WorkerPool, prefix: str, group: str) -> Worker:
    worker = factory.start(prefix, group)
    await worker.await_ready(PARTITIONS, timeout=120)
    return worker


async def final_window(bootstrap: str, topics: TopicNames, start_ms: int) -> dict[str, Any]:
    """Wait for the final live-kpis record of the window starting at ``start_ms``."""

    def found(records: list[Record]) -> bool:
        return any(_is_final(r, start_ms) for r in records)

    records = await read_until(bootstrap, topics.live_kpis, found, timeout=90)
    (record,) = [r.json() for r in records if _is_final(r, start_ms)]
    return record  # type: ignore[no-any-return]


def _is_final(record: Record, start_ms: int) -> bool:
    value = record.json()
    return bool(value["is_final"]) and value["window_start"] == format_ts(start_ms)


async def close_window(bootstrap: str, topics: TopicNames, start_ms: int, tag: str) -> None:
    """One event in the window starting at ``start_ms`` on every partition, then one two
    windows later on every partition: each partition's watermark passes the window's end."""
    users = sentinel_user_ids(PARTITIONS, tag)
    for offset, name in ((5_000, "in"), (2 * MINUTE + 20_000, "after")):
        events = [
            {"event_id": f"{name}-{u}", "user_id": u, "action": "probe"}
            | {"timestamp": format_ts(start_ms + offset)}
            for u in users.values()
        ]
        await produce(
            bootstrap,
            topics.user_events,
            [(e["user_id"].encode(), orjson.dumps(e)) for e in events],
        )


# --------------------------------------------------------------------------- the combiner


def _partial(partition: int, **kpi: Any) -> bytes:
    counters = {"events": 1, "users_total": 1} | kpi
    return orjson.dumps(
        {"type": "partial", "partition": partition, "window_start": 0, "final": True}
        | {"kpi": counters, "pages": {}, "dims": {}}
    )


async def test_the_combiner_dead_letters_bad_partials_and_keeps_publishing(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    worker = await start_worker(worker_factory, topic_prefix, group_id)
    bootstrap = worker_factory.services.kafka_bootstrap
    topics = TopicNames.with_prefix(topic_prefix)
    bad = [
        (b"{not json", "message"),
        (b"", "message"),
        (orjson.dumps({"type": "checkpoint", "partition": 0}), "type"),
        (orjson.dumps({"type": "progress", "partition": 99, "wm": 0, "late": 0}), "partition"),
        (_partial(0, events=-3), "kpi.events"),
        (_partial(1, events=1.5), "kpi.events"),
        (b'{"type":"progress","partition":2,"wm":1e999,"late":0}', "message"),
    ]
    produced = await produce(
        bootstrap, topics.kpi_partials, [Outgoing(None, raw, partition=0) for raw, _ in bad]
    )
    start = parse_ts("2025-03-03T10:00:00Z")
    await close_window(bootstrap, topics, start, "combiner")

    record = await final_window(bootstrap, topics, start)
    assert record["total_events"] == PARTITIONS and record["active_users"] == PARTITIONS

    letters = await read_until(
        bootstrap, topics.partial_dead_letters, lambda r: len(r) >= len(bad), timeout=30
    )
    by_offset = {letter.json()["offset"]: letter.json() for letter in letters}
    assert sorted(by_offset) == [p.offset for p in produced]
    for (raw, field), where in zip(bad, produced, strict=True):
        letter = by_offset[where.offset]
        assert letter["source"] == "kpi-combiner" and letter["topic"] == topics.kpi_partials
        assert letter["errors"][0]["field"] == field, letter
        assert letter["error"].startswith(f"{field}: ")
        assert letter["raw"] == raw.decode()
    assert worker.alive and (worker.health() or (0,))[0] == 200


# --------------------------------------------------------------------------- large records

KAFKA_MESSAGE_BYTES = 1_048_588  # the broker's default message.max.bytes
PAGES = 101


def _long_pages(user: str, start_ms: int) -> list[tuple[bytes, bytes]]:
    """``PAGES`` page views of ``user`` in the window at ``start_ms``, each on a page of its
    own of 2,048 characters, most of them control characters (12 KiB each as JSON)."""
    events = [
        {"event_id": f"{user}-{n}", "user_id": user, "action": "page_view"}
        | {"page": f"/{n:04d}" + "\x01" * 2043, "timestamp": format_ts(start_ms + 1_000 + n)}
        for n in range(PAGES)
    ]
    return [(user.encode(), orjson.dumps(e)) for e in events]


async def _session_row(url: str, user: str, timeout: float) -> dict[str, Any]:
    """The user's session_metrics row, once the sink has written it."""
    deadline = time.monotonic() + timeout
    while True:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
            await cursor.execute(
                "SELECT * FROM session_metrics WHERE user_id = %s", (user,), prepare=False
            )
            rows = await cursor.fetchall()
        if rows:
            (row,) = rows
            return dict(row)
        assert time.monotonic() < deadline, f"no session_metrics row for {user} in {timeout} s"
        await asyncio.sleep(0.5)  # polling interval, bounded by the deadline


async def test_records_of_many_long_pages_do_not_stop_a_partition(
    worker_factory: WorkerPool, services: Any, topic_prefix: str, group_id: str
) -> None:
    async with fresh_database(services.database_url) as url:
        worker = worker_factory.start(topic_prefix, group_id, extra_env={"DATABASE_URL": url})
        await worker.await_ready(PARTITIONS, timeout=120)
        bootstrap = worker_factory.services.kafka_bootstrap
        topics = TopicNames.with_prefix(topic_prefix)
        start = parse_ts("2025-04-04T10:00:00Z")
        user = f"long-pages-{topic_prefix}"
        await produce(bootstrap, topics.user_events, _long_pages(user, start))
        await close_window(bootstrap, topics, start, "long-pages")

        record = await final_window(bootstrap, topics, start)
        assert record["total_page_views"] == PAGES and record["total_events"] == PAGES + PARTITIONS
        rows = await read_until(
            bootstrap,
            topics.page_view_stats,
            lambda r: len([x for x in r if x.json()["window_start"] == format_ts(start)]) >= PAGES,
            timeout=60,
        )
        pages = {r.json()["page"]: r.json() for r in rows}
        assert len(pages) == PAGES and all(p["views"] == 1 for p in pages.values())
        partials = await read_to_end(bootstrap, topics.kpi_partials)
        chunks = [r.json() for r in partials if b'"chunk"' in (r.value or b"")]
        assert chunks and all(len(r.value or b"") < KAFKA_MESSAGE_BYTES for r in partials)

        # an event two hours later on the user's partition closes the session
        later = {"event_id": f"{user}-later", "user_id": user, "action": "probe"}
        later["timestamp"] = format_ts(start + 120 * MINUTE)
        await produce(bootstrap, topics.user_events, [(user.encode(), orjson.dumps(later))])
        row = await _session_row(url, user, timeout=120)
        assert row["unique_pages"] == PAGES and row["total_events"] == PAGES
        assert row["pages"] == {page: 1 for page in pages}
        sessions = await read_to_end(bootstrap, topics.session_metrics)
        mine = [r for r in sessions if r.key == user.encode()]
        assert len(mine) > 1 and all(len(r.value or b"") < KAFKA_MESSAGE_BYTES for r in mine)

        # and the partition goes on: a later window is final
        after = start + 180 * MINUTE  # after the event that closed the session
        await close_window(bootstrap, topics, after, "after-long-pages")
        assert (await final_window(bootstrap, topics, after))["total_events"] >= PARTITIONS
        assert worker.alive and (worker.health() or (0,))[0] == 200


# --------------------------------------------------------------------------- ingestion


ROUNDS = 5  # hypothesis' first example is its simplest one; the others are random
SINGLES, BATCHES, MESSAGES = 16, 8, 16  # cases of each kind per round: 200 in all


def test_adversarial_inputs_are_enriched_or_dead_lettered_and_the_worker_goes_on(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    worker = worker_factory.start(topic_prefix, group_id)
    worker.wait_ready(PARTITIONS, timeout=120)
    bootstrap = worker_factory.services.kafka_bootstrap
    topics = TopicNames.with_prefix(topic_prefix)
    target = Target(worker.url, bootstrap, topics)

    # rounds of drawn inputs against the one worker; no shrinking (a failure shows its inputs)
    @settings(
        max_examples=ROUNDS,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        singles=st.lists(
            st.builds(HttpCase, st.just(SINGLE), RAW_INPUTS, DELIVERIES),
            min_size=SINGLES,
            max_size=SINGLES,
        ),
        batches=st.lists(
            st.builds(HttpCase, st.just(BATCH), BATCH_BODIES, DELIVERIES),
            min_size=BATCHES,
            max_size=BATCHES,
        ),
        messages=st.lists(
            st.builds(TopicCase, RAW_INPUTS, st.booleans()), min_size=MESSAGES, max_size=MESSAGES
        ),
    )
    def one_round(
        singles: list[HttpCase], batches: list[HttpCase], messages: list[TopicCase]
    ) -> None:
        findings = asyncio.run(fuzz_round(target, singles + batches, messages))
        assert findings.violations() == []
        assert findings.letters_found == findings.letters_expected
        assert findings.accepted_enriched == findings.accepted

    one_round()
    # and the worker goes on: healthy, publishing final windows
    assert worker.alive and (worker.health() or (0,))[0] == 200
    start = (int(time.time() * 1000) // MINUTE + 1) * MINUTE  # the next window
    asyncio.run(close_window(bootstrap, topics, start, "after-fuzz"))
    record = asyncio.run(final_window(bootstrap, topics, start))
    assert record["total_events"] >= PARTITIONS
