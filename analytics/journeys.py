"""A partition's state for the per-user analytics of SPEC 7-9 (funnels, cohorts, A/B tests).

The SPEC sections are pure modules (analytics.funnels, analytics.cohorts,
analytics.experiments); this module keeps their per-user states and per-partition shares
beside the partition's sessions and windows (analytics.partition), in the same table, and
decides what the combiner is sent.

**Exactly once across crashes**, like the rest of the partition state (analytics.partition's
docstring): every per-user value and every share records what it has applied. An event changes
a user's value (skipped when the user has applied its offset) and hands the shares a *delta*
(the user's old and new contribution); each share key takes it only when its own offset token
is below the event's. The shares are written before the users in a batch's writes, both
before the partition's clock, so any prefix of the writes that a crash leaves reads back as a
state the replay repairs exactly: a share that holds a delta skips it, a user that does not
hold the event computes the same delta again.

Two contributions come from sessions rather than events (SPEC 8's engagement of the sessions
that start on a day, each cut at the day's end):

* a session that closes while its first day can still take events (the watermark at the
  start of the batch has not passed the day's end) ended before that end: its whole score
  counts, once the close is its own: each cohort share key records the latest close deadline
  it took (a session's deadline is its last event + gap + window, and a batch closes every
  session whose deadline its starting watermark passed, so a replay closes the same ones);
* in the batch whose watermark passes a day's end, every session still open that started on
  that day counts as it stands before the end (``UserState.sessions_started``); each key
  records the last day end it took.

A cohort share key (cohort, offset) is final, sent and dropped in the batch whose watermark
passes the end of day cohort + offset; a funnel day when it passes the day's end + the
funnel's window. Experiment keys stay (they count users since the start).

**Where**: a user's SPEC 7-9 state is the last field of their value in the partition state
(``UserState.journey``, analytics.partition_codec), so it is written with the sessions in one
record. Keys of its own (analytics.partition_codec keeps the other ``\\xff\\xfd`` prefixes):
``F`` + funnel + ``\\x00`` + day for a funnel day's share, ``E`` / ``K`` +
the JSON of an (experiment, variant) / (cohort day, offset) key, ``X`` + time + user_id for the
expiry index (users whose funnel days or recent conversions the watermark will make final:
then their values shrink, else a user never seen again would keep them for ever).

**Sent to the combiner** (``kpi-partials``, checked by analytics.partials; the tracker adds
the partition's number): ``{"type": "funnel", "funnel", "day", "final", "partial"}`` with the
whole share of a funnel day; ``{"type": "experiment", "counters": [[experiment, variant,
users, converted, revenue_cents, conflicts], ...]}`` and ``{"type": "cohort", "final",
"counters": [[cohort, offset, retained, revenue_cents, engagement_x10000, sessions], ...]}``
with the keys that changed. Live ones at most once per ``live`` round; final ones in the round
that makes them final, before the progress report that shows the watermark, so the combiner
has every partition's final share before it can see the key is final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from analytics.cohorts import CohortPartial, CohortsSpec, UserCohort
from analytics.counter_table import CounterTable
from analytics.experiments import ExperimentPartial, ExperimentsSpec, UserExperiments, exposure_of
from analytics.funnels import (
    DayPartial,
    FunnelPartials,
    FunnelSet,
    FunnelSpec,
    UserFunnels,
    is_final,
)
from analytics.rows import Row
from analytics.timeutil import DAY_MS

FUNNEL_DAY = b"\xff\xfdF"
EXPERIMENT = b"\xff\xfdE"
COHORT = b"\xff\xfdK"
EXPIRY = b"\xff\xfdX"
_OFFSET = 2**63
_NEVER = -(2**62)
_NEVER_DUE = 2**62

Write = tuple[bytes, bytes | None]


class StateStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterable[tuple[bytes, bytes]]: ...


class JourneyHolder(Protocol):
    """The partition's user value (analytics.user_state.UserState), which carries the user's
    SPEC 7-9 state: a JourneyUser once used, its stored data before, None when there is none."""

    journey: Any


class OpenUser(Protocol):
    """What the cohort engagement needs of a user's sessions (analytics.user_state.UserState):
    the user's earliest event (its cohort: the partition's user value is the one whose
    sessions close, while the user's SPEC 7-9 value may trail it after a crash) and the
    sessions that start on a day."""

    first_seen: int | None

    def sessions_started(self, start: int, end: int, gap_ms: int) -> list[tuple[int, float]]: ...


def _cohort_of(first_seen: int) -> UserCohort:
    """A user's cohort as its engagement shares need it: the day of its earliest event, final
    once a session of it can close or be cut (no earlier event can come any more)."""
    cohort = UserCohort()
    cohort.cohort = first_seen // DAY_MS
    return cohort


@dataclass(frozen=True, slots=True)
class JourneyRules:
    """The configured funnels, experiments and cohorts (None: off)."""

    funnels: tuple[FunnelSpec, ...] = ()
    experiments: ExperimentsSpec | None = None
    cohorts: CohortsSpec | None = None

    @property
    def active(self) -> bool:
        return bool(self.funnels) or self.experiments is not None or self.cohorts is not None


class JourneyUser:
    """What SPEC 7-9 remember of one user, and the highest offset applied to it."""

    __slots__ = ("applied", "cohort", "experiments", "filed_at", "forgot_day", "funnels")

    def __init__(self, funnels: UserFunnels) -> None:
        self.applied = -1
        self.forgot_day: int | None = None
        """The day of the lowest acceptable ts ``forget`` last had (memory only): a user
        forgets at most once a day, not at every event."""
        self.funnels = funnels
        self.experiments = UserExperiments()
        self.cohort = UserCohort()
        self.filed_at: int | None = None
        """Where the user is filed in the expiry index (None: not filed)."""

    @property
    def is_empty(self) -> bool:
        return self.funnels.is_empty and self.experiments.is_empty() and self.cohort.cohort is None

    def forget(self, accept_from: int) -> None:
        self.funnels.forget(accept_from)
        self.experiments.forget(accept_from)
        self.cohort.forget(accept_from)

    def expires_at(self, longest_window_ms: int) -> int | None:
        """The lowest acceptable ts at which ``forget`` drops all it can of this user."""
        times = []
        last = max(
            (track.events[-1][0] for track in self.funnels.tracks if track and track.events),
            default=None,
        )
        if last is not None:
            times.append((last // DAY_MS + 1) * DAY_MS + longest_window_ms)
        recent = self.experiments.purchases[::2]
        if self.experiments.last_conversion is not None:
            recent.append(self.experiments.last_conversion)
        if recent:
            times.append(max(recent) + 1)
        cohort = self.cohort
        if cohort.cohort is not None and cohort.days:
            times.append((cohort.cohort + max(cohort.days) + 1) * DAY_MS)
        return max(times) if times else None

    def data(self, *, fragments: bool = True) -> list[Any]:
        """What the user's value in the partition state holds of SPEC 7-9 (one value per
        user: a second one would be a second record per changed user per round). With
        ``fragments``, the funnel events as orjson fragments kept between writes."""
        funnels: Any = self.funnels.encoded() if fragments else self.funnels.encode()
        return [
            self.applied,
            self.filed_at,
            funnels,
            self.experiments.encode(),
            self.cohort.encode(),
        ]

    @classmethod
    def of_data(cls, data: list[Any], funnel_set: FunnelSet) -> JourneyUser:
        applied, filed_at, funnels, experiments, cohort = data
        user = cls(UserFunnels.decode(funnel_set, funnels))
        user.applied = int(applied)
        user.filed_at = filed_at
        user.experiments = UserExperiments.decode(experiments)
        user.cohort = UserCohort.decode(cohort)
        return user


class _Shares:
    """A partition's counters (a CounterTable), one stored value per key with its tokens:
    ``tokens[key][slot]`` is the highest stamp of each kind of contribution it holds."""

    def __init__(self, table: CounterTable, prefix: bytes, slots: int, store: StateStore):
        self.table = table
        self.prefix = prefix
        self.slots = slots
        self.tokens: dict[tuple[Any, ...], list[int]] = {}
        self.marks: dict[tuple[Any, ...], tuple[int, int]] = {}
        self.dirty: set[tuple[Any, ...]] = set()
        self.dropped: set[tuple[Any, ...]] = set()
        for key, value in store.scan(prefix, _prefix_end(prefix)):
            at = tuple(orjson.loads(key[len(prefix) :]))
            stored = orjson.loads(value)
            self.tokens[at] = stored[:slots]
            if any(stored[slots:]) or table.KEEP_ZEROS:
                table.counters[at] = stored[slots:]
            table.changed.add(at)  # sent again: what changed before a restart may not have been

    def apply(
        self, delta: Any, conditions: Sequence[tuple[int, int]], mark: tuple[int, int]
    ) -> None:
        """Take ``delta`` (old and new shares, each ``(*key, *counters)``) into the keys
        whose tokens are below every ``(slot, stamp)`` of ``conditions``; those keys record
        ``mark`` (slot, stamp) when ``commit`` is called."""
        keys = {tuple(share[:2]) for share in (*delta.old, *delta.new)}
        fresh = {
            key
            for key in keys
            if all(
                self.tokens.get(key, [_NEVER] * self.slots)[slot] < stamp
                for slot, stamp in conditions
            )
        }
        for share in delta.old:
            if tuple(share[:2]) in fresh:
                self.table.add(tuple(share[:2]), share[2:], -1)
        for share in delta.new:
            if tuple(share[:2]) in fresh:
                self.table.add(tuple(share[:2]), share[2:])
        for key in fresh:
            self.marks[key] = mark
            self.dirty.add(key)

    def commit(self) -> None:
        for key, (slot, stamp) in self.marks.items():
            tokens = self.tokens.setdefault(key, [_NEVER] * self.slots)
            tokens[slot] = max(tokens[slot], stamp)
        self.marks.clear()

    def counters(self, key: tuple[Any, ...]) -> list[int]:
        return self.table.counters.get(key) or [0] * self.table.WIDTH

    def drop(self, key: tuple[Any, ...]) -> None:
        """A key no contribution can reach any more: forgotten here (the combiner has it)
        once this batch has written what it took (``writes``, before the users whose
        changes it holds) and deleted it (``deletions``, after the clock)."""
        self.table.changed.discard(key)
        self.dropped.add(key)

    def writes(self) -> list[Write]:
        out: list[Write] = []
        for key in self.dirty:
            value = orjson.dumps([*self.tokens[key], *self.counters(key)])
            out.append((self.prefix + orjson.dumps(list(key)), value))
        self.dirty = set()
        for key in self.dropped:
            self.table.counters.pop(key, None)
            self.tokens.pop(key, None)
        return out

    def deletions(self) -> list[Write]:
        out: list[Write] = [(self.prefix + orjson.dumps(list(key)), None) for key in self.dropped]
        self.dropped = set()
        return out


@dataclass(slots=True)
class _Applied:
    """A funnel day's share: the highest offset in it, whether it is to be written and
    whether it changed since it was last sent."""

    offset: int = -1
    dirty: bool = False
    changed: bool = False


def _funnel_key(name: str, day: int) -> bytes:
    return FUNNEL_DAY + name.encode() + b"\x00" + str(day).encode()


def _expiry_key(at: int, user_id: str) -> bytes:
    return EXPIRY + (at + _OFFSET).to_bytes(8, "big") + user_id.encode()


def _expiry_time(key: bytes) -> int:
    return int.from_bytes(key[len(EXPIRY) : len(EXPIRY) + 8], "big") - _OFFSET


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# token slots of a cohort key: event offsets, close deadlines, day ends cut
_EVENT, _CLOSE, _CUT = 0, 1, 2


@dataclass(slots=True)
class Journeys:
    """One partition's SPEC 7-9 state in memory, loaded lazily from its table."""

    store: StateStore
    rules: JourneyRules
    holder: Callable[[str], JourneyHolder]
    """The user's value in the partition state, marked as changed (``user_for_update``)."""
    exists: Callable[[str], bool]
    """Whether the partition knows the user (``user`` is not None)."""
    funnel_set: FunnelSet = field(init=False)
    dirty_users: dict[str, JourneyHolder] = field(default_factory=dict)
    funnel_days: FunnelPartials = field(default_factory=FunnelPartials)
    funnel_applied: dict[tuple[str, int], _Applied] = field(default_factory=dict)
    deleted_days: list[tuple[str, int]] = field(default_factory=list)
    final_days: list[tuple[tuple[str, int], int, DayPartial]] = field(default_factory=list)
    experiments: _Shares = field(init=False)
    cohorts: _Shares = field(init=False)
    final_cohorts: list[list[Any]] = field(default_factory=list)
    next_expiry: int | None = None
    """The earliest time in the expiry index (None: not read yet)."""
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
            self.funnel_applied[at] = _Applied(int(applied), changed=True)  # sent again
        self.experiments = _Shares(ExperimentPartial(), EXPERIMENT, 1, self.store)
        self.cohorts = _Shares(CohortPartial(), COHORT, 3, self.store)

    # ------------------------------------------------------------------ users

    def user(self, user_id: str, holder: JourneyHolder | None = None) -> JourneyUser:
        """The user's SPEC 7-9 state, on its partition value (which this marks as changed;
        ``holder``: that value, when the caller has it in hand already)."""
        if holder is None:
            holder = self.holder(user_id)
        found = holder.journey
        if not isinstance(found, JourneyUser):
            if found is None:
                found = JourneyUser(UserFunnels(self.funnel_set))
            else:
                found = JourneyUser.of_data(found, self.funnel_set)
            holder.journey = found
        self.dirty_users[user_id] = holder
        return found

    # ------------------------------------------------------------------ events

    def add(
        self,
        user_id: str,
        row: Row,
        event: dict[str, Any],
        offset: int,
        accept_from: int | None,
        same_day: bool = False,
        holder: JourneyHolder | None = None,
    ) -> None:
        """Take one on-time event of ``user_id`` (input ``offset``); ``accept_from`` is the
        lowest ts an event may still have (None before the first watermark). ``same_day``:
        the user's latest event so far is on the event's UTC day, so the cohort has the day
        already and, without revenue, the event changes nothing of it: then an event no
        funnel names, without exposure, conversion or revenue, is not looked at at all."""
        rules = self.rules
        matched = self.funnel_set.masks(row.action, row.page) if rules.funnels else None
        exposure = None
        if rules.experiments is not None:
            metadata = event.get("metadata")
            if metadata:
                exposure = exposure_of(metadata)
        conversion, cents = row.conversion, row.revenue_cents
        if same_day and not (matched or exposure or conversion or cents):
            return
        user = self.user(user_id, holder)
        if offset <= user.applied:
            return
        if accept_from is not None and accept_from // DAY_MS != user.forgot_day:
            user.forget(accept_from)
            user.forgot_day = accept_from // DAY_MS
        changed = False  # an event that changes nothing here is not recorded: its replay
        # changes nothing either, and the user's value is not written again for it
        if matched:
            changes = user.funnels.add(row.ts, row.event_id, row.action, row.page, matched)
            self._funnels(changes, offset)
            changed = True
        if rules.experiments is not None and (exposure is not None or conversion or cents):
            delta = user.experiments.add(
                row.ts, row.event_id, conversion=conversion, revenue_cents=cents, exposure=exposure
            )
            changed = True
            if delta is not None:
                self.experiments.apply(delta, [(_EVENT, offset)], (_EVENT, offset))
                self.experiments.commit()
        if rules.cohorts is not None:
            moved = user.cohort.add(rules.cohorts, row.ts, cents)
            if moved is not None:
                changed = True
                self.cohorts.apply(moved, [(_EVENT, offset)], (_EVENT, offset))
                self.cohorts.commit()
        if changed:
            user.applied = offset

    def _funnels(self, changes: list[Any], offset: int) -> None:
        fresh = []
        for change in changes:
            at = (change.funnel, change.day)
            applied = self.funnel_applied.get(at)
            if applied is None:
                applied = self.funnel_applied[at] = _Applied()
            if offset > applied.offset:  # else the share holds it already (a replay)
                fresh.append((change, applied))
        for change, applied in fresh:
            self.funnel_days.apply([change])
            applied.offset = offset
            applied.dirty = applied.changed = True

    # ------------------------------------------------------------------ sessions (SPEC 8)

    def sessions_closed(
        self,
        sessions: Iterable[dict[str, Any]],
        accepting_from: int | None,
        wm_at_start: int | None,
        close_after_ms: int,
        first_seen: Callable[[str], int | None],
    ) -> None:
        """The engagement of sessions closed by the batch's starting watermark whose first
        day could still take events then (module docstring); ``accepting_from`` is the
        lowest acceptable ts at the batch's start."""
        spec = self.rules.cohorts
        if spec is None or wm_at_start is None or accepting_from is None:
            return
        for session in sessions:
            start = session["window_start_ms"]
            if (start // DAY_MS + 1) * DAY_MS <= accepting_from:
                continue  # counted when its day's end passed, cut there
            first = first_seen(session["user_id"])
            if first is None:
                continue
            delta = _cohort_of(first).session(spec, start, session["engagement_score"])
            deadline = session["window_end_ms"] + close_after_ms
            day_end = (start // DAY_MS + 1) * DAY_MS
            if delta is not None:  # not if its day's cut counted it (before a crash)
                conditions = [(_CLOSE, deadline), (_CUT, day_end)]
                self.cohorts.apply(delta, conditions, (_CLOSE, wm_at_start))
        self.cohorts.commit()

    def days_ended(
        self,
        before: int | None,
        after: int | None,
        open_users: Callable[[], Iterable[str]],
        user_state: Callable[[str], OpenUser | None],
        gap_ms: int,
    ) -> None:
        """For each day whose end the lowest acceptable ts passed in this batch (from
        ``before`` to ``after``), the open sessions that started on it, cut at its end."""
        spec = self.rules.cohorts
        if spec is None or after is None:
            return
        first = before // DAY_MS if before is not None else self._first_day()
        if first is None:
            return
        users = None
        for day in range(first, after // DAY_MS):
            end = (day + 1) * DAY_MS
            if before is not None and end <= before:
                continue
            if users is None:
                users = sorted(set(open_users()))
            for user_id in users:
                state = user_state(user_id)
                if state is None:
                    continue
                sessions = state.sessions_started(day * DAY_MS, end, gap_ms)
                if not sessions or state.first_seen is None:
                    continue
                cohort = _cohort_of(state.first_seen)
                for start, score in sessions:
                    delta = cohort.session(spec, start, score)
                    if delta is not None:
                        self.cohorts.apply(delta, [(_CUT, end)], (_CUT, end))
            self.cohorts.commit()

    def _first_day(self) -> int | None:
        days = [
            holder.journey.cohort.cohort
            for holder in self.dirty_users.values()
            if isinstance(holder.journey, JourneyUser) and holder.journey.cohort.cohort is not None
        ]
        return min(days) if days else None

    # ------------------------------------------------------------------ expiry

    def expire(self, accept_from: int | None) -> None:
        """Forget what the watermark has made final for the users filed as due. An index
        entry is a hint (a crash between writes may leave one behind its user): the user
        itself says whether it is due."""
        if accept_from is None:
            return
        if self.next_expiry is not None and accept_from < self.next_expiry:
            return  # nothing in the index is due: it need not be read (a scan per batch was
            # 4 % of the hot path: it merges the writes still in flight)
        stop = EXPIRY + (accept_from + 1 + _OFFSET).to_bytes(8, "big")
        for key, _ in list(self.store.scan(EXPIRY, stop)):
            self.index_deletes.append(key)
            user_id = key[len(EXPIRY) + 8 :].decode()
            if not self.exists(user_id):
                continue
            user = self.user(user_id)
            at = _expiry_time(key)
            if user.filed_at == at:
                user.filed_at = None
            user.forget(accept_from)
        following = next(iter(self.store.scan(stop, _prefix_end(EXPIRY))), None)
        self.next_expiry = _NEVER_DUE if following is None else _expiry_time(following[0])

    # ------------------------------------------------------------------ output

    def messages(self, accept_from: int | None, live: bool) -> list[dict[str, Any]]:
        """What to send the combiner after a batch: the final shares of keys no event can
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
                    applied = self.funnel_applied.pop(at)
                    if applied.dirty:  # written with the shares all the same (``drop``)
                        self.final_days.append((at, applied.offset, part))
                    self.deleted_days.append(at)
            done = [
                key
                for key in list(self.cohorts.tokens) + list(self.cohorts.table.counters)
                if (key[0] + key[1] + 1) * DAY_MS <= accept_from
            ]
            if done:
                finals = [[*key, *self.cohorts.counters(key)] for key in sorted(set(done))]
                out.append({"type": "cohort", "final": True, "counters": finals})
                for key in set(done):
                    self.cohorts.drop(key)
        if live:
            for (name, day), applied in sorted(self.funnel_applied.items()):
                if applied.changed:
                    part = self.funnel_days.days.get((name, day), DayPartial())
                    out.append(_funnel_message(name, day, part, final=False))
                    applied.changed = False
            changes = self.experiments.table.take_changes()
            if changes:
                out.append({"type": "experiment", "counters": changes})
            changes = self.cohorts.table.take_changes()
            if changes:
                out.append({"type": "cohort", "final": False, "counters": changes})
        return out

    def take_writes(self) -> tuple[list[Write], list[Write]]:
        """This batch's writes: (shares and expiry entries, to be written before the users;
        deletions of final shares and old entries, after the partition's clock: a prefix that
        holds them must hold the clock that says they are final, or a replay would count
        into an empty share again). The users' SPEC 7-9 state goes in their partition
        values."""
        shares: list[Write] = []
        for at, applied in self.funnel_applied.items():
            if applied.dirty:
                part = self.funnel_days.days.get(at, DayPartial())
                value = orjson.dumps([applied.offset, *part.encode()])
                shares.append((_funnel_key(*at), value))
                applied.dirty = False
        for at, offset, part in self.final_days:
            shares.append((_funnel_key(*at), orjson.dumps([offset, *part.encode()])))
        self.final_days = []
        deletions: list[Write] = [(_funnel_key(*at), None) for at in self.deleted_days]
        self.deleted_days = []
        shares += self.experiments.writes() + self.cohorts.writes()
        deletions += self.experiments.deletions() + self.cohorts.deletions()
        index = self.index_writes
        for user_id, holder in self.dirty_users.items():
            user = holder.journey
            if not isinstance(user, JourneyUser):
                continue
            if user.is_empty:
                holder.journey = None
                if user.filed_at is not None:
                    self.index_deletes.append(_expiry_key(user.filed_at, user_id))
                continue
            due = user.expires_at(self.longest_window_ms)
            if due != user.filed_at:
                if user.filed_at is not None:
                    self.index_deletes.append(_expiry_key(user.filed_at, user_id))
                if due is not None:
                    index.append((_expiry_key(due, user_id), b""))
                    if self.next_expiry is not None and due < self.next_expiry:
                        self.next_expiry = due
                user.filed_at = due
        filed = {key for key, _ in index}
        # index entries before the users they name (the partition's user values, written
        # after these shares), old ones deleted after the clock
        shares += index
        deletions += [(key, None) for key in self.index_deletes if key not in filed]
        self.index_writes, self.index_deletes = [], []
        self.dirty_users = {}
        return shares, deletions


def _funnel_message(name: str, day: int, part: DayPartial, *, final: bool) -> dict[str, Any]:
    """A share for the combiner; the tracker adds the partition's number."""
    return {
        "type": "funnel",
        "funnel": name,
        "day": day,
        "final": final,
        "partial": part.encode(),
    }
