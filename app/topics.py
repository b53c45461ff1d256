"""Names of every Kafka topic the pipeline reads or writes, and their creation.

Faust creates only its own internal topics (changelogs, assignor), so the topics here are
created explicitly, all with the same partition count: users partition by ``user_id`` and every
stateful stage relies on partition ``p`` of one topic holding the same users as partition ``p``
of the next.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

USER_EVENTS = "user-events"
DEAD_LETTERS = "user-events-dlq"
ENRICHED = "user-behavior-enriched"
ANALYTICS_BATCHES = "analytics-batches"
LIVE_KPIS = "live-kpis"
SESSION_METRICS = "session-metrics"
PAGE_VIEW_STATS = "page-view-stats"
TRAFFIC_STATS = "traffic-stats"

PIPELINE_TOPICS = (
    USER_EVENTS,
    DEAD_LETTERS,
    ENRICHED,
    ANALYTICS_BATCHES,
    LIVE_KPIS,
    SESSION_METRICS,
    PAGE_VIEW_STATS,
    TRAFFIC_STATS,
)

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """An existing topic has a partition count the pipeline cannot work with."""


async def ensure_topics(brokers: list[str], partitions: int) -> None:
    """Create the pipeline's topics when missing and check the partition counts of those present."""
    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(brokers), request_timeout_ms=15_000)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise KafkaConnectionError(f"cannot reach Kafka at {','.join(brokers)}: {exc}") from exc
    try:
        existing = await admin.describe_topics(list(PIPELINE_TOPICS))
        counts = {
            meta["topic"]: len(meta["partitions"])
            for meta in existing
            if meta.get("error_code", 0) == 0 and meta["partitions"]
        }
        wrong = {name: n for name, n in counts.items() if n != partitions}
        if wrong:
            raise TopicLayoutError(
                f"topics {wrong} exist with a partition count other than {partitions}; "
                "delete them or set engine.topic_partitions to match"
            )
        missing = [name for name in PIPELINE_TOPICS if name not in counts]
        if missing:
            new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s with %d partitions", missing, partitions)
    finally:
        await admin.close()
