"""The record definitions (models/records.py) and what is derived from them: the OpenAPI
components, the sink tables' columns, and the records the pipeline really publishes."""

from __future__ import annotations

import typing
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import TypeAdapter

from analytics.cohorts import cohort_row
from analytics.enrichment import enrich
from analytics.experiments import ExperimentPartial, ExperimentsSpec, rows
from analytics.traffic import dimension_rows, page_rows
from analytics.validation import validate_event
from models.records import (
    COMPONENTS,
    CohortCell,
    Column,
    EnrichedEvent,
    ExperimentVariantRecord,
    FunnelDay,
    KpiRecord,
    PageRow,
    SessionRecord,
    TrafficRow,
    field_names,
    stored_fields,
)
from models.schemas import component_schemas
from sinks.schema import TABLES
from tests.unit.test_sinks_schema import funnel_record, kpi_record, session_record
from web.openapi import OPENAPI

#: each table's record, and the record's fields it does not store (on purpose)
TABLE_RECORDS: dict[str, tuple[type, set[str]]] = {
    "kpi_metrics": (
        KpiRecord,
        {"total_revenue_cents", "trends_provisional", "trends_elapsed_seconds"},
    ),
    "session_metrics": (SessionRecord, {"revenue_cents"}),
    "page_view_stats": (PageRow, set()),
    "dimension_stats": (TrafficRow, {"revenue_cents"}),
    "funnel_stats": (FunnelDay, set()),
    "experiment_stats": (ExperimentVariantRecord, {"revenue_cents"}),
    "cohort_stats": (CohortCell, set()),
}
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object",
              list: "array"}  # fmt: skip


def _json_types(hint: Any) -> set[str]:
    """The JSON types a field's annotation allows."""
    origin = get_origin(hint)
    if origin in (typing.Annotated, typing.NotRequired):
        return _json_types(get_args(hint)[0])
    if origin is typing.Union or origin is type(int | None):
        return set().union(*(_json_types(arg) for arg in get_args(hint)))
    if origin is Literal:
        return {JSON_TYPES[type(value)] for value in get_args(hint)}
    if hint is type(None):
        return {"null"}
    return {JSON_TYPES[origin or hint]}


def _schema_types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*(_schema_types(option) for option in schema["anyOf"]))
    if "$ref" in schema:
        return {"object"}
    kind = schema["type"]
    return set(kind) if isinstance(kind, list) else {kind}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_each_component_has_its_records_fields_types_and_required_ones(name: str) -> None:
    record = COMPONENTS[name]
    schema = component_schemas()[name]
    assert list(schema["properties"]) == list(field_names(record))
    hints = typing.get_type_hints(record, include_extras=True)
    optional = {field for field, hint in hints.items() if get_origin(hint) is typing.NotRequired}
    assert set(schema["required"]) == set(hints) - optional
    for field, hint in hints.items():
        assert _schema_types(schema["properties"][field]) == _json_types(hint), field


def test_the_served_document_has_the_records_components() -> None:
    served = OPENAPI["components"]["schemas"]
    for name, schema in component_schemas().items():
        assert served[name] == schema, name


def test_live_only_kpi_fields_are_optional_and_described() -> None:
    schema = component_schemas()["KpiRecord"]
    for field in ("trends_provisional", "trends_elapsed_seconds"):
        assert field not in schema["required"]
        assert schema["properties"][field]["description"].startswith("Live records only")
    assert schema["properties"]["trends_provisional"]["const"] is True


@pytest.mark.parametrize("table", sorted(TABLE_RECORDS))
def test_table_columns_are_the_stored_fields_of_the_record(table: str) -> None:
    record, not_stored = TABLE_RECORDS[table]
    spec = TABLES[table]
    assert spec.record is record
    stored = stored_fields(record)
    assert {s.field for s in stored} == set(field_names(record)) - not_stored
    assert spec.columns == tuple(s.column for s in stored)
    assert spec.types == tuple(s.spec.sql for s in stored)
    assert set(spec.key) <= set(spec.columns)


def test_an_unknown_sql_type_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown SQL type 'int4'"):
        Column("int4")


def _experiment_records() -> list[dict[str, Any]]:
    combined = ExperimentPartial()
    combined.counters[("exp", "control")] = [120, 30, 1000, 0]
    combined.counters[("exp", "green")] = [110, 22, 500, 0]
    return rows(ExperimentsSpec(), combined)


def _enriched_event() -> dict[str, Any]:
    event = validate_event(
        {
            "user_id": "u1",
            "session_id": "s1",
            "action": "purchase",
            "page": "/checkout",
            "timestamp": "2026-01-01T10:00:00Z",
            "ip_address": "203.0.113.77",
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
            "metadata": {"amount": 12.5},
        },
        received_at_ms=1_767_261_600_000,
        default_event_id="e1",
    )
    return enrich(event)


PUBLISHED: list[tuple[type, Any]] = [
    (EnrichedEvent, _enriched_event),
    (KpiRecord, lambda: kpi_record(custom={"signups": 2.0})),  # as analytics/combiner.py adds
    (SessionRecord, session_record),
    (PageRow, lambda: next(iter(page_rows(0, 60_000, {"/a": [3, 2, 900]})))),
    (
        TrafficRow,
        lambda: next(iter(dimension_rows(0, 60_000, {"device": {"mobile": [3, 1, 2, 150]}}))),
    ),
    (FunnelDay, lambda: funnel_record()),
    (ExperimentVariantRecord, lambda: _experiment_records()[1]),
    (CohortCell, lambda: cohort_row(20_000, 1, 8, [4, 0, 300_000, 3], 2_550, final=True)),
]


@pytest.mark.parametrize(("record", "make"), PUBLISHED, ids=[r.__name__ for r, _ in PUBLISHED])
def test_what_the_pipeline_publishes_is_its_record(record: type, make: Any) -> None:
    """The builders' output has exactly the definition's fields, each of its type (strict)."""
    published = make()
    assert set(published) <= set(field_names(record)), set(published) - set(field_names(record))
    TypeAdapter(record).validate_python(published, strict=True)
