"""Reading an ingest body (web/request_body.py) on a real aiohttp server: within its limit,
and a body whose Content-Encoding cannot be undone is the client's mistake (400 and a dead
letter naming the encoding), not a 500 as it was before fuzzing found it (issue 11)."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from web.ingestion import unreadable
from web.request_body import close_after, read_body

LIMIT = 1000
EVENT = b'{"user_id":"u1","action":"click"}'


async def _echo(request: web.Request) -> web.Response:
    body = await read_body(cast(Any, request), LIMIT)
    response = web.json_response(
        {"raw": body.raw.decode(), "oversize": body.oversize, "unreadable": body.unreadable}
    )
    return close_after(response) if body.unreadable else response


@pytest_asyncio.fixture(loop_scope="function")
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    application = web.Application()
    application.router.add_post("/ingest", _echo)
    async with TestClient(TestServer(application)) as test_client:
        yield test_client


async def _read(client: TestClient[Any, Any], body: Any, **headers: str) -> dict[str, Any]:
    response = await client.post("/ingest", data=body, headers=headers)
    assert response.status == 200, await response.text()
    return cast(dict[str, Any], await response.json())


async def test_a_body_within_the_limit_is_read_whole(client: TestClient[Any, Any]) -> None:
    assert await _read(client, EVENT) == {"raw": EVENT.decode(), "oversize": None} | {
        "unreadable": None
    }


async def test_a_compressed_body_is_read_decoded(client: TestClient[Any, Any]) -> None:
    for encoding, data in (("gzip", gzip.compress(EVENT)), ("deflate", zlib.compress(EVENT))):
        read = await _read(client, data, **{"Content-Encoding": encoding})
        assert read["raw"] == EVENT.decode() and read["unreadable"] is None


async def test_a_body_not_in_its_content_encoding_is_unreadable_and_the_answer_closes(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for encoding in ("gzip", "deflate", "gzip"):  # one after the other: no dropped connection
        response = await client.post("/ingest", data=EVENT, headers={"Content-Encoding": encoding})
        assert response.status == 200 and response.headers["Connection"] == "close"
        assert (await response.json())["unreadable"] == (
            f"Content-Encoding '{encoding}', but the body is not {encoding} data"
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback logged


async def test_bodies_over_the_limit_give_their_size(client: TestClient[Any, Any]) -> None:
    declared = await _read(client, b"x" * 5000)
    assert declared["oversize"] == 5000 and len(declared["raw"]) <= 5000

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: read one byte past it
        for _ in range(5):
            yield b"x" * 1000

    streamed = await _read(client, chunked())
    assert streamed["oversize"] == LIMIT + 1 and len(streamed["raw"]) == LIMIT + 1


def test_an_unreadable_body_is_a_400_naming_the_body_and_one_dead_letter() -> None:
    why = "Content-Encoding 'gzip', but the body is not gzip data"
    outcome = unreadable(why, "http", b"", received_ms=1)
    assert outcome.status == 400 and not outcome.accepted
    assert outcome.body == {"error": f"body: {why}", "errors": [{"field": "body", "message": why}]}
    (letter,) = outcome.dead_letters
    assert letter["source"] == "http" and letter["error"] == f"body: {why}"
