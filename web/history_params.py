"""Parameters of the history endpoints, answered from the database, and which source answers.

``/api/kpis`` and ``/api/pages/top`` serve both the live state (issue 3) and the database:

* ``/api/kpis`` with a ``bucket`` reads the database; without one, the live state;
* ``/api/pages/top`` with ``from`` or ``to`` reads the database; with ``minutes`` (or neither)
  the live state; ``minutes`` together with ``from``/``to`` is an error naming the conflict.

``/api/sessions?user_id=``, ``/api/funnels/{name}?from=&to=``, ``/api/experiments`` and
``/api/cohorts?from=&to=&days=`` always read the database.
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
#: a retention triangle covers at most this many cohorts (days), like a funnel's range
MAX_COHORT_DAYS = 366
DEFAULT_EXPERIMENTS = 100
MAX_EXPERIMENTS = 1_000


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


def parse_day_range(values: dict[str, str], most: int) -> tuple[date, date]:
    """``from`` and ``to``, required dates (UTC days, both included), ``to`` not before
    ``from``, at most ``most`` days from one to the other."""
    first = parse_date(values.get("from"), "from")
    last = parse_date(values.get("to"), "to")
    if first is None or last is None:
        raise BadParameter("from" if first is None else "to", "required, a date like 2026-01-01")
    if last < first:
        raise BadParameter("to", f"must not be before from ({first.isoformat()})")
    days = (last - first).days + 1
    if days > most:
        raise BadParameter("to", f"from-to spans {days} days, at most {most}: ask for fewer days")
    return first, last


@dataclass(frozen=True, slots=True)
class FunnelRangeQuery:
    """``GET /api/funnels/{name}?from=&to=``: the UTC days ``from`` to ``to``, both included,
    at most ``MAX_FUNNEL_DAYS`` of them."""

    first: date
    last: date

    @classmethod
    def parse(cls, query: Query) -> FunnelRangeQuery:
        values = query_values(query, ("from", "to"))
        return cls(*parse_day_range(values, MAX_FUNNEL_DAYS))


@dataclass(frozen=True, slots=True)
class CohortRangeQuery:
    """``GET /api/cohorts?from=&to=&days=``: the cohorts (UTC dates of the users' first event)
    ``from`` to ``to``, both included, at most ``MAX_COHORT_DAYS`` of them, each with its day
    offsets 0 to ``days``; ``days`` is at most the configured ``cohorts.max_day_offset``
    (``most_days``, also its default): no cell beyond it is ever published."""

    first: date
    last: date
    days: int

    @classmethod
    def parse(cls, query: Query, most_days: int) -> CohortRangeQuery:
        values = query_values(query, ("from", "to", "days"))
        first, last = parse_day_range(values, MAX_COHORT_DAYS)
        days = parse_int(values.get("days"), "days", most_days, 0, most_days)
        return cls(first, last, days)


@dataclass(frozen=True, slots=True)
class ExperimentsQuery:
    """``GET /api/experiments?limit=``: the first ``limit`` experiments by name."""

    limit: int = DEFAULT_EXPERIMENTS

    @classmethod
    def parse(cls, query: Query) -> ExperimentsQuery:
        values = query_values(query, ("limit",))
        return cls(parse_int(values.get("limit"), "limit", DEFAULT_EXPERIMENTS, 1, MAX_EXPERIMENTS))
