"""SPEC 10: ``privacy.ip`` in every place an input event's address can leave the tracker."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.dead_letters import bounded_dead_letter
from analytics.enrichment import EnrichmentRules, enrich
from analytics.privacy import REMOVED, IpMode, anonymize_ip, protect_ip, scrub_text
from analytics.rows import Arrival
from analytics.timeutil import parse_ts
from analytics.tracking import RawMessage, TrackerRules, track_batch
from analytics.validation import FieldError, validate_event
from web.ingestion import ingest_batch, ingest_single

RECEIVED = parse_ts("2024-01-15T10:30:00Z")


def canonical(text: str) -> str:
    return str(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("address", "anonymised"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("2001:db8:abcd:12:34:56:78:9a", "2001:db8:abcd::"),
        ("2001:DB8:ABCD:0012::1", "2001:db8:abcd::"),
        ("fe80::1%eth0", "fe80::"),  # the zone goes with the rest
        ("::1", "::"),
        ("::ffff:198.51.100.23", str(ipaddress.ip_address("::ffff:198.51.100.0"))),
        ("2002:c000:0204:1::1", "2002:c000:200::"),  # 6to4 of 192.0.2.4: its 4th byte zeroed
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136::"),  # Teredo: client zeroed
    ],
)
def test_anonymize_keeps_3_bytes_of_ipv4_and_6_of_ipv6(address: str, anonymised: str) -> None:
    assert anonymize_ip(canonical(address)) == anonymised
    assert anonymize_ip(anonymised) == anonymised  # anonymising again changes nothing


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("anonymize", "198.51.100.0"), ("drop", None), ("keep", "198.51.100.23")],
)
def test_protect_ip_by_mode(mode: IpMode, expected: str | None) -> None:
    assert protect_ip("198.51.100.23", mode) == expected
    assert protect_ip(None, mode) is None


def event(**fields: Any) -> dict[str, Any]:
    obj = {"user_id": "u1", "action": "click", **fields}
    return validate_event(obj, received_at_ms=RECEIVED, default_event_id="e1")


@pytest.mark.parametrize(
    ("mode", "ip"),
    [
        ("anonymize", "203.0.113.0"),
        ("drop", None),
        ("keep", "203.0.113.77"),
    ],
)
def test_enrichment_applies_the_mode(mode: IpMode, ip: str | None) -> None:
    enriched = enrich(event(ip_address="203.0.113.77"), EnrichmentRules(ip_mode=mode))
    assert enriched["ip_address"] == ip
    assert "ip_address" in enriched  # drop: null, the shape of an event that had none (SPEC 2)
    assert enrich(event(), EnrichmentRules(ip_mode=mode))["ip_address"] is None


def test_enrichment_anonymises_ipv6_by_default() -> None:
    enriched = enrich(event(ip_address="2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"))
    assert enriched["ip_address"] == "2001:db8:aaaa::"


TEXT = (
    '{"ip_address": "203.0.113.77", "h": "198.51.100.9:8080", "z": "01.02.03.04",'
    ' "v6": "2001:DB8:1:2:3:4:5:6", "bad6": "2001:db8:1:2:3:4:5:6:7",'
    ' "m": "::ffff:192.0.2.200", "ts": "2024-01-15T10:30:00.123Z",'
    ' "ua": "Chrome/120.0.6099.129 Safari/537.36", "amount": 12.50}'
)


def test_scrub_text_anonymises_every_address_like_token_and_nothing_else() -> None:
    scrubbed = orjson.loads(scrub_text(TEXT, "anonymize"))
    assert scrubbed == {
        "ip_address": "203.0.113.0",
        "h": "198.51.100.0:8080",
        "z": "01.02.03.0",
        "v6": "2001:db8:1::",
        "bad6": "2001:db8:1::",
        "m": str(ipaddress.ip_address("::ffff:192.0.2.0")),
        "ts": "2024-01-15T10:30:00.123Z",
        "ua": "Chrome/120.0.6099.129 Safari/537.36",
        "amount": 12.5,
    }


def test_scrub_text_drop_removes_and_keep_keeps() -> None:
    dropped = orjson.loads(scrub_text(TEXT, "drop"))
    assert dropped["ip_address"] == dropped["v6"] == dropped["bad6"] == dropped["m"] == REMOVED
    assert dropped["h"] == REMOVED + ":8080"
    assert dropped["ts"] == "2024-01-15T10:30:00.123Z"
    assert scrub_text(TEXT, "keep") == TEXT


def test_dead_letters_scrub_payload_and_errors_also_when_not_utf8() -> None:
    raw = b'\xff{"ip_address": "203.0.113.77", "user_id": 5}'
    errors = [FieldError("ip_address", "'203.0.113.77 ' is not an IPv4 or IPv6 address")]
    dead = bounded_dead_letter(raw, errors, source="topic", received_ms=RECEIVED)
    assert dead["raw_encoding"] == "base64"
    assert b"203.0.113.77" not in base64.b64decode(dead["raw"])
    assert b"203.0.113.0" in base64.b64decode(dead["raw"])
    assert "203.0.113.77" not in orjson.dumps(dead).decode()
    kept = bounded_dead_letter(raw, errors, source="topic", received_ms=RECEIVED, ip_mode="keep")
    assert base64.b64decode(kept["raw"]) == raw


def message(value: dict[str, Any], offset: int, key: bytes | None = b"u1") -> RawMessage:
    return RawMessage(key, orjson.dumps(value), 0, offset, RECEIVED)


def test_tracker_output_holds_no_full_address() -> None:
    """Enriched, dead-lettered (invalid for another reason, or in the address itself) and
    re-keyed events all leave the tracker with the address anonymised."""
    messages = [
        message({"user_id": "u1", "action": "click", "ip_address": "203.0.113.77"}, 1),
        message({"user_id": "u1", "action": "BAD", "ip_address": "2001:db8:9:8:7:6:5:4"}, 2),
        message({"user_id": "u1", "action": "click", "ip_address": "203.0.113.077"}, 3),
        message({"user_id": "u1", "action": "click", "ip_address": "198.51.100.9"}, 4, b"x"),
    ]
    out = track_batch(messages, topic="user-events", lookup=lambda _: None, rules=TrackerRules())
    published = [a.payload for a in out.timeline if isinstance(a, Arrival)]
    published += [orjson.dumps(d) for d in out.dead_letters]
    published += [m.value for m in out.rekeyed]
    assert len(published) == 4
    everything = b"\n".join(published)
    for full in (b"203.0.113.77", b"2001:db8:9:8:7:6:5:4", b"203.0.113.077", b"198.51.100.9"):
        assert full not in everything
    assert orjson.loads(out.rekeyed[0].value)["ip_address"] == "198.51.100.0"
    invalid_ip = orjson.loads(out.dead_letters[1]["raw"])
    assert invalid_ip["ip_address"] == "203.0.113.0"  # documented: anonymised like a valid one


def test_ingest_produces_and_dead_letters_anonymised_addresses() -> None:
    single = ingest_single(
        orjson.dumps({"user_id": "u", "action": "click", "ip_address": "2001:DB8:1:2::9"}),
        RECEIVED,
    )
    assert orjson.loads(single.accepted[0].value)["ip_address"] == "2001:db8:1::"
    dropped = ingest_single(
        orjson.dumps({"user_id": "u", "action": "click", "ip_address": "203.0.113.77"}),
        RECEIVED,
        "drop",
    )
    assert orjson.loads(dropped.accepted[0].value)["ip_address"] is None
    body = orjson.dumps(
        {
            "events": [
                {"user_id": "u", "action": "click", "ip_address": "203.0.113.77"},
                {"user_id": "", "action": "click", "ip_address": "198.51.100.9"},
            ]
        }
    )
    batch = ingest_batch(body, RECEIVED)
    sent = b"".join(a.value for a in batch.accepted) + orjson.dumps(batch.dead_letters)
    assert b"203.0.113.77" not in sent and b"198.51.100.9" not in sent
    assert len(batch.accepted) == len(batch.dead_letters) == 1


DELIMITERS = st.text(alphabet=' "{},=[]/\n\tghijklmnopqrstuvwxyz', max_size=8)


@given(
    address=st.ip_addresses(),
    before=DELIMITERS,
    after=DELIMITERS.filter(lambda text: not text.startswith("%")),
    mode=st.sampled_from(["anonymize", "drop"]),
)
def test_no_full_address_survives_scrubbing(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, before: str, after: str, mode: IpMode
) -> None:
    """Any address between characters that cannot continue it comes out anonymised (or
    removed): the full text is left only when it already is its own anonymised form."""
    text = str(address)
    scrubbed = scrub_text(before + text + after, mode)
    cut = REMOVED if mode == "drop" else anonymize_ip(text)
    assert scrubbed == before + cut + after
