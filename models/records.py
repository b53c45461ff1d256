"""One typed definition per published record (SPEC sections 3-5, 7-9) and per answer built
from one: the single place a record's fields, their types and their meaning are written.

Derived from these definitions:

* the OpenAPI components (web/openapi.py, through pydantic's JSON Schema of each TypedDict:
  field descriptions are the ``Field(description=...)`` here, a ``NotRequired`` field is
  optional, ``Literal`` is a ``const`` or ``enum``, ``X | None`` is nullable);
* the columns of the sink tables (sinks/schema.py): a field annotated with a ``Column`` is
  stored, under its name (or the column's ``name``) with the column's SQL type; the others
  are not stored (``total_revenue_cents`` becomes ``total_revenue``'s exact value, the live-only
  trend fields stay live);
* the readers that turn stored rows back into records (sinks/queries.py) select and name the
  same columns.

Values still travel as plain dicts (orjson, for speed): these are TypedDicts, so the code that
builds a record can be type-checked against its definition, and nothing is validated at run
time here (sinks/schema.py checks what it stores; analytics/validation.py the input).
``typing_extensions.TypedDict``: pydantic needs it before Python 3.12.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import Field
from typing_extensions import TypedDict

# --------------------------------------------------------------------------- columns

#: the SQL types a column may have (sinks/schema.py reads each with its own checks)
SQL_TYPES = frozenset(
    {"timestamptz", "date", "text", "integer", "bigint", "float8", "numeric", "boolean", "jsonb"}
)


@dataclass(frozen=True, slots=True)
class Column:
    """A field stored as a column of its record's sink table (sinks/schema.py)."""

    sql: str  # the column's SQL type, one of SQL_TYPES
    #: null is stored as NULL (else refused)
    nullable: bool = False
    #: a record without the field (published before it existed) stores this value
    default: Any = None
    #: a record may lack the field: it stores ``default``
    optional: bool = False
    #: money: the integer cents field whose value is stored exactly when the record has it
    cents: str | None = None
    #: the column's name when it is not the field's
    name: str | None = None

    def __post_init__(self) -> None:
        if self.sql not in SQL_TYPES:
            raise ValueError(f"unknown SQL type {self.sql!r} (known: {sorted(SQL_TYPES)})")


@dataclass(frozen=True, slots=True)
class StoredField:
    """A field of a record and the column it is stored in."""

    field: str
    column: str
    spec: Column
    array: bool  # a JSON list (else a JSON object), for a jsonb column


@functools.cache
def stored_fields(record: type) -> tuple[StoredField, ...]:
    """The fields of ``record`` that its sink table stores, in the record's order."""
    hints = typing.get_type_hints(record, include_extras=True)
    found = []
    for field, hint in hints.items():
        if typing.get_origin(hint) in (NotRequired, Required):
            (hint,) = typing.get_args(hint)
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Column):
                array = typing.get_origin(hint.__origin__) is list
                found.append(StoredField(field, meta.name or field, meta, array))
    return tuple(found)


@functools.cache
def field_names(record: type) -> tuple[str, ...]:
    """Every field of ``record``, in order."""
    return tuple(typing.get_type_hints(record))


# --------------------------------------------------------------------------- shared types

Timestamp = Annotated[
    str,
    Field(
        description="RFC 3339, UTC, milliseconds, e.g. 2026-01-01T00:00:00.000Z",
        json_schema_extra={"format": "date-time"},
    ),
]
Day = Annotated[str, Field(json_schema_extra={"format": "date"})]
Money = Annotated[float, Field(description="currency units, 2 decimals")]
Cents = Annotated[int, Field(description="the same amount in cents")]
Counts = dict[str, int]
Probability = Annotated[float, Field(ge=0, le=1)] | None


def described(text: str) -> Any:
    """A field's description (``Annotated[int, described("...")]``)."""
    return Field(description=text)


# --------------------------------------------------------------------------- KPI windows


class Trend(TypedDict):
    """A figure against the window before (SPEC 4)."""

    change_percent: Annotated[
        float,
        described(
            "100 * (current - previous) / previous; 0 when previous is 0. previous is the "
            "window before; on a live record (trends_provisional), the window before as "
            "it was at the same elapsed point"
        ),
    ]
    trend: Literal["up", "down", "stable"]


class KpiRecord(TypedDict):
    """A window's KPIs (SPEC 4), on ``live-kpis`` (live and final) and in ``kpi_metrics``."""

    window_start: Annotated[Timestamp, Column("timestamptz")]
    window_end: Annotated[Timestamp, Column("timestamptz")]
    total_users: Annotated[int, Column("bigint")]
    active_users: Annotated[int, Column("bigint")]
    new_users: Annotated[int, Column("bigint")]
    # nullable columns: records published before sessions were counted live had nulls
    total_sessions: Annotated[int, Column("bigint", nullable=True)]
    total_page_views: Annotated[int, Column("bigint")]
    total_events: Annotated[int, Column("bigint")]
    total_revenue: Annotated[Money, Column("numeric", cents="total_revenue_cents")]
    total_revenue_cents: Cents
    total_conversions: Annotated[int, Column("bigint")]
    purchases: Annotated[int, Column("bigint")]
    average_order_value: Annotated[Money, Column("numeric")]
    revenue_per_user: Annotated[Money, Column("numeric")]
    average_session_duration_seconds: Annotated[float, Column("float8", nullable=True)]
    bounce_rate_percent: Annotated[float, Column("float8", nullable=True)]
    average_engagement_score: Annotated[float, Column("float8", nullable=True)]
    conversion_rate_percent: Annotated[float, Column("float8", nullable=True)]
    conversions_per_session: Annotated[float, Column("float8", nullable=True)]
    # the session counters behind the ratios (analytics.kpis.SESSION_SUMS); records published
    # before they existed have none: null
    total_bounces: Annotated[
        int,
        described("sessions of one event (bounce_rate_percent's)"),
        Column("bigint", nullable=True, optional=True),
    ]
    total_session_duration_ms: Annotated[
        int,
        described("the sessions' summed duration (average_session_duration_seconds')"),
        Column("bigint", nullable=True, optional=True),
    ]
    total_engagement_x10000: Annotated[
        int,
        described("the sessions' summed engagement scores x 10,000, each rounded"),
        Column("bigint", nullable=True, optional=True),
    ]
    trends: Annotated[
        dict[str, Trend],
        described(
            "SPEC 4: each figure against the window before (absent: all zero). Final "
            "records compare whole windows; live records compare this window so far "
            "with the window before at the same elapsed point (trends_provisional)"
        ),
        Column("jsonb"),
    ]
    trends_provisional: NotRequired[
        Annotated[
            Literal[True],
            described(
                "Live records only (absent from final ones): the trends are provisional, "
                "this window so far against the window before at the same elapsed point "
                "of event time, its counts and sums interpolated between the moments it "
                "was published live and ratios recomputed from them"
            ),
        ]
    ]
    trends_elapsed_seconds: NotRequired[
        Annotated[
            float,
            described(
                "Live records only: the elapsed point both windows are compared at, seconds "
                "into the window (0 to its length): the latest event time seen (greatest "
                "partition watermark + grace) minus window_start"
            ),
        ]
    ]
    late_events_total: Annotated[int, Column("bigint")]
    custom: Annotated[
        dict[str, float],
        described(
            "SPEC 10: each configured custom KPI (custom_kpis in the YAML file) by name: a "
            "count of the window's events matching its filter, or a ratio_percent of two "
            "counts (0 when the denominator is 0); {} when none are configured"
        ),
        Column("jsonb", optional=True, default={}),
    ]
    is_final: Annotated[
        bool,
        described("false while the watermark has not passed window_end (SPEC 6)"),
        Column("boolean"),
    ]


class KpiBucket(TypedDict):
    """Sums of the final KPI windows starting in a bucket (``GET /api/kpis?bucket=``)."""

    bucket_start: Timestamp
    bucket_end: Timestamp
    windows: Annotated[int, described("final windows with events in the bucket")]
    total_events: int
    total_page_views: int
    total_conversions: int
    purchases: int
    total_revenue: Money
    total_revenue_cents: Cents
    new_users: Annotated[int, described("exact: each user is new in one window")]
    total_users: Annotated[
        int, described("users first seen before the bucket's last window with events ended")
    ]
    peak_active_users: Annotated[int, described("the most active users of one window")]
    active_user_windows: Annotated[
        int,
        described(
            "each window's active users, added up: a user active in n windows "
            "counts n times (see visitor_windows)"
        ),
    ]
    session_windows: Annotated[
        int,
        described(
            "each window's total_sessions, added up: a session active in n windows counts n times"
        ),
    ]
    average_order_value: Annotated[Money, described("total_revenue / purchases (exact)")]
    average_session_duration_seconds: Annotated[
        float, described("mean over session_windows (equals the window's for one window)")
    ]
    bounce_rate_percent: Annotated[float, described("100 * bounces / session_windows")]
    average_engagement_score: Annotated[float, described("mean over session_windows")]
    conversion_rate_percent: Annotated[
        float, described("100 * total_conversions / session_windows")
    ]
    conversions_per_session: Annotated[float, described("total_conversions / session_windows")]
    late_events_total: Annotated[int, described("as of the bucket's last window")]


# --------------------------------------------------------------------------- sessions


class SessionSummary(TypedDict):
    """A session's headline figures (SPEC 3): what a user's recent closed sessions keep."""

    user_id: Annotated[str, Column("text")]
    session_id: Annotated[
        str, described("'' when sessions come from the gap alone"), Column("text")
    ]
    window_start: Annotated[Timestamp, Column("timestamptz")]
    window_end: Annotated[Timestamp, Column("timestamptz")]
    duration_seconds: Annotated[float, Column("float8")]
    total_events: Annotated[int, Column("integer")]
    unique_pages: Annotated[int, Column("integer")]
    total_duration_ms: Annotated[int, Column("bigint")]
    device_type: Annotated[str | None, Column("text", nullable=True)]
    country: Annotated[str | None, Column("text", nullable=True)]
    is_bounce: Annotated[bool, Column("boolean")]
    conversions: Annotated[int, Column("integer")]
    revenue: Annotated[Money, Column("numeric", cents="revenue_cents")]
    revenue_cents: Cents
    engagement_score: Annotated[float, Column("float8")]


class SessionRecord(SessionSummary):
    """A closed session (SPEC 3), on ``session-metrics`` and in ``session_metrics``."""

    actions: Annotated[Counts, Column("jsonb")]
    pages: Annotated[Counts, Column("jsonb")]
    average_duration_ms: Annotated[float, Column("float8")]


class Session(SessionRecord):
    """An open session with its live figures (``GET /api/sessions/{user_id}``)."""

    open: Annotated[Literal[True], described("always true: not yet written to session-metrics")]


class ClosedSession(SessionRecord):
    """A closed session read back from ``session_metrics`` (``GET /api/sessions``)."""

    open: Annotated[Literal[False], described("always false: a closed session from the database")]


class RecentSession(SessionSummary):
    """One of a user's last closed sessions, from the live state."""

    open: Annotated[Literal[False], described("always false: closed and written out")]


class UserProfile(TypedDict):
    """A user's profile counters (``GET /api/users/{user_id}``)."""

    user_id: str
    first_seen: Timestamp
    last_seen: Timestamp
    events: int
    revenue: Money
    revenue_cents: Cents
    devices: list[str]
    countries: list[str]
    closed_sessions: Annotated[
        int, described("sessions already closed and written to session-metrics")
    ]
    open_sessions: int


# --------------------------------------------------------------------------- pages, traffic


class PageRow(TypedDict):
    """A page's figures in one window (SPEC 5), on ``page-view-stats``, in ``page_view_stats``."""

    window_start: Annotated[Timestamp, Column("timestamptz")]
    window_end: Annotated[Timestamp, Column("timestamptz")]
    page: Annotated[str, Column("text")]
    views: Annotated[int, Column("bigint")]
    unique_visitors: Annotated[int, described("the window's distinct users"), Column("bigint")]
    total_time_on_page_ms: Annotated[int, Column("bigint")]
    avg_time_on_page_ms: Annotated[float, Column("float8")]


class Page(TypedDict):
    """A page over several windows (``GET /api/pages/top``)."""

    page: str
    views: int
    visitor_windows: Annotated[
        int,
        described(
            "each window's unique visitors, added up: a visitor seen in n "
            "windows counts n times (exact unique visitors when one window is covered)"
        ),
    ]
    total_time_on_page_ms: int
    avg_time_on_page_ms: float


class TrafficRow(TypedDict):
    """A dimension value's figures in one window (SPEC 5), on ``traffic-stats``, in
    ``dimension_stats``."""

    window_start: Annotated[Timestamp, Column("timestamptz")]
    window_end: Annotated[Timestamp, Column("timestamptz")]
    dimension: Annotated[str, Column("text")]
    value: Annotated[str, described("'unknown' when the event had none"), Column("text")]
    events: Annotated[int, Column("bigint")]
    users: Annotated[int, described("the window's distinct users"), Column("bigint")]
    page_views: Annotated[int, Column("bigint")]
    revenue: Annotated[Money, Column("numeric", cents="revenue_cents")]
    revenue_cents: Cents


class TrafficValue(TypedDict):
    """A dimension value over several windows (``GET /api/traffic``)."""

    value: Annotated[str, described("'unknown' when the event had none")]
    events: int
    user_windows: Annotated[
        int, described("each window's distinct users, added up (see visitor_windows)")
    ]
    page_views: int
    revenue: Money
    revenue_cents: Cents


# --------------------------------------------------------------------------- funnels (SPEC 7)


class FunnelStage(TypedDict):
    """One stage of a funnel day or range."""

    stage: Annotated[str, described("`action` or `action:page-prefix`")]
    reached: Annotated[
        int,
        described(
            "users whose best attempt of the day reached this stage (over a "
            "range: added up, a user counting once per day with an attempt)"
        ),
    ]
    drop_off_percent: Annotated[
        float | None,
        described(
            "100 * (1 - reached(next) / reached), 0 when reached is 0; null on the last stage"
        ),
    ]
    median_seconds: Annotated[
        float | None,
        described(
            "median time from this stage to the next over the users who reached "
            "the next (an even count: the mean of the two middle values); null when none, and "
            "on the last stage"
        ),
    ]


class FunnelDay(TypedDict):
    """A funnel's figures for one UTC day, on ``funnel-stats`` and in ``funnel_stats``."""

    funnel: Annotated[str, Column("text")]
    day: Annotated[Day, described("UTC day of the attempts' first stage"), Column("date")]
    is_final: Annotated[
        bool,
        described("false until the watermark passes the day's end + the window"),
        Column("boolean"),
    ]
    stages: Annotated[list[FunnelStage], Column("jsonb")]
    durations_ms: Annotated[
        list[list[int]],
        described(
            "per transition k -> k+1, the flat [ms, count, ms, count, ...] multiset the "
            "median comes from; transitions nobody made may be left out at the end"
        ),
        Column("jsonb"),
    ]


# --------------------------------------------------------------------------- A/B tests (SPEC 9)


class ExperimentVariant(TypedDict):
    """A variant's figures over all events so far, as the API shows them."""

    experiment: Annotated[str, described("`metadata.experiment` of the exposures"), Column("text")]
    variant: Annotated[
        str, described("`metadata.variant` of the users' first exposure"), Column("text")
    ]
    users: Annotated[
        int, described("users whose first exposure was to this variant"), Column("bigint")
    ]
    converted_users: Annotated[
        int,
        described("of them, users with a conversion event at or after their exposure"),
        Column("bigint"),
    ]
    conversion_rate_percent: Annotated[
        float, described("100 * converted_users / users"), Column("float8")
    ]
    revenue: Annotated[
        Money,
        described("their purchase revenue at or after exposure"),
        Column("numeric", cents="revenue_cents"),
    ]
    revenue_cents: Cents
    revenue_per_user: Annotated[Money, described("revenue / users"), Column("numeric")]
    variant_conflicts: Annotated[
        int,
        described(
            "the experiment's users later exposed to another variant (they stay "
            "in their first); the same on every variant of the experiment"
        ),
        Column("bigint"),
    ]
    p_value: Annotated[
        Probability,
        described(
            "two-sided two-proportion z-test with pooled variance against the "
            "control (1 when the pooled rate is 0 or 1); null for the control itself and in an "
            "experiment without one"
        ),
        Column("float8", nullable=True),
    ]
    probability_to_beat_control: Annotated[
        Probability,
        described(
            "P(pV > pC), both Beta(1 + conversions, 1 + non-conversions), exact; null like p_value"
        ),
        Column("float8", nullable=True),
    ]
    significant: Annotated[
        bool,
        described(
            "p_value < experiments.alpha (0.05) with at least "
            "experiments.min_users (100) users in this variant and in the control"
        ),
        Column("boolean"),
    ]


class ExperimentVariantRecord(ExperimentVariant):
    """A variant as published on ``experiment-stats`` and stored in ``experiment_stats``."""

    version: NotRequired[
        Annotated[
            int,
            described("grows with each publication of the experiment (0 when absent)"),
            Column("bigint", optional=True, default=0),
        ]
    ]


# --------------------------------------------------------------------------- cohorts (SPEC 8)


class CohortCell(TypedDict):
    """One cell of a cohort's retention triangle, on ``cohort-stats``, in ``cohort_stats``."""

    cohort: Annotated[Day, described("UTC date of the users' first event"), Column("date")]
    day_offset: Annotated[int, described("d: the cell is about day cohort + d"), Column("integer")]
    cohort_size: Annotated[int, described("users of the cohort"), Column("bigint")]
    retained_users: Annotated[
        int, described("cohort users with an event on day c + d"), Column("bigint")
    ]
    retention_rate_percent: Annotated[
        float, described("100 * retained_users / cohort_size"), Column("float8")
    ]
    cumulative_revenue_per_user: Annotated[
        Money,
        described(
            "the cohort's revenue with ts before the end of day c + d, divided by cohort_size"
        ),
        Column("numeric"),
    ]
    cumulative_revenue_cents: Annotated[
        Cents,
        described("that revenue (not per user)"),
        Column("numeric", name="cumulative_revenue", cents="cumulative_revenue_cents"),
    ]
    average_engagement_score: Annotated[
        float,
        described(
            "mean SPEC 3 score of the cohort's sessions starting on day c + d, each "
            "cut at that day's end; 0 when none"
        ),
        Column("float8"),
    ]
    is_final: Annotated[
        bool, described("false until the watermark passes the end of day c + d"), Column("boolean")
    ]


class EnrichedEvent(TypedDict):
    """SPEC 2: an event on ``user-behavior-enriched`` (analytics.enrichment.enrich): the
    validated input event plus the fields the behaviour tracker adds. No API answer or table
    holds it whole; the session, KPI, page and traffic records are built from it."""

    event_id: Annotated[str, described("the input's, or one derived from topic, partition, offset")]
    user_id: str
    session_id: Annotated[str, described("'' when the input had none (sessions by gap alone)")]
    action: str
    page: str
    timestamp: Annotated[str, described("UTC, RFC 3339 with milliseconds")]
    timestamp_clamped: Annotated[bool, described("the input's time was in the future: clamped")]
    received_at: str
    duration: Annotated[int, described("ms on the page, 0 when not sent")]
    metadata: dict[str, Any]
    ip_address: Annotated[str | None, described("as privacy.ip leaves it (SPEC 10)")]
    user_agent: str | None
    country: str | None
    device: str
    is_conversion: bool
    revenue: Annotated[float, described("metadata.amount of a purchase, else 0")]
    revenue_cents: int
    is_high_value: bool
    hour_of_day: int
    day_of_week: str
    browser: str
    os: str


#: every definition above that the OpenAPI document has as a component, by component name
COMPONENTS: dict[str, type] = {
    "Trend": Trend,
    "KpiRecord": KpiRecord,
    "KpiBucket": KpiBucket,
    "Session": Session,
    "RecentSession": RecentSession,
    "ClosedSession": ClosedSession,
    "UserProfile": UserProfile,
    "Page": Page,
    "TrafficValue": TrafficValue,
    "FunnelStage": FunnelStage,
    "FunnelDay": FunnelDay,
    "ExperimentVariant": ExperimentVariant,
    "CohortCell": CohortCell,
}
