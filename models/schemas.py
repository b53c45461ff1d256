"""The JSON Schemas of the record definitions (models/records.py), as OpenAPI 3.1 components.

pydantic writes JSON Schema 2020-12, which OpenAPI 3.1 takes as it is; a definition used
inside another (``Trend`` in ``KpiRecord``) is a ``$ref`` to its own component.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from models.records import COMPONENTS

REF_TEMPLATE = "#/components/schemas/{model}"


class _Components(GenerateJsonSchema):
    """pydantic's generator without a title on every property (the name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def component_schemas() -> dict[str, dict[str, Any]]:
    """Each of ``COMPONENTS`` (and each definition they use) by component name."""
    adapters: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (name, "serialization", TypeAdapter(record)) for name, record in COMPONENTS.items()
    ]
    _, definitions = TypeAdapter.json_schemas(
        adapters,
        ref_template=REF_TEMPLATE,
        schema_generator=_Components,
    )
    schemas: dict[str, dict[str, Any]] = definitions.get("$defs", {})
    missing = COMPONENTS.keys() - schemas.keys()
    if missing:
        raise ValueError(f"COMPONENTS names differ from their definitions' names: {missing}")
    return schemas
