"""The combiner: ``kpi-partials`` (one partition) → ``live-kpis``, ``page-view-stats``,
``traffic-stats``. It adds up the partitions' shares of each window (analytics.combiner) and
keeps the final ones for the web API (tables/history.py)."""

from __future__ import annotations

from typing import Any

import orjson

from agents.batching import Handled, contiguous, run_in_batches
from agents.outputs import Record, publish
from analytics.combiner import CombinerRules, combine
from app import app, metrics
from tables import combiner_state
from tables.history import HistoryWriter

TOPICS = app.topic_names
_engine = app.analytics_settings.engine
RULES = CombinerRules(
    partitions=_engine.topic_partitions,
    window_ms=int(_engine.kpi_window.total_seconds() * 1000),
    grace_ms=int(_engine.grace.total_seconds() * 1000),
)

partials_topic = app.topic(TOPICS.kpi_partials, partitions=1)
history = HistoryWriter(int(_engine.history_retention.total_seconds() * 1000))


async def handle_batch(events: list[Any]) -> Handled:
    """Fold a batch of partials; publish live and final window figures, then save state."""
    state = combiner_state.load()
    done, fresh, seek_to = contiguous(events, state.get("applied"))
    if not fresh:
        return Handled(done, seek_to)
    messages = [orjson.loads(event.message.value) for event in fresh]
    with metrics.kpi_calculation():
        out = combine(state, messages, RULES, live=True)
    records: list[Record] = []
    for kpi in out.kpis:
        records.append((TOPICS.live_kpis, kpi["window_start"].encode(), kpi, None))
    for page in out.pages:
        key = f"{page['window_start']}|{page['page']}".encode()
        records.append((TOPICS.page_view_stats, key, page, None))
    for row in out.traffic:
        key = f"{row['window_start']}|{row['dimension']}|{row['value']}".encode()
        records.append((TOPICS.traffic_stats, key, row, None))
    await publish(records)
    history.record(out)
    state["applied"] = fresh[-1].message.offset
    combiner_state.save(state)
    return Handled(done + fresh, seek_to)


@app.agent(partials_topic, isolated_partitions=True, name="kpi-combiner")
async def kpi_combiner(stream: Any) -> None:
    """Consume partials in batches."""
    await run_in_batches(stream, _engine.batch_size, _engine.batch_within, handle_batch)
