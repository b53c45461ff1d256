"""The alert rules as a Prometheus alerting-rules file (``faust -A app alert-rules``), for
teams that alert in Prometheus rather than on ``kpi-alerts``.

Each rule watches ``<namespace>_kpi_final_value{metric="..."}`` (app/metrics.py), which the
evaluating worker sets to the newest final window's figures. The gauge holds a window's value
until the next final window replaces it, about one ``kpi_window`` later, so ``for``
consecutive windows meeting the condition keep the expression true for ``for - 1`` windows:
that is the rule's ``for:``. Prometheus sees the gauge only when it scrapes, and a window
without events publishes no record (the gauge keeps the last window's value), so these alerts
are close to, not the same as, the exact transitions on ``kpi-alerts`` (docs/contract-choices.md,
"Alerts").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import yaml

from analytics.alerts import AlertRule

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_]")


def alert_name(rule: AlertRule) -> str:
    """A Prometheus alert name (a metric name) from the rule's: other characters become _."""
    name = _NOT_IN_NAME.sub("_", rule.name)
    return name if re.match(r"[A-Za-z_]", name) else f"kpi_{name}"


def duration_text(delta: timedelta) -> str:
    """Prometheus duration text in whole seconds (kpi_window is whole seconds)."""
    return f"{int(delta.total_seconds())}s"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def prometheus_rule(rule: AlertRule, namespace: str, kpi_window: timedelta) -> dict[str, Any]:
    series = f'{namespace}_kpi_final_value{{metric="{rule.metric}"}}'
    entry: dict[str, Any] = {
        "alert": alert_name(rule),
        # max: only the evaluating worker has the series; by metric: no instance label
        "expr": f"max by (metric) ({series}) {rule.comparator} {_number(rule.threshold)}",
    }
    if rule.windows > 1:
        entry["for"] = duration_text(kpi_window * (rule.windows - 1))
    entry["labels"] = {"rule": rule.name}
    entry["annotations"] = {
        "summary": (
            f"{rule.metric} {rule.comparator} {_number(rule.threshold)} "
            f"for {rule.windows} final KPI window(s) of {duration_text(kpi_window)}"
        ),
        "description": f"{rule.metric} of the newest final KPI window is {{{{ $value }}}}",
    }
    return entry


def prometheus_rules(
    rules: Iterable[AlertRule], namespace: str, kpi_window: timedelta, group: str
) -> dict[str, Any]:
    """The rules file: one group named ``group`` holding every rule."""
    return {
        "groups": [
            {
                "name": group,
                "rules": [prometheus_rule(rule, namespace, kpi_window) for rule in rules],
            }
        ]
    }


def rules_yaml(
    rules: Iterable[AlertRule], namespace: str, kpi_window: timedelta, group: str
) -> str:
    document = prometheus_rules(rules, namespace, kpi_window, group)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)
