"""Values of a Faust table that may be larger than one changelog record (a Kafka message).

Every value written to a Faust table is also a record of its changelog topic, which the
broker refuses over 1 MB by default; Faust's producer then fails the write and the stage that
made it stops. The combiner's state holds the partials of its open windows and the history
keeps each final window's pages, and SPEC 1 bounds neither how many distinct pages a window
has nor (up to 2,048 characters) how long they are. So a value over ``MAX_VALUE_BYTES`` is
written as pieces under keys of its own (``<key> 00 "piece" <digest> <index>``), and the key
holds a header, ``00`` + ``[count, digest]`` (no JSON value starts with a 00 byte). The new
pieces are written before the header and the old ones deleted after it, so a table restored
from any prefix of its changelog reads a whole value, old or new. Values that fit are
written as before, with no cost but a length check.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from analytics.record_chunks import MAX_RECORD_BYTES

MAX_VALUE_BYTES = MAX_RECORD_BYTES
HEADER = 0x00
_PIECE = b"\x00piece"


def _header(value: bytes | None) -> tuple[int, bytes] | None:
    if not value or value[0] != HEADER:
        return None
    count, digest = orjson.loads(value[1:])
    return int(count), bytes.fromhex(digest)


def _piece_keys(key: bytes, count: int, digest: bytes) -> list[bytes]:
    return [key + _PIECE + digest + index.to_bytes(4, "big") for index in range(count)]


def put(table: Any, key: bytes, value: bytes) -> None:
    """``table[key] = value``, in pieces when it is too large for one changelog record."""
    before = _header(table.get(key))
    old = _piece_keys(key, *before) if before is not None else []
    if len(value) <= MAX_VALUE_BYTES:
        table[key] = value
        new: list[bytes] = []
    else:
        digest = hashlib.blake2b(value, digest_size=8).digest()
        count = -(-len(value) // MAX_VALUE_BYTES)
        new = _piece_keys(key, count, digest)
        for index, piece_key in enumerate(new):
            table[piece_key] = value[index * MAX_VALUE_BYTES : (index + 1) * MAX_VALUE_BYTES]
        table[key] = bytes([HEADER]) + orjson.dumps([count, digest.hex()])
    kept = set(new)
    for piece_key in old:
        if piece_key not in kept and piece_key in table:
            del table[piece_key]


def get(table: Any, key: bytes) -> bytes | None:
    """The value ``put`` at ``key``, whole; None when there is none."""
    return whole(table, key, table.get(key))


def whole(table: Any, key: bytes, stored: bytes | None) -> bytes | None:
    """The value ``put`` at ``key`` from what the key holds (``stored``): itself, or the
    pieces its header names."""
    header = _header(stored)
    if header is None:
        return stored
    parts = [table.get(piece_key) for piece_key in _piece_keys(key, *header)]
    if any(part is None for part in parts):
        raise ValueError(f"{key!r}: a piece of its value is missing")
    return b"".join(part for part in parts if part is not None)


def delete(table: Any, key: bytes) -> None:
    """Delete ``key`` and its pieces."""
    header = _header(table.get(key))
    if key in table:
        del table[key]
    if header is not None:
        for piece_key in _piece_keys(key, *header):
            if piece_key in table:
                del table[piece_key]
