"""A/B tests in the web API (SPEC 9): every experiment, or one, with its variants' current
figures from the experiment_stats table (sinks/queries.py), answered by any worker.

Experiments are not configured: they are whatever ``metadata.experiment`` the events named,
so both endpoints read the database like the other history endpoints (web/history_views.py):
400 naming the parameter (web/history_params.py), 404 for an experiment with no stored row
(no exposure to it yet), 503 when the database cannot answer.
"""

from __future__ import annotations

from typing import Any

from faust import web

from app import app
from sinks import queries
from web.api_params import BadParameter, no_parameters
from web.history_params import ExperimentsQuery
from web.history_views import NotStored, bad_parameter, database_answer, query_items

#: the variant every other is compared with (experiments.control_variant), listed first
CONTROL = app.analytics_settings.experiments.control_variant


@app.page("/api/experiments")
class ExperimentsView(web.View):
    """The stored experiments, first ``limit`` by name, each with its variants."""

    async def get(self, request: web.Request) -> web.Response:
        try:
            selected = ExperimentsQuery.parse(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)

        def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            return queries.experiment_list(rows, CONTROL, selected.limit)

        params = queries.experiments_params(selected.limit)
        return await database_answer(self, queries.EXPERIMENTS, params, build)


@app.page("/api/experiments/{name}")
class ExperimentView(web.View):
    """One experiment's variants."""

    async def get(self, request: web.Request, name: str) -> web.Response:
        try:
            no_parameters(query_items(request))
        except BadParameter as problem:
            return bad_parameter(self, problem)

        def build(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            groups = queries.experiment_groups(rows, CONTROL)
            if not groups:
                raise NotStored(f"experiment {name!r} has no stored figures (no exposure yet)")
            return {"control_variant": CONTROL, **groups[0]}

        params = queries.experiment_params(name)
        return await database_answer(self, queries.EXPERIMENT, params, build)
