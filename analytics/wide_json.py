"""JSON whose integers may be wider than 64 bits, for the sums SPEC leaves unbounded.

SPEC 1 bounds what one event adds (``metadata.amount``: 1e11 cents; ``duration``: 8.64e7 ms)
but not how many events a user, a session or a window has, so a sum of them has no bound:
185 million purchases of the largest amount pass 2**64 - 1 cents, and orjson writes no
integer outside [-2**63, 2**64 - 1] (``JSONEncodeError``). JSON itself sets no limit, so:

* ``dumps`` is orjson's, and only when orjson refuses the value are its wide integers written
  as JSON numbers (orjson fragments of their digits): the normal case costs nothing more;
* ``loads`` is orjson's, which reads a number outside that range as an inexact float (or
  refuses one past 1e308): a text with a run of 19 digits or more, which every such number
  has, is read by the standard library instead, exact at any size.

``loads`` scans the text, so the hot path's state (analytics.partition_codec) marks its wide
values instead and reads them with ``exact_loads``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
_LONG_NUMBER = re.compile(rb"\d{19}")


def _widen(value: Any) -> Any:
    """``value`` with every integer orjson cannot write as a fragment of its digits."""
    kind = type(value)
    if kind is int:
        return value if INT64_MIN <= value <= UINT64_MAX else orjson.Fragment(str(value))
    if kind is dict:
        return {key: _widen(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_widen(item) for item in value]
    return value


def dumps(value: Any, option: int | None = None) -> bytes:
    """orjson's encoding of ``value``; integers of any size are written as JSON numbers."""
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        widened = _widen(value)  # what else orjson refuses (nesting, types) it refuses again
        return orjson.dumps(widened, option=option)


def loads(data: bytes | str) -> Any:
    """The decoded JSON, with integers of any size exact."""
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_NUMBER.search(raw) is None:
        return orjson.loads(raw)
    return exact_loads(raw)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact_loads(data: bytes | str) -> Any:
    """The standard library's decoding: exact integers of any size (slower than orjson).

    Raises ``orjson.JSONDecodeError`` like ``orjson.loads`` for text that is not JSON, or a
    number of more digits than Python converts (``sys.get_int_max_str_digits``)."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except ValueError as exc:  # json.JSONDecodeError, or too many digits for an int
        raise orjson.JSONDecodeError(str(exc), "", 0) from None
