"""History answers read from the sink tables (sinks/queries.py through sinks/reader.py).

No Faust table routing: the database holds the whole history, so the worker that is asked
answers. ``/api/sessions`` is a view of its own; the database halves of ``/api/kpis`` and
``/api/pages/top`` are called by their views in web/api.py (web/history_params.py decides),
and web/funnel_views.py, web/experiment_views.py and web/cohort_views.py answer theirs
through ``database_answer``. Answers carry ``"source": "database"``; a database that cannot
answer gives 503 with the reason, within sinks.reader.QUERY_TIMEOUT; what the database does
not hold (``NotStored``) gives 404 with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
from aiohttp import web as aiohttp_web
from faust import web

from analytics.timeutil import format_ts
from app import app
from sinks import queries
from sinks.reader import DatabaseUnavailable, Query, fetch
from web.api_params import BadParameter
from web.history_params import DATABASE, KpiBucketsQuery, PageRangeQuery, SessionsQuery

#: as the read-only role when sinks.timescaledb.reader names one (sinks/roles.py)
DATABASE_URL = app.analytics_settings.sinks.timescaledb.reader_url
JSON = "application/json"


def _ts(ms: int | None) -> str | None:
    return format_ts(ms) if ms is not None else None


class NotStored(LookupError):
    """What a request names is not in the database; ``str()`` says what (a 404)."""


def query_items(request: web.Request) -> list[tuple[str, str]]:
    """The request's query parameters, in order, repeated ones included."""
    return list(cast(aiohttp_web.Request, request).query.items())


def bad_parameter(view: web.View, problem: BadParameter) -> web.Response:
    return view.json({"error": str(problem)}, status=400)


async def database_answer(
    view: web.View,
    sql: Query,
    params: Mapping[str, Any],
    build: Callable[[list[tuple[Any, ...]]], dict[str, Any]],
) -> web.Response:
    """``build(rows of sql)`` with ``"source": "database"``, 503 saying why it cannot be, or
    404 when ``build`` finds nothing stored of what was asked (``NotStored``)."""
    try:
        rows = await fetch(DATABASE_URL, sql, params)
    except DatabaseUnavailable as exc:
        return view.json({"error": f"database unavailable: {exc}", "source": DATABASE}, status=503)
    try:
        body = build(rows)
    except NotStored as missing:
        return view.json({"error": str(missing), "source": DATABASE}, status=404)
    return view.bytes(answer_json({"source": DATABASE, **body}), content_type=JSON)


def answer_json(body: Mapping[str, Any]) -> bytes:
    """The answer as JSON: orjson's encoding, or the standard library's when a sum outgrows
    64 bits (revenue in cents over a long bucket: an hour of windows of ten million purchases
    of the largest amount is 6e19), which JSON numbers allow and orjson does not write."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def kpi_buckets(view: web.View, query: list[tuple[str, str]]) -> web.Response:
    """``GET /api/kpis?from=&to=&bucket=``."""
    try:
        selected = KpiBucketsQuery.parse(query)
    except BadParameter as problem:
        return bad_parameter(view, problem)

    def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
        return {
            "from": _ts(selected.from_ms),
            "to": _ts(selected.to_ms),
            "bucket": selected.bucket,
            "buckets": [queries.kpi_bucket(row, selected.width) for row in rows],
        }

    params = queries.kpi_bucket_params(selected.bucket, selected.from_ms, selected.to_ms)
    return await database_answer(view, queries.kpi_buckets_sql, params, build)


async def top_pages(view: web.View, query: list[tuple[str, str]]) -> web.Response:
    """``GET /api/pages/top?from=&to=&limit=``."""
    try:
        selected = PageRangeQuery.parse(query)
    except BadParameter as problem:
        return bad_parameter(view, problem)

    def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
        return {
            "from": _ts(selected.from_ms),
            "to": _ts(selected.to_ms),
            "limit": selected.limit,
            "pages": [queries.top_page(row) for row in rows],
        }

    params = queries.top_pages_params(selected.from_ms, selected.to_ms, selected.limit)
    return await database_answer(view, queries.TOP_PAGES, params, build)


@app.page("/api/sessions")
class SessionHistoryView(web.View):
    """A user's closed sessions, from the session_metrics table."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            selected = SessionsQuery.parse(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)

        def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            return {
                "user_id": selected.user_id,
                "from": _ts(selected.from_ms),
                "to": _ts(selected.to_ms),
                "limit": selected.limit,
                "truncated": len(rows) > selected.limit,
                "sessions": [queries.closed_session(row) for row in rows[: selected.limit]],
            }

        params = queries.user_sessions_params(
            selected.user_id, selected.from_ms, selected.to_ms, selected.limit
        )
        return await database_answer(self, queries.USER_SESSIONS, params, build)
