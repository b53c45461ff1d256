"""SPEC sections 1-2 over one batch of raw ``user-events`` messages.

The behaviour tracker agent hands a batch of messages from one partition to
:func:`track_batch` and writes out what it returns; nothing here touches Kafka.

Repeated event_ids. An event counts once when its event_id arrives again for the same user
within ``dedup_window`` of the first arrival (measured between the messages' ingestion times).
The record of a first arrival keeps the offset of its message, so a message that is merely
*re-delivered* after a crash (same offset) is told apart from a real repeat (another offset):
the re-delivery is processed again, which makes the tracker at-least-once towards the enriched
topic, and consumers of that topic drop repeats by event_id.

Keys. Everything downstream relies on partition p holding the same users in every topic, so an
event whose message key is not its user_id (a producer that keyed it differently or not at all)
is not processed where it landed: it is produced again to ``user-events`` keyed by user_id,
with its event_id and timestamp fixed (an absent timestamp becomes its first ingestion time),
and processed when it arrives there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from analytics.dead_letters import bounded_dead_letter
from analytics.enrichment import DEFAULT_RULES, EnrichmentRules, enrich
from analytics.privacy import protect_ip
from analytics.rows import Arrival, Tick, row_of
from analytics.validation import (
    MAX_EVENT_BYTES,
    EventRejected,
    FieldError,
    decode_json,
    validate_payload,
)

_EVENT_ID_NAMESPACE = uuid.UUID("6f1c4a52-3b0e-4c8e-9a57-0d8c2f6e5b11")


class RawMessage(NamedTuple):
    """One Kafka message as the tracker needs it."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int
    tick: bool = False
    erase: bool = False
    """An erasure request (analytics.erasure): no event, handled in a round of its own."""


class SeenEvent(NamedTuple):
    """The dedup record of an event's first arrival."""

    received_ms: int
    offset: int

    def encode(self) -> bytes:
        return b"%d:%d" % (self.received_ms, self.offset)

    @classmethod
    def decode(cls, data: bytes) -> SeenEvent:
        received, _, offset = data.partition(b":")
        return cls(int(received), int(offset))


@dataclass(frozen=True, slots=True)
class TrackerRules:
    """The configurable parts of sections 1-2."""

    enrichment: EnrichmentRules = DEFAULT_RULES
    dedup_window_ms: int = 24 * 3600 * 1000
    future_tolerance_ms: int = 10 * 60 * 1000


@dataclass(slots=True)
class TrackedBatch:
    """What one batch produces: each list in message order.

    ``timeline`` holds the enriched events and the ticks in offset order, for the stateful
    stage (analytics.partition).
    """

    timeline: list[Arrival | Tick] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    rekeyed: list[RawMessage] = field(default_factory=list)
    seen: dict[bytes, SeenEvent] = field(default_factory=dict)
    duplicates: int = 0
    failures: int = 0
    """Events the tracker failed on unexpectedly (dead-lettered with the error)."""


def dedup_key(user_id: str, event_id: str) -> bytes:
    """Table key of (user_id, event_id); the length prefix keeps it unambiguous."""
    return f"{len(user_id)}:{user_id}{event_id}".encode()


def fallback_event_id(topic: str, partition: int, offset: int) -> str:
    """The event_id of a topic event that has none: stable across re-deliveries of the message."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{topic}/{partition}/{offset}"))


def track_batch(
    messages: Iterable[RawMessage],
    *,
    topic: str,
    lookup: Callable[[bytes], SeenEvent | None],
    rules: TrackerRules,
) -> TrackedBatch:
    """Validate, drop repeats and enrich a batch of messages from one partition.

    No message can stop the batch: one that fails validation, cannot be encoded, or makes
    the tracker fail in a way nobody foresaw goes to the dead letters with its error."""
    out = TrackedBatch()
    timeline = out.timeline
    for message in messages:
        if message.tick:
            timeline.append(Tick(message.offset, message.timestamp_ms))
            continue
        if message.erase:  # not an event: analytics.erasure handles it, neither counted
            continue  # nor dead-lettered
        try:
            _track(message, out, topic, lookup, rules)
        except EventRejected as rejected:
            errors = rejected.errors
        except Exception as exc:  # a bug must not stop the partition: the event is kept
            errors = [FieldError("event", f"could not be processed: {exc!r}")]
            out.failures += 1
        else:
            continue
        out.dead_letters.append(
            bounded_dead_letter(
                message.value,
                errors,
                source="topic",
                received_ms=message.timestamp_ms,
                ip_mode=rules.enrichment.ip_mode,
                topic=topic,
                partition=message.partition,
                offset=message.offset,
            )
        )
    return out


def _track(
    message: RawMessage,
    out: TrackedBatch,
    topic: str,
    lookup: Callable[[bytes], SeenEvent | None],
    rules: TrackerRules,
) -> None:
    """One event message: appended to ``out`` only once everything about it succeeded."""
    value = message.value
    if len(value) > MAX_EVENT_BYTES:
        raise EventRejected([FieldError("event", f"{len(value)} bytes, over {MAX_EVENT_BYTES}")])
    event, ts_ms = validate_payload(
        value,
        received_at_ms=message.timestamp_ms,
        default_event_id="",  # never valid input: replaced below
        future_tolerance_ms=rules.future_tolerance_ms,
    )
    if not event["event_id"]:
        event["event_id"] = fallback_event_id(topic, message.partition, message.offset)
    user_id: str = event["user_id"]
    user_key = user_id.encode()
    if message.key != user_key:
        obj = decode_json(value)
        fixed = {**obj, "event_id": event["event_id"], "timestamp": event["timestamp"]}
        if event["ip_address"] is not None:  # SPEC 10 holds for the re-keyed copy too
            fixed["ip_address"] = protect_ip(event["ip_address"], rules.enrichment.ip_mode)
        moved = RawMessage(user_key, _encode(fixed), -1, -1, message.timestamp_ms)
        out.rekeyed.append(moved)
        return
    key = dedup_key(user_id, event["event_id"])
    seen = out.seen.get(key) or lookup(key)
    if (
        seen is not None
        and seen.offset != message.offset
        and message.timestamp_ms - seen.received_ms <= rules.dedup_window_ms
    ):
        out.duplicates += 1
        return
    enriched = enrich(event, rules.enrichment, ts_ms)
    payload = _encode(enriched)
    row = row_of(enriched, ts_ms)
    if seen is None or seen.offset != message.offset:
        out.seen[key] = SeenEvent(message.timestamp_ms, message.offset)
    out.timeline.append(
        Arrival(message.offset, message.timestamp_ms, enriched, row, payload, user_id)
    )


def _encode(value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EventRejected([FieldError("event", f"cannot be encoded as JSON: {exc}")]) from exc
