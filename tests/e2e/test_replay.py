"""``faust -A app replay`` end to end: the figures of a replayed file equal those of the same
events sent live.

The seeded traffic (with repeats, invalid events and malformed JSON) and one closing event
per partition are written to a gzip NDJSON file. Pipeline A (its own topic prefix and group)
gets the file through ``faust -A app replay``; pipeline B gets the same lines, in the same
order, live through ``POST /ingest/batch`` (``POST /ingest`` for a line that is not a JSON
object). The final KPI windows, the sessions and the page statistics both publish must be
the same, and the replay's summary must count what the generator says it made.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from analytics.privacy import scrub_text
from analytics.timeutil import parse_ts
from generator.traffic import TrafficProfile, generate_labelled
from tests import contract
from tests.kafka_helpers import TopicReader, closing_messages, read_until
from tests.worker_process import Services, WorkerPool, faust_command, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

PARTITIONS = 8
WINDOW_MS = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPAN_MS = 3600 * 1000
CLOSING_TS = START_MS + SPAN_MS + 1_800_000 + 10 * WINDOW_MS
LAST_WINDOW = (START_MS + SPAN_MS - 1) // WINDOW_MS * WINDOW_MS
PROFILE = TrafficProfile(
    seed=20261129,
    users=100,
    start_ms=START_MS,
    span_ms=SPAN_MS,
    events=3_000,
    disorder_ms=5_000,
    duplicate_rate=0.02,
    invalid_rate=0.01,
)
BATCH = 200


def lines() -> tuple[list[bytes], dict[str, int]]:
    """The file's lines and what the generator says they are."""
    out: list[bytes] = []
    kinds = {"valid": 0, "duplicate": 0, "invalid": 0}
    for event, kind in generate_labelled(PROFILE):
        line = event if isinstance(event, bytes) else orjson.dumps(event)
        assert b"\n" not in line
        out.append(line)
        kinds[kind] += 1
    out += [value for _, value in closing_messages(PARTITIONS, CLOSING_TS)]
    return out, kinds


async def send_live(url: str, file_lines: list[bytes]) -> None:
    """Each line in order: runs of JSON objects in batches, anything else on its own."""
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: bytes) -> None:
            async with session.post(url + path, data=body) as response:
                assert response.status in (202, 400, 413), await response.text()

        run: list[Any] = []
        for line in file_lines:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and len(run) < BATCH:
                run.append(obj)
                continue
            if run:
                await post("/ingest/batch", orjson.dumps({"events": run}))
                run = []
            if isinstance(obj, dict):
                run.append(obj)
            else:
                await post("/ingest", line)
        if run:
            await post("/ingest/batch", orjson.dumps({"events": run}))


async def published(bootstrap: str, prefix: str, users: set[str]) -> dict[str, Any]:
    """The final KPI windows, the traffic's sessions and its pages' final window records."""
    await read_until(
        bootstrap,
        f"{prefix}live-kpis",
        lambda records: any(
            r.json()["is_final"] and parse_ts(r.json()["window_start"]) == LAST_WINDOW
            for r in records
        ),
        240,
    )
    await read_until(
        bootstrap,
        f"{prefix}session-metrics",
        lambda records: {r.key.decode() for r in records if r.key} >= users,
        120,
    )
    values: dict[str, list[dict[str, Any]]] = {}
    for name in ("live-kpis", "session-metrics", "page-view-stats"):
        async with TopicReader(bootstrap, f"{prefix}{name}") as reader:
            values[name] = [orjson.loads(r.value) for r in await reader.read_to_end() if r.value]
    kpis = {
        parse_ts(k["window_start"]): k
        for k in values["live-kpis"]
        if k["is_final"] and parse_ts(k["window_start"]) <= LAST_WINDOW
    }
    sessions = {
        (s["user_id"], s["session_id"], s["window_start"]): s
        for s in values["session-metrics"]
        if s["user_id"] in users
    }
    pages = {
        (p["window_start"], p["page"]): p
        for p in values["page-view-stats"]
        if p.get("is_final", True) and parse_ts(p["window_start"]) <= LAST_WINDOW
    }
    return {"kpis": kpis, "sessions": sessions, "pages": pages}


async def test_a_replayed_file_gives_the_figures_of_the_same_events_sent_live(
    worker_factory: WorkerPool, services: Services, tmp_path: Path
) -> None:
    bootstrap = services.kafka_bootstrap
    file_lines, kinds = lines()
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(file_lines) + b"\n"))
    prefix_a, group_a = new_topic_prefix(), new_group_id()
    prefix_b, group_b = new_topic_prefix(), new_group_id()
    replayed = worker_factory.start(prefix_a, group_a)
    live = worker_factory.start(prefix_b, group_b)
    await replayed.await_ready(PARTITIONS, timeout=180)
    await live.await_ready(PARTITIONS, timeout=180)

    result = faust_command(["replay", str(path), "--no-progress"], services, prefix_a, group_a)
    assert result.returncode == 0, result.stdout + result.stderr
    accepted = kinds["valid"] + PARTITIONS
    assert (
        f"lines {len(file_lines)}: accepted {accepted}, rejected {kinds['invalid']} ("
        in result.stdout
    ), result.stdout
    assert f"duplicates {kinds['duplicate']}, blank 0" in result.stdout, result.stdout
    await send_live(live.url, file_lines)

    valid = [e for e, kind in generate_labelled(PROFILE) if kind == "valid"]
    users = {e["user_id"] for e in valid if isinstance(e, dict)}
    got = await published(bootstrap, prefix_a, users)
    want = await published(bootstrap, prefix_b, users)
    assert len(got["kpis"]) == LAST_WINDOW // WINDOW_MS - START_MS // WINDOW_MS + 1
    assert not contract.compare_kpis(got["kpis"], want["kpis"])
    assert got["sessions"] and got["sessions"] == want["sessions"]
    assert got["pages"] and got["pages"] == want["pages"]

    async with TopicReader(bootstrap, f"{prefix_a}user-events-dlq") as reader:
        dead = [r.json() for r in await reader.read_to_end()]
    assert len(dead) == kinds["invalid"]
    assert all(d["source"] == "replay" and d["file"] == str(path) for d in dead)
    for letter in dead:  # the line's text, its addresses anonymised (privacy.ip)
        line = file_lines[letter["line"] - 1]
        if letter["raw_encoding"] == "utf-8":
            assert letter["raw"] == scrub_text(line.decode(), "anonymize")
