"""app/alert_rules_export.py: the alert rules as a Prometheus rules file that promtool accepts.

promtool is Debian's (package ``prometheus``, /usr/bin/promtool); when it is missing the test
runs scripts/prometheus.sh to install it, and is skipped (a failure under CI) only if that
cannot (tests/missing_services.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import yaml

from analytics.alerts import AlertRule
from app.alert_rules_export import prometheus_rules, rules_yaml
from tests.missing_services import service_missing
from tests.worker_process import REPO_ROOT

RULES = (
    AlertRule("high-bounce-rate", "bounce_rate_percent", ">", 70, 3),
    AlertRule("signups.low", "custom.signups", "<=", 2.5, 1),
    AlertRule("1st", "total_events", ">=", 100, 2),
)
WINDOW = timedelta(seconds=60)


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if found is None:
        installed = subprocess.run(
            [str(REPO_ROOT / "scripts" / "prometheus.sh")], capture_output=True, text=True
        )
        found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
        if found is None:
            service_missing(
                "promtool", f"scripts/prometheus.sh could not install it: {installed.stderr[-500:]}"
            )
    return found


def test_each_rule_watches_the_final_kpi_gauge_for_its_windows() -> None:
    (group,) = prometheus_rules(RULES, "shop", WINDOW, "shop-kpi-alerts")["groups"]
    assert group["name"] == "shop-kpi-alerts"
    bounce, signups, first = group["rules"]
    assert bounce["alert"] == "high_bounce_rate"
    assert (
        bounce["expr"]
        == 'max by (metric) (shop_kpi_final_value{metric="bounce_rate_percent"}) > 70'
    )
    assert bounce["for"] == "120s"  # the third window's value comes two windows after the first
    assert bounce["labels"] == {"rule": "high-bounce-rate"}
    assert signups["expr"].endswith('{metric="custom.signups"}) <= 2.5')
    assert "for" not in signups  # for 1: at once
    assert first["alert"] == "kpi_1st"


def test_promtool_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(
        rules_yaml(RULES, "analytics_dashboard", WINDOW, "analytics-dashboard-kpi-alerts")
    )
    checked = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout
    assert yaml.safe_load(path.read_text())["groups"][0]["rules"][0]["for"] == "120s"


def test_the_command_prints_the_configured_rules(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    rule = {"name": "busy", "metric": "total_events", "comparator": ">=", "threshold": 20, "for": 2}
    config.write_text(yaml.safe_dump({"alerts": {"rules": [rule]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS__")}
    printed = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "alert-rules"],
        cwd=REPO_ROOT,
        env={**env, "ANALYTICS_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    (group,) = yaml.safe_load(printed.stdout)["groups"]
    assert group["rules"][0]["expr"] == (
        'max by (metric) (analytics_dashboard_kpi_final_value{metric="total_events"}) >= 20'
    )
    assert group["rules"][0]["for"] == "60s"
