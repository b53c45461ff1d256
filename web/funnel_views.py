"""Funnels in the web API (SPEC 7): the configured funnels, and one funnel's days from the
funnel_stats table with their total over the range (sinks/queries.py), answered by any worker.

``GET /api/funnels`` reads the configuration (``funnels:`` in the YAML); ``GET
/api/funnels/{name}?from=&to=`` reads the database like the other history endpoints
(web/history_views.py): 404 for a funnel that is not configured, 400 naming the parameter
(web/history_params.py), 503 when the database cannot answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from faust import web

from analytics.funnels import FunnelSpec
from app import app
from sinks import queries
from sinks.migrations import duration_text
from web.api_params import BadParameter, no_parameters
from web.history_params import FunnelRangeQuery
from web.history_views import bad_parameter, database_answer, query_items

FUNNELS = {spec.name: spec for spec in app.analytics_settings.funnels}


def funnel_list(specs: Sequence[FunnelSpec]) -> list[dict[str, Any]]:
    """The configured funnels: name, window (as the settings write durations, and in ms) and
    stages as text (``action`` or ``action:page-prefix``)."""
    return [
        {
            "name": spec.name,
            "window": duration_text(timedelta(milliseconds=spec.window_ms)),
            "window_ms": spec.window_ms,
            "stages": [stage.text for stage in spec.stages],
        }
        for spec in specs
    ]


def not_configured(name: str) -> dict[str, str]:
    known = ", ".join(FUNNELS) or "none"
    return {"error": f"funnel {name!r} is not configured (configured: {known})"}


@app.page("/api/funnels")
class FunnelsView(web.View):
    """The funnels of the configuration."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            no_parameters(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)
        return self.json({"funnels": funnel_list(list(FUNNELS.values()))})


@app.page("/api/funnels/{name}")
class FunnelHistoryView(web.View):
    """One funnel's stored days from ``from`` to ``to`` and their total."""

    async def get(self, request: web.Request, name: str) -> web.Response:
        spec = FUNNELS.get(name)
        if spec is None:
            return self.json(not_configured(name), status=404)
        try:
            selected = FunnelRangeQuery.parse(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)

        def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            return queries.funnel_range(spec, selected.first, selected.last, rows)

        params = queries.funnel_days_params(spec.name, selected.first, selected.last)
        return await database_answer(self, queries.FUNNEL_DAYS, params, build)
