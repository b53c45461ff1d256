"""The state machine of one partition: SPEC sections 3-6 for the users of that partition.

Input: the partition's enriched events in offset order, plus *ticks* (timer messages carrying
the wall-clock time through the same partition). Output: partial window figures, closed
session rows and the partition's watermark, for the combiner (analytics.combiner) to add up.

Time (SPEC section 6). watermark = max ts seen - grace, never decreasing. When no event has
arrived for ``idle_ms`` (judged by tick message timestamps), event time moves on with the wall
clock: watermark = max ts - grace + (tick time - last arrival). An event whose window has
already closed (window end <= watermark) is late: counted, and left out of all state. Every
window that ends at or before the watermark is finalised at the end of each batch, so
``finalized_through`` (the end of the last final window) bounds the ts of every event that
can still be accepted from below.

State whose size does not grow with a session's length. A user keeps, per session key, the
*summaries* of its sessions (analytics.sessions.SessionSummary: counts, sums, distinct pages
and actions) for its events older than ``folded_until``, and the events at or after it as
*pending* rows, sorted. No accepted event can be older than ``finalized_through``, so rows
before it can be folded into summaries. A KPI window's session figures "as of its end" are a
summary plus the pending rows before the end (analytics.sessions.SessionPreview), computed
without changing either.

Folding is deferred to a later batch than the one that finalised the windows: a user is only
folded up to the ``finalized_through`` that the clock had when the batch *started*, which is
already durable. A re-delivered batch (after a crash between writes) therefore finds every
row of the windows it finalises again still pending, and computes the same partials.
Sessions close the same way: once the watermark at the start of a batch passes their last
event + session_gap + kpi_window, when no on-time event can still join them and every window
they touched is final.

Everything lives in memory between batches (``PartitionState``), loaded lazily from the
partition's table, and each batch's changes come out of ``take_writes`` as key/value writes in
an order that makes any prefix of them safe to restore: users, windows, the close index, the
clock, and last the deletion of windows the clock says are final. Every user and window value
records the highest offset applied to it and the clock the highest offset seen; events at or
below those are skipped, so a restored prefix is repaired exactly by re-delivery.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from analytics import partition_codec as codec
from analytics.custom_kpis import NO_CUSTOM_KPIS, CustomKpis
from analytics.custom_kpis import is_counter as is_custom_counter
from analytics.journeys import JourneyRules, Journeys
from analytics.rows import Arrival, Row, Tick, row_of
from analytics.sessions import SessionPreview, SessionSummary
from analytics.timeutil import DAY_MS
from analytics.windows import window_end, window_start

LIVE_COUNTERS = ("events", "page_views", "conversions", "revenue_cents", "purchases")
"""The event counters of an open window that need no user: its live figures."""

_NEVER = 2**62
FOLD_ROWS_AT_LEAST = 32  # rows folded per batch when users wait for it
FOLD_ROWS_PER_EVENT = 2  # ... plus this many per event of the batch: more than come in

RECENT_SESSIONS = 10
"""Closed sessions a user value keeps as summaries, newest first, for the web API."""


@dataclass(frozen=True, slots=True)
class PartitionRules:
    """Timing settings of sections 3, 4 and 6, in milliseconds."""

    window_ms: int = 60_000
    gap_ms: int = 1_800_000
    grace_ms: int = 10_000
    idle_ms: int = 5_000
    journeys: JourneyRules = field(default_factory=JourneyRules)
    custom_kpis: CustomKpis = NO_CUSTOM_KPIS

    @property
    def close_after_ms(self) -> int:
        return self.gap_ms + self.window_ms


@dataclass(slots=True)
class PartitionOutput:
    """What a batch produces for the combiner and the session sink."""

    partials: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    journeys: list[dict[str, Any]] = field(default_factory=list)
    """Shares of SPEC 7-9 figures for the combiner (analytics.journeys)."""
    late_events: int = 0


class StateStore(Protocol):
    """Where a partition's state is read from: its table partition (RocksDB), or a dict."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterable[tuple[bytes, bytes]]:
        """Items with ``start <= key < stop``, in key order."""
        ...


Write = tuple[bytes, bytes | None]
"""A key and its new value; None deletes the key."""


class SessionKey:
    """One (user, session_id): summaries of sessions not yet closed, oldest first, and the
    pending rows, in (ts, event_id) order. The summaries are stored in the user's value,
    each pending row under a key of its own (analytics.partition_codec), so an event costs
    the same to store however long its session is."""

    __slots__ = ("encoded", "first_closed", "first_end", "pending", "summaries", "walk")

    def __init__(self) -> None:
        self.summaries: list[SessionSummary] = []
        self.pending: list[Row] = []
        self.walk: _Walk | None = None
        """Where the last ``previews`` stopped, to go on from there (not stored)."""
        self.encoded: Any = None
        """The summaries' JSON while unchanged (analytics.partition_codec): most of a
        user's session keys wait unchanged for their sessions to close."""
        self.first_end: int | None = None
        self.first_closed = False
        """``first_session_end`` and whether a later session exists, kept up to date as
        rows come in order; None when it must be worked out again."""

    def add(self, row: Row, gap_ms: int) -> bool:
        """Take a row in; False when it is there already (a replay after a crash that kept
        the row but not its user)."""
        pending = self.pending
        if not pending or row > pending[-1]:
            previous = pending[-1].ts if pending else None
            pending.append(row)
            self._extend_first(previous, row.ts, gap_ms)
            return True
        index = bisect.bisect_left(pending, row)
        if index < len(pending) and pending[index] == row:
            return False
        pending.insert(index, row)
        if self.walk is not None and index < self.walk.hi:
            self.walk = None  # a row before where it stopped: walk again
        self.first_end = None
        return True

    def _extend_first(self, previous: int | None, ts: int, gap_ms: int) -> None:
        """A row after all others: the oldest session grows, or a later one begins."""
        if self.first_end is None or self.first_closed:
            return
        if previous is None and self.summaries:
            previous = self.summaries[-1].end
        if previous is not None and ts - previous > gap_ms:
            self.first_closed = True
        else:
            self.first_end = ts

    def changed(self) -> None:
        """Its summaries or the start of its rows changed: nothing cached holds."""
        self.encoded = None
        self.walk = None
        self.first_end = None

    def fold(self, limit: int, gap_ms: int) -> list[Row]:
        """Move the pending rows older than ``limit`` into the summaries; returns them."""
        pending = self.pending
        cut = bisect.bisect_left(pending, limit, key=_ts)
        if not cut:
            return []
        summaries = self.summaries
        current = summaries[-1] if summaries else None
        folded = pending[:cut]
        for row in folded:
            if current is None or row.ts - current.end > gap_ms:
                current = SessionSummary(row)
                summaries.append(current)
            else:
                current.add(row)
        del pending[:cut]
        self.changed()
        return folded

    def first_session_end(self, gap_ms: int) -> int | None:
        """Last ts of the oldest session (summaries and pending rows taken together)."""
        if self.first_end is not None:
            return self.first_end
        summaries, rows = self.summaries, self.pending
        closed = len(summaries) > 1
        if summaries:
            end = summaries[0].end
        elif rows:
            end, rows = rows[0].ts, rows[1:]
        else:
            return None
        if not closed:
            for row in rows:
                if row.ts - end > gap_ms:
                    closed = True
                    break
                end = row.ts
        self.first_end, self.first_closed = end, closed
        return end

    def window_rows(self, start: int, end: int) -> tuple[int, int]:
        """The index range of the pending rows with ts in [start, end)."""
        pending = self.pending
        return bisect.bisect_left(pending, start, key=_ts), bisect.bisect_left(
            pending, end, key=_ts
        )

    def previews(self, lo: int, hi: int, gap_ms: int) -> list[SessionPreview]:
        """The sessions with a row among ``pending[lo:hi]`` (a window's rows), as of
        ``pending[hi]``: those a KPI window counts (SPEC section 4).

        Goes on from where the last call stopped when it can (the same window, grown; or a
        later one): a window's live figures, asked again and again as its rows arrive, and
        consecutive windows each cost the new rows only. The previews it returns are
        changed by the next call: read them before."""
        rows = self.pending
        walk = self.walk
        if walk is not None and walk.hi <= hi and walk.lo == lo:
            done, current, active, index = walk.done, walk.current, walk.active, walk.hi
        elif walk is not None and walk.hi <= lo:
            done, current, active, index = [], walk.current, False, walk.hi
        else:
            index = lo
            while index > 0 and rows[index].ts - rows[index - 1].ts <= gap_ms:
                index -= 1
            summaries = self.summaries
            current = None
            if index == 0 and summaries and rows[0].ts - summaries[-1].end <= gap_ms:
                current = SessionPreview(summaries[-1])
            done, active = [], False
        while index < hi:
            row = rows[index]
            if current is None or row.ts - current.end > gap_ms:
                if current is not None and active:
                    done.append(current)
                current = SessionPreview(None, row)
                active = index >= lo
            else:
                current.add(row)
                if index >= lo:
                    active = True
            index += 1
        self.walk = _Walk(lo, hi, done, current, active)
        return [*done, current] if current is not None and active else list(done)


class _Walk:
    """Where ``SessionKey.previews`` stopped: the window's first row, the row after the
    last one taken, the sessions of the window already complete, the current one."""

    __slots__ = ("active", "current", "done", "hi", "lo")

    def __init__(
        self,
        lo: int,
        hi: int,
        done: list[SessionPreview],
        current: SessionPreview | None,
        active: bool,
    ) -> None:
        self.lo, self.hi, self.done, self.current, self.active = lo, hi, done, current, active


def _ts(row: Row) -> int:
    return row.ts


class UserState:
    """One user: profile counters, open sessions by session key, and bookkeeping."""

    __slots__ = (
        "applied",
        "closed_sessions",
        "countries",
        "devices",
        "events",
        "first_seen",
        "folded_until",
        "index_at",
        "journey",
        "keys",
        "last_seen",
        "pieces",
        "recent",
        "recent_encoded",
        "revenue_cents",
        "rows_added",
        "rows_folded",
    )

    def __init__(self) -> None:
        self.first_seen: int | None = None
        self.last_seen: int | None = None
        self.events = 0
        self.revenue_cents = 0
        self.devices: list[str] = []
        self.countries: list[str] = []
        self.closed_sessions = 0
        self.recent: list[dict[str, Any]] = []
        self.recent_encoded: Any = None
        self.applied = -1
        self.folded_until: int | None = None
        self.index_at: int | None = None
        self.keys: dict[str, SessionKey] = {}
        self.journey: Any = None
        """The user's SPEC 7-9 state (analytics.journeys.JourneyUser), its stored data until
        first used, None when there is none: kept in this value, not one of its own."""
        self.rows_added: list[Row] = []  # pending rows to store, since the last write
        self.rows_folded: list[Row] = []  # pending rows to delete: in summaries now
        self.pieces: list[bytes] = []  # keys of its stored value's pieces, when too large

    def add(self, row: Row, gap_ms: int) -> bool:
        """Count an on-time event in the profile and keep it as a pending row; False when
        the row was there already (see ``SessionKey.add``)."""
        if self.first_seen is None or row.ts < self.first_seen:
            self.first_seen = row.ts
        if self.last_seen is None or row.ts > self.last_seen:
            self.last_seen = row.ts
        self.events += 1
        self.revenue_cents += row.revenue_cents
        if row.device and row.device not in self.devices:
            self.devices = sorted([*self.devices, row.device])
        if row.country and row.country not in self.countries:
            self.countries = sorted([*self.countries, row.country])
        key = self.keys.get(row.session_id)
        if key is None:
            key = self.keys[row.session_id] = SessionKey()
        if key.add(row, gap_ms):
            self.rows_added.append(row)
            return True
        return False

    def fold(self, limit: int | None, gap_ms: int) -> None:
        if limit is None or (self.folded_until is not None and self.folded_until >= limit):
            return
        for key in self.keys.values():
            self.rows_folded += key.fold(limit, gap_ms)
        self.folded_until = limit

    def close_deadline(self, rules: PartitionRules) -> int | None:
        """The earliest watermark at which one of the user's sessions can be written."""
        ends = [key.first_session_end(rules.gap_ms) for key in self.keys.values()]
        known = [end for end in ends if end is not None]
        return min(known) + rules.close_after_ms if known else None

    def close_sessions(self, user_id: str, watermark: int, rules: PartitionRules) -> list[Any]:
        """Write out and forget the folded sessions that can no longer change."""
        closed: list[dict[str, Any]] = []
        for session_id, key in list(self.keys.items()):
            summaries = key.summaries
            while summaries and summaries[0].end + rules.close_after_ms <= watermark:
                if len(summaries) == 1 and key.pending:
                    first = key.pending[0].ts
                    if first - summaries[0].end <= rules.gap_ms:
                        break  # still growing: cannot happen once folded, kept as a guard
                closed.append(summaries.pop(0).figures(user_id))
                key.changed()
            if not summaries and not key.pending:
                del self.keys[session_id]
        if closed:
            self.closed_sessions += len(closed)
            summaries_ = [session_summary(figures) for figures in closed]
            newest_first = sorted(
                [*summaries_, *self.recent],
                key=lambda s: (s["end_ms"], s["session_id"]),
                reverse=True,
            )
            self.recent = newest_first[:RECENT_SESSIONS]
            self.recent_encoded = None
        return closed

    def recent_json(self) -> Any:
        """``recent`` as JSON (an orjson fragment), kept until it changes."""
        if self.recent_encoded is None:
            self.recent_encoded = orjson.Fragment(codec.compact_dumps(self.recent))
        return self.recent_encoded

    def sessions_started(self, start: int, end: int, gap_ms: int) -> list[tuple[int, float]]:
        """(start, engagement score) of the open sessions that start in [start, end), taken
        as they stand before ``end`` (SPEC 8: a session cut at the end of its first day).
        Summaries never hold rows at or after ``end`` here: the caller asks once no event
        before ``end`` can come, before any later row is folded (fold limits trail it)."""
        found: list[tuple[int, float]] = []
        for key in self.keys.values():
            current: SessionPreview | None = None
            previews: list[SessionPreview] = []
            if key.summaries:
                previews = [SessionPreview(summary) for summary in key.summaries]
                current = previews[-1]
            for row in key.pending:
                if row.ts >= end:
                    break
                if current is None or row.ts - current.end > gap_ms:
                    current = SessionPreview(None, row)
                    previews.append(current)
                else:
                    current.add(row)
            found += [(p.start, p.engagement()) for p in previews if start <= p.start < end]
        return found

    def open_sessions(self, user_id: str, gap_ms: int) -> list[dict[str, Any]]:
        """Every session not yet written out, with its SPEC section 3 figures so far."""
        sessions: list[dict[str, Any]] = []
        for key in self.keys.values():
            summaries = [SessionSummary.decode(s.encode()) for s in key.summaries]
            current = summaries[-1] if summaries else None
            for row in key.pending:
                if current is None or row.ts - current.end > gap_ms:
                    current = SessionSummary(row)
                    summaries.append(current)
                else:
                    current.add(row)
            sessions += [summary.figures(user_id) for summary in summaries]
        return sessions


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


class WindowState:
    """An open window of this partition: its users, and running event counters for live
    figures (the final figures are computed from the users' rows)."""

    __slots__ = (
        "applied",
        "custom",
        "dirty",
        "live",
        "live_changed",
        "live_users_total",
        "new_users",
        "newcomers",
        "persisted",
        "session_sums",
        "sessions",
        "start",
        "tally",
        "touched",
        "users",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.users: set[str] = set()
        self.live = [0] * len(LIVE_COUNTERS)  # running counters, in LIVE_COUNTERS order
        self.custom: dict[str, int] = {}  # custom KPI counters (analytics.custom_kpis)
        self.applied = -1
        self.new_users: list[str] = []  # members added since the last write
        self.dirty = False  # live counters changed since the last write
        self.persisted = False  # its value was written (or loaded)
        self.live_changed = True  # an event came since its last live partial
        self.live_users_total = 0  # users_total of its last live partial
        # Figures worked out from the users' rows when first needed, then kept up to date
        # as rows come (PartitionState.row_added), so the next partial costs what changed,
        # not the window's rows. Not stored. Users read back after a crash may hold rows of
        # a window that was not stored, so even a new window starts from their rows.
        self.tally: _Tally | None = None
        self.newcomers: set[str] | None = None  # users first seen in the window
        self.sessions: dict[tuple[str, str], tuple[int, int, int, int]] | None = None
        """Per (user, session_id): the sessions active in the window as of its end, their
        summed duration, bounces and engagement (x10,000)."""
        self.session_sums = [0, 0, 0, 0]
        self.touched: set[tuple[str, str]] = set()  # session keys to figure out again

    def forget_figures(self) -> None:
        self.tally = self.newcomers = self.sessions = None
        self.touched = set()

    def count(self, user_id: str, row: Row) -> None:
        if user_id not in self.users:
            self.users.add(user_id)
            self.new_users.append(user_id)
        live = self.live
        live[0] += 1
        live[1] += row.action == "page_view"
        live[2] += row.conversion
        live[3] += row.revenue_cents
        live[4] += row.action == "purchase"
        self.dirty = True
        self.live_changed = True

    def count_custom(self, counters: list[str]) -> None:
        custom = self.custom
        for name in counters:
            custom[name] = custom.get(name, 0) + 1

    def live_figures(self) -> dict[str, int]:
        figures = dict(zip(LIVE_COUNTERS, self.live, strict=True))
        if self.custom:
            figures.update(self.custom)
        return figures


@dataclass(slots=True)
class Clock:
    """The partition's time and counters, one value written last in every batch."""

    max_ts: int | None = None
    wm: int | None = None
    last_arrival: int | None = None
    applied: int = -1
    users_total: int = 0
    late: int = 0
    finalized_through: int | None = None


class PartitionState:
    """A partition's state in memory: users loaded on first use, open windows, the clock.

    Lives from one batch to the next while the partition is assigned; ``take_writes`` hands
    out what changed. ``max_users`` bounds the users kept decoded in memory (least recently
    used clean users are dropped after a write; they are read again when needed).
    """

    def __init__(self, store: StateStore, rules: PartitionRules, max_users: int = 0) -> None:
        self.store = store
        self.rules = rules
        self.max_users = max_users
        stored = store.get(codec.CLOCK_KEY)
        self.clock = codec.decode_clock(stored) if stored is not None else Clock()
        self.users: dict[str, UserState] = {}
        self.dirty_users: set[str] = set()
        self.windows: dict[int, WindowState] = {}
        self._stale_windows: list[WindowState] = []
        self._finalized: list[WindowState] = []
        self._index_puts: list[Write] = []
        self._index_deletes: list[bytes] = []
        self._stale_rows: list[bytes] = []  # rows a crash left behind their fold
        self._fold_queue: deque[str] = deque()  # users with rows of final windows
        self._fold_queued: set[str] = set()
        self._next_due: int | None = None
        """The earliest time in the close index (None: not read yet), so that batches
        before it need not read the index."""
        self.fold_limit = self.clock.finalized_through
        self.wm_at_start = self.clock.wm
        self.open_users = codec.count_index(store)
        """Users filed in the close index: those with open sessions (a gauge, not state)."""
        self._load_windows()
        if stored is not None:
            self._load_legacy(stored)
        self.journeys = (
            Journeys(store, rules.journeys, self.user_for_update, self._known)
            if rules.journeys.active
            else None
        )

    # ------------------------------------------------------------------ loading

    def _load_windows(self) -> None:
        loaded: dict[int, WindowState] = {}
        for start, value in codec.scan_windows(self.store):
            window = loaded[start] = WindowState(start)
            window.applied, live = value
            window.live = [live.get(name, 0) for name in LIVE_COUNTERS]
            window.custom = {name: n for name, n in live.items() if is_custom_counter(name)}
            window.persisted = True
        for start, user_id in codec.scan_members(self.store):
            member_of = loaded.get(start)
            if member_of is None:
                member_of = loaded[start] = WindowState(start)
            member_of.users.add(user_id)
        through = self.clock.finalized_through
        for start, window in loaded.items():
            if through is not None and start < through:
                self._stale_windows.append(window)  # final already: its deletion was lost
            else:
                self.windows[start] = window

    def _load_legacy(self, stored_clock: bytes) -> None:
        """Take over the windows and the close list that the previous version kept inside
        its clock; the next batch writes them in the current layout."""
        windows, live, closing = codec.legacy_clock(stored_clock)
        for start, users in windows.items():
            window = self.window_for_update(start)
            window.users.update(users)
            window.new_users = list(users)
            counters = live.get(start, {})
            window.live = [counters.get(name, 0) for name in LIVE_COUNTERS]
            window.dirty = True
        for user_id in closing:
            if self.user(user_id) is not None:
                self.user_for_update(user_id)  # filed in the close index by take_writes

    def user(self, user_id: str) -> UserState | None:
        """The user's state, from memory or the store; None for a user never seen."""
        state = self.users.get(user_id)
        if state is None:
            loaded = codec.load_user(self.store, user_id)
            if loaded is None:
                return None
            state, stale = loaded
            self.users[user_id] = state
            self._stale_rows += stale
        elif self.max_users:  # least recently used last out: move to the end
            del self.users[user_id]
            self.users[user_id] = state
        return state

    def user_for_update(self, user_id: str) -> UserState:
        state = self.user(user_id)
        if state is None:
            state = self.users[user_id] = UserState()
        if user_id not in self.dirty_users:
            self.dirty_users.add(user_id)
            limit = self.fold_limit
            folded = state.folded_until
            if limit is not None and (folded is None or folded < limit - self.rules.window_ms):
                state.fold(limit, self.rules.gap_ms)  # the queue has not come (a restart)
        return state

    def fold_some(self, events: int) -> None:
        """Fold the rows of final windows into summaries for some of the users waiting for
        it: every user of a window is ready at the same moment, and folding them all at
        once (and deleting their rows) stalled the hot path at every window's close. A
        budget of rows per batch, twice the events it brings, folds them at about the pace
        they came in, so the queue empties well before the next window closes."""
        queue = self._fold_queue
        budget = FOLD_ROWS_AT_LEAST + FOLD_ROWS_PER_EVENT * events
        while queue and budget > 0:
            user_id = queue.popleft()
            self._fold_queued.discard(user_id)
            if self.user(user_id) is not None:
                user = self.user_for_update(user_id)
                before = len(user.rows_folded)
                user.fold(self.fold_limit, self.rules.gap_ms)
                budget -= max(1, len(user.rows_folded) - before)

    def window_final(self, window: WindowState) -> None:
        """A window is final: its users' rows in it can be folded from the next batch on."""
        self._finalized.append(window)
        for user_id in window.users:
            if user_id not in self._fold_queued:
                self._fold_queued.add(user_id)
                self._fold_queue.append(user_id)

    def window_for_update(self, start: int) -> WindowState:
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = WindowState(start)
        return window

    def row_added(self, user_id: str, user: UserState, row: Row, first_before: int | None) -> None:
        """Keep the open windows' running figures up to date with a new row: its window's
        pages and dimensions, the session keys of this and later windows (a row can join
        sessions that reach into them), the users first seen in each window."""
        size = self.rules.window_ms
        start = window_start(row.ts, size)
        for window in self.windows.values():
            if window.start >= start and window.sessions is not None:
                window.touched.add((user_id, row.session_id))
        window = self.windows[start]
        if window.tally is not None:
            window.tally.add(user_id, row)
        first = user.first_seen
        if first != first_before:
            if first_before is not None:
                before = self.windows.get(window_start(first_before, size))
                if before is not None and before.newcomers is not None:
                    before.newcomers.discard(user_id)
            if first is not None:
                now = self.windows.get(window_start(first, size))
                if now is not None and now.newcomers is not None:
                    now.newcomers.add(user_id)

    def row_replayed(self, row: Row) -> None:
        """A re-delivered event whose row the user holds already (its state outlived the
        crash, the windows' did not): the windows it can touch work their figures out
        again from the users' rows."""
        start = window_start(row.ts, self.rules.window_ms)
        for window in self.windows.values():
            if window.start >= start:
                window.forget_figures()

    # ------------------------------------------------------------------ writing

    def take_writes(self) -> list[Write]:
        """This batch's changes, in the order a restore may cut anywhere (module docstring),
        and the start of the next batch."""
        shares: list[Write] = []
        final_shares: list[Write] = []
        if self.journeys is not None:
            # SPEC 7-9 shares first: they hold what these users' values (written after
            # them, with their SPEC 7-9 state) and the sessions they close contributed
            shares, final_shares = self.journeys.take_writes()
        rows: list[Write] = []
        users: list[Write] = []
        folded: list[Write] = []
        pieces_written: set[bytes] = set()
        for user_id in self.dirty_users:
            user = self.users[user_id]
            self._index(user_id, user)
            rows += [(codec.row_key(user_id, r), codec.encode_row(r)) for r in user.rows_added]
            value = codec.encode_user(user)
            if len(value) > codec.MAX_VALUE_BYTES or user.pieces:  # a session of many pages
                value, pieces, old_pieces = codec.pieces_of(user_id, user, value)
                rows += pieces
                pieces_written.update(key for key, _ in pieces)
                folded += old_pieces
            users.append((user_id.encode(), value))
            folded += [(codec.row_key(user_id, r), None) for r in user.rows_folded]
            user.rows_added, user.rows_folded = [], []
        # stale: what a crash left (rows behind their fold, pieces a header never named),
        # unless this batch writes it again (the replay of the batch that crashed)
        folded += [(key, None) for key in self._stale_rows if key not in pieces_written]
        # A user's new rows and index entries before the user that counts them; the rows it
        # folded and its old index entries deleted only after the clock: any prefix of
        # these writes reads back as a state a replay repairs (module docstring).
        writes = shares + rows + self._index_puts + users
        for window in self.windows.values():
            if window.new_users:
                writes += [(codec.member_key(window.start, u), b"") for u in window.new_users]
                window.new_users = []
            if window.dirty:
                writes.append((codec.window_key(window.start), codec.encode_window(window)))
                window.dirty = False
                window.persisted = True
        writes.append((codec.CLOCK_KEY, codec.encode_clock(self.clock)))
        writes += final_shares
        filed = {key for key, _ in self._index_puts}
        writes += [(key, None) for key in self._index_deletes if key not in filed]
        writes += folded
        for window in self._finalized + self._stale_windows:
            if window.persisted:
                writes.append((codec.window_key(window.start), None))
            unwritten = set(window.new_users)
            writes += [
                (codec.member_key(window.start, u), None)
                for u in window.users
                if u not in unwritten
            ]
        self._finalized, self._stale_windows, self._stale_rows = [], [], []
        self._index_puts, self._index_deletes = [], []
        self.dirty_users = set()
        self.fold_limit = self.clock.finalized_through
        self.wm_at_start = self.clock.wm
        self._evict()
        return writes

    def _index(self, user_id: str, user: UserState) -> None:
        """Keep one close index entry per user with open sessions, at or before its next
        deadline.

        An entry may be early: when it comes due and the user is not, it moves to the real
        deadline. So a session that keeps growing costs no index write per event, only one
        per ``close_after`` of event time."""
        deadline = user.close_deadline(self.rules)
        filed = user.index_at
        if filed is not None and (deadline is None or deadline < filed):
            self._index_deletes.append(codec.close_key(filed, user_id))
            user.index_at = filed = None
            self.open_users -= 1
        if deadline is not None and filed is None:
            self._index_puts.append((codec.close_key(deadline, user_id), b""))
            user.index_at = deadline
            self.open_users += 1
            if self._next_due is not None and deadline < self._next_due:
                self._next_due = deadline

    def _known(self, user_id: str) -> bool:
        return self.user(user_id) is not None

    def first_seen(self, user_id: str) -> int | None:
        """The time of the user's earliest event (None: a user never seen)."""
        user = self.user(user_id)
        return user.first_seen if user is not None else None

    def open_user_ids(self) -> set[str]:
        """Users with open sessions: filed in the close index, or changed in this batch."""
        filed = {user_id for _, _, user_id in codec.scan_due(self.store, _NEVER)}
        return filed | self.dirty_users

    def _evict(self) -> None:
        excess = len(self.users) - self.max_users
        if self.max_users and excess > 0:
            for user_id in list(self.users)[:excess]:
                del self.users[user_id]

    def forget_user(self, user_id: str, offset: int) -> UserState | None:
        """Erase a user from memory (analytics.erasure, which deletes its keys): the user,
        its place in the fold queue, and its events in every open window, whose other
        figures are worked out again from the remaining users. A window that applied
        ``offset`` already (a replayed erasure) lost the user's events then."""
        user = self.user(user_id)
        self.users.pop(user_id, None)
        self.dirty_users.discard(user_id)
        if self.journeys is not None:
            self.journeys.dirty_users.pop(user_id, None)
        if user_id in self._fold_queued:
            self._fold_queued.discard(user_id)
            self._fold_queue.remove(user_id)
        if user is not None and user.index_at is not None:
            self.open_users -= 1
        for window in self.windows.values():
            if user_id not in window.users:
                continue
            if user is not None and offset > window.applied:
                for key in user.keys.values():
                    lo, hi = key.window_rows(window.start, window.start + self.rules.window_ms)
                    for row in key.pending[lo:hi]:
                        live = window.live
                        live[0] -= 1
                        live[1] -= row.action == "page_view"
                        live[2] -= row.conversion
                        live[3] -= row.revenue_cents
                        live[4] -= row.action == "purchase"
                window.applied = offset
            window.users.discard(user_id)
            if user_id in window.new_users:
                window.new_users.remove(user_id)
            window.forget_figures()
            window.dirty = window.live_changed = True
        self.clock.applied = max(self.clock.applied, offset)
        return user

    # ------------------------------------------------------------------ closing sessions

    def close_due_sessions(self, out: PartitionOutput) -> None:
        """Close the sessions due by the watermark at the start of this batch.

        Every due entry is taken out of the index and its user looked at: a user that is due
        has its sessions written; one that is not is filed again at its real deadline (after
        a crash between writes an entry and the user's record of it may disagree, so the
        entry is trusted only as a hint)."""
        watermark = self.wm_at_start
        if watermark is None or (self._next_due is not None and watermark < self._next_due):
            return  # nothing in the close index is due yet: no need to read it
        for key, due_at, user_id in codec.scan_due(self.store, watermark):
            self._index_deletes.append(key)
            if self.user(user_id) is None:
                continue
            user = self.user_for_update(user_id)
            user.fold(self.fold_limit, self.rules.gap_ms)  # its sessions close from summaries
            filed = user.index_at
            if filed is not None and (filed == due_at or filed <= watermark):
                user.index_at = None  # its entry is this one, or one already taken out
                self.open_users -= 1
            deadline = user.close_deadline(self.rules)
            if deadline is not None and deadline <= watermark:
                out.sessions.extend(user.close_sessions(user_id, watermark, self.rules))
            # take_writes files the user again under its next deadline, if it has one
        following = codec.next_due(self.store, watermark)
        self._next_due = following if following is not None else _NEVER


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
    state.close_due_sessions(out)
    state.fold_some(len(items) if isinstance(items, list) else 0)
    journeys = state.journeys
    accepting_from = accept_from(clock, rules)
    custom_kpis = rules.custom_kpis
    if journeys is not None:
        journeys.expire(accepting_from)
        journeys.sessions_closed(
            out.sessions, accepting_from, state.wm_at_start, rules.close_after_ms, state.first_seen
        )
    for item in items:
        if item.offset <= clock.applied:
            continue
        clock.applied = item.offset
        if isinstance(item, Tick):
            _advance_idle(clock, item.timestamp_ms, rules)
            continue
        row = item.row if item.row is not None else row_of(item.event)
        ts = row.ts
        if clock.wm is not None and window_end(ts, rules.window_ms) <= clock.wm:
            clock.late += 1
            out.late_events += 1
            continue
        user_id: str = item.user or item.event["user_id"]
        user = state.user_for_update(user_id)
        window = state.window_for_update(window_start(ts, rules.window_ms))
        # the user's latest event before this one, unless the user has this one already (a
        # replay: its SPEC 7-9 state may not, so that looks at it in full)
        last_seen = user.last_seen if item.offset > user.applied else None
        if item.offset > user.applied:
            first_before = user.first_seen
            if user.add(row, rules.gap_ms):
                state.row_added(user_id, user, row, first_before)
            else:
                state.row_replayed(row)
            user.applied = item.offset
        else:
            state.row_replayed(row)
        if item.offset > window.applied:
            window.count(user_id, row)
            if custom_kpis.counts:
                window.count_custom(custom_kpis.matching(item.event))
            window.applied = item.offset
        if journeys is not None:
            same_day = last_seen is not None and last_seen // DAY_MS == ts // DAY_MS
            journeys.add(
                user_id, row, item.event, item.offset, accept_from(clock, rules), same_day, user
            )
        if clock.max_ts is None or ts > clock.max_ts:
            clock.max_ts = ts
            candidate = ts - rules.grace_ms
            if clock.wm is None or candidate > clock.wm:
                clock.wm = candidate
        if clock.last_arrival is None or item.arrived_ms > clock.last_arrival:
            clock.last_arrival = item.arrived_ms
    _finalise_windows(state, rules, out, live=live)
    if journeys is not None:
        accepting_now = accept_from(clock, rules)
        journeys.days_ended(
            accepting_from, accepting_now, state.open_user_ids, state.user, rules.gap_ms
        )
        out.journeys = journeys.messages(accepting_now, live)
    return out


def accept_from(clock: Clock, rules: PartitionRules) -> int | None:
    """The lowest ts an event can still have to be on time (SPEC 6): an event is late when
    its window ends at or before the watermark. None before the first event."""
    return None if clock.wm is None else window_start(clock.wm, rules.window_ms)


def _advance_idle(clock: Clock, now_ms: int, rules: PartitionRules) -> None:
    if clock.max_ts is None or clock.last_arrival is None or clock.wm is None:
        return
    idle = now_ms - clock.last_arrival
    if idle >= rules.idle_ms:
        clock.wm = max(clock.wm, clock.max_ts - rules.grace_ms + idle)


def _finalise_windows(
    state: PartitionState, rules: PartitionRules, out: PartitionOutput, *, live: bool
) -> None:
    """Final partials of the windows the watermark has passed; with ``live``, partials of
    the open windows that changed since their last one (an earlier window's change of
    users carries on into the user totals of the later ones)."""
    clock = state.clock
    watermark = clock.wm
    users_before = clock.users_total
    carried = False  # an earlier window's user total moved: recompute the later ones
    for start in sorted(state.windows):
        final = watermark is not None and start + rules.window_ms <= watermark
        if not final and not live:
            break
        window = state.windows[start]
        if not final and not window.live_changed and not carried:
            users_before = window.live_users_total
            continue
        partial = window_partial(state, window, rules, users_before, final=final)
        users_total = partial["kpi"]["users_total"]
        if final:
            clock.users_total = users_total
            clock.finalized_through = start + rules.window_ms
            del state.windows[start]
            state.window_final(window)
            carried = True
        else:
            carried = carried or users_total != window.live_users_total
            window.live_changed = False
            window.live_users_total = users_total
        partial["final"] = final
        out.partials.append(partial)
        users_before = users_total


def window_partial(
    state: PartitionState,
    window: WindowState,
    rules: PartitionRules,
    users_before: int,
    *,
    final: bool,
) -> dict[str, Any]:
    """This partition's share of a window: summable figures (SPEC sections 4 and 5).

    Event counters are the window's own (counted once per event, like its rows); sessions
    active in the window as of its end, pages and dimensions come from the running figures
    (``PartitionState.row_added``), worked out from the users' rows when there are none.
    A live share leaves pages and dimensions out: they are published once final."""
    start = window.start
    end = start + rules.window_ms
    _update_sessions(state, window, start, end, rules.gap_ms)
    if window.newcomers is None:
        window.newcomers = {
            user_id
            for user_id in window.users
            if (user := state.user(user_id)) is not None
            and user.first_seen is not None
            and start <= user.first_seen < end
        }
    new_users = len(window.newcomers)
    kpi = window.live_figures()
    sessions, duration, bounces, engagement = window.session_sums
    kpi.update(
        sessions=sessions,
        session_duration_ms=duration,
        bounces=bounces,
        engagement_x10000=engagement,
        active_users=len(window.users),
        new_users=new_users,
        users_total=users_before + new_users,
    )
    if window.tally is None:  # built early (the first live share) it grows with the rows
        window.tally = _Tally()
        for user_id in window.users:
            user = state.user(user_id)
            if user is None:
                continue
            for key in user.keys.values():
                lo, hi = key.window_rows(start, end)
                for row in key.pending[lo:hi]:
                    window.tally.add(user_id, row)
    pages: dict[str, list[int]] = {}
    dims: dict[str, dict[str, list[int]]] = {}
    if final:
        pages, dims = window.tally.figures()
    return {"window_start": start, "kpi": kpi, "pages": pages, "dims": dims}


def _update_sessions(
    state: PartitionState, window: WindowState, start: int, end: int, gap_ms: int
) -> None:
    """Bring the window's session figures up to date: every member's session keys when
    there are none yet, else the keys touched since."""
    if window.sessions is None:
        window.sessions, window.session_sums = {}, [0, 0, 0, 0]
        keys = [
            (user_id, session_id)
            for user_id in window.users
            if (user := state.user(user_id)) is not None
            for session_id in user.keys
        ]
    else:
        keys = list(window.touched)
    window.touched.clear()
    sessions, sums = window.sessions, window.session_sums
    for user_id, session_id in keys:
        user = state.user(user_id)
        key = user.keys.get(session_id) if user is not None else None
        figures = (0, 0, 0, 0)
        if key is not None:
            lo, hi = key.window_rows(start, end)
            if lo < hi:
                count = duration = bounces = engagement = 0
                for preview in key.previews(lo, hi, gap_ms):
                    count += 1
                    duration += preview.end - preview.start
                    bounces += preview.events == 1
                    engagement += round(preview.engagement() * 10_000)
                figures = (count, duration, bounces, engagement)
        old = sessions.pop((user_id, session_id), (0, 0, 0, 0))
        if figures[0]:
            sessions[(user_id, session_id)] = figures
        for index in range(4):
            sums[index] += figures[index] - old[index]


def running_figures_hold(state: PartitionState) -> bool:
    """Whether every open window's running figures equal those worked out from the users'
    rows now (for tests: the figures are kept up to date in many places)."""
    size, gap = state.rules.window_ms, state.rules.gap_ms
    for window in state.windows.values():
        start = window.start
        fresh = WindowState(start)
        fresh.users = set(window.users)
        if window.sessions is not None:
            _update_sessions(state, window, start, start + size, gap)
            _update_sessions(state, fresh, start, start + size, gap)
            if (fresh.sessions, fresh.session_sums) != (window.sessions, window.session_sums):
                return False
        if window.tally is not None or window.newcomers is not None:
            window_partial(state, fresh, state.rules, 0, final=True)
            ours, theirs = window.tally, fresh.tally
            if ours is not None and theirs is not None and ours.figures() != theirs.figures():
                return False
            if window.newcomers is not None and window.newcomers != fresh.newcomers:
                return False
    return True


class _Tally:
    """A window's page and dimension figures, with the distinct users of each (SPEC 5)."""

    __slots__ = ("by_dim", "pages")

    def __init__(self) -> None:
        self.pages: dict[str, list[Any]] = {}  # views, time on page, visitors
        self.by_dim: tuple[dict[str, list[Any]], ...] = ({}, {}, {})  # device, country, browser

    def add(self, user_id: str, row: Row) -> None:
        is_view = row.action == "page_view"
        if is_view:
            stats = self.pages.get(row.page)
            if stats is None:
                stats = self.pages[row.page] = [0, 0, set()]
            stats[0] += 1
            stats[1] += row.duration
            stats[2].add(user_id)
        cents = row.revenue_cents
        for cells, value in zip(self.by_dim, (row.device, row.country, row.browser), strict=True):
            value = value or "unknown"
            cell = cells.get(value)
            if cell is None:
                cell = cells[value] = [0, 0, 0, set()]  # events, page views, revenue, users
            cell[0] += 1
            cell[1] += is_view
            cell[2] += cents
            cell[3].add(user_id)

    def figures(self) -> tuple[dict[str, list[int]], dict[str, dict[str, list[int]]]]:
        """Pages as [views, visitors, time on page]; dimension values as [events, users,
        page views, revenue] (the partial message's layout)."""
        pages = {page: [s[0], len(s[2]), s[1]] for page, s in self.pages.items()}
        dims = {
            name: {value: [c[0], len(c[3]), c[1], c[2]] for value, c in cells.items()}
            for name, cells in zip(("device", "country", "browser"), self.by_dim, strict=True)
        }
        return pages, dims
