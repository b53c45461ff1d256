"""Ingestion and health endpoints on the Faust web server."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web as aiohttp_web
from faust import web
from faust.types.web import ResourceOptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.behavior_tracker import owned_partitions
from analytics.timeutil import now_ms
from analytics.validation import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from app import app, faust_compat, metrics
from sinks.health import DEGRADED, sink_health
from web.access import INGEST_HEADERS
from web.broker_gate import BrokerGate, KafkaUnavailable
from web.ingestion import IngestOutcome, ingest_batch, ingest_single, too_large, unreadable
from web.kafka_probe import kafka_status
from web.request_body import close_after, read_body

TOPICS = app.topic_names
_http = app.analytics_settings.sources.http
_access = app.analytics_settings.access
#: sources.http.path: POST it with one event, POST it + "/batch" with up to 1,000
INGEST_PATH = _http.path
#: privacy.ip (SPEC 10): addresses leave the ingest path already anonymised, dropped or kept
IP_MODE = app.analytics_settings.privacy.ip

#: access.cors_origins: web pages whose scripts may POST events (preflight answered by
#: aiohttp-cors through Faust); the headers a client sends and the ones its script may read
CORS = {
    origin: ResourceOptions(
        allow_credentials=False,
        expose_headers=("Retry-After",),
        allow_headers=("Content-Type", *INGEST_HEADERS),
        max_age=int(_access.cors_max_age.total_seconds()),
        allow_methods=("POST",),
    )
    for origin in _access.cors_origins
}


async def broker_status() -> dict[str, Any]:
    """Kafka as the app producer's client sees it (web/kafka_probe.py)."""
    return await kafka_status(faust_compat.producer_client(app), app.analytics_settings.brokers)


async def _broker_error() -> str | None:
    status = await broker_status()
    return None if status["connected"] else str(status["error"])


gate = BrokerGate(
    _broker_error,
    timeout_s=_http.publish_timeout.total_seconds(),
    retry_after_s=_http.retry_after.total_seconds(),
    max_pending_bytes=_http.max_pending_mib * 1024 * 1024,
)


async def _stop_probing(_: aiohttp_web.Application) -> None:
    await gate.close()


faust_compat.aiohttp_application(app).on_shutdown.append(_stop_probing)


async def _publish(outcome: IngestOutcome, received_ms: int) -> None:
    """Produce accepted events and dead letters and wait until the broker has them, within
    the gate's bound (web/broker_gate.py); KafkaUnavailable otherwise."""
    producer = app.producer
    letters = [orjson.dumps(d) for d in outcome.dead_letters]
    size = sum(len(a.value) for a in outcome.accepted) + sum(map(len, letters))

    async def enqueue() -> list[Awaitable[Any]]:
        sends = [
            await producer.send(TOPICS.user_events, a.key, a.value, None, received_ms / 1000, None)
            for a in outcome.accepted
        ]
        sends += [
            await producer.send(TOPICS.dead_letters, None, letter, None, None, None)
            for letter in letters
        ]
        return sends

    await gate.publish(size, enqueue)


def _unavailable(view: web.View, outcome: IngestOutcome, refused: KafkaUnavailable) -> web.Response:
    """503 with Retry-After. ``stored``: ``"no"``, or ``"unknown"`` when the events reached
    the producer unconfirmed; a retry with the ``event_ids`` is counted once either way."""
    body: dict[str, Any] = {"error": str(refused)}
    body["stored"] = "unknown" if refused.handed_over else "no"
    if outcome.accepted:
        body["event_ids"] = [a.event_id for a in outcome.accepted]
    response: web.Response = view.json(
        body, status=503, headers={"Retry-After": str(refused.retry_after_s)}
    )
    return response


class _IngestView(web.View):
    limit = MAX_EVENT_BYTES
    source = "http"

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        raise NotImplementedError

    async def post(self, request: web.Request) -> web.Response:
        received_ms = now_ms()
        body = await read_body(request, self.limit)
        if body.unreadable is not None:
            outcome = unreadable(body.unreadable, self.source, body.raw, received_ms, IP_MODE)
        elif body.oversize is not None:
            outcome = too_large(
                body.oversize, self.limit, self.source, body.raw, received_ms, IP_MODE
            )
        else:
            outcome = self.decide(body.raw, received_ms)
        try:
            await _publish(outcome, received_ms)
        except KafkaUnavailable as refused:
            metrics.http_refused("kafka_unavailable")
            return _unavailable(self, outcome, refused)
        metrics.http_ingest(self.source, len(outcome.accepted), len(outcome.dead_letters))
        response = self.json(outcome.body, status=outcome.status)
        return close_after(response) if body.unreadable is not None else response


@app.page(INGEST_PATH, cors_options=CORS)
class IngestView(_IngestView):
    """POST one event."""

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        return ingest_single(body, received_ms, IP_MODE)


@app.page(INGEST_PATH + "/batch", cors_options=CORS)
class IngestBatchView(_IngestView):
    """POST {"events": [...]} with up to 1,000 events."""

    limit = MAX_BATCH_BYTES
    source = "http-batch"

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        return ingest_batch(body, received_ms, IP_MODE)


def _metrics_status() -> dict[str, Any]:
    """Where this worker's Prometheus exporter listens (the port rule: app/metrics.py)."""
    exporter = metrics.exporter()
    if exporter is None:
        return {"enabled": False, "port": None, "url": None}
    return {"enabled": True, "port": exporter.port, "url": f"http://{exporter.address}/metrics"}


@app.page("/metrics")
class MetricsView(web.View):
    """The Prometheus exposition of this worker's registry, also on the web port."""

    async def get(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.page("/health")
class HealthView(web.View):
    """Liveness, broker connectivity, HTTP ingestion and the database sinks' state.

    503 only when Kafka does not answer: without it the worker can do nothing; ``kafka.error``
    says why and ``ingest`` since when ingestion answers 503 (web/broker_gate.py). A degraded sink
    (database down or refusing writes) makes ``status`` ``degraded`` but keeps 200: the worker
    is doing the right thing (its batches wait, unacknowledged, and the rest runs) and a
    restart would not bring the database back; ``sinks`` says what is wrong."""

    async def get(self, request: web.Request) -> web.Response:
        kafka = await broker_status()
        sinks = sink_health()
        healthy = kafka["connected"] and gate.accepting and sinks["status"] != DEGRADED
        status = "ok" if healthy else "degraded"
        source = owned_partitions()
        application = app.analytics_settings.application
        body = {
            "status": status,
            "application": {"name": application.name, "environment": application.environment},
            "kafka": kafka,
            "worker": {
                "rebalancing": bool(app.rebalancing),
                "user_events_partitions": sorted(source),
            },
            "ingest": gate.status(),
            "sinks": sinks,
            "metrics": _metrics_status(),
        }
        return self.json(body, status=200 if kafka["connected"] else 503)
