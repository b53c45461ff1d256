"""SPEC 8 cohorts and retention (analytics/cohorts.py): the per-user state against the SPEC's
edge cases, the rows' figures and finality, and a property: users split over partitions, their
events shuffled within the grace, sessions taken when their day has ended, combined, give the
rows of one partition fed in order and of a brute force written here from the SPEC text."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.cohorts import (
    CohortPartial,
    CohortsSpec,
    Delta,
    Share,
    UserCohort,
    combine,
    rows,
)
from analytics.sessions import engagement_score
from analytics.timeutil import DAY_MS, day_text
from app.settings import ConfigurationError, load_settings
from tests.grace_disorder import arrival_order, watermarks

SPEC = CohortsSpec(max_day_offset=3)
DAY0 = 20_454  # 2026-01-01
T0 = DAY0 * DAY_MS
HOUR = 3_600_000


def take(
    users: dict[str, UserCohort],
    partial: CohortPartial,
    user: str,
    ts: int,
    cents: int = 0,
    spec: CohortsSpec = SPEC,
) -> Delta | None:
    """What the partition does with an accepted event."""
    delta = users.setdefault(user, UserCohort()).add(spec, ts, cents)
    if delta is not None:
        partial.apply(delta)
    return delta


def feed(events: Iterable[tuple[str, int, int]]) -> tuple[dict[str, UserCohort], CohortPartial]:
    users: dict[str, UserCohort] = {}
    partial = CohortPartial()
    for user, ts, cents in events:
        take(users, partial, user, ts, cents)
    return users, partial


def table(partial: CohortPartial, watermark: int) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row["cohort"], row["day_offset"]): row for row in rows(SPEC, partial, watermark)}


# --------------------------------------------------------------------------- spec


def test_the_spec_default_is_90_days() -> None:
    assert CohortsSpec.parse({}) == CohortsSpec(90)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"max_day_offset": -1}, "cohorts.max_day_offset: must be from 0 to 3660"),
        ({"max_day_offset": 3661}, "cohorts.max_day_offset: must be from 0 to 3660"),
        ({"max_day_offset": "90"}, "cohorts.max_day_offset: must be a whole number"),
        ({"max_days": 90}, "cohorts.max_days: unknown key"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        CohortsSpec.parse(data)


# --------------------------------------------------------------------------- settings


def test_the_settings_section_is_checked_by_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS__COHORTS__MAX_DAY_OFFSET", "30")
    assert load_settings().cohorts.spec() == CohortsSpec(30)
    monkeypatch.setenv("ANALYTICS__COHORTS__MAX_DAY_OFFSET", "-1")
    with pytest.raises(ConfigurationError, match="cohorts: max_day_offset: must be from 0"):
        load_settings()


# --------------------------------------------------------------------------- rows


def test_a_user_active_on_one_day_only() -> None:
    _, partial = feed([("u", T0 + 10 * HOUR, 0), ("u", T0 + 20 * HOUR, 0)])
    got = table(partial, T0 + 3 * DAY_MS + HOUR)
    assert [key for key in got] == [("2026-01-01", d) for d in range(4)]
    assert [row["retained_users"] for row in got.values()] == [1, 0, 0, 0]
    assert [row["retention_rate_percent"] for row in got.values()] == [100.0, 0.0, 0.0, 0.0]
    assert {row["cohort_size"] for row in got.values()} == {1}
    assert [row["is_final"] for row in got.values()] == [True, True, True, False]


def test_an_earlier_event_within_grace_moves_the_cohort_across_midnight() -> None:
    users, partial = feed([("u", T0 + DAY_MS + 5_000, 300)])
    assert list(table(partial, T0 + DAY_MS)) == [("2026-01-02", 0)]
    delta = take(users, partial, "u", T0 + DAY_MS - 2_000, 0)  # 23:59:58, 7 s later
    assert delta == Delta(
        (Share(DAY0 + 1, 0, 1, 300, 0, 0),),
        (Share(DAY0, 0, 1, 0, 0, 0), Share(DAY0, 1, 1, 300, 0, 0)),
    )
    got = table(partial, T0 + DAY_MS)
    assert list(got) == [("2026-01-01", 0), ("2026-01-01", 1)]  # the new cohort's days
    assert [row["retained_users"] for row in got.values()] == [1, 1]
    assert [row["cumulative_revenue_cents"] for row in got.values()] == [0, 300]


def test_revenue_is_cumulative_per_user_of_the_cohort() -> None:
    _, partial = feed(
        [
            ("a", T0 + HOUR, 1_000),
            ("b", T0 + 2 * HOUR, 0),
            ("a", T0 + 2 * DAY_MS + HOUR, 550),
            ("b", T0 + 2 * DAY_MS + 2 * HOUR, 0),
            ("a", T0 + 9 * DAY_MS, 99_999),  # beyond max_day_offset: in no row
        ]
    )
    got = table(partial, T0 + 10 * DAY_MS)
    per_user = [row["cumulative_revenue_per_user"] for row in got.values()]
    assert per_user == [5.0, 5.0, 7.75, 7.75]
    assert [row["cumulative_revenue_cents"] for row in got.values()] == [1_000, 1_000, 1_550, 1_550]
    assert [row["retained_users"] for row in got.values()] == [2, 0, 2, 0]
    assert [row["retention_rate_percent"] for row in got.values()] == [100.0, 0.0, 100.0, 0.0]


def test_nothing_is_published_without_users_and_no_session_scores_zero() -> None:
    assert rows(SPEC, CohortPartial(), T0) == []
    _, partial = feed([("u", T0, 0)])
    (row,) = rows(SPEC, partial, T0)
    assert row["average_engagement_score"] == 0.0
    assert row["cumulative_revenue_per_user"] == 0.0


def test_rows_are_published_for_days_that_have_begun() -> None:
    users, partial = feed([("u", T0 + HOUR, 0)])
    mid_day_one = T0 + DAY_MS + HOUR
    got = table(partial, mid_day_one)
    assert [(d, row["is_final"]) for (_, d), row in got.items()] == [(0, True), (1, False)]
    assert table(partial, T0 + DAY_MS)[("2026-01-01", 0)]["is_final"] is True  # end == wm
    assert table(partial, T0 + DAY_MS - 1)[("2026-01-01", 0)]["is_final"] is False
    # a partition lagging behind holds the watermark on day 1; an event on day 2 shows day 2
    take(users, partial, "v", T0 + HOUR, 0)
    take(users, partial, "v", T0 + 2 * DAY_MS + HOUR, 0)
    assert max(d for _, d in table(partial, mid_day_one)) == 2


def test_engagement_is_the_mean_over_the_days_sessions() -> None:
    users, partial = feed([("u", T0 + HOUR, 0), ("v", T0 + 2 * HOUR, 0)])
    for user, start, score in (("u", T0 + HOUR, 12.5), ("v", T0 + 2 * HOUR, 40.0)):
        delta = users[user].session(SPEC, start, score)
        assert delta is not None
        partial.apply(delta)
    take(users, partial, "u", T0 + DAY_MS + HOUR, 0)
    preview = users["u"].session(SPEC, T0 + DAY_MS + HOUR, 30.0)  # live: day 1 not over
    assert preview is not None
    partial.apply(preview)
    got = table(partial, T0 + DAY_MS + 2 * HOUR)
    assert got[("2026-01-01", 0)]["average_engagement_score"] == pytest.approx(26.25)
    assert got[("2026-01-01", 1)]["average_engagement_score"] == pytest.approx(30.0)
    partial.apply(preview.inverse())  # replaced by the final session, cut at midnight
    final = users["u"].session(SPEC, T0 + DAY_MS + HOUR, 36.0)
    assert final is not None
    partial.apply(final)
    assert table(partial, T0 + 2 * DAY_MS)[("2026-01-01", 1)]["average_engagement_score"] == 36.0
    assert users["u"].session(SPEC, T0 + 4 * DAY_MS, 10.0) is None  # beyond max_day_offset
    with pytest.raises(ValueError, match=r"before the user's cohort day \(2026-01-01\)"):
        users["u"].session(SPEC, T0 - 1, 10.0)


def test_the_state_forgets_ended_days_and_stays_exact() -> None:
    users, partial = feed([("u", T0 + 23 * HOUR, 0), ("u", T0 + DAY_MS + HOUR, 200)])
    user = users["u"]
    user.forget(T0 + DAY_MS + 2 * HOUR)  # day 0 has ended: the cohort is settled
    assert user.encode() == [DAY0, [1, 200]]
    delta = take(users, partial, "u", T0 + DAY_MS + 3 * HOUR, 50)
    assert delta == Delta((Share(DAY0, 1, 0, 200, 0, 0),), (Share(DAY0, 1, 0, 250, 0, 0),))
    user.forget(T0 + 3 * DAY_MS)
    assert user.encode() == [DAY0, []]
    take(users, partial, "u", T0 + 3 * DAY_MS + HOUR, 0)
    assert [row["retained_users"] for row in rows(SPEC, partial, T0 + 4 * DAY_MS)] == [1, 1, 0, 1]
    assert UserCohort.decode(orjson.loads(orjson.dumps(user.encode()))).encode() == user.encode()


def test_a_moved_cohort_drops_the_days_now_beyond_the_last_offset() -> None:
    users, partial = feed([("u", T0 + DAY_MS + 60_000, 0), ("u", T0 + 4 * DAY_MS, 0)])
    assert users["u"].encode() == [DAY0 + 1, [0, 0, 3, 0]]
    take(users, partial, "u", T0 + DAY_MS - 60_000, 0)
    assert users["u"].encode() == [DAY0, [0, 0, 1, 0]]
    assert sorted(partial.counters) == [(DAY0, 0), (DAY0, 1)]


def test_the_partial_forgets_cohorts_whose_rows_are_all_final() -> None:
    _, partial = feed([("a", T0, 0), ("b", T0 + DAY_MS, 0)])
    partial.forget(SPEC, T0 + 4 * DAY_MS)  # 2026-01-01 + 3 days ended
    assert sorted(partial.counters) == [(DAY0 + 1, 0)]
    again = CohortPartial.decode(orjson.loads(orjson.dumps(partial.encode())))
    assert again.counters == partial.counters


def test_a_partitions_changes_keep_the_combiners_copy_equal() -> None:
    users, partial = feed([("a", T0 + 60_000, 100), ("b", T0 + DAY_MS + HOUR, 0)])
    copy = CohortPartial()
    copy.replace(partial.take_changes())
    take(users, partial, "a", T0 - 60_000, 0)  # a moves to the day before: (DAY0, 0) empties
    take(users, partial, "b", T0 + 2 * DAY_MS, 0)
    changes = partial.take_changes()
    assert changes == [
        [DAY0 - 1, 0, 1, 0, 0, 0],
        [DAY0 - 1, 1, 1, 100, 0, 0],
        [DAY0, 0, 0, 0, 0, 0],
        [DAY0 + 1, 1, 1, 0, 0, 0],
    ]
    copy.replace(changes)
    assert copy.counters == partial.counters
    assert partial.take_changes() == []


# --------------------------------------------------------------------------- property

GRACE = HOUR
GAP = 30 * 60_000
SHORT = CohortsSpec(max_day_offset=1)  # so that moved cohorts push days out of range


@dataclass(frozen=True)
class Event:
    user: str
    ts: int
    event_id: str
    session_id: str
    action: str
    page: str
    duration: int
    revenue_cents: int
    jitter: int = 0


def sessions_of(events: Iterable[Event]) -> list[list[Event]]:
    """SPEC 3: per session key, in (ts, event_id) order, a gap of more than GAP splits."""
    by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for event in events:
        by_key[(event.user, event.session_id)].append(event)
    found: list[list[Event]] = []
    for key_events in by_key.values():
        last: int | None = None
        for event in sorted(key_events, key=lambda e: (e.ts, e.event_id)):
            if last is None or event.ts - last > GAP:
                found.append([])
            found[-1].append(event)
            last = event.ts
    return found


def cut_score(session: list[Event]) -> float:
    """SPEC 8: the session's events before the end of its first day, SPEC 3's score."""
    end = (session[0].ts // DAY_MS + 1) * DAY_MS
    kept = [event for event in session if event.ts < end]
    return engagement_score(
        len(kept),
        len({event.page for event in kept if event.page}),
        sum(event.duration for event in kept),
        len({event.action for event in kept}),
    )


def brute_force(events: list[Event], max_offset: int) -> list[dict[str, Any]]:
    """SPEC 8 read literally, every row final."""
    cohort_of: dict[str, int] = {}
    for event in sorted(events, key=lambda e: -e.ts):  # the earliest last
        cohort_of[event.user] = event.ts // DAY_MS
    scores: dict[tuple[int, int], list[float]] = defaultdict(list)
    for session in sessions_of(events):
        cohort = cohort_of[session[0].user]
        scores[(cohort, session[0].ts // DAY_MS - cohort)].append(cut_score(session))
    expected = []
    for cohort in sorted(set(cohort_of.values())):
        members = {user for user, c in cohort_of.items() if c == cohort}
        cumulative = 0
        for d in range(max_offset + 1):
            day = [e for e in events if e.user in members and e.ts // DAY_MS == cohort + d]
            cumulative += sum(e.revenue_cents for e in day)
            retained = len({e.user for e in day})
            day_scores = scores[(cohort, d)]
            expected.append(
                {
                    "cohort": day_text(cohort),
                    "day_offset": d,
                    "cohort_size": len(members),
                    "retained_users": retained,
                    "retention_rate_percent": 100 * retained / len(members),
                    "cumulative_revenue_cents": cumulative,
                    "average_engagement_score": (
                        sum(day_scores) / len(day_scores) if day_scores else 0.0
                    ),
                    "is_final": True,
                }
            )
    return expected


class Partition:
    """A partition as the lead's hot path drives the cohort state: events in arrival order,
    ``forget`` at the watermark, and each session taken once the watermark has passed the end
    of the day it starts on (from the events the partition has seen by then)."""

    def __init__(self) -> None:
        self.users: dict[str, UserCohort] = {}
        self.seen: dict[str, list[Event]] = defaultdict(list)
        self.partial = CohortPartial()
        self.next_day_end: int | None = None

    def add(self, event: Event) -> None:
        take(self.users, self.partial, event.user, event.ts, event.revenue_cents, SHORT)
        self.seen[event.user].append(event)
        if self.next_day_end is None or event.ts // DAY_MS * DAY_MS < self.next_day_end - DAY_MS:
            self.next_day_end = (event.ts // DAY_MS + 1) * DAY_MS

    def advance(self, watermark: int) -> None:
        for name, user in self.users.items():
            user.forget(watermark)
            self.users[name] = UserCohort.decode(orjson.loads(orjson.dumps(user.encode())))
        while self.next_day_end is not None and self.next_day_end <= watermark:
            end = self.next_day_end
            for name, events in self.seen.items():
                for session in sessions_of(e for e in events if e.ts < end):
                    if session[0].ts // DAY_MS == end // DAY_MS - 1:
                        delta = self.users[name].session(SHORT, session[0].ts, cut_score(session))
                        if delta is not None:
                            self.partial.apply(delta)
            self.next_day_end = end + DAY_MS


EVENT = st.tuples(
    st.integers(0, 2),  # user: few, so each has many events
    st.integers(0, 2),  # day
    st.sampled_from([-50, -30, -10, -1, 0, 1, 10, 30, 50]),  # minutes from that day's midnight
    st.sampled_from(["", "s"]),  # session id
    st.sampled_from(["page_view", "click", "purchase"]),
    st.sampled_from(["", "/a", "/b"]),
    st.sampled_from([0, 1_500, 40_000]),  # duration ms
    st.sampled_from([0, 0, 1_999]),  # revenue cents
    st.sampled_from([0, 20, 40, 59, 60]).map(lambda k: 60_000 * k),  # arrival delay (minutes)
)


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(EVENT, min_size=2, max_size=40), partitions=st.integers(1, 3))
def test_partitions_and_disorder_within_grace_give_the_rows_of_sorted_input(
    raw: list[tuple[Any, ...]], partitions: int
) -> None:
    events = [
        Event(f"u{u}", T0 + day * DAY_MS + minute * 60_000, f"{i:03d}", *rest)
        for i, (u, day, minute, *rest) in enumerate(raw)
    ]
    final = T0 + 10 * DAY_MS

    def run(shards: list[list[Event]]) -> list[dict[str, Any]]:
        partials = []
        for shard in shards:
            partition = Partition()
            marks = watermarks(shard, lambda e: e.ts, GRACE)
            for event, watermark in zip(shard, marks, strict=True):
                if watermark is not None:
                    partition.advance(watermark)
                partition.add(event)
            partition.advance(final)
            stored = orjson.loads(orjson.dumps(partition.partial.encode()))
            partials.append(CohortPartial.decode(stored))
        return rows(SHORT, combine(partials), final)

    in_order = run([sorted(events, key=lambda e: (e.ts, e.event_id))])
    shards = [
        arrival_order(
            [e for e in events if int(e.user[1:]) % partitions == shard],
            lambda e: e.ts,
            lambda e: e.jitter,
            GRACE,
        )
        for shard in range(partitions)
    ]
    shuffled = run(shards)
    assert shuffled == in_order
    expected = brute_force(events, SHORT.max_day_offset)
    picked = [{key: row[key] for key in expected[0]} for row in shuffled]
    assert len(picked) == len(expected)
    for got, want in zip(picked, expected, strict=True):
        engagement = pytest.approx(want["average_engagement_score"])
        assert got == want | {"average_engagement_score": engagement}
