"""A partition's state for the per-user analytics of SPEC 7-9 (funnels, cohorts, A/B tests).

The SPEC sections are pure modules (analytics.funnels, ...); this module keeps their per-user
states and per-partition partials beside the partition's sessions and windows
(analytics.partition), in the same table, and decides what the combiner is sent.

Exactness across crashes works like the rest of the partition state (analytics.partition's
docstring): every per-user value and every partial records the highest input offset applied
to it. An event changes a user's state (skipped when the user has applied its offset) and
hands the partials a *change* (the user's old and new contribution), which a partial takes
only when it has not applied that offset yet. The partials are written before the users in a
batch's writes, both before the partition's clock, so any prefix of the writes that a crash
leaves reads back as a state the replay repairs exactly: a partial that already holds a
change skips it, a user that does not yet hold the event computes the same change again.

Keys: ``\\xff\\xfdJ`` + user_id for a user's value, ``\\xff\\xfdF`` + funnel name + ``\\x00``
+ day for a funnel day's partial (analytics.partition_codec keeps the other prefixes).

What the combiner is sent (``kpi-partials``, analytics.partials checks it): a partition's
whole partial of a (funnel, day), ``{"type": "funnel", "partition", "funnel", "day",
"final", "partial"}``; live ones at most once per ``live`` round for the keys that changed,
and a final one in the round the partition's watermark makes the day final, before the
progress report that shows that watermark, so the combiner has every partition's final share
of a day before it can see the day is final.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from analytics.funnels import (
    DAY_MS,
    DayPartial,
    FunnelPartials,
    FunnelSet,
    FunnelSpec,
    UserFunnels,
    is_final,
)
from analytics.rows import Row

USER = b"\xff\xfdJ"
FUNNEL_DAY = b"\xff\xfdF"
EXPIRY = b"\xff\xfdX"
_OFFSET = 2**63

Write = tuple[bytes, bytes | None]


class StateStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class JourneyRules:
    """The configured funnels (and, to come, experiments and cohorts)."""

    funnels: tuple[FunnelSpec, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.funnels)


class JourneyUser:
    """What SPEC 7-9 remember of one user, and the highest offset applied to it."""

    __slots__ = ("applied", "filed_at", "funnels")

    def __init__(self, funnels: UserFunnels) -> None:
        self.applied = -1
        self.funnels = funnels
        self.filed_at: int | None = None
        """Where the user is filed in the expiry index (None: not filed)."""

    @property
    def is_empty(self) -> bool:
        return self.funnels.is_empty

    def expires_at(self, longest_window_ms: int) -> int | None:
        """The watermark at which every day this user still holds is final: then its
        value can go (else a user never seen again would be kept for ever)."""
        last = max(
            (track.events[-1][0] for track in self.funnels.tracks if track and track.events),
            default=None,
        )
        if last is None:
            return None
        return (last // DAY_MS + 1) * DAY_MS + longest_window_ms

    def encode(self) -> bytes:
        return orjson.dumps([self.applied, self.filed_at, self.funnels.encode()])

    @classmethod
    def decode(cls, data: bytes, funnel_set: FunnelSet) -> JourneyUser:
        applied, filed_at, funnels = orjson.loads(data)
        user = cls(UserFunnels.decode(funnel_set, funnels))
        user.applied = int(applied)
        user.filed_at = filed_at
        return user


@dataclass(slots=True)
class _Applied:
    """A partial's bookkeeping: the highest offset in it, whether it is to be written and
    whether it changed since it was last sent."""

    offset: int = -1
    dirty: bool = False
    changed: bool = False


def _user_key(user_id: str) -> bytes:
    return USER + user_id.encode()


def _funnel_key(name: str, day: int) -> bytes:
    return FUNNEL_DAY + name.encode() + b"\x00" + str(day).encode()


def _expiry_key(at: int, user_id: str) -> bytes:
    return EXPIRY + (at + _OFFSET).to_bytes(8, "big") + user_id.encode()


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(slots=True)
class Journeys:
    """One partition's SPEC 7-9 state in memory, loaded lazily from its table."""

    store: StateStore
    rules: JourneyRules
    max_users: int = 0
    funnel_set: FunnelSet = field(init=False)
    users: dict[str, JourneyUser] = field(default_factory=dict)
    dirty_users: set[str] = field(default_factory=set)
    deleted_users: set[str] = field(default_factory=set)
    funnel_days: FunnelPartials = field(default_factory=FunnelPartials)
    funnel_applied: dict[tuple[str, int], _Applied] = field(default_factory=dict)
    deleted_days: list[tuple[str, int]] = field(default_factory=list)
    index_writes: list[Write] = field(default_factory=list)
    index_deletes: list[bytes] = field(default_factory=list)
    longest_window_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.funnel_set = FunnelSet(self.rules.funnels)
        self.longest_window_ms = max((spec.window_ms for spec in self.rules.funnels), default=0)
        for key, value in self.store.scan(FUNNEL_DAY, _prefix_end(FUNNEL_DAY)):
            name, day = key[len(FUNNEL_DAY) :].split(b"\x00")
            applied, *partial = orjson.loads(value)
            at = (name.decode(), int(day))
            self.funnel_days.days[at] = DayPartial.decode(partial)
            self.funnel_applied[at] = _Applied(int(applied))

    # ------------------------------------------------------------------ events

    def matters(self, row: Row) -> bool:
        """Whether an event can change anything here (one dict lookup for most events)."""
        return bool(self.funnel_set.masks(row.action, row.page))

    def user(self, user_id: str) -> JourneyUser:
        found = self.users.get(user_id)
        if found is None:
            stored = self.store.get(_user_key(user_id))
            if stored is None:
                found = JourneyUser(UserFunnels(self.funnel_set))
            else:
                found = JourneyUser.decode(stored, self.funnel_set)
            self.users[user_id] = found
        elif self.max_users:  # least recently used last out
            del self.users[user_id]
            self.users[user_id] = found
        return found

    def add(self, user_id: str, row: Row, offset: int, accept_from: int | None) -> None:
        """Take one on-time event of ``user_id`` (input ``offset``); ``accept_from`` is the
        lowest ts an event may still have (None before the first watermark)."""
        if not self.matters(row):
            return
        user = self.user(user_id)
        if offset <= user.applied:
            return
        if accept_from is not None:
            user.funnels.forget(accept_from)
        user.applied = offset
        self.dirty_users.add(user_id)
        changes = user.funnels.add(row.ts, row.event_id, row.action, row.page)
        for change in changes:
            at = (change.funnel, change.day)
            applied = self.funnel_applied.get(at)
            if applied is None:
                applied = self.funnel_applied[at] = _Applied()
            if offset <= applied.offset:
                continue  # this partial holds the change already (a replay after a crash)
            self.funnel_days.apply([change])
            applied.offset = offset
            applied.dirty = applied.changed = True

    def expire(self, accept_from: int | None) -> None:
        """Forget what the watermark has made final for the users filed as due: a user left
        with nothing is deleted. An index entry is a hint (a crash between writes may leave
        one behind its user): the user itself says whether it is due."""
        if accept_from is None:
            return
        stop = EXPIRY + (accept_from + 1 + _OFFSET).to_bytes(8, "big")
        for key, _ in list(self.store.scan(EXPIRY, stop)):
            self.index_deletes.append(key)
            user_id = key[len(EXPIRY) + 8 :].decode()
            if user_id not in self.users and self.store.get(_user_key(user_id)) is None:
                continue
            user = self.user(user_id)
            if user.filed_at == int.from_bytes(key[len(EXPIRY) : len(EXPIRY) + 8], "big") - _OFFSET:
                user.filed_at = None
            user.funnels.forget(accept_from)
            self.dirty_users.add(user_id)

    # ------------------------------------------------------------------ output

    def messages(self, accept_from: int | None, live: bool) -> list[dict[str, Any]]:
        """What to send the combiner after a batch: the final shares of days no event can
        change any more (then dropped here), and with ``live`` the changed open ones."""
        out: list[dict[str, Any]] = []
        if accept_from is not None:
            final = self.funnel_days.take_final(self.rules.funnels, accept_from)
            specs = {spec.name: spec for spec in self.rules.funnels}
            for at in sorted(self.funnel_applied):
                spec = specs.get(at[0])
                if spec is None or is_final(spec, at[1], accept_from):
                    part = final.days.get(at) or DayPartial()
                    out.append(_funnel_message(*at, part, final=True))
                    del self.funnel_applied[at]
                    self.deleted_days.append(at)
        if live:
            for (name, day), applied in sorted(self.funnel_applied.items()):
                if applied.changed:
                    part = self.funnel_days.days.get((name, day), DayPartial())
                    out.append(_funnel_message(name, day, part, final=False))
                    applied.changed = False
        return out

    def take_writes(self) -> tuple[list[Write], list[Write]]:
        """This batch's writes: (partials, users), to be written in that order."""
        partials: list[Write] = []
        for at, applied in self.funnel_applied.items():
            if applied.dirty:
                part = self.funnel_days.days.get(at, DayPartial())
                value = orjson.dumps([applied.offset, *part.encode()])
                partials.append((_funnel_key(*at), value))
                applied.dirty = False
        partials += [(_funnel_key(*at), None) for at in self.deleted_days]
        self.deleted_days = []
        users: list[Write] = []
        index = self.index_writes
        for user_id in self.dirty_users:
            user = self.users[user_id]
            if user.is_empty:
                users.append((_user_key(user_id), None))
                if user.filed_at is not None:
                    self.index_deletes.append(_expiry_key(user.filed_at, user_id))
                del self.users[user_id]
                continue
            due = user.expires_at(self.longest_window_ms)
            if due != user.filed_at:
                if user.filed_at is not None:
                    self.index_deletes.append(_expiry_key(user.filed_at, user_id))
                if due is not None:
                    index.append((_expiry_key(due, user_id), b""))
                user.filed_at = due
            users.append((_user_key(user_id), user.encode()))
        filed = {key for key, _ in index}
        # index entries before the users they name, old ones deleted after them
        users = index + users + [(key, None) for key in self.index_deletes if key not in filed]
        self.index_writes, self.index_deletes = [], []
        self.dirty_users = set()
        self._evict()
        return partials, users

    def _evict(self) -> None:
        excess = len(self.users) - self.max_users
        if self.max_users and excess > 0:
            for user_id in list(self.users)[:excess]:
                del self.users[user_id]


def _funnel_message(name: str, day: int, part: DayPartial, *, final: bool) -> dict[str, Any]:
    """A share for the combiner; the tracker adds the partition's number."""
    return {
        "type": "funnel",
        "funnel": name,
        "day": day,
        "final": final,
        "partial": part.encode(),
    }
