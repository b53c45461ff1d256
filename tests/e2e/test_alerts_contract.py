"""End to end (SPEC 10): traffic that makes a rule fire and resolve gives exactly one firing
and one resolution on ``kpi-alerts``, also with the worker killed -9 in between and
restarted; the webhook receives each (its first attempt refused, so it is retried), and
``GET /api/alerts`` shows the alert while it fires.

The rules: ``total_events >= 20`` for 2 windows, and the same on a custom KPI counting page
views (``custom.page_views``). Event time (1-minute windows, grace 10 s):
W0 5 events, W1 25, W2 25, then one event per partition at W3 + 11 s makes W0-W2 final: the
rules fire at W2. The worker is killed and restarted; then W3 25 more, W4 5, and one event per
partition at W5 + 11 s makes W3 and W4 final: they resolve at W4. Killed and restarted once
more, W6 and W7 with 25 each make them fire again at W7, and nothing before is repeated.
``idle_timeout`` is long, so event time moves only with these events. With two workers, the
first kill leaves the evaluation to the other one (no restart), the second kills and restarts it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from agents.alert_log import read_transitions
from analytics.alerts import Transition
from analytics.timeutil import format_ts, parse_ts
from tests.http_receiver import serving_posts
from tests.kafka_helpers import produce, security, sentinel_user_ids
from tests.polling import poll
from tests.worker_process import Services, Worker, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8
W = 60_000
START = parse_ts("2026-02-02T10:00:00Z")
RULES = [
    {"name": "busy", "metric": "total_events", "comparator": ">=", "threshold": 20, "for": 2},
    # the same on a custom KPI: the closing events are no page views
    {"name": "views", "metric": "custom.page_views", "comparator": ">=", "threshold": 20, "for": 2},
]
CUSTOM_KPIS = [{"name": "page_views", "count": {"action": "page_view"}}]


def expected(*steps: tuple[str, int, int]) -> list[tuple[str, str, int, float]]:
    """(state, window, value) steps, made by both rules (in their order) at each."""
    return [(str(r["name"]), s, START + w * W, v) for s, w, v in steps for r in RULES]


def events(window: int, count: int, tag: str) -> list[tuple[bytes | None, bytes]]:
    """``count`` page views in window ``window`` by a few users."""
    out: list[tuple[bytes | None, bytes]] = []
    for n in range(count):
        user = f"user-{tag}-{n % 7}"
        event = {
            "event_id": f"{tag}-{window}-{n}",
            "user_id": user,
            "action": "page_view",
            "page": "/home",
            "timestamp": format_ts(START + window * W + 1000 + n * 100),
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


def closing(window: int, tag: str) -> list[tuple[bytes | None, bytes]]:
    """One event per partition 11 s into ``window``: every earlier window becomes final."""
    out: list[tuple[bytes | None, bytes]] = []
    for user in sentinel_user_ids(PARTITIONS, tag).values():
        event = {
            "event_id": f"{user}-closing",
            "user_id": user,
            "action": "closing",
            "timestamp": format_ts(START + window * W + 11_000),
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


class Receiver:
    """A webhook receiver: refuses each transition's first attempt (503), counts the rest."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.bodies: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        self.attempts[key] += 1
        if self.attempts[key] == 1:
            return web.Response(status=503)
        self.accepted[key] += 1
        self.bodies[key] = await request.json()
        return web.Response(status=204)


async def committed(bootstrap: str, topic: str) -> list[Transition]:
    return await read_transitions({"bootstrap_servers": bootstrap, **security()}, topic)


async def wait_for(bootstrap: str, topic: str, count: int) -> list[Transition]:
    """The committed transitions once there are ``count`` (or more, which the caller sees)."""

    def read() -> list[Transition]:
        return asyncio.run(committed(bootstrap, topic))

    found: list[Transition] = await until(read, lambda f: len(f) >= count, 180, f"{count} alerts")
    return found


def alerts(worker: Worker) -> dict[str, Any]:
    with urllib.request.urlopen(worker.url + "/api/alerts", timeout=10) as answer:
        return dict(json.loads(answer.read()))


async def until(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """tests.polling.poll in a thread: this event loop serves the webhook receiver meanwhile."""
    return await asyncio.to_thread(poll, fetch, done, timeout, what)


def evaluating(pool: list[Worker]) -> Worker:
    """The worker evaluating the rules: the last alerts line of its log says so."""

    def owners() -> list[Worker]:
        found = []
        for worker in pool:
            lines = [line for line in worker.log_tail(2000).splitlines() if "evaluating" in line]
            if any("alerts: evaluating" in line for line in lines[-1:]):
                found.append(worker)
        return found

    found: list[Worker] = poll(owners, lambda f: len(f) == 1, 60, "one evaluating worker")
    return found[0]


async def killed_and_replaced(
    worker_factory: WorkerPool, pool: list[Worker], restart: bool
) -> list[Worker]:
    """Kill the evaluating worker with -9; start it again or let the others take over."""
    owner = evaluating(pool)
    owner.kill()
    pool = [worker for worker in pool if worker is not owner]
    if restart:
        pool.append(worker_factory.restart(owner))
    for worker in pool:
        await worker.await_ready(PARTITIONS, timeout=180)
    return pool


@pytest.mark.parametrize("workers", [1, 2])
async def test_rules_fire_and_resolve_once_across_kills(
    workers: int,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
) -> None:
    """One worker: killed and restarted twice. Two: the evaluating one killed, the other
    takes over; then that one killed and restarted."""
    hook = Receiver()
    async with serving_posts(hook.handle) as url:
        await fire_and_resolve(
            worker_factory, workers, services.kafka_bootstrap, topic_prefix, group_id, hook, url
        )


async def fire_and_resolve(
    worker_factory: WorkerPool,
    workers: int,
    bootstrap: str,
    topic_prefix: str,
    group_id: str,
    hook: Receiver,
    url: str,
) -> None:
    env = {
        "ANALYTICS__ALERTS__RULES": json.dumps(RULES),
        "ANALYTICS__CUSTOM_KPIS": json.dumps(CUSTOM_KPIS),
        "ANALYTICS__ALERTS__WEBHOOK__URL": url,
        "ANALYTICS__ALERTS__WEBHOOK__BACKOFF_INITIAL": "100ms",
        "ANALYTICS__ENGINE__IDLE_TIMEOUT": "1h",
    }
    pool = [worker_factory.start(topic_prefix, group_id, env) for _ in range(workers)]
    for worker in pool:
        await worker.await_ready(PARTITIONS, timeout=180)
    user_events, alert_topic = f"{topic_prefix}user-events", f"{topic_prefix}kpi-alerts"
    tag = uuid.uuid4().hex[:6]
    first = events(0, 5, tag) + events(1, 25, tag) + events(2, 25, tag)
    await produce(bootstrap, user_events, first + closing(3, tag + "a"))

    fired = await wait_for(bootstrap, alert_topic, 2)
    assert [(t.rule, t.state, t.window_start_ms, t.value) for t in fired] == expected(
        ("firing", 2, 25)
    )
    worker = pool[-1]  # any worker answers
    shown = await until(
        lambda: alerts(worker), lambda a: len(a["firing"]) == 2, 60, "GET /api/alerts firing"
    )
    assert shown["firing"] == [t.record() for t in fired]
    assert shown["rules"] == [{**rule, "threshold": 20.0} for rule in RULES]

    pool = await killed_and_replaced(worker_factory, pool, restart=workers == 1)
    worker = pool[-1]
    second = events(3, 25, tag + "b") + events(4, 5, tag + "b")
    await produce(bootstrap, user_events, second + closing(5, tag + "c"))

    both = await wait_for(bootstrap, alert_topic, 4)
    assert [(t.rule, t.state, t.window_start_ms, t.value) for t in both] == expected(
        ("firing", 2, 25), ("resolved", 4, 5)
    )
    resolved = await until(
        lambda: alerts(worker), lambda a: len(a["recent"]) == 4, 60, "resolution"
    )
    assert resolved["firing"] == []
    assert resolved["recent"] == [t.record() for t in reversed(both)]

    keys = {t.idempotency_key for t in both}
    await until(lambda: set(hook.accepted), lambda got: got == keys, 60, "webhook deliveries")
    assert all(hook.attempts[key] >= 2 for key in keys)  # the refused first attempt, retried
    assert {key: hook.bodies[key] for key in keys} == {t.idempotency_key: t.record() for t in both}
    # killed again: the restart reads the whole history again; nothing of it is published
    # twice, and the rules fire anew at W7 (W5 holds only the 8 closing events)
    pool = await killed_and_replaced(worker_factory, pool, restart=True)
    third = events(6, 25, tag + "d") + events(7, 25, tag + "d")
    await produce(bootstrap, user_events, third + closing(8, tag + "e"))
    everything = await wait_for(bootstrap, alert_topic, 6)
    assert [(t.rule, t.state, t.window_start_ms, t.value) for t in everything] == expected(
        ("firing", 2, 25), ("resolved", 4, 5), ("firing", 7, 25)
    )
