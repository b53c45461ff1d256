"""Every GET endpoint of the OpenAPI document, called on a real worker with real data, and each
answer (status and body) checked against the document's response for that path and status.

One worker (8 partitions) with database sinks on a fresh database takes a small day of traffic
over HTTP: page views, a purchase, the ``checkout`` funnel's stages, exposures to an A/B test;
then one closing event per partition an hour later in event time closes the sessions (the gap
is 30 minutes) and finalises the windows. Once every table has rows, the test asks each
endpoint (and a few wrong requests: a bad parameter, an unknown user, funnel or experiment)
and validates what comes back; a GET path of the document without a request here fails the
test, so a new endpoint must be added.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import jsonschema
import pytest

from analytics.timeutil import format_ts, parse_ts
from tests.databases import scratch_database
from tests.integration.test_api import closing_events, ingest
from tests.missing_services import service_missing
from tests.polling import poll
from tests.worker_process import Services, Worker, WorkerPool, new_group_id, new_topic_prefix
from web.api_params import MAX_MINUTES

pytestmark = pytest.mark.integration

PARTITIONS = 8
MINUTE = 60_000
START = parse_ts("2025-03-03T10:00:00Z")
DAY = "2025-03-03"
EXPERIMENT = "hero banner"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(worker: Worker, path: str, *, stream: bool = False) -> Answer:
    """GET ``path``; of an endless stream, only its first line."""
    try:
        with urllib.request.urlopen(worker.url + path, timeout=30) as response:
            body = response.readline() if stream else response.read()
            return Answer(response.status, response.headers.get_content_type(), body)
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers.get_content_type(), error.read())


def query(path: str, **params: Any) -> str:
    return f"{path}?{urllib.parse.urlencode(params)}"


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@dataclass
class Loaded:
    worker: Worker
    users: dict[str, str]


def traffic(users: dict[str, str]) -> list[dict[str, Any]]:
    a, b, c, d = (users[name] for name in "abcd")

    def event(user: str, offset_s: int, action: str, **fields: Any) -> dict[str, Any]:
        return {"user_id": user, "action": action, "timestamp": format_ts(START + offset_s * 1000),
                "device": "mobile" if user == a else "desktop", **fields}  # fmt: skip

    control = {"experiment": EXPERIMENT, "variant": "control"}
    green = {"experiment": EXPERIMENT, "variant": "green"}
    return [
        event(a, 1, "page_view", page="/products/1", duration=2000, metadata=control),
        event(a, 5, "add_to_cart", metadata=control),
        event(a, 9, "checkout"),
        event(a, 12, "purchase", metadata={"amount": 25.5}),
        event(b, 2, "page_view", page="/home", duration=1000, metadata=green),
        event(b, 70, "page_view", page="/products/2", duration=500, metadata=green),
        event(c, 3, "page_view", page="/products/1", duration=700),
        event(c, 65, "add_to_cart"),
        # still open when the closing events arrive (within 30 minutes of them)
        event(d, 50 * 60, "page_view", page="/home", duration=300),
    ]


def _has(worker: Worker, path: str, key: str) -> bool:
    answer = get(worker, path)
    return answer.status == 200 and bool(answer.json()[key])


@pytest.fixture(scope="module")
def loaded(services: Services, module_worker_factory: WorkerPool) -> Iterator[Loaded]:
    if not services.database_url:
        service_missing("PostgreSQL", "DATABASE_URL is not set")
    with scratch_database(services.database_url, "openapi") as database:
        worker = module_worker_factory(
            new_topic_prefix(), new_group_id(), extra_env={"DATABASE_URL": database}
        )
        worker.wait_ready(PARTITIONS, timeout=120)
        tag = uuid.uuid4().hex[:8]
        users = {name: f"user-{tag}-{name}" for name in "abcd"}
        ingest(worker, traffic(users))
        closing = closing_events(tag)
        for event in closing:
            event["timestamp"] = format_ts(START + 60 * MINUTE)
        ingest(worker, closing)
        range_ = {"from": format_ts(START), "to": format_ts(START + 2 * 60 * MINUTE)}
        days = {"from": DAY, "to": DAY}
        for path, key in (
            (query("/api/sessions", user_id=users["a"]), "sessions"),
            (query("/api/kpis", bucket="1h", **range_), "buckets"),
            (query("/api/pages/top", **range_), "pages"),
            (query("/api/funnels/checkout", **days), "days"),
            ("/api/experiments", "experiments"),
            (query("/api/cohorts", **days), "cohorts"),
        ):
            poll(partial(_has, worker, path, key), bool, 120, f"{key} of {path}")
        yield Loaded(worker, users)
        module_worker_factory.stop_all()


def requests(users: dict[str, str]) -> dict[str, list[tuple[str, int]]]:
    """Per GET path of the document: the requests made and the status each must answer."""
    a = quoted(users["a"])
    range_ = {"from": format_ts(START), "to": format_ts(START + 2 * 60 * MINUTE)}
    days = {"from": DAY, "to": DAY}
    return {
        "/health": [("/health", 200)],
        "/openapi.json": [("/openapi.json", 200)],
        "/api/kpis/current": [("/api/kpis/current", 200)],
        "/api/kpis": [
            (query("/api/kpis", **range_), 200),
            (query("/api/kpis", bucket="1m", **range_), 200),
            (query("/api/kpis", bucket="2m", **range_), 400),
        ],
        "/api/pages/top": [
            (query("/api/pages/top", minutes=MAX_MINUTES), 200),
            (query("/api/pages/top", **range_), 200),
            (query("/api/pages/top", minutes=5, **range_), 400),
        ],
        "/api/traffic": [
            (query("/api/traffic", dimension="device", minutes=MAX_MINUTES), 200),
            (query("/api/traffic", dimension="planet"), 400),
        ],
        "/api/users/{user_id}": [
            (f"/api/users/{a}", 200),
            (f"/api/users/{quoted('nobody-' + users['a'])}", 404),
        ],
        "/api/sessions": [
            (query("/api/sessions", user_id=users["a"]), 200),
            (query("/api/sessions", user_id=users["a"], limit=0), 400),
        ],
        "/api/sessions/{user_id}": [
            (f"/api/sessions/{a}", 200),
            (f"/api/sessions/{quoted(users['d'])}", 200),
            (f"/api/sessions/{quoted('nobody-' + users['a'])}", 404),
        ],
        "/api/funnels": [("/api/funnels", 200)],
        "/api/funnels/{name}": [
            (query("/api/funnels/checkout", **days), 200),
            (query("/api/funnels/nope", **days), 404),
            (query("/api/funnels/checkout", **{"from": DAY}), 400),
        ],
        "/api/experiments": [("/api/experiments", 200), (query("/api/experiments", limit=0), 400)],
        "/api/experiments/{name}": [
            (f"/api/experiments/{quoted(EXPERIMENT)}", 200),
            ("/api/experiments/never-run", 404),
        ],
        "/api/cohorts": [
            (query("/api/cohorts", **days), 200),
            (query("/api/cohorts", **days, days=-1), 400),
        ],
        "/api/alerts": [("/api/alerts", 200)],
        "/dashboard": [("/dashboard", 200)],
        "/dashboard/stream": [("/dashboard/stream", 200)],
    }


def problems_of(document: dict[str, Any], path: str, url: str, answer: Answer) -> list[str]:
    """What is wrong with ``answer`` to ``GET url`` by the document's ``path``: a status it
    does not list, another content type, a body its schema refuses."""
    where = f"GET {url} -> {answer.status}"
    responses = document["paths"][path]["get"]["responses"]
    response = responses.get(str(answer.status))
    if response is None:
        return [f"{where}: status not in the document ({', '.join(responses)})"]
    [(content_type, content)] = response["content"].items()
    if answer.content_type != content_type:
        return [f"{where}: content type {answer.content_type}, the document says {content_type}"]
    if content_type != "application/json":
        return []  # a page or a stream: its schema is a string
    validator = jsonschema.Draft202012Validator(
        {**document, **content["schema"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    return [
        f"{where}: {error.json_path}: {error.message}"
        for error in validator.iter_errors(answer.json())
    ]


def test_every_get_endpoint_answers_as_the_document_says(loaded: Loaded) -> None:
    document = get(loaded.worker, "/openapi.json").json()
    gets = {path for path, item in document["paths"].items() if "get" in item}
    asked = requests(loaded.users)
    assert gets == set(asked), f"GET paths without requests here: {sorted(gets - set(asked))}"
    problems = []
    for path, calls in asked.items():
        for url, status in calls:
            answer = get(loaded.worker, url, stream=path == "/dashboard/stream")
            if answer.status != status:
                problems.append(f"GET {url}: status {answer.status}, expected {status}")
            problems.extend(problems_of(document, path, url, answer))
    assert problems == [], "\n".join(problems)


def test_the_answers_hold_real_data(loaded: Loaded) -> None:
    """The validation above saw every kind of record, not empty lists."""
    a = quoted(loaded.users["a"])
    body = get(loaded.worker, f"/api/sessions/{a}").json()
    assert body["recent"] and body["profile"]["revenue_cents"] == 2550
    assert get(loaded.worker, f"/api/sessions/{quoted(loaded.users['d'])}").json()["sessions"]
    closed = get(loaded.worker, query("/api/sessions", user_id=loaded.users["a"])).json()
    assert closed["sessions"][0]["revenue_cents"] == 2550
    experiment = get(loaded.worker, f"/api/experiments/{quoted(EXPERIMENT)}").json()
    assert [v["variant"] for v in experiment["variants"]] == ["control", "green"]
    current = get(loaded.worker, "/api/kpis/current").json()
    assert current["kpi"] is not None
    assert get(
        loaded.worker, query("/api/traffic", dimension="device", minutes=MAX_MINUTES)
    ).json()["values"]
