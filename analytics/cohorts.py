"""SPEC section 8: cohorts and retention, per user, per partition, combined into ``cohort-stats``.

Four layers (docs/contract-choices.md, "Cohorts"), plain data only:

1. ``CohortsSpec``: the settings (``cohorts:`` in the YAML file).
2. ``UserCohort``: what one user must remember. ``add`` takes one accepted event in arrival
   order (ts order only within ``grace``) and returns a ``Delta`` (the user's old and new
   ``Share`` of the (cohort, offset) counters it touched), or None when nothing changed.
   ``session`` turns one of the user's sessions into its engagement share (below).
3. ``CohortPartial``: a partition's counters per (cohort date, day offset); ``apply(delta)``
   subtracts the old shares and adds the new ones.
4. ``combine(partials)`` and ``rows(spec, combined, watermark_ms)``: the published rows.

Days are UTC day numbers (epoch ms // 86,400,000) inside, ``YYYY-MM-DD`` in rows.

Exact under disorder within grace. The user keeps their cohort day c and, per active day
c + d (d <= ``max_day_offset``), its revenue in cents. An event on an earlier day than c
(possible while c's start is not older than the horizon, i.e. within grace of the user's
first event) moves the whole contribution to the new cohort: hence the per-day revenue, which
``forget(horizon_ms)`` drops once the day has ended before the horizon (no event can reach
it any more; then the cohort cannot move either). So a user's state is their cohort day and
the one or two days around the horizon: ``[c, [d, cents, ...]]``.

Cohort size is ``retained_users`` at offset 0: every user of cohort c has an event on day c
(their earliest), so the partial needs no separate counter.

Engagement (SPEC 8, last bullet) comes from the partition's sessions (analytics.partition),
through ``UserCohort.session(spec, session_start_ms, engagement_score)``: call it exactly
once per session (session key and start), with the engagement score
(``analytics.sessions.engagement_score``, e.g. ``SessionSummary.engagement()``) of the
session's events with ts before the end of the UTC day of its start, once no event with ts
before that day's end can be accepted any more (the partition's watermark has passed the
day's end, by its lateness rule). From that moment the session's start, its events before
the day's end and the user's cohort are all final: an event still to come has ts at or after
the day's end, so it can neither join the session before the cut nor be the user's earliest.
A session that starts on day X and runs past midnight is therefore taken as it stood before
its first event at or after X's end (or as it is, when it has none). Live rows can show sessions
of days not yet ended: add their preview's ``Delta`` and take it back with
``delta.inverse()`` before adding the next one; without that, a live row's
``average_engagement_score`` is 0 (no session of its day has been taken yet).

Choices SPEC leaves open:

* Rows of a cohort are published for the offsets whose day has begun: d from 0 to the day of
  the watermark, or to the latest day on which a user of the cohort has an event when that is
  later (a lagging partition holds the watermark back), at most ``max_day_offset``. Days not
  yet begun would publish zeros that mean nothing yet.
* ``is_final``: the watermark has passed the end of day c + d (``end <= watermark``). The
  ``watermark_ms`` given to ``rows`` must promise that no partition still accepts an event
  with an earlier ts: the combiner's (least) partition watermark does when the KPI window
  divides a day (a day's end is then a window's end, and an event is late once its window has
  ended at or before the watermark); otherwise give the least partition's start of the window
  holding its watermark. The horizon given to ``forget`` is that lowest still acceptable ts
  of the user's partition.
* ``cumulative_revenue_per_user`` and money: 2 decimals like the KPI rows (analytics.kpis),
  with the exact ``cumulative_revenue_cents`` beside it. ``average_engagement_score`` is the
  mean of the sessions' scores, summed exactly as score x 10,000 (an integer, as for KPIs).
* A cohort whose users all moved to an earlier cohort (late earlier events) disappears; its
  rows were live only (a cohort can move only while its first day has not ended before the
  horizon, and its day-0 row is final only once it has).

Bytes per user (``.venv/bin/python -m analytics.cohorts``): once its days have ended before
the horizon, 10 encoded (``[20000,[]]``) and 148 decoded (tracemalloc over 10,000 users); with
two days' revenue still kept (around midnight), 24 and 365.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from analytics.counter_table import CounterTable
from analytics.kpis import ratio
from analytics.money import currency_per
from analytics.plain_spec import checked_keys, whole_number
from analytics.timeutil import DAY_MS, day_of, day_text, format_ts

MAX_DAY_OFFSET = 3_660  # ten years of offsets: rows per cohort are max_day_offset + 1


# --------------------------------------------------------------------------- 1. spec


@dataclass(frozen=True, slots=True)
class CohortsSpec:
    """Which day offsets are published: d = 0 … ``max_day_offset`` (SPEC 8: 90)."""

    max_day_offset: int = 90

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "cohorts") -> CohortsSpec:
        """The spec from plain data (the YAML section); errors start with ``where`` and
        the key (app/settings.py gives no ``where``: it names the section itself)."""
        prefix = checked_keys(data, cls.__dataclass_fields__, where)
        spec = cls(**data)
        whole_number(prefix, "max_day_offset", spec.max_day_offset, 0, MAX_DAY_OFFSET)
        return spec


# --------------------------------------------------------------------------- 2. per user


class Share(NamedTuple):
    """One user's contribution to the counters of (cohort day, offset)."""

    cohort: int
    offset: int
    retained: int
    revenue_cents: int
    engagement_x10000: int
    sessions: int


class Delta(NamedTuple):
    """What one event or session changed: subtract ``old``, add ``new``."""

    old: tuple[Share, ...]
    new: tuple[Share, ...]

    def inverse(self) -> Delta:
        """The change that takes this one back (a live session preview, replaced)."""
        return Delta(self.new, self.old)


class UserCohort:
    """Everything SPEC 8 needs to remember of one user (see the module docstring).

    Add each accepted event once (the partition's replay check guards that). Call
    ``forget(horizon_ms)`` with a time before which no event will be added any more."""

    __slots__ = ("cohort", "days")

    def __init__(self) -> None:
        self.cohort: int | None = None
        self.days: dict[int, int] = {}  # offset from the cohort day -> revenue cents

    def _shares(self) -> tuple[Share, ...]:
        cohort = self.cohort
        assert cohort is not None
        return tuple(Share(cohort, d, 1, cents, 0, 0) for d, cents in self.days.items())

    def add(self, spec: CohortsSpec, ts_ms: int, revenue_cents: int) -> Delta | None:
        """Take one event; what changed."""
        day = day_of(ts_ms)
        cohort = self.cohort
        if cohort is None:
            self.cohort = day
            self.days = {0: revenue_cents}
            return Delta((), self._shares())
        offset = day - cohort
        if offset < 0:
            old = self._shares()
            limit = spec.max_day_offset
            moved = {d - offset: cents for d, cents in self.days.items() if d - offset <= limit}
            self.cohort = day
            self.days = {0: revenue_cents, **moved}
            return Delta(old, self._shares())
        if offset > spec.max_day_offset:
            return None
        cents = self.days.get(offset)
        if cents is None:
            self.days[offset] = revenue_cents
            return Delta((), (Share(cohort, offset, 1, revenue_cents, 0, 0),))
        if not revenue_cents:
            return None
        self.days[offset] = cents + revenue_cents
        return Delta(
            (Share(cohort, offset, 0, cents, 0, 0),),
            (Share(cohort, offset, 0, cents + revenue_cents, 0, 0),),
        )

    def session(
        self, spec: CohortsSpec, session_start_ms: int, engagement_score: float
    ) -> Delta | None:
        """The engagement share of one of the user's sessions, cut at the end of the day of
        its start (the module docstring says when to call); None beyond ``max_day_offset``."""
        cohort = self.cohort
        if cohort is None or day_of(session_start_ms) < cohort:
            first = "none" if cohort is None else day_text(cohort)
            raise ValueError(
                f"a session starting at {format_ts(session_start_ms)} is before the user's "
                f"cohort day ({first}): add the session's events first"
            )
        offset = day_of(session_start_ms) - cohort
        if offset > spec.max_day_offset:
            return None
        score = round(engagement_score * 10_000)
        return Delta((), (Share(cohort, offset, 0, 0, score, 1),))

    def forget(self, horizon_ms: int) -> None:
        """Drop the days that ended before ``horizon_ms``: no event can reach them."""
        if self.cohort is None:
            return
        first_kept = day_of(horizon_ms) - self.cohort  # a day ends at or before horizon_ms
        if any(d < first_kept for d in self.days):  # iff it is before the horizon's day
            self.days = {d: cents for d, cents in self.days.items() if d >= first_kept}

    def encode(self) -> list[Any]:
        """``[cohort day, [offset, cents, offset, cents, ...]]``."""
        return [self.cohort, [value for item in self.days.items() for value in item]]

    @classmethod
    def decode(cls, data: list[Any]) -> UserCohort:
        user = cls()
        user.cohort, flat = data
        user.days = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
        return user


# --------------------------------------------------------------------------- 3. per partition


class CohortPartial(CounterTable):
    """Counters per (cohort day, offset): [retained_users, revenue_cents,
    engagement_x10000, sessions]; a key whose counters are all 0 is dropped."""

    WIDTH = 4
    __slots__ = ()

    def apply(self, delta: Delta) -> None:
        for share in delta.old:
            self.add((share.cohort, share.offset), share[2:], -1)
        for share in delta.new:
            self.add((share.cohort, share.offset), share[2:])

    def forget(self, spec: CohortsSpec, watermark_ms: int) -> None:
        """Drop the cohorts whose every row is final (their last day ended before the
        watermark): once their final rows are published, nothing can change them."""
        done = day_of(watermark_ms) - spec.max_day_offset  # cohort + max ended: cohort < done
        for key in [key for key in self.counters if key[0] < done]:
            del self.counters[key]


# --------------------------------------------------------------------------- 4. combine, rows


def combine(partials: Iterable[CohortPartial]) -> CohortPartial:
    """The sum of the partitions' partials (their users are disjoint)."""
    return CohortPartial.summed(partials)


def rows(spec: CohortsSpec, combined: CohortPartial, watermark_ms: int) -> list[dict[str, Any]]:
    """The rows of every cohort for the days that have begun, by cohort then offset."""
    by_cohort: dict[int, dict[int, list[int]]] = {}
    for (cohort, offset), counters in combined.counters.items():
        by_cohort.setdefault(cohort, {})[offset] = counters
    watermark_day = day_of(watermark_ms)
    out: list[dict[str, Any]] = []
    for cohort in sorted(by_cohort):
        offsets = by_cohort[cohort]
        size = offsets[0][0] if 0 in offsets else 0
        if not size:
            continue  # only sessions' shares left: the users moved on (transient)
        last = min(spec.max_day_offset, max(watermark_day - cohort, max(offsets)))
        cumulative = 0
        for d in range(last + 1):
            counters = offsets.get(d, [0, 0, 0, 0])
            cumulative += counters[1]
            final = (cohort + d + 1) * DAY_MS <= watermark_ms
            out.append(cohort_row(cohort, d, size, counters, cumulative, final=final))
    return out


def cohort_row(
    cohort: int, offset: int, size: int, counters: list[int], cumulative_cents: int, *, final: bool
) -> dict[str, Any]:
    """One ``cohort-stats`` row: ``counters`` of (cohort, offset) as a CohortPartial holds
    them, ``cumulative_cents`` the cohort's revenue on days 0 to ``offset``."""
    retained, _, engagement, sessions = counters
    return {
        "cohort": day_text(cohort),
        "day_offset": offset,
        "cohort_size": size,
        "retained_users": retained,
        "retention_rate_percent": ratio(100 * retained, size),
        "cumulative_revenue_per_user": currency_per(cumulative_cents, size),
        "cumulative_revenue_cents": cumulative_cents,
        "average_engagement_score": ratio(engagement, 10_000 * sessions),
        "is_final": final,
    }


def _measure() -> None:
    """Bytes per user of the state, encoded (stored) and decoded (cached in memory)."""
    import tracemalloc

    import orjson

    spec = CohortsSpec()
    day = 20_000 * DAY_MS
    settled = UserCohort()
    settled.add(spec, day + 3_600_000, 0)
    settled.forget(day + 2 * DAY_MS)
    active = UserCohort.decode(settled.encode())
    active.add(spec, day + DAY_MS + 3_600_000, 4_999)
    active.add(spec, day + 2 * DAY_MS + 5_000, 12_500)
    active.forget(day + 2 * DAY_MS - 1)
    for name, user in (("days forgotten", settled), ("two days kept", active)):
        encoded = orjson.dumps(user.encode())
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        decoded = [UserCohort.decode(orjson.loads(encoded)) for _ in range(10_000)]
        in_memory = (tracemalloc.get_traced_memory()[0] - before) / len(decoded)
        tracemalloc.stop()
        print(f"{name}: {len(encoded)} bytes encoded {encoded!r}, {in_memory:.0f} decoded")


if __name__ == "__main__":
    _measure()
