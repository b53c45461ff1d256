"""The hot path: every ``user-events`` partition this worker owns, tracked and analysed.

Tracker (SPEC 1-2): validate, drop repeats, enrich → ``user-behavior-enriched``; rejects →
``user-events-dlq``; wrongly keyed events are produced again keyed by user_id.
Analytics (SPEC 3-6): the same batch's enriched events and ticks update the partition's users,
sessions and windows (analytics.partition); closed sessions → ``session-metrics``; window
partials and the watermark → ``kpi-partials`` for the combiner.

Faust owns the consumer group: ``user-events`` is co-partitioned with the tables, and the
partitions of ``partition-state`` that Faust's assignor makes active here, once recovered,
are the ones this service reads (with agents/kafka_io.py, not a Faust stream: see there why).
A rebalance stops the loop at a round's end, with everything written, before anything is
handed over.

A round, over whatever the partitions have ready; each record goes through these steps in
this order (the commit order of docs/architecture.md, "Exactness"):

1. compute: track and analyse each partition's messages (pure functions, state in memory);
2. produce the outputs and the dedup records;
3. once the broker has acknowledged them, write the dedup records to RocksDB and produce the
   state's changelog records;
4. once those are acknowledged, write the state to RocksDB with the changelog offset it
   reaches, and commit the input position (for lag tools only: the state's clock is what a
   restart resumes from).

Steps 3 and 4 happen as the acknowledgements arrive, between the computing of later rounds
(agents/partition_task.py keeps a partition's rounds in flight, in order): the broker works
while Python computes, and no round waits for another's acknowledgements. State is durable
only after its outputs, and the dedup records before the state, so a crash anywhere
re-delivers a batch, never loses one. A round that fails (the broker refuses a record)
resets every partition to its durable state and reads it again from there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable
from operator import attrgetter
from typing import Any

from confluent_kafka import Message
from mode import Service

from agents import erasures
from agents.kafka_io import SETTLE_WARN_S, Delivery, InputReader, Outbox
from agents.partition_task import (
    TICK_HEADER,
    InFlight,
    PartitionRound,
    PartitionTask,
    raw_message,
)
from agents.round_clock import RoundClock
from analytics import erasure, record_chunks, wide_json
from analytics.dead_letters import bounded_dead_letter
from analytics.enrichment import EnrichmentRules, parse_user_agent
from analytics.erasure import Erased
from analytics.journeys import JourneyRules
from analytics.money import currency
from analytics.partition import PartitionOutput, PartitionRules, PartitionState, apply_batch
from analytics.record_chunks import PARTIAL, SESSION
from analytics.rows import Arrival
from analytics.state_store import Write
from analytics.timeutil import format_ts
from analytics.tracking import RawMessage, TrackedBatch, TrackerRules, track_batch
from analytics.validation import FieldError
from app import app, faust_compat, metrics
from app.kafka_security import librdkafka_config
from app.metrics import BatchFigures
from tables.partition_state import partition_state
from tables.seen_events import seen_events

log = logging.getLogger(__name__)
TOPICS = app.topic_names
WARM_UP_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
STOP_TIMEOUT_S = 30.0
ROUND_RETRY_S = 1.0
ACK_POLL_S = 0.005  # how long to wait for acknowledgements when rounds are in flight
MAX_ROUNDS_IN_FLIGHT = 8  # per partition: then wait for the broker before reading on
MEMTABLE_FLUSH_S = 30.0  # persist RocksDB's memtables this often (bounds what a restart replays)

_settings = app.analytics_settings
_engine = _settings.engine
ROUND_INTERVAL_S = _engine.round_interval.total_seconds()
TRACKER = TrackerRules(
    enrichment=EnrichmentRules(
        conversion_actions=frozenset(_settings.analytics.conversion_actions),
        high_value_revenue_cents=int(_settings.analytics.high_value_revenue * 100),
        high_value_duration_ms=_settings.analytics.high_value_duration_ms,
        ip_mode=_settings.privacy.ip,
    ),
    dedup_window_ms=int(_engine.dedup_window.total_seconds() * 1000),
    future_tolerance_ms=int(_settings.analytics.future_tolerance.total_seconds() * 1000),
)
PARTITION_RULES = PartitionRules(
    window_ms=int(_engine.kpi_window.total_seconds() * 1000),
    gap_ms=int(_engine.session_gap.total_seconds() * 1000),
    grace_ms=int(_engine.grace.total_seconds() * 1000),
    idle_ms=int(_engine.idle_timeout.total_seconds() * 1000),
    journeys=JourneyRules(
        funnels=_settings.funnels,
        experiments=_settings.experiments.spec() if _settings.experiments.enabled else None,
        cohorts=_settings.cohorts.spec() if _settings.cohorts.enabled else None,
    ),
    custom_kpis=_settings.custom_kpis,
)


def session_record(figures: dict[str, Any]) -> dict[str, Any]:
    """A closed session as published: times in RFC 3339, money in currency units."""
    record = dict(figures)
    record["window_start"] = format_ts(record.pop("window_start_ms"))
    record["window_end"] = format_ts(record.pop("window_end_ms"))
    record["revenue"] = currency(record["revenue_cents"])
    return record


def open_task(partition: int, partitions: int) -> PartitionTask:
    """A partition, one of ``partitions`` on this worker: they share the cache of users."""
    share = _engine.max_cached_users // max(1, partitions)
    return PartitionTask.open(partition, PARTITION_RULES, max(1, share) if share else 0)


@app.service
class BehaviorTracker(Service):
    """Reads the owned ``user-events`` partitions in rounds (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = librdkafka_config(_settings)
        self.reader = InputReader(config, f"{app.conf.id}-user-events")
        self.outbox = Outbox(config)
        self.tasks: dict[int, PartitionTask] = {}
        self.clock = RoundClock()
        self._last_round = 0.0
        self._unacknowledged_since: float | None = None  # the oldest round waiting, once said
        self._round = asyncio.Lock()
        self._assigned = asyncio.Event()
        self._state_changelog = partition_state.changelog_topic.get_topic_name()
        self._seen_changelog = seen_events.changelog_topic.get_topic_name()
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self._on_recovered)  # type: ignore[arg-type]
        global tracker
        tracker = self

    async def on_started(self) -> None:
        tune_garbage_collector(_engine.gc_threshold)
        parse_user_agent(WARM_UP_USER_AGENT)  # builds ua-parser's matchers now, not mid-batch
        if not app.rebalancing and faust_compat.tables_recovered(app):
            await self._on_recovered(app)

    async def on_stop(self) -> None:
        await self._stop_partitions()
        self.outbox.close()
        self.reader.close()

    # ------------------------------------------------------------------ assignment

    def owned_partitions(self) -> list[int]:
        return sorted(self.tasks)

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        await self._stop_partitions()

    async def _stop_partitions(self) -> None:
        """Let the running round finish and everything reach RocksDB, then forget every
        partition (their next owner, this worker or another, starts from there)."""
        self._assigned.clear()
        try:
            await asyncio.wait_for(self._round.acquire(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "a round did not finish in %.0f s; its batch will be read again", STOP_TIMEOUT_S
            )
            self._round = asyncio.Lock()
            await self._round.acquire()
        try:
            try:
                await self._settle()
            except Exception:
                log.exception("the last rounds were not written; they will be read again")
            self.reader.unassign(TOPICS.user_events, list(self.tasks))
            self.tasks.clear()
            metrics.keep_partitions([])
        finally:
            self._round.release()

    async def _on_recovered(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Tables are recovered: start the partitions whose state is active here."""
        actives = faust_compat.active_partitions(app, self._state_changelog)
        async with self._round:
            new = {p: open_task(p, len(actives)) for p in sorted(actives - set(self.tasks))}
            self.tasks.update(new)
            self.reader.assign(TOPICS.user_events, {p: t.position for p, t in new.items()})
            metrics.keep_partitions(self.tasks)
            if self.tasks:
                self._assigned.set()
        if new:
            log.info("tracking user-events partitions %s", sorted(new))

    # ------------------------------------------------------------------ rounds

    @Service.task
    async def _run(self) -> None:
        wait_s = _engine.batch_within.total_seconds()
        while not self.should_stop:
            await self._assigned.wait()
            async with self._round:
                if not self.tasks:
                    continue
                await self._guarded(self._step(wait_s))
            # a round that found its input fetched already never suspended: let the rest
            # of the worker (the combiner's stream, the web server, the sinks) run between
            await asyncio.sleep(0)

    async def _step(self, wait_s: float) -> None:
        """Take the acknowledgements in, then a round of input, or wait for either.

        Rounds start at most every ``engine.round_interval``: below capacity, the events
        that come meanwhile make one round, and the work a round costs whatever its size
        (its records, RocksDB writes, metrics: per partition) is spread over more events."""
        self._acknowledged()
        in_flight = any(task.in_flight for task in self.tasks.values())
        if in_flight:
            self._warn_if_unacknowledged()
        if in_flight and self._backlogged():
            with self.clock.phase("wait"):
                await self.outbox.wait(ACK_POLL_S)
            return
        early = self._last_round + ROUND_INTERVAL_S - time.monotonic()
        if early > 0:
            with self.clock.phase("read"):
                await self.outbox.wait(early)
            self._acknowledged()
        self._last_round = time.monotonic()
        with self.clock.phase("read"):
            messages = await self.reader.poll(
                _engine.batch_size, ACK_POLL_S if in_flight else wait_s
            )
        if messages:
            await self._process(messages)
            self.clock.events(len(messages))
        elif in_flight:
            with self.clock.phase("wait"):
                await self.outbox.wait(ACK_POLL_S)

    def _warn_if_unacknowledged(self) -> None:
        """Say once when the oldest round has waited for the broker past SETTLE_WARN_S, and
        once when it is acknowledged: a partition that waits is otherwise silent."""
        oldest = min(t.in_flight[0].sent_at for t in self.tasks.values() if t.in_flight)
        waited_s = time.monotonic() - oldest
        if waited_s > SETTLE_WARN_S and self._unacknowledged_since is None:
            self._unacknowledged_since = oldest
            log.warning(
                "the broker has not acknowledged the records of partitions %s for %.0f s: "
                "waiting (a round is written only once acknowledged)",
                [t.partition for t in self.tasks.values() if t.in_flight],
                waited_s,
            )
        elif waited_s <= SETTLE_WARN_S and self._unacknowledged_since is not None:
            log.warning(
                "the broker acknowledges again after %.0f s",
                time.monotonic() - self._unacknowledged_since,
            )
            self._unacknowledged_since = None

    def _backlogged(self) -> bool:
        return any(len(task.in_flight) >= MAX_ROUNDS_IN_FLIGHT for task in self.tasks.values())

    async def _guarded(self, work: Awaitable[None]) -> None:
        """A round that fails (the broker refuses a record) restarts every partition from
        its durable state: what it computed past that is read and computed again."""
        try:
            await work
        except Exception:
            log.exception("a round failed; partitions restart from their durable state")
            for partition in list(self.tasks):
                fresh = self.tasks[partition] = open_task(partition, len(self.tasks))
                self.reader.seek(TOPICS.user_events, partition, fresh.position)
            await asyncio.sleep(ROUND_RETRY_S)

    async def _process(self, messages: list[Message]) -> None:
        """One round (module docstring): compute, and hand the outputs to the producer."""
        by_partition: dict[int, list[Message]] = {}
        for message in messages:
            by_partition.setdefault(message.partition() or 0, []).append(message)
        rounds = []
        for partition, batch in by_partition.items():
            if partition in self.tasks:
                raws = [raw_message(message) for message in batch]
                for segment in erasure.segments(raws, attrgetter("erase")):  # erasures: own rounds
                    with self.clock.phase("compute"):
                        rounds.append(await self._compute(partition, segment))
                # the rest of the worker (heartbeats, the combiner, the web server) runs
                # between partitions, not only between rounds
                await asyncio.sleep(0)
        with self.clock.phase("send"):
            for task, done in rounds:
                task.in_flight.append(self._send_outputs(task, done))

    def _acknowledged(self) -> None:
        """Steps 3 and 4 (module docstring) for the rounds whose records the broker has
        acknowledged, in order, partition by partition."""
        self.outbox.poll()
        acked_s = time.time()
        positions = {}
        for task in self.tasks.values():
            rounds = task.in_flight
            if not rounds:
                continue
            with self.clock.phase("store"):
                seen_writes: list[Write] = []
                seen_offset = -1
                for sent in rounds:  # outputs acknowledged: dedup records in, state out
                    if sent.state is not None:
                        continue
                    if not sent.published:
                        break
                    sent.outputs.check()
                    sent.seen.check()
                    seen_writes += sent.seen_writes
                    seen_offset = max(seen_offset, sent.seen.last_offset)
                    metrics.tracker_batch(sent.figures, acked_s)
                    sent.state = Delivery()
                    for key, value in sent.state_writes:
                        self.outbox.send(
                            sent.state, self._state_changelog, key, value, task.partition
                        )
                if seen_writes:
                    task.seen_store.write(seen_writes, seen_offset)
                    task.seen_reads.written(seen_writes)
                stored: list[Write] = []
                erased: list[Erased] = []
                while rounds and (state := rounds[0].state) is not None and state.done:
                    sent = rounds.popleft()  # state acknowledged: into RocksDB
                    state.check()
                    erased += sent.erased
                    stored += sent.state_writes
                    offset = state.last_offset
                    positions[task.partition] = sent.applied + 1
                if stored:
                    task.state_store.write(stored, offset)
                    task.state_reads.written(stored)
                erasures.done(erased)  # in RocksDB now: the requests can be answered
                if task.flush_due(MEMTABLE_FLUSH_S):
                    task.state_store.flush(wait=False)
                    task.seen_store.flush(wait=False)
            metrics.partition_gauges(
                task.partition, task.state.clock.users_total, task.state.open_users
            )
        if positions:
            self.reader.commit(TOPICS.user_events, positions)

    async def _settle(self) -> None:
        """Everything in flight acknowledged and in RocksDB (memtables flushed)."""
        started = time.monotonic()
        warned = False
        while True:
            self._acknowledged()
            if not any(task.in_flight for task in self.tasks.values()):
                break
            if not warned and time.monotonic() - started > SETTLE_WARN_S:
                log.warning("waiting for the broker to acknowledge the last rounds")
                warned = True
            await self.outbox.wait(ACK_POLL_S)
        for task in self.tasks.values():
            task.state_store.flush()
            task.seen_store.flush()

    async def _compute(
        self, partition: int, raws: list[RawMessage]
    ) -> tuple[PartitionTask, PartitionRound]:
        """Track and analyse one partition's batch. Should the analysis fail (a bug meeting
        an input nobody foresaw), the batch is taken again one message at a time from the
        state it started from: the message it fails on goes to the dead letters with the
        error, the others are processed, and the partition goes on."""
        task = self.tasks[partition]
        try:
            return task, self._compute_batch(task, raws)
        except Exception:
            log.exception(
                "partition %d: a batch failed; taking it one message at a time", partition
            )
        await self._settle()  # what came before the batch is in RocksDB now
        task = self.tasks[partition] = open_task(partition, len(self.tasks))
        results = []
        for raw in raws:
            try:
                done = self._compute_batch(task, [raw])
            except Exception as exc:
                log.exception("partition %d: offset %d failed", partition, raw.offset)
                task.state = PartitionState(task.state_reads, PARTITION_RULES)  # before it
                done = self._failed(task, raw, exc)
                task.computed(done)
            results.append(done)
        return task, _merge(results)

    def _compute_batch(self, task: PartitionTask, raws: list[RawMessage]) -> PartitionRound:
        if raws[0].erase:  # a round of its own (_process)
            return self._erase(task, raws[0])
        tracked = track_batch(raws, topic=TOPICS.user_events, lookup=task.lookup, rules=TRACKER)
        with metrics.partition_analytics():
            analysed = apply_batch(
                task.state, tracked.timeline, PARTITION_RULES, live=task.live_due()
            )
        done = PartitionRound(
            tracked,
            analysed,
            max(raw.timestamp_ms for raw in raws),
            task.state.clock.applied,
            task.state.take_writes(),
            [(key, value.encode()) for key, value in tracked.seen.items()],
        )
        task.computed(done)
        return done

    def _erase(self, task: PartitionTask, raw: RawMessage) -> PartitionRound:
        """The round of an erasure request (analytics.erasure): the user's keys deleted, its
        tombstones sent (``_send_outputs``)."""
        request = erasure.Erasure(raw.offset, raw.timestamp_ms, (raw.key or b"").decode())
        erased, writes, seen_writes = erasure.erase(
            task.state, task.seen_reads, request, task.partition
        )
        done = PartitionRound(
            TrackedBatch(),
            PartitionOutput(),
            raw.timestamp_ms,
            task.state.clock.applied,
            writes,
            seen_writes,
            [erased],
        )
        task.computed(done)
        return done

    def _failed(self, task: PartitionTask, raw: RawMessage, exc: Exception) -> PartitionRound:
        """The round of a message the analysis failed on: a dead letter, and the state's
        clock moved past it."""
        tracked = TrackedBatch(failures=1)
        tracked.dead_letters.append(
            bounded_dead_letter(
                raw.value,
                [FieldError("event", f"could not be processed: {exc!r}")],
                source="topic",
                received_ms=raw.timestamp_ms,
                ip_mode=TRACKER.enrichment.ip_mode,
                topic=TOPICS.user_events,
                partition=raw.partition,
                offset=raw.offset,
            )
        )
        clock = task.state.clock
        clock.applied = max(clock.applied, raw.offset)
        writes = task.state.take_writes()
        return PartitionRound(
            tracked, PartitionOutput(), raw.timestamp_ms, clock.applied, writes, []
        )

    def _send_outputs(self, task: PartitionTask, done: PartitionRound) -> InFlight:
        """The enriched events, dead letters, re-keyed events, closed sessions, partials and
        progress of one partition's batch, plus its dedup records: the round in flight."""
        sent = InFlight(
            BatchFigures.of(done.tracked, done.analysed),
            done.applied,
            done.state_writes,
            done.seen_writes,
            Delivery(),
            Delivery(),
        )
        outputs = sent.outputs
        send = self.outbox.send
        partition = task.partition
        tracked, analysed = done.tracked, done.analysed
        enriched = TOPICS.enriched
        for item in tracked.timeline:
            if type(item) is Arrival:
                send(outputs, enriched, item.user.encode(), item.payload, partition)
        for dead in tracked.dead_letters:
            send(outputs, TOPICS.dead_letters, None, _json(dead))
        for moved in tracked.rekeyed:
            send(outputs, TOPICS.user_events, moved.key, moved.value, None, moved.timestamp_ms)
        for session in analysed.sessions:  # a large one as chunks (analytics.record_chunks)
            key = session["user_id"].encode()
            for record in record_chunks.encode(session_record(session), SESSION):
                send(outputs, TOPICS.session_metrics, key, record, partition)
        for partial in analysed.partials:
            message = {"type": "partial", "partition": partition, **partial}
            for record in record_chunks.encode(message, PARTIAL):
                send(outputs, TOPICS.kpi_partials, None, record, 0)
        for share in analysed.journeys:  # SPEC 7-9 shares, before the progress that follows
            send(outputs, TOPICS.kpi_partials, None, _json({"partition": partition, **share}), 0)
        clock = task.state.clock
        if task.progress_due(bool(analysed.partials or analysed.journeys)):
            progress = {
                "type": "progress",
                "partition": partition,
                "wm": clock.wm,
                "late": clock.late,
                "arrived": done.arrived_ms,
            }
            send(outputs, TOPICS.kpi_partials, None, _json(progress), 0)
        for erased in done.erased:  # after the user's records (module analytics.erasure)
            key = erased.user_id.encode()
            send(outputs, enriched, key, None, partition)
            send(outputs, TOPICS.session_metrics, key, None, partition)
        sent.erased = done.erased
        for key, value in done.seen_writes:
            send(sent.seen, self._seen_changelog, key, value, partition)
        return sent


def _merge(rounds: list[PartitionRound]) -> PartitionRound:
    """Rounds of one partition taken one message at a time, as one round."""
    merged = PartitionRound(TrackedBatch(), PartitionOutput(), 0, -1, [], [])
    for done in rounds:
        merged.tracked.timeline += done.tracked.timeline
        merged.tracked.dead_letters += done.tracked.dead_letters
        merged.tracked.rekeyed += done.tracked.rekeyed
        merged.tracked.seen.update(done.tracked.seen)
        merged.tracked.duplicates += done.tracked.duplicates
        merged.tracked.failures += done.tracked.failures
        merged.analysed.partials += done.analysed.partials
        merged.analysed.sessions += done.analysed.sessions
        merged.analysed.late_events += done.analysed.late_events
        merged.arrived_ms = max(merged.arrived_ms, done.arrived_ms)
        merged.applied = max(merged.applied, done.applied)
        merged.state_writes += done.state_writes
        merged.seen_writes += done.seen_writes
        merged.erased += done.erased
    return merged


def tune_garbage_collector(threshold: int) -> None:
    """Fewer collections of the young generation, and none of what start-up created.

    Every event allocates a few short-lived dicts; with Python's default threshold (700) the
    collector ran thousands of times a second and, as the decoded state grew, each older
    generation pass walked all of it: about a quarter of the hot path's time on the compare
    workload (docs/performance.md). The state holds no reference cycles to wait for."""
    gc.freeze()
    if threshold > 0:
        gc.set_threshold(threshold, 50, 1000)


def _json(value: Any) -> bytes:
    return wide_json.dumps(value)


tracker: BehaviorTracker | None = None
"""The running service (set when the worker starts it)."""


def owned_partitions() -> list[int]:
    """The user-events partitions this worker is tracking now (for /health and metrics)."""
    return tracker.owned_partitions() if tracker is not None else []


@app.timer(interval=_engine.watermark_interval.total_seconds(), on_leader=True)  # type: ignore[untyped-decorator]
async def send_ticks() -> None:
    """Carry the wall clock into every partition, so quiet partitions close their windows."""
    producer = app.producer
    for partition in range(_engine.topic_partitions):
        await producer.send(TOPICS.user_events, None, b"", partition, None, [(TICK_HEADER, b"1")])
