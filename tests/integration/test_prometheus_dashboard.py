"""Every PromQL query of dashboards/analytics-dashboard.json, evaluated by a real Prometheus.

tests/unit/test_grafana_dashboard.py checks the panels statically (names of exported metrics
and labels); Grafana itself cannot be installed here. This test runs what Grafana would run:
Debian's Prometheus (scripts/prometheus.sh installs it; a missing binary fails the test with
the command to run, it is not skipped) scrapes a real worker every second with the job of
docker/prometheus.yml while traffic flows, and each panel query, with the dashboard variables
replaced the way Grafana replaces them, goes through Prometheus's HTTP API. Each must parse,
return series carrying the labels its legend names, and a finite value; the traffic makes
every figure a panel is about move, so several must be above zero: valid, repeated and
invalid events over both endpoints and straight on the topic, and a record the traffic-stats
sink can only dead-letter. Everything is polled against a deadline: a query is done once it
has returned what it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from analytics.timeutil import format_ts, now_ms
from tests.polling import poll
from tests.prometheus_process import Prometheus, PrometheusError, prometheus_binary, scrape_config
from tests.sink_tables import SINK_TOPICS
from tests.unit.test_grafana_dashboard import PROMETHEUS_TYPE, load_dashboard, targets
from tests.worker_process import Services, Worker, WorkerPool, free_port

pytestmark = pytest.mark.integration

PARTITIONS = 8
SCRAPE_INTERVAL_S = 1
#: Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), with
#: the data source's scrape interval (timeInterval) set to this test's
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
#: Grafana's value of a regex variable set to "All" (the dashboard's allValue)
ALL = ".*"
TICK_S = 0.25
SINK_TABLES = tuple(SINK_TOPICS)

Vector = list[dict[str, Any]]


# --------------------------------------------------------------------------- the queries


def grafana_expr(expr: str, instance: str) -> str:
    """``expr`` with the dashboard's variables replaced as Grafana replaces them."""
    text = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "1s")
    text = text.replace("${instance}", instance).replace("$instance", instance)
    leftover = re.findall(r"\$\{?\w+", text)
    assert not leftover, f"variables this test does not know: {leftover} in {expr}"
    return text


def instance_regex(instance: str) -> str:
    """A single selected instance, escaped as Grafana escapes a regex variable for PromQL."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", instance)


def values(vector: Vector, **labels: str) -> list[float]:
    return [
        float(series["value"][1])
        for series in vector
        if all(series["metric"].get(name) == value for name, value in labels.items())
    ]


def above_zero(*selections: dict[str, str]) -> Callable[[Vector], bool]:
    """Each selection of labels has a series above zero."""

    def check(vector: Vector) -> bool:
        return all(any(v > 0 for v in values(vector, **labels)) for labels in selections)

    return check


def all_healthy(vector: Vector) -> bool:
    return {s["metric"].get("table"): float(s["value"][1]) for s in vector} == dict.fromkeys(
        SINK_TABLES, 1.0
    )


#: (panel title, legend) -> what the traffic guarantees it shows, beyond returning data
EXPECTED: dict[tuple[str, str], Callable[[Vector], bool]] = {
    ("Open sessions", "open sessions"): above_zero({}),
    ("Known users", "users"): above_zero({}),
    ("Throughput", "{{instance}}"): above_zero({}),
    ("Throughput", "all workers"): above_zero({}),
    ("Event rates", "ingested {{endpoint}}"): above_zero(
        {"endpoint": "ingest"}, {"endpoint": "batch"}
    ),
    ("Event rates", "filtered {{reason}}"): above_zero(
        {"reason": "invalid"}, {"reason": "duplicate"}
    ),
    ("Event rates", "dead-lettered {{source}}"): above_zero(
        {"source": "http"}, {"source": "topic"}
    ),
    ("Sink rows written", "{{table}}"): above_zero({"table": "kpi_metrics"}),
    ("Sink errors", "{{table}} {{kind}}"): above_zero(
        {"table": "dimension_stats", "kind": "dead_letter"}
    ),
    ("Sink health", "{{table}}"): all_healthy,
    ("State table keys", "{{table}}"): above_zero({}),
}


def problem(vector: Vector, legend: str, expected: Callable[[Vector], bool] | None) -> str | None:
    """What is still missing from a query's answer (None: nothing)."""
    if not vector:
        return "no series"
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if any(label not in series["metric"] for series in vector):
            return f"a series without the label {label!r} of the legend {legend!r}"
    if not any(math.isfinite(v) for v in values(vector)):
        return "no finite value"
    if expected is not None and not expected(vector):
        return "not yet what the traffic must show"
    return None


# --------------------------------------------------------------------------- traffic


def post(url: str, body: Any) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


class Traffic:
    """Valid, repeated, late and invalid events, every ``TICK_S``, until stopped."""

    def __init__(self, worker: Worker, bootstrap: str) -> None:
        self.worker = worker
        self.bootstrap = bootstrap
        self.stop_event = threading.Event()
        self.ticks = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._loop())
        except Exception as exc:  # reported by the test through self.errors
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def _loop(self) -> None:
        prefix = self.worker.topic_prefix
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        tag = uuid.uuid4().hex[:6]
        try:
            while not self.stop_event.is_set():
                n = self.ticks
                stamp = format_ts(now_ms())
                events = [
                    {"user_id": f"u-{tag}-{(n * 5 + i) % 40}", "event_id": f"e-{tag}-{n}-{i}",
                     "action": "page_view", "page": f"/p{i}", "session_id": f"s-{i}",
                     "timestamp": stamp}
                    for i in range(5)
                ]  # fmt: skip
                late = {
                    "user_id": f"u-{tag}-late",
                    "event_id": f"late-{tag}-{n}",
                    "action": "click",
                    "timestamp": format_ts(now_ms() - 10 * 60_000),
                }
                calls = [
                    ("/ingest/batch", {"events": events}, 202),
                    ("/ingest", events[0], 202),  # a repeat: accepted, then dropped
                    ("/ingest", late, 202),
                    ("/ingest", {"action": "click"}, 400),  # no user_id
                ]
                for path, body, want in calls:
                    status = await asyncio.to_thread(post, self.worker.url + path, body)
                    if status != want:
                        self.errors.append(f"POST {path} -> {status}, want {want}")
                await producer.send_and_wait(f"{prefix}user-events", b"not json", key=b"k")
                await producer.send_and_wait(f"{prefix}traffic-stats", b"not json", key=b"k")
                self.ticks += 1
                await asyncio.to_thread(self.stop_event.wait, TICK_S)  # the traffic's pace
        finally:
            await producer.stop()


def variable_values(prometheus: Prometheus, definition: str) -> list[str]:
    """What Grafana offers for ``label_values(metric, label)``: the label's values on the
    metric's series (Prometheus's label values API with a series match)."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
    assert match, f"a variable query this test does not know: {definition}"
    metric, label = match.groups()
    offered: list[str] = prometheus.api(f"label/{label}/values", **{"match[]": [metric]})
    return offered


class QueryCheck:
    """Evaluates the panel queries until each has once returned what it must."""

    def __init__(
        self, prometheus: Prometheus, queries: list[tuple[str, str, str, str]], traffic: Traffic
    ) -> None:
        self.prometheus = prometheus
        self.queries = queries
        self.traffic = traffic
        self.done: set[tuple[str, str]] = set()
        self.missing: dict[tuple[str, str], str] = {}

    def step(self) -> dict[tuple[str, str], str]:
        """One round over the queries not done yet; returns what each still lacks."""
        for title, ref, expr, legend in self.queries:
            if (title, ref) in self.done:
                continue
            try:
                vector = self.prometheus.query(grafana_expr(expr, ALL))
            except PrometheusError as exc:
                pytest.fail(f"{title} [{ref}] is refused by Prometheus: {exc}\n{expr}")
            trouble = problem(vector, legend, EXPECTED.get((title, legend)))
            if trouble is None:
                self.done.add((title, ref))
                self.missing.pop((title, ref), None)
            else:
                self.missing[(title, ref)] = f"{trouble}: {vector}"
        assert not self.traffic.errors, self.traffic.errors
        return dict(self.missing)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def prometheus_bin() -> str:
    binary = prometheus_binary()
    if binary is None:
        pytest.fail("no prometheus binary: run scripts/prometheus.sh (or set PROMETHEUS=...)")
    return binary


@contextlib.contextmanager
def running_prometheus(binary: str, workdir: Path, targets: list[str]) -> Iterator[Prometheus]:
    server = Prometheus(binary, workdir, scrape_config(targets, SCRAPE_INTERVAL_S))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def metrics_address(worker: Worker) -> str:
    answer = worker.health()
    assert answer is not None and answer[0] == 200, answer
    return f"127.0.0.1:{answer[1]['metrics']['port']}"


# --------------------------------------------------------------------------- the test


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus_bin: str,
    worker_factory: WorkerPool,
    services: Services,
    topic_prefix: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    queries = [
        (title, target["refId"], target["expr"], target.get("legendFormat", ""))
        for title, target in targets("prometheus")
    ]
    assert len(queries) >= 10
    assert {(title, legend) for title, _, _, legend in queries} >= set(EXPECTED)

    env = {
        "ANALYTICS__METRICS__ENABLED": "true",
        "ANALYTICS__METRICS__PORT": str(free_port()),
        "ANALYTICS__SINKS__TIMESCALEDB__FLUSH_INTERVAL": "1s",
    }
    worker = worker_factory(topic_prefix, group_id, env)
    worker.wait_ready(PARTITIONS, timeout=180)
    instance = metrics_address(worker)

    with (
        running_prometheus(prometheus_bin, tmp_path / "prometheus", [instance]) as prometheus,
        Traffic(worker, services.kafka_bootstrap) as traffic,
    ):
        poll(prometheus.targets_up, lambda up: len(up) == 1, 60, f"Prometheus scraping {instance}")

        # the dashboard's variable: label_values(metric, label) is Grafana's; its API equivalent
        for variable in load_dashboard()["templating"]["list"]:
            if variable.get("datasource", {}).get("type") == PROMETHEUS_TYPE:
                poll(
                    partial(variable_values, prometheus, variable["definition"]),
                    lambda offered: instance in offered,
                    60,
                    f"variable {variable['name']} offering {instance}",
                )

        # every panel query, over all workers ("All")
        check = QueryCheck(prometheus, queries, traffic)
        poll(
            check.step, lambda left: not left, 120, "every dashboard query answering", interval=0.5
        )

        # one selected worker: the filter Grafana writes matches the instance label
        selected = instance_regex(instance)
        for title, ref, expr, _legend in queries:
            vector = prometheus.query(grafana_expr(expr, selected))
            assert vector, f"{title} [{ref}] with instance {selected}: no series"
            for series in vector:
                assert series["metric"].get("instance", instance) == instance, series
