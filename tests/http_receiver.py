"""An HTTP receiver for tests: a POST handler served on a free local port in the test's own
event loop (the alert webhook's tests deliver to one)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from tests.worker_process import free_port


@contextlib.asynccontextmanager
async def serving_posts(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str = "/hook"
) -> AsyncIterator[str]:
    """``handle`` answering POSTs to ``path`` on 127.0.0.1; yields the URL, stops at exit."""
    application = web.Application()
    application.router.add_post(path, handle)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()
