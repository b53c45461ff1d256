"""``GET /api/alerts``: the configured rules, the firing alerts and the recent transitions.

Every worker follows ``kpi-alerts`` itself (committed records only, from the beginning: the
topic holds transitions, a few a day), so any worker answers without routing, with what the
topic says, which is what the webhook and every other reader see. An alert is firing while the
last transition of its rule is ``firing``; rules no longer configured are left out.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust import web

from agents.alert_log import PARTITION, decode_transition
from analytics.alerts import AlertRule, Transition, firing
from app import app
from app.kafka_security import aiokafka_kwargs
from web.api_params import BadParameter, no_parameters
from web.history_views import bad_parameter, query_items

log = logging.getLogger(__name__)
RULES = app.analytics_settings.alerts.alert_rules()
RECENT = 50  # transitions GET /api/alerts lists, newest first


class AlertsFollower:
    """What ``kpi-alerts`` says so far: the last transition per rule, and the recent ones."""

    def __init__(self, rules: tuple[AlertRule, ...]) -> None:
        self.names = {rule.name for rule in rules}
        self.latest: dict[str, Transition] = {}
        self.recent: deque[Transition] = deque(maxlen=RECENT)
        self.caught_up = False

    def take(self, transition: Transition) -> None:
        if transition.rule in self.names:
            self.latest[transition.rule] = transition
            self.recent.append(transition)

    def answer(self) -> dict[str, Any]:
        return {
            "rules": [rule_text(rule) for rule in RULES],
            "firing": [t.record() for t in firing(self.latest)],
            "recent": [t.record() for t in reversed(self.recent)],
            "caught_up": self.caught_up,
        }


def rule_text(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "metric": rule.metric,
        "comparator": rule.comparator,
        "threshold": rule.threshold,
        "for": rule.windows,
    }


follower = AlertsFollower(RULES)


@app.task  # type: ignore[untyped-decorator]
async def follow_alerts() -> None:
    """Read ``kpi-alerts`` into ``follower`` while the worker runs (only with rules)."""
    if not RULES:
        follower.caught_up = True
        return
    tp = TopicPartition(app.topic_names.kpi_alerts, PARTITION)
    consumer = AIOKafkaConsumer(
        **aiokafka_kwargs(app.analytics_settings),
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while True:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                transition = decode_transition(record.value)
                if transition is not None:
                    follower.take(transition)
            if not follower.caught_up and await consumer.position(tp) >= end:
                follower.caught_up = True
    finally:
        await consumer.stop()


@app.page("/api/alerts")
class AlertsView(web.View):
    """The alert rules and their state, as ``kpi-alerts`` has it."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            no_parameters(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)
        return self.json(follower.answer())
