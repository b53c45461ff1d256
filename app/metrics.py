"""Prometheus metrics of one worker: one registry, served on a port of its own.

The registry is ours rather than prometheus_client's global one, so the exporter, ``GET
/metrics`` and tests see exactly the pipeline's metrics (docs/metrics.md lists them). Agents
and views call the small functions at the bottom with what they already know; nothing here
touches Kafka or Faust, so the module can be imported and tested on its own.

Port rule (several workers on one host): the configured ``metrics.port`` is tried first, then
the next ports up to ``PORT_ATTEMPTS`` in all; if every one of them is taken, any free port.
``metrics.port: 0`` means any free port at once. The port in use is logged at start, shown by
``GET /health`` and in the worker's start-up line.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.settings import get_settings

if TYPE_CHECKING:
    from analytics.partition import PartitionOutput
    from analytics.tracking import TrackedBatch

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "analytics_dashboard"
#: ports tried from the configured one upwards before falling back to any free port
PORT_ATTEMPTS = 10
FILTER_REASONS = ("invalid", "duplicate", "late")
DLQ_SOURCES = ("http", "topic")
HOT_PATH_PHASES = ("read", "compute", "send", "wait", "store")
INGEST_ENDPOINTS = ("ingest", "batch")
#: why the web server refused a request before doing its work (web/broker_gate.py, web/access.py)
REFUSAL_REASONS = ("kafka_unavailable", "unauthenticated", "forbidden", "rate_limited")
SINK_ERROR_KINDS = ("retry", "dead_letter")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_ROW_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

# ``_created`` series double every counter's output and no dashboard uses them
disable_created_metrics()  # type: ignore[no-untyped-call]


class SinkHealthCollector(Collector):
    """``sink_healthy``, read when scraped from the sinks' own health (sinks.health, handed
    over by ``watch_sink_health``), so the gauge can never disagree with what ``GET /health``
    says about the sinks."""

    def __init__(self, namespace: str, source: Callable[[], dict[str, Any]]) -> None:
        self.namespace = namespace
        self.source = source

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{self.namespace}_sink_healthy",
            "1 while a database sink writes (or waits for its first batch), 0 while degraded",
            labels=["table"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        healthy = self._family()
        for table, state in sorted(self.source().get("sinks", {}).items()):
            healthy.add_metric([table], 0 if state.get("status") == "degraded" else 1)
        yield healthy


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """What the metrics count of a tracker batch: kept while its records are in flight,
    instead of the batch itself."""

    arrived_ms: list[int]
    dead_letters: int
    duplicates: int
    late: int
    rekeyed: int
    sessions: int

    @classmethod
    def of(cls, tracked: TrackedBatch, analysed: PartitionOutput) -> BatchFigures:
        from analytics.rows import Arrival

        return cls(
            [item.arrived_ms for item in tracked.timeline if type(item) is Arrival],
            len(tracked.dead_letters),
            tracked.duplicates,
            analysed.late_events,
            len(tracked.rekeyed),
            len(analysed.sessions),
        )


class BatchHistogram(Collector):
    """A histogram fed a batch of observations at a time (the hot path's per-event latency),
    exposed exactly like prometheus_client's ``Histogram``. Its ``observe`` takes a lock and
    walks the buckets for every value: about a microsecond an event at tens of thousands of
    events a second; here a batch is counted with ``bisect`` first and added in one step."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float]) -> None:
        counts = [0] * len(self._counts)
        total = 0.0
        bounds = self.bounds
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(itertools.accumulate(counts))
        labels = [repr(float(bound)) for bound in self.bounds] + ["+Inf"]
        family = self._family()
        family.add_metric([], list(zip(labels, cumulative, strict=True)), total)
        yield family


def _no_sinks() -> dict[str, Any]:
    return {}


class Metrics:
    """Every metric of the worker, registered in ``self.registry``."""

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        sink_health: Callable[[], dict[str, Any]] = _no_sinks,
    ) -> None:
        self.namespace = namespace
        self.registry = registry = CollectorRegistry(auto_describe=True)
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.events_processed = Counter(
            "events_processed",
            "Events validated, deduplicated, enriched and published to user-behavior-enriched",
            **common,
        )
        self.events_filtered = Counter(
            "events_filtered",
            "Events rejected (invalid), dropped as repeats (duplicate) or left out of windows "
            "and sessions for arriving after their window closed (late)",
            ["reason"],
            **common,
        )
        self.events_ingested = Counter(
            "events_ingested",
            "Events accepted over HTTP and produced to user-events",
            ["endpoint"],
            **common,
        )
        self.http_refused = Counter(
            "http_requests_refused",
            "Requests answered 503 because Kafka could not take their events in time "
            "(kafka_unavailable), 401 (unauthenticated), 403 (forbidden) or 429 (rate_limited)",
            ["reason"],
            **common,
        )
        self.dlq_events = Counter(
            "dlq_events",
            "Rejected events sent to user-events-dlq, by where they were rejected",
            ["source"],
            **common,
        )
        self.partials_dead_lettered = Counter(
            "partials_dead_lettered",
            "kpi-partials records the combiner could not use, sent to kpi-partials-dlq",
            **common,
        )
        self.events_rekeyed = Counter(
            "events_rekeyed",
            "Topic events whose key was not their user_id, produced again keyed by user_id",
            **common,
        )
        self.sessions_closed = Counter(
            "sessions_closed",
            "Closed sessions published to session-metrics",
            **common,
        )
        self.hot_path_seconds = Counter(
            "hot_path_seconds",
            "Wall time of the hot path (agents/behavior_tracker.py) by phase: read (waiting for "
            "input), compute, send (handing records to the producer), wait (for the broker's "
            "acknowledgements), store (RocksDB); rate() is the share of each",
            ["phase"],
            **common,
        )
        self.processing_latency = BatchHistogram(
            f"{namespace}_processing_latency_seconds",
            "From the user-events record's timestamp (LogAppendTime) to the acknowledgement of "
            "its enriched record",
            LATENCY_BUCKETS,
        )
        registry.register(self.processing_latency)
        self.kpi_calculation_duration = Histogram(
            "kpi_calculation_duration_seconds",
            "Time the combiner spends computing one batch's KPI, page and traffic records",
            buckets=COMPUTE_BUCKETS,
            **common,
        )
        self.partition_analytics_duration = Histogram(
            "partition_analytics_duration_seconds",
            "Time one partition batch spends in the partition analytics (sessions, windows, "
            "partials)",
            buckets=COMPUTE_BUCKETS,
            **common,
        )
        self.session_count = Gauge(
            "session_count",
            "Users with an open session on this worker's user-events partitions",
            **common,
        )
        self.user_count = Gauge(
            "user_count",
            "Users known (profiles) on this worker's user-events partitions",
            **common,
        )
        self.sink_batch_size = Histogram(
            "sink_batch_size_rows",
            "Records in one database sink batch",
            ["table"],
            buckets=BATCH_ROW_BUCKETS,
            **common,
        )
        self.sink_rows_written = Counter(
            "sink_rows_written",
            "Rows committed to the database by a sink",
            ["table"],
            **common,
        )
        self.sink_errors = Counter(
            "sink_errors",
            "Sink failures: a failed write attempt that is retried (retry), or a record the "
            "database can never take, sent to sink-dlq (dead_letter)",
            ["table", "kind"],
            **common,
        )
        self.sink_lag = Gauge(
            "sink_lag_records",
            "Records in a sink's topic not yet written: end offsets minus committed offsets",
            ["table"],
            **common,
        )
        self.table_keys = Gauge(
            "table_keys",
            "Keys in a Faust table on this worker's active partitions (RocksDB's estimate when "
            "a partition holds many keys)",
            ["table"],
            **common,
        )
        self.kpi_final = Gauge(
            "kpi_final_value",
            "The newest final KPI window's figures (SPEC 4; custom KPIs as custom.<name>), set "
            "by the worker evaluating the alert rules (agents/kpi_alerts.py); what the exported "
            "Prometheus alerting rules watch (faust -A app alert-rules)",
            ["metric"],
            **common,
        )
        self.sink_health = SinkHealthCollector(namespace, sink_health)
        registry.register(self.sink_health)
        for phase in HOT_PATH_PHASES:
            self.hot_path_seconds.labels(phase)
        for reason in FILTER_REASONS:
            self.events_filtered.labels(reason)
        for source in DLQ_SOURCES:
            self.dlq_events.labels(source)
        for endpoint in INGEST_ENDPOINTS:
            self.events_ingested.labels(endpoint)
        for refusal in REFUSAL_REASONS:
            self.http_refused.labels(refusal)
        self._users: dict[int, int] = {}
        self._sessions: dict[int, int] = {}

    def tracker_batch(self, figures: BatchFigures, acked_s: float) -> None:
        """A tracker batch whose records the broker acknowledged at ``acked_s`` (epoch s)."""
        self.events_processed.inc(len(figures.arrived_ms))
        acked_ms = acked_s * 1000
        self.processing_latency.observe_many(
            max(0.0, (acked_ms - arrived_ms) / 1000) for arrived_ms in figures.arrived_ms
        )
        self.events_filtered.labels("invalid").inc(figures.dead_letters)
        self.events_filtered.labels("duplicate").inc(figures.duplicates)
        self.events_filtered.labels("late").inc(figures.late)
        self.dlq_events.labels("topic").inc(figures.dead_letters)
        self.events_rekeyed.inc(figures.rekeyed)
        self.sessions_closed.inc(figures.sessions)

    def partition_gauges(self, partition: int, users: int, open_sessions: int) -> None:
        """Users of a partition (those first seen in its final windows) and its users with
        open sessions (analytics.partition.PartitionState.open_users)."""
        self._users[partition] = users
        self._sessions[partition] = open_sessions
        self._update_partition_gauges()

    def keep_partitions(self, owned: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (after a rebalance)."""
        keep = set(owned)
        for figures in (self._users, self._sessions):
            for partition in [p for p in figures if p not in keep]:
                del figures[partition]
        self._update_partition_gauges()

    def _update_partition_gauges(self) -> None:
        self.user_count.set(sum(self._users.values()))
        self.session_count.set(sum(self._sessions.values()))

    def http_ingest(self, source: str, accepted: int, rejected: int) -> None:
        """One ingestion request: events accepted, and events rejected into the DLQ."""
        self.events_ingested.labels("batch" if source == "http-batch" else "ingest").inc(accepted)
        self.events_filtered.labels("invalid").inc(rejected)
        self.dlq_events.labels("http").inc(rejected)

    def http_refused_request(self, reason: str) -> None:
        """A request refused before its work was done (REFUSAL_REASONS)."""
        self.http_refused.labels(reason).inc()

    def sink_batch(self, table: str, rows: int, written: int, dead: int) -> None:
        """A sink batch committed: its size, rows written, records sent to sink-dlq."""
        self.sink_batch_size.labels(table).observe(rows)
        self.sink_rows_written.labels(table).inc(written)
        self.sink_errors.labels(table, "dead_letter").inc(dead)

    def sink_registered(self, table: str) -> None:
        """Every series of a sink from its start, at 0: rate() then sees the first error."""
        self.sink_rows_written.labels(table)
        for kind in SINK_ERROR_KINDS:
            self.sink_errors.labels(table, kind)

    def sink_retried(self, table: str) -> None:
        self.sink_errors.labels(table, "retry").inc()

    @contextmanager
    def timed(self, histogram: Histogram) -> Iterator[None]:
        """Observe the wall time of the block (monotonic clock) in ``histogram``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            histogram.observe(time.perf_counter() - start)


def candidate_ports(configured: int, attempts: int = PORT_ATTEMPTS) -> list[int]:
    """The ports to try in order: the configured one and the next ones, then 0 (any)."""
    if configured == 0:
        return [0]
    return [port for port in range(configured, configured + attempts) if port < 65536] + [0]


@dataclass(slots=True)
class Exporter:
    """The running HTTP exporter: where it listens."""

    host: str
    port: int
    server: WSGIServer

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_exporter(host: str, configured: int, target: CollectorRegistry | None = None) -> Exporter:
    """Serve ``registry`` over HTTP on the first free port of ``candidate_ports``."""
    target = registry if target is None else target
    for port in candidate_ports(configured):
        try:
            server, _thread = start_http_server(port, addr=host, registry=target)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise RuntimeError(f"metrics: cannot listen on {host}:{port}: {exc}") from exc
            continue
        exporter = Exporter(host, int(server.server_port), server)
        if configured and exporter.port != configured:
            log.warning(
                "metrics: port %d is taken; serving on %s instead", configured, exporter.address
            )
        return exporter
    raise AssertionError("unreachable: port 0 always binds")  # pragma: no cover


worker_metrics = Metrics(get_settings().metrics.namespace)
registry: CollectorRegistry = worker_metrics.registry
_exporter: Exporter | None = None


def start(host: str, configured: int) -> Exporter:
    """Start the process's exporter once; later calls return the running one."""
    global _exporter
    if _exporter is None:
        _exporter = start_exporter(host, configured)
        log.info("metrics: serving on http://%s/metrics", _exporter.address)
    return _exporter


def exporter() -> Exporter | None:
    """The running exporter, if metrics are enabled and started."""
    return _exporter


# One-line hooks for agents and views ------------------------------------------------------


def tracker_batch(figures: BatchFigures, acked_s: float) -> None:
    """A tracker batch whose outputs the broker acknowledged at ``acked_s`` (epoch s)."""
    worker_metrics.tracker_batch(figures, acked_s)


def partition_gauges(partition: int, users: int, open_sessions: int) -> None:
    worker_metrics.partition_gauges(partition, users, open_sessions)


def keep_partitions(owned: Iterable[int]) -> None:
    worker_metrics.keep_partitions(owned)


def hot_path_phase(phase: str, seconds: float) -> None:
    worker_metrics.hot_path_seconds.labels(phase).inc(seconds)


def http_ingest(source: str, accepted: int, rejected: int) -> None:
    worker_metrics.http_ingest(source, accepted, rejected)


def http_refused(reason: str) -> None:
    worker_metrics.http_refused_request(reason)


def partials_dead_lettered(count: int) -> None:
    """Records of kpi-partials the combiner sent to kpi-partials-dlq."""
    worker_metrics.partials_dead_lettered.inc(count)


def sink_batch(table: str, rows: int, written: int, dead: int) -> None:
    worker_metrics.sink_batch(table, rows, written, dead)


def sink_registered(table: str) -> None:
    worker_metrics.sink_registered(table)


def sink_retried(table: str) -> None:
    worker_metrics.sink_retried(table)


def watch_sink_health(source: Callable[[], dict[str, Any]]) -> None:
    """Read ``sink_healthy`` from ``source`` (sinks.health.sink_health) from now on."""
    worker_metrics.sink_health.source = source


def sink_lag(table: str, records: int) -> None:
    worker_metrics.sink_lag.labels(table).set(records)


def table_keys(table: str, keys: int) -> None:
    worker_metrics.table_keys.labels(table).set(keys)


def kpi_final(figures: Mapping[str, float]) -> None:
    """The figures of the newest final KPI window, by metric name."""
    for metric, value in figures.items():
        worker_metrics.kpi_final.labels(metric).set(value)


def kpi_final_cleared() -> None:
    """This worker no longer evaluates the alerts: another one sets the gauge now."""
    worker_metrics.kpi_final.clear()


def kpi_calculation() -> AbstractContextManager[None]:
    """``with metrics.kpi_calculation(): ...`` times the combiner's computation."""
    return worker_metrics.timed(worker_metrics.kpi_calculation_duration)


def partition_analytics() -> AbstractContextManager[None]:
    """``with metrics.partition_analytics(): ...`` times a partition batch's analytics."""
    return worker_metrics.timed(worker_metrics.partition_analytics_duration)
