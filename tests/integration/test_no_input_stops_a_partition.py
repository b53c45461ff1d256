"""No input stops the pipeline (issue 9), on a real worker, broker and database.

* The combiner: malformed records on ``kpi-partials`` (not JSON, a partition the worker does
  not have, negative or fractional counters, an unknown kind) go to ``kpi-partials-dlq`` with
  errors naming the fields, and the windows after them are still published as final.
* Records larger than a Kafka message: 101 page views of one user on distinct pages of 2,048
  control characters make the window's partial and the session's record several MB; they are
  published as chunks, the window is final with every page, the session lands whole in
  ``session_metrics``, and the partition goes on.
* Ingestion: a hypothesis-drawn batch of adversarial inputs (tests/fuzz_inputs.py) is posted
  to ``POST /ingest`` and ``/ingest/batch`` and produced straight to ``user-events``; every one
  ends enriched or in ``user-events-dlq`` with its errors, and the worker still answers
  ``/health`` and still publishes a final window afterwards.

Each test has a worker and topics of its own, so one test's event times cannot make another's
late.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from analytics.dead_letters import bounded_dead_letter
from analytics.timeutil import format_ts, parse_ts
from analytics.tracking import fallback_event_id
from app.topics import TopicNames
from tests.databases import fresh_database
from tests.fuzz_inputs import RAW_INPUTS, valid_events, wrong_events
from tests.kafka_helpers import (
    Outgoing,
    Record,
    barrier,
    end_offsets,
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


def _raw_start(body: bytes) -> str:
    """The start of a payload as a dead letter keeps it (analytics.dead_letters): enough to
    tell the bodies apart, whether or not the dead letter cut it."""
    return str(bounded_dead_letter(body, [], source="", received_ms=0)["raw"])[:1000]


def _decoded(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


def _topic_key(raw: bytes, wrong_key: bool) -> bytes | None:
    """The user_id, as a producer keys an event (none when it is too long to be a key of a
    message that must also hold the value), or a wrong key."""
    obj = _decoded(raw)
    user = obj.get("user_id") if isinstance(obj, dict) else None
    if isinstance(user, str) and len(user) <= 1000 and not wrong_key:
        return user.encode()
    return b"not-the-user" if wrong_key else None


ROUNDS = 5  # hypothesis' first example is its simplest one; the others are random
SIZE = 10  # inputs of each kind per round: more, and hypothesis often cannot draw them


def test_adversarial_inputs_are_enriched_or_dead_lettered_and_the_worker_goes_on(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    worker = worker_factory.start(topic_prefix, group_id)
    worker.wait_ready(PARTITIONS, timeout=120)
    bootstrap = worker_factory.services.kafka_bootstrap
    topics = TopicNames.with_prefix(topic_prefix)

    # rounds of drawn inputs against the one worker; no shrinking (a failure shows its inputs)
    @settings(
        max_examples=ROUNDS,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        singles=st.lists(RAW_INPUTS, min_size=SIZE, max_size=SIZE),
        batch=st.lists(valid_events() | wrong_events(), min_size=SIZE, max_size=SIZE),
        topic=st.lists(st.tuples(RAW_INPUTS, st.booleans()), min_size=SIZE, max_size=SIZE),
    )
    def one_round(
        singles: list[bytes], batch: list[dict[str, Any]], topic: list[tuple[bytes, bool]]
    ) -> None:
        asyncio.run(_round(worker, bootstrap, topics, singles, batch, topic))

    one_round()
    # and the worker goes on: healthy, publishing final windows
    assert worker.alive and (worker.health() or (0,))[0] == 200
    start = (int(time.time() * 1000) // MINUTE + 1) * MINUTE  # the next window
    asyncio.run(close_window(bootstrap, topics, start, "after-fuzz"))
    record = asyncio.run(final_window(bootstrap, topics, start))
    assert record["total_events"] >= PARTITIONS


async def _round(
    worker: Worker,
    bootstrap: str,
    topics: TopicNames,
    singles: list[bytes],
    batch: list[dict[str, Any]],
    topic: list[tuple[bytes, bool]],
) -> None:
    mark = await end_offsets(bootstrap, topics.dead_letters)
    async with aiohttp.ClientSession() as session:
        answers = [await _post(session, worker.url + "/ingest", body) for body in singles]
        batch_body = orjson.dumps({"events": batch})
        batch_answer = await _post(session, worker.url + "/ingest/batch", batch_body)
    messages = [Outgoing(_topic_key(raw, wrong), raw) for raw, wrong in topic]
    produced = await produce(bootstrap, topics.user_events, messages)

    await barrier(bootstrap, topics.user_events, topics.enriched)
    records = await read_to_end(bootstrap, topics.enriched)
    keys = Counter((e["user_id"], e["event_id"]) for e in (r.json() for r in records))
    assert max(keys.values(), default=1) == 1, "an event enriched twice"
    dead_records = await read_to_end(bootstrap, topics.dead_letters, start_offsets=mark)
    dead = [r.json() for r in dead_records]
    for letter in dead:
        assert letter["errors"] and letter["error"].startswith(letter["errors"][0]["field"])

    # POST /ingest: 202 and enriched, or 4xx and dead-lettered with the body
    http_dead = Counter(d["raw"][:1000] for d in dead if d["source"] == "http")
    for body, (status, answer) in zip(singles, answers, strict=True):
        if status == 202:
            user = orjson.loads(body)["user_id"]
            assert (user, answer["event_id"]) in keys, (body, answer)
        else:
            assert 400 <= status < 500 and answer["errors"], (body, answer)
            assert http_dead[_raw_start(body)] > 0, (body[:200], answer)
            http_dead[_raw_start(body)] -= 1

    # POST /ingest/batch: each accepted event enriched, each rejected one dead-lettered; a
    # body that is not a batch at all (an event in it is not JSON) is one dead letter
    status, answer = batch_answer
    batch_dead = [d for d in dead if d["source"] == "http-batch"]
    if "errors" in answer:
        assert status in (400, 413) and [d.get("batch_index") for d in batch_dead] == [None]
    else:
        assert status in (202, 400), answer
        rejected = sorted(r["index"] for r in answer["rejected"])
        accepted = [e for n, e in enumerate(batch) if n not in rejected]
        for event, event_id in zip(accepted, answer["accepted"], strict=True):
            assert (event["user_id"], event_id) in keys
        assert sorted(d["batch_index"] for d in batch_dead) == rejected

    # user-events: enriched under its event_id, or dead-lettered where it was produced
    topic_dead = {(d["partition"], d["offset"]) for d in dead if d["source"] == "topic"}
    for (raw, _), where in zip(topic, produced, strict=True):
        if (where.partition, where.offset) in topic_dead:
            continue
        obj = orjson.loads(raw)
        fallback = fallback_event_id(topics.user_events, where.partition, where.offset)
        assert (obj["user_id"], obj.get("event_id") or fallback) in keys, raw
