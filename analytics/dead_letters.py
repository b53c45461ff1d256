"""Dead letters that always fit a Kafka message, whatever they carry.

A dead letter keeps the payload it is about, and a payload can be as large as the topic it
came from allows (1 MB by default), or larger once written as JSON text (escapes, base64 for
bytes that are not UTF-8). A dead letter the broker refuses would fail the batch that sends
it, and the batch would be read again and fail again: the stage would stop on one record.
So every dead letter keeps at most ``RAW_LIMIT`` bytes of its payload and says how long the
whole was (``raw_truncated_from_bytes``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from analytics.privacy import IpMode, scrub_text
from analytics.timeutil import format_ts
from analytics.validation import FieldError

RAW_LIMIT = 64 * 1024
"""Payload bytes a dead letter keeps: even written as JSON escapes (at most 6 characters a
byte) it stays well under a Kafka message's default 1 MB."""


def dead_letter(
    raw: bytes,
    errors: Iterable[FieldError],
    *,
    source: str,
    received_ms: int,
    ip_mode: IpMode = "anonymize",
    **where: Any,
) -> dict[str, Any]:
    """A dead-letter record: the raw payload, the errors, where it came from and when.

    Addresses in the payload and the errors are anonymised or removed by ``ip_mode``
    (SPEC 10, analytics.privacy.scrub_text), also in a payload that is not UTF-8 (its
    text read as Latin-1 is scrubbed before it is written in base64)."""
    error_list = [{"field": e.field, "message": scrub_text(e.message, ip_mode)} for e in errors]
    try:
        raw_text, encoding = scrub_text(raw.decode("utf-8"), ip_mode), "utf-8"
    except UnicodeDecodeError:
        scrubbed = scrub_text(raw.decode("latin-1"), ip_mode).encode("latin-1")
        raw_text, encoding = base64.b64encode(scrubbed).decode("ascii"), "base64"
    return {
        "source": source,
        "error": "; ".join(f"{e['field']}: {e['message']}" for e in error_list),
        "errors": error_list,
        "raw": raw_text,
        "raw_encoding": encoding,
        "received_at": format_ts(received_ms),
        **where,
    }


def utf8_prefix(raw: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``raw``, not cutting a UTF-8 character in two (a cut
    character would make valid text look like binary)."""
    if len(raw) <= limit:
        return raw
    cut = limit
    while cut > limit - 3 and cut > 0 and raw[cut] & 0xC0 == 0x80:
        cut -= 1  # raw[cut] continues a character begun before the cut: cut before it
    return raw[:cut]


def bounded_dead_letter(
    raw: bytes,
    errors: Iterable[FieldError],
    *,
    source: str,
    received_ms: int,
    size: int | None = None,
    ip_mode: IpMode = "anonymize",
    **where: Any,
) -> dict[str, Any]:
    """``dead_letter`` of at most RAW_LIMIT bytes of ``raw``; ``size`` is the
    whole payload's length when ``raw`` is already a part of it."""
    size = len(raw) if size is None else size
    record = dead_letter(
        utf8_prefix(raw, RAW_LIMIT),
        errors,
        source=source,
        received_ms=received_ms,
        ip_mode=ip_mode,
        **where,
    )
    if size > RAW_LIMIT:
        record["raw_truncated_from_bytes"] = size
    return record
