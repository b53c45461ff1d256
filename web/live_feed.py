"""The dashboard's live data: one Kafka consumer of ``live-kpis`` per worker, fanned out to
every open dashboard (web/dashboard.py) as Server-Sent Events frames.

Why a consumer of its own, outside any consumer group: every worker serves the page, so every
worker needs every window, while the worker's Faust consumer holds only its share of the
partitions. The feed assigns itself all partitions of ``live-kpis`` from their end and commits
nothing. It starts with the first subscriber (workers nobody looks at never open it) and runs
until the worker stops; one consumer per worker however many browsers are open, and each
browser gets frames pushed, so nothing polls.

What came before the consumer started, and the breakdowns (top pages, devices, countries),
come from the worker's own query API (web/api.py, which forwards to the worker holding the
history), so the page shows exactly the figures the API answers. Breakdowns only change when a
window becomes final: the feed fetches them once per final window, for all its subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from analytics import wide_json
from analytics.timeutil import format_ts, parse_ts
from app import app, faust_compat
from app.kafka_security import aiokafka_kwargs
from app.web_tls import own_server_client_context

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HISTORY_MINUTES = 60  # the charts' span, and the minutes of the top pages and breakdowns
TOP_PAGES = 10
BREAKDOWN_DIMENSIONS = ("device", "country")
#: frames a subscriber may have waiting; a browser that falls this far behind is dropped and
#: its EventSource reconnects to a fresh snapshot instead of growing the worker's memory
QUEUE_LIMIT = 512
KEEPALIVE_S = 15.0  # a comment frame this often finds closed connections and keeps proxies open
RETRY_S = 2.0  # pause before reconnecting to Kafka or asking the API again
COVERAGE_ATTEMPTS = 10  # the history may be written a moment after the record is published
COVERAGE_PAUSE_S = 0.5
KEEPALIVE = b": keepalive\n\n"

Record = dict[str, Any]


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Events frame; orjson writes no newline, so one ``data:`` line does."""
    return b"event: " + event.encode() + b"\ndata: " + wide_json.dumps(data) + b"\n\n"


def window_start(record: Record) -> int:
    return parse_ts(record["window_start"])


def _rank(record: Record) -> tuple[int, bool]:
    """The order in which records replace the current one: the API's rule (newer_live)."""
    return window_start(record), bool(record["is_final"])


@dataclass
class DashboardState:
    """What a new dashboard is shown first: the newest KPI record (as ``/api/kpis/current``),
    the windows of the last hour before it, and the latest breakdowns."""

    history_ms: int
    custom_kpis: dict[str, str] = field(default_factory=dict)
    """The custom KPIs' names and kinds (analytics.custom_kpis.CustomKpis.kinds)."""
    windows: dict[int, Record] = field(default_factory=dict)
    current: Record | None = None
    breakdowns: dict[str, Any] | None = None

    def apply(self, record: Record, *, if_absent: bool = False) -> bool:
        """Take a KPI record; True when it changed something. A window's final record is never
        replaced by a live one (a re-delivered batch may show a window open again);
        ``if_absent`` (records read from the API) never replaces anything the stream gave."""
        start = window_start(record)
        stored = self.windows.get(start)
        if stored is not None and (if_absent or (stored["is_final"] and not record["is_final"])):
            return False
        if self.current is not None and start <= window_start(self.current) - self.history_ms:
            return False
        self.windows[start] = record
        if self.current is None or _rank(record) >= _rank(self.current):
            self.current = record
        cutoff = window_start(self.current) - self.history_ms
        for old in [s for s in self.windows if s <= cutoff]:
            del self.windows[old]
        return True

    def newest_final(self) -> int | None:
        finals = [start for start, record in self.windows.items() if record["is_final"]]
        return max(finals) if finals else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "windows": [self.windows[start] for start in sorted(self.windows)],
            "breakdowns": self.breakdowns,
            "custom_kpis": self.custom_kpis,
        }


class Subscription:
    """One open dashboard: the frames waiting for it; ``None`` ends its stream."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.closed = False
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self.limit:
            log.info("dashboard subscriber %d frames behind; dropping it", self.limit)
            self.close()
            return
        self._queue.put_nowait(frame)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def next(self, keepalive_s: float = KEEPALIVE_S) -> bytes | None:
        """The next frame, a keep-alive comment after ``keepalive_s`` of silence, or None."""
        try:
            return await asyncio.wait_for(self._queue.get(), keepalive_s)
        except TimeoutError:
            return KEEPALIVE


class ApiUnavailable(RuntimeError):
    """The worker's own API did not answer 200 (starting, rebalancing)."""


class LiveFeed:
    """The per-worker consumer of ``live-kpis`` and its subscribers."""

    def __init__(
        self,
        topic: str,
        kafka: Mapping[str, Any],
        api_url: Callable[[], str],
        client_id: str,
        history_minutes: int = HISTORY_MINUTES,
        api_tls: ssl.SSLContext | None = None,
        api_headers: Mapping[str, str] | None = None,
        custom_kpis: Mapping[str, str] | None = None,
    ) -> None:
        """``kafka``: the consumer's connection options (app.kafka_security.aiokafka_kwargs);
        ``api_tls``: the client context for an ``https`` ``api_url``; ``api_headers``: sent
        with every API request (the read token, when access control asks for one);
        ``custom_kpis``: the custom KPIs' kinds by name, for the dashboard's tiles."""
        self.topic = topic
        self.kafka = dict(kafka)
        self.api_url = api_url
        self.api_tls = api_tls
        self.api_headers = dict(api_headers or {})
        self.client_id = client_id
        self.history_minutes = history_minutes
        self.state = DashboardState(history_minutes * MINUTE_MS, dict(custom_kpis or {}))
        self.consumers_started = 0  # for the tests: one per worker, whatever the browsers
        self._subscribers: set[Subscription] = set()
        self._wanted = asyncio.Event()
        self._breakdowns_for: int | None = None  # newest final window the breakdowns cover
        self._breakdowns_wanted: int | None = None
        self._refresher: asyncio.Future[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ subscribers

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A new subscriber, its first frame the current snapshot; starts the feed."""
        subscription = Subscription()
        subscription.push(sse("snapshot", self.state.snapshot()))
        self._subscribers.add(subscription)
        self._wanted.set()
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def broadcast(self, frame: bytes) -> None:
        for subscription in list(self._subscribers):
            subscription.push(frame)

    def close_subscribers(self) -> None:
        """End every open stream (worker shutdown): the web server need not wait for them."""
        for subscription in list(self._subscribers):
            subscription.close()

    # ------------------------------------------------------------------ the consumer

    async def run(self) -> None:
        """Wait for the first subscriber, then follow the topic until cancelled."""
        await self._wanted.wait()
        try:
            while True:
                try:
                    await self._follow()
                except (KafkaError, OSError, aiohttp.ClientError) as exc:
                    log.warning("dashboard feed: %r; reconnecting in %.0f s", exc, RETRY_S)
                    await asyncio.sleep(RETRY_S)
                except Exception:  # the dashboard must never stop the worker
                    log.exception("dashboard feed failed; restarting in %.0f s", RETRY_S)
                    await asyncio.sleep(RETRY_S)
        finally:
            self.close_subscribers()

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka,
            group_id=None,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        self.consumers_started += 1
        log.info("dashboard feed: following %s (consumer %d)", self.topic, self.consumers_started)
        self._http = aiohttp.ClientSession(
            headers=self.api_headers,
            timeout=aiohttp.ClientTimeout(total=15),
            connector=aiohttp.TCPConnector(ssl=self.api_tls if self.api_tls else True),
        )
        primer: asyncio.Future[None] | None = None
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)  # from here on; the API has what came before
            primer = asyncio.ensure_future(self._prime())
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                self.take([record.value for records in batches.values() for record in records])
        finally:
            for task in (primer, self._refresher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await self._http.close()
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """The topic's partitions, once it exists (the worker creates it at its first start)."""
        while True:
            await faust_compat.refresh_consumer_metadata(consumer)
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return [TopicPartition(self.topic, p) for p in sorted(partitions)]
            await asyncio.sleep(RETRY_S)

    def take(self, values: Sequence[bytes | None]) -> None:
        """Apply consumed records; send each changed window once (its newest record)."""
        changed: set[int] = set()
        newest_final: int | None = None
        for value in values:
            try:
                record = wide_json.loads(value or b"")
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "window_start" not in record:
                continue
            if self.state.apply(record):
                start = window_start(record)
                changed.add(start)
                if record["is_final"]:
                    newest_final = max(start, newest_final or start)
        for start in sorted(changed):
            if start in self.state.windows:
                self.broadcast(sse("kpi", self.state.windows[start]))
        if newest_final is not None:
            self._want_breakdowns(newest_final)

    # ------------------------------------------------------------------ the API

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        assert self._http is not None
        async with self._http.get(self.api_url() + path, params=params) as response:
            if response.status != 200:
                raise ApiUnavailable(f"GET {path} -> {response.status}")
            return await response.json(loads=wide_json.loads)

    async def _prime(self) -> None:
        """The state before the consumer's start, from the API; retried until it answers."""
        while True:
            try:
                current = (await self._get("/api/kpis/current"))["kpi"]
                if current is not None:
                    since = window_start(current) - self.history_minutes * MINUTE_MS
                    body = await self._get("/api/kpis", {"from": format_ts(since)})
                    for record in [*body["windows"], current]:
                        self.state.apply(record, if_absent=True)
                await self._fetch_breakdowns(None)
            except (ApiUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                log.debug("dashboard feed: API not ready (%r)", exc)
                await asyncio.sleep(RETRY_S)
                continue
            self.broadcast(sse("snapshot", self.state.snapshot()))
            return

    def _want_breakdowns(self, final_start: int) -> None:
        if self._breakdowns_for is not None and final_start <= self._breakdowns_for:
            return
        self._breakdowns_wanted = max(final_start, self._breakdowns_wanted or final_start)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh_breakdowns())

    async def _refresh_breakdowns(self) -> None:
        """Fetch the breakdowns for the newest final window seen, once per window however many
        finals arrive meanwhile, and send them to every subscriber."""
        while self._breakdowns_wanted is not None:
            target, self._breakdowns_wanted = self._breakdowns_wanted, None
            try:
                await self._fetch_breakdowns(target)
            except (ApiUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                log.info("dashboard feed: breakdowns not fetched (%r)", exc)
                continue
            self.broadcast(sse("breakdowns", self.state.breakdowns))

    async def _fetch_breakdowns(self, target: int | None) -> None:
        """Top pages and traffic of the last hour, as the API answers them; with ``target``,
        asked again (briefly) until they cover that final window."""
        minutes = str(self.history_minutes)
        wanted = format_ts(target) if target is not None else None
        for _attempt in range(COVERAGE_ATTEMPTS):
            pages = await self._get("/api/pages/top", {"minutes": minutes, "limit": str(TOP_PAGES)})
            if wanted is None or wanted in pages["windows"]:
                break
            await asyncio.sleep(COVERAGE_PAUSE_S)
        breakdowns: dict[str, Any] = {"pages": pages}
        for dimension in BREAKDOWN_DIMENSIONS:
            params = {"dimension": dimension, "minutes": minutes}
            breakdowns[dimension] = await self._get("/api/traffic", params)
        self.state.breakdowns = breakdowns
        newest = self.state.newest_final()
        covered = target if target is not None else newest
        if covered is not None:
            self._breakdowns_for = max(covered, self._breakdowns_for or covered)


def _own_api_url() -> str:
    """This worker's web server, as the feed reaches it (a wildcard bind means loopback)."""
    host = app.conf.web_bind or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{app.analytics_settings.sources.http.scheme}://{host}:{app.conf.web_port}"


def _own_api_headers() -> dict[str, str]:
    """The read token (or, without one, the admin token) for the feed's own API calls."""
    access = app.analytics_settings.access
    token = access.read_token or access.admin_token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


feed = LiveFeed(
    app.topic_names.live_kpis,
    aiokafka_kwargs(app.analytics_settings),
    _own_api_url,
    client_id=f"{app.conf.id}-dashboard",
    api_tls=own_server_client_context(app.analytics_settings.sources.http),
    api_headers=_own_api_headers(),
    custom_kpis=app.analytics_settings.custom_kpis.kinds(),
)


@app.task  # type: ignore[untyped-decorator]
async def run_live_feed() -> None:
    """The feed waits for its first subscriber; cancelled (and closed) at worker shutdown."""
    await feed.run()
