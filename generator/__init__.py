"""Synthetic user traffic for load tests, demos and exactness checks.

``generator.traffic`` builds seeded, reproducible event streams (pure, no I/O) so that tests
can compare the pipeline's output with a batch computation over the very same events;
``generator.cli`` (``analytics-generate``) sends them to Kafka or the HTTP ingest API.
"""
