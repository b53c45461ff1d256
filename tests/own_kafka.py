"""A plaintext Kafka broker of the test's own, which the test may stop and start again.

Outage tests stop the broker under traffic; stopping the shared one (scripts/services.sh)
would disturb every other test. The same Apache Kafka jars as scripts/kafka.sh, one KRaft
node on free ports; ``stop()`` and ``start()`` keep its data and its ports, like a broker an
operator restarts.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.secure_kafka import (
    STARTUP_TIMEOUT_S,
    kafka_lib,
    stop_broker,
    storage_properties,
    write_log4j,
)
from tests.worker_process import free_port, log_tail

CLUSTER_ID = "b6QJ0m3dQ4mLr0cYw2Xh1A"


def _properties(directory: Path, port: int, controller: int) -> str:
    return f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
{storage_properties(directory)}"""


class OwnBroker:
    """One KRaft node: ``start()``, ``stop()``, ``start()`` again on the same port and data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = directory / "kafka.log"
        self._proc: subprocess.Popen[bytes] | None = None
        java = ["java", "-Xms128m", "-Xmx512m", "-cp", f"{kafka_lib()}/*"]
        directory.mkdir(parents=True, exist_ok=True)
        self._config = directory / "server.properties"
        self._config.write_text(_properties(directory, self.port, self.controller_port))
        log4j = write_log4j(directory)
        self._java = [*java, f"-Dlog4j.configuration=file:{log4j}"]
        format_storage = [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            CLUSTER_ID,
            "-c",
            str(self._config),
        ]
        with self.log_path.open("ab") as log:
            subprocess.run(
                [*self._java, *format_storage],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> float:
        """Start the broker and wait until it serves; returns how long that took (s)."""
        started = time.monotonic()
        offset = self.log_path.stat().st_size
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self._java, "kafka.Kafka", str(self._config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + STARTUP_TIMEOUT_S
        while "Kafka Server started" not in self._log_since(offset):
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"the test's broker did not start:\n{log_tail(self.log_path)}")
            time.sleep(0.2)  # polling interval, bounded by the deadline
        return time.monotonic() - started

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 30 s."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            stop_broker(proc)


@contextlib.contextmanager
def own_broker(directory: Path) -> Iterator[OwnBroker]:
    """A started broker, stopped at the end whatever state the test left it in."""
    broker = OwnBroker(directory)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
