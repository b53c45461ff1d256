"""Settings observed on real workers, over the wire: HTTPS, the ingest path, the application
block in /health and the ready line, and Kafka security settings that cannot work.

The mapping of every key is unit-tested in tests/unit/test_settings.py and
tests/unit/test_kafka_security.py; TLS towards PostgreSQL in tests/integration/test_database_tls.py.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.topics import TopicNames
from tests.kafka_helpers import read_until
from tests.polling import poll
from tests.tls_files import make_tls_files
from tests.worker_process import Worker, WorkerNotReady, WorkerPool

pytestmark = pytest.mark.integration

PATH = "/v1/events"


def get(worker: Worker, path: str, context: ssl.SSLContext | None) -> tuple[int, Any]:
    with urllib.request.urlopen(worker.url + path, timeout=30, context=context) as response:
        return response.status, json.loads(response.read())


async def post(worker: Worker, path: str, body: Any) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=worker.ssl_context or True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(worker.url + path, data=orjson.dumps(body)) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if response.status != 404 else text


async def stream_snapshots(worker: Worker, wanted: int, timeout: float) -> list[dict[str, Any]]:
    """The first ``wanted`` snapshot frames of ``/dashboard/stream``; the second one comes once
    the worker's dashboard feed has read its own API (over HTTPS here)."""
    connector = aiohttp.TCPConnector(ssl=worker.ssl_context or True)
    snapshots: list[dict[str, Any]] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session,
        session.get(worker.url + "/dashboard/stream") as response,
    ):
        assert response.status == 200
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "snapshot":
                snapshots.append(json.loads(line.removeprefix("data: ")))
                if len(snapshots) == wanted:
                    return snapshots
    raise AssertionError(f"the stream ended after {len(snapshots)} snapshots")


async def test_https_the_ingest_path_and_the_application_on_a_real_worker(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls", "127.0.0.1")
    worker = worker_factory.start(
        topic_prefix,
        group_id,
        {
            "ANALYTICS__SOURCES__HTTP__PATH": PATH,
            "ANALYTICS__APPLICATION__NAME": "shop-analytics",
            "ANALYTICS__APPLICATION__ENVIRONMENT": "settings-test",
        },
        tls=tls,
    )
    worker.wait_ready(timeout=120)
    assert worker.url.startswith("https://")

    # HTTPS with the configured certificate, and nothing else on that port
    status, health = get(worker, "/health", worker.ssl_context)
    assert status == 200
    assert health["application"] == {"name": "shop-analytics", "environment": "settings-test"}
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(worker, "/health", ssl.create_default_context())  # not a system CA's certificate
    plain = worker.url.replace("https://", "http://")
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(plain + "/health", timeout=30).close()

    # the ingest path: POST <path> and <path>/batch; the default path is gone
    tag = uuid.uuid4().hex[:8]
    single = {"user_id": f"u-{tag}", "action": "page_view", "page": "/home"}
    batch = {"events": [{"user_id": f"v-{tag}", "action": "click"}, {"user_id": ""}]}
    status, one = await post(worker, PATH, single)
    assert status == 202, one
    status, many = await post(worker, PATH + "/batch", batch)
    assert status == 202, many
    assert len(many["accepted"]) == 1 and [r["index"] for r in many["rejected"]] == [1]
    assert (await post(worker, "/ingest", single))[0] == 404
    assert (await post(worker, "/ingest/batch", batch))[0] == 404
    wanted = {one["event_id"], *many["accepted"]}
    topics = TopicNames.with_prefix(topic_prefix)
    records = await read_until(
        worker_factory.services.kafka_bootstrap,
        topics.user_events,
        lambda found: wanted <= {r.json().get("event_id") for r in found if r.value},
        60,
    )
    assert {r.key for r in records if r.value} >= {f"u-{tag}".encode(), f"v-{tag}".encode()}

    _, spec = get(worker, "/openapi.json", worker.ssl_context)
    assert {PATH, PATH + "/batch"} <= set(spec["paths"])
    assert not {"/ingest", "/ingest/batch"} & set(spec["paths"])

    # the ready line says where and what
    line = (
        poll(
            lambda: re.search(r"analytics worker ready: .*", worker.log_tail(400)),
            bool,
            60,
            "the ready line",
        )
        .group(0)
        .strip()
    )
    assert f" web=https://127.0.0.1:{worker.port} " in line
    assert line.endswith(" application=shop-analytics environment=settings-test")

    # the dashboard feed reaches the worker's own API over HTTPS (127.0.0.1 by its certificate)
    snapshots = await stream_snapshots(worker, 2, timeout=60)
    assert set(snapshots[1]) >= {"windows", "breakdowns"}, snapshots[1]


def test_tls_towards_a_plaintext_broker_stops_the_worker_naming_it(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str, tmp_path: Path
) -> None:
    """security_protocol SSL against the local PLAINTEXT listener: the worker exits, and its
    log says which broker and protocol failed (no silent fallback to plaintext)."""
    tls = make_tls_files(tmp_path / "kafka-tls", "127.0.0.1")
    worker = worker_factory.start(
        topic_prefix,
        group_id,
        {
            "ANALYTICS__SOURCES__KAFKA__SECURITY_PROTOCOL": "SSL",
            "ANALYTICS__SOURCES__KAFKA__TLS__CA_FILE": str(tls.ca),
        },
    )
    with pytest.raises(WorkerNotReady, match="exited with code"):
        worker.wait_ready(timeout=120)
    bootstrap = re.escape(worker_factory.services.kafka_bootstrap)
    assert re.search(rf"cannot reach Kafka at {bootstrap} \(SSL\)", worker.log_tail(400))


def test_sasl_towards_a_broker_without_it_stops_the_worker_without_showing_the_password(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    worker = worker_factory.start(
        topic_prefix,
        group_id,
        {
            "ANALYTICS__SOURCES__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "ANALYTICS__SOURCES__KAFKA__SASL__MECHANISM": "SCRAM-SHA-256",
            "ANALYTICS__SOURCES__KAFKA__SASL__USERNAME": "analytics",
            "ANALYTICS__SOURCES__KAFKA__SASL__PASSWORD": "pw-never-logged",
        },
    )
    with pytest.raises(WorkerNotReady, match="exited with code"):
        worker.wait_ready(timeout=120)
    log = worker.log_tail(400)
    assert "cannot reach Kafka at" in log and "(SASL_PLAINTEXT)" in log
    assert "pw-never-logged" not in worker.log_path.read_text(errors="replace")


def test_a_retired_key_stops_the_worker_naming_it(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    started = time.monotonic()
    worker = worker_factory.start(
        topic_prefix, group_id, {"ANALYTICS__SOURCES__KAFKA__TOPICS": '["user-events"]'}
    )
    with pytest.raises(WorkerNotReady, match="exited with code"):
        worker.wait_ready(timeout=60)
    assert "sources.kafka.topics: no longer a setting" in worker.log_tail()
    assert time.monotonic() - started < 60
