"""Alert rules over final KPI windows (SPEC 10): pure evaluation, no Kafka.

A rule *fires* at the final window that completes ``for`` consecutive windows meeting its
condition, and *resolves* at the first window after that which does not. The evaluation is
driven by final KPI records in window order (agents/kpi_alerts.py feeds them); each rule
remembers the last window it evaluated (``through``), so a record at or before it (a replay,
a duplicate, one out of order) changes nothing and never repeats a transition.

Gaps: SPEC 4 publishes nothing for a window without events, yet that window exists and its
figures are known: every count and ratio is 0 (division by zero gives 0) and ``total_users``
is the previous window's. Windows missing between two final records are evaluated with those
figures (docs/contract-choices.md, "Alerts"), so ``total_events < 10`` fires through a quiet
spell and ``bounce_rate_percent > 70`` resolves in it; both become known when the next final
record arrives. A figure a record lacks (or holds as null) does not meet any condition.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from analytics.timeutil import format_ts, parse_ts

#: the SPEC 4 figures of a KPI record a rule may watch; a custom KPI is ``custom.<name>``
KPI_FIGURES = (
    "total_events",
    "total_page_views",
    "total_conversions",
    "total_revenue",
    "purchases",
    "active_users",
    "new_users",
    "total_users",
    "average_order_value",
    "revenue_per_user",
    "total_sessions",
    "average_session_duration_seconds",
    "bounce_rate_percent",
    "average_engagement_score",
    "conversion_rate_percent",
    "conversions_per_session",
)
CUSTOM_PREFIX = "custom."
#: figures a window without events does not reset to 0 (SPEC 4: users seen before its end)
CARRIED_FIGURES = ("total_users",)

Comparator = Literal[">", ">=", "<", "<="]
COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
AlertState = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule; ``windows`` is the YAML's ``for``."""

    name: str
    metric: str
    comparator: Comparator
    threshold: float
    windows: int = 1

    def met(self, value: float | None) -> bool:
        return value is not None and COMPARATORS[self.comparator](value, self.threshold)


def metric_problem(metric: str, custom_kpis: Iterable[str] | None) -> str | None:
    """Why ``metric`` cannot be watched, or None. ``custom_kpis`` None: the custom KPIs are
    not known here (any ``custom.<name>`` is accepted)."""
    if metric.startswith(CUSTOM_PREFIX):
        name = metric.removeprefix(CUSTOM_PREFIX)
        if not name:
            return f"metric {metric!r} names no custom KPI (write custom.<name>)"
        known = None if custom_kpis is None else sorted(custom_kpis)
        if known is not None and name not in known:
            return f"metric {metric!r}: no custom KPI {name!r} is configured (custom_kpis: {known})"
        return None
    if metric not in KPI_FIGURES:
        return (
            f"unknown metric {metric!r}: use a KPI figure ({', '.join(KPI_FIGURES)}) "
            "or custom.<name>"
        )
    return None


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule firing or resolving at a window: one record on ``kpi-alerts``."""

    rule: str
    state: AlertState
    window_start_ms: int
    value: float | None
    threshold: float
    metric: str
    comparator: str

    @property
    def idempotency_key(self) -> str:
        """Unique per transition: the same firing found again has the same key."""
        return f"{self.rule}|{self.state}|{self.window_start_ms}"

    def record(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "state": self.state,
            "window_start": format_ts(self.window_start_ms),
            "value": self.value,
            "threshold": self.threshold,
            "metric": self.metric,
            "comparator": self.comparator,
        }

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> Transition:
        """A ``kpi-alerts`` record back (KeyError/ValueError when it is not one)."""
        state = record["state"]
        if state not in ("firing", "resolved"):
            raise ValueError(f"state {state!r} is neither firing nor resolved")
        return cls(
            str(record["rule"]),
            state,
            parse_ts(record["window_start"]),
            record.get("value"),
            float(record["threshold"]),
            str(record.get("metric", "")),
            str(record.get("comparator", "")),
        )


@dataclass(slots=True)
class RuleState:
    through: int | None = None  # the last window start evaluated (epoch ms)
    streak: int = 0  # consecutive windows meeting the condition up to ``through``, at most for
    firing: bool = False


@dataclass(slots=True)
class AlertsState:
    """Every rule's state, and the figures a window without events carries over."""

    window_ms: int
    rules: dict[str, RuleState] = field(default_factory=dict)
    carried: dict[str, Any] = field(default_factory=dict)


def seeded(
    window_ms: int, published: Mapping[str, Transition], rules: Iterable[AlertRule]
) -> AlertsState:
    """The state to evaluate from after a restart: each rule with a transition on
    ``kpi-alerts`` continues after its last one (firing, or resolved with no streak); windows
    up to it are skipped for that rule, so nothing it published is found again."""
    state = AlertsState(window_ms)
    for rule in rules:
        last = published.get(rule.name)
        if last is not None:
            firing = last.state == "firing"
            streak = rule.windows if firing else 0
            state.rules[rule.name] = RuleState(last.window_start_ms, streak, firing)
    return state


def latest_transitions(transitions: Iterable[Transition]) -> dict[str, Transition]:
    """The last transition of each rule, read in ``kpi-alerts`` order."""
    latest: dict[str, Transition] = {}
    for transition in transitions:
        latest[transition.rule] = transition
    return latest


def figure(record: Mapping[str, Any], metric: str) -> float | None:
    """A rule's metric in a KPI record: a number, or None when missing, null or not a number."""
    if metric.startswith(CUSTOM_PREFIX):
        custom = record.get("custom")
        value = custom.get(metric.removeprefix(CUSTOM_PREFIX)) if isinstance(custom, dict) else None
    else:
        value = record.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def empty_window_figure(state: AlertsState, metric: str) -> float | None:
    """A metric in a window without events: carried (total_users) or 0."""
    if metric in CARRIED_FIGURES:
        return figure(state.carried, metric)
    return 0


def evaluate(
    rules: Iterable[AlertRule], state: AlertsState, record: Mapping[str, Any]
) -> list[Transition]:
    """Fold one final KPI record into ``state`` (changed in place); the transitions it makes,
    in window order. Records must come in window order; older ones are ignored per rule."""
    start = parse_ts(record["window_start"])
    size = state.window_ms
    transitions: list[Transition] = []
    for rule in rules:
        rule_state = state.rules.setdefault(rule.name, RuleState())
        through = rule_state.through
        if through is not None and start <= through:
            continue
        if through is not None and start - through > size:
            missing = (start - through) // size - 1
            if missing:
                value = empty_window_figure(state, rule.metric)
                transitions += _run(rule, rule_state, through + size, missing, size, value)
        transitions += _run(rule, rule_state, start, 1, size, figure(record, rule.metric))
        rule_state.through = start
    state.carried = {name: record.get(name) for name in CARRIED_FIGURES}
    return transitions


def _run(
    rule: AlertRule, state: RuleState, first: int, count: int, size: int, value: float | None
) -> list[Transition]:
    """``count`` consecutive windows from ``first``, all with ``value``."""

    def at(start: int, new: AlertState) -> Transition:
        return Transition(
            rule.name, new, start, value, rule.threshold, rule.metric, rule.comparator
        )

    if not rule.met(value):
        state.streak = 0
        if state.firing:
            state.firing = False
            return [at(first, "resolved")]
        return []
    if state.firing:
        state.streak = min(rule.windows, state.streak + count)
        return []
    needed = rule.windows - state.streak
    if count < needed:
        state.streak += count
        return []
    state.streak = rule.windows
    state.firing = True
    return [at(first + (needed - 1) * size, "firing")]


def firing(published: Mapping[str, Transition]) -> list[Transition]:
    """The firing ones among the last transitions per rule, by rule name."""
    return [t for _, t in sorted(published.items()) if t.state == "firing"]
