"""``DELETE /api/users/{user_id}`` on real workers, Kafka and PostgreSQL (analytics.erasure).

Two workers with database sinks take a user's events: one closed session (a row in
session_metrics) and one open session (in the partition state). The user is erased through
the worker that does NOT own the user's partition (the request is routed to the owner), and
then nothing of the user can be read: the web API answers 404 or nothing, session_metrics has
no row of the user (another user's row stays), the latest record of the user's key on every
topic keyed by user_id, and of every key naming the user on the state and dedup changelogs,
is a tombstone. A second DELETE answers with nothing removed. Last, both workers stop and a
new worker with an empty data directory restores the state from the changelogs: the user
stays gone, the other user is there.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from analytics.timeutil import format_ts, parse_ts
from app.settings import get_settings
from sinks.consumer import DeadLetterTopic, SinkConsumer
from sinks.migrations import MigrationOptions
from sinks.retry import RetryPolicy
from sinks.schema import SESSION_METRICS
from sinks.sink import SchemaGate, TableSink
from tests.databases import scratch_database
from tests.integration.test_api import http, ingest, user_path
from tests.kafka_helpers import (
    Outgoing,
    Record,
    partition_for,
    produce,
    read_to_end,
    sentinel_user_ids,
)
from tests.missing_services import service_missing
from tests.polling import poll
from tests.unit.test_sinks_schema import session_record
from tests.worker_process import Services, Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
MINUTE = 60_000
HOUR = 60 * MINUTE
START = parse_ts("2025-05-05T10:00:00Z")
ADMIN_TOKEN = "erasure-admin-token-" + uuid.uuid4().hex


def ts(offset_ms: int) -> str:
    return format_ts(START + offset_ms)


def call(worker: Worker, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(worker.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def owned_partitions(worker: Worker) -> set[int]:
    health = worker.health()
    assert health is not None and health[0] == 200, health
    return set(health[1]["worker"]["user_events_partitions"])


def sessions_of(database: str, user_id: str) -> list[str]:
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT session_id FROM session_metrics WHERE user_id = %s ORDER BY window_start",
            (user_id,),
        ).fetchall()
    return [row[0] for row in rows]


def rows_of(database: str, user_id: str) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM session_metrics WHERE user_id = %s", (user_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def latest_by_key(records: list[Record]) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.key is not None:
            latest[record.key] = record.value
    return latest


def topic_names(bootstrap: str, marker: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(t for t in admin.list_topics(timeout=30).topics if marker in t)


def events(user: str, offsets_ms: list[int], tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{tag}-{user}-{n}",
            "user_id": user,
            "action": "page_view",
            "page": f"/p{n}",
            "timestamp": ts(at),
            "duration": 500,
        }
        for n, at in enumerate(offsets_ms)
    ]


@pytest.fixture
def database(services: Services) -> Iterator[str]:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    with scratch_database(services.database_url, "erasure") as url:
        yield url


async def test_the_session_sink_deletes_in_offset_order(
    services: Services, topic_prefix: str, database: str
) -> None:
    """The race of sinks/erasure.py: a session closed just before the erasure (its record
    before the tombstone, here in the same batch) is deleted with the user's other rows, and
    the session of the user back after the erasure (a new user) is kept."""
    topic = topic_prefix + "session-metrics"
    user = f"race-{uuid.uuid4().hex[:8]}"
    before = {**session_record(), "user_id": user}
    back = {**before, "session_id": "back", "window_start": ts(HOUR), "window_end": ts(HOUR)}
    key = user.encode()
    messages = [Outgoing(key, orjson.dumps(before)), Outgoing(key, None)]
    admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
    for created in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        created.result(30)
    await produce(services.kafka_bootstrap, topic, [*messages, Outgoing(key, orjson.dumps(back))])
    letters: list[Any] = []

    async def publish(records: list[Any]) -> int:
        letters.extend(records)
        return len(records)

    schema = SchemaGate(database, MigrationOptions())
    await schema.at_startup(timedelta(seconds=30))
    writer = TableSink(SESSION_METRICS, topic, database, schema, RetryPolicy())
    sink = SinkConsumer(
        SESSION_METRICS,
        topic,
        writer,
        f"{topic}-sink",
        get_settings(),
        DeadLetterTopic(topic + "-dlq", publish),
        eraser=writer,
    )
    running = asyncio.ensure_future(sink.run())
    try:
        deadline = time.monotonic() + 60
        while (found := sessions_of(database, user)) != ["back"]:
            assert time.monotonic() < deadline, f"the user's rows: {found}"
            assert not running.done(), running
            await asyncio.sleep(0.2)  # polling interval, bounded by the deadline
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await writer.close()
    assert letters == []


def test_an_erased_user_cannot_be_read_anywhere_afterwards(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str, database: str
) -> None:
    bootstrap = worker_factory.services.kafka_bootstrap
    env = {"DATABASE_URL": database, "ANALYTICS__ACCESS__ADMIN_TOKEN": ADMIN_TOKEN}
    workers = [worker_factory(topic_prefix, group_id, env) for _ in range(2)]
    for worker in workers:
        worker.wait_ready(PARTITIONS, timeout=120)
    owned = [owned_partitions(worker) for worker in workers]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    t = uuid.uuid4().hex[:8]
    candidates = [f"erased {t} ü/{n:02d}" for n in range(64)]  # none inside another
    user = next(u for u in candidates if partition_for(u.encode(), PARTITIONS) in owned[1])
    partition = partition_for(user.encode(), PARTITIONS)
    other = next(  # on the same partition: its keys share the changelog partitions
        u for u in candidates if u != user and partition_for(u.encode(), PARTITIONS) == partition
    )

    # a closed session (its row in session_metrics) for both users, then an open one for the
    # user: events 40 minutes later on every partition move the watermark past the first
    ingest(workers[0], events(user, [0, 1000], "a") + events(other, [0, 2000], "a"))
    later = [
        {"event_id": f"later-{t}-{p}", "user_id": u, "action": "tick", "timestamp": ts(40 * MINUTE)}
        for p, u in sorted(sentinel_user_ids(PARTITIONS, t).items())
    ]
    ingest(workers[0], later + events(user, [41 * MINUTE], "b"))
    poll(
        lambda: (rows_of(database, user), rows_of(database, other)),
        lambda n: n == (1, 1),
        90,
        "the first sessions in session_metrics",
    )
    poll(
        lambda: http(workers[0], user_path("sessions", user)),
        lambda answer: (
            answer[0] == 200 and len(answer[1]["sessions"]) == len(answer[1]["recent"]) == 1
        ),
        60,
        "the open session",
    )

    # only the admin token may erase
    path = user_path("users", user)
    assert call(workers[0], "DELETE", path)[0] == 401
    status, body = call(workers[0], "DELETE", path, ADMIN_TOKEN)  # routed to workers[1]
    assert status == 200, body
    assert body["removed"]["profile"] is True and body["removed"]["events"] == 3
    assert body["removed"]["open_sessions"] == 1 and body["removed"]["dedup_records"] == 3

    # the web API
    for worker in workers:
        assert http(worker, user_path("users", user))[0] == 404
        assert http(worker, user_path("sessions", user))[0] == 404
        assert http(worker, user_path("users", other))[0] == 200
    history = "/api/sessions?" + urllib.parse.urlencode({"user_id": user})
    poll(
        lambda: http(workers[0], history),
        lambda a: a[0] == 200 and a[1]["sessions"] == [],
        60,
        "no closed session of the user in the history API",
    )
    # the database: the user's row deleted by the session sink, the other user's kept
    assert rows_of(database, user) == 0 and rows_of(database, other) == 1

    # the keyed topics: the latest record of the user's key is a tombstone
    key = user.encode()
    for name in ("user-events", "user-behavior-enriched", "session-metrics"):
        records = asyncio.run(read_to_end(bootstrap, topic_prefix + name))
        latest = latest_by_key(records)
        assert key in latest and latest[key] is None, name
        assert latest[other.encode()] is not None, name
    # the changelogs: every key naming the user ends with a tombstone
    changelogs = [n for n in topic_names(bootstrap, group_id) if n.endswith("-changelog")]
    named = {n for n in changelogs if "partition-state" in n or "seen-event-ids" in n}
    assert len(named) == 2, changelogs
    for name in named:
        latest = latest_by_key(asyncio.run(read_to_end(bootstrap, name)))
        mine = {k: v for k, v in latest.items() if key in k}
        assert mine and all(v is None for v in mine.values()), (name, mine)
        assert any(other.encode() in k and v is not None for k, v in latest.items()), name

    # idempotent: a second erasure removes nothing and says so
    status, again = call(workers[1], "DELETE", path, ADMIN_TOKEN)
    assert status == 200 and again["removed"] == {
        "profile": False,
        "events": 0,
        "open_sessions": 0,
        "state_keys": 0,
        "dedup_records": 0,
    }

    # a worker that restores everything from the changelogs does not bring the user back
    for worker in workers:
        worker.stop()
    fresh = worker_factory(topic_prefix, group_id, env)
    fresh.wait_ready(PARTITIONS, timeout=120)
    poll(
        lambda: http(fresh, user_path("users", other)),
        lambda a: a[0] == 200,
        60,
        "the other user restored",
    )
    assert http(fresh, user_path("users", user))[0] == 404
    assert rows_of(database, user) == 0
