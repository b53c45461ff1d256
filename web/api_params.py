"""Query and path parameters of the web API, checked as plain functions (web/api.py).

Every problem raises ``BadParameter``, whose message starts with the parameter's name, so the
400 answer says which parameter is wrong and why. A parameter given with an empty value
(``?from=&to=``) counts as not given; one given twice, or one the endpoint does not know, is an
error rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date

from analytics.timeutil import parse_ts
from analytics.traffic import DIMENSIONS

MAX_USER_ID_CHARS = 128
MAX_MINUTES = 1440
MAX_LIMIT = 100
DEFAULT_MINUTES = 60
DEFAULT_LIMIT = 10
_DIGITS = re.compile(r"[0-9]{1,9}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Query = Iterable[tuple[str, str]]


class BadParameter(ValueError):
    """A parameter the API cannot use; ``str()`` is ``"<name>: <reason>"``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def query_values(query: Query, allowed: Iterable[str]) -> dict[str, str]:
    """The query's non-empty values by name; unknown or repeated names are errors."""
    known = tuple(allowed)
    values: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in query:
        if name not in known:
            expected = ", ".join(known) if known else "none"
            raise BadParameter(name, f"unknown parameter (this endpoint takes: {expected})")
        if name in seen:
            raise BadParameter(name, "given more than once")
        seen.add(name)
        if value != "":
            values[name] = value
    return values


def parse_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    """A decimal integer within [low, high]; ``default`` when absent."""
    if value is None:
        return default
    reason = f"must be a whole number from {low} to {high}, got {value!r}"
    if not _DIGITS.fullmatch(value):
        raise BadParameter(name, reason)
    number = int(value)
    if not low <= number <= high:
        raise BadParameter(name, reason)
    return number


def parse_time(value: str | None, name: str) -> int | None:
    """An RFC 3339 timestamp as epoch ms (no offset means UTC); None when absent."""
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        raise BadParameter(
            name, f"must be an RFC 3339 timestamp like 2026-01-01T00:00:00Z, got {value!r}"
        ) from None


def parse_date(value: str | None, name: str) -> date | None:
    """A calendar date written ``YYYY-MM-DD`` (UTC days); None when absent."""
    if value is None:
        return None
    if not _DATE.fullmatch(value):
        raise BadParameter(name, f"must be a date like 2026-01-01, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadParameter(name, f"{value!r} is not a calendar date") from None


def parse_choice(value: str | None, name: str, choices: Collection[str]) -> str:
    """One of ``choices``; required."""
    listed = ", ".join(choices)
    if value is None:
        raise BadParameter(name, f"required, one of {listed}")
    if value not in choices:
        raise BadParameter(name, f"must be one of {listed}, got {value!r}")
    return value


def parse_range(
    values: dict[str, str], required_because: str | None = None
) -> tuple[int | None, int | None]:
    """``from`` and ``to`` (RFC 3339), ``from`` before ``to``; either may be absent unless a
    reason to require both is given."""
    from_ms = parse_time(values.get("from"), "from")
    to_ms = parse_time(values.get("to"), "to")
    if required_because is not None:
        for name, value in (("from", from_ms), ("to", to_ms)):
            if value is None:
                raise BadParameter(name, f"required {required_because}")
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        raise BadParameter("to", "must be later than from")
    return from_ms, to_ms


def parse_user_id(value: str) -> str:
    """A path user_id: 1-128 characters, like SPEC section 1's ``user_id``."""
    if not 1 <= len(value) <= MAX_USER_ID_CHARS:
        raise BadParameter(
            "user_id", f"must be 1 to {MAX_USER_ID_CHARS} characters, got {len(value)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class KpiRange:
    """``GET /api/kpis``: windows whose start is in [from, to); an absent end is open."""

    from_ms: int | None = None
    to_ms: int | None = None

    @classmethod
    def parse(cls, query: Query) -> KpiRange:
        return cls(*parse_range(query_values(query, ("from", "to"))))

    def contains(self, start_ms: int) -> bool:
        return (self.from_ms is None or start_ms >= self.from_ms) and (
            self.to_ms is None or start_ms < self.to_ms
        )


@dataclass(frozen=True, slots=True)
class TopPagesQuery:
    """``GET /api/pages/top``: the last ``minutes`` minutes, ``limit`` pages."""

    minutes: int = DEFAULT_MINUTES
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, query: Query) -> TopPagesQuery:
        values = query_values(query, ("minutes", "limit"))
        return cls(
            minutes=parse_int(values.get("minutes"), "minutes", DEFAULT_MINUTES, 1, MAX_MINUTES),
            limit=parse_int(values.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        )


@dataclass(frozen=True, slots=True)
class TrafficQuery:
    """``GET /api/traffic``: one dimension over the last ``minutes`` minutes."""

    dimension: str
    minutes: int = DEFAULT_MINUTES

    @classmethod
    def parse(cls, query: Query) -> TrafficQuery:
        values = query_values(query, ("dimension", "minutes"))
        return cls(
            dimension=parse_choice(values.get("dimension"), "dimension", DIMENSIONS),
            minutes=parse_int(values.get("minutes"), "minutes", DEFAULT_MINUTES, 1, MAX_MINUTES),
        )


def no_parameters(query: Query) -> None:
    """Endpoints without query parameters still reject unknown ones."""
    query_values(query, ())
