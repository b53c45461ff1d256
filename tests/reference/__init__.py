"""Independent batch reference implementation of the analytics contract (SPEC sections 2-6).

``tests.reference.batch`` recomputes sessions, KPI windows, page and dimension statistics and
user profiles from a plain list of enriched events, written straight from ``SPEC.md`` and
importing nothing from the project's own packages. End-to-end tests compare the streaming
pipeline's final figures against it.
"""
