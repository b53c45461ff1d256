"""Cohorts and retention in the web API (SPEC 8): a range of cohorts as a retention triangle
from the cohort_stats table (sinks/queries.py), answered by any worker.

``GET /api/cohorts?from=&to=&days=`` reads the database like the other history endpoints
(web/history_views.py): 400 naming the parameter (web/history_params.py), 503 when the
database cannot answer.
"""

from __future__ import annotations

from typing import Any

from faust import web

from app import app
from sinks import queries
from web.api_params import BadParameter
from web.history_params import CohortRangeQuery
from web.history_views import bad_parameter, database_answer, query_items

#: cohorts.max_day_offset: the most ``days`` may ask for, and its default
MAX_DAY_OFFSET = app.analytics_settings.cohorts.max_day_offset


@app.page("/api/cohorts")
class CohortsView(web.View):
    """The cohorts from ``from`` to ``to``, each with its day offsets 0 to ``days``."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            selected = CohortRangeQuery.parse(query_items(request), MAX_DAY_OFFSET)
        except BadParameter as problem:
            return bad_parameter(self, problem)

        def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            return queries.retention_triangle(selected.first, selected.last, selected.days, rows)

        params = queries.cohort_cells_params(selected.first, selected.last, selected.days)
        return await database_answer(self, queries.COHORT_CELLS, params, build)
