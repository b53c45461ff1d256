"""Typed shapes of the records the pipeline publishes and reads (SPEC sections 1-5, 7-9).

Values travel as plain JSON dicts (orjson) for speed; these TypedDicts define them once, and the
OpenAPI components, the sink tables' columns and the readers of stored rows are derived from
them (models/records.py). Validation of the input itself is analytics/validation.py.
"""
