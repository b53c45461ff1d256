"""app/metrics.py: names and labels follow Prometheus conventions and match docs/metrics.md,
the port rule, what each hook adds up, and the worker's start-up line."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from prometheus_client import CollectorRegistry, generate_latest

from analytics.partition import PartitionOutput
from analytics.rows import Arrival, Tick
from analytics.tracking import RawMessage, TrackedBatch
from app import metrics, startup
from app.metrics import BatchFigures, Metrics, candidate_ports, registry, start_exporter
from app.settings import ApplicationSettings
from tables import sizes

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NS = "analytics_dashboard"

#: the names dashboards are built against: (sample name, type, label names)
REQUIRED = {
    f"{NS}_events_processed_total": ("counter", set()),
    f"{NS}_events_filtered_total": ("counter", {"reason"}),
    f"{NS}_processing_latency_seconds": ("histogram", set()),
    f"{NS}_kpi_calculation_duration_seconds": ("histogram", set()),
    f"{NS}_session_count": ("gauge", set()),
    f"{NS}_user_count": ("gauge", set()),
    f"{NS}_dlq_events_total": ("counter", {"source"}),
    f"{NS}_sink_batch_size_rows": ("histogram", {"table"}),
    f"{NS}_sink_rows_written_total": ("counter", {"table"}),
    f"{NS}_sink_errors_total": ("counter", {"table", "kind"}),
    f"{NS}_sink_lag_records": ("gauge", {"table"}),
    f"{NS}_sink_healthy": ("gauge", {"table"}),
    f"{NS}_table_keys": ("gauge", {"table"}),
    f"{NS}_events_ingested_total": ("counter", {"endpoint"}),
    f"{NS}_kpi_final_value": ("gauge", {"metric"}),
}
#: ``_value``: the KPI figures of kpi_final_value, each in its own unit (its ``metric`` label)
UNITS = ("_seconds", "_rows", "_records", "_keys", "_count", "_healthy", "_total", "_value")


def _healthy_sinks() -> dict[str, Any]:
    return {
        "sinks": {
            "kpi_metrics": {"status": "ok"},
            "session_metrics": {"status": "degraded"},
            "page_view_stats": {"status": "starting"},
        }
    }


@pytest.fixture
def fresh() -> Metrics:
    """Metrics of their own, with every sink series present."""
    instance = Metrics(sink_health=_healthy_sinks)
    for table in ("kpi_metrics", "session_metrics"):
        instance.sink_registered(table)
        instance.sink_batch(table, 1, 1, 0)
        instance.sink_lag.labels(table).set(0)
    instance.table_keys.labels("partition-state").set(0)
    instance.kpi_final.labels("bounce_rate_percent").set(0)
    return instance


def exported(target: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """``{exposed name: (type, label names)}`` of every family, as Prometheus would store it."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in target.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        found[name] = (family.type, labels)
    return found


def value(target: CollectorRegistry, name: str, **labels: str) -> float:
    sample = target.get_sample_value(name, labels)
    assert sample is not None, (name, labels)
    return sample


# --------------------------------------------------------------------------- names


def test_the_dashboard_metrics_exist_with_their_types_and_labels(fresh: Metrics) -> None:
    found = exported(fresh.registry)
    for name, (kind, labels) in REQUIRED.items():
        assert name in found, name
        assert found[name] == (kind, labels), name


def test_names_follow_prometheus_conventions(fresh: Metrics) -> None:
    for family in fresh.registry.collect():
        assert re.fullmatch(rf"{NS}_[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert sample.name.startswith(NS + "_")
            assert not sample.name.endswith("_created"), sample.name
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
            for label in sample.labels:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label), label
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_rows")), family.name
        if family.type == "gauge":
            assert family.name.endswith(UNITS), family.name


def test_the_module_registry_is_the_worker_one_not_the_global_default() -> None:
    names = {family.name for family in registry.collect()}
    assert f"{NS}_events_processed" in names
    assert "process_cpu_seconds" not in names  # the default registry's process collector
    assert f"{NS}_events_filtered_total" in generate_latest(registry).decode()


def test_every_exported_metric_is_documented(fresh: Metrics) -> None:
    documented = set(re.findall(rf"`({NS}_[a-z0-9_]+)`", DOC.read_text()))
    assert set(exported(fresh.registry)) <= documented
    assert set(REQUIRED) <= documented


def test_filter_reasons_dlq_sources_and_endpoints_start_at_zero(fresh: Metrics) -> None:
    for reason in ("invalid", "duplicate", "late"):
        assert value(fresh.registry, f"{NS}_events_filtered_total", reason=reason) == 0
    for source in ("http", "topic"):
        assert value(fresh.registry, f"{NS}_dlq_events_total", source=source) == 0
    for endpoint in ("ingest", "batch"):
        assert value(fresh.registry, f"{NS}_events_ingested_total", endpoint=endpoint) == 0


def test_namespace_is_configurable() -> None:
    other = Metrics("shop", sink_health=_healthy_sinks)
    assert all(family.name.startswith("shop_") for family in other.registry.collect())


# --------------------------------------------------------------------------- hooks


def _arrival(offset: int, arrived_ms: int) -> Arrival:
    return Arrival(offset, arrived_ms, {"user_id": "u", "event_id": str(offset)})


def test_tracker_batch_counts_and_latency(fresh: Metrics) -> None:
    tracked = TrackedBatch(
        timeline=[_arrival(1, 10_000), Tick(2, 10_500), _arrival(3, 11_000)],
        dead_letters=[{"error": "user_id: required"}],
        rekeyed=[RawMessage(b"u", b"{}", -1, -1, 0)],
        duplicates=2,
    )
    analysed = PartitionOutput(sessions=[{"user_id": "u"}], late_events=1)
    fresh.tracker_batch(BatchFigures.of(tracked, analysed), acked_s=11.5)
    r = fresh.registry
    assert value(r, f"{NS}_events_processed_total") == 2
    assert value(r, f"{NS}_events_filtered_total", reason="invalid") == 1
    assert value(r, f"{NS}_events_filtered_total", reason="duplicate") == 2
    assert value(r, f"{NS}_events_filtered_total", reason="late") == 1
    assert value(r, f"{NS}_dlq_events_total", source="topic") == 1
    assert value(r, f"{NS}_dlq_events_total", source="http") == 0
    assert value(r, f"{NS}_events_rekeyed_total") == 1
    assert value(r, f"{NS}_sessions_closed_total") == 1
    # 1.5 s and 0.5 s from the records' timestamps to the acknowledgement
    assert value(r, f"{NS}_processing_latency_seconds_count") == 2
    assert value(r, f"{NS}_processing_latency_seconds_sum") == pytest.approx(2.0)
    assert value(r, f"{NS}_processing_latency_seconds_bucket", le="0.5") == 1
    assert value(r, f"{NS}_processing_latency_seconds_bucket", le="1.0") == 1
    assert value(r, f"{NS}_processing_latency_seconds_bucket", le="2.5") == 2


def test_http_ingest_counts_accepted_and_dead_letters(fresh: Metrics) -> None:
    fresh.http_ingest("http", accepted=1, rejected=0)
    fresh.http_ingest("http-batch", accepted=3, rejected=2)
    fresh.http_ingest("http", accepted=0, rejected=1)
    r = fresh.registry
    assert value(r, f"{NS}_events_ingested_total", endpoint="ingest") == 1
    assert value(r, f"{NS}_events_ingested_total", endpoint="batch") == 3
    assert value(r, f"{NS}_dlq_events_total", source="http") == 3
    assert value(r, f"{NS}_events_filtered_total", reason="invalid") == 3


def test_partition_gauges_sum_the_owned_partitions(fresh: Metrics) -> None:
    fresh.partition_gauges(0, users=5, open_sessions=0)
    fresh.partition_gauges(3, users=1, open_sessions=2)
    fresh.partition_gauges(0, users=7, open_sessions=1)
    r = fresh.registry
    assert value(r, f"{NS}_user_count") == 8
    assert value(r, f"{NS}_session_count") == 3
    fresh.keep_partitions([3])  # partition 0 went to another worker
    assert value(r, f"{NS}_user_count") == 1
    assert value(r, f"{NS}_session_count") == 2


def test_sink_hooks_and_health(fresh: Metrics) -> None:
    fresh.sink_batch("kpi_metrics", rows=100, written=98, dead=2)
    fresh.sink_retried("kpi_metrics")
    fresh.sink_retried("kpi_metrics")
    r = fresh.registry
    table = {"table": "kpi_metrics"}
    assert value(r, f"{NS}_sink_rows_written_total", **table) == 99  # 1 from the fixture
    assert value(r, f"{NS}_sink_errors_total", kind="dead_letter", **table) == 2
    assert value(r, f"{NS}_sink_errors_total", kind="retry", **table) == 2
    assert value(r, f"{NS}_sink_errors_total", kind="retry", table="session_metrics") == 0
    assert value(r, f"{NS}_sink_batch_size_rows_count", **table) == 2
    assert value(r, f"{NS}_sink_batch_size_rows_sum", **table) == 101
    assert value(r, f"{NS}_sink_healthy", **table) == 1
    assert value(r, f"{NS}_sink_healthy", table="session_metrics") == 0
    assert value(r, f"{NS}_sink_healthy", table="page_view_stats") == 1


def test_sink_healthy_follows_the_source_the_sinks_hand_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's registry reads ``sink_healthy`` from whatever ``watch_sink_health`` was
    given (agents/database_sinks.py hands over sinks.health.sink_health): app imports no sink."""
    collector = metrics.worker_metrics.sink_health
    monkeypatch.setattr(collector, "source", collector.source)  # put back after the test
    metrics.watch_sink_health(_healthy_sinks)
    assert value(registry, f"{NS}_sink_healthy", table="session_metrics") == 0
    assert value(registry, f"{NS}_sink_healthy", table="kpi_metrics") == 1


def test_timed_observes_even_when_the_block_raises(fresh: Metrics) -> None:
    with fresh.timed(fresh.kpi_calculation_duration):
        pass
    with pytest.raises(ValueError), fresh.timed(fresh.kpi_calculation_duration):
        raise ValueError("boom")
    assert value(fresh.registry, f"{NS}_kpi_calculation_duration_seconds_count") == 2


# --------------------------------------------------------------------------- the port


def test_candidate_ports() -> None:
    assert candidate_ports(9091) == [*range(9091, 9101), 0]
    assert candidate_ports(0) == [0]
    assert candidate_ports(65534) == [65534, 65535, 0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body: bytes = answer.read()
    return body.decode()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_taken_port_moves_to_the_next_free_one(fresh: Metrics, listening: int) -> None:
    next_free = _free(listening + 1)
    first = start_exporter("127.0.0.1", listening, fresh.registry)
    second = start_exporter("127.0.0.1", listening, fresh.registry)
    try:
        assert first.port != listening
        assert second.port not in (listening, first.port)
        if next_free:
            assert first.port == listening + 1
        for exporter in (first, second):
            assert f"{NS}_events_processed_total 0.0" in _scrape(exporter.port)
    finally:
        first.stop()
        second.stop()


def test_port_zero_takes_any_free_port(fresh: Metrics) -> None:
    exporter = start_exporter("127.0.0.1", 0, fresh.registry)
    try:
        assert exporter.port > 0
        assert exporter.address == f"127.0.0.1:{exporter.port}"
        assert f"{NS}_sink_lag_records" in _scrape(exporter.port)
    finally:
        exporter.stop()


def test_an_address_that_cannot_be_bound_is_an_error(fresh: Metrics) -> None:
    with pytest.raises(RuntimeError, match=r"metrics: cannot listen on 192\.0\.2\.1"):
        start_exporter("192.0.2.1", 0, fresh.registry)  # TEST-NET-1: not on this host


# --------------------------------------------------------------------------- start-up line


def test_ready_line_names_broker_database_partitions_and_ports() -> None:
    application = ApplicationSettings(name="shop-analytics", environment="staging")
    line = startup.ready_line(
        ["127.0.0.1:9092"],
        "postgresql",
        8,
        "https://127.0.0.1:6066",
        "127.0.0.1:9091",
        application,
    )
    assert line == (
        "analytics worker ready: broker=127.0.0.1:9092 database=postgresql (TimescaleDB "
        "absent) partitions=8 web=https://127.0.0.1:6066 metrics=127.0.0.1:9091 "
        "application=shop-analytics environment=staging"
    )
    assert startup.describe_database("timescaledb") == "timescaledb"
    assert startup.describe_database(None) == "none"


def test_announce_logs_the_line_once_the_mode_is_known(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import app

    monkeypatch.setattr(metrics, "_exporter", None)
    with caplog.at_level("INFO", logger="app.startup"):
        startup.announce(app, "timescaledb")
    (line,) = [r.getMessage() for r in caplog.records if "worker ready" in r.getMessage()]
    assert " database=timescaledb " in line
    assert " metrics=off " in line
    assert f" web=http://{app.conf.web_bind}:{app.conf.web_port} " in line
    assert line.endswith(f" environment={app.analytics_settings.application.environment}")
    assert f"partitions={app.analytics_settings.engine.topic_partitions} " in line


# --------------------------------------------------------------------------- table sizes


class _Store:
    """The parts of Faust's RocksDB store that tables.sizes reads."""

    offset_key = b"__faust\x00offset__"

    def __init__(self, dbs: list[Any]) -> None:
        self.dbs = dbs

    def _dbs_for_actives(self) -> list[Any]:
        return self.dbs

    def _visible_keys(self, db: Any) -> Iterator[bytes]:
        keys = db.keys()  # an Rdict iterates over its items' keys only through keys()
        return (key for key in keys if key != self.offset_key)


class _Table:
    def __init__(self, store: Any) -> None:
        self.data = store


async def test_table_keys_exact_for_small_partitions_estimated_for_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = []
    for partition, keys in ((0, 3), (1, 2)):
        db = rocksdict.Rdict(str(tmp_path / f"p{partition}"), rocksdict.Options(raw_mode=True))
        for _ in range(5):  # rewrites: RocksDB's estimate counts them until a flush
            for key in range(keys):
                db[f"k{key}".encode()] = b"v"
        db[_Store.offset_key] = b"42"
        dbs.append(db)
    table = _Table(_Store(dbs))
    assert await sizes.table_keys(table) == 5
    monkeypatch.setattr(sizes, "EXACT_UP_TO", 0)
    assert await sizes.table_keys(table) > 5  # the estimate, rewrites and offset key included
    for db in dbs:
        db.close()


async def test_table_keys_of_an_in_memory_store() -> None:
    assert await sizes.table_keys(_Table({b"a": b"1", b"b": b"2"})) == 2


def test_batch_histogram_exposes_what_a_histogram_would() -> None:
    """app.metrics.BatchHistogram counts a batch at once; scraped, it must read exactly like
    prometheus_client's Histogram fed the same values one at a time."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from app.metrics import LATENCY_BUCKETS, BatchHistogram

    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 2.5, 2.6, 299.0, 300.0, 301.0, 7.25]
    reference_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(
        "lat_seconds", "doc", buckets=LATENCY_BUCKETS, registry=reference_registry
    )
    for v in values:
        reference.observe(v)
    batch = BatchHistogram("lat_seconds", "doc", LATENCY_BUCKETS)
    batch_registry.register(batch)
    batch.observe_many(values[:5])
    batch.observe_many(values[5:])

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in lines)
            if name.startswith("lat_seconds_") and "_created" not in name
        }

    got, want = samples(batch_registry), samples(reference_registry)
    assert got.keys() == want.keys() and len(got) == len(LATENCY_BUCKETS) + 3
    assert {k: v for k, v in got.items() if k != "lat_seconds_sum"} == {
        k: v for k, v in want.items() if k != "lat_seconds_sum"
    }
    assert got["lat_seconds_sum"] == pytest.approx(want["lat_seconds_sum"])


def test_kpi_final_value_follows_the_newest_final_window_and_is_cleared() -> None:
    metrics.kpi_final({"bounce_rate_percent": 75.0, "custom.signups": 3})
    assert value(registry, f"{NS}_kpi_final_value", metric="bounce_rate_percent") == 75.0
    assert value(registry, f"{NS}_kpi_final_value", metric="custom.signups") == 3
    metrics.kpi_final_cleared()
    assert registry.get_sample_value(f"{NS}_kpi_final_value", {"metric": "custom.signups"}) is None
