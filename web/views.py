"""Ingestion and health endpoints on the Faust web server."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from aiohttp import web as aiohttp_web
from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.behavior_tracker import owned_partitions
from analytics.timeutil import now_ms
from analytics.validation import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from app import app, metrics
from sinks.health import DEGRADED, sink_health
from web.ingestion import (
    DEAD_LETTER_RAW_LIMIT,
    IngestOutcome,
    ingest_batch,
    ingest_single,
    too_large,
)

TOPICS = app.topic_names
#: sources.http.path: POST it with one event, POST it + "/batch" with up to 1,000
INGEST_PATH = app.analytics_settings.sources.http.path


async def _read_body(request: web.Request, limit: int) -> tuple[bytes, int | None]:
    """Read at most ``limit + 1`` bytes; return (body, size when over the limit).

    A body declared larger than the limit is read only as far as the dead letter keeps it
    (DEAD_LETTER_RAW_LIMIT), so its raw payload is recorded without buffering all of it."""
    http_request = cast(aiohttp_web.Request, request)
    declared = http_request.content_length
    wanted = limit + 1
    if declared is not None and declared > limit:
        wanted = min(declared, DEAD_LETTER_RAW_LIMIT)
    content = http_request.content
    chunks: list[bytes] = []
    size = 0
    while size < wanted:
        chunk = await content.read(min(256 * 1024, wanted - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    if declared is not None and declared > limit:
        return body, declared
    return body, (size if size > limit else None)


async def _publish(outcome: IngestOutcome, received_ms: int) -> None:
    """Produce accepted events and dead letters and wait until the broker has them."""
    producer = app.producer
    sends = [
        await producer.send(TOPICS.user_events, a.key, a.value, None, received_ms / 1000, None)
        for a in outcome.accepted
    ]
    sends += [
        await producer.send(TOPICS.dead_letters, None, orjson.dumps(d), None, None, None)
        for d in outcome.dead_letters
    ]
    await asyncio.gather(*sends)


class _IngestView(web.View):
    limit = MAX_EVENT_BYTES
    source = "http"

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        raise NotImplementedError

    async def post(self, request: web.Request) -> web.Response:
        received_ms = now_ms()
        body, oversize = await _read_body(request, self.limit)
        if oversize is not None:
            outcome = too_large(oversize, self.limit, self.source, body, received_ms)
        else:
            outcome = self.decide(body, received_ms)
        await _publish(outcome, received_ms)
        metrics.http_ingest(self.source, len(outcome.accepted), len(outcome.dead_letters))
        return self.json(outcome.body, status=outcome.status)


@app.page(INGEST_PATH)
class IngestView(_IngestView):
    """POST one event."""

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        return ingest_single(body, received_ms)


@app.page(INGEST_PATH + "/batch")
class IngestBatchView(_IngestView):
    """POST {"events": [...]} with up to 1,000 events."""

    limit = MAX_BATCH_BYTES
    source = "http-batch"

    def decide(self, body: bytes, received_ms: int) -> IngestOutcome:
        return ingest_batch(body, received_ms)


async def kafka_status(timeout: float = 3.0) -> dict[str, Any]:
    """Ask the broker for cluster metadata through the app's producer connection."""
    try:
        client = app.producer._ensure_producer().client  # type: ignore[attr-defined]
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        return {"connected": True, "brokers": len(metadata.brokers())}
    except Exception as exc:  # any failure means "not reachable now"
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}


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
    """Liveness, broker connectivity and the database sinks' state.

    503 only when Kafka does not answer: without it the worker can do nothing. A degraded sink
    (database down or refusing writes) makes ``status`` ``degraded`` but keeps 200: the worker
    is doing the right thing (its batches wait, unacknowledged, and the rest runs) and a
    restart would not bring the database back; ``sinks`` says what is wrong."""

    async def get(self, request: web.Request) -> web.Response:
        kafka = await kafka_status()
        sinks = sink_health()
        healthy = kafka["connected"] and sinks["status"] != DEGRADED
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
            "sinks": sinks,
            "metrics": _metrics_status(),
        }
        return self.json(body, status=200 if kafka["connected"] else 503)
