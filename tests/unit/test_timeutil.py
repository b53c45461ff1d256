"""RFC 3339 parsing/formatting: the one place where time text becomes epoch ms and back."""

from __future__ import annotations

import time

import pytest

from analytics.timeutil import format_ts, now_ms, parse_ts

JAN15 = 1_705_314_600_000  # 2024-01-15T10:30:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00Z", JAN15),
        ("2024-01-15T10:30:00z", JAN15),
        ("2024-01-15t10:30:00Z", JAN15),
        ("2024-01-15 10:30:00Z", JAN15),
        ("2024-01-15T10:30:00", JAN15),  # no offset: UTC
        ("2024-01-15T10:30:00+00:00", JAN15),
        ("2024-01-15T10:30:00-00:00", JAN15),
        ("2024-01-15T12:30:00+02:00", JAN15),
        ("2024-01-15T05:00:00-05:30", JAN15),
        ("2024-01-15T10:30:00.1Z", JAN15 + 100),
        ("2024-01-15T10:30:00.123Z", JAN15 + 123),
        ("2024-01-15T10:30:00.123999999Z", JAN15 + 123),  # truncated, not rounded
        ("2024-01-15T01:30:00+02:00", JAN15 - 11 * 3_600_000),  # 23:30 the day before
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),  # leap second: next minute
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ],
)
def test_parse_ts_accepts_rfc3339(text: str, expected: int) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-15",  # date only
        "10:30:00",  # time only
        "2024-01-15T10:30Z",  # no seconds
        "2024-01-15T10:30:00.Z",  # empty fraction
        "2024-1-15T10:30:00Z",
        "2024-01-15X10:30:00Z",
        "2024-01-15T10:30:00+0200",  # offset without colon
        "2024-01-15T10:30:00+02",
        "2024-01-15T10:30:00 UTC",
        "2024-01-15T10:30:00Z ",
        " 2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00Z\n",
        "2024-02-30T10:30:00Z",  # no such day
        "2023-02-29T10:30:00Z",
        "2024-13-01T10:30:00Z",
        "2024-01-15T24:00:00Z",
        "2024-01-15T10:60:00Z",
        "2024-01-15T10:30:61Z",
        "2024-01-15T10:30:00+24:00",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "\uff12024-01-15T10:30:00Z",  # non-ASCII digit
        "1705314600000",
        "yesterday",
    ],
)
def test_parse_ts_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_ts(text)


@pytest.mark.parametrize("value", [None, 1_705_314_600, b"2024-01-15T10:30:00Z"])
def test_parse_ts_rejects_non_strings_with_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ts(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (JAN15, "2024-01-15T10:30:00.000Z"),
        (JAN15 + 7, "2024-01-15T10:30:00.007Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_ts(ms: int, text: str) -> None:
    assert format_ts(ms) == text
    assert parse_ts(text) == ms


@pytest.mark.parametrize("ms", [-62_135_596_800_001, 253_402_300_800_000])
def test_format_ts_out_of_range(ms: int) -> None:
    with pytest.raises(ValueError):
        format_ts(ms)


def test_format_ts_sorts_like_time() -> None:
    values = [-1, 0, 999, 1000, JAN15, JAN15 + 1, 253_402_300_799_999]
    texts = [format_ts(v) for v in values]
    assert texts == sorted(texts)


def test_now_ms_is_wall_clock() -> None:
    before = time.time_ns() // 1_000_000
    assert before <= now_ms() <= time.time_ns() // 1_000_000
