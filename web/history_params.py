"""Parameters of the history endpoints, answered from the database, and which source answers.

``/api/kpis`` and ``/api/pages/top`` serve both the live state (issue 3) and the database:

* ``/api/kpis`` with a ``bucket`` reads the database; without one, the live state;
* ``/api/pages/top`` with ``from`` or ``to`` reads the database; with ``minutes`` (or neither)
  the live state; ``minutes`` together with ``from``/``to`` is an error naming the conflict.

``/api/sessions?user_id=`` and ``/api/funnels/{name}?from=&to=`` always read the database.
Parsing reuses web/api_params.py, so errors read the same: ``"<parameter>: <reason>"``, an
empty value counts as absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sinks.queries import BUCKETS
from web.api_params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    BadParameter,
    Query,
    parse_choice,
    parse_date,
    parse_int,
    parse_range,
    parse_user_id,
    query_values,
)

LIVE = "live"
DATABASE = "database"
#: a bucketed KPI answer has at most this many buckets (a week of minutes, 27 years of days)
MAX_BUCKETS = 10_080
DEFAULT_SESSIONS = 100
MAX_SESSIONS = 1_000
#: a funnel answer covers at most this many days (a year, a leap day included)
MAX_FUNNEL_DAYS = 366


def _given(query: Query, name: str) -> bool:
    return any(key == name and value != "" for key, value in query)


def _without_empty(query: Query, *names: str) -> list[tuple[str, str]]:
    """The query minus empty values of ``names``, which count as absent for the other source."""
    return [(key, value) for key, value in query if not (key in names and value == "")]


def kpis_source(query: Query) -> tuple[str, list[tuple[str, str]]]:
    """``(source, query for it)``: the database when ``bucket`` is given."""
    items = list(query)
    if _given(items, "bucket"):
        return DATABASE, items
    return LIVE, _without_empty(items, "bucket")


def top_pages_source(query: Query) -> tuple[str, list[tuple[str, str]]]:
    """``(source, query for it)``: the database when ``from`` or ``to`` is given, unless
    ``minutes`` is too (BadParameter)."""
    items = list(query)
    ranged = _given(items, "from") or _given(items, "to")
    if ranged and _given(items, "minutes"):
        raise BadParameter(
            "minutes",
            "cannot be combined with from/to (minutes reads the live state, from/to the database)",
        )
    if ranged:
        return DATABASE, _without_empty(items, "minutes")
    return LIVE, _without_empty(items, "from", "to")


@dataclass(frozen=True, slots=True)
class KpiBucketsQuery:
    """``GET /api/kpis?from=&to=&bucket=``: final windows starting in [from, to), by bucket."""

    bucket: str
    from_ms: int
    to_ms: int

    @classmethod
    def parse(cls, query: Query) -> KpiBucketsQuery:
        values = query_values(query, ("from", "to", "bucket"))
        bucket = parse_choice(values.get("bucket"), "bucket", BUCKETS)
        from_ms, to_ms = parse_range(values, "with bucket")
        assert from_ms is not None and to_ms is not None
        width_ms = BUCKETS[bucket] // timedelta(milliseconds=1)
        # buckets lie on the UTC grid of the epoch (as the SQL origin does)
        count = (to_ms - 1) // width_ms - from_ms // width_ms + 1
        if count > MAX_BUCKETS:
            raise BadParameter(
                "bucket",
                f"from-to spans {count} buckets of {bucket}, at most {MAX_BUCKETS}: "
                "use a wider bucket or a shorter range",
            )
        return cls(bucket, from_ms, to_ms)

    @property
    def width(self) -> timedelta:
        return BUCKETS[self.bucket]


@dataclass(frozen=True, slots=True)
class PageRangeQuery:
    """``GET /api/pages/top?from=&to=&limit=``: pages of the windows starting in [from, to)."""

    from_ms: int
    to_ms: int
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, query: Query) -> PageRangeQuery:
        values = query_values(query, ("from", "to", "limit"))
        from_ms, to_ms = parse_range(values, "with from or to (the database is asked)")
        assert from_ms is not None and to_ms is not None
        limit = parse_int(values.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return cls(from_ms, to_ms, limit)


@dataclass(frozen=True, slots=True)
class SessionsQuery:
    """``GET /api/sessions?user_id=&from=&to=&limit=``: a user's closed sessions starting in
    [from, to) (absent bounds are open), oldest first, at most ``limit``."""

    user_id: str
    from_ms: int | None = None
    to_ms: int | None = None
    limit: int = DEFAULT_SESSIONS

    @classmethod
    def parse(cls, query: Query) -> SessionsQuery:
        values = query_values(query, ("user_id", "from", "to", "limit"))
        user_id = values.get("user_id")
        if user_id is None:
            raise BadParameter("user_id", "required")
        parse_user_id(user_id)
        from_ms, to_ms = parse_range(values)
        limit = parse_int(values.get("limit"), "limit", DEFAULT_SESSIONS, 1, MAX_SESSIONS)
        return cls(user_id, from_ms, to_ms, limit)


@dataclass(frozen=True, slots=True)
class FunnelRangeQuery:
    """``GET /api/funnels/{name}?from=&to=``: the UTC days ``from`` to ``to``, both included,
    at most ``MAX_FUNNEL_DAYS`` of them."""

    first: date
    last: date

    @classmethod
    def parse(cls, query: Query) -> FunnelRangeQuery:
        values = query_values(query, ("from", "to"))
        first = parse_date(values.get("from"), "from")
        last = parse_date(values.get("to"), "to")
        if first is None or last is None:
            raise BadParameter(
                "from" if first is None else "to", "required, a date like 2026-01-01"
            )
        if last < first:
            raise BadParameter("to", f"must not be before from ({first.isoformat()})")
        days = (last - first).days + 1
        if days > MAX_FUNNEL_DAYS:
            raise BadParameter(
                "to", f"from-to spans {days} days, at most {MAX_FUNNEL_DAYS}: ask for fewer days"
            )
        return cls(first, last)
