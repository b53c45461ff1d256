"""analytics/alerts.py: SPEC 10 rule evaluation over final KPI records, without Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.alerts import (
    AlertRule,
    AlertsState,
    Transition,
    evaluate,
    firing,
    latest_transitions,
    metric_problem,
    seeded,
)
from analytics.timeutil import format_ts

W = 60_000


def final(index: int, **figures: Any) -> dict[str, Any]:
    """The final KPI record of window ``index`` (minutes from the epoch) with ``figures``."""
    return {"window_start": format_ts(index * W), "is_final": True, **figures}


def run(
    rules: list[AlertRule], records: list[dict[str, Any]], state: AlertsState | None = None
) -> list[tuple[str, str, int, Any]]:
    state = state or AlertsState(W)
    out: list[tuple[str, str, int, Any]] = []
    for record in records:
        out += [
            (t.rule, t.state, t.window_start_ms // W, t.value)
            for t in evaluate(rules, state, record)
        ]
    return out


BOUNCE = AlertRule("bounce", "bounce_rate_percent", ">", 70, 1)


def bounces(*values: float) -> list[dict[str, Any]]:
    return [final(i, bounce_rate_percent=v) for i, v in enumerate(values)]


def test_for_1_fires_at_the_first_window_meeting_and_resolves_at_the_first_not() -> None:
    assert run([BOUNCE], bounces(10, 80, 90, 60, 50)) == [
        ("bounce", "firing", 1, 80),
        ("bounce", "resolved", 3, 60),
    ]


def test_for_3_needs_three_consecutive_windows_an_interruption_starts_again() -> None:
    rule = AlertRule("bounce", "bounce_rate_percent", ">", 70, 3)
    assert run([rule], bounces(80, 80, 10, 80, 80, 80, 80, 10)) == [
        ("bounce", "firing", 5, 80),
        ("bounce", "resolved", 7, 10),
    ]


@pytest.mark.parametrize(
    ("comparator", "meets_at_equality"), [(">", False), (">=", True), ("<", False), ("<=", True)]
)
def test_threshold_equality(comparator: Any, meets_at_equality: bool) -> None:
    rule = AlertRule("r", "total_events", comparator, 100, 1)
    fired = run([rule], [final(0, total_events=100)])
    assert fired == ([("r", "firing", 0, 100)] if meets_at_equality else [])


def test_resolve_then_fire_again_needs_for_windows_anew() -> None:
    rule = AlertRule("bounce", "bounce_rate_percent", ">", 70, 2)
    assert run([rule], bounces(80, 80, 10, 80, 80)) == [
        ("bounce", "firing", 1, 80),
        ("bounce", "resolved", 2, 10),
        ("bounce", "firing", 4, 80),
    ]


def test_a_missing_or_null_figure_meets_no_condition() -> None:
    rule = AlertRule("low", "total_events", "<", 5, 1)
    records = [
        final(0, total_events=1),
        final(1, total_events=None),
        final(2),
        final(3, total_events=2),
    ]
    assert run([rule], records) == [
        ("low", "firing", 0, 1),
        ("low", "resolved", 1, None),
        ("low", "firing", 3, 2),
    ]


def test_records_replayed_twice_or_out_of_order_make_no_second_transition() -> None:
    state = AlertsState(W)
    records = bounces(10, 80, 90, 60)
    once = run([BOUNCE], records, state)
    assert run([BOUNCE], records, state) == []  # the whole sequence again
    assert run([BOUNCE], [records[1], records[3], records[2]], state) == []  # older ones
    assert once == [("bounce", "firing", 1, 80), ("bounce", "resolved", 3, 60)]


def test_a_duplicate_final_record_is_ignored() -> None:
    records = bounces(10, 80)
    assert run([BOUNCE], [records[0], records[1], records[1]]) == [("bounce", "firing", 1, 80)]


def test_windows_without_events_have_zero_figures_and_the_previous_total_users() -> None:
    low = AlertRule("quiet", "total_events", "<", 5, 3)
    users = AlertRule("users", "total_users", ">=", 10, 1)
    records = [
        final(0, total_events=50, total_users=12),
        final(10, total_events=60, total_users=13),
    ]
    # windows 1-9 had no events: total_events 0 from window 1, the third such window is 3
    assert run([low, users], records) == [
        ("users", "firing", 0, 12),
        ("quiet", "firing", 3, 0),
        ("quiet", "resolved", 10, 60),
    ]


def test_a_gap_resolves_a_firing_rule_at_its_first_empty_window() -> None:
    assert run([BOUNCE], [final(0, bounce_rate_percent=80), final(5, bounce_rate_percent=90)]) == [
        ("bounce", "firing", 0, 80),
        ("bounce", "resolved", 1, 0),
        ("bounce", "firing", 5, 90),
    ]


def test_custom_kpis_are_read_from_the_records_custom_object() -> None:
    rule = AlertRule("signups", "custom.signups", ">=", 3, 1)
    records = [
        final(0, custom={"signups": 1}),
        final(1, custom={"signups": 3}),
        final(2, custom={}),
        final(3),
    ]
    assert run([rule], records) == [("signups", "firing", 1, 3), ("signups", "resolved", 2, None)]


def test_a_restart_seeded_from_kpi_alerts_repeats_nothing_and_goes_on() -> None:
    rule = AlertRule("bounce", "bounce_rate_percent", ">", 70, 2)
    records = bounces(80, 80, 90, 10, 80, 80)
    everything = run([rule], records)
    published = [Transition("bounce", "firing", 1 * W, 80, 70, "bounce_rate_percent", ">")]
    restarted = seeded(W, latest_transitions(published), [rule])
    assert run([rule], records, restarted) == everything[1:]


def test_seeded_after_a_resolution_needs_for_windows_after_it() -> None:
    rule = AlertRule("bounce", "bounce_rate_percent", ">", 70, 2)
    published = [
        Transition("bounce", "firing", 1 * W, 80, 70, "bounce_rate_percent", ">"),
        Transition("bounce", "resolved", 3 * W, 10, 70, "bounce_rate_percent", ">"),
    ]
    restarted = seeded(W, latest_transitions(published), [rule])
    assert run([rule], bounces(80, 80, 90, 10, 80, 80), restarted) == [("bounce", "firing", 5, 80)]
    assert firing(latest_transitions(published)) == []


def test_transition_records_round_trip_and_name_their_key() -> None:
    transition = Transition("bounce", "firing", 3 * W, 80.5, 70, "bounce_rate_percent", ">")
    record = transition.record()
    assert record == {
        "rule": "bounce",
        "state": "firing",
        "window_start": "1970-01-01T00:03:00.000Z",
        "value": 80.5,
        "threshold": 70,
        "metric": "bounce_rate_percent",
        "comparator": ">",
    }
    assert Transition.of_record(record) == transition
    assert transition.idempotency_key == "bounce|firing|180000"


def test_metric_names_are_checked() -> None:
    assert metric_problem("bounce_rate_percent", None) is None
    assert "unknown metric 'bounce'" in (metric_problem("bounce", None) or "")
    assert metric_problem("custom.signups", None) is None
    assert metric_problem("custom.signups", ["signups"]) is None
    assert "no custom KPI 'signups'" in (metric_problem("custom.signups", ["other"]) or "")
    assert "names no custom KPI" in (metric_problem("custom.", None) or "")
