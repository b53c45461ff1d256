"""What ``POST /ingest`` and ``POST /ingest/batch`` decide, as plain functions (SPEC section 1).

The views only read the body, call these and produce the results. Accepted events go to
``user-events`` as the client sent them plus their event_id; the message timestamp is the
ingestion time, which the tracker uses for absent timestamps and the future-clamp, so HTTP and
topic events are judged by the same rule. Their ``ip_address`` is already anonymised, dropped
or kept by ``privacy.ip`` (SPEC 10), as are the addresses in dead letters: a full address
reaches no topic through this door.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from analytics.dead_letters import RAW_LIMIT, bounded_dead_letter
from analytics.privacy import IpMode, protect_ip
from analytics.validation import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    EventRejected,
    FieldError,
    decode_json,
    validate_batch_body,
    validate_event,
)

DEAD_LETTER_RAW_LIMIT = RAW_LIMIT


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event to produce: its key, its value and its event_id."""

    key: bytes
    value: bytes
    event_id: str


@dataclass(slots=True)
class IngestOutcome:
    """Everything one request leads to: an HTTP answer, events to produce, dead letters."""

    status: int
    body: dict[str, Any]
    accepted: list[Accepted] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def _accept(obj: Any, received_ms: int, ip_mode: IpMode) -> Accepted:
    event = validate_event(obj, received_at_ms=received_ms, default_event_id=str(uuid.uuid4()))
    sent = {**obj, "event_id": event["event_id"]}
    if event["ip_address"] is not None:
        sent["ip_address"] = protect_ip(event["ip_address"], ip_mode)
    value = orjson.dumps(sent)
    return Accepted(key=event["user_id"].encode(), value=value, event_id=event["event_id"])


def _dead(
    raw: bytes,
    errors: list[FieldError],
    source: str,
    received_ms: int,
    ip_mode: IpMode,
    size: int | None = None,
) -> dict[str, Any]:
    """A dead letter keeping at most DEAD_LETTER_RAW_LIMIT bytes of a payload of ``size``."""
    return bounded_dead_letter(
        raw, errors, source=source, received_ms=received_ms, size=size, ip_mode=ip_mode
    )


def _rejected_body(errors: list[FieldError]) -> dict[str, Any]:
    return {
        "error": "; ".join(f"{e.field}: {e.message}" for e in errors),
        "errors": [e.as_dict() for e in errors],
    }


def too_large(
    size: int,
    limit: int,
    source: str,
    raw: bytes,
    received_ms: int,
    ip_mode: IpMode = "anonymize",
) -> IngestOutcome:
    """413 for a body over its limit; the (truncated) body still goes to the dead letters."""
    errors = [FieldError("body", f"{size} bytes, over the limit of {limit}")]
    dead = _dead(raw, errors, source, received_ms, ip_mode, size=max(size, len(raw)))
    return IngestOutcome(413, _rejected_body(errors), [], [dead])


def unreadable(
    why: str, source: str, raw: bytes, received_ms: int, ip_mode: IpMode = "anonymize"
) -> IngestOutcome:
    """400 for a body whose Content-Encoding cannot be undone (web/request_body.py); the dead
    letter keeps what was decoded before the error."""
    errors = [FieldError("body", why)]
    dead = _dead(raw, errors, source, received_ms, ip_mode)
    return IngestOutcome(400, _rejected_body(errors), [], [dead])


def ingest_single(
    body: bytes, received_ms: int, ip_mode: IpMode = "anonymize", source: str = "http"
) -> IngestOutcome:
    """One event: 202 with its event_id, or 400/413 naming the problem. ``source`` names
    the door in dead letters (``faust -A app replay`` passes ``replay``)."""
    if len(body) > MAX_EVENT_BYTES:
        return too_large(len(body), MAX_EVENT_BYTES, source, body, received_ms, ip_mode)
    try:
        accepted = _accept(decode_json(body), received_ms, ip_mode)
    except EventRejected as rejected:
        return IngestOutcome(
            400,
            _rejected_body(rejected.errors),
            [],
            [_dead(body, rejected.errors, source, received_ms, ip_mode)],
        )
    return IngestOutcome(202, {"event_id": accepted.event_id}, [accepted])


def ingest_batch(body: bytes, received_ms: int, ip_mode: IpMode = "anonymize") -> IngestOutcome:
    """Up to 1,000 events checked one by one: the valid ones accepted, the others listed."""
    if len(body) > MAX_BATCH_BYTES:
        return too_large(len(body), MAX_BATCH_BYTES, "http-batch", body, received_ms, ip_mode)
    try:
        obj = decode_json(body)
        events = obj.get("events") if isinstance(obj, dict) else None
        if isinstance(events, list) and len(events) > MAX_BATCH_EVENTS:
            errors = [
                FieldError("events", f"{len(events)} events, over the limit of {MAX_BATCH_EVENTS}")
            ]
            return IngestOutcome(
                413,
                _rejected_body(errors),
                [],
                [_dead(body, errors, "http-batch", received_ms, ip_mode)],
            )
        items = validate_batch_body(obj)
    except EventRejected as rejected:
        return IngestOutcome(
            400,
            _rejected_body(rejected.errors),
            [],
            [_dead(body, rejected.errors, "http-batch", received_ms, ip_mode)],
        )
    outcome = IngestOutcome(202, {})
    rejected_items: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            outcome.accepted.append(_accept(item, received_ms, ip_mode))
        except EventRejected as rejected:
            rejected_items.append(
                {"index": index, "errors": [e.as_dict() for e in rejected.errors]}
            )
            try:
                raw, whole = orjson.dumps(item), False
            except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads 1,024)
                raw, whole = body, True
            dead = _dead(raw, rejected.errors, "http-batch", received_ms, ip_mode)
            dead["batch_index"] = index
            if whole:  # the raw payload is the whole batch: batch_index says which event
                dead["raw_is_batch"] = True
            outcome.dead_letters.append(dead)
    if not outcome.accepted:
        outcome.status = 400
    outcome.body = {
        "accepted": [a.event_id for a in outcome.accepted],
        "rejected": rejected_items,
    }
    return outcome
