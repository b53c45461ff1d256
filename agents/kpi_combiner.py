"""The combiner: ``kpi-partials`` (one partition) → ``live-kpis``, ``page-view-stats``,
``traffic-stats``. It adds up the partitions' shares of each window (analytics.combiner) and
keeps the final ones for the web API (tables/history.py).

No message can stop it. Each is decoded and checked first (analytics.partials): one that is
not a partial or a progress report this worker can use goes to ``kpi-partials-dlq`` with its
errors. Should the combination of a batch still fail (a bug), the batch is folded again one
message at a time from the state saved before it, and the messages it fails on go to the same
topic. Either way the rest of the batch is used and the partition moves on.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.batching import Handled, contiguous, run_in_batches
from agents.outputs import Record, publish
from analytics.combiner import CombinerOutput, CombinerRules, CombinerState, combine, combine_each
from analytics.dead_letters import bounded_dead_letter
from analytics.partials import PartialLimits, PartialRejected, decode_message
from analytics.validation import FieldError
from app import app, metrics
from tables import combiner_state
from tables.history import HistoryWriter

log = logging.getLogger(__name__)
TOPICS = app.topic_names
_engine = app.analytics_settings.engine
RULES = CombinerRules(
    partitions=_engine.topic_partitions,
    window_ms=int(_engine.kpi_window.total_seconds() * 1000),
    grace_ms=int(_engine.grace.total_seconds() * 1000),
)

LIMITS = PartialLimits(partitions=RULES.partitions, window_ms=RULES.window_ms)

partials_topic = app.topic(TOPICS.kpi_partials, partitions=1)
history = HistoryWriter(int(_engine.history_retention.total_seconds() * 1000))


async def handle_batch(events: list[Any]) -> Handled:
    """Fold a batch of partials; publish live and final window figures, then save state."""
    state = combiner_state.load()
    done, fresh, seek_to = contiguous(events, state.get("applied"))
    if not fresh:
        return Handled(done, seek_to)
    messages: list[dict[str, Any]] = []
    used: list[Any] = []  # the event of each message
    dead: list[dict[str, Any]] = []
    for event in fresh:
        try:
            messages.append(decode_message(event.message.value, LIMITS))
            used.append(event)
        except PartialRejected as rejected:
            dead.append(partial_dead_letter(event, rejected.errors))
    with metrics.kpi_calculation():
        out, failed = combine_batch(state, messages)
    dead += [
        partial_dead_letter(used[index], [FieldError("message", error)]) for index, error in failed
    ]
    records: list[Record] = [(TOPICS.partial_dead_letters, None, d, None) for d in dead]
    if dead:
        log.warning("combiner: %d records to %s", len(dead), TOPICS.partial_dead_letters)
        metrics.partials_dead_lettered(len(dead))
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


def combine_batch(
    state: CombinerState, messages: list[dict[str, Any]]
) -> tuple[CombinerOutput, list[tuple[int, str]]]:
    """``combine`` the batch; if that fails, again one message at a time from the saved state
    (analytics.combiner.combine_each), with the messages it fails on."""
    try:
        return combine(state, messages, RULES, live=True), []
    except Exception:
        log.exception("combiner: a batch failed; folding its messages one at a time")
    state.clear()
    state.update(combiner_state.load())
    return combine_each(state, messages, RULES, live=True)


def partial_dead_letter(event: Any, errors: list[FieldError]) -> dict[str, Any]:
    """The kpi-partials-dlq record of a message: its payload, the errors, where and when."""
    message = event.message
    return bounded_dead_letter(
        message.value or b"",
        errors,
        source="kpi-combiner",
        received_ms=int(message.timestamp * 1000) if message.timestamp else 0,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )


@app.agent(partials_topic, isolated_partitions=True, name="kpi-combiner")
async def kpi_combiner(stream: Any) -> None:
    """Consume partials in batches."""
    await run_in_batches(stream, _engine.batch_size, _engine.batch_within, handle_batch)
