"""The combiner's side of SPEC 7-9 (analytics/journey_combiner.py): rules the simulation in
test_partition_combiner exercises only by chance."""

from __future__ import annotations

from typing import Any

from analytics import journey_combiner
from analytics.experiments import ExperimentsSpec
from analytics.funnels import parse_funnels
from app.settings import parse_duration

FUNNELS = parse_funnels([{"name": "f", "stages": ["a", "b"]}], parse_duration)
DAY = 20_000


def funnel_share(partition: int, reached: list[int], *, final: bool) -> dict[str, Any]:
    gaps = [[1_000, reached[1]]] if len(reached) > 1 and reached[1] else [[]] * (len(reached) - 1)
    return {
        "type": "funnel",
        "partition": partition,
        "funnel": "f",
        "day": DAY,
        "final": final,
        "partial": [reached, gaps],
    }


def test_a_replayed_live_share_does_not_replace_a_final_one() -> None:
    """After a crash a partition replays its batches and shows the day open again (smaller
    figures) before final again; the combiner knows the partition's watermark passed the day
    already, so taking the live share would publish a final row without the later users."""
    state: dict[str, Any] = {}
    touched: set[str] = set()
    assert journey_combiner.take(
        state, funnel_share(0, [5, 2], final=True), FUNNELS, lambda _: False, touched
    )
    journey_combiner.take(
        state, funnel_share(0, [3, 1], final=False), FUNNELS, lambda _: False, touched
    )
    rows = journey_combiner.publish(state, FUNNELS, lambda _: True, touched, live=False)
    assert [stage["reached"] for stage in rows[0]["stages"]] == [5, 2]
    assert rows[0]["is_final"] and state == {}


def test_a_share_of_a_day_already_published_is_ignored() -> None:
    state: dict[str, Any] = {}
    assert not journey_combiner.take(
        state, funnel_share(1, [1, 0], final=False), FUNNELS, lambda _: True, set()
    )
    assert state == {}


def test_cohort_counters_final_then_live_keep_the_final_ones() -> None:
    state: dict[str, Any] = {}
    touched: set[str] = set()
    message = {"partition": 0, "final": True, "counters": [[DAY, 0, 4, 100, 300_000, 3]]}
    journey_combiner.take_cohorts(state, message, touched)
    replay = {"partition": 0, "final": False, "counters": [[DAY, 0, 2, 50, 100_000, 1]]}
    journey_combiner.take_cohorts(state, replay, touched)
    assert state["cohorts_open"]["0"][f"{DAY}|0"] == [4, 100, 300_000, 3, 1]


def test_experiment_rows_wait_for_the_publish_interval_then_go_out() -> None:
    """At most once per interval per experiment; a change inside it is published by a later
    batch, not lost."""
    spec = ExperimentsSpec(publish_interval_ms=1_000)
    state: dict[str, Any] = {}
    share = {"partition": 0, "counters": [["x", "control", 10, 2, 0, 0]]}
    touched: set[str] = set()
    journey_combiner.take_experiments(state, share, touched)
    first = journey_combiner.publish_experiments(state, spec, touched, now_ms=5_000)
    assert [row["users"] for row in first] == [10]
    touched = set()
    share = {"partition": 0, "counters": [["x", "control", 11, 2, 0, 0]]}
    journey_combiner.take_experiments(state, share, touched)
    assert journey_combiner.publish_experiments(state, spec, touched, now_ms=5_500) == []
    later = journey_combiner.publish_experiments(state, spec, set(), now_ms=6_000)
    assert [row["users"] for row in later] == [11]


def test_every_publication_of_an_experiment_has_a_higher_version() -> None:
    """The version grows with each publication, also within one millisecond (no publish
    interval): the sink keeps the row of the highest, so a stale batch cannot overwrite a
    newer row."""
    spec = ExperimentsSpec(publish_interval_ms=0)
    state: dict[str, Any] = {}
    versions = []
    for users, now_ms in ((10, 5_000), (11, 5_000), (13, 9_000)):
        touched: set[str] = set()
        share = {"partition": 0, "counters": [["x", "control", users, 2, 0, 0]]}
        journey_combiner.take_experiments(state, share, touched)
        (row,) = journey_combiner.publish_experiments(state, spec, touched, now_ms=now_ms)
        assert row["users"] == users
        versions.append(row["version"])
    assert versions == [5_000, 5_001, 9_000]
