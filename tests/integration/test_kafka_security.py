"""sources.kafka security against a real broker with TLS and SASL listeners (tests/secure_kafka.py).

For each protocol a worker starts with only the documented settings, creates its topics, joins
its group, accepts an event over HTTP (the producer waits for the broker's acknowledgement),
processes it (its user appears in the live API) and opens the dashboard feed's own consumer:
Faust's clients and the project's aiokafka clients all connect through app/kafka_security.py.
Wrong credentials stop the worker naming broker and protocol, without logging the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import poll
from tests.secure_kafka import (
    PLAIN_PASSWORD,
    SCRAM_PASSWORD,
    USER,
    SecureBroker,
    secure_broker,
)
from tests.tls_files import make_tls_files
from tests.worker_process import REPO_ROOT, WorkerNotReady, WorkerPool

pytestmark = pytest.mark.integration

PARTITIONS = 8


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    with secure_broker(tmp_path_factory.mktemp("secure-kafka")) as started:
        yield started


def security_env(broker: SecureBroker, mode: str) -> dict[str, str]:
    """The environment of a worker (or the generator) for one of the broker's listeners."""
    kafka = "ANALYTICS__SOURCES__KAFKA__"
    if mode == "SSL":
        return {
            "KAFKA_BOOTSTRAP": broker.ssl,
            f"{kafka}SECURITY_PROTOCOL": "SSL",
            f"{kafka}TLS__CA_FILE": str(broker.ca),
            f"{kafka}TLS__CERT_FILE": str(broker.client.cert),
            f"{kafka}TLS__KEY_FILE": str(broker.client.key),
        }
    protocol, mechanism = mode.split(" ")
    password = PLAIN_PASSWORD if mechanism == "PLAIN" else SCRAM_PASSWORD
    env = {
        "KAFKA_BOOTSTRAP": broker.sasl_ssl if protocol == "SASL_SSL" else broker.sasl_plaintext,
        f"{kafka}SECURITY_PROTOCOL": protocol,
        f"{kafka}SASL__MECHANISM": mechanism,
        f"{kafka}SASL__USERNAME": USER,
        f"{kafka}SASL__PASSWORD": password,
    }
    if protocol == "SASL_SSL":
        env[f"{kafka}TLS__CA_FILE"] = str(broker.ca)
    return env


def request(url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.mark.parametrize(
    "mode", ["SSL", "SASL_SSL PLAIN", "SASL_SSL SCRAM-SHA-512", "SASL_PLAINTEXT SCRAM-SHA-256"]
)
def test_a_worker_runs_the_pipeline_over_the_configured_security(
    broker: SecureBroker, worker_factory: WorkerPool, topic_prefix: str, group_id: str, mode: str
) -> None:
    worker = worker_factory.start(topic_prefix, group_id, security_env(broker, mode))
    worker.wait_ready(PARTITIONS, timeout=120)

    user = f"secure-{uuid.uuid4().hex[:8]}"
    status, body = request(
        worker.url + "/ingest", {"user_id": user, "action": "page_view", "page": "/"}
    )
    assert status == 202, body
    profile = poll(
        lambda: request(f"{worker.url}/api/users/{urllib.parse.quote(user)}"),
        lambda answer: answer[0] == 200,
        60,
        f"user {user} processed",
    )
    assert profile[1]["user_id"] == user, profile

    # the dashboard feed's consumer (one of the project's own aiokafka clients)
    with urllib.request.urlopen(worker.url + "/dashboard/stream", timeout=30) as stream:
        first_lines = [stream.readline() for _ in range(3)]  # retry:, blank, the snapshot
        assert b"event: snapshot\n" in first_lines, first_lines
        poll(
            lambda: "dashboard feed: following" in worker.log_tail(400),
            bool,
            60,
            "the dashboard feed's consumer",
        )
    assert "reconnecting" not in worker.log_tail(400)


def test_the_generator_produces_with_the_same_settings(
    broker: SecureBroker, topic_prefix: str
) -> None:
    env = {**os.environ, **security_env(broker, "SASL_SSL SCRAM-SHA-512")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    topic = f"{topic_prefix}generated"
    create = [
        sys.executable,
        "-c",
        "import asyncio, sys\n"
        "from aiokafka.admin import AIOKafkaAdminClient, NewTopic\n"
        "from app.kafka_security import aiokafka_kwargs\n"
        "from app.settings import load_settings\n"
        "async def main():\n"
        "    admin = AIOKafkaAdminClient(**aiokafka_kwargs(load_settings()))\n"
        "    await admin.start()\n"
        "    await admin.create_topics([NewTopic(sys.argv[1], 1, 1)])\n"
        "    await admin.close()\n"
        "asyncio.run(main())\n",
        topic,
    ]
    subprocess.run(create, env=env, cwd=REPO_ROOT, check=True, timeout=120)
    generate = ["--topic", topic, "--events", "50", "--bootstrap", env["KAFKA_BOOTSTRAP"]]
    result = subprocess.run(
        [sys.executable, "-m", "generator.cli", *generate, "--no-progress"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent 50 events"), result.stdout


WRONG_PASSWORD = {"ANALYTICS__SOURCES__KAFKA__SASL__PASSWORD": "wrong-pw-4411"}


@pytest.mark.parametrize(
    ("mode", "change", "reason"),
    [
        ("SASL_SSL SCRAM-SHA-512", WRONG_PASSWORD, "SaslAuthenticationFailed"),
        ("SASL_SSL PLAIN", WRONG_PASSWORD, "SaslAuthenticationFailed"),
        ("SSL", {"ANALYTICS__SOURCES__KAFKA__TLS__CA_FILE": "<other CA>"}, "CERTIFICATE_VERIFY"),
    ],
)
def test_refused_credentials_stop_the_worker_naming_broker_and_protocol(
    broker: SecureBroker,
    worker_factory: WorkerPool,
    topic_prefix: str,
    group_id: str,
    tmp_path: Path,
    mode: str,
    change: dict[str, str],
    reason: str,
) -> None:
    env = {**security_env(broker, mode), **change}
    if env.get("ANALYTICS__SOURCES__KAFKA__TLS__CA_FILE") == "<other CA>":
        env["ANALYTICS__SOURCES__KAFKA__TLS__CA_FILE"] = str(make_tls_files(tmp_path).ca)
    worker = worker_factory.start(topic_prefix, group_id, env)
    with pytest.raises(WorkerNotReady, match="exited with code"):
        worker.wait_ready(timeout=120)
    log = worker.log_path.read_text(errors="replace")
    protocol = mode.split(" ")[0]
    assert f"cannot reach Kafka at {env['KAFKA_BOOTSTRAP']} ({protocol})" in log
    assert reason in log  # aiokafka's own error line, naming the cause
    for secret in (PLAIN_PASSWORD, SCRAM_PASSWORD, "wrong-pw-4411"):
        assert secret not in log
