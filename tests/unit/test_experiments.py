"""SPEC 9 A/B tests (analytics/experiments.py): the statistics against textbook and independent
values, the per-user state against the SPEC's edge cases, and a property: users split over
partitions, their events shuffled within the grace, combined, give the rows of one partition
fed in order and the counts of a brute force written here from the SPEC text."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.experiments import (
    Delta,
    ExperimentPartial,
    ExperimentsSpec,
    Share,
    UserExperiments,
    changed_experiments,
    combine,
    exposure_of,
    p_value,
    probability_beats,
    rows,
)
from app.settings import ConfigurationError, load_settings
from tests.grace_disorder import arrival_order, watermarks

SPEC = ExperimentsSpec()
GRACE = 10_000


@dataclass(frozen=True)
class Event:
    user: str
    ts: int
    event_id: str
    conversion: bool = False
    revenue_cents: int = 0
    exposure: tuple[str, str] | None = None


def take(users: dict[str, UserExperiments], partial: ExperimentPartial, event: Event) -> None:
    """What the partition does with an accepted event."""
    delta = users.setdefault(event.user, UserExperiments()).add(
        event.ts,
        event.event_id,
        conversion=event.conversion,
        revenue_cents=event.revenue_cents,
        exposure=event.exposure,
    )
    if delta is not None:
        partial.apply(delta)


def feed(events: Iterable[Event], partial: ExperimentPartial | None = None) -> ExperimentPartial:
    """One partition taking events in the order given (no forgetting)."""
    partial = partial if partial is not None else ExperimentPartial()
    users: dict[str, UserExperiments] = {}
    for event in events:
        take(users, partial, event)
    return partial


def by_variant(table: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["experiment"], row["variant"]): row for row in table}


# --------------------------------------------------------------------------- spec


def test_the_spec_defaults_are_the_specs_numbers() -> None:
    assert ExperimentsSpec.parse({}) == ExperimentsSpec("control", 100, 0.05, 1_000)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"control_variant": ""}, "experiments.control_variant: must be a non-empty string"),
        ({"min_users": -1}, "experiments.min_users: must be at least 0"),
        ({"min_users": True}, "experiments.min_users: must be a whole number"),
        ({"alpha": 1}, "experiments.alpha: must be a number between 0 and 1"),
        ({"alpha": "0.05"}, "experiments.alpha: must be a number between 0 and 1"),
        ({"publish_interval_ms": 0}, "experiments.publish_interval_ms: must be at least 1"),
        ({"controll": "a"}, "experiments.controll: unknown key"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        ExperimentsSpec.parse(data)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"experiment": "checkout", "variant": "B"}, ("checkout", "B")),
        ({"experiment": "checkout"}, None),
        ({"experiment": "checkout", "variant": 2}, None),
        ({"experiment": "", "variant": "B"}, None),
        ({"experiment": ["checkout"], "variant": "B"}, None),
        ({}, None),
    ],
)
def test_an_exposure_names_experiment_and_variant_as_strings(
    metadata: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    assert exposure_of(metadata) == expected


# --------------------------------------------------------------------------- p-value


def test_p_value_of_a_textbook_example() -> None:
    # 168 of 300 voters in New York against 96 of 200 in Washington: pooled 0.528,
    # z = 0.08 / sqrt(0.528 * 0.472 * (1/300 + 1/200)) = 1.755, two-tailed p = 0.0792
    assert p_value(300, 168, 200, 96) == pytest.approx(0.0792, abs=5e-5)


def test_p_value_computed_by_hand() -> None:
    # 130/1000 against 100/1000: pooled 0.115, SE = sqrt(0.115 * 0.885 * 0.002) = 0.014267,
    # z = 0.03 / 0.014267 = 2.1027; table: Phi(2.10) = 0.98214, Phi(2.11) = 0.98257, so
    # Phi(2.1027) = 0.98226 and p = 2 * (1 - 0.98226) = 0.0355
    assert p_value(1000, 130, 1000, 100) == pytest.approx(0.0355, abs=1e-4)
    z = 0.03 / math.sqrt(0.115 * 0.885 * 0.002)
    assert p_value(1000, 130, 1000, 100) == pytest.approx(2 * (1 - NormalDist().cdf(z)))
    assert p_value(1000, 100, 1000, 130) == p_value(1000, 130, 1000, 100)  # two-sided


@pytest.mark.parametrize(
    "counts",
    [(50, 0, 70, 0), (50, 50, 70, 70), (0, 0, 70, 3), (50, 4, 0, 0), (0, 0, 0, 0)],
    ids=["pooled rate 0", "pooled rate 1", "no users in the variant", "no control users", "none"],
)
def test_p_value_is_1_when_the_test_has_nothing_to_go_on(counts: tuple[int, ...]) -> None:
    assert p_value(*counts) == 1.0


def test_p_value_of_a_huge_difference_is_tiny_but_not_negative() -> None:
    value = p_value(1_000_000, 900_000, 1_000_000, 100_000)
    assert 0.0 <= value < 1e-300


# --------------------------------------------------------------------------- Beta


def _beta_cdf(x: float, a: int, b: int) -> float:
    """Regularised incomplete beta for whole parameters: P(Binomial(a + b - 1, x) >= a)."""
    n = a + b - 1
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))


def _beta_pdf(x: float, a: int, b: int) -> float:
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.exp((a - 1) * math.log(x) + (b - 1) * math.log(1 - x) - log_beta)


def _integrated(a1: int, b1: int, a2: int, b2: int, steps: int = 4_000) -> float:
    """P(X > Y) = ∫ f_X(x) F_Y(x) dx by Simpson's rule: an independent computation."""
    h = 1 / steps
    total = 0.0
    for i in range(1, steps):
        x = i * h
        total += (4 if i % 2 else 2) * _beta_pdf(x, a1, b1) * _beta_cdf(x, a2, b2)
    # the ends: f_X(0) F_Y(0) = 0 and f_X(1) F_Y(1) = f_X(1), 0 unless b1 == 1
    total += a1 if b1 == 1 else 0.0
    return total * h / 3


@pytest.mark.parametrize(
    "params",
    [(3, 8, 5, 6), (12, 4, 7, 9), (2, 30, 4, 25), (20, 20, 18, 23), (9, 2, 2, 9), (1, 5, 6, 2)],
)
def test_beta_probability_matches_numerical_integration(params: tuple[int, int, int, int]) -> None:
    assert probability_beats(*params) == pytest.approx(_integrated(*params), abs=1e-9)


def test_beta_probability_of_closed_forms() -> None:
    # X uniform: P(X > Y) = 1 - E[Y] = b / (a + b)
    assert probability_beats(1, 1, 2, 1) == pytest.approx(1 / 3, abs=1e-15)
    assert probability_beats(1, 1, 3, 7) == pytest.approx(0.7, abs=1e-15)


@pytest.mark.parametrize("params", [(1, 1), (46, 56), (501, 9_501), (400_001, 600_001)])
def test_equal_counts_give_one_half(params: tuple[int, int]) -> None:
    assert probability_beats(*params, *params) == 0.5


@pytest.mark.parametrize(
    "params", [(3, 8, 5, 6), (46, 56, 31, 71), (2, 900, 5, 400), (7_001, 3_001, 6_901, 3_101)]
)
def test_beta_probability_of_the_swapped_pair_is_the_complement(
    params: tuple[int, int, int, int],
) -> None:
    a1, b1, a2, b2 = params
    assert probability_beats(a1, b1, a2, b2) + probability_beats(a2, b2, a1, b1) == (
        pytest.approx(1.0, abs=1e-12)
    )
    # mirrored: P(X > Y) = P(1 - Y > 1 - X)
    assert probability_beats(a1, b1, a2, b2) == pytest.approx(
        probability_beats(b2, a2, b1, a1), abs=1e-12
    )


def test_beta_probability_matches_monte_carlo() -> None:
    # 45 of 100 against 30 of 100; 200,000 draws with a fixed seed: the standard error is at
    # most sqrt(0.25 / 200,000) = 0.0011, so 0.006 is more than five of them
    rng = random.Random(20260101)
    draws = 200_000
    wins = sum(rng.betavariate(46, 56) > rng.betavariate(31, 71) for _ in range(draws))
    exact = probability_beats(46, 56, 31, 71)
    assert exact == pytest.approx(wins / draws, abs=0.006)
    assert 0.98 < exact < 0.995  # a clear winner, not a coin toss


def test_beta_probability_with_a_million_users_per_variant() -> None:
    # 500,000 of 1,000,000 against 500,100 of 1,000,000: both posteriors are normal to far
    # better than 0.001 here, so the normal difference is a check of the 500,000-term sum
    conv_v, conv_c, users = 500_000, 500_100, 1_000_000
    a1, b1, a2, b2 = 1 + conv_v, 1 + users - conv_v, 1 + conv_c, 1 + users - conv_c

    def moments(a: int, b: int) -> tuple[float, float]:
        return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))

    (m1, v1), (m2, v2) = moments(a1, b1), moments(a2, b2)
    normal = NormalDist().cdf((m1 - m2) / math.sqrt(v1 + v2))
    assert probability_beats(a1, b1, a2, b2) == pytest.approx(normal, abs=1e-4)
    assert probability_beats(a1, b1, a2, b2) < 0.5


# --------------------------------------------------------------------------- per user


def test_the_first_exposure_wins_and_a_later_variant_is_a_conflict() -> None:
    events = [
        Event("u", 1_000, "a", exposure=("x", "control")),
        Event("u", 2_000, "b", exposure=("x", "B")),
        Event("u", 3_000, "c", exposure=("x", "C")),
        Event("u", 4_000, "d", conversion=True, revenue_cents=1_250),
        Event("v", 1_500, "e", exposure=("x", "B")),
    ]
    table = by_variant(rows(SPEC, feed(events)))
    assert {key: row["users"] for key, row in table.items()} == {
        ("x", "control"): 1,
        ("x", "B"): 1,
        ("x", "C"): 0,  # only ever a second exposure: shown, with no users
    }
    assert table[("x", "control")]["converted_users"] == 1
    assert table[("x", "control")]["revenue_cents"] == 1_250
    assert table[("x", "control")]["revenue"] == 12.5
    # the user saw two other variants: one conflict, in every row of the experiment
    assert {row["variant_conflicts"] for row in table.values()} == {1}


def test_a_conversion_before_the_exposure_does_not_count() -> None:
    events = [
        Event("u", 1_000, "a", conversion=True, revenue_cents=500),
        Event("u", 2_000, "b", exposure=("x", "control")),
    ]
    (row,) = rows(SPEC, feed(events))
    assert (row["users"], row["converted_users"], row["revenue_cents"]) == (1, 0, 0)
    later = feed([Event("u", 2_000, "c", conversion=True, revenue_cents=700)], ExperimentPartial())
    assert later.counters == {}  # a user never exposed contributes nothing


def test_a_conversion_at_the_exposure_time_counts() -> None:
    events = [
        Event("u", 2_000, "z", conversion=True, revenue_cents=300),
        Event("u", 2_000, "a", exposure=("x", "control")),  # same ts, earlier event_id
        Event("v", 3_000, "b", conversion=True, revenue_cents=400, exposure=("x", "control")),
    ]
    (row,) = rows(SPEC, feed(events))
    assert (row["users"], row["converted_users"], row["revenue_cents"]) == (2, 2, 700)


def test_an_exposure_arriving_late_moves_the_user_and_its_conversions() -> None:
    user = UserExperiments()
    partial = ExperimentPartial()

    def add(ts: int, event_id: str, **fields: Any) -> Delta | None:
        fields = {"conversion": False, "revenue_cents": 0, "exposure": None} | fields
        delta = user.add(ts, event_id, **fields)
        if delta is not None:
            partial.apply(delta)
        return delta

    add(100_000, "b", exposure=("x", "B"))
    add(96_000, "p", conversion=True, revenue_cents=900)  # before B's exposure: not counted
    assert by_variant(rows(SPEC, partial))[("x", "B")]["converted_users"] == 0
    add(95_000, "a", exposure=("x", "control"))  # within grace, before everything
    table = by_variant(rows(SPEC, partial))
    assert (table[("x", "control")]["users"], table[("x", "B")]["users"]) == (1, 0)
    assert table[("x", "control")]["converted_users"] == 1
    assert table[("x", "control")]["revenue_cents"] == 900
    assert table[("x", "control")]["variant_conflicts"] == 1
    # a tie in ts: the smaller event_id is first
    assert add(95_000, "0", exposure=("x", "B")) is not None
    table = by_variant(rows(SPEC, partial))
    assert (table[("x", "control")]["users"], table[("x", "B")]["users"]) == (0, 1)
    assert table[("x", "B")]["revenue_cents"] == 900


def test_significance_needs_p_below_alpha_and_enough_users_in_both() -> None:
    def partial(users_b: int, converted_b: int, users_c: int, converted_c: int) -> Any:
        events = []
        groups = (("B", users_b, converted_b), ("control", users_c, converted_c))
        for variant, users, converted in groups:
            for i in range(users):
                user = f"{variant}{i}"
                events.append(Event(user, 1_000, f"{user}e", exposure=("x", variant)))
                if i < converted:
                    events.append(Event(user, 2_000, f"{user}c", conversion=True))
        return by_variant(rows(SPEC, feed(events)))

    strong = partial(100, 40, 100, 15)
    assert strong[("x", "B")]["p_value"] < 0.001
    assert strong[("x", "B")]["significant"] is True
    assert strong[("x", "B")]["probability_to_beat_control"] > 0.99
    weak = partial(99, 40, 100, 15)  # as clear a difference, one user short
    assert weak[("x", "B")]["p_value"] < 0.001
    assert weak[("x", "B")]["significant"] is False
    assert partial(100, 40, 99, 15)[("x", "B")]["significant"] is False
    same = partial(150, 30, 150, 30)
    assert same[("x", "B")]["p_value"] == pytest.approx(1.0)
    assert same[("x", "B")]["probability_to_beat_control"] == 0.5
    assert same[("x", "B")]["significant"] is False
    control = strong[("x", "control")]
    assert (control["p_value"], control["probability_to_beat_control"]) == (None, None)
    assert control["significant"] is False


def test_an_experiment_without_control_shows_no_comparison() -> None:
    events = [Event(f"u{i}", 1_000, f"e{i}", exposure=("x", "AB"[i % 2])) for i in range(4)]
    table = rows(SPEC, feed(events))
    assert [row["variant"] for row in table] == ["A", "B"]
    for row in table:
        assert (row["p_value"], row["probability_to_beat_control"]) == (None, None)
        assert row["significant"] is False
        assert row["conversion_rate_percent"] == 0.0
        assert row["revenue_per_user"] == 0.0


def test_rows_show_rates_and_money_per_user() -> None:
    events = [
        Event("u1", 1_000, "a", exposure=("x", "control")),
        Event("u1", 2_000, "b", conversion=True, revenue_cents=1_001),
        Event("u2", 1_000, "c", exposure=("x", "control")),
        Event("u3", 1_000, "d", exposure=("x", "control")),
    ]
    (row,) = rows(SPEC, feed(events))
    assert row["conversion_rate_percent"] == pytest.approx(100 / 3)
    assert (row["revenue"], row["revenue_per_user"]) == (10.01, 3.34)


def test_the_state_forgets_what_no_event_can_need_and_stays_exact() -> None:
    user = UserExperiments()
    user.add(1_000, "a", conversion=True, revenue_cents=0, exposure=None)
    user.add(2_000, "b", conversion=False, revenue_cents=300, exposure=None)
    user.forget(5_000)
    assert user.is_empty() and user.encode() == []
    user.add(6_000, "c", conversion=False, revenue_cents=0, exposure=("x", "control"))
    user.add(7_000, "d", conversion=False, revenue_cents=200, exposure=None)
    user.forget(9_000)
    assert user.encode() == [None, [], ["x", "control", 6_000, "", 0, 200]]
    delta = user.add(9_500, "e", conversion=True, revenue_cents=100, exposure=None)
    assert delta == Delta(
        (Share("x", "control", 1, 0, 200, 0),), (Share("x", "control", 1, 1, 300, 0),)
    )


def test_events_exactly_at_the_horizon_still_find_what_they_need() -> None:
    # forget(h) promises only ts >= h from now on: a conversion, a purchase and an exposure
    # at h itself are still needed by an exposure at h that ties with them
    user = UserExperiments()
    user.add(5_000, "p0", conversion=False, revenue_cents=100, exposure=None)
    user.add(10_000, "p1", conversion=True, revenue_cents=250, exposure=None)
    user.add(10_000, "x1", conversion=False, revenue_cents=0, exposure=("x", "B"))
    user.forget(10_000)
    delta = user.add(10_000, "x0", conversion=False, revenue_cents=0, exposure=("x", "control"))
    assert delta == Delta((Share("x", "B", 1, 1, 250, 0),), (Share("x", "control", 1, 1, 250, 1),))
    user.forget(10_000)
    first = user.add(10_000, "y", conversion=False, revenue_cents=0, exposure=("y", "B"))
    assert first == Delta((), (Share("y", "B", 1, 1, 250, 0),))


def test_the_state_round_trips_through_plain_data() -> None:
    user = UserExperiments()
    user.add(10_000, "a", conversion=True, revenue_cents=500, exposure=("x", "B"))
    user.add(9_000, "b", conversion=False, revenue_cents=200, exposure=("y", "control"))
    user.add(11_000, "c", conversion=False, revenue_cents=0, exposure=("x", "C"))
    data = orjson.loads(orjson.dumps(user.encode()))
    again = UserExperiments.decode(data)
    assert again.encode() == user.encode()
    one = again.add(9_500, "d", conversion=False, revenue_cents=0, exposure=("x", "A"))
    two = user.add(9_500, "d", conversion=False, revenue_cents=0, exposure=("x", "A"))
    assert one == two is not None
    partial = feed([Event("u", 1, "e", exposure=("x", "B"))])
    assert ExperimentPartial.decode(orjson.loads(orjson.dumps(partial.encode()))).counters == (
        partial.counters
    )


def test_changed_experiments_names_those_whose_counters_moved() -> None:
    before = feed(
        [Event("u", 1, "a", exposure=("x", "B")), Event("v", 1, "b", exposure=("y", "B"))]
    )
    after = feed(
        [Event("w", 2, "c", exposure=("y", "C"))], ExperimentPartial.decode(before.encode())
    )
    assert changed_experiments(before, after) == {"y"}
    assert changed_experiments(after, after) == set()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"ALPHA": "2"}, "experiments: alpha: must be a number between 0 and 1"),
        ({"MIN_USERS": "-1"}, "experiments: min_users: must be at least 0"),
        ({"PUBLISH_INTERVAL": "0s"}, "experiments.publish_interval: must be at least 1ms"),
        ({"CONTROL_VARIANT": ""}, "experiments: control_variant: must be a non-empty string"),
    ],
)
def test_the_settings_section_is_checked_by_the_spec(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    monkeypatch.setenv("ANALYTICS__EXPERIMENTS__MIN_USERS", "50")
    monkeypatch.setenv("ANALYTICS__EXPERIMENTS__PUBLISH_INTERVAL", "250ms")
    spec = load_settings().experiments.spec()
    assert spec == ExperimentsSpec("control", 50, 0.05, 250)
    for name, value in variables.items():
        monkeypatch.setenv(f"ANALYTICS__EXPERIMENTS__{name}", value)
    with pytest.raises(ConfigurationError, match=problem):
        load_settings()


# --------------------------------------------------------------------------- property


def brute_force(events: list[Event]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """SPEC 9 read literally: per experiment and variant, (users, converted_users,
    revenue_cents, the experiment's variant_conflicts)."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user].append(event)
    figures: dict[tuple[str, str], list[int]] = {}
    conflicts: dict[str, int] = defaultdict(int)
    for user_events in by_user.values():
        ordered = sorted(user_events, key=lambda e: (e.ts, e.event_id))
        for experiment in {e.exposure[0] for e in ordered if e.exposure}:
            exposures = [e for e in ordered if e.exposure and e.exposure[0] == experiment]
            for e in exposures:
                assert e.exposure is not None
                figures.setdefault(e.exposure, [0, 0, 0])
            first = exposures[0]
            assert first.exposure is not None
            counted = figures[first.exposure]
            counted[0] += 1
            counted[1] += any(e.conversion and e.ts >= first.ts for e in ordered)
            counted[2] += sum(e.revenue_cents for e in ordered if e.ts >= first.ts)
            later = [e.exposure for e in exposures[1:]]
            conflicts[experiment] += any(variant != first.exposure for variant in later)
    return {key: (*value, conflicts[key[0]]) for key, value in figures.items()}  # type: ignore[misc]


def counts(table: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return {
        (row["experiment"], row["variant"]): (
            row["users"],
            row["converted_users"],
            row["revenue_cents"],
            row["variant_conflicts"],
        )
        for row in table
    }


EVENT = st.tuples(
    st.integers(0, 2),  # user: few, so each has many events
    st.integers(0, 30).map(lambda k: 1_000 * k),  # ts: within grace of each other, ties
    st.booleans(),  # conversion
    st.sampled_from([0, 0, 199, 2_550]),  # revenue cents
    st.one_of(
        st.none(),
        st.tuples(st.sampled_from(["x", "x", "y"]), st.sampled_from(["control", "B", "C"])),
    ),
    # how late it arrives, in whole seconds like the times, so that events exactly at the
    # watermark happen too
    st.integers(0, GRACE // 1_000).map(lambda k: 1_000 * k),
)


@dataclass(frozen=True)
class Arriving:
    event: Event
    jitter: int


@settings(max_examples=1_000, deadline=None)
@given(raw=st.lists(EVENT, min_size=2, max_size=60), partitions=st.integers(1, 4))
def test_partitions_and_disorder_within_grace_give_the_rows_of_sorted_input(
    raw: list[tuple[Any, ...]], partitions: int
) -> None:
    arriving = [
        Arriving(Event(f"u{user}", ts, f"{i:03d}", conversion, cents, exposure), jitter)
        for i, (user, ts, conversion, cents, exposure, jitter) in enumerate(raw)
    ]
    events = [item.event for item in arriving]
    in_order = rows(SPEC, feed(sorted(events, key=lambda e: (e.ts, e.event_id))))

    partials = []
    for shard in range(partitions):
        mine = [item for item in arriving if int(item.event.user[1:]) % partitions == shard]
        arrival = arrival_order(mine, lambda a: a.event.ts, lambda a: a.jitter, GRACE)
        partial = ExperimentPartial()
        users: dict[str, UserExperiments] = {}
        for item, watermark in zip(
            arrival, watermarks(arrival, lambda a: a.event.ts, GRACE), strict=True
        ):
            if watermark is not None:  # as far as the partition may forget: the watermark
                for name, user in users.items():
                    user.forget(watermark)
                    users[name] = UserExperiments.decode(orjson.loads(orjson.dumps(user.encode())))
            take(users, partial, item.event)
        partials.append(ExperimentPartial.decode(orjson.loads(orjson.dumps(partial.encode()))))

    combined = rows(SPEC, combine(partials))
    assert combined == in_order
    assert counts(combined) == brute_force(events)
