"""SPEC section 1, rule by rule: what is accepted, how it is normalised, what is rejected."""

from __future__ import annotations

import copy
import ipaddress
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import pytest

from analytics.timeutil import format_ts, parse_ts
from analytics.validation import (
    FIELDS,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MAX_METADATA_BYTES,
    EventRejected,
    FieldError,
    amount_to_cents,
    decode_json,
    validate_batch_body,
    validate_event,
)

RECEIVED = parse_ts("2024-01-15T10:30:00Z")
DROP = object()  # marks a field to remove from the base event
BASE: dict[str, Any] = {"user_id": "u1", "action": "click"}
OUTPUT_KEYS = FIELDS | {"timestamp_clamped", "received_at"}


def make(**changes: Any) -> dict[str, Any]:
    event = dict(BASE)
    for key, value in changes.items():
        if value is DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def ok(event: Any, **kwargs: Any) -> dict[str, Any]:
    return validate_event(event, received_at_ms=RECEIVED, default_event_id="generated", **kwargs)


def rejected(event: Any, **kwargs: Any) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        ok(event, **kwargs)
    return info.value


def test_limits() -> None:
    assert MAX_EVENT_BYTES == 64 * 1024
    assert MAX_BATCH_BYTES == 1024 * 1024
    assert MAX_BATCH_EVENTS == 1000
    assert MAX_METADATA_BYTES == 32 * 1024


def test_minimal_event_gets_all_defaults() -> None:
    assert ok(make()) == {
        "event_id": "generated",
        "user_id": "u1",
        "session_id": "",
        "action": "click",
        "page": "",
        "timestamp": "2024-01-15T10:30:00.000Z",
        "timestamp_clamped": False,
        "received_at": "2024-01-15T10:30:00.000Z",
        "duration": 0,
        "metadata": {},
        "ip_address": None,
        "user_agent": None,
        "country": None,
        "device": None,
    }


def test_full_event_is_kept() -> None:
    event = {
        "event_id": "e-1",
        "user_id": "u1",
        "session_id": "s1",
        "action": "purchase",
        "page": "/checkout",
        "timestamp": "2024-01-15T10:29:00.250Z",
        "duration": 1500,
        "metadata": {"amount": 19.99, "currency": "EUR", "items": [1, 2]},
        "ip_address": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "country": "de",
        "device": "desktop",
    }
    assert ok(event) == {
        **event,
        "timestamp": "2024-01-15T10:29:00.250Z",
        "timestamp_clamped": False,
        "received_at": "2024-01-15T10:30:00.000Z",
        "country": "DE",
    }


# (case id, changes to BASE, expected {output key: value})
VALID: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # event_id: optional string 1-64
    ("event_id given", {"event_id": "abc"}, {"event_id": "abc"}),
    ("event_id 1 char", {"event_id": "a"}, {"event_id": "a"}),
    ("event_id 64 chars", {"event_id": "e" * 64}, {"event_id": "e" * 64}),
    ("event_id null -> assigned", {"event_id": None}, {"event_id": "generated"}),
    # user_id: required string 1-128
    ("user_id 1 char", {"user_id": "u"}, {"user_id": "u"}),
    ("user_id 128 chars", {"user_id": "u" * 128}, {"user_id": "u" * 128}),
    ("user_id 128 non-ASCII chars", {"user_id": "é" * 128}, {"user_id": "é" * 128}),
    ("user_id kept as is", {"user_id": " Ab "}, {"user_id": " Ab "}),
    # session_id: optional string 0-128
    ("session_id given", {"session_id": "s"}, {"session_id": "s"}),
    ("session_id empty", {"session_id": ""}, {"session_id": ""}),
    ("session_id null", {"session_id": None}, {"session_id": ""}),
    ("session_id 128 chars", {"session_id": "s" * 128}, {"session_id": "s" * 128}),
    # action: 1-64 of [a-z0-9_.:-]
    ("action all classes", {"action": "a-z_0.9:x"}, {"action": "a-z_0.9:x"}),
    ("action 1 char", {"action": "x"}, {"action": "x"}),
    ("action 64 chars", {"action": "a" * 64}, {"action": "a" * 64}),
    # page: 0-2048, required non-empty for page_view
    ("page absent", {}, {"page": ""}),
    ("page empty for click", {"page": ""}, {"page": ""}),
    ("page null for click", {"page": None}, {"page": ""}),
    ("page_view with page", {"action": "page_view", "page": "/"}, {"page": "/"}),
    ("page 2048 chars", {"page": "/" * 2048}, {"page": "/" * 2048}),
    # timestamp: RFC 3339, optional, no offset = UTC
    (
        "timestamp Z",
        {"timestamp": "2024-01-15T10:00:00Z"},
        {"timestamp": "2024-01-15T10:00:00.000Z"},
    ),
    (
        "timestamp no offset is UTC",
        {"timestamp": "2024-01-15T10:00:00"},
        {"timestamp": "2024-01-15T10:00:00.000Z"},
    ),
    (
        "timestamp offset",
        {"timestamp": "2024-01-15T01:30:00+02:00"},
        {"timestamp": "2024-01-14T23:30:00.000Z"},
    ),
    (
        "timestamp space",
        {"timestamp": "2024-01-15 10:00:00.5"},
        {"timestamp": "2024-01-15T10:00:00.500Z"},
    ),
    ("timestamp null", {"timestamp": None}, {"timestamp": "2024-01-15T10:30:00.000Z"}),
    (
        "timestamp far past",
        {"timestamp": "1999-01-01T00:00:00Z"},
        {"timestamp": "1999-01-01T00:00:00.000Z"},
    ),
    # duration: integer 0-86,400,000
    ("duration 0", {"duration": 0}, {"duration": 0}),
    ("duration max", {"duration": 86_400_000}, {"duration": 86_400_000}),
    ("duration null", {"duration": None}, {"duration": 0}),
    # metadata: object <= 32 KiB, amount finite >= 0 rounded to cents
    ("metadata empty", {"metadata": {}}, {"metadata": {}}),
    ("metadata null", {"metadata": None}, {"metadata": {}}),
    (
        "metadata nested",
        {"metadata": {"a": {"b": [1, None]}}},
        {"metadata": {"a": {"b": [1, None]}}},
    ),
    ("amount int", {"metadata": {"amount": 10}}, {"metadata": {"amount": 10.0}}),
    ("amount zero", {"metadata": {"amount": 0}}, {"metadata": {"amount": 0.0}}),
    ("amount half up", {"metadata": {"amount": 10.005}}, {"metadata": {"amount": 10.01}}),
    ("amount round down", {"metadata": {"amount": 10.004}}, {"metadata": {"amount": 10.0}}),
    ("amount 2 decimals", {"metadata": {"amount": 99.99}}, {"metadata": {"amount": 99.99}}),
    (
        "amount at the bound",
        {"metadata": {"amount": 1_000_000_000}},
        {"metadata": {"amount": 1_000_000_000.0}},
    ),
    ("amount null", {"metadata": {"amount": None}}, {"metadata": {"amount": None}}),
    (
        "amount on any action",
        {"action": "refund", "metadata": {"amount": 1.239}},
        {"metadata": {"amount": 1.24}},
    ),
    # ip_address: IPv4 or IPv6, canonical text
    ("ipv4", {"ip_address": "192.168.0.1"}, {"ip_address": "192.168.0.1"}),
    ("ipv6 canonical", {"ip_address": "2001:DB8:0:0::1"}, {"ip_address": "2001:db8::1"}),
    ("ipv4-mapped ipv6", {"ip_address": "::ffff:192.0.2.1"}, {"ip_address": "::ffff:c000:201"}),
    ("ip null", {"ip_address": None}, {"ip_address": None}),
    # user_agent: string 0-1024, empty stored as None
    ("user_agent", {"user_agent": "curl/8"}, {"user_agent": "curl/8"}),
    ("user_agent empty", {"user_agent": ""}, {"user_agent": None}),
    ("user_agent 1024 chars", {"user_agent": "a" * 1024}, {"user_agent": "a" * 1024}),
    # country: ISO 3166-1 alpha-2, any case, stored upper-case
    ("country upper", {"country": "US"}, {"country": "US"}),
    ("country lower", {"country": "gb"}, {"country": "GB"}),
    ("country mixed", {"country": "dE"}, {"country": "DE"}),
    ("country null", {"country": None}, {"country": None}),
    # device: one of five
    *[
        (f"device {d}", {"device": d}, {"device": d})
        for d in ("mobile", "desktop", "tablet", "bot", "other")
    ],
    ("device null", {"device": None}, {"device": None}),
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    result = ok(make(**changes))
    assert set(result) == OUTPUT_KEYS
    assert {key: result[key] for key in expected} == expected


# (case id, changes to BASE, field the error must name, text the message must contain)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # event_id
    ("event_id empty", {"event_id": ""}, "event_id", "1 to 64 characters, got 0"),
    ("event_id too long", {"event_id": "e" * 65}, "event_id", "got 65 characters"),
    ("event_id int", {"event_id": 5}, "event_id", "got 5"),
    # user_id
    ("user_id absent", {"user_id": DROP}, "user_id", "required"),
    ("user_id null", {"user_id": None}, "user_id", "required"),
    ("user_id empty", {"user_id": ""}, "user_id", "1 to 128 characters, got 0"),
    ("user_id too long", {"user_id": "u" * 129}, "user_id", "got 129 characters"),
    ("user_id int", {"user_id": 42}, "user_id", "must be a string"),
    ("user_id bool", {"user_id": True}, "user_id", "got true"),
    ("user_id object", {"user_id": {"id": 1}}, "user_id", "got an object"),
    # session_id
    ("session_id too long", {"session_id": "s" * 129}, "session_id", "0 to 128"),
    ("session_id int", {"session_id": 7}, "session_id", "must be a string"),
    # action
    ("action absent", {"action": DROP}, "action", "required"),
    ("action null", {"action": None}, "action", "required"),
    ("action empty", {"action": ""}, "action", "[a-z0-9_.:-]{1,64}"),
    ("action upper case", {"action": "Click"}, "action", "got 'Click'"),
    ("action space", {"action": "page view"}, "action", "[a-z0-9_.:-]"),
    ("action slash", {"action": "a/b"}, "action", "[a-z0-9_.:-]"),
    ("action non-ASCII", {"action": "clíck"}, "action", "[a-z0-9_.:-]"),
    ("action newline", {"action": "click\n"}, "action", "[a-z0-9_.:-]"),
    ("action too long", {"action": "a" * 65}, "action", "{1,64}"),
    ("action int", {"action": 1}, "action", "got 1"),
    # page
    (
        "page_view without page",
        {"action": "page_view"},
        "page",
        "non-empty when action is 'page_view'",
    ),
    ("page_view empty page", {"action": "page_view", "page": ""}, "page", "non-empty"),
    ("page_view null page", {"action": "page_view", "page": None}, "page", "non-empty"),
    ("page too long", {"page": "/" * 2049}, "page", "0 to 2048 characters, got 2049"),
    ("page int", {"page": 3}, "page", "must be a string"),
    # timestamp
    ("timestamp epoch number", {"timestamp": 1_705_314_600_000}, "timestamp", "RFC 3339"),
    ("timestamp date only", {"timestamp": "2024-01-15"}, "timestamp", "got '2024-01-15'"),
    ("timestamp no seconds", {"timestamp": "2024-01-15T10:30Z"}, "timestamp", "RFC 3339"),
    ("timestamp bad day", {"timestamp": "2024-02-30T10:30:00Z"}, "timestamp", "RFC 3339"),
    ("timestamp empty", {"timestamp": ""}, "timestamp", "RFC 3339"),
    ("timestamp words", {"timestamp": "yesterday"}, "timestamp", "RFC 3339"),
    # duration
    ("duration negative", {"duration": -1}, "duration", "between 0 and 86400000, got -1"),
    ("duration too big", {"duration": 86_400_001}, "duration", "got 86400001"),
    (
        "duration float",
        {"duration": 1.5},
        "duration",
        "must be an integer between 0 and 86400000, got 1.5",
    ),
    ("duration whole float", {"duration": 1.0}, "duration", "got 1.0"),
    ("duration string", {"duration": "5"}, "duration", "got '5'"),
    ("duration bool", {"duration": True}, "duration", "got true"),
    # metadata
    ("metadata array", {"metadata": [1]}, "metadata", "must be a JSON object, got an array"),
    ("metadata string", {"metadata": "{}"}, "metadata", "must be a JSON object"),
    (
        "metadata too big",
        {"metadata": {"x": "a" * MAX_METADATA_BYTES}},
        "metadata",
        "at most 32768 bytes",
    ),
    (
        "amount negative",
        {"metadata": {"amount": -0.01}},
        "metadata.amount",
        "finite number from 0 to 1,000,000,000, got -0.01",
    ),
    (
        "amount over the bound",
        {"metadata": {"amount": 1_000_000_000.01}},
        "metadata.amount",
        "from 0 to 1,000,000,000, got 1000000000.01",
    ),
    (
        "amount huge (a JSON integer of 31 digits reads as this float)",
        {"metadata": {"amount": 1e30}},
        "metadata.amount",
        "got 1e+30",
    ),
    ("amount string", {"metadata": {"amount": "10.00"}}, "metadata.amount", "got '10.00'"),
    ("amount bool", {"metadata": {"amount": True}}, "metadata.amount", "got true"),
    ("amount nan", {"metadata": {"amount": float("nan")}}, "metadata.amount", "finite"),
    ("amount infinity", {"metadata": {"amount": float("inf")}}, "metadata.amount", "finite"),
    ("amount object", {"metadata": {"amount": {"value": 1}}}, "metadata.amount", "got an object"),
    # ip_address
    (
        "ip garbage",
        {"ip_address": "not-an-ip"},
        "ip_address",
        "'not-an-ip' is not an IPv4 or IPv6 address",
    ),
    ("ip octet too big", {"ip_address": "256.1.1.1"}, "ip_address", "not an IPv4 or IPv6"),
    ("ip leading zero", {"ip_address": "01.2.3.4"}, "ip_address", "not an IPv4 or IPv6"),
    ("ip three octets", {"ip_address": "1.2.3"}, "ip_address", "not an IPv4 or IPv6"),
    ("ip with port", {"ip_address": "1.2.3.4:80"}, "ip_address", "not an IPv4 or IPv6"),
    ("ip empty", {"ip_address": ""}, "ip_address", "not an IPv4 or IPv6"),
    ("ip int", {"ip_address": 16909060}, "ip_address", "not an IPv4 or IPv6"),
    ("ipv6 bad", {"ip_address": "2001:db8:::1"}, "ip_address", "not an IPv4 or IPv6"),
    # user_agent
    (
        "user_agent too long",
        {"user_agent": "a" * 1025},
        "user_agent",
        "0 to 1024 characters, got 1025",
    ),
    ("user_agent list", {"user_agent": ["a"]}, "user_agent", "got an array"),
    # country
    (
        "country unknown code",
        {"country": "XX"},
        "country",
        "'XX' is not an ISO 3166-1 alpha-2 code",
    ),
    ("country alpha-3", {"country": "USA"}, "country", "not an ISO 3166-1 alpha-2"),
    ("country name", {"country": "Germany"}, "country", "not an ISO 3166-1 alpha-2"),
    ("country empty", {"country": ""}, "country", "not an ISO 3166-1 alpha-2"),
    ("country non-ASCII lookalike", {"country": "\u0131t"}, "country", "not an ISO 3166-1 alpha-2"),
    ("country int", {"country": 49}, "country", "got 49"),
    # device
    ("device unknown", {"device": "unknown"}, "device", "must be one of"),
    ("device upper case", {"device": "Mobile"}, "device", "got 'Mobile'"),
    ("device empty", {"device": ""}, "device", "must be one of"),
    ("device int", {"device": 1}, "device", "must be one of"),
    # unknown top-level fields
    ("unknown field", {"unexpected_field": 1}, "unexpected_field", "unknown field"),
    ("unknown null field", {"extra": None}, "extra", "unknown field"),
    ("field names are case-sensitive", {"User_id": "u1"}, "User_id", "unknown field"),
    ("the empty key is named quoted", {"": 1}, '""', "unknown field"),
]


@pytest.mark.parametrize(
    ("changes", "field", "text"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid(changes: dict[str, Any], field: str, text: str) -> None:
    error = rejected(make(**changes))
    assert [e.field for e in error.errors] == [field]
    assert text in error.errors[0].message
    assert f"{field}: " in str(error)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ([], "an array"),
        ("click", "'click'"),
        (1, "1"),
        (None, "null"),
        (True, "true"),
        (2.5, "2.5"),
    ],
)
def test_non_object_event(value: Any, shown: str) -> None:
    error = rejected(value)
    assert [e.as_dict() for e in error.errors] == [
        {"field": "event", "message": f"must be a JSON object, got {shown}"}
    ]


def test_all_problems_are_reported_at_once() -> None:
    event = {
        "action": "Page View",
        "duration": 1.5,
        "country": "XX",
        "metadata": {"amount": "5"},
        "unexpected_field": 1,
    }
    error = rejected(event)
    assert [e.field for e in error.errors] == [
        "user_id",
        "action",
        "duration",
        "metadata.amount",
        "country",
        "unexpected_field",
    ]
    text = str(error)
    assert text.startswith("user_id: required; action: must match")
    assert "duration: must be an integer between 0 and 86400000, got 1.5" in text
    assert "country: 'XX' is not an ISO 3166-1 alpha-2 code" in text
    assert text.endswith("unexpected_field: unknown field")


def test_field_error() -> None:
    error = FieldError("metadata.amount", "must be a finite number >= 0, got -1")
    assert error.as_dict() == {
        "field": "metadata.amount",
        "message": "must be a finite number >= 0, got -1",
    }
    assert str(EventRejected([error, FieldError("x", "unknown field")])) == (
        "metadata.amount: must be a finite number >= 0, got -1; x: unknown field"
    )
    assert isinstance(EventRejected([error]), ValueError)


def test_long_values_are_shortened_in_messages() -> None:
    error = rejected(make(action="X" * 1000, **{"k" * 500: 1}))
    assert all(len(e.message) < 200 and len(e.field) < 100 for e in error.errors)
    assert "1000 characters" in error.errors[0].message


def test_metadata_size_limit_is_on_serialised_bytes() -> None:
    overhead = len(orjson.dumps({"x": ""}))
    at_limit = {"x": "a" * (MAX_METADATA_BYTES - overhead)}
    assert ok(make(metadata=at_limit))["metadata"] == at_limit
    over = {"x": "a" * (MAX_METADATA_BYTES - overhead + 1)}
    assert rejected(make(metadata=over)).errors[0].field == "metadata"
    # Multi-byte characters count as their UTF-8 bytes.
    wide = {"x": "é" * ((MAX_METADATA_BYTES - overhead) // 2 + 1)}
    assert rejected(make(metadata=wide)).errors[0].field == "metadata"


def test_input_is_not_mutated_and_output_is_independent() -> None:
    event = make(metadata={"amount": 10.005, "tags": ["a"]}, country="fr", ip_address="2001:DB8::1")
    snapshot = copy.deepcopy(event)
    result = ok(event)
    assert event == snapshot
    result["metadata"]["new"] = 1
    assert "new" not in event["metadata"]


# --- timestamp: absent, clamping -----------------------------------------------------------

TEN_MIN = 600_000


@pytest.mark.parametrize(
    ("ahead_ms", "clamped"),
    [
        (-86_400_000, False),  # a day in the past: kept
        (0, False),
        (TEN_MIN - 1, False),
        (TEN_MIN, False),  # exactly 10 minutes ahead: kept
        (TEN_MIN + 1, True),  # 10 minutes + 1 ms: clamped to ingestion time and flagged
        (86_400_000, True),
    ],
)
def test_future_timestamp_clamp(ahead_ms: int, clamped: bool) -> None:
    result = ok(make(timestamp=format_ts(RECEIVED + ahead_ms)))
    assert result["timestamp_clamped"] is clamped
    expected = RECEIVED if clamped else RECEIVED + ahead_ms
    assert result["timestamp"] == format_ts(expected)
    assert result["received_at"] == format_ts(RECEIVED)


def test_future_tolerance_is_configurable() -> None:
    result = ok(make(timestamp=format_ts(RECEIVED + 2)), future_tolerance_ms=1)
    assert result["timestamp_clamped"] is True
    assert result["timestamp"] == format_ts(RECEIVED)


def test_absent_timestamp_is_ingestion_time() -> None:
    result = ok(make())
    assert result["timestamp"] == result["received_at"] == format_ts(RECEIVED)
    assert result["timestamp_clamped"] is False


# --- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        (0, 0),
        (0.0, 0),
        (-0.0, 0),
        (10, 1000),
        (10.005, 1001),
        (10.004, 1000),
        (0.005, 1),
        (0.004999, 0),
        (1.005, 101),
        (2.675, 268),
        (99.995, 10000),
        (0.1 + 0.2, 30),
        (1e-7, 0),
        (1.5e-2, 2),
        (1e16, 10**18),
        (-1.005, -101),
    ],
)
def test_amount_to_cents(amount: float, cents: int) -> None:
    assert amount_to_cents(amount) == cents


def test_amount_to_cents_matches_decimal_half_up() -> None:
    """The hand-rolled fast path agrees with Decimal on the float's shortest decimal text."""
    rng = random.Random(20240115)
    values = [rng.uniform(0, 10_000) for _ in range(20_000)]
    values += [round(rng.uniform(0, 1_000), 3) for _ in range(20_000)]
    values += [rng.uniform(0, 1e-3) for _ in range(1_000)] + [
        rng.uniform(1e15, 1e20) for _ in range(1_000)
    ]
    for value in values:
        expected = int((Decimal(repr(value)) * 100).to_integral_value(rounding=ROUND_HALF_UP))
        assert amount_to_cents(value) == expected, value


# --- IPv4 fast path agrees with ipaddress ----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0.0.0.0",
        "255.255.255.255",
        "1.2.3.4",
        "10.0.0.1",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.0",
        "1.2.3.4 ",
        " 1.2.3.4",
        "0x1.2.3.4",
        "1.2.3.4\x00",
        "\uff11.2.3.4",  # full-width digit
        "::1",
        "fe80::1%eth0",
        "::ffff:1.2.3.4",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
        "",
    ],
)
def test_ip_validation_matches_ipaddress(text: str) -> None:
    try:
        expected: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    if expected is None:
        assert rejected(make(ip_address=text)).errors[0].field == "ip_address"
    else:
        assert ok(make(ip_address=text))["ip_address"] == expected


# --- decode_json -------------------------------------------------------------------------------


def test_decode_json() -> None:
    assert decode_json(b'{"user_id": "u1", "action": "click"}') == BASE
    assert decode_json(b'{"a": 1, "a": 2}') == {"a": 2}  # last duplicate wins


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe", b'{"user_id": "\xc3"}', b"NaN", b"[1] [2]"],
)
def test_decode_json_rejects_bad_json_as_body(payload: bytes) -> None:
    with pytest.raises(EventRejected) as info:
        decode_json(payload)
    [error] = info.value.errors
    assert error.field == "body"
    assert error.message.startswith("invalid JSON: ")


def test_decoded_event_round_trip() -> None:
    payload = orjson.dumps(make(timestamp="2024-01-15T10:00:00Z", metadata={"amount": 5}))
    result = ok(decode_json(payload))
    assert result["metadata"] == {"amount": 5.0}
    assert orjson.loads(orjson.dumps(result)) == result  # JSON-ready


# --- batch envelope ------------------------------------------------------------------------------


def test_batch_body_returns_the_events_unchecked() -> None:
    events: list[Any] = [BASE, "not even an object"]
    assert validate_batch_body({"events": events}) == events
    assert len(validate_batch_body({"events": [BASE] * MAX_BATCH_EVENTS})) == MAX_BATCH_EVENTS


@pytest.mark.parametrize(
    ("body", "fields", "text"),
    [
        ([BASE], ["events"], "must be a JSON object"),
        ("x", ["events"], "must be a JSON object"),
        (None, ["events"], "must be a JSON object"),
        ({}, ["events"], "required"),
        ({"events": None}, ["events"], "required"),
        ({"events": {}}, ["events"], "must be a JSON array, got an object"),
        ({"events": []}, ["events"], "1 to 1000 events, got 0"),
        ({"events": [BASE] * (MAX_BATCH_EVENTS + 1)}, ["events"], "got 1001"),
        ({"events": [BASE], "extra": 1}, ["extra"], "unknown field"),
        ({"event": [BASE]}, ["events", "event"], "required"),
    ],
)
def test_batch_body_rejected(body: Any, fields: list[str], text: str) -> None:
    with pytest.raises(EventRejected) as info:
        validate_batch_body(body)
    assert [e.field for e in info.value.errors] == fields
    assert text in info.value.errors[0].message
