"""Hypothesis strategies for what a client can send: valid events, events with one thing
wrong, and raw bytes that are not an event at all.

An input is the raw bytes of a message value or request body. Wrong values cover what issues 9
and 11 list: huge numbers, NaN and infinities (raw JSON text, which orjson cannot write), deep
nesting, NUL characters, lone surrogates (raw ``\\ud800`` escapes), invalid UTF-8, wrong types,
unknown fields and oversized fields; whole bodies add duplicate keys, hostile keys, numbers of
thousands of digits, trailing data, and batches of the wrong shape. Raw JSON is written with
``orjson.Fragment``, which orjson copies into its output unchecked. ``DELIVERIES`` vary how an
HTTP body is sent: content type, compression (also a body that is not what its
``Content-Encoding`` says), chunked transfer.

Profiles (tests/conftest.py): ``ci`` runs a few hundred examples per property;
``HYPOTHESIS_PROFILE=thorough`` runs thousands, for local runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import strategies as st

from analytics.timeutil import format_ts
from analytics.validation import DEVICES, MAX_AMOUNT
from analytics.validation import FIELDS as SPEC_FIELDS

UTF8_TEXT = st.characters(codec="utf-8")  # every code point but the surrogates
ACTIONS = ("page_view", "click", "purchase", "signup", "add_to_cart", "checkout", "download")
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "curl/8.4.0",
)
FIELDS = sorted(SPEC_FIELDS)


def fragment(text: bytes) -> orjson.Fragment:
    return orjson.Fragment(text)


def number(value: int) -> int | orjson.Fragment:
    """An integer as JSON text, also beyond the 64 bits orjson writes."""
    return value if -(2**63) <= value < 2**64 else fragment(str(value).encode())


def _text(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(UTF8_TEXT, min_size=lo, max_size=hi)


def _timestamps() -> st.SearchStrategy[str]:
    """RFC 3339 texts from year 1 to 9999, with offsets, fractions and the forms SPEC allows."""
    moments = st.datetimes(  # hypothesis takes naive bounds and adds the time zone
        min_value=datetime(1, 1, 1),  # noqa: DTZ001
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),  # noqa: DTZ001
        timezones=st.just(UTC),
    )
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))

    def text(moment: datetime, offset: timezone, style: int) -> str:
        if style == 0:
            try:
                return moment.astimezone(offset).isoformat()
            except OverflowError:  # the local time would be outside years 1 to 9999
                return moment.isoformat()
        if style == 1:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return moment.strftime("%Y-%m-%d %H:%M:%S")  # no offset: UTC

    return st.builds(text, moments, offsets, st.integers(0, 2))


def _metadata() -> st.SearchStrategy[dict[str, Any]]:
    amounts = st.one_of(
        st.integers(0, MAX_AMOUNT),
        st.floats(0, MAX_AMOUNT, allow_nan=False),
        st.sampled_from([0, 0.005, 10.005, MAX_AMOUNT, 999_999_999.995]),
    )
    extra = st.dictionaries(
        _text(1, 10), st.one_of(st.none(), st.booleans(), _text(0, 20)), max_size=3
    )
    return st.builds(lambda a, e: {**e, "amount": a}, amounts, extra) | extra


VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": _text(1, 64),
    "session_id": _text(0, 128),
    "page": _text(1, 60) | _text(2048, 2048),
    "timestamp": _timestamps(),
    "duration": st.integers(0, 86_400_000),
    "metadata": _metadata(),
    "ip_address": st.ip_addresses().map(str),
    "user_agent": st.sampled_from(USER_AGENTS) | _text(0, 40),
    "country": st.sampled_from(["DE", "us", "Fr", "JP", "br"]),
    "device": st.sampled_from(sorted(DEVICES)),
}

WRONG_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=2**63).map(number),  # beyond 64 bits orjson reads a float back
    st.integers(max_value=-(2**63) - 1).map(number),
    st.sampled_from([-1, 1.5, 1e300, True, False, [], {}, [1, "a"], {"a": {"b": []}}]),
    st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"-1e400", b"0.1e-400"]).map(fragment),
    st.sampled_from([b'"\\ud800"', b'"a\\udc00b"', b'"\\ud83d"', b'"\\u0000"']).map(fragment),
    st.integers(1, 3000).map(lambda depth: fragment(b"[" * depth + b"]" * depth)),
    st.just(fragment(b'"\xff\xfe"')),  # invalid UTF-8 inside a string
    st.just(fragment(b'"\xed\xa0\x80"')),  # a surrogate written as UTF-8 bytes
    _text(0, 5).map(lambda t: t + "\x00" + t),
    st.sampled_from([129, 2049, 70_000]).map(lambda n: "x" * n),  # over the field's length
    st.just({"blob": "y" * 40_000}),  # metadata over 32 KiB
)


#: event times within a few windows of 2026-01-01, so events share windows and sessions
NEAR_TIMES = st.integers(0, 5 * 60_000).map(lambda ms: format_ts(1_767_225_600_000 + ms))


@st.composite
def valid_events(draw: st.DrawFn, times: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """An event SPEC 1 accepts; ``times``: where its timestamps come from (any by default)."""
    action = draw(st.sampled_from(ACTIONS) | st.from_regex(r"[a-z0-9_.:-]{1,64}", fullmatch=True))
    event: dict[str, Any] = {"user_id": draw(_text(1, 128)), "action": action}
    for name in draw(st.sets(st.sampled_from(sorted(VALID_FIELDS)), max_size=len(VALID_FIELDS))):
        event[name] = draw(VALID_FIELDS[name])
    if times is not None:
        event["timestamp"] = draw(times)
    if action == "page_view" and not event.get("page"):
        event["page"] = draw(_text(1, 30))
    if action == "purchase" and "amount" not in event.get("metadata", {}):
        event["metadata"] = {"amount": draw(st.integers(0, MAX_AMOUNT))}
    return event


@st.composite
def wrong_events(draw: st.DrawFn, times: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """A valid event with one or two things wrong: a field's value, a field missing, an
    unknown field, metadata.amount out of its range."""
    event = draw(valid_events(times))
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.sampled_from(["value", "missing", "unknown", "amount"]))
        if how == "value":
            event[draw(st.sampled_from(FIELDS))] = draw(WRONG_VALUES)
        elif how == "missing":
            event.pop(draw(st.sampled_from(["user_id", "action"])), None)
        elif how == "unknown":
            event[draw(_text(1, 80).filter(lambda k: k not in FIELDS))] = draw(WRONG_VALUES)
        else:
            amount = WRONG_VALUES | st.integers(MAX_AMOUNT + 1).map(number)
            event["metadata"] = {"amount": draw(amount)}
    return event


GARBAGE: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b"null", b"[]", b"123", b'"text"', b"{", b'{"user_id": "u", }', b"\xef\xbb\xbf{}"]
    ),
    st.integers(1, 3000).map(lambda depth: b'{"metadata":' * depth + b"{}" + b"}" * depth),
    st.sampled_from([70_000, 1_000_000]).map(lambda n: b'{"user_id":"' + b"u" * n + b'"}'),
)


def encode(event: Any) -> bytes:
    return orjson.dumps(event)


def _with_duplicate(event: dict[str, Any], name: str, value: Any) -> bytes:
    """The event's JSON with ``name`` written once more at its end (orjson keeps the last)."""
    head = encode(event)[:-1]
    return (
        head + (b"," if len(head) > 1 else b"") + orjson.dumps(name) + b":" + encode(value) + b"}"
    )


def _event_with(tail: bytes) -> bytes:
    return b'{"user_id":"u","action":"purchase",' + tail + b"}"


#: whole bodies no dict can be written as: duplicate keys, hostile keys, numbers of thousands
#: of digits, NaN at the top, text after the JSON, a byte-order mark
HOSTILE_TEXTS: st.SearchStrategy[bytes] = st.one_of(
    st.builds(
        _with_duplicate,
        valid_events(),
        st.sampled_from([*FIELDS, "user_id", "action"]),
        WRONG_VALUES | _text(1, 10) | st.integers(0, 10),
    ),
    st.integers(20, 5000).map(lambda n: _event_with(b'"duration":' + b"9" * n)),
    st.integers(20, 5000).map(lambda n: _event_with(b'"metadata":{"amount":1' + b"0" * n + b"}")),
    st.sampled_from(
        [b"NaN", b"Infinity", b"-1e999999", b'"duration":1e999999', b'"x":-0.0e-9999']
    ).map(lambda t: _event_with(t) if t.startswith(b'"') else t),
    st.sampled_from(
        [b'"\\ud800"', b'"a\\u0000b"', b'"\xff"', b'"\xed\xa0\x80"', b'""', b'"\x00"']
    ).map(lambda key: _event_with(key + b":1")),
    st.builds(
        lambda event, affix, before: affix + encode(event) if before else encode(event) + affix,
        valid_events(),
        st.sampled_from([b" trailing", b"\n{}", b"\x00", b"]", b"\xef\xbb\xbf", b" \t\r\n"]),
        st.booleans(),
    ),
)


def raw_inputs(times: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[bytes]:
    """The raw value of a message or body: events, valid or wrong, hostile text, garbage."""
    return st.one_of(
        valid_events(times).map(encode), wrong_events(times).map(encode), HOSTILE_TEXTS, GARBAGE
    )


RAW_INPUTS = raw_inputs()

_EVENT = b'{"user_id":"u","action":"click"}'


def batch_bodies(times: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[bytes]:
    """A body for ``POST /ingest/batch``: ``{"events": [...]}`` of valid and wrong events, or a
    batch of the wrong shape (no envelope, ``events`` not an array, empty or over 1,000 events,
    items that are not objects, another key, ``events`` twice, over 1 MiB), or garbage."""
    events = valid_events(times) | wrong_events(times)
    items = st.one_of(events, WRONG_VALUES, st.none(), st.integers().map(number), _text(0, 5))
    return st.one_of(
        st.lists(events, min_size=1, max_size=10).map(lambda es: encode({"events": es})),
        st.lists(events, max_size=3).map(encode),  # a bare array
        events.map(encode),  # one event, no envelope
        st.sampled_from(
            [{}, {"events": None}, {"events": {}}, {"events": "e"}, {"events": []}]
        ).map(encode),
        st.lists(events, min_size=1, max_size=3).map(lambda es: encode({"events": es, "x": 1})),
        st.lists(items, min_size=1, max_size=5).map(lambda xs: encode({"events": xs})),
        st.tuples(st.lists(events, max_size=2), st.lists(events, min_size=1, max_size=2)).map(
            lambda two: b'{"events":' + encode(two[0]) + b',"events":' + encode(two[1]) + b"}"
        ),
        st.just(b'{"events":[' + b",".join([_EVENT] * 1001) + b"]}"),
        st.just(b'{"events":[{"user_id":"' + b"u" * (1 << 20) + b'","action":"click"}]}'),
        HOSTILE_TEXTS,
        GARBAGE,
    )


BATCH_BODIES = batch_bodies()


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an HTTP body is sent: its ``Content-Type`` (none: no header), ``Content-Encoding``
    (the body compressed so; ``mislabelled``: sent as it is, which is not such data), and
    whether it goes chunked, without a ``Content-Length``."""

    content_type: str | None = "application/json"
    encoding: str | None = None
    mislabelled: bool = False
    chunked: bool = False


CONTENT_TYPES = (
    None,
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "image/png",
    "",
)
PLAIN = Delivery()
DELIVERIES: st.SearchStrategy[Delivery] = st.one_of(
    st.just(PLAIN),
    st.builds(
        Delivery,
        st.sampled_from(CONTENT_TYPES),
        st.sampled_from([None, None, "gzip", "deflate"]),
        st.booleans(),
        st.booleans(),
    ),
)
