"""Read an ingest request's body within its limit, whatever the client sent.

aiohttp undoes a ``Content-Encoding`` (gzip, deflate) while the body is read; a body labelled
so that is not such data (or a payload aiohttp cannot parse otherwise) raises while reading.
That is the client's mistake, answered 400 and dead-lettered like any bad body
(web/ingestion.py), never a 500 (found by fuzzing, issue 11). The answer closes the connection
(``close_after``): what is left of the body on it was never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web as aiohttp_web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_response import StreamResponse
from faust import web

from analytics.dead_letters import RAW_LIMIT

CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Body:
    """What was read: the bytes (decoded), the size when over the limit, and why the rest
    could not be read (a wrong ``Content-Encoding``), when it could not."""

    raw: bytes
    oversize: int | None = None
    unreadable: str | None = None


async def read_body(request: web.Request, limit: int) -> Body:
    """Read at most ``limit + 1`` bytes.

    A body declared larger than the limit is read only as far as the dead letter keeps it
    (analytics.dead_letters.RAW_LIMIT), so its raw payload is recorded without buffering all
    of it."""
    http_request = cast(aiohttp_web.Request, request)
    declared = http_request.content_length
    wanted = limit + 1
    if declared is not None and declared > limit:
        wanted = min(declared, RAW_LIMIT)
    content = http_request.content
    chunks: list[bytes] = []
    size = 0
    while size < wanted:
        try:
            chunk = await content.read(min(CHUNK_BYTES, wanted - size))
        except aiohttp_web.RequestPayloadError as exc:
            # the rest cannot be read: marked ended, aiohttp does not try again after the
            # answer (which would log a traceback and drop the connection unannounced)
            content.feed_eof()
            return Body(b"".join(chunks), unreadable=_why(exc, http_request))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    if declared is not None and declared > limit:
        return Body(raw, oversize=declared)
    return Body(raw, oversize=size if size > limit else None)


def _why(exc: aiohttp_web.RequestPayloadError, request: aiohttp_web.Request) -> str:
    cause = exc.__cause__
    if isinstance(cause, ContentEncodingError):
        encoding = request.headers.get("Content-Encoding", "")
        return f"Content-Encoding {encoding!r}, but the body is not {encoding} data"
    detail = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
    return f"the body could not be read: {detail}"


def close_after(response: Any) -> Any:
    """The answer to an unreadable body, sent with ``Connection: close``."""
    cast(StreamResponse, response).force_close()
    return response
