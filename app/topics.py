"""Names of every Kafka topic the pipeline reads or writes, and their creation.

Faust creates only its own internal topics (changelogs, assignor), so the topics here are
created explicitly, all with the same partition count: users partition by ``user_id`` and every
stateful stage relies on partition ``p`` of one topic holding the same users as partition ``p``
of the next.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The pipeline's topics; ``engine.topic_prefix`` lets tests share one broker."""

    user_events: str = "user-events"
    dead_letters: str = "user-events-dlq"
    enriched: str = "user-behavior-enriched"
    kpi_partials: str = "kpi-partials"
    partial_dead_letters: str = "kpi-partials-dlq"
    live_kpis: str = "live-kpis"
    session_metrics: str = "session-metrics"
    page_view_stats: str = "page-view-stats"
    traffic_stats: str = "traffic-stats"
    funnel_stats: str = "funnel-stats"
    experiment_stats: str = "experiment-stats"
    cohort_stats: str = "cohort-stats"
    sink_dead_letters: str = "sink-dlq"
    kpi_alerts: str = "kpi-alerts"

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        return cls(**{f.name: prefix + f.default for f in fields(cls)})  # type: ignore[operator]

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

    def topic_configs(self, name: str) -> dict[str, str]:
        """user-events is stamped by the broker on append: the ingestion time of an event
        without a timestamp, and a clock that is comparable across partitions (the combiner
        relies on it to tell when an empty partition has caught up)."""
        if name == self.user_events:
            return {"message.timestamp.type": "LogAppendTime"}
        return {}

    def partition_counts(self, partitions: int) -> dict[str, int]:
        """kpi-partials has one partition: a single combiner sees every partition's partials;
        kpi-alerts too: its transitions are read back in the order they were made."""
        single = (self.kpi_partials, self.kpi_alerts)
        return {name: 1 if name in single else partitions for name in self.all()}


log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """An existing topic has a partition count the pipeline cannot work with."""


async def ensure_topics(client: dict[str, Any], names: TopicNames, partitions: int) -> None:
    """Create the pipeline's topics when missing and check the partition counts of those present.

    ``client`` holds the admin client's connection options (app.kafka_security.aiokafka_kwargs).
    """
    wanted = names.partition_counts(partitions)
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=15_000)
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        where = f"{client['bootstrap_servers']} ({client.get('security_protocol', 'PLAINTEXT')})"
        raise KafkaConnectionError(f"cannot reach Kafka at {where}: {exc}") from exc
    try:
        present = set(await admin.list_topics()) & set(wanted)
        # describing a missing topic would auto-create it on brokers that allow that
        existing = await admin.describe_topics(sorted(present)) if present else []
        counts = {
            meta["topic"]: len(meta["partitions"])
            for meta in existing
            if meta.get("error_code", 0) == 0 and meta["partitions"]
        }
        wrong = {name: n for name, n in counts.items() if n != wanted[name]}
        if wrong:
            raise TopicLayoutError(
                f"topics {wrong} exist with partition counts other than {wanted}; "
                "delete them or set engine.topic_partitions to match"
            )
        missing = [name for name in wanted if name not in counts]
        if missing:
            new = [
                NewTopic(
                    name,
                    num_partitions=wanted[name],
                    replication_factor=1,
                    topic_configs=names.topic_configs(name),
                )
                for name in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            log.info("created topics %s", missing)
    finally:
        await admin.close()
