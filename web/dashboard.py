"""The built-in live dashboard (docs/dashboard.md): ``GET /dashboard`` serves a page whose
scripts and style come from this package (web/static/), and ``GET /dashboard/stream`` pushes
the KPI windows to it as Server-Sent Events from the worker's live feed (web/live_feed.py).
Its funnel, retention and A/B test panels (panels.js) read the API instead, every 10 s: those
figures are database rows (web/funnel_views.py, web/cohort_views.py, web/experiment_views.py).

Nothing is loaded from the internet: the page is plain HTML, CSS and hand-written JavaScript
drawing inline SVG, and its Content-Security-Policy allows only this server.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any, cast

from aiohttp import web as aiohttp_web
from faust import web

from app import app, faust_compat
from web.live_feed import feed

ASSET_TYPES = {
    "dashboard.js": "text/javascript",
    "panels.js": "text/javascript",
    "dashboard.css": "text/css",
}
PAGE_FILE = "dashboard.html"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _static(name: str) -> bytes:
    """A file of web/static, installed as package data (pyproject.toml)."""
    return resources.files("web").joinpath("static", name).read_bytes()


PAGE = _static(PAGE_FILE)
ASSETS = {name: _static(name) for name in ASSET_TYPES}


def _file(body: bytes, content_type: str, **headers: str) -> Any:
    """A UTF-8 text file; ``no-cache`` so a restarted worker's new files are picked up."""
    return aiohttp_web.Response(
        body=body, content_type=content_type, charset="utf-8", headers={**HEADERS, **headers}
    )


@app.page("/dashboard")
class DashboardView(web.View):
    """The dashboard page."""

    async def get(self, request: web.Request) -> Any:
        return _file(PAGE, "text/html", **{"Content-Security-Policy": CSP})


@app.page("/dashboard/static/{name}")
class DashboardAssetView(web.View):
    """The page's script and style; nothing else is served from the folder."""

    async def get(self, request: web.Request, name: str) -> Any:
        if name not in ASSETS:
            return self.error(404, f"no dashboard asset {name!r}")
        return _file(ASSETS[name], ASSET_TYPES[name])


@app.page("/dashboard/stream")
class DashboardStreamView(web.View):
    """Server-Sent Events: a ``snapshot`` first, then ``kpi`` and ``breakdowns`` as they come.

    The stream ends when the worker stops (the browser's EventSource then reconnects, to this
    worker or another) or when the browser falls too far behind."""

    async def get(self, request: web.Request) -> Any:
        http_request = cast(aiohttp_web.Request, request)
        response = aiohttp_web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not buffer the stream
            }
        )
        await response.prepare(http_request)
        with feed.subscribe() as subscription:
            await response.write(b"retry: 3000\n\n")
            # the client going away shows as a failed write (a keep-alive at the latest)
            with contextlib.suppress(ConnectionError):
                while (frame := await subscription.next()) is not None:
                    await response.write(frame)
        return response


async def _end_streams(_: aiohttp_web.Application) -> None:
    """At web server shutdown end the open streams, which would otherwise hold it for a
    minute (aiohttp's graceful shutdown waits for running handlers)."""
    feed.close_subscribers()


faust_compat.aiohttp_application(app).on_shutdown.append(_end_streams)
