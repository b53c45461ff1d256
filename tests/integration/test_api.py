"""The query API (web/api.py) against real workers: exact answers for a handful of events.

One worker (8 partitions) serves the module. Its events carry past timestamps in two windows;
then one *closing* event per partition (sentinel user_ids, as in the e2e contract test), later
in event time, moves every partition's watermark past them. The closing window itself becomes
final once the stream has been idle for about ``grace`` (SPEC 6), so after waiting for it every
answer is fixed and can be compared exactly. A second test runs two workers and asks both for
the same things: each must answer like the other (Faust table routing).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from analytics.timeutil import format_ts, parse_ts
from tests.kafka_helpers import partition_for, sentinel_user_ids
from tests.polling import poll
from tests.worker_process import Worker, WorkerPool, new_group_id, new_topic_prefix

pytestmark = pytest.mark.integration

PARTITIONS = 8
MINUTE = 60_000
START = parse_ts("2025-03-03T10:00:00Z")
CLOSING_START = START + 10 * MINUTE
# the last millisecond of its window: the window closes after ~grace of idle stream
CLOSING_TS = CLOSING_START + MINUTE - 1
API_PATHS = {
    "/ingest",
    "/ingest/batch",
    "/health",
    "/openapi.json",
    "/api/kpis/current",
    "/api/kpis",
    "/api/sessions",  # closed sessions from the database (tests/integration/test_history_api.py)
    "/api/sessions/{user_id}",
    "/api/funnels",  # the configuration; /api/funnels/{name} reads the database
    "/api/funnels/{name}",
    "/api/experiments",  # from the database (tests/integration/test_history_api.py)
    "/api/experiments/{name}",
    "/api/cohorts",
    "/api/alerts",  # read from kpi-alerts (tests/e2e/test_alerts_contract.py)
    "/api/users/{user_id}",
    "/api/pages/top",
    "/api/traffic",
    "/dashboard",
    "/dashboard/stream",
}


def http(worker: Worker, path: str, body: Any = None) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON) and return (status, decoded JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        worker.url + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def user_path(kind: str, user_id: str) -> str:
    return f"/api/{kind}/{urllib.parse.quote(user_id, safe='')}"


def ts(offset_ms: int) -> str:
    return format_ts(START + offset_ms)


def closing_events(tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"closing-{tag}-{partition}",
            "user_id": user_id,
            "action": "closing",
            "timestamp": format_ts(CLOSING_TS),
        }
        for partition, user_id in sorted(sentinel_user_ids(PARTITIONS, tag).items())
    ]


def ingest(worker: Worker, events: list[dict[str, Any]]) -> None:
    status, body = http(worker, "/ingest/batch", {"events": events})
    assert (status, body["rejected"]) == (202, []), body
    assert len(body["accepted"]) == len(events)


def final_windows(worker: Worker, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Poll ``GET /api/kpis`` over the test's windows, closing one included, until ``count``
    of them are final."""
    query = urllib.parse.urlencode({"from": format_ts(START), "to": format_ts(START + 11 * MINUTE)})

    def fetch() -> tuple[int, Any]:
        return http(worker, f"/api/kpis?{query}")

    def done(answer: tuple[int, Any]) -> bool:
        status, body = answer
        return status == 200 and sum(k["is_final"] for k in body["windows"]) == count

    windows: list[dict[str, Any]] = poll(fetch, done, timeout, f"{count} final windows")[1][
        "windows"
    ]
    return windows


@dataclass
class Loaded:
    worker: Worker
    users: dict[str, str]  # a, b, c -> user_id
    windows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def loaded(module_worker_factory: WorkerPool) -> Iterator[Loaded]:
    worker = module_worker_factory(new_topic_prefix(), new_group_id())
    worker.wait_ready(PARTITIONS)
    t = uuid.uuid4().hex[:8]
    users = {name: f"user-{t}-{name}" for name in ("a", "b", "c")}
    a, b, c = users["a"], users["b"], users["c"]
    events: list[dict[str, Any]] = [
        {"user_id": a, "session_id": "s1", "action": "page_view", "page": "/home",
         "timestamp": ts(1000), "duration": 1000, "device": "mobile", "country": "de"},
        {"user_id": a, "session_id": "s1", "action": "page_view", "page": "/products",
         "timestamp": ts(5000), "duration": 3000, "device": "mobile", "country": "de"},
        {"user_id": a, "session_id": "s1", "action": "purchase", "timestamp": ts(10_000),
         "metadata": {"amount": 25.5}, "device": "mobile", "country": "de"},
        {"user_id": b, "action": "page_view", "page": "/home", "timestamp": ts(2000),
         "duration": 2000, "device": "desktop", "country": "US"},
        {"user_id": b, "action": "page_view", "page": "/home", "timestamp": ts(61_000),
         "duration": 500, "device": "desktop", "country": "US"},
        {"user_id": c, "action": "click", "timestamp": ts(70_000)},
    ]  # fmt: skip
    ingest(worker, events)
    ingest(worker, closing_events(t))
    yield Loaded(worker, users, final_windows(worker, 3))


# --------------------------------------------------------------------------- KPIs


def _figures(record: dict[str, Any]) -> dict[str, Any]:
    names = (
        "window_start",
        "window_end",
        "total_users",
        "active_users",
        "new_users",
        "total_sessions",
        "total_page_views",
        "total_events",
        "total_revenue",
        "total_revenue_cents",
        "total_conversions",
        "purchases",
        "average_order_value",
        "revenue_per_user",
        "average_session_duration_seconds",
        "bounce_rate_percent",
        "conversion_rate_percent",
        "conversions_per_session",
        "is_final",
    )
    return {name: record[name] for name in names}


W0 = {
    "window_start": ts(0),
    "window_end": ts(MINUTE),
    "total_users": 2,
    "active_users": 2,
    "new_users": 2,
    "total_sessions": 2,
    "total_page_views": 3,
    "total_events": 4,
    "total_revenue": 25.5,
    "total_revenue_cents": 2550,
    "total_conversions": 1,
    "purchases": 1,
    "average_order_value": 25.5,
    "revenue_per_user": 12.75,
    "average_session_duration_seconds": 4.5,
    "bounce_rate_percent": 50.0,
    "conversion_rate_percent": 50.0,
    "conversions_per_session": 0.5,
    "is_final": True,
}
W1 = {
    "window_start": ts(MINUTE),
    "window_end": ts(2 * MINUTE),
    "total_users": 3,
    "active_users": 2,
    "new_users": 1,
    "total_sessions": 2,
    "total_page_views": 1,
    "total_events": 2,
    "total_revenue": 0.0,
    "total_revenue_cents": 0,
    "total_conversions": 0,
    "purchases": 0,
    "average_order_value": 0.0,
    "revenue_per_user": 0.0,
    "average_session_duration_seconds": 29.5,
    "bounce_rate_percent": 50.0,
    "conversion_rate_percent": 0.0,
    "conversions_per_session": 0.0,
    "is_final": True,
}
CLOSING = {
    "window_start": format_ts(CLOSING_START),
    "window_end": format_ts(CLOSING_START + MINUTE),
    "total_users": 11,
    "active_users": 8,
    "new_users": 8,
    "total_sessions": 8,
    "total_page_views": 0,
    "total_events": 8,
    "total_revenue": 0.0,
    "total_revenue_cents": 0,
    "total_conversions": 0,
    "purchases": 0,
    "average_order_value": 0.0,
    "revenue_per_user": 0.0,
    "average_session_duration_seconds": 0.0,
    "bounce_rate_percent": 100.0,
    "conversion_rate_percent": 0.0,
    "conversions_per_session": 0.0,
    "is_final": True,
}


def test_kpi_history_holds_the_final_windows(loaded: Loaded) -> None:
    assert [_figures(k) for k in loaded.windows] == [W0, W1, CLOSING]
    w0, w1, _ = loaded.windows
    assert w0["average_engagement_score"] == pytest.approx((24.4 + 11.2) / 2)
    assert w1["trends"]["total_events"] == {"change_percent": -50.0, "trend": "down"}
    assert w1["trends"]["active_users"] == {"change_percent": 0.0, "trend": "stable"}
    assert all(k["late_events_total"] == 0 for k in loaded.windows)


def test_kpi_range_is_half_open_and_bounds_are_optional(loaded: Loaded) -> None:
    status, body = http(loaded.worker, f"/api/kpis?from={ts(0)}&to={ts(MINUTE)}")
    assert status == 200
    assert (body["from"], body["to"]) == (ts(0), ts(MINUTE))
    assert [_figures(k) for k in body["windows"]] == [W0]
    status, body = http(loaded.worker, f"/api/kpis?from={ts(MINUTE)}")
    assert (status, body["to"]) == (200, None)
    assert [_figures(k) for k in body["windows"]] == [W1, CLOSING]
    status, body = http(loaded.worker, "/api/kpis?to=2025-03-03T10:00:59%2B00:00")
    assert [_figures(k) for k in body["windows"]] == [W0]
    status, body = http(loaded.worker, "/api/kpis")
    assert [_figures(k) for k in body["windows"]] == [W0, W1, CLOSING]


def test_current_kpis_are_the_newest_window(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/api/kpis/current")
    assert status == 200
    assert _figures(body["kpi"]) == CLOSING
    assert body["kpi"] == loaded.windows[-1]


# --------------------------------------------------------------------------- pages, traffic


def test_top_pages(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/api/pages/top?minutes=60&limit=10")
    assert status == 200
    as_of = parse_ts(body["as_of"])
    assert as_of >= CLOSING_START + MINUTE  # the closing window is final
    assert body["from"] == format_ts(as_of - 60 * MINUTE)
    assert (body["minutes"], body["limit"]) == (60, 10)
    assert body["windows"] == [ts(0), ts(MINUTE), format_ts(CLOSING_START)]
    assert body["pages"] == [
        {
            "page": "/home",
            "views": 3,
            "visitor_windows": 3,
            "total_time_on_page_ms": 3500,
            "avg_time_on_page_ms": pytest.approx(3500 / 3),
        },
        {
            "page": "/products",
            "views": 1,
            "visitor_windows": 1,
            "total_time_on_page_ms": 3000,
            "avg_time_on_page_ms": 3000.0,
        },
    ]
    status, body = http(loaded.worker, "/api/pages/top?limit=1")
    assert (status, body["minutes"]) == (200, 60)
    assert [p["page"] for p in body["pages"]] == ["/home"]


def _traffic(values: list[tuple[str, int, int, int, int]]) -> list[dict[str, Any]]:
    return [
        {
            "value": value,
            "events": events,
            "user_windows": users,
            "page_views": views,
            "revenue": cents / 100,
            "revenue_cents": cents,
        }
        for value, events, users, views, cents in values
    ]


@pytest.mark.parametrize(
    ("dimension", "expected"),
    [
        ("device", [("unknown", 9, 9, 0, 0), ("mobile", 3, 1, 2, 2550), ("desktop", 2, 2, 2, 0)]),
        ("country", [("unknown", 9, 9, 0, 0), ("DE", 3, 1, 2, 2550), ("US", 2, 2, 2, 0)]),
        ("browser", [("unknown", 14, 12, 4, 2550)]),
    ],
)
def test_traffic_by_dimension(
    loaded: Loaded, dimension: str, expected: list[tuple[str, int, int, int, int]]
) -> None:
    status, body = http(loaded.worker, f"/api/traffic?dimension={dimension}&minutes=1440")
    assert status == 200
    assert (body["dimension"], body["minutes"]) == (dimension, 1440)
    assert body["windows"] == [ts(0), ts(MINUTE), format_ts(CLOSING_START)]
    assert body["values"] == _traffic(expected)


# --------------------------------------------------------------------------- users, sessions


def test_user_profile(loaded: Loaded) -> None:
    a = loaded.users["a"]
    status, body = http(loaded.worker, user_path("users", a))
    assert status == 200
    assert body == {
        "user_id": a,
        "first_seen": ts(1000),
        "last_seen": ts(10_000),
        "events": 3,
        "revenue": 25.5,
        "revenue_cents": 2550,
        "devices": ["mobile"],
        "countries": ["DE"],
        "closed_sessions": 0,
        "open_sessions": 1,
    }
    status, body = http(loaded.worker, user_path("users", loaded.users["c"]))
    assert status == 200
    assert (body["events"], body["devices"], body["countries"]) == (1, ["unknown"], [])


def test_user_sessions_are_open_with_live_figures(loaded: Loaded) -> None:
    a, b = loaded.users["a"], loaded.users["b"]
    status, body = http(loaded.worker, user_path("sessions", a))
    assert status == 200
    assert body["user_id"] == a
    assert body["profile"] == http(loaded.worker, user_path("users", a))[1]
    assert body["recent"] == []  # nothing closed yet: the closing events are within the gap
    assert body["sessions"] == [
        {
            "user_id": a,
            "session_id": "s1",
            "window_start": ts(1000),
            "window_end": ts(10_000),
            "duration_seconds": 9.0,
            "total_events": 3,
            "actions": {"page_view": 2, "purchase": 1},
            "pages": {"/home": 1, "/products": 1},
            "unique_pages": 2,
            "total_duration_ms": 4000,
            "average_duration_ms": pytest.approx(4000 / 3),
            "device_type": "mobile",
            "country": "DE",
            "is_bounce": False,
            "conversions": 1,
            "revenue": 25.5,
            "revenue_cents": 2550,
            "engagement_score": pytest.approx(24.4),
            "open": True,
        }
    ]
    status, body = http(loaded.worker, user_path("sessions", b))
    assert status == 200
    [session] = body["sessions"]
    assert (session["session_id"], session["total_events"], session["duration_seconds"]) == (
        "",
        2,
        59.0,
    )


def test_unknown_user_is_404(loaded: Loaded) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    for kind in ("users", "sessions"):
        assert http(loaded.worker, user_path(kind, nobody)) == (
            404,
            {"error": f"unknown user {nobody!r}"},
        )


# --------------------------------------------------------------------------- errors, docs


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/api/pages/top?minutes=0", "minutes: must be a whole number from 1 to 1440, got '0'"),
        ("/api/pages/top?minutes=abc", "minutes: must be a whole number from 1 to 1440"),
        ("/api/pages/top?limit=101", "limit: must be a whole number from 1 to 100, got '101'"),
        ("/api/pages/top?limit=2&limit=3", "limit: given more than once"),
        ("/api/traffic", "dimension: required, one of device, country, browser"),
        ("/api/traffic?dimension=os", "dimension: must be one of device, country, browser"),
        ("/api/traffic?dimension=device&minutes=1441", "minutes: must be a whole number"),
        ("/api/kpis?from=yesterday", "from: must be an RFC 3339 timestamp"),
        (f"/api/kpis?from={ts(MINUTE)}&to={ts(0)}", "to: must be later than from"),
        ("/api/kpis?start=2025-03-03T10:00:00Z", "start: unknown parameter"),
        ("/api/kpis/current?verbose=1", "verbose: unknown parameter"),
        ("/api/users/" + "x" * 129, "user_id: must be 1 to 128 characters, got 129"),
        ("/api/sessions/someone?full=1", "full: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(loaded: Loaded, path: str, error: str) -> None:
    status, body = http(loaded.worker, path)
    assert status == 400
    assert list(body) == ["error"]
    assert body["error"].startswith(error)


def test_openapi_lists_every_path(loaded: Loaded) -> None:
    status, body = http(loaded.worker, "/openapi.json")
    assert status == 200
    assert body["openapi"].startswith("3.1")
    assert set(body["paths"]) == API_PATHS
    for path in API_PATHS - {"/ingest", "/ingest/batch"}:
        assert "200" in body["paths"][path]["get"]["responses"], path
    assert "404" in body["paths"]["/api/users/{user_id}"]["get"]["responses"]
    assert "400" in body["paths"]["/api/traffic"]["get"]["responses"]


# --------------------------------------------------------------------------- two workers


def _owned(worker: Worker) -> set[int]:
    health = worker.health()
    assert health is not None and health[0] == 200, health
    return set(health[1]["worker"]["user_events_partitions"])


def known_user(worker: Worker, user_id: str) -> tuple[int, Any]:
    """``GET /api/users/{user_id}`` once the user's first event has been processed."""
    answer: tuple[int, Any] = poll(
        lambda: http(worker, user_path("users", user_id)),
        lambda answer: answer[0] == 200,
        60,
        f"GET /api/users/{user_id} on {worker.name}",
    )
    return answer


def test_two_workers_answer_alike(
    worker_factory: WorkerPool, topic_prefix: str, group_id: str
) -> None:
    workers = [worker_factory(topic_prefix, group_id) for _ in range(2)]
    for worker in workers:
        worker.wait_ready(PARTITIONS, timeout=120)
    owned = [_owned(worker) for worker in workers]
    assert owned[0] and owned[1] and not owned[0] & owned[1]

    # users on both workers' partitions, one with characters that need URL encoding
    t = uuid.uuid4().hex[:8]
    candidates = [f"user {t} ü/{n}" if n == 0 else f"user-{t}-{n}" for n in range(64)]
    chosen: list[str] = []
    for side in owned:
        chosen += [u for u in candidates if partition_for(u.encode(), PARTITIONS) in side][:2]
    events = [
        {"user_id": user, "action": "page_view", "page": f"/p{n % 2}", "timestamp": ts(n * 1000)}
        for n, user in enumerate(chosen)
    ]
    ingest(workers[0], events + closing_events(t))

    for n, user in enumerate(chosen):
        answers = [known_user(worker, user) for worker in workers]
        assert answers[0] == answers[1]
        assert answers[0][1]["first_seen"] == ts(n * 1000)
        assert answers[0][1]["events"] == 1
        sessions = [http(worker, user_path("sessions", user)) for worker in workers]
        assert sessions[0] == sessions[1]
        assert sessions[0][0] == 200 and len(sessions[0][1]["sessions"]) == 1

    nobody = f"nobody-{t}"
    for worker in workers:
        assert http(worker, user_path("users", nobody))[0] == 404

    windows = final_windows(workers[1], 2)
    assert windows == final_windows(workers[0], 2)
    assert [k["total_events"] for k in windows] == [len(chosen), PARTITIONS]
    assert http(workers[0], "/api/kpis/current") == http(workers[1], "/api/kpis/current")
    # as_of follows the watermark, which moves on with the wall clock between the two calls
    pages = [http(worker, "/api/pages/top?minutes=1440")[1] for worker in workers]
    assert pages[0]["windows"] == pages[1]["windows"] == [ts(0), format_ts(CLOSING_START)]
    assert pages[0]["pages"] == pages[1]["pages"]
    assert [(p["page"], p["views"]) for p in pages[0]["pages"]] == [("/p0", 2), ("/p1", 2)]
