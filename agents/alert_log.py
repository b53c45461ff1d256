"""The ``kpi-alerts`` topic: read back (committed transitions only) and written in transactions.

Exactly once, also across a crash: transitions are written by a transactional producer whose
``transactional.id`` is fixed per app (``<app id>-kpi-alerts``). Whoever starts evaluating
calls ``init_transactions`` first, which fences any earlier instance (a worker killed with -9,
or one that lost its partition but still runs) and aborts the transaction it left open; only
then is the topic read back, with ``read_committed``, so what was read is exactly what
readers will ever see. agents/kpi_alerts.py continues after it (analytics.alerts.seeded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaException, Producer

from analytics.alerts import Transition

log = logging.getLogger(__name__)
PARTITION = 0  # kpi-alerts has one partition (app/topics.py)
TRANSACTION_TIMEOUT_S = 30.0


class AlertLog:
    """Writes transitions to ``kpi-alerts``, each batch in one transaction."""

    def __init__(self, config: dict[str, Any], topic: str, transactional_id: str) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                **config,
            }
        )

    async def fence(self) -> None:
        """Become the only writer: earlier instances are fenced, their open work aborted."""
        await asyncio.to_thread(self._producer.init_transactions, TRANSACTION_TIMEOUT_S)

    async def publish(self, transitions: Sequence[Transition]) -> None:
        """All of ``transitions`` committed, or (raising) none of them."""
        await asyncio.to_thread(self._publish, transitions)

    def _publish(self, transitions: Sequence[Transition]) -> None:
        producer = self._producer
        producer.begin_transaction()
        try:
            for transition in transitions:
                producer.produce(
                    self.topic,
                    orjson.dumps(transition.record()),
                    transition.rule.encode(),
                    PARTITION,
                )
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args and exc.args[0].txn_requires_abort():
                producer.abort_transaction(TRANSACTION_TIMEOUT_S)
            raise

    def close(self) -> None:
        self._producer.flush(5.0)


def decode_transition(value: bytes | None) -> Transition | None:
    """A kpi-alerts record's transition; None (logged) for anything else."""
    try:
        return Transition.of_record(orjson.loads(value or b""))
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        log.warning("kpi-alerts: a record that is no transition (%r): %.200r", exc, value)
        return None


async def read_transitions(client: dict[str, Any], topic: str) -> list[Transition]:
    """Every committed transition on ``topic``, in order (``client``: aiokafka options)."""
    consumer = AIOKafkaConsumer(
        **client, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, PARTITION)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        transitions: list[Transition] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                transition = decode_transition(record.value)
                if transition is not None:
                    transitions.append(transition)
        return transitions
    finally:
        await consumer.stop()
