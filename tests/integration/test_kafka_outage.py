"""Kafka stopped under HTTP traffic: bounded answers, a short log, health says why, and
everything resumes by itself (issue 11, item 2).

The test starts a broker of its own (tests/own_kafka.py), so stopping it disturbs no other
test, and one worker on it (no database sinks: the database is not the subject here). Three
clients post single events without their own event_id, about 30 requests/s, through a stop of
``OUTAGE_S`` seconds and a restart. Measured and asserted:

* every request is answered within ``sources.http.publish_timeout`` plus ``SLACK_S``: 202
  before and after, 503 with Retry-After while Kafka is down (nothing answered 202 then);
* ``GET /health`` answers 503 naming the broker address and the refused connection;
* the worker's log grows by at most ``MAX_OUTAGE_LOG_LINES`` during the outage and says
  "unreachable" and "reachable again" once each (before the aiokafka backoff and the repeat
  summary, 30 s of outage wrote 171,325 lines: app/kafka_backoff.py);
* after the restart ingestion answers 202 again by itself and the tracker processes again:
  every event answered 202 is in ``user-behavior-enriched`` exactly once, no event answered
  503 with ``"stored": "no"`` is there, and one answered ``"stored": "unknown"`` at most once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_helpers import barrier, is_sentinel, read_to_end
from tests.own_kafka import OwnBroker, own_broker
from tests.polling import poll
from tests.worker_process import Services, Worker, WorkerPool, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

OUTAGE_S = 40
PUBLISH_TIMEOUT_S = 3
RETRY_AFTER_S = 2
SLACK_S = 2.5  # an HTTP round trip on a busy 2-core machine, beyond the publish timeout
CLIENTS = 3
PAUSE_S = 0.1  # per client between requests: about 30 requests/s in all
MAX_OUTAGE_LOG_LINES = 150
RECOVERY_S = 60  # from the broker's restart until every answer is 202 again


@dataclass(slots=True)
class Answer:
    started: float
    elapsed: float
    status: int | None
    retry_after: str | None
    body: dict[str, Any]
    error: str | None = None


@dataclass
class Traffic:
    """Clients posting events until ``stop``; every answer is recorded."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            event = {"user_id": f"outage-u{n}-{i % 20}", "action": "page_view", "page": "/p"}
            self.answers.append(self._post(event))
            self._stop.wait(PAUSE_S)  # the clients' pace, not synchronisation

    def _post(self, event: dict[str, Any]) -> Answer:
        request = urllib.request.Request(
            self.url + "/ingest",
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, exc.headers, exc.read()
        except OSError as exc:
            return Answer(started, time.monotonic() - started, None, None, {}, repr(exc))
        elapsed = time.monotonic() - started
        return Answer(started, elapsed, status, headers.get("Retry-After"), json.loads(raw))

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.started < end]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[OwnBroker]:
    with own_broker(tmp_path / "kafka") as started:
        yield started


def _log_lines(worker: Worker) -> int:
    return len(worker.log_path.read_bytes().splitlines())


def _enriched_event_ids(broker: OwnBroker, worker: Worker) -> collections.Counter[str]:
    async def read() -> collections.Counter[str]:
        prefix = worker.topic_prefix
        await barrier(broker.bootstrap, prefix + "user-events", prefix + "user-behavior-enriched")
        records = await read_to_end(broker.bootstrap, prefix + "user-behavior-enriched")
        return collections.Counter(r.json()["event_id"] for r in records if not is_sentinel(r))

    return asyncio.run(read())


def test_a_broker_outage_under_traffic(broker: OwnBroker, tmp_path: Path) -> None:
    pool = WorkerPool(Services(broker.bootstrap, ""), tmp_path / "workers")
    worker = pool.start(
        new_topic_prefix(),
        new_group_id(),
        {
            "ANALYTICS__SINKS__TIMESCALEDB__TABLES": "[]",
            "ANALYTICS__SOURCES__HTTP__PUBLISH_TIMEOUT": f"{PUBLISH_TIMEOUT_S}s",
            "ANALYTICS__SOURCES__HTTP__RETRY_AFTER": f"{RETRY_AFTER_S}s",
        },
    )
    traffic = Traffic(worker.url)
    try:
        worker.wait_ready(8, timeout=120)
        traffic.start()
        poll(lambda: sum(a.status == 202 for a in traffic.answers), lambda n: n >= 50, 60, "202s")

        stopping = time.monotonic()
        broker.stop()
        stopped = time.monotonic()
        lines_at_stop = _log_lines(worker)
        down = poll(
            lambda: worker.health(timeout=10),
            lambda answer: (
                answer is not None
                and answer[0] == 503
                and answer[1]["ingest"]["accepting"] is False
            ),
            30,
            "/health answering 503 with ingestion refusing",
        )
        # the outage lasts OUTAGE_S; the traffic goes on meanwhile (a deadline, not a sync)
        traffic._stop.wait(max(0.0, stopped + OUTAGE_S - time.monotonic()))
        lines_during_outage = _log_lines(worker) - lines_at_stop
        restarting = time.monotonic()
        broker.start()
        restarted = time.monotonic()
        poll(
            lambda: [a.status for a in traffic.between(restarted, time.monotonic())],
            lambda statuses: statuses[-30:].count(202) == 30,
            RECOVERY_S,
            "30 answers of 202 in a row after the restart",
        )
        traffic.stop()
        health_after = poll(
            lambda: worker.health(), lambda a: a is not None and a[0] == 200, 30, "health 200"
        )
        enriched = _enriched_event_ids(broker, worker)
    finally:
        traffic.stop()
        pool.stop_all()

    answers = traffic.answers
    assert not [a for a in answers if a.status is None], "requests without an answer"
    slowest = max(answers, key=lambda a: a.elapsed)
    assert slowest.elapsed <= PUBLISH_TIMEOUT_S + SLACK_S, slowest
    assert {a.status for a in answers} == {202, 503}

    refused = [a for a in answers if a.status == 503]
    assert all(a.retry_after == str(RETRY_AFTER_S) for a in refused)
    assert all(a.body["stored"] in ("no", "unknown") and a.body["event_ids"] for a in refused)
    assert all("Kafka is unreachable" in a.body["error"] for a in refused)
    # once the worker has noticed (one publish timeout at most), nothing is accepted
    while_down = traffic.between(stopped + PUBLISH_TIMEOUT_S + SLACK_S, restarting)
    assert len(while_down) > OUTAGE_S, len(while_down)
    assert {a.status for a in while_down} == {503}
    assert sum(a.body["stored"] == "no" for a in while_down) >= len(while_down) - CLIENTS

    body = down[1]
    assert body["kafka"]["connected"] is False
    assert body["ingest"]["accepting"] is False
    assert broker.bootstrap in body["kafka"]["error"]
    assert "refused" in body["kafka"]["error"].lower()
    assert health_after[1]["ingest"]["accepting"] is True

    log = worker.log_path.read_text(errors="replace")
    assert lines_during_outage <= MAX_OUTAGE_LOG_LINES, worker.log_tail(MAX_OUTAGE_LOG_LINES)
    assert log.count("Kafka unreachable for HTTP ingestion") >= 1
    assert log.count("Kafka reachable again after") == log.count(
        "Kafka unreachable for HTTP ingestion"
    )

    accepted = [a.body["event_id"] for a in answers if a.status == 202]
    assert [e for e in accepted if enriched[e] != 1] == []
    never = [e for a in refused if a.body["stored"] == "no" for e in a.body["event_ids"]]
    assert [e for e in never if e in enriched] == []
    unknown = [e for a in refused if a.body["stored"] == "unknown" for e in a.body["event_ids"]]
    assert [e for e in unknown if enriched[e] > 1] == []
    first_202 = min(
        a.started + a.elapsed for a in answers if a.started >= restarted - 1 and a.status == 202
    )
    print(
        f"outage {restarting - stopping:.1f} s (broker stop took {stopped - stopping:.1f} s, "
        f"start {restarted - restarting:.1f} s): {len(answers)} requests, {len(refused)} "
        f"answered 503, slowest {slowest.elapsed:.2f} s, {lines_during_outage} log lines; "
        f"first 202 {first_202 - restarted:.1f} s after the broker served again"
    )
