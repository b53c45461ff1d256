"""UTC time helpers: epoch milliseconds are the one internal time unit.

Every timestamp the pipeline publishes is ``format_ts`` output (RFC 3339, UTC, milliseconds,
``Z``), so text comparison of published timestamps matches time order. ``parse_ts`` is on the
hot path of validation, hence a strict regex gate followed by the C ``fromisoformat``.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, date, datetime, timedelta

__all__ = ["datetime_of", "format_ts", "is_canonical", "ms_of", "now_ms", "parse_ts"]

DAY_MS = 86_400_000
"""A UTC day in milliseconds: funnels, cohorts and day-of-week work on day numbers ts // DAY_MS."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)
_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z, what format_ts can write
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

# RFC 3339 date-time (section 5.6), plus what SPEC section 1 allows on top of it: a space as
# separator and no offset (meaning UTC). Seconds are required, the fraction is optional.
# [0-9] rather than \d: \d would accept non-ASCII digits.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:([0-9]{2})"  # date, separator, time
    r"(\.[0-9]+)?"  # fraction
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?"  # offset
)


def datetime_of(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime (what the database's timestamptz takes)."""
    return _EPOCH + timedelta(milliseconds=ms)


def ms_of(value: datetime) -> int:
    """An aware datetime (a timestamptz read back) as epoch milliseconds."""
    return (value - _EPOCH) // _ONE_MS


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of an epoch second; cached, as nearby events share seconds."""
    return (_EPOCH + timedelta(seconds=seconds)).isoformat()[:19]


_MILLIS_TAIL = tuple(f".{millis:03d}Z" for millis in range(1000))


def format_ts(ms: int) -> str:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    seconds, millis = divmod(ms, 1000)
    try:
        return _second_text(seconds) + _MILLIS_TAIL[millis]
    except OverflowError as exc:
        raise ValueError(f"epoch milliseconds out of range: {ms}") from exc


def is_canonical(text: str) -> bool:
    """Whether ``text`` is exactly what ``format_ts`` writes for its instant."""
    return len(text) == 24 and _CANONICAL.fullmatch(text) is not None


@functools.lru_cache(maxsize=4096)
def _second_ms(head: str) -> int | None:
    """Epoch ms of ``YYYY-MM-DDTHH:MM:SS`` (UTC), None when it is not a real date and time;
    cached, as nearby events share seconds."""
    try:
        return (datetime.fromisoformat(head + "+00:00") - _EPOCH) // _ONE_MS
    except ValueError:
        return None


_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9]\.[0-9]{3}Z")
"""What format_ts writes and most clients send: parsed without building a datetime."""


def parse_ts(text: str) -> int:
    """RFC 3339 text -> epoch milliseconds; no offset means UTC.

    Fractions finer than a millisecond are truncated (floor). A leap second (``:60``) is
    read as the first millisecond of the next minute, like POSIX time. Raises ``ValueError``
    for anything else, including impossible dates, offsets of 24 hours or more and instants
    outside years 1 to 9999 UTC (which ``format_ts`` could not write back).
    """
    if type(text) is not str:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    if len(text) == 24 and _CANONICAL.fullmatch(text):
        second = _second_ms(text[:19])
        if second is not None and _MIN_MS <= second <= _MAX_MS:
            return second + int(text[20:23])
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    seconds, fraction, offset = m.groups()
    leap = seconds == "60"
    iso = text[:10] + "T" + text[11:17] + ("59" if leap else seconds)
    if fraction is not None:
        iso += fraction[:7]  # "." + at most 6 digits: microseconds
    if offset is None or offset in ("Z", "z"):
        iso += "+00:00"
    else:
        iso += offset
    try:
        ms = (datetime.fromisoformat(iso) - _EPOCH) // _ONE_MS
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} ({exc})") from exc
    if leap:
        ms = ms - ms % 1000 + 1000
    if not _MIN_MS <= ms <= _MAX_MS:  # e.g. 0001-01-01T00:00:00+01:00
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} (outside years 1 to 9999 UTC)")
    return ms


def now_ms() -> int:
    """Wall-clock time as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def day_of(ts_ms: int) -> int:
    """The UTC day of an epoch-ms instant, as days since 1970-01-01."""
    return ts_ms // DAY_MS


def day_text(day: int) -> str:
    """``YYYY-MM-DD`` of a UTC day number."""
    return (_EPOCH_DAY + timedelta(days=day)).isoformat()


def day_number(value: date) -> int:
    """The UTC day number of a date."""
    return (value - _EPOCH_DAY).days
