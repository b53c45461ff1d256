"""Batch reference for SPEC sections 3-9, written from the SPEC text only.

Every function takes a list of ENRICHED events (SPEC section 2) as plain dicts, already
deduplicated (see :func:`dedupe`), and returns plain dicts. Nothing here imports the project's
packages: this module is the independent oracle the streaming pipeline is checked against.

Input fields read from each event:

==============  ==========================================================================
event_id        str, required, unique in the input (a duplicate raises ``ValueError``)
user_id         str, required
session_id      str; missing / ``None`` / ``""`` all mean "no session id" (key part ``""``)
action          str, required
page            str; missing / ``None`` / ``""`` mean "no page"
timestamp       RFC 3339 text (``"2024-01-15T10:30:00.000Z"``); no offset means UTC; an
                ``int`` is accepted as epoch milliseconds already
duration        int ms; missing / ``None`` mean 0
revenue_cents   int, the money figure used everywhere; when missing it is derived from
                ``revenue`` (half-up to the cent); when both are present they must agree
is_conversion   bool, required
device, country, browser   str or ``None``
metadata        object (dict); missing / ``None`` mean ``{}``; read by section 9 only
==============  ==========================================================================

Rules this module had to pin down where the SPEC text leaves room (each one is what a careful
reading of the SPEC implies; they are repeated in the function docstrings):

1. Time. Timestamps become integer epoch milliseconds; digits below the millisecond are
   truncated toward the past (floor). Windows are ``[start, start + window_ms)`` with
   ``start = floor(ts / window_ms) * window_ms`` (epoch aligned, also for ts < 0).
2. Session order. Within a session key, events are ordered by ``(ts, event_id)`` with plain
   string comparison of event_id. A gap ``> gap_ms`` splits; a gap ``== gap_ms`` does not.
3. Session ``window_end_ms`` is the LAST event's ts (not last ts + gap), so
   ``duration_seconds = (last - first) / 1000`` and a one-event session lasts 0 s.
4. ``pages`` counts events of ANY action that carry a non-empty page (not only page_view).
5. ``device_type`` / ``country``: first value in (ts, event_id) order that is neither
   ``None`` nor ``""``; ``"unknown"`` is a real value. ``None`` when there is none.
6. ``engagement_score`` = min(30, 2*total_events) + min(20, 4*unique_pages)
   + min(30, total_duration_ms / 10000) + min(20, 5*distinct_actions), then min(100, .),
   as a float; ``distinct_actions`` = len(actions).
7. KPI session snapshot. The SPEC defines the session figures of window W = [start, end) from
   sessions built over all events with ts < end. Events with ts < end are a prefix of each
   key's (ts, event_id) order and the gap rule only looks at consecutive events, so those
   sessions are exactly the full sessions cut at ``end``; the ones active in W are those with
   an event in W. This module therefore walks each full session once and takes its running
   figures right after its last event of each window it touches (``_window_snapshots``).
   ``test_batch`` checks the result against the literal definition (calling
   :func:`sessions` on the filtered events, for every window) on random data.
8. ``total_conversions`` counts events with ``is_conversion`` true; ``purchases`` counts
   action ``"purchase"``; ``total_page_views`` counts action ``"page_view"``.
9. ``new_users`` / ``total_users`` use each user's first event in THE WHOLE INPUT (the input is
   taken as the complete history).
10. Money is summed in integer cents. Ratios are floats: ``average_order_value =
    cents / (100 * purchases)``, ``revenue_per_user = cents / (100 * active_users)``. Means
    are computed order-independently (integer sums, ``math.fsum``). Division by zero gives 0.0.
11. Trends. Previous window = ``start - window_ms``; when it had no events every figure is 0.
    ``change_percent = 100 * (current - previous) / previous`` (0.0 when previous is 0);
    ``"up"`` when change > 5, ``"down"`` when change < -5, else ``"stable"`` (so exactly +5 or
    -5 is stable). ``total_revenue`` is compared in cents (same ratio as in currency).
12. Top pages: views descending, then page ascending by Python string order (Unicode code
    points, which is not necessarily a database collation).
13. Dimension values: ``None`` / ``""`` / missing become ``"unknown"``; other values are used
    as given (enriched country is already upper-case).
14. Lateness (:func:`drop_late`): see its docstring.
15. Days (sections 7, 8). The UTC day of ts is ``floor(ts / 86_400_000)`` (:func:`day_index`),
    shown as ISO date text (``"2024-01-15"``); day D holds ``D * 86_400_000 <= ts <
    (D + 1) * 86_400_000``, so "the end of day D" is exclusive and an event at 00:00:00.000
    belongs to the new day.
16. Funnel config. A plain dict ``{"name": str, "window_ms": int (default 86_400_000),
    "stages": [{"action": str, "page_prefix": str | None}, ...]}`` with 2 to 10 stages and
    unique names. A stage matches an event when the action is equal (case-sensitive) and the
    page starts with ``page_prefix``; ``None`` and ``""`` both mean "any page, also none".
    (The SPEC's YAML spelling ``action:prefix`` is ambiguous, as actions may contain ``:``;
    this module takes action and prefix apart, as the product's parsed config would.)
17. Funnel attempts. A user's events in (ts, event_id) order. EVERY event matching stage 1
    starts an attempt (also one that fills a later stage of another attempt, and also while
    another attempt is running). Stage k is filled by the first event strictly after the
    event that filled stage k - 1, in that order, that matches stage k and has
    ``tk <= t1 + window_ms`` (the edge is inside). Hence one event fills at most one stage of
    an attempt (an event matching stages 1 and 2 fills stage 1 of its attempt only), and of
    two events at the same ts the one with the smaller event_id comes first. Taking the first
    match is greedy; it is also what reaches the most stages.
18. Best attempt per (funnel, user, UTC day of t1): the most stages reached; ties go to the
    attempt whose stage-1 event comes first in (ts, event_id) order (the SPEC's "earliest
    t1", with equal t1 decided by event_id).
19. Funnel rows. One row per funnel and day with at least one attempt; a day without a
    stage-1 event has no row (as a KPI window without events has none). An attempt whose t1
    is on day D counts on day D even when its later stages fall on D + 1. ``reached(k)`` =
    best attempts reaching stage k (so ``reached(1)`` = users with an attempt that day).
    Stage k's ``drop_off_percent`` and ``median_seconds`` are the figures from k to k + 1;
    for the LAST stage both are ``None`` (there is no next stage). ``drop_off_percent`` =
    ``100 * (1 - reached(k+1) / reached(k))``, 0.0 when reached(k) is 0 (cannot happen on an
    existing row's stage 1, but can further down). ``median_seconds`` = median of
    ``t(k+1) - t(k)`` in ms, divided by 1000 (float), over the best attempts reaching k + 1;
    an even count gives the mean of the two middle values; ``None`` when there are none.
20. Cohorts. A user's cohort c is the UTC day of their earliest event in THE WHOLE INPUT.
    Rows exist for d = 0 .. max_days with c + d <= ``last_day`` (default: the UTC day of the
    greatest ts in the input; later days have no data yet). ``retained_users``: cohort users
    with >= 1 event on day c + d (so d = 0 gives 100 %). ``cumulative_revenue_cents``: revenue
    of the cohort's users with ts before the end of day c + d; ``cumulative_revenue_per_user``
    = cents / (100 * cohort_size). ``average_engagement_score``: the SPEC 3 sessions of the
    whole input (same ``gap_ms``) of cohort users whose FIRST ts is on day c + d, each cut to
    its events with ts < end of that day and scored by the SPEC 3 formula; the plain mean
    over those sessions, 0.0 when there are none. A session that started the day before
    and runs past midnight belongs to its start day only.
21. Exposures. An event is an exposure to experiment X with variant V when
    ``metadata.experiment`` is a non-empty string X AND ``metadata.variant`` is a non-empty
    string V (compared exactly: case-sensitive, no trimming). An event naming an experiment
    with a missing, empty or non-string variant is NOT an exposure: it neither assigns a
    variant nor makes a conflict (it still counts as an ordinary event, e.g. a conversion).
    An empty or non-string experiment is no experiment.
22. Assignment. Per user and X, the first exposure in (ts, event_id) order gives the variant
    and the exposure time. A user with any later exposure to X naming another variant adds 1
    to X's ``variant_conflicts`` (once, however many other variants or exposures) and stays
    in the first variant.
23. Conversion and revenue after exposure compare ts only: an event with ts >= the exposure
    ts counts, whatever its event_id (the exposure event itself included).
    ``converted_users``: users with >= 1 ``is_conversion`` event then; ``revenue_cents``:
    their revenue then (SPEC 2 gives revenue to ``purchase`` events only, so this is the
    SPEC's "purchase revenue", summed as in rule 10); ``revenue_per_user`` =
    cents / (100 * users).
24. Statistics, for each variant other than the one named exactly ``control``, against it:
    ``p_value`` of the two-sided pooled two-proportion z-test (``erfc(|z| / sqrt 2)``), 1.0
    when the pooled rate is 0 or 1; ``probability_to_beat_control`` EXACT (a rational
    computed in integers by :func:`probability_to_beat`, rounded once to a float: error
    below 1e-16); ``significant`` = p_value < 0.05 and >= 100 users in both variants. For
    ``control`` itself, and for all variants of an experiment without a ``control`` variant,
    the three are ``None``.

Comparisons of float figures against the pipeline should use a small tolerance
(``pytest.approx``); integer figures and cents must match exactly.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any, TypeVar

DEFAULT_SESSION_GAP_MS = 1_800_000
DEFAULT_WINDOW_MS = 60_000
DEFAULT_GRACE_MS = 10_000
DAY_MS = 86_400_000
DEFAULT_FUNNEL_WINDOW_MS = DAY_MS
DEFAULT_COHORT_DAYS = 90
CONTROL = "control"
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_MIN_USERS = 100

#: The metrics whose trend SPEC section 4 asks for, in SPEC order.
TREND_METRICS: tuple[str, ...] = (
    "active_users",
    "total_events",
    "total_page_views",
    "total_sessions",
    "total_revenue",
    "total_conversions",
    "conversion_rate_percent",
    "bounce_rate_percent",
    "average_session_duration_seconds",
    "revenue_per_user",
)

#: The SPEC section 7 example funnel, in the config form :func:`funnel_stats` reads.
SPEC_EXAMPLE_FUNNEL: Mapping[str, Any] = {
    "name": "checkout",
    "window_ms": DEFAULT_FUNNEL_WINDOW_MS,
    "stages": [
        {"action": "page_view", "page_prefix": "/products"},
        {"action": "add_to_cart", "page_prefix": None},
        {"action": "checkout", "page_prefix": None},
        {"action": "purchase", "page_prefix": None},
    ],
}

#: The dimensions of SPEC section 5.
DIMENSIONS: tuple[str, ...] = ("device", "country", "browser")

UNKNOWN = "unknown"

Event = Mapping[str, Any]
Row = dict[str, Any]
E = TypeVar("E", bound=Mapping[str, Any])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


# --------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------


def to_epoch_ms(timestamp: str | int) -> int:
    """RFC 3339 text (or an int already in epoch ms) -> integer epoch milliseconds (UTC).

    No offset means UTC. Sub-millisecond digits are floored.
    """
    if isinstance(timestamp, bool):
        raise TypeError("timestamp must be RFC 3339 text or int epoch ms, not bool")
    if isinstance(timestamp, int):
        return timestamp
    parsed = datetime.fromisoformat(timestamp.strip().upper())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _ONE_MS


def window_start(ts_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> int:
    """Start of the epoch-aligned tumbling window holding ``ts_ms``."""
    return (ts_ms // window_ms) * window_ms


def _text(value: Any) -> str:
    """``None`` -> ``""``, anything else -> itself as text."""
    return "" if value is None else str(value)


def _cents(event: Event) -> int:
    """Revenue in integer cents: ``revenue_cents`` when given (and then it must agree with
    ``revenue`` if that is given too), else ``revenue`` rounded half-up to the cent."""
    revenue = event.get("revenue")
    from_revenue = 0
    if revenue:
        amount = Decimal(str(revenue)) * 100
        from_revenue = int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if event.get("revenue_cents") is None:
        return from_revenue
    cents = int(event["revenue_cents"])
    if revenue is not None and cents != from_revenue:
        raise ValueError(
            f"event {event.get('event_id')!r}: revenue {revenue!r} "
            f"disagrees with revenue_cents {cents}"
        )
    return cents


@dataclass(slots=True)
class _Ev:
    """One enriched event, normalised (ts parsed, missing optionals filled)."""

    ts: int
    event_id: str
    user_id: str
    session_id: str
    action: str
    page: str
    duration: int
    revenue_cents: int
    is_conversion: bool
    device: str
    country: str
    browser: str
    metadata: Mapping[str, Any]

    @property
    def order(self) -> tuple[int, str]:
        return (self.ts, self.event_id)


def _custom(in_window: Sequence[_Ev], kpis: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SPEC 10: per count KPI the window's events its filter holds for; per ratio_percent
    100 * numerator / denominator, 0 when the denominator is 0."""

    def holds(ev: _Ev, rule: Mapping[str, Any]) -> bool:
        if "action" in rule and ev.action != rule["action"]:
            return False
        if "page_prefix" in rule and not ev.page.startswith(rule["page_prefix"]):
            return False
        for key, value in (rule.get("metadata") or {}).items():
            if key not in ev.metadata:
                return False
            found = ev.metadata[key]  # JSON equality: a boolean equals only a boolean
            if isinstance(found, bool) != isinstance(value, bool) or found != value:
                return False
        return True

    out: dict[str, Any] = {}
    for kpi in kpis:
        if "count" in kpi:
            out[kpi["name"]] = sum(1 for ev in in_window if holds(ev, kpi["count"] or {}))
    for kpi in kpis:
        if "ratio_percent" in kpi:
            below = out[kpi["ratio_percent"]["denominator"]]
            above = out[kpi["ratio_percent"]["numerator"]]
            out[kpi["name"]] = 100 * above / below if below else 0.0
    return out


def _normalize(events: Iterable[Event]) -> list[_Ev]:
    out: list[_Ev] = []
    seen: set[str] = set()
    for event in events:
        event_id = str(event["event_id"])
        if event_id in seen:
            raise ValueError(f"duplicate event_id {event_id!r}: call dedupe() first")
        seen.add(event_id)
        out.append(
            _Ev(
                ts=to_epoch_ms(event["timestamp"]),
                event_id=event_id,
                user_id=str(event["user_id"]),
                session_id=_text(event.get("session_id")),
                action=str(event["action"]),
                page=_text(event.get("page")),
                duration=int(event.get("duration") or 0),
                revenue_cents=_cents(event),
                is_conversion=bool(event["is_conversion"]),
                device=_text(event.get("device")),
                country=_text(event.get("country")),
                browser=_text(event.get("browser")),
                metadata=_metadata(event),
            )
        )
    return out


def _metadata(event: Event) -> Mapping[str, Any]:
    """The event's metadata object; missing / ``None`` mean ``{}``, anything else is an error."""
    metadata = event.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"event {event.get('event_id')!r}: metadata must be an object, got {metadata!r}"
        )
    return metadata


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator as a float, 0.0 when the denominator is 0."""
    return numerator / denominator if denominator else 0.0


# --------------------------------------------------------------------------------------------
# Section 3: sessions
# --------------------------------------------------------------------------------------------


def _events_by_session_key(evs: Iterable[_Ev]) -> dict[tuple[str, str], list[_Ev]]:
    """(user_id, session_id) -> that key's events sorted by (ts, event_id)."""
    by_key: dict[tuple[str, str], list[_Ev]] = defaultdict(list)
    for ev in evs:
        by_key[(ev.user_id, ev.session_id)].append(ev)
    for key_events in by_key.values():
        key_events.sort(key=lambda ev: ev.order)
    return dict(by_key)


def _split_by_gap(ordered: Sequence[_Ev], gap_ms: int) -> list[list[_Ev]]:
    """Split one key's ordered events where consecutive ts differ by MORE than gap_ms."""
    result: list[list[_Ev]] = []
    current: list[_Ev] = []
    for ev in ordered:
        if current and ev.ts - current[-1].ts > gap_ms:
            result.append(current)
            current = []
        current.append(ev)
    if current:
        result.append(current)
    return result


def _first_non_empty(values: Iterable[str]) -> str | None:
    for value in values:
        if value:
            return value
    return None


def engagement_score(
    total_events: int, unique_pages: int, total_duration_ms: int, distinct_actions: int
) -> float:
    """SPEC section 3 engagement score: four capped components, total capped at 100."""
    score = (
        min(30, 2 * total_events)
        + min(20, 4 * unique_pages)
        + min(30.0, total_duration_ms / 10_000)
        + min(20, 5 * distinct_actions)
    )
    return float(min(100.0, score))


def _summarize(session_events: Sequence[_Ev]) -> Row:
    """One session's figures (SPEC section 3) from its events in (ts, event_id) order."""
    first, last = session_events[0], session_events[-1]
    total_events = len(session_events)
    actions = dict(Counter(ev.action for ev in session_events))
    pages = dict(Counter(ev.page for ev in session_events if ev.page))
    total_duration_ms = sum(ev.duration for ev in session_events)
    return {
        "user_id": first.user_id,
        "session_id": first.session_id,
        "window_start_ms": first.ts,
        "window_end_ms": last.ts,
        "duration_seconds": (last.ts - first.ts) / 1000,
        "total_events": total_events,
        "actions": actions,
        "pages": pages,
        "unique_pages": len(pages),
        "total_duration_ms": total_duration_ms,
        "average_duration_ms": total_duration_ms / total_events,
        "device_type": _first_non_empty(ev.device for ev in session_events),
        "country": _first_non_empty(ev.country for ev in session_events),
        "is_bounce": total_events == 1,
        "conversions": sum(1 for ev in session_events if ev.is_conversion),
        "revenue_cents": sum(ev.revenue_cents for ev in session_events),
        "engagement_score": engagement_score(
            total_events, len(pages), total_duration_ms, len(actions)
        ),
    }


def _session_event_lists(evs: Iterable[_Ev], gap_ms: int) -> list[list[_Ev]]:
    """All sessions as ordered event lists, sorted by (user_id, session_id, start)."""
    result: list[list[_Ev]] = []
    by_key = _events_by_session_key(evs)
    for key in sorted(by_key):
        result.extend(_split_by_gap(by_key[key], gap_ms))
    return result


@dataclass(slots=True)
class _Snapshot:
    """The session figures KPI windows need, for a session cut at some window end."""

    duration_ms: int
    is_bounce: bool
    engagement_score: float


def _window_snapshots(session_events: Sequence[_Ev], window_ms: int) -> list[tuple[int, _Snapshot]]:
    """(window start, the session cut at that window's end) for each window it has events in.

    Walks the session once. After adding the LAST of the session's events that fall in window
    W, the events seen so far are exactly the session's events with ts < end(W) (events are in
    ts order and the next one, if any, has ts >= end(W)), so the running figures are the
    session as built from all events with ts < end(W), and it is active in W.
    ``test_batch`` checks this against ``sessions()`` on the filtered events.
    """
    result: list[tuple[int, _Snapshot]] = []
    first_ts = session_events[0].ts
    total_duration_ms = 0
    actions: set[str] = set()
    pages: set[str] = set()
    for index, ev in enumerate(session_events):
        count = index + 1
        total_duration_ms += ev.duration
        actions.add(ev.action)
        if ev.page:
            pages.add(ev.page)
        start = window_start(ev.ts, window_ms)
        is_last = index + 1 == len(session_events)
        if is_last or window_start(session_events[index + 1].ts, window_ms) != start:
            snapshot = _Snapshot(
                duration_ms=ev.ts - first_ts,
                is_bounce=count == 1,
                engagement_score=engagement_score(
                    count, len(pages), total_duration_ms, len(actions)
                ),
            )
            result.append((start, snapshot))
    return result


def sessions(events: Iterable[Event], gap_ms: int = DEFAULT_SESSION_GAP_MS) -> list[Row]:
    """Sessions of SPEC section 3, sorted by (user_id, session_id, window_start_ms).

    Key = (user_id, session_id or ""). A key's events are taken in (ts, event_id) order and a
    gap strictly greater than ``gap_ms`` between consecutive events starts a new session (a gap
    equal to ``gap_ms`` stays in the session; the same session_id after a long gap is a new
    session). Each row: user_id, session_id, window_start_ms (first ts), window_end_ms (last
    ts), duration_seconds, total_events, actions, pages (non-empty pages, any action),
    unique_pages, total_duration_ms, average_duration_ms, device_type, country, is_bounce,
    conversions, revenue_cents, engagement_score.
    """
    return [_summarize(s) for s in _session_event_lists(_normalize(events), gap_ms)]


# --------------------------------------------------------------------------------------------
# Section 4: KPI windows
# --------------------------------------------------------------------------------------------


def _fraction(numerator: int, denominator: int) -> Fraction:
    return Fraction(numerator, denominator) if denominator else Fraction(0)


def _trend_value(window: Mapping[str, Any] | None, metric: str) -> Fraction:
    if window is None:
        return Fraction(0)
    if metric == "total_revenue":
        return Fraction(int(window["total_revenue_cents"]))
    exact: Fraction | None = window.get("_exact", {}).get(metric)
    return exact if exact is not None else Fraction(window[metric])


def trend(current: Fraction | float, previous: Fraction | float) -> dict[str, Any]:
    """SPEC section 4 trend of one metric: change_percent and up / down / stable."""
    change = 100 * (current - previous) / previous if previous else 0.0
    direction = "up" if change > 5 else "down" if change < -5 else "stable"
    return {"change_percent": float(change), "trend": direction}


def kpi_windows(
    events: Iterable[Event],
    window_ms: int = DEFAULT_WINDOW_MS,
    gap_ms: int = DEFAULT_SESSION_GAP_MS,
    custom_kpis: Sequence[Mapping[str, Any]] = (),
) -> dict[int, Row]:
    """KPI figures of SPEC section 4 per epoch-aligned tumbling window holding >= 1 event,
    with the SPEC 10 ``custom`` object of ``custom_kpis`` (the YAML file's list, as written).

    Keyed by window start (ms). Event figures count events with ts in W = [start, end).
    Session figures are the snapshot as of ``end``: sessions built from all events with
    ts < end, restricted to those with at least one event in W (see module rule 7).
    """
    evs = _normalize(events)

    events_by_window: dict[int, list[_Ev]] = defaultdict(list)
    for ev in evs:
        events_by_window[window_start(ev.ts, window_ms)].append(ev)

    first_seen: dict[str, int] = {}
    for ev in evs:
        if ev.user_id not in first_seen or ev.ts < first_seen[ev.user_id]:
            first_seen[ev.user_id] = ev.ts
    first_seen_sorted = sorted(first_seen.values())

    # Session snapshots as of each window's end, listed under that window (module rule 7).
    snapshots_by_window: dict[int, list[_Snapshot]] = defaultdict(list)
    for session_events in _session_event_lists(evs, gap_ms):
        for start, snapshot in _window_snapshots(session_events, window_ms):
            snapshots_by_window[start].append(snapshot)

    result: dict[int, Row] = {}
    for start in sorted(events_by_window):
        end = start + window_ms
        in_window = events_by_window[start]

        total_revenue_cents = sum(ev.revenue_cents for ev in in_window)
        purchases = sum(1 for ev in in_window if ev.action == "purchase")
        total_conversions = sum(1 for ev in in_window if ev.is_conversion)
        active_users = len({ev.user_id for ev in in_window})

        snapshots = snapshots_by_window[start]
        total_sessions = len(snapshots)
        duration_ms_sum = sum(s.duration_ms for s in snapshots)

        result[start] = {
            "window_start_ms": start,
            "window_end_ms": end,
            "total_events": len(in_window),
            "total_page_views": sum(1 for ev in in_window if ev.action == "page_view"),
            "total_conversions": total_conversions,
            "total_revenue_cents": total_revenue_cents,
            "purchases": purchases,
            "active_users": active_users,
            "new_users": bisect_left(first_seen_sorted, end)
            - bisect_left(first_seen_sorted, start),
            "total_users": bisect_left(first_seen_sorted, end),
            "average_order_value": _ratio(total_revenue_cents, 100 * purchases),
            "revenue_per_user": _ratio(total_revenue_cents, 100 * active_users),
            "total_sessions": total_sessions,
            "average_session_duration_seconds": _ratio(duration_ms_sum, 1000 * total_sessions),
            "bounce_rate_percent": _ratio(
                100 * sum(1 for s in snapshots if s.is_bounce), total_sessions
            ),
            "average_engagement_score": _ratio(
                math.fsum(s.engagement_score for s in snapshots), total_sessions
            ),
            "conversion_rate_percent": _ratio(100 * total_conversions, total_sessions),
            "conversions_per_session": _ratio(total_conversions, total_sessions),
            "custom": _custom(in_window, custom_kpis),
            # the trend metrics as exact fractions: a change of exactly 5 % must read "stable"
            "_exact": {
                "bounce_rate_percent": _fraction(
                    100 * sum(1 for s in snapshots if s.is_bounce), total_sessions
                ),
                "conversion_rate_percent": _fraction(100 * total_conversions, total_sessions),
                "average_session_duration_seconds": _fraction(
                    duration_ms_sum, 1000 * total_sessions
                ),
                "revenue_per_user": _fraction(total_revenue_cents, 100 * active_users),
            },
        }

    for start, window in result.items():
        previous = result.get(start - window_ms)
        window["trends"] = {
            metric: trend(_trend_value(window, metric), _trend_value(previous, metric))
            for metric in TREND_METRICS
        }
    for window in result.values():
        del window["_exact"]
    return result


# --------------------------------------------------------------------------------------------
# Section 5: page and dimension statistics
# --------------------------------------------------------------------------------------------


def page_stats(
    events: Iterable[Event], window_ms: int = DEFAULT_WINDOW_MS
) -> dict[tuple[int, str], Row]:
    """Per (window_start_ms, page) over ``page_view`` events in the window.

    Row: views, unique_visitors (distinct users), total_time_on_page_ms (sum of duration),
    avg_time_on_page_ms (mean duration, float).
    """
    grouped: dict[tuple[int, str], list[_Ev]] = defaultdict(list)
    for ev in _normalize(events):
        if ev.action == "page_view":
            grouped[(window_start(ev.ts, window_ms), ev.page)].append(ev)
    result: dict[tuple[int, str], Row] = {}
    for key in sorted(grouped):
        views = grouped[key]
        total_time = sum(ev.duration for ev in views)
        result[key] = {
            "views": len(views),
            "unique_visitors": len({ev.user_id for ev in views}),
            "total_time_on_page_ms": total_time,
            "avg_time_on_page_ms": _ratio(total_time, len(views)),
        }
    return result


def pages_in_window(stats: Mapping[tuple[int, str], Row], window_start_ms: int) -> dict[str, Row]:
    """The ``page_stats`` rows of one window, as {page: row} (the input of ``top_pages``)."""
    return {page: row for (start, page), row in stats.items() if start == window_start_ms}


def top_pages(page_stats_for_one_window: Mapping[str, Mapping[str, Any]], limit: int) -> list[str]:
    """Pages of one window ({page: row with "views"}): views descending, then page ascending."""
    ordered = sorted(
        page_stats_for_one_window,
        key=lambda page: (-int(page_stats_for_one_window[page]["views"]), page),
    )
    return ordered[: max(0, limit)]


def dimension_stats(
    events: Iterable[Event], window_ms: int = DEFAULT_WINDOW_MS
) -> dict[tuple[int, str, str], Row]:
    """Per (window_start_ms, dimension, value) for dimensions device, country and browser.

    A missing / ``None`` / ``""`` value is ``"unknown"``. Row: events, users (distinct),
    page_views, revenue_cents.
    """
    grouped: dict[tuple[int, str, str], list[_Ev]] = defaultdict(list)
    for ev in _normalize(events):
        start = window_start(ev.ts, window_ms)
        values = {"device": ev.device, "country": ev.country, "browser": ev.browser}
        for dimension in DIMENSIONS:
            grouped[(start, dimension, values[dimension] or UNKNOWN)].append(ev)
    result: dict[tuple[int, str, str], Row] = {}
    for key in sorted(grouped):
        group = grouped[key]
        result[key] = {
            "events": len(group),
            "users": len({ev.user_id for ev in group}),
            "page_views": sum(1 for ev in group if ev.action == "page_view"),
            "revenue_cents": sum(ev.revenue_cents for ev in group),
        }
    return result


# --------------------------------------------------------------------------------------------
# Days (sections 7 and 8)
# --------------------------------------------------------------------------------------------


def day_index(ts_ms: int) -> int:
    """Days since 1970-01-01 of the UTC day holding ``ts_ms`` (floor, also before 1970)."""
    return ts_ms // DAY_MS


def day_text(index: int) -> str:
    """ISO date text (``"2024-01-15"``) of a :func:`day_index`."""
    return (_EPOCH + timedelta(days=index)).date().isoformat()


def _day_from_text(text: str) -> int:
    return (date.fromisoformat(text) - _EPOCH.date()).days


# --------------------------------------------------------------------------------------------
# Section 7: funnels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stage:
    action: str
    page_prefix: str  # "" matches any page, also none

    def matches(self, ev: _Ev) -> bool:
        return ev.action == self.action and ev.page.startswith(self.page_prefix)


@dataclass(frozen=True, slots=True)
class _Funnel:
    name: str
    window_ms: int
    stages: tuple[_Stage, ...]


def _funnel(config: Mapping[str, Any]) -> _Funnel:
    """A funnel config dict checked and normalised (module rule 16)."""
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"funnel name must be a non-empty string, got {name!r}")
    window_ms = config.get("window_ms", DEFAULT_FUNNEL_WINDOW_MS)
    if isinstance(window_ms, bool) or not isinstance(window_ms, int) or window_ms < 0:
        raise ValueError(f"funnel {name!r}: window_ms must be an int >= 0, got {window_ms!r}")
    raw_stages = config.get("stages")
    if (
        not isinstance(raw_stages, Sequence)
        or isinstance(raw_stages, str)
        or not 2 <= len(raw_stages) <= 10
    ):
        raise ValueError(f"funnel {name!r}: stages must be a list of 2 to 10 stages")
    stages = []
    for stage in raw_stages:
        if not isinstance(stage, Mapping):
            raise ValueError(
                f"funnel {name!r}: a stage must be a dict with action and page_prefix, "
                f"got {stage!r}"
            )
        action = stage.get("action")
        prefix = stage.get("page_prefix")
        if not isinstance(action, str) or not action:
            raise ValueError(f"funnel {name!r}: stage action must be a non-empty string")
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"funnel {name!r}: stage page_prefix must be a string or None")
        stages.append(_Stage(action, prefix or ""))
    return _Funnel(name, window_ms, tuple(stages))


def _events_by_user(evs: Iterable[_Ev]) -> dict[str, list[_Ev]]:
    """user_id -> that user's events sorted by (ts, event_id)."""
    by_user: dict[str, list[_Ev]] = defaultdict(list)
    for ev in evs:
        by_user[ev.user_id].append(ev)
    for user_events in by_user.values():
        user_events.sort(key=lambda ev: ev.order)
    return dict(by_user)


def _attempt(ordered: Sequence[_Ev], first: int, funnel: _Funnel) -> list[_Ev]:
    """The events that fill stages 1, 2, ... of the attempt started by ``ordered[first]``.

    Stage k is filled by the first event AFTER the event that filled stage k - 1 (in
    (ts, event_id) order) that matches stage k and has ts <= t1 + window (module rule 17).
    """
    filled = [ordered[first]]
    deadline = ordered[first].ts + funnel.window_ms
    position = first
    for stage in funnel.stages[1:]:
        found = None
        for index in range(position + 1, len(ordered)):
            if ordered[index].ts > deadline:
                break  # sorted by ts: no later event is inside the window either
            if stage.matches(ordered[index]):
                found = index
                break
        if found is None:
            break
        filled.append(ordered[found])
        position = found
    return filled


def _best_attempts(evs: Iterable[_Ev], funnel: _Funnel) -> dict[tuple[str, int], list[_Ev]]:
    """(user_id, day index of t1) -> the events filling that user's best attempt that day."""
    best: dict[tuple[str, int], list[_Ev]] = {}
    for user_id, ordered in _events_by_user(evs).items():
        for first, ev in enumerate(ordered):
            if not funnel.stages[0].matches(ev):
                continue
            attempt = _attempt(ordered, first, funnel)
            key = (user_id, day_index(ev.ts))
            # Attempts are visited in (t1, event_id) order, so only strictly more stages win:
            # ties go to the earlier attempt (module rule 18).
            if key not in best or len(attempt) > len(best[key]):
                best[key] = attempt
    return best


def best_attempts(
    events: Iterable[Event], funnel: Mapping[str, Any]
) -> dict[tuple[str, str], list[int]]:
    """(user_id, UTC day of t1) -> [t1, t2, ..., tk] (epoch ms) of that user's best attempt.

    The figures of :func:`funnel_stats` are computed from exactly these attempts; this view is
    for tests and for explaining a mismatch.
    """
    config = _funnel(funnel)
    return {
        (user_id, day_text(day)): [ev.ts for ev in attempt]
        for (user_id, day), attempt in sorted(_best_attempts(_normalize(events), config).items())
    }


def funnel_stats(
    events: Iterable[Event], funnels: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, str], Row]:
    """SPEC section 7 figures per (funnel name, UTC day of t1), for days with >= 1 attempt.

    ``funnels``: config dicts ``{"name": str, "window_ms": int (default 24 h), "stages":
    [{"action": str, "page_prefix": str | None}, ...]}`` (2 to 10 stages). Row: funnel, day
    (ISO date), stages: one dict per stage k = 1..n with stage, action, page_prefix, reached,
    and the figures FROM k TO k+1: drop_off_percent (float) and median_seconds (float or
    ``None``); both ``None`` on the last stage (module rules 16-19).
    """
    evs = _normalize(events)
    configs = [_funnel(config) for config in funnels]
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"funnel names must be unique, got {names}")
    result: dict[tuple[str, str], Row] = {}
    for config in configs:
        by_day: dict[int, list[list[_Ev]]] = defaultdict(list)
        for (_user_id, day), attempt in _best_attempts(evs, config).items():
            by_day[day].append(attempt)
        for day in sorted(by_day):
            attempts = by_day[day]
            n = len(config.stages)
            reached = [sum(1 for a in attempts if len(a) >= k) for k in range(1, n + 1)]
            stages: list[Row] = []
            for k in range(1, n + 1):
                drop_off: float | None = None
                median_seconds: float | None = None
                if k < n:
                    drop_off = 100 * (1 - reached[k] / reached[k - 1]) if reached[k - 1] else 0.0
                    steps = [a[k].ts - a[k - 1].ts for a in attempts if len(a) >= k + 1]
                    median_seconds = statistics.median(steps) / 1000 if steps else None
                stage = config.stages[k - 1]
                stages.append(
                    {
                        "stage": k,
                        "action": stage.action,
                        "page_prefix": stage.page_prefix or None,
                        "reached": reached[k - 1],
                        "drop_off_percent": drop_off,
                        "median_seconds": median_seconds,
                    }
                )
            result[(config.name, day_text(day))] = {
                "funnel": config.name,
                "day": day_text(day),
                "stages": stages,
            }
    return result


# --------------------------------------------------------------------------------------------
# Section 8: cohorts and retention
# --------------------------------------------------------------------------------------------


def cohorts(
    events: Iterable[Event],
    max_days: int = DEFAULT_COHORT_DAYS,
    gap_ms: int = DEFAULT_SESSION_GAP_MS,
    last_day: str | None = None,
) -> dict[tuple[str, int], Row]:
    """SPEC section 8 figures per (cohort date, day offset d), d = 0 .. max_days.

    Only rows whose day c + d is at most ``last_day`` (ISO date; default the UTC day of the
    greatest ts in the input) exist: later days have no data yet. Row: cohort, day_offset,
    cohort_size, retained_users, retention_rate_percent, cumulative_revenue_cents,
    cumulative_revenue_per_user, average_engagement_score (module rule 20).
    """
    evs = _normalize(events)
    if not evs:
        return {}
    by_user = _events_by_user(evs)
    cohort_of = {user_id: day_index(ordered[0].ts) for user_id, ordered in by_user.items()}
    members: dict[int, list[str]] = defaultdict(list)
    for user_id in sorted(cohort_of):
        members[cohort_of[user_id]].append(user_id)
    last = _day_from_text(last_day) if last_day else day_index(max(ev.ts for ev in evs))

    # Every SPEC 3 session of the whole input, as (user, day it starts, score when cut at the
    # end of that day).
    session_scores: list[tuple[str, int, float]] = []
    for session_events in _session_event_lists(evs, gap_ms):
        start_day = day_index(session_events[0].ts)
        day_end = (start_day + 1) * DAY_MS
        cut = [ev for ev in session_events if ev.ts < day_end]
        score = float(_summarize(cut)["engagement_score"])
        session_scores.append((session_events[0].user_id, start_day, score))

    result: dict[tuple[str, int], Row] = {}
    for cohort in sorted(members):
        users = members[cohort]
        in_cohort = set(users)
        size = len(users)
        for offset in range(max_days + 1):
            day = cohort + offset
            if day > last:
                break
            day_end = (day + 1) * DAY_MS
            retained = sum(
                1 for user_id in users if any(day_index(ev.ts) == day for ev in by_user[user_id])
            )
            revenue_cents = sum(
                ev.revenue_cents for user_id in users for ev in by_user[user_id] if ev.ts < day_end
            )
            scores = [
                score
                for user_id, start_day, score in session_scores
                if user_id in in_cohort and start_day == day
            ]
            result[(day_text(cohort), offset)] = {
                "cohort": day_text(cohort),
                "day_offset": offset,
                "cohort_size": size,
                "retained_users": retained,
                "retention_rate_percent": _ratio(100 * retained, size),
                "cumulative_revenue_cents": revenue_cents,
                "cumulative_revenue_per_user": _ratio(revenue_cents, 100 * size),
                "average_engagement_score": _ratio(math.fsum(scores), len(scores)),
            }
    return result


# --------------------------------------------------------------------------------------------
# Section 9: A/B tests
# --------------------------------------------------------------------------------------------


def exposure(ev_metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """(experiment, variant) when the metadata makes the event an exposure, else ``None``.

    Both must be non-empty strings (module rule 21).
    """
    experiment = ev_metadata.get("experiment")
    variant = ev_metadata.get("variant")
    if isinstance(experiment, str) and experiment and isinstance(variant, str) and variant:
        return experiment, variant
    return None


def two_proportion_p_value(x_v: int, n_v: int, x_c: int, n_c: int) -> float:
    """Two-sided two-proportion z-test with pooled variance; 1.0 when the pooled rate is 0 or 1.

    ``x`` conversions out of ``n`` users, variant (v) against control (c); both n >= 1.
    """
    pooled = Fraction(x_v + x_c, n_v + n_c)
    if pooled in (0, 1):
        return 1.0
    variance = pooled * (1 - pooled) * (Fraction(1, n_v) + Fraction(1, n_c))
    z = float(Fraction(x_v, n_v) - Fraction(x_c, n_c)) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))  # = 2 * (1 - Phi(|z|))


def probability_to_beat(x_v: int, n_v: int, x_c: int, n_c: int) -> Fraction:
    """P(pV > pC), pV ~ Beta(1 + x_v, 1 + n_v - x_v), pC ~ Beta(1 + x_c, 1 + n_c - x_c): EXACT.

    Method (independent of the usual closed-form sum over log-gamma terms): Beta(a, b) with
    integer a, b is the law of the a-th smallest of a + b - 1 independent uniforms. Take
    n1 = n_v + 1 uniforms for pV (a1 = 1 + x_v) and n2 = n_c + 1 for pC (a2 = 1 + x_c). All
    C(n1 + n2, n1) interleavings of the two sets are equally likely, and pC < pV exactly when
    the a2-th pC-uniform comes before the a1-th pV-uniform, i.e. when j <= a1 - 1 pV-uniforms
    precede it. Interleavings with exactly j: C(a2 - 1 + j, j) * C(n1 - j + n2 - a2, n2 - a2).
    The sum is done in integers, so the result is an exact fraction (ties have probability 0).
    """
    a1, n1 = 1 + x_v, n_v + 1
    a2, n2 = 1 + x_c, n_c + 1
    rest = n2 - a2
    favourable = 0
    first = 1  # C(a2 - 1 + j, j) at j = 0
    second = math.comb(n1 + rest, rest)  # C(n1 - j + rest, rest) at j = 0
    for j in range(a1):
        favourable += first * second
        first = first * (a2 + j) // (j + 1)  # -> C(a2 + j, j + 1)
        top = n1 - j + rest
        second = second * (top - rest) // top  # -> C(top - 1, rest); top > rest here
    return Fraction(favourable, math.comb(n1 + n2, n1))


def experiments(events: Iterable[Event]) -> dict[str, Row]:
    """SPEC section 9 figures per experiment (module rules 21-24).

    Row: experiment, variant_conflicts (users counted once), variants: {variant name: users,
    converted_users, conversion_rate_percent, revenue_cents, revenue_per_user, p_value,
    probability_to_beat_control, significant}; the last three are ``None`` for ``control``
    itself and for every variant of an experiment without a ``control`` variant.
    """
    by_user = _events_by_user(_normalize(events))
    # experiment -> variant -> [(user's events, exposure ts)]
    assigned: dict[str, dict[str, list[tuple[list[_Ev], int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    conflicts: Counter[str] = Counter()
    for user_id in sorted(by_user):
        ordered = by_user[user_id]
        first: dict[str, tuple[str, int]] = {}  # experiment -> (variant, exposure ts)
        conflicted: set[str] = set()
        for ev in ordered:
            seen = exposure(ev.metadata)
            if seen is None:
                continue
            experiment, variant = seen
            if experiment not in first:
                first[experiment] = (variant, ev.ts)
            elif variant != first[experiment][0]:
                conflicted.add(experiment)
        for experiment, (variant, exposed_at) in first.items():
            assigned[experiment][variant].append((ordered, exposed_at))
        conflicts.update(conflicted)

    result: dict[str, Row] = {}
    for experiment in sorted(assigned):
        figures: dict[str, Row] = {}
        for variant in sorted(assigned[experiment]):
            members = assigned[experiment][variant]
            users = len(members)
            converted = sum(
                1
                for ordered, exposed_at in members
                if any(ev.is_conversion and ev.ts >= exposed_at for ev in ordered)
            )
            revenue_cents = sum(
                ev.revenue_cents
                for ordered, exposed_at in members
                for ev in ordered
                if ev.ts >= exposed_at
            )
            figures[variant] = {
                "users": users,
                "converted_users": converted,
                "conversion_rate_percent": _ratio(100 * converted, users),
                "revenue_cents": revenue_cents,
                "revenue_per_user": _ratio(revenue_cents, 100 * users),
                "p_value": None,
                "probability_to_beat_control": None,
                "significant": None,
            }
        control = figures.get(CONTROL)
        for variant, row in figures.items():
            if control is None or variant == CONTROL:
                continue
            x_v, n_v = row["converted_users"], row["users"]
            x_c, n_c = control["converted_users"], control["users"]
            p_value = two_proportion_p_value(x_v, n_v, x_c, n_c)
            row["p_value"] = p_value
            row["probability_to_beat_control"] = float(probability_to_beat(x_v, n_v, x_c, n_c))
            row["significant"] = (
                p_value < SIGNIFICANCE_LEVEL
                and n_v >= SIGNIFICANCE_MIN_USERS
                and n_c >= SIGNIFICANCE_MIN_USERS
            )
        result[experiment] = {
            "experiment": experiment,
            "variant_conflicts": conflicts[experiment],
            "variants": figures,
        }
    return result


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


def user_profiles(events: Iterable[Event], gap_ms: int = DEFAULT_SESSION_GAP_MS) -> dict[str, Row]:
    """Per user: first_seen_ms, last_seen_ms, events, sessions, revenue_cents, devices, countries.

    ``sessions`` = number of section 3 sessions over all the user's session keys.
    ``devices`` / ``countries``: sorted distinct values, ``None`` and ``""`` left out.
    """
    evs = _normalize(events)
    by_user: dict[str, list[_Ev]] = defaultdict(list)
    for ev in evs:
        by_user[ev.user_id].append(ev)
    session_counts: Counter[str] = Counter(
        session_events[0].user_id for session_events in _session_event_lists(evs, gap_ms)
    )
    result: dict[str, Row] = {}
    for user_id in sorted(by_user):
        user_events = by_user[user_id]
        result[user_id] = {
            "first_seen_ms": min(ev.ts for ev in user_events),
            "last_seen_ms": max(ev.ts for ev in user_events),
            "events": len(user_events),
            "sessions": session_counts[user_id],
            "revenue_cents": sum(ev.revenue_cents for ev in user_events),
            "devices": sorted({ev.device for ev in user_events if ev.device}),
            "countries": sorted({ev.country for ev in user_events if ev.country}),
        }
    return result


# --------------------------------------------------------------------------------------------
# Helpers for tests feeding raw traffic: duplicates and lateness (SPEC sections 1 and 6)
# --------------------------------------------------------------------------------------------


def dedupe(events: Iterable[E]) -> list[E]:
    """Keep the first occurrence of each event_id, in input order.

    Events without an event_id (missing, ``None`` or ``""``) are all kept: the server would
    give each one a fresh id.
    """
    seen: set[str] = set()
    kept: list[E] = []
    for event in events:
        event_id = event.get("event_id")
        if event_id is None or event_id == "":
            kept.append(event)
            continue
        if str(event_id) in seen:
            continue
        seen.add(str(event_id))
        kept.append(event)
    return kept


def drop_late(
    events_in_arrival_order: Iterable[E],
    grace_ms: int = DEFAULT_GRACE_MS,
    window_ms: int = DEFAULT_WINDOW_MS,
) -> tuple[list[E], list[E]]:
    """Split one ordered stream into (on_time, late) by the SPEC section 6 rule.

    Rule implemented, for each event in arrival order:

    * ``watermark = (greatest ts among the events that arrived BEFORE it) - grace_ms``;
      there is no watermark (nothing is late) for the first event.
    * The event is LATE when its tumbling window has already closed, i.e.
      ``window_start(ts) + window_ms <= watermark`` ("a window's figures are final once the
      watermark passes end"; reaching ``end`` counts as passing it).
    * Late events do not move the watermark (their ts is below the maximum anyway).

    So an event with ``ts >= watermark`` is never late, and an event older than the watermark
    is still on time while its window is open. The wall-clock advance of a quiet stream is not
    modelled: only event times in the given order move the watermark. Inputs whose disorder
    stays within ``grace_ms`` have no late events.
    """
    on_time: list[E] = []
    late: list[E] = []
    max_ts: int | None = None
    for event in events_in_arrival_order:
        ts = to_epoch_ms(event["timestamp"])
        if max_ts is not None and window_start(ts, window_ms) + window_ms <= max_ts - grace_ms:
            late.append(event)
            continue
        on_time.append(event)
        max_ts = ts if max_ts is None else max(max_ts, ts)
    return on_time, late
