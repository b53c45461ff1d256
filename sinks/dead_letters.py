"""The sink-dlq record of a message a sink cannot write.

A dead letter must always be sent, or sending it would stop the sink: its value keeps at most
RAW_LIMIT bytes (analytics.dead_letters), its error ERROR_LIMIT characters, its key KEY_LIMIT
bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from analytics.dead_letters import RAW_LIMIT, utf8_prefix
from analytics.timeutil import format_ts, now_ms
from sinks.schema import TableSpec

#: characters of a dead letter's error, bytes of its key (its value: RAW_LIMIT bytes)
ERROR_LIMIT = 1000
KEY_LIMIT = 1024


def dead_letter(spec: TableSpec, record: Any, error: str, sqlstate: str | None) -> dict[str, Any]:
    """The sink-dlq record of a message that cannot be written: where it came from, its value
    (decoded when it is JSON orjson can write back, else as text) and why. A value over
    RAW_LIMIT bytes is kept as the text of its first RAW_LIMIT bytes, with
    ``value_truncated_from_bytes``."""
    raw: bytes = record.value or b""
    letter: dict[str, Any] = {
        "table": spec.name,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": _text(record.key, KEY_LIMIT) if record.key else None,
        "value": None,
        "error": error[:ERROR_LIMIT],
        "sqlstate": sqlstate,
        "time": format_ts(now_ms()),
    }
    if len(raw) > RAW_LIMIT:
        letter["value"] = _text(raw, RAW_LIMIT)
        letter["value_truncated_from_bytes"] = len(raw)
        return letter
    try:
        value = orjson.loads(raw)
        orjson.dumps(value)  # orjson reads 1,024 levels of nesting but writes only 254
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        value = _text(raw, RAW_LIMIT)
    letter["value"] = value
    return letter


def _text(raw: bytes, limit: int) -> str:
    return utf8_prefix(raw, limit).decode("utf-8", "replace")
