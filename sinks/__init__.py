"""Database sinks: the output topics written into PostgreSQL (TimescaleDB when available).

- ``schema``: the four tables' columns and natural keys, record → row conversion, upsert SQL.
- ``migrations``: versioned, idempotent schema migrations (worker start, ``faust -A app migrate``).
- ``writers``: one batch in one transaction; rows that can never be written are set apart.
- ``retry``: which errors are retried, and the capped exponential backoff.
- ``sink``: one table's connection, retries and health; ``agents/sink_agents.py`` feeds it from
  the topic and commits the offsets (docs/sinks.md).
- ``health``: the process-wide state of every sink (``sink_health()``).
- ``queries``, ``reader``: the history queries of the web API over the tables, and running
  them with bounded waiting (``/api/kpis?bucket=``, ``/api/pages/top?from=``, ``/api/sessions``).
"""
