"""JSON for values the state keeps in memory or writes: orjson's output copied to its size."""

from __future__ import annotations

from typing import Any

import orjson


def compact(data: bytes) -> bytes:
    """A copy of the size of its content. orjson (3.13) returns its output in a buffer of at
    least 4 KiB, and what the state keeps (per user and session key) would cost 4 KiB each:
    gigabytes for a million open sessions (bench/sessions_at_scale.py)."""
    return bytes(memoryview(data))


def compact_dumps(value: Any) -> bytes:
    return compact(orjson.dumps(value))
