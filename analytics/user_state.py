"""A user's state in their partition (SPEC 3 sessions and the profile): the owning module of
``UserState`` and ``SessionKey``, which the web API reads through their methods.

A user keeps, per session key, the *summaries* of its sessions (analytics.sessions) for its
events older than ``folded_until`` and the events at or after it as *pending* rows, sorted, so
the value does not grow with a session's length (analytics.partition says when rows fold).
"""

from __future__ import annotations

import bisect
from typing import Any

import orjson

from analytics.compact_json import compact_dumps
from analytics.rows import Row
from analytics.sessions import SessionPreview, SessionSummary

_NEVER = 2**62

RECENT_SESSIONS = 10
"""Closed sessions a user value keeps as summaries, newest first, for the web API."""


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

    def close_deadline(self, gap_ms: int, close_after_ms: int) -> int | None:
        """The earliest watermark at which one of the user's sessions can be written
        (``close_after_ms``: session gap + KPI window, PartitionRules.close_after_ms)."""
        ends = [key.first_session_end(gap_ms) for key in self.keys.values()]
        known = [end for end in ends if end is not None]
        return min(known) + close_after_ms if known else None

    def close_sessions(
        self, user_id: str, watermark: int, gap_ms: int, close_after_ms: int
    ) -> list[Any]:
        """Write out and forget the folded sessions that can no longer change."""
        closed: list[dict[str, Any]] = []
        for session_id, key in list(self.keys.items()):
            summaries = key.summaries
            while summaries and summaries[0].end + close_after_ms <= watermark:
                if len(summaries) == 1 and key.pending:
                    first = key.pending[0].ts
                    if first - summaries[0].end <= gap_ms:
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
            self.recent_encoded = orjson.Fragment(compact_dumps(self.recent))
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
