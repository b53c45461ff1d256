"""Alert evaluation: final KPI windows → ``kpi-alerts`` (and the webhook), exactly once.

Where the final windows come from: the changelog of ``kpi-history`` (tables/history.py), one
partition holding each final KPI record the combiner published, in window order, written
after ``live-kpis`` has them. ``live-kpis`` itself spreads its windows over all partitions by
key, so a reader cannot tell "window 5 before window 4" from "window 4 not yet there"; the
changelog's single partition has them in order (a replayed combiner batch writes the same
records again, which the evaluation ignores: analytics.alerts).

Who evaluates: the member of the consumer group ``<app id>-alerts`` that is assigned that
partition; one worker at a time. When it gets it:

1. fence: ``init_transactions`` of the fixed ``transactional.id`` (agents/alert_log.py) stops
   any earlier evaluator and aborts what it left uncommitted;
2. read ``kpi-alerts`` back (committed records) and seed each rule after its last
   transition (analytics.alerts.seeded); POST those last transitions to the webhook again
   (a crash may have come before their delivery; the receiver dedupes by Idempotency-Key);
3. read the changelog from its beginning (the final windows of ``engine.history_retention``,
   longer than any rule's ``for`` windows, settings check) and evaluate; the transitions of a
   batch of records go to ``kpi-alerts`` in one transaction, then to the webhook.

The evaluation is deterministic in the window sequence, and a rule ignores windows up to its
last published transition, so a restart (or a new owner) finds exactly the transitions not yet
published. No offsets are committed: the starting point is always the whole retained history.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from mode import Service

from agents.alert_log import AlertLog, read_transitions
from agents.alert_webhook import WebhookDelivery
from analytics import wide_json
from analytics.alerts import (
    CUSTOM_PREFIX,
    KPI_FIGURES,
    AlertsState,
    evaluate,
    figure,
    latest_transitions,
    seeded,
)
from app import app, metrics
from app.kafka_security import aiokafka_kwargs, librdkafka_config
from tables.history import kpi_history

log = logging.getLogger(__name__)
_settings = app.analytics_settings
RULES = _settings.alerts.alert_rules()
WINDOW_MS = int(_settings.engine.kpi_window.total_seconds() * 1000)
RETRY_S = 1.0


def final_record(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """The final KPI record of a kpi-history changelog record; None for its other keys (the
    live record, large values' pieces) and deletions."""
    if value is None or key is None or not key.lstrip(b"-").isdigit():
        return None
    try:
        record = wide_json.loads(value)
    except orjson.JSONDecodeError:
        log.warning("alerts: kpi-history %r is not JSON; skipped", key)
        return None
    if not isinstance(record, dict) or not record.get("is_final"):
        log.warning("alerts: kpi-history %r is not a final KPI record; skipped", key)
        return None
    return record


def gauge_figures(record: dict[str, Any]) -> dict[str, float]:
    """The figures kpi_final_value shows: every SPEC 4 figure and custom KPI of the record."""
    figures = {name: figure(record, name) for name in KPI_FIGURES}
    custom = record.get("custom")
    if isinstance(custom, dict):
        figures |= {CUSTOM_PREFIX + n: figure(record, CUSTOM_PREFIX + n) for n in custom}
    return {name: value for name, value in figures.items() if value is not None}


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, evaluator: KpiAlerts) -> None:
        self.evaluator = evaluator

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.evaluator.let_go()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self.evaluator.owned = True


@app.service
class KpiAlerts(Service):
    """Evaluates ``alerts.rules`` while this worker owns them (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.owned = False
        self.alerts_state: AlertsState | None = None
        self.alert_log: AlertLog | None = None
        hook = _settings.alerts.webhook
        self.webhook = WebhookDelivery(hook) if hook is not None else None

    def let_go(self) -> None:
        if self.owned:
            log.info("alerts: no longer evaluating (partition revoked)")
        self.owned = False
        self.alerts_state = None
        metrics.kpi_final_cleared()

    async def on_stop(self) -> None:
        if self.webhook is not None:
            await self.webhook.stop()
        if self.alert_log is not None:
            self.alert_log.close()

    @Service.task
    async def _run(self) -> None:
        if not RULES:
            return
        source = kpi_history.changelog_topic.get_topic_name()
        engine = _settings.engine
        consumer = AIOKafkaConsumer(
            **aiokafka_kwargs(_settings),
            group_id=f"{app.conf.id}-alerts",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5_000,  # the changelog may be created after we subscribe
            session_timeout_ms=int(engine.session_timeout.total_seconds() * 1000),
            heartbeat_interval_ms=int(engine.heartbeat_interval.total_seconds() * 1000),
        )
        await consumer.start()
        consumer.subscribe([source], listener=_Ownership(self))
        tp = TopicPartition(source, 0)
        try:
            while not self.should_stop:
                try:
                    await self._step(consumer, tp)
                except Exception:
                    log.exception("alerts: evaluation failed; starting again from kpi-alerts")
                    self.alerts_state = None
                    await asyncio.sleep(RETRY_S)
        finally:
            await consumer.stop()

    async def _step(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        wait_ms = int(_settings.engine.batch_within.total_seconds() * 1000)
        batches = await consumer.getmany(timeout_ms=wait_ms, max_records=1000)
        if not self.owned:
            return
        if self.alerts_state is None:
            await self._take(consumer, tp)
            return
        transitions = []
        for record in batches.get(tp, []):
            final = final_record(record.key, record.value)
            if final is not None:
                transitions += evaluate(RULES, self.alerts_state, final)
                metrics.kpi_final(gauge_figures(final))
        if transitions:
            assert self.alert_log is not None
            await self.alert_log.publish(transitions)
            log.info("alerts: %s", ", ".join(f"{t.rule} {t.state}" for t in transitions))
            if self.webhook is not None:
                self.webhook.send(transitions)

    async def _take(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Steps 1-2 of the module docstring, then read the changelog from its beginning."""
        if self.alert_log is not None:
            self.alert_log.close()
        topic = app.topic_names.kpi_alerts
        self.alert_log = AlertLog(librdkafka_config(_settings), topic, f"{app.conf.id}-kpi-alerts")
        await self.alert_log.fence()
        published = latest_transitions(await read_transitions(aiokafka_kwargs(_settings), topic))
        if self.webhook is not None:
            self.webhook.send(published[rule.name] for rule in RULES if rule.name in published)
        await consumer.seek_to_beginning(tp)
        self.alerts_state = seeded(WINDOW_MS, published, RULES)
        log.info("alerts: evaluating %d rules, %d with transitions", len(RULES), len(published))
