"""SPEC 10 custom KPIs: filters, figures and the YAML list's errors (analytics.custom_kpis)."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.custom_kpis import (
    COUNTER_PREFIX,
    EventFilter,
    is_counter,
    parse_custom_kpis,
)
from analytics.partials import KPI_COUNTERS, PartialLimits, PartialRejected, check_message

KPIS = parse_custom_kpis(
    [
        {"name": "carts", "count": {"action": "add_to_cart"}},
        {"name": "docs", "count": {"page_prefix": "/docs"}},
        {"name": "paid_usd", "count": {"action": "purchase", "metadata": {"currency": "USD"}}},
        {"name": "all_events", "count": None},
        {"name": "cart_rate", "ratio_percent": {"numerator": "carts", "denominator": "docs"}},
    ]
)


def event(action: str = "page_view", page: str = "/", **metadata: Any) -> dict[str, Any]:
    return {"action": action, "page": page, "metadata": metadata}


def test_an_event_adds_one_to_each_count_whose_filter_holds() -> None:
    assert KPIS.matching(event("add_to_cart", "/docs/a")) == [
        "custom.carts",
        "custom.docs",
        "custom.all_events",
    ]
    assert KPIS.matching(event("purchase", "/checkout", currency="USD", amount=3)) == [
        "custom.paid_usd",
        "custom.all_events",
    ]
    assert KPIS.matching(event("purchase", "/checkout", currency="EUR")) == ["custom.all_events"]
    assert KPIS.matching({"action": "purchase", "page": None, "metadata": {}}) == [
        "custom.all_events"
    ]


@pytest.mark.parametrize(
    ("wanted", "found", "holds"),
    [
        ("1", "1", True),
        ("1", 1, False),  # a string is not a number
        (1, 1.0, True),  # JSON numbers compare by value
        (1, True, False),  # a boolean is not a number
        (True, 1, False),
        (True, True, True),
        (None, None, True),
        (None, "absent", False),
    ],
)
def test_metadata_values_compare_as_json_values(wanted: Any, found: Any, holds: bool) -> None:
    only = EventFilter(metadata=(("k", wanted),))
    metadata = {} if found == "absent" else {"k": found}
    assert only.matches({"action": "x", "page": "/", "metadata": metadata}) is holds


def test_a_page_prefix_is_a_prefix_of_the_page() -> None:
    docs = EventFilter(page_prefix="/docs")
    assert docs.matches(event(page="/docs")) and docs.matches(event(page="/docs/x"))
    assert not docs.matches(event(page="/doc")) and not docs.matches(event(page="/x/docs"))


def test_figures_are_the_counts_and_the_ratios_with_0_for_no_denominator() -> None:
    sums = {"custom.carts": 3, "custom.docs": 4, "events": 10}
    assert KPIS.figures(sums) == {
        "carts": 3,
        "docs": 4,
        "paid_usd": 0,
        "all_events": 0,
        "cart_rate": 75.0,
    }
    assert KPIS.figures({"custom.carts": 3})["cart_rate"] == 0.0
    assert parse_custom_kpis(None).figures(sums) == {}


def test_custom_counters_pass_the_combiner_check_and_bad_ones_are_named() -> None:
    limits = PartialLimits(partitions=1, window_ms=60_000)
    counters = dict.fromkeys(KPI_COUNTERS, 0)
    base: dict[str, Any] = {
        "type": "partial",
        "partition": 0,
        "window_start": 0,
        "final": True,
        "kpi": counters,
    }
    good = dict(base, kpi=counters | {"custom.carts": 2, "other": 5})
    checked = check_message(good, limits)
    assert checked["kpi"]["custom.carts"] == 2 and "other" not in checked["kpi"]
    with pytest.raises(PartialRejected, match=r"kpi\.custom\.carts"):
        check_message(dict(base, kpi=counters | {"custom.carts": -1}), limits)
    assert is_counter(COUNTER_PREFIX + "carts") and not is_counter("custom.Bad Name")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("nope", r"custom_kpis: must be a list"),
        ([{"name": "a"}], r"custom_kpis\[0\]: needs exactly one of count and ratio_percent"),
        ([{"name": "A", "count": {}}], r"custom_kpis\[0\]\.name: required, 1-63"),
        ([{"name": "a", "count": {}, "extra": 1}], r"custom_kpis\[0\]\.extra: unknown key"),
        (
            [{"name": "a", "count": {}}, {"name": "a", "count": {}}],
            r"custom_kpis\[1\]\.name: 'a' names another custom KPI",
        ),
        ([{"name": "a", "count": {"action": "Buy"}}], r"custom_kpis\[0\]\.count\.action"),
        ([{"name": "a", "count": {"page": "/"}}], r"custom_kpis\[0\]\.count\.page: unknown"),
        ([{"name": "a", "count": {"page_prefix": ""}}], r"count\.page_prefix: must be"),
        ([{"name": "a", "count": {"metadata": {"k": [1]}}}], r"count\.metadata\.k: must be"),
        (
            [
                {"name": "a", "count": {}},
                {"name": "r", "ratio_percent": {"numerator": "a", "denominator": "b"}},
            ],
            r"custom_kpis\[1\]\.ratio_percent\.denominator: 'b' is not a count KPI",
        ),
        (
            [{"name": "r", "ratio_percent": {"numerator": "r", "denominator": "r"}}],
            r"ratio_percent\.numerator: 'r' is not a count KPI \(counts: none\)",
        ),
        ([{"name": "r", "ratio_percent": {"numerator": "a"}}], r"denominator: required"),
    ],
)
def test_configuration_errors_name_the_entry_and_field(entries: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_custom_kpis(entries)
