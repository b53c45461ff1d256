"""Operator commands on the Faust CLI: ``faust -A app tail TOPIC`` and ``faust -A app
alert-rules`` (``faust -A app migrate`` is the database sinks' own: agents/database_sinks.py)."""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.cli import argument, option

from analytics.privacy import scrub_text
from app import app
from app.alert_rules_export import rules_yaml
from app.kafka_security import aiokafka_kwargs


@app.command(
    argument("topic"),
    option("--last", type=int, default=10, help="How many of the newest records per partition."),
    option("--follow/--no-follow", default=False, help="Keep printing new records."),
)
async def tail(self: object, topic: str, last: int, follow: bool) -> None:
    """Print the newest records of a topic (prefix added), one JSON value a line; addresses
    in them are anonymised or removed by ``privacy.ip`` (``user-events`` holds what its
    producers wrote, which may be full addresses)."""
    ip_mode = app.analytics_settings.privacy.ip
    full = app.analytics_settings.engine.topic_prefix + topic
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(app.analytics_settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(full)
        if not partitions:
            print(f"no topic {full!r}", file=sys.stderr)
            return
        tps = [TopicPartition(full, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - last))
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    value = record.value.decode("utf-8", "replace") if record.value else ""
                    print(scrub_text(value, ip_mode), flush=True)
            if not follow and all(await _at_end(consumer, tps, ends)):
                return
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


async def _at_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> list[bool]:
    return [await consumer.position(tp) >= ends[tp] for tp in tps]


async def topic_partitions(topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(app.analytics_settings))
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
        return [p["partition"] for p in meta["partitions"]] if meta["error_code"] == 0 else []
    finally:
        await admin.close()


@app.command(name="alert-rules")
async def alert_rules(self: object) -> None:
    """Print the alert rules (alerts.rules) as a Prometheus alerting-rules file."""
    settings = app.analytics_settings
    print(
        rules_yaml(
            settings.alerts.alert_rules(),
            settings.metrics.namespace,
            settings.engine.kpi_window,
            f"{settings.application.name}-kpi-alerts",
        ),
        end="",
    )
