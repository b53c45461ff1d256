"""The combiner: ``kpi-partials`` (one partition) → ``live-kpis``, ``page-view-stats``,
``traffic-stats``. It adds up the partitions' shares of each window (analytics.combiner) and
keeps the final ones for the web API (tables/history.py).

It runs on the worker where Faust's assignor makes ``combiner-state`` active (the history
tables are co-partitioned with it), and reads its partition with a librdkafka consumer, as the
hot path does (agents/behavior_tracker.py), not with a Faust stream: under load a partial took
one to five seconds through Faust's consumer thread, conductor, stream buffer and producer,
each hop a turn of an event loop the hot path keeps busy, where a window's final figures are
due within 100 ms of its close (docs/performance.md).

A batch, in this order (the commit order of docs/architecture.md, "Exactness"):

1. decode and check each message (analytics.partials); one it cannot use goes to
   ``kpi-partials-dlq`` with its errors, the rest are combined; should the combination fail
   (a bug), the batch is folded again one message at a time from the saved state and the
   messages it fails on go to the same topic;
2. produce the figures and dead letters, and wait until the broker has them;
3. stage the state (with the offset it has applied) and the history's changes, produce their
   changelog records, wait for those, and write RocksDB (tables/staged_table.py).

A crash anywhere re-reads from the offset after the saved state's ``applied``; the figures
are published again, identically, and every consumer takes a repeat as an overwrite. A batch
the broker refuses is read again after a pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mode import Service

from agents.kafka_io import Delivery, InputReader, Outbox
from analytics import wide_json
from analytics.combiner import CombinerOutput, CombinerRules, CombinerState, combine, combine_each
from analytics.dead_letters import bounded_dead_letter
from analytics.partials import PartialLimits, PartialRejected, decode_message
from analytics.validation import FieldError
from app import app, faust_compat, metrics
from app.kafka_security import librdkafka_config
from tables import large_values
from tables.combiner_state import STATE_KEY, combiner_state, decode_state
from tables.history import HistoryTables, HistoryWriter, kpi_history, page_history, traffic_history
from tables.rocksdb_store import RocksStore
from tables.staged_table import StagedTable

log = logging.getLogger(__name__)
TOPICS = app.topic_names
_engine = app.analytics_settings.engine
_journeys = app.analytics_settings
RULES = CombinerRules(
    partitions=_engine.topic_partitions,
    window_ms=int(_engine.kpi_window.total_seconds() * 1000),
    grace_ms=int(_engine.grace.total_seconds() * 1000),
    funnels=app.analytics_settings.funnels,
    experiments=_journeys.experiments.spec() if _journeys.experiments.enabled else None,
    cohorts=_journeys.cohorts.spec() if _journeys.cohorts.enabled else None,
    custom_kpis=app.analytics_settings.custom_kpis,
)
LIMITS = PartialLimits(partitions=RULES.partitions, window_ms=RULES.window_ms)
PARTITION = 0  # kpi-partials and the combiner's tables have one partition
RETRY_S = 1.0
STOP_TIMEOUT_S = 30.0

Record = tuple[str, bytes | None, Any, int | None]
"""(topic, key, value, partition): a value that is not bytes is sent as JSON."""


@dataclass(frozen=True)
class Received:
    """A kpi-partials message as read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


@dataclass
class CombinedBatch:
    """What a batch produces: the records to publish, and the state after it."""

    records: list[Record] = field(default_factory=list)
    out: CombinerOutput = field(default_factory=CombinerOutput)
    state: CombinerState | None = None
    """None when the batch held nothing new (all of it applied already)."""


def combine_received(state: CombinerState, batch: Sequence[Received]) -> CombinedBatch:
    """Steps 1 and 2's records for a batch: pure, over the state saved before it (which is
    changed in place)."""
    applied = state.get("applied")
    fresh = [m for m in batch if applied is None or m.offset > applied]
    if not fresh:
        return CombinedBatch()
    messages: list[dict[str, Any]] = []
    used: list[Received] = []
    dead: list[dict[str, Any]] = []
    for received in fresh:
        try:
            messages.append(decode_message(received.value, LIMITS))
            used.append(received)
        except PartialRejected as rejected:
            dead.append(partial_dead_letter(received, rejected.errors))
    before = wide_json.dumps(state)
    with metrics.kpi_calculation():
        out, failed = combine_batch(state, messages, before)
    dead += [
        partial_dead_letter(used[index], [FieldError("message", error)]) for index, error in failed
    ]
    if dead:
        log.warning("combiner: %d records to %s", len(dead), TOPICS.partial_dead_letters)
        metrics.partials_dead_lettered(len(dead))
    records: list[Record] = [(TOPICS.partial_dead_letters, None, d, None) for d in dead]
    outputs = (
        (out.kpis, TOPICS.live_kpis, ("window_start",)),
        (out.pages, TOPICS.page_view_stats, ("window_start", "page")),
        (out.traffic, TOPICS.traffic_stats, ("window_start", "dimension", "value")),
        (out.funnels, TOPICS.funnel_stats, ("funnel", "day")),
        (out.experiments, TOPICS.experiment_stats, ("experiment", "variant")),
        (out.cohorts, TOPICS.cohort_stats, ("cohort", "day_offset")),
    )
    for rows, topic, key_fields in outputs:  # keyed by what a row replaces (its identity)
        for row in rows:
            key = "|".join(str(row[name]) for name in key_fields).encode()
            records.append((topic, key, row, None))
    state["applied"] = fresh[-1].offset
    return CombinedBatch(records, out, state)


def combine_batch(
    state: CombinerState, messages: list[dict[str, Any]], before: bytes
) -> tuple[CombinerOutput, list[tuple[int, str]]]:
    """``combine`` the batch; if that fails, again one message at a time from the state as
    it was (``before``, its JSON), with the messages it fails on."""
    try:
        return combine(state, messages, RULES, live=True), []
    except Exception:
        log.exception("combiner: a batch failed; folding its messages one at a time")
    state.clear()
    state.update(wide_json.loads(before))
    return combine_each(state, messages, RULES, live=True)


def partial_dead_letter(received: Received, errors: list[FieldError]) -> dict[str, Any]:
    """The kpi-partials-dlq record of a message: its payload, the errors, where and when."""
    return bounded_dead_letter(
        received.value,
        errors,
        source="kpi-combiner",
        received_ms=received.timestamp_ms,
        topic=received.topic,
        partition=received.partition,
        offset=received.offset,
    )


@app.service
class KpiCombiner(Service):
    """Reads kpi-partials while this worker owns the combiner (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = librdkafka_config(app.analytics_settings)
        self.reader = InputReader(config, f"{app.conf.id}-kpi-partials")
        self.outbox = Outbox(config)
        self.history = HistoryWriter(int(_engine.history_retention.total_seconds() * 1000))
        self.combined_state: CombinerState | None = None
        self._batch = asyncio.Lock()
        self._owned = asyncio.Event()
        self._changelog = combiner_state.changelog_topic.get_topic_name()
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self._on_recovered)  # type: ignore[arg-type]

    async def on_started(self) -> None:
        if not app.rebalancing and faust_compat.tables_recovered(app):
            await self._on_recovered(app)

    async def on_stop(self) -> None:
        await self._let_go()
        self.outbox.close()
        self.reader.close()

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        await self._let_go()

    async def _let_go(self) -> None:
        """Let the running batch finish (or give it up: it is read again), then stop reading."""
        self._owned.clear()
        try:
            await asyncio.wait_for(self._batch.acquire(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("the combiner's batch did not finish; it will be read again")
            self._batch = asyncio.Lock()
            await self._batch.acquire()
        try:
            if self.combined_state is not None:
                self.reader.unassign(TOPICS.kpi_partials, [PARTITION])
                self.combined_state = None
        finally:
            self._batch.release()

    async def _on_recovered(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Tables are recovered: start reading if the combiner's state is active here."""
        owned = PARTITION in faust_compat.active_partitions(app, self._changelog)
        async with self._batch:
            if not owned or self.combined_state is not None:
                return
            self.combined_state = self._load()
            applied = self.combined_state.get("applied")
            self.reader.assign(
                TOPICS.kpi_partials, {PARTITION: None if applied is None else applied + 1}
            )
            self._owned.set()
        log.info("combining kpi-partials from offset %s", "0" if applied is None else applied + 1)

    def _load(self) -> CombinerState:
        return decode_state(large_values.get(RocksStore.of(combiner_state, PARTITION), STATE_KEY))

    @Service.task
    async def _run(self) -> None:
        wait_s = _engine.batch_within.total_seconds()
        while not self.should_stop:
            await self._owned.wait()
            async with self._batch:
                if self.combined_state is None:
                    continue
                try:
                    await self._step(wait_s)
                except Exception:
                    log.exception("combiner: a batch failed; reading it again")
                    self.combined_state = self._load()
                    applied = self.combined_state.get("applied")
                    self.reader.seek(
                        TOPICS.kpi_partials, PARTITION, None if applied is None else applied + 1
                    )
                    await asyncio.sleep(RETRY_S)
            await asyncio.sleep(0)

    async def _step(self, wait_s: float) -> None:
        messages = await self.reader.poll(_engine.batch_size, wait_s)
        if not messages or self.combined_state is None:
            return
        batch = [
            Received(
                m.topic() or "",
                m.partition() or 0,
                m.offset() or 0,
                m.timestamp()[1],
                m.value() or b"",
            )
            for m in messages
        ]
        combined = combine_received(self.combined_state, batch)
        if combined.state is None:
            return
        outputs = Delivery()
        for topic, key, value, partition in combined.records:
            payload = value if isinstance(value, bytes) else wide_json.dumps(value)
            self.outbox.send(outputs, topic, key, payload, partition)
        await self.outbox.settle([outputs])
        history = [StagedTable(t) for t in (kpi_history, page_history, traffic_history)]
        self.history.record(combined.out, HistoryTables(*history))
        state = StagedTable(combiner_state)
        # the partials of open windows hold their pages: in pieces when large (large_values)
        large_values.put(state, STATE_KEY, wide_json.dumps(combined.state))
        await self._commit([state, *history])
        self.reader.commit(TOPICS.kpi_partials, {PARTITION: batch[-1].offset + 1})

    async def _commit(self, tables: Sequence[StagedTable]) -> None:
        """The staged changes made durable: changelog records, acknowledged, then RocksDB."""
        writes = [(table, table.take()) for table in tables]
        writes = [(table, changes) for table, changes in writes if changes]
        deliveries = []
        for table, changes in writes:
            delivery = Delivery()
            topic = table.table.changelog_topic.get_topic_name()
            for key, value in changes:
                self.outbox.send(delivery, topic, key, value, PARTITION)
            deliveries.append(delivery)
        await self.outbox.settle(deliveries)
        for (table, changes), delivery in zip(writes, deliveries, strict=True):
            RocksStore.of(table.table, PARTITION).write(changes, delivery.last_offset)
