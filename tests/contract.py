"""Compare what the pipeline published with the batch reference (tests/reference/batch.py).

Each function returns a list of human-readable mismatches; an empty list means equal. Counts
and cents must match exactly; ratios to 1e-6 (money ratios to the displayed cent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from analytics.timeutil import format_ts, parse_ts
from app.settings import DEFAULT_CONFIG_FILE

EXACT_KPIS = (
    "total_events",
    "total_page_views",
    "total_conversions",
    "purchases",
    "active_users",
    "new_users",
    "total_users",
    "total_sessions",
)
RATIO_KPIS = (
    "average_session_duration_seconds",
    "bounce_rate_percent",
    "average_engagement_score",
    "conversion_rate_percent",
    "conversions_per_session",
)
MONEY_KPIS = ("average_order_value", "revenue_per_user")


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance


def compare_kpis(
    published: Mapping[int, Mapping[str, Any]], expected: Mapping[int, Mapping[str, Any]]
) -> list[str]:
    """published: final live-kpis records by window start (ms); expected: reference windows."""
    problems: list[str] = []
    for start in sorted(set(published) | set(expected)):
        got, want = published.get(start), expected.get(start)
        where = format_ts(start)
        if got is None or want is None:
            problems.append(f"{where}: published={got is not None} expected={want is not None}")
            continue
        for name in EXACT_KPIS:
            if got[name] != want[name]:
                problems.append(f"{where} {name}: {got[name]} != {want[name]}")
        if got["total_revenue_cents"] != want["total_revenue_cents"]:
            problems.append(
                f"{where} revenue: {got['total_revenue_cents']} != {want['total_revenue_cents']}"
            )
        for name in RATIO_KPIS:
            if not _close(got[name], want[name], 1e-6):
                problems.append(f"{where} {name}: {got[name]} != {want[name]}")
        for name in MONEY_KPIS:
            if not _close(got[name], want[name], 0.005 + 1e-9):
                problems.append(f"{where} {name}: {got[name]} != {want[name]}")
        if got.get("custom", {}) != want.get("custom", {}):
            problems.append(f"{where} custom: {got.get('custom')} != {want.get('custom')}")
        for metric, want_trend in want["trends"].items():
            got_trend = got["trends"][metric]
            if got_trend["trend"] != want_trend["trend"] or not _close(
                got_trend["change_percent"], want_trend["change_percent"], 1e-6
            ):
                problems.append(f"{where} trend {metric}: {got_trend} != {want_trend}")
    return problems


SESSION_FIELDS = (
    "total_events",
    "unique_pages",
    "total_duration_ms",
    "conversions",
    "revenue_cents",
    "is_bounce",
    "device_type",
    "country",
    "actions",
    "pages",
)


def one_copy_each(
    values: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> list[dict[str, Any]]:
    """One copy per key. A re-delivered batch may publish a record again (an overwrite by
    key); every copy must then be identical, or a consumer would see the figure change."""
    first: dict[Any, dict[str, Any]] = {}
    for value in values:
        known = first.setdefault(key(value), value)
        assert known == value, f"two different records for {key(value)}: {known} != {value}"
    return list(first.values())


def session_keys(records: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, int]]:
    """(user_id, session_id, start in ms) of each session-metrics record."""
    return {(r["user_id"], r["session_id"], parse_ts(r["window_start"])) for r in records}


def compare_sessions(
    published: Iterable[Mapping[str, Any]], expected: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Sessions keyed by (user, session_id, start); each published exactly once."""
    problems: list[str] = []
    got: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for record in published:
        key = (record["user_id"], record["session_id"], parse_ts(record["window_start"]))
        if key in got:
            problems.append(f"session {key} published twice")
        got[key] = record
    want = {(s["user_id"], s["session_id"], s["window_start_ms"]): s for s in expected}
    for key in sorted(set(got) | set(want)):
        if key not in got or key not in want:
            problems.append(f"session {key}: published={key in got} expected={key in want}")
            continue
        g, w = got[key], want[key]
        if parse_ts(g["window_end"]) != w["window_end_ms"]:
            problems.append(f"session {key} window_end: {g['window_end']} != {w['window_end_ms']}")
        for name in SESSION_FIELDS:
            if g[name] != w[name]:
                problems.append(f"session {key} {name}: {g[name]} != {w[name]}")
        if not _close(g["engagement_score"], w["engagement_score"], 1e-9):
            problems.append(
                f"session {key} engagement: {g['engagement_score']} != {w['engagement_score']}"
            )
    return problems


def compare_pages(
    published: Iterable[Mapping[str, Any]], expected: Mapping[tuple[int, str], Mapping[str, Any]]
) -> list[str]:
    problems: list[str] = []
    got = {(parse_ts(r["window_start"]), r["page"]): r for r in published}
    for key in sorted(set(got) | set(expected)):
        if key not in got or key not in expected:
            problems.append(f"page {key}: published={key in got} expected={key in expected}")
            continue
        for name in ("views", "unique_visitors", "total_time_on_page_ms"):
            if got[key][name] != expected[key][name]:
                problems.append(f"page {key} {name}: {got[key][name]} != {expected[key][name]}")
    return problems


def compare_dimensions(
    published: Iterable[Mapping[str, Any]],
    expected: Mapping[tuple[int, str, str], Mapping[str, Any]],
) -> list[str]:
    problems: list[str] = []
    got = {(parse_ts(r["window_start"]), r["dimension"], r["value"]): r for r in published}
    for key in sorted(set(got) | set(expected)):
        if key not in got or key not in expected:
            problems.append(f"traffic {key}: published={key in got} expected={key in expected}")
            continue
        for name, ref_name in (
            ("events", "events"),
            ("users", "users"),
            ("page_views", "page_views"),
            ("revenue_cents", "revenue_cents"),
        ):
            if got[key][name] != expected[key][ref_name]:
                problems.append(
                    f"traffic {key} {name}: {got[key][name]} != {expected[key][ref_name]}"
                )
    return problems


def shipped_custom_kpis() -> list[dict[str, Any]]:
    """The shipped YAML file's ``custom_kpis`` list, as the reference takes it (SPEC 10): the
    KPI records of a worker on the shipped settings carry these under ``custom``."""
    loaded = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    kpis: list[dict[str, Any]] = loaded.get("custom_kpis") or []
    return kpis


def funnel_config(specs: Iterable[Any]) -> list[dict[str, Any]]:
    """analytics.funnels.FunnelSpec values as the reference takes funnels (plain dicts)."""
    return [
        {
            "name": spec.name,
            "window_ms": spec.window_ms,
            "stages": [{"action": s.action, "page_prefix": s.page_prefix} for s in spec.stages],
        }
        for spec in specs
    ]


def compare_funnels(
    published: Mapping[tuple[str, str], Mapping[str, Any]],
    expected: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[str]:
    """Final funnel-stats rows by (funnel, day) against the reference's (SPEC 7)."""
    problems = []
    for key in sorted(set(published) | set(expected)):
        ours, theirs = published.get(key), expected.get(key)
        if ours is None or theirs is None:
            problems.append(f"{key}: published {ours is not None}, expected {theirs is not None}")
            continue
        for k, (mine, ref) in enumerate(zip(ours["stages"], theirs["stages"], strict=True)):
            for name in ("reached", "median_seconds"):
                if mine[name] != ref[name]:
                    problems.append(f"{key} stage {k} {name}: {mine[name]} != {ref[name]}")
            a, b = mine["drop_off_percent"], ref["drop_off_percent"]
            if (a is None) != (b is None) or (a is not None and not _close(a, b, 1e-9)):
                problems.append(f"{key} stage {k} drop_off_percent: {a} != {b}")
    return problems


def compare_experiments(
    published: Mapping[tuple[str, str], Mapping[str, Any]],
    expected: Mapping[str, Mapping[str, Any]],
    spec: Any,
) -> list[str]:
    """The latest experiment-stats row of each (experiment, variant) against the reference
    (SPEC 9). ``significant`` is worked out from the reference's p-value with ``spec``'s
    threshold and minimum of users (the reference fixes SPEC's 100)."""
    problems = []
    want = {(e, v) for e, row in expected.items() for v in row["variants"]}
    if set(published) != want:
        problems.append(f"variants published {sorted(published)}, expected {sorted(want)}")
    for (experiment, variant), row in sorted(published.items()):
        if (experiment, variant) not in want:
            continue
        ref = expected[experiment]["variants"][variant]
        where = f"{experiment}/{variant}"
        if row["variant_conflicts"] != expected[experiment]["variant_conflicts"]:
            problems.append(f"{where} variant_conflicts: {row['variant_conflicts']}")
        for name in ("users", "converted_users", "revenue_cents"):
            if row[name] != ref[name]:
                problems.append(f"{where} {name}: {row[name]} != {ref[name]}")
        for name in ("conversion_rate_percent", "p_value", "probability_to_beat_control"):
            a, b = row[name], ref[name]
            if (a is None) != (b is None) or (a is not None and not _close(a, float(b), 1e-9)):
                problems.append(f"{where} {name}: {a} != {b}")
        control = expected[experiment]["variants"].get(spec.control_variant)
        significant = (
            ref["p_value"] is not None
            and control is not None
            and ref["p_value"] < spec.alpha
            and min(ref["users"], control["users"]) >= spec.min_users
        )
        if row["significant"] is not significant:
            problems.append(f"{where} significant: {row['significant']}")
    return problems


def compare_cohorts(
    published: Mapping[tuple[str, int], Mapping[str, Any]],
    expected: Mapping[tuple[str, int], Mapping[str, Any]],
) -> list[str]:
    """Final cohort-stats rows by (cohort, day offset) against the reference's (SPEC 8)."""
    problems = []
    if set(published) != set(expected):
        problems.append(
            f"rows published {sorted(set(published) - set(expected))[:5]} not expected, "
            f"expected {sorted(set(expected) - set(published))[:5]} not published"
        )
    for key in sorted(set(published) & set(expected)):
        row, ref = published[key], expected[key]
        for name in ("cohort_size", "retained_users", "cumulative_revenue_cents"):
            if row[name] != ref[name]:
                problems.append(f"{key} {name}: {row[name]} != {ref[name]}")
        for name in ("retention_rate_percent", "average_engagement_score"):
            if not _close(row[name], ref[name], 1e-9):
                problems.append(f"{key} {name}: {row[name]} != {ref[name]}")
    return problems
