"""Behaviour tracker: ``user-events`` → validate, drop repeats, enrich → ``user-behavior-enriched``.

Rejected events go to ``user-events-dlq``; events keyed by something other than their user_id
are produced again to ``user-events`` with the right key (see analytics.tracking). A batch's
outputs are acknowledged by the broker before the batch's offsets are, so a crash re-delivers
rather than loses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import orjson

from agents.batching import partition_batches
from analytics.enrichment import EnrichmentRules
from analytics.tracking import RawMessage, SeenEvent, TrackerRules, track_batch
from app import app
from tables.seen_events import seen_events

TOPICS = app.topic_names

log = logging.getLogger(__name__)
_settings = app.analytics_settings

RULES = TrackerRules(
    enrichment=EnrichmentRules(
        conversion_actions=frozenset(_settings.analytics.conversion_actions),
        high_value_revenue_cents=int(_settings.analytics.high_value_revenue * 100),
        high_value_duration_ms=_settings.analytics.high_value_duration_ms,
    ),
    dedup_window_ms=int(_settings.engine.dedup_window.total_seconds() * 1000),
    future_tolerance_ms=int(_settings.analytics.future_tolerance.total_seconds() * 1000),
)

user_events_topic = app.topic(TOPICS.user_events, partitions=_settings.engine.topic_partitions)


class TrackerCounters:
    """Running totals this worker has seen, for /health and the metrics."""

    enriched = 0
    dead_letters = 0
    duplicates = 0
    rekeyed = 0


def _lookup(key: bytes) -> SeenEvent | None:
    stored = seen_events.get(key)
    return SeenEvent.decode(stored) if stored is not None else None


def _to_raw(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        key=message.key,
        value=message.value,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=round(message.timestamp * 1000),
    )


@app.agent(user_events_topic, isolated_partitions=True, name="behavior-tracker")
async def behavior_tracker(stream: Any) -> None:
    """Consume raw events one partition batch at a time."""
    engine = _settings.engine
    producer = app.producer
    async for events in partition_batches(stream, engine.batch_size, engine.batch_within):
        partition = events[0].message.partition
        result = track_batch(
            (_to_raw(event) for event in events),
            topic=TOPICS.user_events,
            lookup=_lookup,
            rules=RULES,
        )
        sends: list[Awaitable[Any]] = []
        for enriched in result.enriched:
            sends.append(
                await producer.send(
                    TOPICS.enriched,
                    enriched["user_id"].encode(),
                    orjson.dumps(enriched),
                    partition,
                    None,
                    None,
                )
            )
        for dead in result.dead_letters:
            sends.append(
                await producer.send(TOPICS.dead_letters, None, orjson.dumps(dead), None, None, None)
            )
        for moved in result.rekeyed:
            sends.append(
                await producer.send(
                    TOPICS.user_events,
                    moved.key,
                    moved.value,
                    None,
                    moved.timestamp_ms / 1000,
                    None,
                )
            )
        await asyncio.gather(*sends)
        for key, seen in result.seen.items():
            seen_events[key] = seen.encode()
        TrackerCounters.enriched += len(result.enriched)
        TrackerCounters.dead_letters += len(result.dead_letters)
        TrackerCounters.duplicates += result.duplicates
        TrackerCounters.rekeyed += len(result.rekeyed)
