"""A PostgreSQL cluster of the caller's own (initdb in a directory, a free port), which it may
stop and start: outage tests and the soak (bench/soak.py) stop the database under traffic,
and stopping the shared one (scripts/services.sh) would disturb every other test."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.worker_process import free_port

PG_BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/usr/bin")
)


class ScratchPostgres:
    """A PostgreSQL cluster of its caller alone, so stopping it disturbs nobody else.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user.
    Synchronous commit stays on (the default): a commit acknowledged to the sink must survive
    the immediate shutdown the caller inflicts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://analytics@127.0.0.1:{self.port}/analytics"

    def _run(self, *command: str) -> None:
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "analytics",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        self.start()
        self._run(
            str(PG_BIN / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "analytics",
            "analytics",
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        log = str(self.root / "postgres.log")
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-o", options, "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def missing() -> str | None:
    """Why no scratch cluster can be made here (no server binaries), or None."""
    return None if (PG_BIN / "initdb").exists() else f"no initdb in {PG_BIN}"


@contextlib.contextmanager
def scratch_postgres(root: Path) -> Iterator[ScratchPostgres]:
    """A started cluster in ``root`` with an empty ``analytics`` database; destroyed after."""
    cluster = ScratchPostgres(root)
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()
