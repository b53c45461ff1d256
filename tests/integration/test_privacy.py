"""SPEC 10 end to end: no full ``ip_address`` reaches a topic, a table or the worker's log.

Distinctive addresses go in through every door: ``POST /ingest`` and ``/ingest/batch`` (valid
events, events invalid for another reason, an invalid address) and straight into
``user-events`` (valid, invalid, and a message keyed wrongly, which the tracker re-keys).
Once the pipeline has written its rows, every record of every topic of the test (its prefix
and its Faust app id), every row of every table of its database, the worker's whole log (at
debug level), what ``faust -A app tail user-events`` prints and the web API's answers about
the test's users are searched. The one place a full address may sit is ``user-events``
itself, in exactly the messages the test produced there: that topic holds what producers
write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from analytics.timeutil import format_ts
from tests.databases import fresh_database
from tests.kafka_helpers import (
    Record,
    closing_messages,
    produce,
    read_to_end,
    read_until,
    security,
)
from tests.missing_services import service_missing
from tests.worker_process import Services, WorkerPool, faust_command

pytestmark = pytest.mark.integration

PARTITIONS = 8
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CLOSING_TS = START_MS + 2 * 86_400_000

#: sent over HTTP: may appear nowhere
HTTP_FULL = {
    "198.51.100.173": "198.51.100.0",
    "2001:db8:7a3c:4e91:5d2f:1b6a:9c8e:3f70": "2001:db8:7a3c::",
    "203.0.113.211": "203.0.113.0",  # in an event invalid for another reason
    "2001:db8:6b2d:11:22:33:44:55": "2001:db8:6b2d::",  # the same, IPv6
}
HTTP_INVALID = "203.0.113.099"  # leading zero: not an address (SPEC 1); still not shown
#: produced to user-events by the test: may appear there only, in the test's own messages
TOPIC_FULL = {
    "192.0.2.147": "192.0.2.0",
    "2001:db8:5e5e:abcd:1:2:3:4": "2001:db8:5e5e::",
    "192.0.2.201": "192.0.2.0",  # keyed wrongly: re-keyed by the tracker
    "192.0.2.233": "192.0.2.0",  # invalid event
}


def event(n: int, ip: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"privacy-{n}",
        "user_id": f"privacy-user-{n}",
        "action": "page_view",
        "page": "/products",
        "timestamp": format_ts(START_MS + n * 1000),
        "ip_address": ip,
        **fields,
    }


async def post(url: str, body: Any) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(body)) as response,
    ):
        return response.status


async def get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def all_topics(bootstrap: str, prefixes: tuple[str, ...]) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security())
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefixes))
    finally:
        await admin.close()


async def table_dumps(url: str) -> dict[str, str]:
    """Every table of the database's public schema, every row as text."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        names = await conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        dumps = {}
        for (name,) in await names.fetchall():
            rows = await conn.execute(f'SELECT t::text FROM "{name}" t'.encode())
            dumps[name] = "\n".join(row[0] for row in await rows.fetchall())
        return dumps


def holding(records: list[Record], text: str) -> list[Record]:
    needle = text.encode()
    return [r for r in records if needle in (r.value or b"") or needle in (r.key or b"")]


async def test_no_full_address_reaches_a_topic_table_or_log(
    services: Services, worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    bootstrap = services.kafka_bootstrap
    async with fresh_database(services.database_url, "privacy") as database:
        worker = worker_factory.start(
            topic_prefix, group_id, {"DATABASE_URL": database}, log_level="debug"
        )
        await worker.await_ready(PARTITIONS, timeout=120)
        v4, v6, bad4, bad6 = HTTP_FULL
        assert await post(worker.url + "/ingest", event(1, v4)) == 202
        assert await post(worker.url + "/ingest", event(2, v6, action="BAD")) == 400
        batch = {"events": [event(3, v6), event(4, bad4, duration=-1), event(5, bad6, x=1)]}
        assert await post(worker.url + "/ingest/batch", batch) == 202
        assert await post(worker.url + "/ingest", event(6, HTTP_INVALID)) == 400

        t4, t6, rekeyed, bad_topic = TOPIC_FULL
        own = [event(7, t4), event(8, t6), event(9, rekeyed), event(10, bad_topic, action="")]
        keys = [b"privacy-user-7", b"privacy-user-8", b"someone-else", b"privacy-user-10"]
        messages: list[tuple[bytes | None, bytes]] = [
            (key, orjson.dumps(e)) for key, e in zip(keys, own, strict=True)
        ]
        user_events = f"{topic_prefix}user-events"
        await produce(bootstrap, user_events, messages)
        await produce(bootstrap, user_events, closing_messages(PARTITIONS, CLOSING_TS))

        # the re-keyed event 9 comes back after the closing events: late, in no session
        users = {f"privacy-user-{n}" for n in (1, 3, 7, 8)}
        await read_until(
            bootstrap,
            f"{topic_prefix}session-metrics",
            lambda records: {r.key.decode() for r in records if r.key} >= users,
            timeout=180,
        )
        dead = await read_until(
            bootstrap, f"{topic_prefix}user-events-dlq", lambda records: len(records) >= 5, 60
        )
        deadline = time.monotonic() + 60
        while True:  # until the session sink has written the traffic's sessions
            dumps = await table_dumps(database)
            if sum(user in dumps.get("session_metrics", "") for user in users) == len(users):
                break
            assert time.monotonic() < deadline, "the sessions never reached the database"
            await asyncio.sleep(0.5)  # polling interval, bounded by the deadline

        topics = await all_topics(bootstrap, (topic_prefix, group_id))
        assert f"{topic_prefix}user-behavior-enriched" in topics
        assert any("changelog" in t for t in topics), topics
        records = {t: await read_to_end(bootstrap, t) for t in topics}
        tail = faust_command(
            ["tail", "user-events", "--last", "100"], services, topic_prefix, group_id
        )
        assert tail.returncode == 0, tail.stderr
        assert TOPIC_FULL[t4] in tail.stdout  # the topic holds the full one: tail cuts it
        answers = [
            await get(worker.url + f"/api/{what}/privacy-user-{n}")
            for what in ("users", "sessions")
            for n in (1, 3, 7, 8)
        ]
        log = worker.log_path.read_text(errors="replace")

        # not vacuous: the anonymised forms are there, the invalid ones dead-lettered
        enriched = [r.json() for r in records[f"{topic_prefix}user-behavior-enriched"]]
        by_id = {e["event_id"]: e["ip_address"] for e in enriched}
        assert by_id["privacy-1"] == HTTP_FULL[v4]
        assert by_id["privacy-3"] == HTTP_FULL[v6]
        assert by_id["privacy-7"] == TOPIC_FULL[t4]
        assert by_id["privacy-8"] == TOPIC_FULL[t6]
        assert by_id["privacy-9"] == TOPIC_FULL[rekeyed]
        assert not {"privacy-2", "privacy-4", "privacy-5", "privacy-6", "privacy-10"} & set(by_id)
        raws = {r.json()["raw"] for r in dead}
        for n, anonymised in [
            (2, "2001:db8:7a3c::"),
            (4, "203.0.113.0"),
            (5, "2001:db8:6b2d::"),
            (6, "203.0.113.0"),  # the invalid address, cut like a valid one
            (10, "192.0.2.0"),
        ]:
            (raw,) = [raw for raw in raws if f'"privacy-{n}"' in raw]
            assert f'"ip_address":"{anonymised}"' in raw, raw

        for full in [*HTTP_FULL, HTTP_INVALID, *TOPIC_FULL]:
            assert full not in log, f"{full} in the worker log"
            assert full not in tail.stdout + tail.stderr, f"{full} printed by faust tail"
            assert not [a for a in answers if full in a], f"{full} in a web API answer"
            for table, dump in dumps.items():
                assert full not in dump, f"{full} in table {table}"
            for topic, found in records.items():
                hits = holding(found, full)
                if topic == user_events and full in TOPIC_FULL:
                    assert len(hits) == 1, (full, hits)  # the test's own message, only
                else:
                    assert not hits, f"{full} in {topic}: {hits[:3]}"
