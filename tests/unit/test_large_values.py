"""tables/large_values.py: Faust table values too large for one changelog record, in pieces,
with dicts for the tables; and analytics/wide_json.py, the JSON of sums past 64 bits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics import wide_json
from tables import large_values
from tables.large_values import MAX_VALUE_BYTES

KEY = b"state"


class LoggedTable(dict[bytes, bytes]):
    """A table that keeps its changelog: every write and deletion, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[bytes, bytes | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.log.append((key, None))
        super().__delitem__(key)


def restored(log: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """A table restored from its changelog."""
    table: dict[bytes, bytes] = {}
    for key, value in log:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def value_of(size: int, fill: bytes) -> bytes:
    return (fill * size)[:size]


def test_a_value_that_fits_is_stored_as_it_is() -> None:
    table = LoggedTable()
    large_values.put(table, KEY, b'{"a":1}')
    assert dict(table) == {KEY: b'{"a":1}'} and large_values.get(table, KEY) == b'{"a":1}'


@given(st.lists(st.integers(0, 4 * MAX_VALUE_BYTES), min_size=1, max_size=4))
def test_every_prefix_of_the_changelog_reads_a_whole_value(sizes: list[int]) -> None:
    """Values of any size, one after the other: restored from any prefix of the changelog,
    the key reads as one of the values written, whole; at the end no piece is left over."""
    table = LoggedTable()
    written = [value_of(size, bytes([65 + n])) for n, size in enumerate(sizes)]
    for value in written:
        large_values.put(table, KEY, value)
    assert all(len(value) <= MAX_VALUE_BYTES + 64 for _, value in table.log if value)
    for cut in range(len(table.log) + 1):
        state = restored(table.log[:cut])
        read = large_values.get(state, KEY)
        assert read is None or read in written
    assert large_values.get(table, KEY) == written[-1]
    assert len(table) == (
        1 if len(written[-1]) <= MAX_VALUE_BYTES else 1 + -(-len(written[-1]) // MAX_VALUE_BYTES)
    )
    large_values.delete(table, KEY)
    assert dict(table) == {}


def test_a_missing_piece_is_an_error_not_a_short_value() -> None:
    table = LoggedTable()
    large_values.put(table, KEY, value_of(3 * MAX_VALUE_BYTES, b"x"))
    piece = next(key for key in table if key != KEY)
    del table[piece]
    with pytest.raises(ValueError, match="missing"):
        large_values.get(table, KEY)


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        -(2**63) - 1,
        {
            "revenue_cents": 10**29,
            "pages": {"/a": [1, 2**70, 3]},
            "f": 1.5,
            "s": "12345678901234567890",
        },
        [2**64 - 1, -(2**63), 10**4000],
    ],
)
def test_integers_of_any_size_encode_as_json_numbers_and_decode_exact(value: Any) -> None:
    data = wide_json.dumps(value)
    assert wide_json.loads(data) == value == wide_json.loads(data.decode())
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        assert b'"' not in data or isinstance(value, dict)  # numbers, not strings


def test_wide_json_refuses_what_is_not_json() -> None:
    for bad in (b"[NaN, 12345678901234567890]", b"[1" + b"0" * 5000 + b"]", b"{"):
        with pytest.raises(orjson.JSONDecodeError):
            wide_json.loads(bad)
