"""Funnels (SPEC 7): per user and UTC day, the best attempt through a funnel's stages.

Four layers, plain data only (issue 12):

1. **Spec**: ``parse_funnels`` reads the YAML's ``funnels`` list into ``FunnelSpec``s.
2. **Per user**: ``UserFunnels`` keeps, per funnel, the user's events that match a stage and
   can still change a day that is not final; ``add`` takes events in arrival order and
   returns ``FunnelChange``s (a day's best attempt before and after), ``forget`` drops what
   the watermark has made final.
3. **Per partition**: ``FunnelPartials`` sums best attempts per (funnel, day): users reaching
   each stage and, per transition, the multiset of durations in ms (``{ms: count}``), so
   medians stay exact across partitions.
4. **Combine + rows**: ``combine`` adds partitions' partials; ``rows`` and ``range_row`` build
   what ``funnel-stats`` and ``GET /api/funnels/{name}`` publish.

Choices SPEC 7 leaves open (also in docs/contract-choices.md, "Funnels"):

- A stage is ``action`` or ``action:page-prefix``. A string is split at its *first* ``:``,
  but SPEC 1 lets actions contain ``:`` too, so a string that is a valid action as a whole
  (``video:play``) could mean either and is refused, naming both mapping forms; the mapping
  form ``{action: ..., page_prefix: ...}`` says it without doubt. ``page_view:/products``
  is not a valid action (``/``), so it reads as action ``page_view``, prefix ``/products``.
  A prefix is never empty (leave it out to match any page). A stage's text in rows is
  ``action`` or ``action:prefix``.
- Names: 1-63 of ``a-z 0-9 _ -`` starting with a letter or digit (they are Kafka keys and
  URL path segments), unique. Window: whole milliseconds, 1 ms to 30 days (a day's state is
  kept until the window after its end has passed), default 24 h. Stages may repeat.
- Ties on t1 between attempts that reach as many stages go to the attempt whose first event
  comes first in (ts, event_id) order.
- A day is final when ``watermark >= day end + window`` (the day's end is exclusive,
  ``watermark`` the lowest ts an event may still have: an earlier one is late).
- A day without attempts publishes no row. The last stage has no next stage: its
  ``drop_off_percent`` and ``median_seconds`` are null. ``median_seconds`` is the median in
  ms divided by 1000 (so half milliseconds of an even count survive). ``drop_off_percent``
  is 100 * (reached(k) - reached(k+1)) / reached(k), 0 when reached(k) is 0.
- Over a date range, ``reached`` adds the days' counts (a user counts once per day with an
  attempt) and medians come from the merged multisets.
- State is keyed by funnel name: a funnel removed from the configuration is forgotten;
  changing an existing funnel's stages or window while it has open days is not supported
  (give the changed funnel a new name).
- The same (ts, event_id) added twice is taken once.

Cost per user, for one who walked the shipped ``checkout`` funnel once (four matching events,
36-character UUID event ids; ``typical_user`` in tests/unit/test_funnels.py):

- encoded (``encode()``, what is stored): 210 bytes, from ``.venv/bin/python -c "import
  orjson; from tests.unit.test_funnels import typical_user; print(len(orjson.dumps(
  typical_user().encode())))"``; a fifth event 47 s later adds 47 bytes (its quoted id 38,
  its ts as a difference from the one before, its stage mask), kept until its day is final
  (the same test checks both figures);
- decoded, in Python: 1,549 bytes, from ``.venv/bin/python -c "from tests.unit.test_funnels
  import memory_per_user; print(memory_per_user())"`` (tracemalloc over 1,000 such users:
  the events, the four id strings 340 of them, and the day's sweep, which is never encoded).

Time: an event that comes after all of its user's others (the usual order) is one step of
each open day's sweep, O(attempts waiting for a stage the event matches); one that arrives
out of order rebuilds the sweeps of the days it can change, O(events of those days). A
decoded user builds its sweeps when it first takes an event. ``FunnelSet.masks`` says in
one dict lookup whether an event matters to any funnel at all.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple

import orjson

from analytics.config_entries import entry_name, known_keys
from analytics.kpis import ratio
from analytics.timeutil import DAY_MS, day_number, day_text
from analytics.validation import ACTION_PATTERN, MAX_PAGE_CHARS

_NO_START = 2**62  # ``_DaySweep.earliest`` with no attempt
DEFAULT_WINDOW_MS = DAY_MS
MAX_WINDOW_MS = 30 * DAY_MS
MIN_STAGES, MAX_STAGES = 2, 10
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

# --------------------------------------------------------------------------- 1. spec


@dataclass(frozen=True, slots=True)
class Stage:
    """Matches an event by its action and, when ``page_prefix`` is set, its page's start."""

    action: str
    page_prefix: str | None = None

    @property
    def text(self) -> str:
        return self.action if self.page_prefix is None else f"{self.action}:{self.page_prefix}"

    def matches(self, action: str, page: str) -> bool:
        return action == self.action and (
            self.page_prefix is None or page.startswith(self.page_prefix)
        )


@dataclass(frozen=True, slots=True)
class FunnelSpec:
    name: str
    stages: tuple[Stage, ...]
    window_ms: int = DEFAULT_WINDOW_MS


def parse_funnels(
    data: Any, read_duration: Callable[[Any], timedelta], where: str = "funnels"
) -> tuple[FunnelSpec, ...]:
    """The YAML's ``funnels`` list (None: none) as specs; ``read_duration`` reads ``window``
    (app/settings.py passes its ``parse_duration``). Errors name the field: ``funnels[1].
    stages[2]: ...``."""
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise ValueError(f"{where}: must be a list of funnels, got {type(data).__name__}")
    specs = tuple(
        _parse_funnel(item, read_duration, f"{where}[{i}]") for i, item in enumerate(data)
    )
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ValueError(f"{where}[{i}].name: {spec.name!r} names another funnel already")
        seen.add(spec.name)
    return specs


def _parse_funnel(item: Any, read_duration: Callable[[Any], timedelta], where: str) -> FunnelSpec:
    if isinstance(item, FunnelSpec):
        return item
    item = known_keys(item, ("name", "stages", "window"), where)
    name = entry_name(item, _NAME, "1-63 of a-z 0-9 _ - starting with a letter or digit", where)
    stages = item.get("stages")
    if not isinstance(stages, list | tuple) or not MIN_STAGES <= len(stages) <= MAX_STAGES:
        raise ValueError(f"{where}.stages: required, a list of {MIN_STAGES} to {MAX_STAGES}")
    parsed = tuple(_parse_stage(stage, f"{where}.stages[{k}]") for k, stage in enumerate(stages))
    return FunnelSpec(name, parsed, _parse_window(item.get("window"), read_duration, where))


def _parse_window(value: Any, read_duration: Callable[[Any], timedelta], where: str) -> int:
    if value is None:
        return DEFAULT_WINDOW_MS
    try:
        window = read_duration(value)
    except ValueError as exc:
        raise ValueError(f"{where}.window: {exc}") from None
    whole_ms, rest = divmod(window, timedelta(milliseconds=1))
    if rest or not 1 <= whole_ms <= MAX_WINDOW_MS:
        raise ValueError(f"{where}.window: whole milliseconds from 1ms to 30d, got {value!r}")
    return int(whole_ms)


def _parse_stage(value: Any, where: str) -> Stage:
    if isinstance(value, Stage):
        return value
    if isinstance(value, str):
        return _stage_from_text(value, where)
    if isinstance(value, Mapping):
        if unknown := sorted(set(value) - {"action", "page_prefix"}):
            raise ValueError(f"{where}.{unknown[0]}: unknown key (action, page_prefix)")
        named = value.get("action")
        if not isinstance(named, str):
            raise ValueError(f"{where}.action: required, a string")
        page_prefix = value.get("page_prefix")
        if page_prefix is not None and not isinstance(page_prefix, str):
            raise ValueError(f"{where}.page_prefix: must be a string")
        return _stage(named, page_prefix, where)
    raise ValueError(f"{where}: a stage is 'action', 'action:page-prefix' or a mapping")


def _stage_from_text(text: str, where: str) -> Stage:
    """``action`` or ``action:prefix``, split at the first ``:``; refused when the whole
    text is a valid action too, as it could then mean either."""
    action, colon, prefix = text.partition(":")
    if prefix and ACTION_PATTERN.fullmatch(text):
        raise ValueError(
            f"{where}: {text!r} could be the action {text!r} or action {action!r} on "
            f"pages starting {prefix!r}; write {{action: {text!r}}} or "
            f"{{action: {action!r}, page_prefix: {prefix!r}}}"
        )
    return _stage(action, prefix if colon else None, where)


def _stage(action: str, prefix: str | None, where: str) -> Stage:
    if not ACTION_PATTERN.fullmatch(action):
        raise ValueError(f"{where}: action must match [a-z0-9_.:-]{{1,64}}, got {action!r}")
    if prefix is not None and not 1 <= len(prefix) <= MAX_PAGE_CHARS:
        raise ValueError(
            f"{where}: page prefix must be 1 to {MAX_PAGE_CHARS} characters "
            "(leave it out to match every page)"
        )
    return Stage(action, prefix)


def first_open_day(spec: FunnelSpec, watermark_ms: int) -> int:
    """The earliest day of ``spec`` that is not final at ``watermark_ms``: day D is final
    once ``watermark_ms >= (D + 1) * DAY_MS + window``, as no event at or after the watermark
    can then start or continue an attempt of D."""
    return (watermark_ms - spec.window_ms) // DAY_MS


def is_final(spec: FunnelSpec, day: int, watermark_ms: int) -> bool:
    return day < first_open_day(spec, watermark_ms)


# --------------------------------------------------------------------------- 2. per user


class FunnelSet:
    """The configured funnels, indexed for matching: an event's action finds its stages in
    one dict lookup, so events no stage names cost nothing more."""

    __slots__ = ("_by_action", "index", "specs")

    def __init__(self, specs: Sequence[FunnelSpec]) -> None:
        self.specs = tuple(specs)
        self.index = {spec.name: i for i, spec in enumerate(self.specs)}
        self._by_action: dict[str, list[tuple[int, int, str | None]]] = {}
        for f, spec in enumerate(self.specs):
            for k, stage in enumerate(spec.stages):
                entry = (f, 1 << k, stage.page_prefix)
                self._by_action.setdefault(stage.action, []).append(entry)

    def masks(self, action: str, page: str) -> dict[int, int]:
        """Per funnel index, the bit mask of the stages the event matches (bit k: stage k)."""
        entries = self._by_action.get(action)
        if not entries:
            return {}
        found: dict[int, int] = {}
        for f, bit, prefix in entries:
            if prefix is None or page.startswith(prefix):
                found[f] = found.get(f, 0) | bit
        return found


class FunnelChange(NamedTuple):
    """A user's best attempt of ``day`` changed from ``old`` to ``new``: each the ts of the
    stages reached, in order (``()``: no attempt that day)."""

    funnel: str
    day: int
    old: tuple[int, ...]
    new: tuple[int, ...]


class _DaySweep:
    """SPEC 7's attempts of one day, followed through the user's events in (ts, event_id)
    order. ``groups`` holds the attempts that may still go on by the stage they wait for,
    each group in the order its attempts started, each attempt as (its start number, the ts
    of its stages so far). An event matching stage k fills it for every attempt waiting for
    k whose window it is in: each takes the first such event after its previous stage, as
    SPEC says; the groups are taken from the last stage down, so an attempt the event moves
    on is not filled again by it. Only the groups of the stages the event matches are
    looked at. An attempt whose window has passed is let go, and so is one that can no
    longer beat ``best``, the day's best attempt so far (most stages, then earliest t1, then
    earliest start).

    An event after all others (the usual order) is one ``step``; one that arrives out of
    order rebuilds the sweeps of the days it can change from the events."""

    __slots__ = ("best", "best_start", "day", "earliest", "groups", "starts")

    def __init__(self, day: int) -> None:
        self.day = day
        self.groups: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        self.earliest = _NO_START  # the earliest t1 of an attempt in ``groups``
        self.starts = 0
        self.best: tuple[int, ...] = ()
        self.best_start = 0

    def step(self, ts: int, mask: int, n_stages: int, window_ms: int) -> None:
        """Take the next event in (ts, event_id) order."""
        groups = self.groups
        oldest = ts - window_ms
        if self.earliest < oldest:  # some attempts' windows have passed: let them go
            for k in list(groups):
                group = [member for member in groups[k] if member[1][0] >= oldest]
                if group:
                    groups[k] = group
                else:
                    del groups[k]
            self.earliest = min((g[0][1][0] for g in groups.values()), default=_NO_START)
        if mask > 1 and groups:
            for k in sorted(groups, reverse=True):
                if not mask >> k & 1:
                    continue
                moved = [(start, (*stamps, ts)) for start, stamps in groups.pop(k)]
                for start, stamps in moved:
                    self._consider(start, stamps)
                if k + 1 < n_stages:
                    following = groups.get(k + 1)
                    groups[k + 1] = sorted(following + moved) if following else moved
            if len(self.best) == n_stages:  # started later: cannot beat it
                first = (self.best[0], self.best_start)
                for k in list(groups):
                    kept = [m for m in groups[k] if (m[1][0], m[0]) < first]
                    if kept:
                        groups[k] = kept
                    else:
                        del groups[k]
                self.earliest = min((g[0][1][0] for g in groups.values()), default=_NO_START)
        if mask & 1 and self.day == ts // DAY_MS and len(self.best) < n_stages:
            if not self.best:  # else a later one-stage attempt cannot beat the best
                self._consider(self.starts, (ts,))
            groups.setdefault(1, []).append((self.starts, (ts,)))
            if ts < self.earliest:
                self.earliest = ts
            self.starts += 1

    def _consider(self, start: int, stamps: tuple[int, ...]) -> None:
        best = self.best
        if len(stamps) > len(best) or (
            len(stamps) == len(best) and (stamps[0], start) < (best[0], self.best_start)
        ):
            self.best, self.best_start = stamps, start


class _Track:
    """One funnel's matching events of one user as (ts, event_id, stage mask), sorted (a
    tuple sorts by (ts, event_id) first, so ``bisect`` finds an event by those two), and
    the sweep of every day with an attempt: never encoded, built from the events when a
    decoded user first takes an event."""

    __slots__ = ("encoded", "encoded_count", "events", "sweeps")

    def __init__(self, events: list[tuple[int, str, int]]) -> None:
        self.events = events
        self.sweeps: list[_DaySweep] | None = None  # by day; None: not built yet
        self.encoded = bytearray()
        """The JSON items of ``encode`` for the first ``encoded_count`` events (no brackets):
        events come after all others nearly always, so a write encodes only the new ones."""
        self.encoded_count = 0

    def json(self) -> bytes:
        """``UserFunnels.encode``'s list for this track, as JSON, from the encoded prefix."""
        events = self.events
        if self.encoded_count > len(events):
            self.encoded, self.encoded_count = bytearray(), 0
        previous = events[self.encoded_count - 1][0] if self.encoded_count else 0
        new: list[int | str] = []
        for ts, event_id, mask in events[self.encoded_count :]:
            new += (ts - previous, event_id, mask)
            previous = ts
        if new:
            items = orjson.dumps(new)[1:-1]
            self.encoded += b"," + items if self.encoded else items
            self.encoded_count = len(events)
        return b"[" + bytes(self.encoded) + b"]"

    def add(self, spec: FunnelSpec, ts: int, event_id: str, mask: int) -> list[FunnelChange]:
        events = self.events
        if not events or (ts, event_id) > events[-1][:2]:
            at = len(events)  # after every other event: the usual order
        else:
            at = bisect_left(events, (ts, event_id))
            if at < len(events) and events[at][0] == ts and events[at][1] == event_id:
                return []
        sweeps = self.sweeps
        if sweeps is None:
            sweeps = self.sweeps = self._build_all(spec)
        n_stages, window_ms = len(spec.stages), spec.window_ms
        first_day, last_day = (ts - window_ms) // DAY_MS, ts // DAY_MS
        changes = []
        if at == len(events):  # after every other event: one step per day it can change
            events.append((ts, event_id, mask))
            for sweep in sweeps:
                if first_day <= sweep.day:
                    old = sweep.best
                    sweep.step(ts, mask, n_stages, window_ms)
                    if sweep.best != old:
                        changes.append(FunnelChange(spec.name, sweep.day, old, sweep.best))
            if mask & 1 and (not sweeps or sweeps[-1].day < last_day):
                sweep = _DaySweep(last_day)
                sweep.step(ts, mask, n_stages, window_ms)
                sweeps.append(sweep)
                changes.append(FunnelChange(spec.name, last_day, (), sweep.best))
            return changes
        events.insert(at, (ts, event_id, mask))
        if at < self.encoded_count:  # the encoded prefix changed: encoded again in full
            self.encoded, self.encoded_count = bytearray(), 0
        old_best = {sweep.day: sweep.best for sweep in sweeps}
        kept = [sweep for sweep in sweeps if not first_day <= sweep.day <= last_day]
        for day in range(first_day, last_day + 1):
            rebuilt = self._build(spec, day)
            new = rebuilt.best if rebuilt is not None else ()
            if rebuilt is not None:
                kept.append(rebuilt)
            if new != old_best.get(day, ()):
                changes.append(FunnelChange(spec.name, day, old_best.get(day, ()), new))
        self.sweeps = sorted(kept, key=lambda s: s.day)
        return changes

    def _build(self, spec: FunnelSpec, day: int) -> _DaySweep | None:
        """The sweep of ``day`` over the events, None when no attempt starts that day."""
        events = self.events
        day_end = (day + 1) * DAY_MS
        first = bisect_left(events, (day * DAY_MS,))
        while first < len(events) and events[first][0] < day_end and not events[first][2] & 1:
            first += 1  # nothing happens before the day's first attempt starts
        if first == len(events) or events[first][0] >= day_end:
            return None
        sweep = _DaySweep(day)
        n_stages, window_ms = len(spec.stages), spec.window_ms
        for i in range(first, bisect_left(events, (day_end + window_ms,))):
            sweep.step(events[i][0], events[i][2], n_stages, window_ms)
        return sweep

    def _build_all(self, spec: FunnelSpec) -> list[_DaySweep]:
        days = sorted({ts // DAY_MS for ts, _, mask in self.events if mask & 1})
        return [sweep for day in days if (sweep := self._build(spec, day)) is not None]

    def forget(self, spec: FunnelSpec, watermark_ms: int) -> None:
        open_day = first_open_day(spec, watermark_ms)
        dropped = bisect_left(self.events, (open_day * DAY_MS,))
        if dropped:
            del self.events[:dropped]
            self.encoded, self.encoded_count = bytearray(), 0
        if self.sweeps is not None:
            self.sweeps = [sweep for sweep in self.sweeps if sweep.day >= open_day]

    def best_attempts(self, spec: FunnelSpec) -> list[FunnelChange]:
        if self.sweeps is None:
            self.sweeps = self._build_all(spec)
        return [FunnelChange(spec.name, sweep.day, (), sweep.best) for sweep in self.sweeps]


class UserFunnels:
    """What the funnels must remember of one user: per funnel, the events matching a stage
    whose day is not final yet (and, in memory only, the sweeps of their days).

    ``add`` takes the user's accepted events in arrival order, which may differ from ts
    order by up to grace; the caller never passes an event with ts below the watermark it
    gave ``forget`` or ``rows`` (it is late). An event can change the best attempt of its
    own day and of the days before whose attempts are still open (t1 >= ts - window).
    """

    __slots__ = ("funnels", "tracks")

    def __init__(self, funnels: FunnelSet) -> None:
        self.funnels = funnels
        #: by funnel index; None while the funnel has no event of this user
        self.tracks: list[_Track | None] = [None] * len(funnels.specs)

    def add(
        self,
        ts_ms: int,
        event_id: str,
        action: str,
        page: str | None,
        matched: dict[int, int] | None = None,
    ) -> list[FunnelChange]:
        """Take one event; returns the (funnel, day) best attempts it changed. ``matched``:
        ``FunnelSet.masks`` of the event when the caller has it already."""
        if matched is None:
            matched = self.funnels.masks(action, page or "")
        if not matched:
            return []
        changes: list[FunnelChange] = []
        for f, mask in matched.items():
            track = self.tracks[f]
            if track is None:
                track = self.tracks[f] = _Track([])
            changes += track.add(self.funnels.specs[f], ts_ms, event_id, mask)
        return changes

    def forget(self, watermark_ms: int) -> None:
        """Drop the events of days final at ``watermark_ms``; their contributions stay in the
        partials as they are."""
        for f, track in enumerate(self.tracks):
            if track is not None:
                track.forget(self.funnels.specs[f], watermark_ms)
                if not track.events:
                    self.tracks[f] = None

    @property
    def is_empty(self) -> bool:
        return all(track is None for track in self.tracks)

    def best_attempts(self) -> list[FunnelChange]:
        """Every kept day's best attempt, as changes from nothing (for checks and rebuilds)."""
        return [
            change
            for f, track in enumerate(self.tracks)
            if track is not None
            for change in track.best_attempts(self.funnels.specs[f])
        ]

    def encode(self) -> dict[str, list[int | str]]:
        """``{funnel: [ts, event_id, mask, ts - previous ts, event_id, mask, ...]}``."""
        data: dict[str, list[int | str]] = {}
        for f, track in enumerate(self.tracks):
            if track is not None:
                flat: list[int | str] = []
                previous = 0
                for ts, event_id, mask in track.events:
                    flat += (ts - previous, event_id, mask)
                    previous = ts
                data[self.funnels.specs[f].name] = flat
        return data

    def encoded(self) -> dict[str, orjson.Fragment]:
        """``encode()`` as JSON fragments for ``orjson.dumps``, each from its track's encoded
        prefix plus the events since (the hot path writes a user once per batch)."""
        return {
            self.funnels.specs[f].name: orjson.Fragment(track.json())
            for f, track in enumerate(self.tracks)
            if track is not None
        }

    @classmethod
    def decode(cls, funnels: FunnelSet, data: Mapping[str, Sequence[Any]]) -> UserFunnels:
        """The inverse of ``encode``; funnels no longer configured are left out."""
        user = cls(funnels)
        for name, flat in data.items():
            f = funnels.index.get(name)
            if f is not None and flat:
                events = []
                ts = 0
                for i in range(0, len(flat), 3):
                    ts += int(flat[i])
                    events.append((ts, str(flat[i + 1]), int(flat[i + 2])))
                user.tracks[f] = _Track(events)
        return user


# --------------------------------------------------------------------------- 3. per partition


@dataclass(slots=True)
class DayPartial:
    """One (funnel, day): users whose best attempt reached stage k (``reached[k]``) and, per
    transition k -> k+1, how many of them took how many ms (``gaps[k]``). Lists stop at the
    deepest stage reached, so equal figures are equal data."""

    reached: list[int] = field(default_factory=list)
    gaps: list[dict[int, int]] = field(default_factory=list)

    def add(self, stamps: Sequence[int], sign: int) -> None:
        while len(self.reached) < len(stamps):
            if self.reached:
                self.gaps.append({})
            self.reached.append(0)
        for k in range(len(stamps)):
            self.reached[k] += sign
        for k in range(len(stamps) - 1):
            counts = self.gaps[k]
            ms = stamps[k + 1] - stamps[k]
            counts[ms] = counts.get(ms, 0) + sign
            if not counts[ms]:
                del counts[ms]
        while self.reached and not self.reached[-1]:
            self.reached.pop()
            if self.gaps:
                self.gaps.pop()

    def merge(self, other: DayPartial) -> None:
        while len(self.reached) < len(other.reached):
            if self.reached:
                self.gaps.append({})
            self.reached.append(0)
        for k, n in enumerate(other.reached):
            self.reached[k] += n
        for k, counts in enumerate(other.gaps):
            mine = self.gaps[k]
            for ms, n in counts.items():
                mine[ms] = mine.get(ms, 0) + n

    def encode(self) -> list[Any]:
        gaps = [[x for ms in sorted(counts) for x in (ms, counts[ms])] for counts in self.gaps]
        return [list(self.reached), gaps]

    @classmethod
    def decode(cls, data: Sequence[Any]) -> DayPartial:
        reached, gaps = data
        return cls(
            [int(n) for n in reached],
            [{int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in gaps],
        )


@dataclass(slots=True)
class FunnelPartials:
    """A partition's (or, combined, every partition's) funnel figures per (funnel, day)."""

    days: dict[tuple[str, int], DayPartial] = field(default_factory=dict)

    def apply(self, changes: Iterable[FunnelChange]) -> None:
        """Take out each change's old best attempt and put in its new one."""
        for change in changes:
            key = (change.funnel, change.day)
            part = self.days.get(key)
            if part is None:
                part = self.days[key] = DayPartial()
            if change.old:
                part.add(change.old, -1)
            if change.new:
                part.add(change.new, +1)
            if not part.reached:
                del self.days[key]

    def take_final(self, specs: Sequence[FunnelSpec], watermark_ms: int) -> FunnelPartials:
        """Remove and return the days final at ``watermark_ms``, and those of funnels no
        longer configured (they can never become final): no event can change them now."""
        by_name = {spec.name: spec for spec in specs}
        taken = FunnelPartials()
        for name, day in list(self.days):
            spec = by_name.get(name)
            if spec is None or is_final(spec, day, watermark_ms):
                taken.days[name, day] = self.days.pop((name, day))
        return taken

    def merge(self, other: FunnelPartials) -> None:
        for key, part in other.days.items():
            mine = self.days.get(key)
            if mine is None:
                mine = self.days[key] = DayPartial()
            mine.merge(part)

    def encode(self) -> list[list[Any]]:
        """``[[funnel, day, reached, gaps], ...]`` sorted, ``gaps`` as flat ms, count pairs."""
        return [[name, day, *self.days[name, day].encode()] for name, day in sorted(self.days)]

    @classmethod
    def decode(cls, data: Iterable[Sequence[Any]]) -> FunnelPartials:
        return cls({(str(e[0]), int(e[1])): DayPartial.decode(e[2:]) for e in data})


# --------------------------------------------------------------------------- 4. combine, rows


def combine(partials: Iterable[FunnelPartials]) -> FunnelPartials:
    """The sum of partitions' partials (users are disjoint across partitions)."""
    total = FunnelPartials()
    for partial in partials:
        total.merge(partial)
    return total


def median_seconds(counts: Mapping[int, int]) -> float | None:
    """The exact median of a ``{ms: count}`` multiset in seconds (the mean of the two middle
    values for an even count); None when it is empty."""
    total = sum(counts.values())
    if not total:
        return None
    low_rank, high_rank = (total - 1) // 2, total // 2
    seen = 0
    low = None
    for ms in sorted(counts):
        seen += counts[ms]
        if low is None and seen > low_rank:
            low = ms
        if seen > high_rank:
            assert low is not None
            return (low + ms) / 2000
    raise AssertionError("unreachable: the ranks are below the total")


def stage_figures(spec: FunnelSpec, part: DayPartial) -> list[dict[str, Any]]:
    """Per stage: ``stage``, ``reached``, and towards the next stage ``drop_off_percent``
    and ``median_seconds`` (null on the last stage)."""
    reached = part.reached + [0] * (len(spec.stages) - len(part.reached))
    figures = []
    for k, stage in enumerate(spec.stages):
        last = k == len(spec.stages) - 1
        gaps = part.gaps[k] if k < len(part.gaps) else {}
        figures.append(
            {
                "stage": stage.text,
                "reached": reached[k],
                "drop_off_percent": None
                if last
                else 100 * ratio(reached[k] - reached[k + 1], reached[k]),
                "median_seconds": None if last else median_seconds(gaps),
            }
        )
    return figures


def day_row(spec: FunnelSpec, day: int, part: DayPartial, watermark_ms: int) -> dict[str, Any]:
    """The ``funnel-stats`` row of one funnel and day."""
    return {
        "funnel": spec.name,
        "day": day_text(day),
        "is_final": is_final(spec, day, watermark_ms),
        "stages": stage_figures(spec, part),
    }


def rows(
    specs: Sequence[FunnelSpec], combined: FunnelPartials, watermark_ms: int
) -> list[dict[str, Any]]:
    """Every (funnel, day) row of ``combined``, by funnel in configured order, then day;
    partials of funnels no longer configured are left out."""
    by_name = {spec.name: (i, spec) for i, spec in enumerate(specs)}
    keys = sorted((by_name[name][0], day, name) for name, day in combined.days if name in by_name)
    return [
        day_row(by_name[name][1], day, combined.days[name, day], watermark_ms)
        for _, day, name in keys
    ]


def range_row(
    spec: FunnelSpec, combined: FunnelPartials, first: date, last: date, watermark_ms: int
) -> dict[str, Any]:
    """``spec`` over the days ``first`` to ``last`` (both included): reached summed over the
    days, medians from the merged multisets; final when its last day is."""
    total = DayPartial()
    first_day, last_day = day_number(first), day_number(last)
    for (name, day), part in combined.days.items():
        if name == spec.name and first_day <= day <= last_day:
            total.merge(part)
    return {
        "funnel": spec.name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "is_final": is_final(spec, last_day, watermark_ms),
        "stages": stage_figures(spec, total),
    }
