"""analytics.validation.validate_payload: its fast path (msgspec) must agree with the
hand-written rules on every input, valid or not: the same normalised event, or the same
rejection with the same errors."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.validation import (
    EventRejected,
    decode_json,
    validate_event_at,
    validate_payload,
)

RECEIVED = 1_767_225_600_000

_TEXT = st.text(max_size=12) | st.sampled_from(["", "page_view", "purchase", "/home", "US"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_FIELDS = {
    "event_id": st.none() | _TEXT | st.text(min_size=60, max_size=70),
    "user_id": st.none() | _TEXT | st.integers() | st.text(min_size=125, max_size=130),
    "session_id": st.none() | _TEXT,
    "action": st.sampled_from(["page_view", "click", "purchase", "Bad", "", "a" * 65]) | _SCALARS,
    "page": st.none() | _TEXT | st.integers(),
    "timestamp": st.none()
    | st.sampled_from(
        [
            "2026-01-01T00:00:01.250Z",
            "2026-01-01 00:00:01",
            "2026-01-01T00:00:01+02:00",
            "2026-13-01T00:00:01Z",
            "2099-01-01T00:00:00.000Z",
            "2026-01-01T00:00:60.000Z",
            "yesterday",
        ]
    )
    | _SCALARS,
    "duration": st.none() | st.integers(min_value=-5, max_value=90_000_000) | _SCALARS,
    "metadata": st.none()
    | st.dictionaries(
        st.sampled_from(["amount", "x", "currency"]),
        st.floats(min_value=-1, max_value=2e9, allow_nan=False) | _JSON,
        max_size=3,
    )
    | _JSON,
    "ip_address": st.none() | st.sampled_from(["10.0.0.1", "::1", "010.0.0.1", "x"]) | _SCALARS,
    "user_agent": st.none() | _TEXT,
    "country": st.none() | st.sampled_from(["us", "GB", "XX", "\u0131s", "USA"]) | _SCALARS,
    "device": st.none() | st.sampled_from(["mobile", "desktop", "phone", "Mobile"]) | _SCALARS,
    "unknown": _SCALARS,
}


_VALID = {
    "event_id": st.none() | st.text(min_size=1, max_size=64),
    "user_id": st.text(min_size=1, max_size=128),
    "session_id": st.none() | st.text(max_size=128),
    "action": st.sampled_from(["click", "purchase", "signup", "a.b:c-d_1"]),
    "page": st.none() | st.text(max_size=30),
    "timestamp": st.none()
    | st.sampled_from(
        [
            "2026-01-01T00:00:01.250Z",
            "2026-01-01 00:00:01",
            "2026-01-01t00:00:01.5z",
            "2026-01-01T00:20:00.000Z",  # 20 minutes ahead of RECEIVED: clamped
        ]
    ),
    "duration": st.none() | st.integers(min_value=0, max_value=86_400_000),
    "metadata": st.none()
    | st.fixed_dictionaries(
        {}, optional={"amount": st.floats(min_value=0, max_value=1e9) | st.integers(0, 10**9)}
    ),
    "ip_address": st.none() | st.sampled_from(["10.0.0.1", "2001:DB8::1", "::ffff:1.2.3.4"]),
    "user_agent": st.none() | st.text(max_size=30),
    "country": st.none() | st.sampled_from(["us", "GB", "de"]),
    "device": st.none() | st.sampled_from(["mobile", "desktop", "tablet", "bot", "other"]),
}


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """A valid event (random optional fields), then none, one or a few fields replaced by
    anything, added or dropped."""
    event = {"user_id": draw(_VALID["user_id"]), "action": draw(_VALID["action"])}
    for name in draw(st.sets(st.sampled_from(sorted(_VALID)))):
        value = draw(_VALID[name])
        if value is not None or draw(st.booleans()):
            event[name] = value
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=2)):
        if draw(st.booleans()):
            event[name] = draw(_FIELDS[name])
        else:
            event.pop(name, None)
    return event


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except EventRejected as rejected:
        return ("rejected", [error.as_dict() for error in rejected.errors])


def _slow(payload: bytes) -> Any:
    return validate_event_at(decode_json(payload), received_at_ms=RECEIVED, default_event_id="x")


def _both(payload: bytes) -> None:
    fast = _outcome(
        lambda: validate_payload(payload, received_at_ms=RECEIVED, default_event_id="x")
    )
    assert fast == _outcome(lambda: _slow(payload))


@settings(max_examples=500, deadline=None)
@given(events())
def test_fast_path_agrees_on_generated_events(event: dict[str, Any]) -> None:
    try:
        payload = orjson.dumps(event)
    except TypeError:  # an integer beyond 64 bits: sent as JSON text instead
        payload = repr(event).replace("None", "null").replace("'", '"').encode()
    _both(payload)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=64)
    | st.sampled_from(
        [
            b'{"user_id":"u","action":"click","duration":1.0}',
            b'{"user_id":"u","action":"click","user_id":"v"}',
            b'{"user_id":"\\ud800","action":"click"}',
            b'{"user_id":"u","action":"click","metadata":{"amount":1e400}}',
            b'{"user_id":"u","action":"purchase","metadata":{"amount":100000000000000000000000}}',
            b'{"user_id":"u","action":"click","metadata":{"n":100000000000000000000000}}',
            b'{"user_id":"u","action":"click","page":null,"timestamp":null}',
            b"[]",
            b"",
        ]
    )
)
def test_fast_path_agrees_on_raw_bytes(payload: bytes) -> None:
    _both(payload)
