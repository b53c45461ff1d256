"""Ingestion (HTTP and topic) and the behaviour tracker against the real broker (SPEC 1-2).

One worker (8 partitions) serves the whole module, on topics of its own. Every test notes the
end offsets of the output topics, does its thing, then puts a barrier behind it
(tests/kafka_helpers.py) and asserts the *exact* records that appeared after its mark in
``<prefix>user-behavior-enriched`` and ``<prefix>user-events-dlq``.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from analytics.tracking import fallback_event_id
from app.topics import TopicNames
from tests.kafka_helpers import (
    Outgoing,
    Produced,
    Record,
    barrier,
    end_offsets,
    is_sentinel,
    partition_for,
    produce,
    read_to_end,
)
from tests.worker_process import Worker, WorkerPool, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

PARTITIONS = 8
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
)
ENRICHED_FIELDS = {
    # SPEC section 1, normalised
    "event_id",
    "user_id",
    "session_id",
    "action",
    "page",
    "timestamp",
    "duration",
    "metadata",
    "ip_address",
    "user_agent",
    "country",
    "device",
    # SPEC section 2
    "received_at",
    "timestamp_clamped",
    "is_conversion",
    "revenue",
    "revenue_cents",
    "is_high_value",
    "hour_of_day",
    "day_of_week",
    "browser",
    "os",
}


def iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds and Z, written independently of analytics.timeutil."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{ms % 1000:03d}Z"
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tag() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Outputs:
    """What appeared in the output topics after a mark, sentinels left out."""

    enriched: list[Record]
    dead: list[Record]

    def enriched_by_event_id(self) -> dict[str, dict[str, Any]]:
        values = [r.json() for r in self.enriched]
        by_id = {v["event_id"]: v for v in values}
        assert len(by_id) == len(values), f"repeated event_ids in {values}"
        return by_id


@dataclass
class Pipeline:
    """The module's worker and its topics."""

    worker: Worker
    bootstrap: str
    topics: TopicNames

    async def mark(self) -> dict[str, dict[int, int]]:
        """End offsets of the output topics now."""
        return {
            topic: await end_offsets(self.bootstrap, topic)
            for topic in (self.topics.enriched, self.topics.dead_letters)
        }

    async def settle(self, mark: dict[str, dict[int, int]]) -> Outputs:
        """Barrier, then everything in the output topics after ``mark``."""
        await barrier(self.bootstrap, self.topics.user_events, self.topics.enriched)
        enriched = await read_to_end(
            self.bootstrap, self.topics.enriched, start_offsets=mark[self.topics.enriched]
        )
        dead = await read_to_end(
            self.bootstrap, self.topics.dead_letters, start_offsets=mark[self.topics.dead_letters]
        )
        return Outputs([r for r in enriched if not is_sentinel(r)], dead)

    async def produce(
        self, messages: list[tuple[bytes | None, bytes] | Outgoing]
    ) -> list[Produced]:
        return await produce(self.bootstrap, self.topics.user_events, messages)

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.worker.url + path, data=body, headers={"Content-Type": "application/json"}
            ) as response,
        ):
            return response.status, await response.json()


@pytest.fixture(scope="module")
def pipeline(module_worker_factory: WorkerPool) -> Pipeline:
    prefix = new_topic_prefix()
    worker = module_worker_factory(prefix, new_group_id())
    worker.wait_ready(PARTITIONS)
    return Pipeline(
        worker, module_worker_factory.services.kafka_bootstrap, TopicNames.with_prefix(prefix)
    )


def assert_enriched_record(record: Record) -> dict[str, Any]:
    """Common checks of an enriched record; returns its value."""
    value: dict[str, Any] = record.json()
    assert set(value) == ENRICHED_FIELDS
    assert record.key == value["user_id"].encode()
    assert record.partition == partition_for(value["user_id"].encode(), PARTITIONS)
    return value


def assert_dead_letter(
    record: Record, *, source: str, fields: list[str], received: tuple[int, int] | None
) -> dict[str, Any]:
    """Common checks of a dead letter: source, error naming ``fields``, received_at range."""
    value: dict[str, Any] = record.json()
    assert value["source"] == source
    assert [e["field"] for e in value["errors"]] == fields
    for field in fields:
        assert f"{field}: " in value["error"]
    if received is not None:
        assert iso(received[0]) <= value["received_at"] <= iso(received[1])
    return value


# --------------------------------------------------------------------------- HTTP


async def test_health_reports_kafka_connected(pipeline: Pipeline) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(pipeline.worker.url + "/health") as response,
    ):
        body = await response.json()
        assert response.status == 200
    assert body["status"] == "ok"
    assert body["kafka"]["connected"] is True
    assert body["kafka"]["brokers"] >= 1
    assert body["worker"] == {"rebalancing": False, "user_events_partitions": list(range(8))}


async def test_single_ingest_is_enriched_with_every_field(pipeline: Pipeline) -> None:
    t = tag()
    mark = await pipeline.mark()
    purchase = {
        "event_id": f"evt-{t}",
        "user_id": f"user-{t}-a",
        "session_id": "sess-1",
        "action": "purchase",
        "page": "/checkout",
        "timestamp": "2024-01-15T10:30:00.123456+02:00",
        "duration": 1200,
        "metadata": {"amount": 149.999, "currency": "EUR"},
        "ip_address": "2001:DB8::1",
        "user_agent": IPHONE_UA,
        "country": "de",
    }
    signup: dict[str, Any] = {"user_id": f"user-{t}-b", "action": "signup", "duration": 30_001}
    signup["metadata"] = {"amount": 500}
    before = now_ms()
    status_a, body_a = await pipeline.post("/ingest", orjson.dumps(purchase))
    status_b, body_b = await pipeline.post("/ingest", orjson.dumps(signup))
    after = now_ms()
    assert (status_a, body_a) == (202, {"event_id": f"evt-{t}"})
    assert status_b == 202
    assigned = body_b["event_id"]
    assert str(uuid.UUID(assigned)) == assigned

    out = await pipeline.settle(mark)

    assert out.dead == []
    assert len(out.enriched) == 2
    values = {v["event_id"]: v for v in (assert_enriched_record(r) for r in out.enriched)}
    a = values[f"evt-{t}"]
    assert before <= _parse(a["received_at"]) <= after
    assert a == {
        "event_id": f"evt-{t}",
        "user_id": f"user-{t}-a",
        "session_id": "sess-1",
        "action": "purchase",
        "page": "/checkout",
        "timestamp": "2024-01-15T08:30:00.123Z",
        "timestamp_clamped": False,
        "received_at": a["received_at"],
        "duration": 1200,
        "metadata": {"amount": 150.0, "currency": "EUR"},
        "ip_address": "2001:db8::",  # canonical, then anonymised (privacy.ip)
        "user_agent": IPHONE_UA,
        "country": "DE",
        "device": "mobile",
        "browser": "Mobile Safari",
        "os": "iOS",
        "is_conversion": True,
        "revenue": 150.0,
        "revenue_cents": 15000,
        "is_high_value": True,
        "hour_of_day": 8,
        "day_of_week": "Monday",
    }
    b = values[assigned]
    assert before <= _parse(b["received_at"]) <= after
    received = _parse(b["received_at"])
    assert b == {
        "event_id": assigned,
        "user_id": f"user-{t}-b",
        "session_id": "",
        "action": "signup",
        "page": "",
        "timestamp": b["received_at"],  # absent: the time of ingestion
        "timestamp_clamped": False,
        "received_at": b["received_at"],
        "duration": 30_001,
        "metadata": {"amount": 500},
        "ip_address": None,
        "user_agent": None,
        "country": None,
        "device": "unknown",
        "browser": "unknown",
        "os": "unknown",
        "is_conversion": True,
        "revenue": 0.0,  # an amount counts as revenue only for a purchase
        "revenue_cents": 0,
        "is_high_value": True,  # duration > 30,000 ms
        "hour_of_day": received // 3_600_000 % 24,
        "day_of_week": datetime.fromtimestamp(received / 1000, UTC).strftime("%A"),
    }


def _parse(text: str) -> int:
    assert text.endswith("Z") and len(text) == 24, text
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def test_batch_accepts_valid_items_and_dead_letters_the_others(pipeline: Pipeline) -> None:
    t = tag()
    user = f"user-{t}"
    items: list[dict[str, Any]] = [
        {"event_id": f"b0-{t}", "user_id": user, "action": "click", "page": "/home"},
        {"event_id": f"b1-{t}", "user_id": user, "action": "click", "duration": "5"},
        {"user_id": user, "action": "page_view", "page": "/products/1"},
        {"event_id": f"b3-{t}", "user_id": user, "action": "click", "colour": "red"},
        {"event_id": f"b4-{t}", "user_id": user, "action": "page_view"},
    ]
    mark = await pipeline.mark()
    before = now_ms()
    status, body = await pipeline.post("/ingest/batch", orjson.dumps({"events": items}))
    after = now_ms()

    assert status == 202
    assert body["accepted"][0] == f"b0-{t}"
    assert len(body["accepted"]) == 2
    generated = body["accepted"][1]
    assert str(uuid.UUID(generated)) == generated
    assert [(r["index"], [e["field"] for e in r["errors"]]) for r in body["rejected"]] == [
        (1, ["duration"]),
        (3, ["colour"]),
        (4, ["page"]),
    ]

    out = await pipeline.settle(mark)

    values = {v["event_id"]: v for v in (assert_enriched_record(r) for r in out.enriched)}
    assert sorted(values) == sorted([f"b0-{t}", generated])
    assert values[generated]["page"] == "/products/1"
    assert values[f"b0-{t}"]["action"] == "click"
    assert len(out.dead) == 3
    dead = sorted((r.json() for r in out.dead), key=lambda v: v["batch_index"])
    for value, (index, fields) in zip(
        dead, [(1, ["duration"]), (3, ["colour"]), (4, ["page"])], strict=True
    ):
        assert value["source"] == "http-batch"
        assert value["batch_index"] == index
        assert [e["field"] for e in value["errors"]] == fields
        assert value["error"].startswith(f"{fields[0]}: ")
        assert value["raw_encoding"] == "utf-8"
        assert orjson.loads(value["raw"]) == items[index]
        assert iso(before) <= value["received_at"] <= iso(after)


async def test_bad_json_and_wrong_types_answer_400_and_are_dead_lettered(
    pipeline: Pipeline,
) -> None:
    t = tag()
    bad_json = b'{"user_id": "u-' + t.encode() + b'", '
    wrong_type = orjson.dumps({"user_id": 12345, "action": "click", "event_id": f"w-{t}"})
    bad_batch = orjson.dumps({"events": {"user_id": f"u-{t}"}})
    mark = await pipeline.mark()
    before = now_ms()
    answers = [
        await pipeline.post("/ingest", bad_json),
        await pipeline.post("/ingest", wrong_type),
        await pipeline.post("/ingest/batch", bad_batch),
    ]
    after = now_ms()

    assert [status for status, _ in answers] == [400, 400, 400]
    assert [[e["field"] for e in body["errors"]] for _, body in answers] == [
        ["body"],
        ["user_id"],
        ["events"],
    ]
    assert answers[1][1]["error"].startswith("user_id: must be a string")

    out = await pipeline.settle(mark)

    assert out.enriched == []
    assert len(out.dead) == 3
    dead = {r.json()["raw"]: r for r in out.dead}
    assert set(dead) == {bad_json.decode(), wrong_type.decode(), bad_batch.decode()}
    received = (before, after)
    assert_dead_letter(dead[bad_json.decode()], source="http", fields=["body"], received=received)
    assert_dead_letter(
        dead[wrong_type.decode()], source="http", fields=["user_id"], received=received
    )
    assert_dead_letter(
        dead[bad_batch.decode()], source="http-batch", fields=["events"], received=received
    )


def _oversized_bodies(t: str) -> tuple[bytes, bytes, bytes]:
    event = orjson.dumps(
        {"user_id": f"u-{t}", "action": "click", "metadata": {"blob": "x" * 70_000}}
    )
    item = {"user_id": f"u-{t}", "action": "click", "page": "/p" * 20}
    many = orjson.dumps({"events": [item] * 1001})
    huge = orjson.dumps({"events": [{"user_id": f"u-{t}", "action": "x" * 1_100_000}]})
    return event, many, huge


async def test_oversized_requests_answer_413_and_are_dead_lettered(pipeline: Pipeline) -> None:
    t = tag()
    event, many, huge = _oversized_bodies(t)
    mark = await pipeline.mark()
    before = now_ms()
    answers = [
        await pipeline.post("/ingest", event),
        await pipeline.post("/ingest/batch", many),
        await pipeline.post("/ingest/batch", huge),
    ]
    after = now_ms()

    assert [status for status, _ in answers] == [413, 413, 413]
    assert [[e["field"] for e in body["errors"]] for _, body in answers] == [
        ["body"],
        ["events"],
        ["body"],
    ]
    assert answers[1][1]["error"] == "events: 1001 events, over the limit of 1000"

    out = await pipeline.settle(mark)

    assert out.enriched == []
    received = (before, after)
    by_error = {r.json()["error"]: r for r in out.dead}
    assert len(by_error) == len(out.dead) == 3
    single = by_error[f"body: {len(event)} bytes, over the limit of 65536"]
    assert_dead_letter(single, source="http", fields=["body"], received=received)
    too_many = assert_dead_letter(
        by_error["events: 1001 events, over the limit of 1000"],
        source="http-batch",
        fields=["events"],
        received=received,
    )
    # The batch was read, so its raw payload is there, cut to 64 KiB.
    assert too_many["raw_truncated_from_bytes"] == len(many)
    assert many.decode().startswith(too_many["raw"])
    assert len(too_many["raw"]) == 64 * 1024
    too_big = by_error[f"body: {len(huge)} bytes, over the limit of 1048576"]
    assert_dead_letter(too_big, source="http-batch", fields=["body"], received=received)


async def test_oversized_bodies_keep_their_raw_payload_in_the_dlq(pipeline: Pipeline) -> None:
    t = tag()
    event, _, huge = _oversized_bodies(t)
    mark = await pipeline.mark()
    assert (await pipeline.post("/ingest", event))[0] == 413
    assert (await pipeline.post("/ingest/batch", huge))[0] == 413

    out = await pipeline.settle(mark)

    assert len(out.dead) == 2
    for record in out.dead:
        value = record.json()
        body = event if value["source"] == "http" else huge
        assert value["raw_truncated_from_bytes"] == len(body)
        assert value["raw"] and body.decode().startswith(value["raw"])


# --------------------------------------------------------------------------- topic


async def test_topic_events_are_enriched_and_rekeyed_by_user_id(pipeline: Pipeline) -> None:
    t = tag()
    users = [f"user-{t}-{n}" for n in range(5)]
    events = [
        {"event_id": f"k0-{t}", "user_id": users[0], "action": "page_view", "page": "/a"},
        {"user_id": users[1], "action": "click"},  # no event_id
        {"event_id": f"k2-{t}", "user_id": users[2], "action": "click"},  # key None
        {"event_id": f"k3-{t}", "user_id": users[3], "action": "click"},  # wrong key
        {"user_id": users[4], "action": "add_to_cart"},  # key None and no event_id
    ]
    keys = [users[0].encode(), users[1].encode(), None, b"someone-else", None]
    mark = await pipeline.mark()
    produced = await pipeline.produce(
        [(key, orjson.dumps(event)) for key, event in zip(keys, events, strict=True)]
    )

    out = await pipeline.settle(mark)

    assert out.dead == []
    by_user = {}
    for record in out.enriched:
        value = assert_enriched_record(record)
        assert value["user_id"] not in by_user, f"{value['user_id']} enriched twice"
        by_user[value["user_id"]] = value
    assert sorted(by_user) == users
    topic = pipeline.topics.user_events
    generated = [
        fallback_event_id(topic, produced[n].partition, produced[n].offset) for n in (1, 4)
    ]
    assert [by_user[u]["event_id"] for u in users] == [
        f"k0-{t}",
        generated[0],
        f"k2-{t}",
        f"k3-{t}",
        generated[1],
    ]
    for n, user in enumerate(users):
        value = by_user[user]
        assert value["action"] == events[n]["action"]
        # No timestamp given: the time of the first ingestion, also for a re-keyed event.
        assert value["timestamp"] == iso(produced[n].timestamp)
        assert value["timestamp_clamped"] is False
        if n in (0, 1):
            assert value["received_at"] == value["timestamp"]
        else:  # re-keyed: received again, later, under the right key
            assert value["received_at"] >= value["timestamp"]


async def test_repeated_event_id_is_enriched_once(pipeline: Pipeline) -> None:
    t = tag()
    user = f"user-{t}"
    event: dict[str, Any] = {"event_id": f"dup-{t}", "user_id": user, "action": "purchase"}
    event["metadata"] = {"amount": 20}
    other = {"event_id": f"other-{t}", "user_id": user, "action": "click"}
    payload = orjson.dumps(event)
    mark = await pipeline.mark()
    first = await pipeline.produce([(user.encode(), payload), (user.encode(), payload)])
    status, body = await pipeline.post("/ingest", payload)
    assert (status, body) == (202, {"event_id": f"dup-{t}"})
    await pipeline.produce([(user.encode(), orjson.dumps(other))])

    out = await pipeline.settle(mark)

    assert out.dead == []
    values = out.enriched_by_event_id()
    assert sorted(values) == sorted([f"dup-{t}", f"other-{t}"])
    assert values[f"dup-{t}"]["received_at"] == iso(first[0].timestamp)  # the first arrival
    assert values[f"dup-{t}"]["revenue"] == 20.0


async def test_malformed_topic_messages_are_dead_lettered_and_do_not_stop_the_agent(
    pipeline: Pipeline,
) -> None:
    t = tag()
    user = f"user-{t}"
    key = user.encode()
    wrong_type = orjson.dumps({"user_id": user, "action": "click", "duration": "5"})
    bad = [b"{not json", b"\xff\xfe", b"[1, 2]", wrong_type]
    valid = {"event_id": f"after-{t}", "user_id": user, "action": "click"}
    mark = await pipeline.mark()
    produced = await pipeline.produce([(key, value) for value in bad])
    produced_valid = await pipeline.produce([(key, orjson.dumps(valid))])

    out = await pipeline.settle(mark)

    assert list(out.enriched_by_event_id()) == [f"after-{t}"]
    assert out.enriched[0].partition == produced_valid[0].partition
    dead = sorted((r.json() for r in out.dead), key=lambda v: v["offset"])
    assert len(dead) == 4
    expected_raw = [
        ("{not json", "utf-8"),
        (base64.b64encode(b"\xff\xfe").decode(), "base64"),
        ("[1, 2]", "utf-8"),
        (wrong_type.decode(), "utf-8"),
    ]
    for value, where, raw, fields in zip(
        dead, produced, expected_raw, [["body"], ["body"], ["event"], ["duration"]], strict=True
    ):
        assert value["source"] == "topic"
        assert value["topic"] == pipeline.topics.user_events
        assert (value["partition"], value["offset"]) == (where.partition, where.offset)
        assert (value["raw"], value["raw_encoding"]) == raw
        assert [e["field"] for e in value["errors"]] == fields
        assert value["error"].startswith(f"{fields[0]}: ")
        assert value["received_at"] == iso(where.timestamp)


async def test_timestamps_absent_offsetless_and_far_future(pipeline: Pipeline) -> None:
    t = tag()
    user = f"user-{t}"
    key = user.encode()
    start = now_ms()
    far = start + 3_600_000
    near = start + 9 * 60_000 + 30_000  # under 10 minutes ahead of its (later) ingestion
    events = [
        {"event_id": f"none-{t}", "user_id": user, "action": "a"},
        {"event_id": f"far-{t}", "user_id": user, "action": "a", "timestamp": iso(far)},
        {"event_id": f"near-{t}", "user_id": user, "action": "a", "timestamp": iso(near)},
        {
            "event_id": f"utc-{t}",
            "user_id": user,
            "action": "a",
            "timestamp": "2024-01-15T10:30:00",
        },
    ]
    mark = await pipeline.mark()
    produced = await pipeline.produce([(key, orjson.dumps(event)) for event in events])
    ingested = [iso(p.timestamp) for p in produced]  # the message timestamps
    far_http = {"event_id": f"http-{t}", "user_id": user, "action": "a"}
    far_http["timestamp"] = "2999-01-01T00:00:00Z"
    before = now_ms()
    assert (await pipeline.post("/ingest", orjson.dumps(far_http)))[0] == 202
    after = now_ms()

    out = await pipeline.settle(mark)

    assert out.dead == []
    values = out.enriched_by_event_id()
    assert sorted(values) == sorted(
        f"{name}-{t}" for name in ("none", "far", "near", "utc", "http")
    )
    stamps = {
        event_id: (v["timestamp"], v["timestamp_clamped"], v["received_at"])
        for event_id, v in values.items()
    }
    assert stamps[f"none-{t}"] == (ingested[0], False, ingested[0])
    assert stamps[f"far-{t}"] == (ingested[1], True, ingested[1])
    assert stamps[f"near-{t}"] == (iso(near), False, ingested[2])
    assert stamps[f"utc-{t}"] == ("2024-01-15T10:30:00.000Z", False, ingested[3])
    assert values[f"utc-{t}"]["hour_of_day"] == 10
    http_received = values[f"http-{t}"]["received_at"]
    assert iso(before) <= http_received <= iso(after)
    assert stamps[f"http-{t}"] == (http_received, True, http_received)
