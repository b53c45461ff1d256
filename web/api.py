"""The query API over the live state (JSON; documented in web/openapi.py, served at
``/openapi.json``).

Every answer is computed by the worker that holds the state, found with Faust's table routing:

* user endpoints route on the user_id in the path through ``partition-state``, whose keys are
  the bare user_id bytes, hashed like the ``user-events`` keys, so the request lands on the
  worker that owns the user's partition;
* KPI, page and traffic endpoints route on a fixed key of the one-partition history tables
  (tables/history.py), so they land on the worker running the combiner.

``/api/kpis`` with ``bucket`` and ``/api/pages/top`` with ``from``/``to`` are answered from the
database instead, by whichever worker is asked (web/history_params.py, web/history_views.py).

Any worker can be asked; one that does not hold the state forwards the request and relays the
answer (503 while the group is rebalancing and nobody owns the key).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, cast

import orjson
from aiohttp import web as aiohttp_web
from aiokafka.errors import KafkaError
from faust import web
from faust.web.exceptions import ServiceUnavailable

from analytics import wide_json
from analytics.partition import UserState
from analytics.timeutil import format_ts, parse_ts
from app import app, faust_compat
from tables import combiner_state, large_values
from tables.history import (
    LIVE_KEY,
    kpi_history,
    load,
    page_history,
    traffic_history,
    window_key,
    window_starts,
)
from tables.partition_state import load_user, partition_state
from web import history_views
from web.api_params import (
    BadParameter,
    KpiRange,
    Query,
    TopPagesQuery,
    TrafficQuery,
    no_parameters,
    parse_user_id,
)
from web.api_queries import (
    kpi_windows,
    range_header,
    recent_starts,
    stream_watermark,
    top_pages,
    traffic_values,
    user_profile,
    user_sessions,
)
from web.erasure_view import erase_user
from web.history_params import DATABASE, LIVE, kpis_source, top_pages_source

_engine = app.analytics_settings.engine
GAP_MS = int(_engine.session_gap.total_seconds() * 1000)
WINDOW_MS = int(_engine.kpi_window.total_seconds() * 1000)
HISTORY_ROUTE_KEY = LIVE_KEY.decode()

Handler = Callable[..., Any]


def routed(table: Any, **where: str) -> Callable[[Handler], Handler]:
    """``app.table_route`` that first makes sure the producer knows the table's changelog.

    Faust maps a key to its partition with the *producer's* cluster metadata. Once aiokafka has
    had to add a topic to it, that metadata covers only the topics the producer sends to, so a
    worker that never writes a table's changelog (the history tables, on every worker but the
    combiner's) could fail with a TypeError instead of forwarding the request.
    """

    def decorate(handler: Handler) -> Handler:
        route = app.table_route(table=table, **where)(handler)

        @wraps(handler)
        async def get(view: web.View, request: web.Request, *args: Any, **kwargs: Any) -> Any:
            topic = table.changelog_topic.get_topic_name()
            try:
                await faust_compat.wait_on_metadata(faust_compat.producer_client(app), topic)
            except KafkaError as exc:
                raise ServiceUnavailable(f"no metadata for {topic}: {exc!r}") from exc
            return await route(view, request, *args, **kwargs)

        return get

    return decorate


def _query(request: web.Request) -> Query:
    return list(cast(aiohttp_web.Request, request).query.items())


def _json(view: web.View, body: Any) -> web.Response:
    """An answer as JSON (Faust's ``view.json`` is orjson's, which refuses integers past 64
    bits: a user's lifetime revenue in cents, a window's sums; analytics.wide_json)."""
    data = wide_json.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    return view.bytes(data, content_type="application/json")


def _bad(view: web.View, problem: BadParameter) -> web.Response:
    return view.json({"error": str(problem)}, status=400)


def _unknown_user(view: web.View, user_id: str) -> web.Response:
    return view.json({"error": f"unknown user {user_id!r}"}, status=404)


def _ts(ms: int | None) -> str | None:
    return format_ts(ms) if ms is not None else None


def _stored(table: Any, keep: Callable[[int], bool]) -> dict[int, Any]:
    """The table's window entries whose start ``keep`` accepts, decoded."""
    chosen: dict[int, Any] = {}
    for key, value in table.items():
        if key.lstrip(b"-").isdigit() and keep(int(key)):
            chosen[int(key)] = wide_json.loads(large_values.whole(table, key, value) or b"")
    return chosen


def _as_of(starts: list[int]) -> int | None:
    """The instant minutes are counted back from: the stream's watermark, or, before the
    combiner has one, the end of the newest final window."""
    watermark = stream_watermark(combiner_state.load())
    if watermark is not None:
        return watermark
    return starts[-1] + WINDOW_MS if starts else None


def _recent(table: Any, minutes: int) -> tuple[int | None, list[int], list[Any]]:
    starts = window_starts(table.keys())
    as_of = _as_of(starts)
    chosen = recent_starts(starts, as_of, minutes, WINDOW_MS) if as_of is not None else []
    values = [load(table, window_key(start)) for start in chosen]
    return as_of, chosen, [value for value in values if value is not None]


@app.page("/api/kpis/current")
class CurrentKpiView(web.View):
    """The newest window's KPI record: live (``is_final: false``) or final."""

    @routed(kpi_history, exact_key=HISTORY_ROUTE_KEY)
    async def get(self, request: web.Request) -> web.Response:
        try:
            no_parameters(_query(request))
        except BadParameter as problem:
            return _bad(self, problem)
        return _json(self, {"kpi": load(kpi_history, LIVE_KEY)})


@app.page("/api/kpis")
class KpiHistoryView(web.View):
    """KPI records of the windows starting in [from, to); with ``bucket``, bucketed sums from
    the database (web/history_views.py), which any worker answers without routing."""

    async def get(self, request: web.Request) -> web.Response:
        source, query = kpis_source(_query(request))
        if source == DATABASE:
            return await history_views.kpi_buckets(self, query)
        response: web.Response = await self.live(request, query)
        return response

    @routed(kpi_history, exact_key=HISTORY_ROUTE_KEY)
    async def live(self, request: web.Request, query: Query) -> web.Response:
        try:
            selected = KpiRange.parse(query)
        except BadParameter as problem:
            return _bad(self, problem)
        finals = _stored(kpi_history, selected.contains)
        live = load(kpi_history, LIVE_KEY)
        live_start = parse_ts(live["window_start"]) if live is not None else None
        return _json(
            self,
            {
                "source": LIVE,
                "from": _ts(selected.from_ms),
                "to": _ts(selected.to_ms),
                "windows": kpi_windows(finals.items(), live, live_start, selected),
            },
        )


@app.page("/api/pages/top")
class TopPagesView(web.View):
    """The most viewed pages of the final windows in the last ``minutes`` minutes; with
    ``from``/``to``, of the windows in that range, from the database (no routing)."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            source, parameters = top_pages_source(_query(request))
        except BadParameter as problem:
            return _bad(self, problem)
        if source == DATABASE:
            return await history_views.top_pages(self, parameters)
        response: web.Response = await self.live(request, parameters)
        return response

    @routed(kpi_history, exact_key=HISTORY_ROUTE_KEY)
    async def live(self, request: web.Request, parameters: Query) -> web.Response:
        try:
            query = TopPagesQuery.parse(parameters)
        except BadParameter as problem:
            return _bad(self, problem)
        as_of, starts, windows = _recent(page_history, query.minutes)
        body = {"source": LIVE, **range_header(as_of, query.minutes, starts)}
        body["limit"] = query.limit
        body["pages"] = top_pages(windows, query.limit)
        return _json(self, body)


@app.page("/api/traffic")
class TrafficView(web.View):
    """Events, users, page views and revenue by device, country or browser."""

    @routed(kpi_history, exact_key=HISTORY_ROUTE_KEY)
    async def get(self, request: web.Request) -> web.Response:
        try:
            query = TrafficQuery.parse(_query(request))
        except BadParameter as problem:
            return _bad(self, problem)
        as_of, starts, windows = _recent(traffic_history, query.minutes)
        body = range_header(as_of, query.minutes, starts)
        body["dimension"] = query.dimension
        body["values"] = traffic_values(windows, query.dimension)
        return _json(self, body)


async def _user_answer(
    view: web.View,
    request: web.Request,
    user_id: str,
    answer: Callable[[str, UserState, int], dict[str, Any]],
) -> web.Response:
    """Validate, load the user from this worker's partition state, and answer (or 404)."""
    try:
        no_parameters(_query(request))
        parse_user_id(user_id)
    except BadParameter as problem:
        return _bad(view, problem)
    user = load_user(user_id)
    if user is None:
        return _unknown_user(view, user_id)
    return _json(view, answer(user_id, user, GAP_MS))


@app.page("/api/users/{user_id}")
class UserView(web.View):
    """A user's profile counters; ``DELETE`` erases the user (web/erasure_view.py)."""

    @routed(partition_state, match_info="user_id")
    async def get(self, request: web.Request, user_id: str) -> web.Response:
        return await _user_answer(self, request, user_id, user_profile)

    @routed(partition_state, match_info="user_id")
    async def delete(self, request: web.Request, user_id: str) -> web.Response:
        try:
            no_parameters(_query(request))
            parse_user_id(user_id)
        except BadParameter as problem:
            return _bad(self, problem)
        status, body = await erase_user(user_id)
        return _json(self, body) if status == 200 else self.json(body, status=status)


@app.page("/api/sessions/{user_id}")
class UserSessionsView(web.View):
    """A user's open sessions, the last closed ones, and the profile counters."""

    @routed(partition_state, match_info="user_id")
    async def get(self, request: web.Request, user_id: str) -> web.Response:
        return await _user_answer(self, request, user_id, user_sessions)
