"""The state machine of one partition: SPEC sections 3-6 for the users of that partition.

Input: the partition's enriched events in offset order, plus *ticks* (timer messages carrying
the wall-clock time through the same partition). Output: partial window figures, closed
session rows and the partition's watermark, for the combiner (analytics.combiner) to add up.

State, all keyed inside the partition (see tables/partition_state.py):
- one value per user: profile figures and the events of the user's not-yet-closed sessions;
- one clock: max event time, watermark, last arrival, open windows and their users, the
  running count of users, late events, and which users have sessions waiting to close.

Time (SPEC section 6). watermark = max ts seen - grace, never decreasing. When no event has
arrived for ``idle_ms`` (judged by tick message timestamps), event time moves on with the wall
clock: watermark = max ts - grace + (tick time - last arrival). An event whose window has
already closed (window end <= watermark) is late: counted, and left out of all state.

Closing. A window is final once the watermark reaches its end. A session is written once the
watermark *at the start of a batch* passes its last event + session_gap + kpi_window: by then
no event that could still join it can be on time, and every window it touched is final, so a
re-delivered batch never finds a window's sessions already gone.

Exactness under re-delivery: every user value records the highest offset applied to it and
the clock records the highest offset it has seen; events at or below those are skipped. The
agent writes user values before the clock, into one changelog partition, so a restored state
is always a prefix of the writes and a replay repairs exactly what is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from analytics.rows import Arrival, Row, Tick, order_key, row_of
from analytics.sessions import session_figures, split_sessions
from analytics.windows import window_end, window_start

UserState = dict[str, Any]
Clock = dict[str, Any]

RECENT_SESSIONS = 10
"""Closed sessions a user value keeps as summaries, newest first, for the web API."""


@dataclass(frozen=True, slots=True)
class PartitionRules:
    """Timing settings of sections 3, 4 and 6, in milliseconds."""

    window_ms: int = 60_000
    gap_ms: int = 1_800_000
    grace_ms: int = 10_000
    idle_ms: int = 5_000

    @property
    def close_after_ms(self) -> int:
        return self.gap_ms + self.window_ms


@dataclass(slots=True)
class PartitionOutput:
    """What a batch produces for the combiner and the session sink."""

    partials: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    late_events: int = 0


def new_clock() -> Clock:
    return {
        "max_ts": None,
        "wm": None,
        "last_arrival": None,
        "applied": -1,
        "users_total": 0,
        "late": 0,
        "windows": {},
        "live": {},
        "newcomers": {},
        "closing": {},
    }


def new_user() -> UserState:
    return {
        "first_seen": None,
        "last_seen": None,
        "events": 0,
        "revenue_cents": 0,
        "devices": [],
        "countries": [],
        "closed_sessions": 0,
        "recent": [],
        "applied": -1,
        "open": {},
    }


class PartitionState:
    """One batch's view of a partition's state: loads users lazily, remembers what changed."""

    def __init__(self, clock: Clock | None, load_user: Callable[[str], UserState | None]) -> None:
        # fields added by later versions start empty in state written by older ones
        self.clock: Clock = {**new_clock(), **clock} if clock is not None else new_clock()
        self._load_user = load_user
        self.users: dict[str, UserState] = {}
        self.dirty_users: set[str] = set()

    def user(self, user_id: str) -> UserState | None:
        if user_id not in self.users:
            loaded = self._load_user(user_id)
            if loaded is None:
                return None
            self.users[user_id] = {**new_user(), **loaded}
        return self.users[user_id]

    def user_for_update(self, user_id: str) -> UserState:
        state = self.user(user_id)
        if state is None:
            state = self.users[user_id] = new_user()
        self.dirty_users.add(user_id)
        return state


def _user_rows(user: UserState) -> Iterable[tuple[str, list[Row]]]:
    for session_id, encoded in user["open"].items():
        yield session_id, [Row.decode(item) for item in encoded]


def _apply_to_user(user: UserState, row: Row) -> None:
    if user["first_seen"] is None or row.ts < user["first_seen"]:
        user["first_seen"] = row.ts
    if user["last_seen"] is None or row.ts > user["last_seen"]:
        user["last_seen"] = row.ts
    user["events"] += 1
    user["revenue_cents"] += row.revenue_cents
    if row.device and row.device not in user["devices"]:
        user["devices"] = sorted([*user["devices"], row.device])
    if row.country and row.country not in user["countries"]:
        user["countries"] = sorted([*user["countries"], row.country])
    user["open"].setdefault(row.session_id, []).append(row.encode())


def _close_deadline(user: UserState, rules: PartitionRules) -> int | None:
    """The earliest watermark at which one of the user's open sessions can be written."""
    deadlines = [
        session[-1].ts + rules.close_after_ms
        for _, rows in _user_rows(user)
        for session in split_sessions(rows, rules.gap_ms)
    ]
    return min(deadlines) if deadlines else None


def _close_sessions(
    user_id: str, user: UserState, watermark: int, rules: PartitionRules
) -> list[dict[str, Any]]:
    """Write out and forget the user's sessions that can no longer change."""
    closed: list[dict[str, Any]] = []
    for session_id, rows in list(_user_rows(user)):
        keep: list[Row] = []
        for session in split_sessions(rows, rules.gap_ms):
            if session[-1].ts + rules.close_after_ms <= watermark:
                closed.append(session_figures(user_id, session))
            else:
                keep.extend(session)
        if keep:
            user["open"][session_id] = [row.encode() for row in sorted(keep, key=order_key)]
        else:
            del user["open"][session_id]
    user["closed_sessions"] += len(closed)
    if closed:
        summaries = [session_summary(figures) for figures in closed]
        newest_first = sorted(
            [*summaries, *user["recent"]],
            key=lambda s: (s["end_ms"], s["session_id"]),
            reverse=True,
        )
        user["recent"] = newest_first[:RECENT_SESSIONS]
    return closed


def session_summary(figures: dict[str, Any]) -> dict[str, Any]:
    """What a user value keeps of a closed session: the headline figures, not its pages."""
    return {
        "session_id": figures["session_id"],
        "start_ms": figures["window_start_ms"],
        "end_ms": figures["window_end_ms"],
        "total_events": figures["total_events"],
        "unique_pages": figures["unique_pages"],
        "total_duration_ms": figures["total_duration_ms"],
        "is_bounce": figures["is_bounce"],
        "conversions": figures["conversions"],
        "revenue_cents": figures["revenue_cents"],
        "engagement_score": figures["engagement_score"],
        "device_type": figures["device_type"],
        "country": figures["country"],
    }


def window_partial(
    state: PartitionState, start: int, rules: PartitionRules, users_before: int
) -> dict[str, Any]:
    """This partition's share of window ``start``: summable figures (SPEC sections 4 and 5)."""
    end = start + rules.window_ms
    kpi = Counter[str]()
    pages: dict[str, list[Any]] = {}
    dims: dict[str, dict[str, list[Any]]] = {"device": {}, "country": {}, "browser": {}}
    user_ids = state.clock["windows"].get(str(start), [])
    for user_id in user_ids:
        user = state.user(user_id)
        if user is None:
            continue
        if user["first_seen"] is not None and start <= user["first_seen"] < end:
            kpi["new_users"] += 1
        seen_dims: set[tuple[str, str]] = set()
        seen_pages: set[str] = set()
        for _, rows in _user_rows(user):
            _count_sessions(kpi, user_id, rows, start, end, rules)
            for row in rows:
                if not start <= row.ts < end:
                    continue
                is_view = row.action == "page_view"
                kpi["events"] += 1
                kpi["page_views"] += is_view
                kpi["conversions"] += row.conversion
                kpi["revenue_cents"] += row.revenue_cents
                kpi["purchases"] += row.action == "purchase"
                if is_view:
                    stats = pages.setdefault(row.page, [0, 0, 0])
                    stats[0] += 1
                    stats[2] += row.duration
                    if row.page not in seen_pages:
                        seen_pages.add(row.page)
                        stats[1] += 1
                for dim, value in (
                    ("device", row.device),
                    ("country", row.country),
                    ("browser", row.browser),
                ):
                    value = value or "unknown"
                    cell = dims[dim].setdefault(value, [0, 0, 0, 0])
                    cell[0] += 1
                    cell[2] += is_view
                    cell[3] += row.revenue_cents
                    if (dim, value) not in seen_dims:
                        seen_dims.add((dim, value))
                        cell[1] += 1
    kpi["active_users"] = len(user_ids)
    kpi["users_total"] = users_before + kpi["new_users"]
    return {"window_start": start, "kpi": dict(kpi), "pages": pages, "dims": dims}


def _count_sessions(
    kpi: Counter[str], user_id: str, rows: list[Row], start: int, end: int, rules: PartitionRules
) -> None:
    """Add one session key's sessions active in [start, end), as of ``end`` (SPEC 4)."""
    for session in split_sessions((r for r in rows if r.ts < end), rules.gap_ms):
        if not any(start <= r.ts for r in session):
            continue
        figures = session_figures(user_id, session)
        kpi["sessions"] += 1
        kpi["session_duration_ms"] += session[-1].ts - session[0].ts
        kpi["bounces"] += figures["is_bounce"]
        kpi["engagement_x10000"] += round(figures["engagement_score"] * 10_000)


def apply_batch(
    state: PartitionState,
    items: Iterable[Arrival | Tick],
    rules: PartitionRules,
    *,
    live: bool = False,
) -> PartitionOutput:
    """Apply one batch (offset order) and return what it finalises, or shows live."""
    clock = state.clock
    out = PartitionOutput()
    watermark_before = clock["wm"]
    touched: set[str] = set()
    for item in items:
        if item.offset <= clock["applied"]:
            continue
        clock["applied"] = item.offset
        if isinstance(item, Tick):
            _advance_idle(clock, item.timestamp_ms, rules)
            continue
        row = row_of(item.event)
        if clock["wm"] is not None and window_end(row.ts, rules.window_ms) <= clock["wm"]:
            clock["late"] += 1
            out.late_events += 1
            continue
        user_id: str = item.event["user_id"]
        user = state.user_for_update(user_id)
        if item.offset > user["applied"]:
            _apply_to_user(user, row)
            user["applied"] = item.offset
        start = window_start(row.ts, rules.window_ms)
        clock["windows"].setdefault(str(start), {})[user_id] = 1
        _count_live(clock, start, row)
        first_window = window_start(user["first_seen"], rules.window_ms)
        if str(first_window) in clock["windows"]:
            clock["newcomers"][user_id] = first_window
        clock["max_ts"] = row.ts if clock["max_ts"] is None else max(clock["max_ts"], row.ts)
        candidate = clock["max_ts"] - rules.grace_ms
        clock["wm"] = candidate if clock["wm"] is None else max(clock["wm"], candidate)
        if clock["last_arrival"] is None or item.arrived_ms > clock["last_arrival"]:
            clock["last_arrival"] = item.arrived_ms
        touched.add(user_id)
    for user_id in touched:
        deadline = _close_deadline(state.users[user_id], rules)
        if deadline is not None:
            clock["closing"][user_id] = deadline
    _finalise_windows(state, rules, out, live=live)
    if watermark_before is not None:
        _close_due_sessions(state, watermark_before, rules, out)
    return out


def _count_live(clock: Clock, start: int, row: Row) -> None:
    """Running event counters of an open window: live figures without touching any user."""
    live = clock["live"].setdefault(str(start), {})
    for name, amount in (
        ("events", 1),
        ("page_views", row.action == "page_view"),
        ("conversions", row.conversion),
        ("revenue_cents", row.revenue_cents),
        ("purchases", row.action == "purchase"),
    ):
        live[name] = live.get(name, 0) + amount


def live_partial(
    state: PartitionState, start: int, rules: PartitionRules, users_before: int
) -> dict[str, Any]:
    """An open window's share so far: event counters from the clock, and the window's
    sessions as of the events seen until now (the final partial takes them as of its end).
    Pages and dimensions are published only when the window is final."""
    clock = state.clock
    end = start + rules.window_ms
    new_users = sum(1 for window in clock["newcomers"].values() if window == start)
    kpi = Counter[str](clock["live"].get(str(start), {}))
    user_ids = clock["windows"].get(str(start), {})
    for user_id in user_ids:
        user = state.user(user_id)
        if user is not None:
            for _, rows in _user_rows(user):
                _count_sessions(kpi, user_id, rows, start, end, rules)
    kpi["active_users"] = len(user_ids)
    kpi["new_users"] = new_users
    kpi["users_total"] = users_before + new_users
    return {"window_start": start, "kpi": dict(kpi), "pages": {}, "dims": {}}


def _advance_idle(clock: Clock, now_ms: int, rules: PartitionRules) -> None:
    if clock["max_ts"] is None or clock["last_arrival"] is None:
        return
    idle = now_ms - clock["last_arrival"]
    if idle >= rules.idle_ms:
        candidate = clock["max_ts"] - rules.grace_ms + idle
        clock["wm"] = max(clock["wm"], candidate)


def _finalise_windows(
    state: PartitionState, rules: PartitionRules, out: PartitionOutput, *, live: bool
) -> None:
    clock = state.clock
    watermark = clock["wm"]
    users_before = clock["users_total"]
    for start in sorted(int(key) for key in clock["windows"]):
        final = watermark is not None and start + rules.window_ms <= watermark
        if not final and not live:
            continue
        if final:
            partial = window_partial(state, start, rules, users_before)
            clock["users_total"] = partial["kpi"]["users_total"]
            del clock["windows"][str(start)]
            clock["live"].pop(str(start), None)
            for user_id in [u for u, w in clock["newcomers"].items() if w == start]:
                del clock["newcomers"][user_id]
        else:
            partial = live_partial(state, start, rules, users_before)
        partial["final"] = final
        out.partials.append(partial)
        users_before = partial["kpi"]["users_total"]


def _close_due_sessions(
    state: PartitionState, watermark: int, rules: PartitionRules, out: PartitionOutput
) -> None:
    closing = state.clock["closing"]
    for user_id in [u for u, deadline in closing.items() if deadline <= watermark]:
        user = state.user_for_update(user_id)
        out.sessions.extend(_close_sessions(user_id, user, watermark, rules))
        deadline = _close_deadline(user, rules)
        if deadline is None:
            del closing[user_id]
        else:
            closing[user_id] = deadline
