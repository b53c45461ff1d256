"""A Kafka broker of the test's own with TLS and SASL listeners, for the security settings.

The same Apache Kafka jars as scripts/kafka.sh (fetched there), one KRaft node, four listeners
on free ports, certificates from a throw-away CA (trustme):

* ``ssl``: TLS with client certificates required (mutual TLS);
* ``sasl_ssl``: SASL over TLS, PLAIN and SCRAM-SHA-512;
* ``sasl_plaintext``: SASL without TLS, SCRAM-SHA-256;
* ``internal``: plaintext, for the broker itself.

SCRAM users are created when the storage is formatted; PLAIN users are in the listener's JAAS
configuration. Starting took 9.9 s on a 2-core machine; the JVM may take up to 512 MiB.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from tests.tls_files import TlsFiles, make_tls_files
from tests.worker_process import REPO_ROOT, free_port, log_tail

USER = "analytics"
PLAIN_PASSWORD = "plain-pw-7f3a"
SCRAM_PASSWORD = "scram-pw-91c2"
STARTUP_TIMEOUT_S = 90


@dataclass(frozen=True)
class SecureBroker:
    """Where each listener is, and the files a client needs."""

    ssl: str
    sasl_ssl: str
    sasl_plaintext: str
    internal: str
    ca: Path
    client: TlsFiles  # a client certificate the broker accepts (same CA)
    log_path: Path


def kafka_lib() -> Path:
    """The Kafka jars of scripts/kafka.sh (fetched on first use)."""
    pom = (REPO_ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>(.*)</kafka.version>", pom)
    assert match, "scripts/kafka/pom.xml names no kafka.version"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    lib = cache / "realtime-analytics" / f"kafka-{match.group(1)}" / "lib"
    if not (lib / ".complete").exists():
        subprocess.run([str(REPO_ROOT / "scripts" / "kafka.sh"), "fetch"], check=True)
    return lib


def _keystore(ca: trustme.CA, path: Path) -> None:
    """Kafka's PEM key store: the private key (PKCS#8) followed by the certificate chain."""
    leaf = ca.issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in leaf.cert_chain_pems))


def _properties(directory: Path, ports: dict[str, int], ca_file: Path) -> str:
    listeners = {
        "INTERNAL": ports["internal"],
        "MTLS": ports["ssl"],
        "SASLSSL": ports["sasl_ssl"],
        "SASLPLAIN": ports["sasl_plaintext"],
    }
    bound = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{USER}="{PLAIN_PASSWORD}";'
    )
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{ports["controller"]}
listeners={bound},CONTROLLER://127.0.0.1:{ports["controller"]}
advertised.listeners={bound}
listener.security.protocol.map=INTERNAL:PLAINTEXT,MTLS:SSL,SASLSSL:SASL_SSL,SASLPLAIN:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
ssl.keystore.type=PEM
ssl.keystore.location={directory / "keystore.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={ca_file}
listener.name.mtls.ssl.client.auth=required
listener.name.saslssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.saslssl.plain.sasl.jaas.config={plain_jaas}
listener.name.saslssl.scram-sha-512.sasl.jaas.config={scram_jaas}
listener.name.saslplain.sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.saslplain.scram-sha-256.sasl.jaas.config={scram_jaas}
{storage_properties(directory)}"""


def storage_properties(directory: Path) -> str:
    """The properties every test broker shares: one node's data, topics and internal topics."""
    return f"""log.dirs={directory / "data"}
num.partitions=8
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def write_log4j(directory: Path) -> Path:
    """A log4j configuration printing the broker's INFO lines to its standard output."""
    log4j = directory / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    return log4j


@contextlib.contextmanager
def secure_broker(directory: Path) -> Iterator[SecureBroker]:
    """Start the broker, yield its addresses once it serves, stop it at the end."""
    lib = kafka_lib()
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    _keystore(ca, directory / "keystore.pem")
    client = make_tls_files(directory / "client", "analytics-client", ca=ca)
    ports = {
        name: free_port()
        for name in ("internal", "ssl", "sasl_ssl", "sasl_plaintext", "controller")
    }
    config = directory / "server.properties"
    config.write_text(_properties(directory, ports, ca_file))
    log_path = directory / "kafka.log"
    java = ["java", "-Xms128m", "-Xmx512m", "-cp", f"{lib}/*"]
    log4j = write_log4j(directory)
    with log_path.open("wb") as log:
        subprocess.run(
            [
                *java,
                f"-Dlog4j.configuration=file:{log4j}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                "q1Sh-9_ISia_zwGINzRvyQ",
                "-c",
                str(config),
                "--add-scram",
                f"SCRAM-SHA-256=[name={USER},password={SCRAM_PASSWORD}]",
                "--add-scram",
                f"SCRAM-SHA-512=[name={USER},password={SCRAM_PASSWORD}]",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
        proc = subprocess.Popen(
            [*java, f"-Dlog4j.configuration=file:{log4j}", "kafka.Kafka", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while "Kafka Server started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the secure test broker did not start:\n{log_tail(log_path)}")
            time.sleep(0.2)  # polling interval, bounded by the deadline
        yield SecureBroker(
            ssl=f"127.0.0.1:{ports['ssl']}",
            sasl_ssl=f"127.0.0.1:{ports['sasl_ssl']}",
            sasl_plaintext=f"127.0.0.1:{ports['sasl_plaintext']}",
            internal=f"127.0.0.1:{ports['internal']}",
            ca=ca_file,
            client=client,
            log_path=log_path,
        )
    finally:
        stop_broker(proc)


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean shutdown), SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
