"""Funnels (SPEC 7, analytics/funnels.py): the edge cases SPEC names against hand-computed
rows, and a property: users split over partitions, each fed in an order shuffled within
grace, combined, give the rows of one partition fed in ts order and of a brute-force
computation written here from SPEC 7's text."""

from __future__ import annotations

import statistics
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from analytics.funnels import (
    DayPartial,
    FunnelChange,
    FunnelPartials,
    FunnelSet,
    FunnelSpec,
    Stage,
    UserFunnels,
    combine,
    median_seconds,
    parse_funnels,
    range_row,
    rows,
)
from analytics.timeutil import DAY_MS
from app.settings import DEFAULT_CONFIG_FILE, parse_duration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
H = 3_600_000
M = 60_000
END = 10**15  # a watermark past every day: all rows final


def funnel(*stages: Any, window: str = "24h", name: str = "f") -> FunnelSpec:
    return parse_funnels(
        [{"name": name, "stages": list(stages), "window": window}], parse_duration
    )[0]


@dataclass(frozen=True)
class Event:
    user: str
    ts: int
    event_id: str
    action: str
    page: str = ""


def feed(
    specs: Sequence[FunnelSpec], events: Sequence[Event], watermark: int = END
) -> list[dict[str, Any]]:
    """One partition taking ``events`` in the order given."""
    funnels = FunnelSet(specs)
    users: dict[str, UserFunnels] = {}
    partial = FunnelPartials()
    for e in events:
        user = users.setdefault(e.user, UserFunnels(funnels))
        partial.apply(user.add(e.ts, e.event_id, e.action, e.page))
    return rows(specs, partial, watermark)


def figures(row: dict[str, Any]) -> list[tuple[int, float | None, float | None]]:
    return [(s["reached"], s["drop_off_percent"], s["median_seconds"]) for s in row["stages"]]


#: the shipped example funnel (configs/analytics-dashboard.yaml)
CHECKOUT = parse_funnels(
    yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())["funnels"], parse_duration
)[0]


def typical_user(funnels: FunnelSet | None = None, n: int = 0) -> UserFunnels:
    """A user who walked the shipped ``checkout`` funnel once, with UUID event ids (``n``
    makes them differ between users): the bytes per user in analytics/funnels.py."""
    user = UserFunnels(funnels or FunnelSet([CHECKOUT]))
    steps = [("page_view", "/products/1017"), ("add_to_cart", "/products/1017")]
    steps += [("checkout", "/checkout"), ("purchase", "/checkout")]
    for i, (action, page) in enumerate(steps):
        event_id = str(uuid.UUID(int=n << 8 | i, version=4))
        user.add(T0 + 9 * H + i * 47_000, event_id, action, page)
    return user


def memory_per_user(users: int = 1_000) -> float:
    """Bytes of Python memory one decoded typical user holds (tracemalloc over ``users``)."""
    funnels = FunnelSet([CHECKOUT])
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [typical_user(funnels, n) for n in range(users)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(kept)


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"name": "f", "stages": ["a"]}, "funnels[0].stages: required, a list of 2 to 10"),
        ({"name": "f", "stages": ["a"] * 11}, "funnels[0].stages: required, a list of 2 to 10"),
        ({"name": "F!", "stages": ["a", "b"]}, "funnels[0].name: required, 1-63 of a-z"),
        ({"stages": ["a", "b"]}, "funnels[0].name: required"),
        ({"name": "f", "stages": ["a", "Add"]}, "funnels[0].stages[1]: action must match"),
        ({"name": "f", "stages": ["a", "b:"]}, "funnels[0].stages[1]: page prefix must be 1"),
        ({"name": "f", "stages": ["a", 7]}, "funnels[0].stages[1]: a stage is 'action'"),
        ({"name": "f", "stages": ["a", "video:play"]}, "funnels[0].stages[1]: 'video:play' could"),
        (
            {"name": "f", "stages": ["a", {"page_prefix": "/"}]},
            "funnels[0].stages[1].action: required",
        ),
        (
            {"name": "f", "stages": ["a", {"action": "b", "page": "/"}]},
            "funnels[0].stages[1].page: unknown",
        ),
        ({"name": "f", "stages": ["a", "b"], "window": "0s"}, "funnels[0].window: whole milli"),
        ({"name": "f", "stages": ["a", "b"], "window": "31d"}, "funnels[0].window: whole milli"),
        ({"name": "f", "stages": ["a", "b"], "window": "1.5ms"}, "funnels[0].window: whole"),
        ({"name": "f", "stages": ["a", "b"], "window": "soon"}, "funnels[0].window: 'soon' is not"),
        ({"name": "f", "stages": ["a", "b"], "steps": 2}, "funnels[0].steps: unknown key"),
    ],
)
def test_a_bad_funnel_is_refused_naming_the_field(item: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_funnels([item], parse_duration)
    assert str(raised.value).startswith(problem)


def test_funnel_names_are_unique() -> None:
    twice = [{"name": "f", "stages": ["a", "b"]}, {"name": "f", "stages": ["c", "d"]}]
    with pytest.raises(ValueError, match=r"^funnels\[1\]\.name: 'f' names another funnel"):
        parse_funnels(twice, parse_duration)


def test_stage_strings_split_at_the_first_colon_and_mappings_say_it_outright() -> None:
    spec = funnel(
        "page_view:/products",
        "page_view:https://shop.example/a:b",
        {"action": "video:play"},
        {"action": "video:play", "page_prefix": "/watch"},
        "add_to_cart",
    )
    assert spec.stages == (
        Stage("page_view", "/products"),
        Stage("page_view", "https://shop.example/a:b"),
        Stage("video:play"),
        Stage("video:play", "/watch"),
        Stage("add_to_cart"),
    )
    assert spec.window_ms == 24 * H
    assert [s.text for s in spec.stages][2:] == ["video:play", "video:play:/watch", "add_to_cart"]
    assert funnel("a", "b", window="30m").window_ms == 30 * M


# --------------------------------------------------------------------------- SPEC 7 edge cases


def test_ties_at_one_ts_follow_event_id_order() -> None:
    spec = funnel("a", "b")
    before = feed([spec], [Event("u", T0, "2", "a"), Event("u", T0, "1", "b")])
    after = feed([spec], [Event("u", T0, "2", "a"), Event("u", T0, "3", "b")])
    assert figures(before[0]) == [(1, 100.0, None), (0, None, None)]
    assert figures(after[0]) == [(1, 0.0, 0.0), (1, None, None)]


def test_one_event_matching_two_stages_fills_one() -> None:
    spec = funnel("page_view:/p", "page_view:/products")
    one = feed([spec], [Event("u", T0, "1", "page_view", "/products/9")])
    two = feed([spec], [Event("u", T0 + i, str(i), "page_view", "/products/9") for i in (1, 2)])
    assert [s["reached"] for s in one[0]["stages"]] == [1, 0]
    assert [s["reached"] for s in two[0]["stages"]] == [1, 1]
    assert two[0]["stages"][0]["median_seconds"] == 0.001


def test_stages_at_the_same_ts_are_reached_in_event_id_order() -> None:
    spec = funnel("a", "b", "c")
    events = [Event("u", T0, "3", "c"), Event("u", T0, "1", "a"), Event("u", T0, "2", "b")]
    assert figures(feed([spec], events)[0]) == [(1, 0.0, 0.0), (1, 0.0, 0.0), (1, None, None)]


@pytest.mark.parametrize(("late_by", "reached"), [(0, [1, 1]), (1, [1, 0])])
def test_the_window_includes_its_last_millisecond_and_not_the_next(
    late_by: int, reached: list[int]
) -> None:
    spec = funnel("a", "b", window="30m")
    events = [Event("u", T0, "1", "a"), Event("u", T0 + 30 * M + late_by, "2", "b")]
    assert [s["reached"] for s in feed([spec], events)[0]["stages"]] == reached


def test_an_attempt_at_the_window_edge_survives_an_earlier_one_running_out() -> None:
    spec = funnel("a", "b", window="30m")
    events = [
        Event("u", T0, "1", "a"),  # waits until 00:30, in vain
        Event("u", T0 + 10 * M, "2", "a"),  # waits until 00:40
        Event("u", T0 + 40 * M, "3", "b"),
    ]
    assert figures(feed([spec], events)[0]) == [(1, 0.0, 1_800.0), (1, None, None)]


def test_medians_of_an_even_count_are_the_mean_of_the_middle_two() -> None:
    spec = funnel("a", "b")
    gaps = [1_000, 2_001, 9_000, 500]
    events = [Event(f"u{i}", T0, "1", "a") for i in range(4)]
    events += [Event(f"u{i}", T0 + gap, "2", "b") for i, gap in enumerate(gaps)]
    assert feed([spec], events)[0]["stages"][0]["median_seconds"] == 1.5005
    assert feed([spec], events[:3] + events[4:7])[0]["stages"][0]["median_seconds"] == 2.001
    assert median_seconds({}) is None
    assert median_seconds({4: 1, 10: 3}) == 0.01


def test_an_attempt_crossing_midnight_counts_on_the_day_of_its_first_stage() -> None:
    spec = funnel("a", "b", "c", window="1h")
    events = [
        Event("u", T0 + DAY_MS - M, "1", "a"),  # 23:59
        Event("u", T0 + DAY_MS + M, "2", "b"),  # 00:01 next day
        Event("u", T0 + DAY_MS + 2 * M, "3", "a"),  # an attempt of the next day
    ]
    found = feed([spec], events)
    assert [(row["day"], [s["reached"] for s in row["stages"]]) for row in found] == [
        ("2026-01-01", [1, 1, 0]),
        ("2026-01-02", [1, 0, 0]),
    ]
    assert found[0]["stages"][0]["median_seconds"] == 120.0


def test_a_later_attempt_reaching_more_stages_is_the_days_best() -> None:
    spec = funnel("a", "b", window="1h")
    events = [
        Event("u", T0 + 8 * H, "1", "a"),  # its b at 10:05 is past its hour
        Event("u", T0 + 10 * H, "2", "a"),
        Event("u", T0 + 10 * H + 5 * M, "3", "b"),
    ]
    assert figures(feed([spec], events)[0]) == [(1, 0.0, 300.0), (1, None, None)]


def test_attempts_reaching_as_many_stages_leave_the_day_to_the_earliest() -> None:
    spec = funnel("a", "b", window="1h")
    events = [
        Event("u", T0 + 8 * H, "1", "a"),
        Event("u", T0 + 8 * H + 10 * M, "2", "b"),
        Event("u", T0 + 10 * H, "3", "a"),
        Event("u", T0 + 10 * H + 5 * M, "4", "b"),
    ]
    assert figures(feed([spec], events)[0])[0] == (1, 0.0, 600.0)
    # in 24 h, the 08:00 attempt reaches the 10:05 b too: a tie, which 08:00 wins
    wide = funnel("a", "b")
    assert figures(feed([wide], [events[0], *events[2:]])[0])[0] == (1, 0.0, 7_500.0)


def test_out_of_order_arrival_within_grace_gives_the_same_rows() -> None:
    spec = funnel("page_view:/products", "add_to_cart", "checkout", "purchase", window="30m")
    events = [
        Event("u", T0 + 1_000, "a", "page_view", "/products/1"),
        Event("u", T0 + 2_000, "b", "add_to_cart", "/products/1"),
        Event("u", T0 + 2_000, "c", "page_view", "/products/2"),
        Event("u", T0 + 5_000, "d", "checkout"),
        Event("u", T0 + 7_000, "e", "purchase"),
        Event("v", T0 + 3_000, "f", "page_view", "/products/1"),
        Event("v", T0 + 4_000, "g", "add_to_cart", "/products/1"),
    ]
    in_order = feed([spec], events)
    assert feed([spec], events[::-1]) == in_order  # 7 s of disorder, within a 10 s grace
    assert figures(in_order[0]) == [
        (2, 0.0, 1.0),
        (2, 50.0, 3.0),
        (1, 0.0, 2.0),
        (1, None, None),
    ]


def test_drop_off_is_zero_after_a_stage_nobody_reached() -> None:
    spec = funnel("a", "b", "c", "d")
    events = [Event(f"u{i}", T0 + i, "1", "a") for i in range(4)]
    events += [Event(f"u{i}", T0 + 100, "2", "b") for i in range(3)]
    assert [(s["reached"], s["drop_off_percent"]) for s in feed([spec], events)[0]["stages"]] == [
        (4, 25.0),
        (3, 100.0),
        (0, 0.0),
        (0, None),
    ]


def test_a_day_is_final_once_the_watermark_reaches_its_end_plus_the_window() -> None:
    spec = funnel("a", "b", window="2h")
    events = [Event("u", T0 + 3 * H, "1", "a")]
    assert feed([spec], events, T0 + DAY_MS + 2 * H - 1)[0]["is_final"] is False
    assert feed([spec], events, T0 + DAY_MS + 2 * H)[0]["is_final"] is True


def test_an_event_can_change_the_best_attempt_of_the_day_before() -> None:
    spec = funnel("a", "b")
    user = UserFunnels(FunnelSet([spec]))
    day = T0 // DAY_MS
    assert user.add(T0 + DAY_MS - H, "1", "a", "") == [
        FunnelChange("f", day, (), (T0 + DAY_MS - H,))
    ]
    user.add(T0 + DAY_MS + M, "2", "a", "")
    changes = user.add(T0 + DAY_MS + 2 * M, "3", "b", "")
    assert changes == [
        FunnelChange("f", day, (T0 + DAY_MS - H,), (T0 + DAY_MS - H, T0 + DAY_MS + 2 * M)),
        FunnelChange("f", day + 1, (T0 + DAY_MS + M,), (T0 + DAY_MS + M, T0 + DAY_MS + 2 * M)),
    ]
    assert user.add(T0 + DAY_MS + 2 * M, "3", "b", "") == []  # the same event again
    assert user.add(T0, "4", "click", "") == []  # no stage names it


def test_forget_drops_final_days_and_the_state_round_trips() -> None:
    spec = funnel("a", "b", window="1h")
    user = UserFunnels(FunnelSet([spec]))
    user.add(T0 + H, "1", "a", "")
    user.add(T0 + DAY_MS + H, "2", "a", "")
    encoded = user.encode()
    assert encoded == {"f": [T0 + H, "1", 1, DAY_MS, "2", 1]}
    again = UserFunnels.decode(FunnelSet([spec]), orjson.loads(orjson.dumps(encoded)))
    assert again.encode() == encoded
    assert again.best_attempts() == user.best_attempts()
    user.forget(T0 + DAY_MS + H - 1)  # day 1 not final yet: its end + 1 h is one ms away
    assert user.encode() == encoded
    user.forget(T0 + DAY_MS + H)
    assert user.encode() == {"f": [T0 + DAY_MS + H, "2", 1]}
    user.forget(T0 + 2 * DAY_MS + H)
    assert user.is_empty
    gone = UserFunnels.decode(FunnelSet([funnel("a", "b", name="g")]), encoded)
    assert gone.is_empty  # a funnel no longer configured is forgotten


def test_final_days_and_removed_funnels_are_taken_out_of_a_partial() -> None:
    spec = funnel("a", "b", window="1h")
    partial = FunnelPartials()
    day = T0 // DAY_MS
    partial.apply([FunnelChange("f", day, (), (T0,)), FunnelChange("f", day + 1, (), (T0,))])
    partial.apply([FunnelChange("gone", day + 1, (), (T0, T0 + 1))])
    assert partial.take_final([spec], T0 + DAY_MS + H - 1).days == {
        ("gone", day + 1): DayPartial([1, 1], [{1: 1}])
    }
    taken = partial.take_final([spec], T0 + DAY_MS + H)
    assert list(taken.days) == [("f", day)]
    assert list(partial.days) == [("f", day + 1)]


def test_a_range_sums_reached_and_takes_medians_from_the_merged_durations() -> None:
    spec = funnel("a", "b")
    events = [
        Event("u", T0, "1", "a"),
        Event("u", T0 + 1_000, "2", "b"),
        Event("u", T0 + DAY_MS, "3", "a"),
        Event("u", T0 + DAY_MS + 4_000, "4", "b"),
        Event("v", T0 + DAY_MS, "5", "a"),
        Event("v", T0 + DAY_MS + 9_000, "6", "b"),
        Event("w", T0 + 2 * DAY_MS, "7", "a"),
    ]
    partial = FunnelPartials()
    users: dict[str, UserFunnels] = {}
    for e in events:
        user = users.setdefault(e.user, UserFunnels(FunnelSet([spec])))
        partial.apply(user.add(e.ts, e.event_id, e.action, e.page))
    first, second = date(2026, 1, 1), date(2026, 1, 2)
    both = range_row(spec, partial, first, second, END)
    assert both == {
        "funnel": "f",
        "from": "2026-01-01",
        "to": "2026-01-02",
        "is_final": True,
        "stages": [
            {"stage": "a", "reached": 3, "drop_off_percent": 0.0, "median_seconds": 4.0},
            {"stage": "b", "reached": 3, "drop_off_percent": None, "median_seconds": None},
        ],
    }
    assert range_row(spec, partial, second, second, END)["stages"][0]["median_seconds"] == 6.5
    three = range_row(spec, partial, first, date(2026, 1, 3), T0 + 3 * DAY_MS + DAY_MS - 1)
    assert [s["reached"] for s in three["stages"]] == [4, 3]
    assert three["is_final"] is False
    assert FunnelPartials.decode(orjson.loads(orjson.dumps(partial.encode()))) == partial


def test_a_typical_user_costs_the_bytes_the_docstring_says() -> None:
    assert CHECKOUT.name == "checkout"
    user = typical_user()
    assert len(orjson.dumps(user.encode())) == 210
    user.add(T0 + 9 * H + 4 * 47_000, str(uuid.UUID(int=9, version=4)), "page_view", "/products/7")
    assert len(orjson.dumps(user.encode())) == 210 + 47
    assert memory_per_user() < 1_700


# --------------------------------------------------------------------------- property


def spec_matches(stage: Stage, e: Event) -> bool:
    """SPEC 7: the action equal, and the page starting with the prefix when there is one."""
    return e.action == stage.action and (
        stage.page_prefix is None or e.page.startswith(stage.page_prefix)
    )


def brute_force_rows(
    specs: Sequence[FunnelSpec], events: Sequence[Event], watermark: int
) -> list[dict[str, Any]]:
    """SPEC 7 read literally, with nothing from analytics.funnels but the specs."""
    found = []
    for spec in specs:
        best_by_day: dict[int, list[list[int]]] = {}
        for user in sorted({e.user for e in events}):
            ordered = sorted(
                (e for e in events if e.user == user), key=lambda e: (e.ts, e.event_id)
            )
            best: dict[int, list[int]] = {}
            for i, start in enumerate(ordered):
                if not spec_matches(spec.stages[0], start):
                    continue
                t1, filled, stamps = start.ts, i, [start.ts]
                for stage in spec.stages[1:]:
                    later = [
                        j
                        for j in range(filled + 1, len(ordered))
                        if spec_matches(stage, ordered[j]) and ordered[j].ts <= t1 + spec.window_ms
                    ]
                    if not later:
                        break
                    filled = later[0]
                    stamps.append(ordered[filled].ts)
                day = t1 // DAY_MS
                if day not in best or len(stamps) > len(best[day]):  # ties: the earliest t1
                    best[day] = stamps
            for day, stamps in best.items():
                best_by_day.setdefault(day, []).append(stamps)
        for day in sorted(best_by_day):
            attempts = best_by_day[day]
            reached = [sum(1 for a in attempts if len(a) > k) for k in range(len(spec.stages))]
            stages = []
            for k, stage in enumerate(spec.stages):
                last = k == len(spec.stages) - 1
                gaps = [a[k + 1] - a[k] for a in attempts if len(a) > k + 1]
                drop = (
                    100 * (1 - Fraction(reached[k + 1], reached[k]))
                    if not last and reached[k]
                    else 0
                )
                stages.append(
                    {
                        "stage": stage.text,
                        "reached": reached[k],
                        "drop_off_percent": None if last else pytest.approx(float(drop), rel=1e-12),
                        "median_seconds": statistics.median(gaps) / 1000 if gaps else None,
                    }
                )
            found.append(
                {
                    "funnel": spec.name,
                    "day": date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat(),
                    "is_final": watermark >= (day + 1) * DAY_MS + spec.window_ms,
                    "stages": stages,
                }
            )
    return found


GRACE = 20 * M
USERS = ("u1", "u2", "u3", "u4", "u5")
STEPS = [("a", ""), ("b", ""), ("c", ""), ("x", ""), ("page_view", "/p")]
STEPS += [("page_view", "/products/1"), ("page_view", "/products/2")]
#: walks through the funnels below that steps are dropped from and mixed into
PATHS = (
    (("page_view", "/products/1"), ("a", ""), ("b", ""), ("c", "")),
    (("a", ""), ("a", ""), ("b", "")),
    (("page_view", "/p"), ("page_view", "/products/2"), ("x", "")),
)
GAPS = (0, 0, 1, 1_000, 5 * M, 25 * M, 2 * H)

walks = st.tuples(
    st.sampled_from(USERS),
    st.integers(-16, 16).map(lambda k: T0 + DAY_MS + k * 10 * M),  # around a midnight
    st.sampled_from(PATHS),
    st.lists(st.booleans(), min_size=4, max_size=4),  # which steps of the path are taken
    st.lists(st.sampled_from(STEPS), max_size=2),  # steps of no path, at the end
    st.lists(st.sampled_from(GAPS), min_size=6, max_size=6),  # before each step
)


@st.composite
def journeys(draw: st.DrawFn) -> tuple[list[FunnelSpec], list[Event], list[int], list[bool]]:
    """A few users' walks through three funnels around a midnight, with gaps that tie ts
    and gaps that leave the window; event ids in a random order so ties go either way; per
    event an arrival delay within grace and whether the partition re-reads that user from
    its encoded state afterwards."""
    window = draw(st.sampled_from(["1ms", "10m", "1h", "3h", "24h"]))
    specs = [
        funnel("page_view:/products", "a", "b", "c", window=window, name="shop"),
        funnel("a", "a", "b", window=draw(st.sampled_from(["30m", "2h"])), name="repeat"),
        funnel("page_view:/p", "page_view:/products", "x", window="1h", name="pages"),
    ]
    steps: list[tuple[str, int, str, str]] = []
    for user, start, path, taken, noise, gaps in draw(st.lists(walks, max_size=8)):
        ts = start
        chosen = [step for step, keep in zip(path, taken, strict=False) if keep] + noise
        for (action, page), gap in zip(chosen, gaps, strict=False):
            ts += gap
            steps.append((user, ts, action, page))
    ids = draw(st.permutations(range(len(steps))))
    events = [Event(u, ts, str(ids[i]), a, page) for i, (u, ts, a, page) in enumerate(steps)]
    delays = draw(st.lists(st.integers(0, GRACE), min_size=len(events), max_size=len(events)))
    reloads = draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    return specs, events, delays, reloads


def partitioned_rows(
    specs: Sequence[FunnelSpec],
    events: Sequence[Event],
    delays: Sequence[int],
    reloads: Sequence[bool],
    partitions: int,
) -> tuple[list[dict[str, Any]], int]:
    """Each partition takes its users' events by arrival time (ts + delay), forgets what its
    watermark makes final after every event, and sometimes re-reads a user from its encoded
    state; the partitions' partials are then combined."""
    funnels = FunnelSet(specs)
    arrival = sorted(range(len(events)), key=lambda i: events[i].ts + delays[i])
    partials = []
    lowest_watermark = END
    for p in range(partitions):
        users: dict[str, UserFunnels] = {}
        partial = FunnelPartials()
        watermark: int | None = None
        latest = None
        for i in arrival:
            e = events[i]
            if int(e.user[1:]) % partitions != p:
                continue
            assert watermark is None or e.ts >= watermark  # within grace: never late
            user = users.setdefault(e.user, UserFunnels(funnels))
            partial.apply(user.add(e.ts, e.event_id, e.action, e.page))
            latest = e.ts if latest is None else max(latest, e.ts)
            watermark = latest - GRACE
            for other in users.values():
                other.forget(watermark)
            if reloads[i]:
                users[e.user] = UserFunnels.decode(
                    funnels, orjson.loads(orjson.dumps(user.encode()))
                )
        partials.append(FunnelPartials.decode(orjson.loads(orjson.dumps(partial.encode()))))
        if watermark is not None:
            lowest_watermark = min(lowest_watermark, watermark)
    return rows(specs, combine(partials), lowest_watermark), lowest_watermark


@given(journeys(), st.integers(1, 4))
def test_partitions_and_disorder_within_grace_give_the_rows_of_spec_7(
    journey: tuple[list[FunnelSpec], list[Event], list[int], list[bool]], partitions: int
) -> None:
    specs, events, delays, reloads = journey
    combined, watermark = partitioned_rows(specs, events, delays, reloads, partitions)
    in_order = sorted(events, key=lambda e: (e.ts, e.event_id))
    assert combined == feed(specs, in_order, watermark)
    assert combined == brute_force_rows(specs, events, watermark)


def test_encoded_json_equals_encode_through_appends_inserts_and_forgets() -> None:
    """The hot path writes ``encoded()`` (each track's JSON from an encoded prefix plus the
    events since); it must read back as ``encode()`` whatever happened to the events."""
    user = UserFunnels(FunnelSet([CHECKOUT]))
    day = 20_000 * DAY_MS

    def same() -> None:
        assert orjson.loads(orjson.dumps(user.encoded())) == user.encode()

    same()
    for i in range(5):  # appended in order
        user.add(day + i * 1_000, f"e{i}", "page_view", "/products/1")
        same()
    user.add(day + 2_500, "late", "add_to_cart", "")  # inserted before the encoded end
    same()
    user.add(day + 9_000, "e9", "add_to_cart", "")
    same()
    user.forget(day + 2 * DAY_MS)  # the day is final: its events go
    same()
    user.add(day + 3 * DAY_MS, "next", "page_view", "/products/2")
    same()
