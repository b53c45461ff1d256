"""Database sinks: the output topics written into PostgreSQL (TimescaleDB when available).

One sink per table. Its consumer (``consumer.SinkConsumer``, a consumer group of its own) reads
the table's topic in batches and hands each batch to its writer: anything with
``async write(batch) -> WriteResult`` (``writers.BatchWriter``; ``sink.TableSink`` writes to
the database). Guarantee: at least once into the database, made exact by upserts on each
table's natural key, so a batch written twice leaves the same rows.

Commit order of one batch (``SinkConsumer.handle``):

1. Decode. A record that is not a JSON object, or chunks that cannot be put together, become
   dead letters; the chunks of a session not yet whole are kept (per partition) for later.
2. Write the rows: ``writer.write(batch)`` upserts the batch in one transaction and returns
   only once it is committed. A failure outside the rows (database away or read-only, a lost
   connection, a timeout) is retried with capped backoff, forever (``retry``): the batch
   waits, unacknowledged, and the sink shows ``degraded`` (``health``). Rows the database
   refuses are written one by one instead, so the good ones commit and the bad ones come back
   as ``WriteResult.rejected``; they are not raised.
3. Dead letters: the rejects and the undecodable records go to ``<prefix>sink-dlq`` with the
   error (``dead_letters``), and the broker's acknowledgements are awaited.
4. Commit the offsets: one past each partition's last record, for the partitions the consumer
   still owns, never past the first chunk of a session not yet written.

Nothing is committed before step 4, so a crash, a rebalance or an outage in steps 1-3 delivers
the batch again (to this sink or to the partition's new owner), never loses it. An offset
commit the group refuses (it rebalanced meanwhile) is logged and the batch read again by the
new owner. Any other error (a dead letter the broker will not take, a bug) fails the sink,
which stops the worker (``runner``); the batch, uncommitted, is read again after the restart.

Modules:

- ``runner``: one worker's sinks, built from the settings and run together
  (``agents/database_sinks.py`` starts them from a Faust task).
- ``consumer``: one table's consumer loop, batching, decoding, chunk gathering and offset
  commits; ``lag``: how far each sink is behind its topic; ``dead_letters``: the sink-dlq record.
- ``sink``: one table's writer: its connection, the schema gate, retries and health.
- ``writers``: one batch in one transaction; rows that can never be written are set apart.
- ``retry``: which errors are retried, and the capped exponential backoff.
- ``schema``: the seven tables' columns and natural keys, record → row conversion, upsert SQL.
- ``migrations``: versioned, idempotent schema migrations (worker start, ``faust -A app migrate``);
  ``roles``: the writer and reader roles; ``timescale_settings``: the server settings
  TimescaleDB's jobs need; ``db``: connections and start-up errors; ``chunks``: hypertable
  chunk names in errors.
- ``health``: the process-wide state of every sink (``sink_health()``).
- ``queries``, ``reader``: the history queries of the web API over the tables, and running
  them with bounded waiting (``/api/kpis?bucket=``, ``/api/pages/top?from=``, ``/api/sessions``,
  ``/api/funnels/{name}``, ``/api/experiments``, ``/api/cohorts``).

This package imports ``analytics`` and ``app`` (settings, metrics, Kafka client options) and
nothing above them: ``agents`` and ``web`` use it, never the reverse (docs/architecture.md,
"Package map"; tests/unit/test_package_layers.py). More: docs/sinks.md.
"""
