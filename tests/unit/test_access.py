"""web/access.py on a small aiohttp application of its own: which request needs what, 401 and
403 with messages that say what to send, the constant-time lookup, per-key rate limits with
429 and Retry-After, and the destructive-operation guard (issue 13's ``DELETE
/api/users/{id}`` will sit behind it; here a stand-in route). Real workers:
tests/integration/test_access.py; a browser on another origin: tests/e2e/test_access_browser.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.settings import AccessSettings
from web.access import (
    Credentials,
    Need,
    Refusal,
    Role,
    check,
    middleware,
    presented,
    required,
)

INGEST_KEY = "ingest-key-shop-0123456789"
OTHER_KEY = "ingest-key-app-9876543210ab"
READ = "read-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
LOCKED = AccessSettings(
    ingest_keys={"shop": {"key": INGEST_KEY, "rate_limit": "3/minute"}, "app": OTHER_KEY},
    read_token=READ,
    admin_token=ADMIN,
)


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest_asyncio.fixture(loop_scope="function")
async def client(request: pytest.FixtureRequest) -> AsyncIterator[TestClient[Any, Any]]:
    settings = getattr(request, "param", LOCKED)
    application = web.Application(middlewares=[middleware(settings, "/ingest")])
    for method, path in [
        ("POST", "/ingest"),
        ("POST", "/ingest/batch"),
        ("GET", "/api/kpis/current"),
        ("GET", "/dashboard/stream"),
        ("GET", "/health"),
        ("DELETE", "/api/users/{user_id}"),  # stands for issue 13's erasure endpoint
    ]:
        application.router.add_route(method, path, _ok)
    async with TestClient(TestServer(application)) as test_client:
        yield test_client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{secret}".encode()).decode()}


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("POST", "/ingest", Need.INGEST),
        ("POST", "/ingest/batch", Need.INGEST),
        ("GET", "/ingest", Need.READ),
        ("OPTIONS", "/ingest", Need.NOTHING),
        ("GET", "/health", Need.NOTHING),
        ("GET", "/metrics", Need.NOTHING),
        ("GET", "/openapi.json", Need.NOTHING),
        ("GET", "/api/users/u1", Need.READ),
        ("HEAD", "/dashboard", Need.READ),
        ("GET", "/router", Need.READ),
        ("DELETE", "/api/users/u1", Need.ADMIN),
        ("POST", "/api/anything", Need.ADMIN),
        ("PUT", "/ingest", Need.ADMIN),
    ],
)
def test_each_request_is_classed_by_method_and_path(method: str, path: str, need: Need) -> None:
    assert required(method, path, "/ingest") is need


def test_secrets_are_read_from_the_key_header_bearer_or_basic_password() -> None:
    assert presented({"X-API-Key": "k1"}) == "k1"
    assert presented(bearer("k2")) == "k2"
    assert presented(basic("k3")) == "k3"
    assert presented({"Authorization": "Basic not-base64!"}) is None
    assert presented({"Authorization": "Digest x"}) is None
    assert presented({}) is None


def test_every_configured_secret_is_known_by_its_role_and_name() -> None:
    credentials = Credentials(LOCKED)
    shop = credentials.identify(INGEST_KEY)
    assert shop is not None and (shop.role, shop.name) == (Role.INGEST, "shop")
    other = credentials.identify(OTHER_KEY)
    assert other is not None and other.name == "app"
    assert credentials.identify(READ) is not None
    assert credentials.identify(INGEST_KEY[:-1]) is None
    assert credentials.identify("") is None


def test_nothing_configured_leaves_ingest_and_reads_open_but_not_destruction() -> None:
    credentials = Credentials(AccessSettings())
    assert check(Need.INGEST, None, credentials) is None
    assert check(Need.READ, None, credentials) is None
    refusal = check(Need.ADMIN, None, credentials)
    assert isinstance(refusal, Refusal) and refusal.status == 403


async def test_ingest_needs_a_key(client: TestClient[Any, Any]) -> None:
    missing = await client.post("/ingest", json={})
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="analytics"'
    assert (await missing.json())["error"] == (
        "this endpoint needs an ingest key: send it as X-API-Key: <key> or "
        "Authorization: Bearer <key>"
    )
    wrong = await client.post("/ingest", json={}, headers={"X-API-Key": "guessed-key-000000000"})
    assert wrong.status == 401
    assert "not valid" in (await wrong.json())["error"]
    assert "guessed" not in await wrong.text()  # a secret is never echoed
    read = await client.post("/ingest/batch", json={}, headers=bearer(READ))
    assert read.status == 403
    assert (await read.json())["error"] == (
        "a read credential cannot do this: it needs an ingest key"
    )
    assert (await client.post("/ingest", json={}, headers={"X-API-Key": OTHER_KEY})).status == 200
    assert (await client.post("/ingest", json={}, headers=bearer(OTHER_KEY))).status == 200


async def test_reads_need_the_read_or_admin_token(client: TestClient[Any, Any]) -> None:
    missing = await client.get("/api/kpis/current")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith('Basic realm="analytics"')
    assert (await missing.json())["error"] == (
        "this endpoint needs the read token: send it Authorization: Bearer <token>"
    )
    assert (await client.get("/api/kpis/current", headers={"X-API-Key": OTHER_KEY})).status == 403
    assert (await client.get("/api/kpis/current", headers=bearer(READ))).status == 200
    assert (await client.get("/dashboard/stream", headers=basic(READ))).status == 200
    assert (await client.get("/api/kpis/current", headers=bearer(ADMIN))).status == 200
    assert (await client.get("/health")).status == 200


async def test_destructive_operations_need_the_admin_token(client: TestClient[Any, Any]) -> None:
    assert (await client.delete("/api/users/u1")).status == 401
    as_reader = await client.delete("/api/users/u1", headers=bearer(READ))
    assert as_reader.status == 403
    assert (await as_reader.json())["error"] == (
        "a read credential cannot do this: it needs the admin token"
    )
    assert (await client.delete("/api/users/u1", headers=bearer(ADMIN))).status == 200


async def test_paths_and_methods_the_server_lacks_get_404_and_405_for_anyone(
    client: TestClient[Any, Any],
) -> None:
    assert (await client.post("/nothing-here", json={})).status == 404
    assert (await client.put("/api/kpis/current")).status == 405
    assert (await client.get("/api/unknown")).status == 404


@pytest.mark.parametrize("client", [AccessSettings()], indirect=True)
async def test_without_an_admin_token_destructive_operations_are_disabled(
    client: TestClient[Any, Any],
) -> None:
    refused = await client.delete("/api/users/u1", headers=bearer(ADMIN))
    assert refused.status == 403
    assert (await refused.json())["error"] == (
        "destructive operations are disabled: no admin token is configured (access.admin_token)"
    )
    assert (await client.post("/ingest", json={})).status == 200  # the rest stays open
    assert (await client.get("/api/kpis/current")).status == 200


async def test_each_key_has_its_own_rate_limit(client: TestClient[Any, Any]) -> None:
    shop = {"X-API-Key": INGEST_KEY}
    statuses = [(await client.post("/ingest", json={}, headers=shop)).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    over = await client.post("/ingest", json={}, headers=shop)
    assert over.status == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    message = (await over.json())["error"]
    assert message.startswith("the key 'shop' is over its rate limit of 3/minute; retry in ")
    # another key (no limit configured) is not held back by it
    assert (await client.post("/ingest", json={}, headers={"X-API-Key": OTHER_KEY})).status == 200
