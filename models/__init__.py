"""Typed shapes of the records the pipeline reads and writes (SPEC sections 1-2).

Values travel as plain JSON dicts (orjson) for speed; these TypedDicts document them for readers
and type checkers. Validation itself is analytics/validation.py.
"""
