"""Soak under faults (issue 11, item 1): workers under steady traffic while a seeded script
breaks things, then every figure checked against the batch reference.

2-3 workers (static group members, as README "Scaling" advises) on a Kafka broker and a
PostgreSQL cluster of the soak's own, which it stops and starts. HTTP clients post single
events to one worker (moving to the next when it stops answering) and a librdkafka producer
writes events straight to ``user-events``, half the rate each; about 1 % of the events are
deliberately invalid. Meanwhile, in an order drawn from ``--seed``: ``kill -9`` of a worker and
its restart (``--kills`` times), SIGTERM to the worker serving HTTP and its restart, the broker
stopped for ``--broker-down`` s, PostgreSQL stopped for ``--database-down`` s. Each fault waits
until the pipeline has recovered from the one before.

What counts. An event is *accepted* when its answer was 202 or the broker acknowledged the
direct produce; *refused* when it was answered 503 ``"stored": "no"`` or the connection was
refused: it must not appear; *unknown* otherwise (503 ``"unknown"``, a worker gone
mid-request, a direct produce that failed, which librdkafka may have written): at most once.
*Rejected* events (the invalid ones answered 400 or acknowledged on the topic) must each be
on ``user-events-dlq`` once. Event time is the wall clock 2 h ago, stamped by the client,
so an outage leaves no event late (nothing waits in a buffer past ``message.timeout.ms``).

At the end one closing event per partition moves event time past the traffic; the soak waits
until the last traffic window is final, then compares: final KPI windows, sessions, page and
traffic figures against tests/reference/batch.py computed from the enriched events; each
accepted event in ``user-behavior-enriched`` (copies of one event_id there are the
at-least-once re-deliveries of docs/reliability.md, reported, not failed); the tables against
the topics; the DLQ against the rejected events. It prints a table per fault (count, recovery
time, events lost, events doubled) and exits 1 on any mismatch.

Recovery time of a fault: from the fault (for an outage, from the service's return) until
every partition has processed an event created after it, HTTP answers 202 again (broker,
SIGTERM) and the sinks write again (database); at least as long as any event created between
the fault and the group being stable again waited to be processed. Events lost or doubled are
counted on the exact outputs (the events of accepted answers, final KPI windows' event counts,
the dead letters) and put down to the fault whose time they fall in.

    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 10 --workers 3 --kills 10 --seed 11

tests/e2e/test_soak_short.py runs the same scenario scaled down in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Message,
    Producer,
    TopicPartition,
)

from analytics.timeutil import format_ts, parse_ts
from bench.workload import Workload, events
from sinks.health import DEGRADED
from sinks.schema import TABLES
from tests import contract
from tests.kafka_helpers import SENTINEL_PREFIX, TopicReader, closing_messages
from tests.own_kafka import OwnBroker, own_broker
from tests.polling import poll
from tests.reference import batch as reference
from tests.scratch_postgres import ScratchPostgres, scratch_postgres
from tests.sink_tables import SINK_TOPICS, differences, latest_rows, table_rows
from tests.worker_process import Services, Worker, WorkerPool, new_group_id, new_topic_prefix

PARTITIONS = 8
WINDOW_MS = 60_000
GAP_MS = 1_800_000
#: event time is the wall clock this long ago: closing events (gap + 10 windows after the
#: traffic) stay in the past, away from the future-clamp
OFFSET_MS = 2 * 3600 * 1000
HTTP_CLIENTS = 2
HTTP_TIMEOUT_S = 15
MESSAGE_TIMEOUT_MS = 5_000  # a direct event not persisted by then is dropped by librdkafka
RECOVERY_TIMEOUT_S = 240
DRAIN_TIMEOUT_S = 300

KILL = "kill -9 a worker, restart it"
SIGTERM = "SIGTERM to the HTTP worker, restart it"
BROKER = "Kafka broker stopped, started"
DATABASE = "PostgreSQL stopped, started"
NONE = "no fault"
FAULT_ORDER = (KILL, SIGTERM, BROKER, DATABASE)

ACCEPTED, REFUSED, UNKNOWN = "accepted", "refused", "unknown"

log = logging.getLogger("soak")


@dataclass(frozen=True)
class Plan:
    """What to run. ``seconds``: the traffic lasts at least this long (longer when the faults
    and their recoveries need more)."""

    seconds: float = 600
    workers: int = 3
    seed: int = 11
    kills: int = 10
    sigterms: int = 1
    broker_outages: int = 1
    broker_down_s: float = 30
    database_outages: int = 1
    database_down_s: float = 60
    rate: float = 60  # events/s in all, half over HTTP, half produced directly
    invalid_share: float = 0.01
    users: int = 300

    def faults(self) -> list[str]:
        """Every fault once per count, in the seeded order."""
        faults = (
            [KILL] * self.kills
            + [SIGTERM] * self.sigterms
            + [BROKER] * self.broker_outages
            + [DATABASE] * self.database_outages
        )
        random.Random(self.seed).shuffle(faults)
        return faults


# --------------------------------------------------------------------------- traffic


@dataclass(slots=True)
class Sent:
    """One event sent and what became of it."""

    event_id: str
    source: str  # "http" or "direct"
    created_ms: int  # wall clock
    valid: bool
    outcome: str = UNKNOWN  # ACCEPTED, REFUSED or UNKNOWN


class Ledger:
    """Every event sent, and when HTTP last answered 202 (thread-safe)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.http_202_ms: list[int] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def add(self, sent: Sent) -> None:
        with self._lock:
            self.sent.append(sent)

    def answered_202(self, at_ms: int) -> None:
        with self._lock:
            self.http_202_ms.append(at_ms)

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def first_202_after(self, ms: int) -> int | None:
        with self._lock:
            later = [t for t in self.http_202_ms if t >= ms]
        return min(later) if later else None


def now_ms() -> int:
    return int(time.time() * 1000)


class EventSource:
    """Seeded event bodies (bench/workload.py) stamped with the wall clock - OFFSET_MS when
    sent; 1 in ``1 / invalid_share`` has a number for ``action`` (rejected by validation)."""

    def __init__(self, plan: Plan, tag: str, seed: int) -> None:
        self._bodies = events(Workload(events=10**9, users=plan.users, seed=seed))
        self._rng = random.Random(seed)
        self._invalid_share = plan.invalid_share
        self._tag = tag
        self._n = 0

    def next(self) -> tuple[bytes, dict[str, Any], bool]:
        key, value = next(self._bodies)
        event = orjson.loads(value)
        self._n += 1
        valid = self._rng.random() >= self._invalid_share
        event["timestamp"] = format_ts(now_ms() - OFFSET_MS)
        if not valid:
            event["event_id"] = f"bad-{self._tag}-{self._n}"
            event["action"] = 42
        return key, event, valid


def paced(rate: float, stop: threading.Event) -> Iterator[None]:
    """Yields ``rate`` times a second until ``stop``; a late caller is not made to burst."""
    step = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        yield
        due = max(due + step, time.monotonic() - 1.0)
        stop.wait(max(0.0, due - time.monotonic()))  # the pace of the traffic


class HttpClients:
    """``HTTP_CLIENTS`` threads posting single events to the serving worker; on a refused or
    broken connection the next worker serves."""

    def __init__(self, plan: Plan, workers: Callable[[], list[Worker]], ledger: Ledger) -> None:
        self._workers = workers
        self._ledger = ledger
        self._stop = threading.Event()
        self._serving = 0
        self._lock = threading.Lock()
        self._sources = [
            EventSource(plan, f"h{n}", plan.seed * 100 + n) for n in range(HTTP_CLIENTS)
        ]
        self._threads = [
            threading.Thread(
                target=self._client, args=(n, plan.rate / 2 / HTTP_CLIENTS), daemon=True
            )
            for n in range(HTTP_CLIENTS)
        ]

    def serving(self) -> Worker:
        """The worker the clients post to."""
        workers = self._workers()
        with self._lock:
            return workers[self._serving % len(workers)]

    def _move_on(self, failed: Worker) -> None:
        with self._lock:
            workers = self._workers()
            if workers[self._serving % len(workers)].name == failed.name:
                self._serving += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(HTTP_TIMEOUT_S + 5)

    def _client(self, n: int, rate: float) -> None:
        try:
            self._send(n, rate)
        except Exception as exc:  # reported by the soak as a mismatch
            self._ledger.problem(f"HTTP client {n} failed: {exc!r}")
            raise

    def _send(self, n: int, rate: float) -> None:
        source = self._sources[n]
        for _ in paced(rate, self._stop):
            _key, event, valid = source.next()
            worker = self.serving()
            sent = Sent(event["event_id"], "http", now_ms(), valid)
            status, body = self._post(worker, event)
            if status == 202:
                sent.outcome = ACCEPTED
                self._ledger.answered_202(now_ms())
                if not valid or body.get("event_id") != event["event_id"]:
                    self._ledger.problem(f"HTTP 202 for {event} answered {body}")
            elif status == 400 and not valid:
                sent.outcome = ACCEPTED  # rejected, and its dead letter acknowledged
            elif status == 503:
                sent.outcome = REFUSED if body.get("stored") == "no" else UNKNOWN
            elif status == -1:  # connection refused: nothing was sent
                sent.outcome = REFUSED
                self._move_on(worker)
            elif status is None:
                sent.outcome = UNKNOWN
                self._move_on(worker)
            else:
                self._ledger.problem(f"HTTP {status} for {event}: {body}")
            self._ledger.add(sent)

    @staticmethod
    def _post(worker: Worker, event: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        """(status, body); status -1 when the connection was refused, None when the request
        may have reached the worker but no answer came."""
        request = urllib.request.Request(
            worker.url + "/ingest",
            data=orjson.dumps(event),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, {}
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return -1, {}
            return None, {}
        except OSError:
            return None, {}


class Loop:
    """A daemon thread running ``_run`` until ``stop()``, which then calls ``_finish``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.failure: str | None = None
        """Why the thread ended before ``stop()``, if it did."""

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the soak as a mismatch
            self.failure = f"{type(self).__name__} failed: {exc!r}"
            raise

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._finish()

    def _run(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass


class DirectProducer(Loop):
    """One thread producing events to ``user-events`` with an idempotent librdkafka producer;
    each delivery report says accepted (persisted), refused (not persisted) or unknown."""

    def __init__(self, plan: Plan, bootstrap: str, topic: str, ledger: Ledger) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                "partitioner": "murmur2_random",  # as the workers' clients: no re-keying hop
                "error_cb": lambda _error: None,  # broker down: the delivery reports say it
                "logger": logging.getLogger("soak.producer"),
            }
        )
        self._topic = topic
        self._ledger = ledger
        self._rate = plan.rate / 2
        self._source = EventSource(plan, "d", plan.seed * 100 + 99)
        super().__init__()

    def _finish(self) -> None:
        self._producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 10)

    def _run(self) -> None:
        for _ in paced(self._rate, self._stop):
            key, event, valid = self._source.next()
            sent = Sent(event["event_id"], "direct", now_ms(), valid)
            self._ledger.add(sent)
            self._producer.produce(
                self._topic, orjson.dumps(event), key, on_delivery=self._report(sent)
            )
            self._producer.poll(0)

    @staticmethod
    def _report(sent: Sent) -> Callable[[Any, Message], None]:
        def delivered(error: Any, _message: Message) -> None:
            # a message that timed out may have been written before (librdkafka reports
            # "possibly persisted", which the Python client does not expose): unknown
            sent.outcome = ACCEPTED if error is None else UNKNOWN

        return delivered


class Progress(Loop):
    """Watches ``user-behavior-enriched``, where each record's Kafka timestamp is when a
    worker processed the event and its ``timestamp`` field when the client created it.

    ``resumed_at(t)``: when every partition had processed an event created at or after ``t``
    (processing resumed after a fault). ``longest_wait(a, b)``: the longest an event created
    between ``a`` and ``b`` waited to be processed (a stall: a worker that stops gracefully
    still processes for a moment, then its partitions wait for their next owner)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "soak-progress",
                "enable.auto.commit": False,
                "error_cb": lambda _error: None,
                "logger": logging.getLogger("soak.progress"),
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
        # partition -> ([max created ms so far], [processed at ms]), both increasing
        self._seen: dict[int, tuple[list[int], list[int]]] = {
            p: ([], []) for p in range(PARTITIONS)
        }
        self._waits: list[tuple[int, int]] = []  # (created ms, processed ms) of every event
        self._lock = threading.Lock()
        super().__init__()

    def _finish(self) -> None:
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, 0.5):
                if message.error() or not message.value():
                    continue
                event = orjson.loads(message.value())
                if str(event.get("user_id", "")).startswith(SENTINEL_PREFIX):
                    continue
                created = parse_ts(event["timestamp"]) + OFFSET_MS
                kind, stamp = message.timestamp()
                processed = stamp if kind != TIMESTAMP_NOT_AVAILABLE else now_ms()
                created_list, processed_list = self._seen[message.partition()]
                with self._lock:
                    self._waits.append((created, processed))
                    if not created_list or created > created_list[-1]:
                        created_list.append(created)
                        processed_list.append(processed)

    def resumed_at(self, after_ms: int) -> int | None:
        times = []
        with self._lock:
            for created_list, processed_list in self._seen.values():
                index = bisect.bisect_left(created_list, after_ms)
                if index == len(created_list):
                    return None
                times.append(processed_list[index])
        return max(times)

    def waiting(self, after_ms: int) -> list[int]:
        """The partitions that have processed no event created at or after ``after_ms``."""
        with self._lock:
            return [
                p for p, (created, _) in self._seen.items() if not created or created[-1] < after_ms
            ]

    def longest_wait(self, from_ms: int, to_ms: int) -> int:
        with self._lock:
            waits = [done - created for created, done in self._waits if from_ms <= created <= to_ms]
        return max(waits, default=0)


# --------------------------------------------------------------------------- faults


@dataclass
class FaultRun:
    kind: str
    started_ms: int
    recovered_ms: int
    recovery_s: float
    detail: str


def wait_for(what: str, check: Callable[[], int | None], timeout: float) -> int:
    """Poll ``check`` until it returns a time (ms); AssertionError at the deadline."""
    moment: int = poll(check, lambda result: result is not None, timeout, what, interval=0.2)
    return moment


@dataclass
class Rig:
    """The running system: broker, database, workers, traffic, progress."""

    plan: Plan
    broker: OwnBroker
    database: ScratchPostgres
    pool: WorkerPool
    prefix: str
    group: str
    ledger: Ledger = field(default_factory=Ledger)
    workers: dict[str, Worker] = field(default_factory=dict)
    http: HttpClients | None = None
    direct: DirectProducer | None = None
    progress: Progress | None = None

    def live_workers(self) -> list[Worker]:
        return [self.workers[name] for name in sorted(self.workers)]

    def start_workers(self) -> None:
        for n in range(self.plan.workers):
            name = f"w{n + 1}"
            env = {"ANALYTICS__SOURCES__KAFKA__GROUP_INSTANCE_ID": f"{self.group}-{name}"}
            self.workers[name] = self.pool.start(self.prefix, self.group, env)
        self.wait_stable()

    def wait_stable(self) -> None:
        self.live_workers()[0].wait_ready(PARTITIONS, timeout=RECOVERY_TIMEOUT_S)

    def restart(self, worker: Worker) -> None:
        self.workers[worker.name] = self.pool.restart(worker)

    def processing_resumed(self, after_ms: int) -> int:
        assert self.progress is not None
        progress = self.progress
        try:
            return wait_for(
                "processing of new events on every partition",
                lambda: progress.resumed_at(after_ms),
                RECOVERY_TIMEOUT_S,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.stalled(after_ms)}") from None

    def stalled(self, after_ms: int) -> str:
        """Which partitions have processed nothing created after ``after_ms``, who owns
        them, and what each worker's /health says of Kafka and its partitions."""
        assert self.progress is not None
        waiting = self.progress.waiting(after_ms)
        owners = []
        for worker in self.live_workers():
            answer = worker.health()
            state = answer[1] if answer else {}
            owners.append(
                f"{worker.name} (pid {worker.pid}): HTTP {answer[0] if answer else None}, "
                f"partitions {state.get('worker', {}).get('user_events_partitions')}, "
                f"kafka {state.get('kafka')}"
            )
        return f"partitions without new events processed: {waiting}; " + "; ".join(owners)

    def http_resumed(self, after_ms: int) -> int:
        return wait_for(
            "HTTP 202", lambda: self.ledger.first_202_after(after_ms), RECOVERY_TIMEOUT_S
        )

    def sinks_resumed(self, after_ms: int) -> int:
        def written() -> int | None:
            try:
                with psycopg.connect(self.database.url, connect_timeout=5) as conn:
                    row = conn.execute("SELECT max(updated_at) FROM kpi_metrics").fetchone()
            except psycopg.OperationalError:
                return None
            if row is None or row[0] is None or row[0].timestamp() * 1000 < after_ms:
                return None
            healthy = all(
                (answer := w.health()) is not None and answer[1]["sinks"]["status"] != DEGRADED
                for w in self.live_workers()
            )
            return now_ms() if healthy else None

        return wait_for("the sinks writing again", written, RECOVERY_TIMEOUT_S)

    def inject(self, kind: str, rng: random.Random) -> FaultRun:
        started = now_ms()
        if kind == KILL:
            victim = rng.choice(self.live_workers())
            victim.kill()
            self.restart(victim)
            recovered = self.processing_resumed(started)
            detail = victim.name
        elif kind == SIGTERM:
            assert self.http is not None
            victim = self.http.serving()
            victim.stop()
            self.restart(victim)
            recovered = max(self.http_resumed(started), self.processing_resumed(started))
            detail = victim.name
        elif kind == BROKER:
            self.broker.stop()
            threading.Event().wait(self.plan.broker_down_s)  # the outage's length
            self.broker.start()
            started = now_ms()  # recovery counts from the broker's return
            recovered = max(self.http_resumed(started), self.processing_resumed(started))
            detail = f"down {self.plan.broker_down_s:.0f} s"
        else:
            self.database.stop("immediate")
            threading.Event().wait(self.plan.database_down_s)  # the outage's length
            self.database.start()
            started = now_ms()
            recovered = max(self.sinks_resumed(started), self.processing_resumed(started))
            detail = f"down {self.plan.database_down_s:.0f} s"
        # until the group is stable again, no event may have waited longer than the recovery
        self.wait_stable()
        stable = now_ms()
        self.processing_resumed(stable)
        assert self.progress is not None
        recovered = max(recovered, started + self.progress.longest_wait(started, stable))
        return FaultRun(kind, started, recovered, (recovered - started) / 1000, detail)


def run_faults(rig: Rig, traffic_started: float) -> list[FaultRun]:
    """Every fault of the plan in its seeded order, spread over the traffic's duration; each
    begins once the group is stable again after the one before."""
    plan = rig.plan
    faults = plan.faults()
    rng = random.Random(plan.seed + 1)
    warmup = min(30.0, plan.seconds * 0.1)
    spacing = (plan.seconds - warmup) / (len(faults) + 0.5)
    runs = []
    for index, kind in enumerate(faults):
        due = traffic_started + warmup + spacing * (index + rng.uniform(0.0, 0.5))
        threading.Event().wait(max(0.0, due - time.monotonic()))  # the schedule
        run = rig.inject(kind, rng)
        runs.append(run)
        print(
            f"  {format_ts(run.started_ms)} {kind} ({run.detail}): "
            f"recovered in {run.recovery_s:.1f} s",
            flush=True,
        )
    return runs


# --------------------------------------------------------------------------- checking


def _changed(values: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[str]:
    first: dict[Any, dict[str, Any]] = {}
    problems = []
    for value in values:
        known = first.setdefault(key(value), value)
        if known != value:
            problems.append(f"two different records for {key(value)}: {known} != {value}")
    return problems


async def _read(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    async with TopicReader(bootstrap, topic) as reader:
        records = await reader.read_to_end(timeout=120)
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return [orjson.loads(r.value) for r in ordered if r.value]


@dataclass
class Outcome:
    """What the checks found."""

    problems: list[str]
    # per fault kind (and NONE): events lost, doubled, enriched re-deliveries
    lost: collections.Counter[str]
    doubled: collections.Counter[str]
    redelivered: collections.Counter[str]
    summary: dict[str, Any]


def fault_of(runs: list[FaultRun], plan: Plan) -> Callable[[int, int], str]:
    """The fault a wall-clock span ``[from, to)`` belongs to: the latest one whose time, from
    its beginning (an outage's start) to 5 s after its recovery, overlaps the span."""
    spans = []
    for run in runs:
        begin = run.started_ms
        if run.kind == BROKER:
            begin -= int(plan.broker_down_s * 1000)
        elif run.kind == DATABASE:
            begin -= int(plan.database_down_s * 1000)
        spans.append((begin - 1000, run.recovered_ms + 5000, run.kind))
    spans.sort(reverse=True)

    def fault(start: int, end: int) -> str:
        return next((kind for begin, stop, kind in spans if begin < end and start <= stop), NONE)

    return fault


async def drain_and_check(rig: Rig, runs: list[FaultRun]) -> Outcome:
    """Close every traffic window, wait for the pipeline and the sinks, compare."""
    bootstrap, prefix = rig.broker.bootstrap, rig.prefix
    sent = rig.ledger.sent
    last_ts = max(s.created_ms for s in sent) - OFFSET_MS
    last_window = reference.window_start(last_ts, WINDOW_MS)
    closing_ts = last_ts + GAP_MS + 10 * WINDOW_MS
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for user_key, closing in closing_messages(PARTITIONS, closing_ts):
        producer.produce(f"{prefix}user-events", closing, user_key)
    if producer.flush(30):
        raise RuntimeError("the closing events were not delivered")

    async with TopicReader(bootstrap, f"{prefix}live-kpis") as kpis:
        await kpis.read_until(
            lambda records: any(
                r.json()["is_final"] and parse_ts(r.json()["window_start"]) == last_window
                for r in records
            ),
            timeout=DRAIN_TIMEOUT_S,
        )
    enriched_all = [
        e
        for e in await _read(bootstrap, f"{prefix}user-behavior-enriched")
        if not str(e["user_id"]).startswith(SENTINEL_PREFIX)
    ]
    traffic_users = {e["user_id"] for e in enriched_all}
    expected_keys = {
        (s["user_id"], s["session_id"], s["window_start_ms"])
        for s in reference.sessions(
            contract.one_copy_each(enriched_all, lambda e: e["event_id"]), GAP_MS
        )
    }
    async with TopicReader(bootstrap, f"{prefix}session-metrics") as sessions_reader:
        await sessions_reader.read_until(
            lambda records: contract.session_keys(r.json() for r in records) >= expected_keys,
            timeout=DRAIN_TIMEOUT_S,
        )
    topics = {
        name: await _read(bootstrap, f"{prefix}{name}")
        for name in (
            "user-behavior-enriched",
            "live-kpis",
            "session-metrics",
            "page-view-stats",
            "traffic-stats",
            "funnel-stats",
            "experiment-stats",
            "cohort-stats",
            "user-events-dlq",
        )
    }
    problems = list(rig.ledger.problems)
    problems += [loop.failure for loop in (rig.direct, rig.progress) if loop and loop.failure]
    fault = fault_of(runs, rig.plan)
    lost: collections.Counter[str] = collections.Counter()
    doubled: collections.Counter[str] = collections.Counter()
    redelivered: collections.Counter[str] = collections.Counter()

    # events: accepted once, refused never, unknown at most once
    enriched_ids = collections.Counter(e["event_id"] for e in enriched_all)
    by_id = {s.event_id: s for s in sent}
    for s in sent:
        if not s.valid:
            continue
        copies = enriched_ids.get(s.event_id, 0)
        if s.outcome == ACCEPTED and copies == 0:
            lost[fault(s.created_ms, s.created_ms + 1)] += 1
            problems.append(f"accepted {s.source} event {s.event_id} never enriched")
        if s.outcome == REFUSED and copies:
            doubled[fault(s.created_ms, s.created_ms + 1)] += 1
            problems.append(f"refused {s.source} event {s.event_id} enriched {copies} times")
        if copies > 1:
            redelivered[fault(s.created_ms, s.created_ms + 1)] += copies - 1
    strangers = [i for i in enriched_ids if i not in by_id or not by_id[i].valid]
    if strangers:
        problems.append(f"{len(strangers)} enriched events never sent valid, e.g. {strangers[:3]}")
    enriched = contract.one_copy_each(enriched_all, lambda e: e["event_id"])

    # exact outputs against the batch reference
    for name, key in (
        ("live-kpis", lambda k: (k["window_start"], k["is_final"]) if k["is_final"] else None),
        ("session-metrics", lambda s: (s["user_id"], s["session_id"], s["window_start"])),
        ("page-view-stats", lambda p: (p["window_start"], p["page"])),
        ("traffic-stats", lambda d: (d["window_start"], d["dimension"], d["value"])),
    ):
        values = [v for v in topics[name] if key(v) is not None]
        problems += _changed(values, key)
    finals = {
        parse_ts(k["window_start"]): k
        for k in contract.one_copy_each(
            [k for k in topics["live-kpis"] if k["is_final"]], lambda k: k["window_start"]
        )
        if parse_ts(k["window_start"]) <= last_window
    }
    late = max((k["late_events_total"] for k in finals.values()), default=0)
    if late:
        problems.append(f"{late} events counted late (none should be: see the docstring)")
    expected_kpis = {
        start: figures
        for start, figures in reference.kpi_windows(
            enriched, WINDOW_MS, GAP_MS, contract.shipped_custom_kpis()
        ).items()
        if start <= last_window
    }
    problems += contract.compare_kpis(finals, expected_kpis)
    for start in sorted(set(finals) & set(expected_kpis)):
        difference = finals[start]["total_events"] - expected_kpis[start]["total_events"]
        where = fault(start + OFFSET_MS, start + OFFSET_MS + WINDOW_MS)
        if difference > 0:
            doubled[where] += difference
        else:
            lost[where] -= difference
    sessions = contract.one_copy_each(
        topics["session-metrics"], lambda s: (s["user_id"], s["session_id"], s["window_start"])
    )
    sessions = [s for s in sessions if s["user_id"] in traffic_users]
    problems += contract.compare_sessions(sessions, reference.sessions(enriched, GAP_MS))
    pages = contract.one_copy_each(
        topics["page-view-stats"], lambda p: (p["window_start"], p["page"])
    )
    problems += contract.compare_pages(
        [p for p in pages if parse_ts(p["window_start"]) <= last_window],
        {k: v for k, v in reference.page_stats(enriched, WINDOW_MS).items() if k[0] <= last_window},
    )
    dims = contract.one_copy_each(
        topics["traffic-stats"], lambda d: (d["window_start"], d["dimension"], d["value"])
    )
    problems += contract.compare_dimensions(
        [d for d in dims if parse_ts(d["window_start"]) <= last_window],
        {
            k: v
            for k, v in reference.dimension_stats(enriched, WINDOW_MS).items()
            if k[0] <= last_window
        },
    )

    # dead letters: each rejected event once; a topic event's letter may be written again
    # after a crash (a re-delivery), identical and naming the same source offset
    letters: dict[str, set[tuple[int, ...]]] = collections.defaultdict(set)
    for n, letter in enumerate(topics["user-events-dlq"]):
        try:
            event_id = str(orjson.loads(letter["raw"]).get("event_id"))
        except (orjson.JSONDecodeError, AttributeError):
            event_id = f"unreadable letter {n}"
        if letter["source"] == "topic":
            letters[event_id].add((letter["partition"], letter["offset"]))
        else:
            letters[event_id].add((n,))
    dlq_redelivered = len(topics["user-events-dlq"]) - sum(map(len, letters.values()))
    rejected = {s.event_id: s for s in sent if not s.valid}
    for event_id, s in rejected.items():
        places = letters.get(event_id, set())
        if s.outcome == ACCEPTED and not places:
            lost[fault(s.created_ms, s.created_ms + 1)] += 1
            problems.append(f"rejected {s.source} event {event_id} not on the DLQ")
        elif len(places) > 1 or (s.outcome == REFUSED and places):
            doubled[fault(s.created_ms, s.created_ms + 1)] += max(1, len(places) - 1)
            problems.append(f"rejected {s.source} event {event_id} on the DLQ as {places}")
    strange_letters = [i for i in letters if i not in rejected]
    if strange_letters:
        problems.append(f"DLQ letters of events never rejected: {strange_letters[:5]}")

    # tables against topics
    table_problems = await wait_for_tables(rig, topics_by_table(topics), last_window, traffic_users)
    problems += table_problems

    outcomes = collections.Counter((s.source, s.valid, s.outcome) for s in sent)
    return Outcome(
        problems,
        lost,
        doubled,
        redelivered,
        {
            "events sent": len(sent),
            "outcomes": dict(
                sorted(
                    ((f"{a} {'valid' if b else 'invalid'} {c}"), n)
                    for (a, b, c), n in outcomes.items()
                )
            ),
            "enriched": len(enriched_all),
            "enriched distinct": len(enriched),
            "unknown ones enriched": sum(
                1 for s in sent if s.valid and s.outcome == UNKNOWN and s.event_id in enriched_ids
            ),
            "final windows": len(finals),
            "sessions": len(sessions),
            "dlq letters": len(topics["user-events-dlq"]),
            "dlq re-deliveries": dlq_redelivered,
            "late": late,
        },
    )


def topics_by_table(topics: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {table: topics[topic] for table, topic in SINK_TOPICS.items()}


async def wait_for_tables(
    rig: Rig,
    records: dict[str, list[dict[str, Any]]],
    last_window: int,
    traffic_users: set[str],
) -> list[str]:
    """Poll until every table holds the latest record of each traffic key of its topic (the
    closing events' own rows still move); the differences left at the deadline."""

    def settled(table: str, row: dict[str, Any]) -> bool:
        if table == "session_metrics":
            return str(row["user_id"]) in traffic_users
        if table in ("funnel_stats", "cohort_stats"):  # live rows still move; final ones don't
            return bool(row["is_final"])
        if table == "experiment_stats":  # no final rows: the latest record of each variant
            return True
        return int(row["window_start"].timestamp() * 1000) <= last_window

    want = {table: latest_rows(TABLES[table], values, settled) for table, values in records.items()}
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    problems = ["not read yet"]
    while time.monotonic() < deadline:
        try:
            problems = []
            for table in SINK_TOPICS:
                rows = [r for r in await table_rows(rig.database.url, table) if settled(table, r)]
                problems += differences(TABLES[table], rows, want[table])
        except psycopg.OperationalError as exc:
            problems = [f"database: {exc}"]
        if not problems:
            return []
        await asyncio.sleep(0.5)  # polling interval, bounded by the deadline
    return problems


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    plan: Plan
    runs: list[FaultRun]
    outcome: Outcome
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.outcome.problems

    def table(self) -> str:
        lines = [
            "| fault | count | recovery time (s): max (median) | events lost | events doubled "
            "| enriched re-deliveries |",
            "|---|---|---|---|---|---|",
        ]
        o = self.outcome
        for kind in FAULT_ORDER:
            runs = [r for r in self.runs if r.kind == kind]
            if not runs:
                continue
            times = [r.recovery_s for r in runs]
            lines.append(
                f"| {kind} | {len(runs)} | {max(times):.1f} ({statistics.median(times):.1f}) "
                f"| {o.lost[kind]} | {o.doubled[kind]} | {o.redelivered[kind]} |"
            )
        lines.append(f"| {NONE} | | | {o.lost[NONE]} | {o.doubled[NONE]} | {o.redelivered[NONE]} |")
        return "\n".join(lines)

    def text(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL: {len(self.outcome.problems)} mismatches"
        parts = [
            f"soak: {self.plan}",
            f"ran {self.seconds:.0f} s; "
            + ", ".join(f"{k}: {v}" for k, v in self.outcome.summary.items()),
            self.table(),
            verdict,
        ]
        parts += self.outcome.problems[:60]
        return "\n".join(parts)


def soak(plan: Plan, workdir: Path) -> Report:
    """Run the whole scenario: broker, worker data and logs in ``workdir``; the database in a
    directory of its own in /tmp (as root, its ``postgres`` owner must reach it)."""
    started = time.monotonic()
    with (
        own_broker(workdir / "kafka") as broker,
        scratch_postgres(Path(tempfile.mkdtemp(prefix="soak-pg-"))) as database,
    ):
        pool = WorkerPool(Services(broker.bootstrap, database.url), workdir / "workers")
        rig = Rig(plan, broker, database, pool, new_topic_prefix(), new_group_id())
        try:
            rig.start_workers()
            rig.progress = Progress(broker.bootstrap, f"{rig.prefix}user-behavior-enriched")
            rig.http = HttpClients(plan, rig.live_workers, rig.ledger)
            rig.direct = DirectProducer(
                plan, broker.bootstrap, f"{rig.prefix}user-events", rig.ledger
            )
            rig.progress.start()
            traffic_started = time.monotonic()
            rig.http.start()
            rig.direct.start()
            runs = run_faults(rig, traffic_started)
            threading.Event().wait(max(0.0, traffic_started + plan.seconds - time.monotonic()))
            rig.http.stop()
            rig.direct.stop()
            rig.wait_stable()
            outcome = asyncio.run(drain_and_check(rig, runs))
        except BaseException:
            print(pool.log_tails(40), file=sys.stderr)
            raise
        finally:
            if rig.http:
                rig.http.stop()
            if rig.progress:
                rig.progress.stop()
            pool.stop_all()
    return Report(plan, runs, outcome, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=60, help="events/s, HTTP and direct")
    parser.add_argument("--broker-down", type=float, default=30, help="seconds")
    parser.add_argument("--database-down", type=float, default=60, help="seconds")
    parser.add_argument("--workdir", type=Path, help="kept after the run (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("soak.producer").setLevel(logging.CRITICAL)
    logging.getLogger("soak.progress").setLevel(logging.CRITICAL)
    plan = Plan(
        seconds=args.minutes * 60,
        workers=args.workers,
        seed=args.seed,
        kills=args.kills,
        rate=args.rate,
        broker_down_s=args.broker_down,
        database_down_s=args.database_down,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak in {workdir}; faults in order: {', '.join(plan.faults())}", flush=True)
    report = soak(plan, workdir)
    print(report.text(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
