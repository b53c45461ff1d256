"""Database sink agents: one per output topic, each writing its table (sinks/).

    live-kpis       → kpi_metrics        session-metrics → session_metrics
    page-view-stats → page_view_stats    traffic-stats   → dimension_stats

Each agent takes its topic in batches (``sinks.timescaledb.batch_size`` records or
``flush_interval``, whichever comes first), one actor per partition, and hands the records to
its ``TableSink``, which returns once the batch is committed in one transaction (retrying for
as long as the database is away). Records the database can never take, and values that are not
JSON objects, go to ``<prefix>sink-dlq`` with the error. Only then is the batch acknowledged
(agents/batching.py), so a crash or an outage re-delivers it, and the upserts make that harmless.

A sink that waits for the database stops taking its partitions' records; Faust then stops
fetching those partitions (stream buffer high-water mark) while the rest of the pipeline goes
on. The sink topics get a larger stream buffer than Faust's default, so that what a single
fetch may still bring after the high-water mark never fills the buffer: a full buffer would
block the worker's one consumer, and with it every agent.

The migrations run once at worker start; a database that cannot be used (wrong URL,
credentials, database name, or unreachable for ``startup_timeout``) stops the worker with a
message naming the URL without its password.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from agents.batching import run_in_batches
from agents.outputs import Record, publish
from analytics.timeutil import format_ts, now_ms
from app import app
from sinks.db import DatabaseStartupError
from sinks.migrations import MigrationOptions
from sinks.retry import RetryPolicy
from sinks.schema import TABLES, Rejected, TableSpec
from sinks.sink import SchemaGate, TableSink

log = logging.getLogger(__name__)

TOPICS = app.topic_names
_engine = app.analytics_settings.engine
_database = app.analytics_settings.sinks.timescaledb
#: records a sink topic's actor may hold unprocessed; Faust stops fetching at 80 % of it
SINK_STREAM_BUFFER = 32_768
#: how often a waiting batch looks for a rebalance or a shutdown
HANDOVER_POLL_S = 0.1

schema = SchemaGate(
    _database.connection_string,
    MigrationOptions(compress_after=_database.compress_after, retention=_database.retention),
)
_policy = RetryPolicy(initial=_database.retry_initial, maximum=_database.retry_max)


def dead_letter(spec: TableSpec, event: Any, error: str, sqlstate: str | None) -> dict[str, Any]:
    """The sink-dlq record of a message that cannot be written: where it came from, its value
    (decoded when it is JSON, else as text) and why."""
    message = event.message
    raw: bytes = message.value or b""
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw.decode("utf-8", "replace")
    return {
        "table": spec.name,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key.decode("utf-8", "replace") if message.key else None,
        "value": value,
        "error": error,
        "sqlstate": sqlstate,
        "time": format_ts(now_ms()),
    }


def batch_handler(spec: TableSpec, sink: TableSink) -> Any:
    async def handle(events: list[Any]) -> None:
        """Decode, write (until committed), dead-letter the rejects; the caller then acks."""
        records: list[dict[str, Any]] = []
        sources: list[Any] = []
        dead: list[Record] = []
        for event in events:
            try:
                value = orjson.loads(event.message.value or b"")
            except orjson.JSONDecodeError as exc:
                value, problem = None, f"not JSON: {exc}"
            else:
                problem = "" if isinstance(value, dict) else "not a JSON object"
            if problem:
                letter = dead_letter(spec, event, f"{spec.name}: {problem}", None)
                dead.append((TOPICS.sink_dead_letters, None, letter, None))
                continue
            records.append(value)
            sources.append(event)
        watcher = asyncio.ensure_future(release_on_handover(events[0].message.tp))
        try:
            result = await sink.write(records)
        finally:
            watcher.cancel()
        for rejected in result.rejected:
            letter = _letter(spec, sources, rejected)
            dead.append((TOPICS.sink_dead_letters, None, letter, None))
        if dead:
            log.warning("sink %s: %d records to %s", spec.name, len(dead), TOPICS.sink_dead_letters)
            await publish(dead)

    return handle


async def release_on_handover(tp: Any) -> None:
    """While a batch waits for the database: once a rebalance or a shutdown begins, let Faust
    hand over the partition without waiting for the batch.

    Before it lets partitions go, Faust waits until every message a stream has taken is
    acknowledged or forgotten (``Consumer.wait_empty``, a weak set of messages); a database
    outage would hold that wait, and with it the whole worker, until the database returns.
    So the partition's taken messages (the batch, and the one the stream already holds for
    the next batch) are removed from that set, *without* being acknowledged: their offsets stay
    uncommitted and the partition's next owner reads them again. The write itself goes on
    until Faust cancels the actor; if it succeeds first, the batch is acknowledged as usual.
    """
    epoch = app.rebalancing_count
    while app.rebalancing_count == epoch and not app.should_stop:
        await asyncio.sleep(HANDOVER_POLL_S)  # polls flags set by the consumer thread
    pending = getattr(app.consumer, "_unacked_messages", None)
    if pending is None:  # a Faust version without it: the rebalance waits for the database
        return
    released = [message for message in list(pending) if message.tp == tp]
    for message in released:
        pending.discard(message)
    log.info("%s: %d records left unacknowledged for the next owner", tp, len(released))


def _letter(spec: TableSpec, sources: list[Any], rejected: Rejected) -> dict[str, Any]:
    return dead_letter(spec, sources[rejected.index], rejected.error, rejected.sqlstate)


def _sink_agent(spec: TableSpec) -> Any:
    topic_name = getattr(TOPICS, spec.topic_field)
    topic = app.topic(topic_name, partitions=_engine.topic_partitions, maxsize=SINK_STREAM_BUFFER)
    sink = TableSink(spec, topic_name, _database.connection_string, schema, _policy)
    handle = batch_handler(spec, sink)

    async def sink_agent(stream: Any) -> None:
        await run_in_batches(stream, _database.batch_size, _database.flush_interval, handle)

    sink_agent.__name__ = sink_agent.__qualname__ = f"sink_{spec.name}"
    sink_agent.__doc__ = f"{topic_name} → table {spec.name}"
    return app.agent(topic, isolated_partitions=True, name=f"sink-{spec.name}")(sink_agent)


sink_agents = {name: _sink_agent(TABLES[name]) for name in _database.tables}


@app.task  # type: ignore[untyped-decorator]
async def prepare_database() -> None:
    """Migrate at start; stop the worker when the database cannot be used."""
    if not sink_agents:
        return
    try:
        await schema.at_startup(_database.startup_timeout)
    except DatabaseStartupError as exc:
        log.critical("%s; stopping the worker", exc)
        await app.crash(exc)
