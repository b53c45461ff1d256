"""SPEC section 1: decode and validate one input event into its normalised form.

Hand-written checks rather than a pydantic model: each rule is a few readable lines, every
error names its field in the SPEC's words (not pydantic's generic wording), all problems are
reported at once, and no model object is built on the hot path (~100k events/s on one core).

Choices where SPEC section 1 is silent:

- ``null`` means absent for the optional fields (event_id, session_id, page, timestamp,
  duration, metadata, ip_address, user_agent, country, device); for the required user_id and
  action it is reported as ``required``. ``null`` for ``metadata.amount`` means no amount.
- Types are strict JSON types: ``"5"`` is not an integer, ``true``/``false`` are not numbers,
  ``1.0`` is not an integer for duration. Strings are never trimmed or case-folded, except
  country, which SPEC says may come in any case.
- ``""`` is a value like any other: it is allowed where SPEC's length range starts at 0
  (session_id, page, user_agent) and rejected elsewhere (event_id, ip_address, country,
  device, timestamp). An empty user_agent carries no information and is stored as ``None``.
- device is matched case-sensitively against its five lower-case values.
- ip_address is stored in canonical form (``str(ipaddress.ip_address(text))``: lower-case,
  compressed IPv6).
- timestamp: RFC 3339 with seconds required; also accepted are a space or lower-case ``t`` as
  separator, lower-case ``z`` and no offset (UTC, per SPEC). Fractions finer than a
  millisecond are truncated, a leap second ``:60`` reads as the next minute, and instants
  outside years 1-9999 UTC are rejected. Any past timestamp is accepted (late data is the
  windowing layer's business, SPEC section 6).
- metadata.amount is validated and rounded for every action, not only purchase, so that a
  stored event never carries an amount that would be rejected if its action were changed.
  Rounding is half-up on the decimal text of the number (10.005 -> 10.01), not on the binary
  float (which is 10.00499...).
- Lengths are in characters (code points); metadata size is its compact JSON in UTF-8 bytes.
- When a JSON object repeats a key, the last value wins (orjson's behaviour).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

import msgspec
import orjson
import pycountry

from analytics.timeutil import format_ts, is_canonical, parse_ts

__all__ = [
    "DEVICES",
    "FIELDS",
    "MAX_AMOUNT",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_BYTES",
    "MAX_METADATA_BYTES",
    "EventRejected",
    "FieldError",
    "amount_to_cents",
    "decode_json",
    "validate_batch_body",
    "validate_event",
    "validate_event_at",
    "validate_payload",
]

MAX_EVENT_BYTES = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
MAX_METADATA_BYTES = 32 * 1024
MAX_DURATION_MS = 86_400_000
MAX_AMOUNT = 1_000_000_000
"""Largest metadata.amount (SPEC section 1): sums of cents stay far inside 64 bits."""

DEVICES = frozenset({"mobile", "desktop", "tablet", "bot", "other"})
FIELDS = frozenset(
    {
        "event_id",
        "user_id",
        "session_id",
        "action",
        "page",
        "timestamp",
        "duration",
        "metadata",
        "ip_address",
        "user_agent",
        "country",
        "device",
    }
)

#: SPEC 1: an action, and the longest page (analytics.funnels reads stages by them too)
ACTION_PATTERN = re.compile(r"[a-z0-9_.:-]{1,64}")
MAX_PAGE_CHARS = 2048
_COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
_CENT = Decimal("0.01")
_SHOW_MAX = 60  # characters of an offending value quoted back in an error


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field; ``field`` is a top-level name or a dotted path."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class EventRejected(ValueError):
    """An event (or body) failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _show(value: Any) -> str:
    """Quote an offending value back in an error message, JSON-style and bounded."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        text = repr(value)
        if len(text) > _SHOW_MAX:
            return f"{text[: _SHOW_MAX - 4]}...' ({len(value)} characters)"
        return text
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _field_name(key: Any) -> str:
    """An unknown key as an error's field name, bounded so errors stay small; the empty key
    shown as ``""`` so the error does not read ``: unknown field``."""
    name = str(key)
    if not name:
        return '""'
    return name if len(name) <= _SHOW_MAX else name[:_SHOW_MAX] + "..."


def _string(
    obj: dict[str, Any], name: str, lo: int, hi: int, errors: list[FieldError]
) -> str | None:
    """Check a string field of ``lo``..``hi`` characters; None when absent or invalid."""
    value = obj.get(name)
    if value is None:
        return None
    if type(value) is not str:
        errors.append(
            FieldError(name, f"must be a string of {lo} to {hi} characters, got {_show(value)}")
        )
        return None
    if not lo <= len(value) <= hi:
        errors.append(
            FieldError(
                name, f"must be a string of {lo} to {hi} characters, got {len(value)} characters"
            )
        )
        return None
    return value


def _canonical_ip(value: Any) -> str | None:
    """Canonical text of an IPv4/IPv6 address, None when ``value`` is not one.

    ``inet_pton`` (C) first: for IPv4 it accepts exactly what ``ipaddress`` accepts (four
    decimal octets, no leading zeros) and the text is then already canonical. Everything
    else goes through the slower ``ipaddress``, which also handles IPv6 and its scope ids.
    """
    if type(value) is not str:
        return None
    try:
        socket.inet_pton(socket.AF_INET, value)
        return value
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def amount_to_cents(amount: int | float) -> int:
    """Exact cents of a money amount, half-up on its decimal text (10.005 -> 1001).

    ``repr`` of a float is the shortest text that reads back as the same float, i.e. what the
    client most likely wrote; rounding that text avoids binary artefacts (10.005 is stored as
    10.00499999...). Plain decimal texts are rounded by hand, the rest through ``Decimal``.
    """
    if type(amount) is int:
        return amount * 100
    if amount < 0:  # half-up is symmetric: round the magnitude
        return -amount_to_cents(-amount)
    text = repr(amount)
    whole, dot, frac = text.partition(".")
    if dot and "e" not in frac:  # plain decimal text, not 1e+20, inf or nan
        cents = int(whole) * 100 + int(frac[:2].ljust(2, "0"))
        return cents + 1 if len(frac) > 2 and frac[2] >= "5" else cents
    dec = Decimal(text) * 100  # InvalidOperation for inf and nan
    return int(dec.to_integral_value(rounding=ROUND_HALF_UP))


def _metadata(value: Any, errors: list[FieldError]) -> dict[str, Any]:
    """Check metadata and return a shallow copy with ``amount`` rounded to cents."""
    if type(value) is not dict:
        errors.append(FieldError("metadata", f"must be a JSON object, got {_show(value)}"))
        return {}
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError) as exc:
        errors.append(FieldError("metadata", f"must be JSON-serialisable: {exc}"))
        return {}
    if size > MAX_METADATA_BYTES:
        errors.append(
            FieldError(
                "metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"
            )
        )
        return {}
    meta = dict(value)
    amount = meta.get("amount")
    if amount is None:
        return meta
    kind = type(amount)
    if not (
        (kind is int or (kind is float and math.isfinite(amount))) and 0 <= amount <= MAX_AMOUNT
    ):
        errors.append(
            FieldError(
                "metadata.amount",
                f"must be a finite number from 0 to {MAX_AMOUNT:,}, got {_show(amount)}",
            )
        )
        return meta
    meta["amount"] = amount_to_cents(amount) / 100
    return meta


def validate_event(
    obj: Any,
    *,
    received_at_ms: int,
    default_event_id: str,
    future_tolerance_ms: int = 600_000,
) -> dict[str, Any]:
    """Validate one decoded event (SPEC section 1) and return its normalised form.

    The result is a new JSON-ready dict with exactly the keys of ``FIELDS`` plus
    ``timestamp_clamped`` and ``received_at``. Raises ``EventRejected`` listing every problem.
    ``obj`` is not modified.
    """
    return validate_event_at(
        obj,
        received_at_ms=received_at_ms,
        default_event_id=default_event_id,
        future_tolerance_ms=future_tolerance_ms,
    )[0]


def validate_event_at(
    obj: Any,
    *,
    received_at_ms: int,
    default_event_id: str,
    future_tolerance_ms: int = 600_000,
) -> tuple[dict[str, Any], int]:
    """``validate_event``, plus the event time in epoch ms (the hot path needs both)."""
    if type(obj) is not dict:
        raise EventRejected([FieldError("event", f"must be a JSON object, got {_show(obj)}")])
    errors: list[FieldError] = []

    event_id = _string(obj, "event_id", 1, 64, errors)

    user_id = _string(obj, "user_id", 1, 128, errors)
    if obj.get("user_id") is None:
        errors.append(FieldError("user_id", "required"))

    session_id = _string(obj, "session_id", 0, 128, errors)

    action = obj.get("action")
    if action is None:
        errors.append(FieldError("action", "required"))
    elif type(action) is not str or ACTION_PATTERN.fullmatch(action) is None:
        errors.append(
            FieldError(
                "action",
                f"must match [a-z0-9_.:-]{{1,64}}, got {_show(action)}",
            )
        )
        action = None

    page = _string(obj, "page", 0, MAX_PAGE_CHARS, errors)
    if action == "page_view" and obj.get("page") in (None, ""):
        errors.append(FieldError("page", "required and non-empty when action is 'page_view'"))

    ts_ms = received_at_ms
    clamped = False
    ts_value = obj.get("timestamp")
    if ts_value is not None:
        try:
            ts_ms = parse_ts(ts_value)
        except ValueError:
            errors.append(
                FieldError(
                    "timestamp",
                    "must be an RFC 3339 date-time such as '2024-01-15T10:30:00Z', "
                    f"got {_show(ts_value)}",
                )
            )
        else:
            if ts_ms - received_at_ms > future_tolerance_ms:
                ts_ms = received_at_ms
                clamped = True

    duration = obj.get("duration")
    if duration is None:
        duration = 0
    elif type(duration) is not int or not 0 <= duration <= MAX_DURATION_MS:
        errors.append(
            FieldError(
                "duration",
                f"must be an integer between 0 and {MAX_DURATION_MS}, got {_show(duration)}",
            )
        )

    meta_value = obj.get("metadata")
    metadata = {} if meta_value is None else _metadata(meta_value, errors)

    ip_text = obj.get("ip_address")
    ip_address: str | None = None
    if ip_text is not None:
        ip_address = _canonical_ip(ip_text)
        if ip_address is None:
            errors.append(
                FieldError("ip_address", f"{_show(ip_text)} is not an IPv4 or IPv6 address")
            )

    user_agent = _string(obj, "user_agent", 0, 1024, errors) or None

    country_value = obj.get("country")
    country: str | None = None
    if country_value is not None:
        if type(country_value) is not str:
            errors.append(
                FieldError(
                    "country",
                    f"must be an ISO 3166-1 alpha-2 code string, got {_show(country_value)}",
                )
            )
        elif (
            len(country_value) == 2
            and country_value.isascii()  # upper() maps dotless i to I, sharp s to SS
            and (upper := country_value.upper()) in _COUNTRIES
        ):
            country = upper
        else:
            errors.append(
                FieldError("country", f"{_show(country_value)} is not an ISO 3166-1 alpha-2 code")
            )

    device = obj.get("device")
    if device is not None and (type(device) is not str or device not in DEVICES):
        errors.append(
            FieldError(
                "device",
                f"must be one of bot, desktop, mobile, other, tablet, got {_show(device)}",
            )
        )

    if len(obj) > len(FIELDS) or not FIELDS.issuperset(obj):
        for key in obj:
            if key not in FIELDS:
                errors.append(FieldError(_field_name(key), "unknown field"))

    if errors:
        raise EventRejected(errors)
    normalised = {
        "event_id": event_id if event_id is not None else default_event_id,
        "user_id": user_id,
        "session_id": session_id or "",
        "action": action,
        "page": page or "",
        "timestamp": (
            ts_value
            if ts_value is not None and not clamped and is_canonical(ts_value)
            else format_ts(ts_ms)
        ),
        "timestamp_clamped": clamped,
        "received_at": format_ts(received_at_ms),
        "duration": duration,
        "metadata": metadata,
        "ip_address": ip_address,
        "user_agent": user_agent,
        "country": country,
        "device": device,
    }
    return normalised, ts_ms


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    """SPEC section 1's shape and simple limits, checked by msgspec while it decodes the
    JSON (C, about a microsecond). Only for ``validate_payload``'s fast path: anything it
    refuses, or that the rules below it refuse, is validated again by ``validate_event_at``,
    which alone words the errors."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    action: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_.:-]{1,64}$")]
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    session_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    page: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    timestamp: str | None = None
    duration: Annotated[int, msgspec.Meta(ge=0, le=MAX_DURATION_MS)] | None = None
    metadata: dict[str, Any] | None = None
    ip_address: str | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    country: str | None = None
    device: Literal["mobile", "desktop", "tablet", "bot", "other"] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


def validate_payload(
    payload: bytes,
    *,
    received_at_ms: int,
    default_event_id: str,
    future_tolerance_ms: int = 600_000,
) -> tuple[dict[str, Any], int]:
    """Decode and validate one event's JSON: ``validate_event_at`` of ``decode_json``, with a
    fast path for the valid events that are the bulk of a stream (the result is the same;
    tests/unit/test_validation.py compares them on generated input)."""
    event = _fast(payload, received_at_ms, default_event_id, future_tolerance_ms)
    if event is not None:
        return event
    return validate_event_at(
        decode_json(payload),
        received_at_ms=received_at_ms,
        default_event_id=default_event_id,
        future_tolerance_ms=future_tolerance_ms,
    )


def _fast(
    payload: bytes, received_at_ms: int, default_event_id: str, future_tolerance_ms: int
) -> tuple[dict[str, Any], int] | None:
    """The normalised event when every rule holds, else None (the slow path decides)."""
    try:
        event = _decode_event(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None  # bad UTF-8 or deep nesting: the slow path names the problem
    action, page = event.action, event.page
    if action == "page_view" and not page:
        return None
    ts_ms, clamped, ts_text = received_at_ms, False, event.timestamp
    if ts_text is not None:
        try:
            ts_ms = parse_ts(ts_text)
        except ValueError:
            return None
        if ts_ms - received_at_ms > future_tolerance_ms:
            ts_ms, clamped = received_at_ms, True
    metadata: dict[str, Any] = {}
    if event.metadata is not None:
        errors: list[FieldError] = []
        metadata = _metadata(event.metadata, errors)
        if errors:
            return None
    ip_address = None
    if event.ip_address is not None:
        ip_address = _canonical_ip(event.ip_address)
        if ip_address is None:
            return None
    country = event.country
    if country is not None:
        if not (len(country) == 2 and country.isascii() and country.upper() in _COUNTRIES):
            return None
        country = country.upper()
    normalised = {
        "event_id": event.event_id if event.event_id is not None else default_event_id,
        "user_id": event.user_id,
        "session_id": event.session_id or "",
        "action": action,
        "page": page or "",
        "timestamp": (
            ts_text
            if ts_text is not None and not clamped and is_canonical(ts_text)
            else format_ts(ts_ms)
        ),
        "timestamp_clamped": clamped,
        "received_at": format_ts(received_at_ms),
        "duration": event.duration or 0,
        "metadata": metadata,
        "ip_address": ip_address,
        "user_agent": event.user_agent or None,
        "country": country,
        "device": event.device,
    }
    return normalised, ts_ms


def decode_json(payload: bytes | bytearray | memoryview | str) -> Any:
    """Parse a request body or Kafka value; bad JSON or bad UTF-8 is reported as ``body``."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EventRejected([FieldError("body", f"invalid JSON: {exc}")]) from exc


def validate_batch_body(obj: Any) -> list[Any]:
    """Check the envelope ``{"events": [...]}`` of a batch; the events are checked later."""
    if type(obj) is not dict:
        raise EventRejected(
            [
                FieldError(
                    "events",
                    f'batch body must be a JSON object {{"events": [...]}}, got {_show(obj)}',
                )
            ]
        )
    errors: list[FieldError] = []
    events = obj.get("events")
    if events is None:
        errors.append(FieldError("events", "required"))
    elif type(events) is not list:
        errors.append(FieldError("events", f"must be a JSON array, got {_show(events)}"))
    elif not 1 <= len(events) <= MAX_BATCH_EVENTS:
        errors.append(
            FieldError("events", f"must hold 1 to {MAX_BATCH_EVENTS} events, got {len(events)}")
        )
    errors.extend(FieldError(_field_name(key), "unknown field") for key in obj if key != "events")
    if errors or type(events) is not list:
        raise EventRejected(errors)
    return events
