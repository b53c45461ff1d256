"""How far each database sink is behind its topic, for ``sink_lag_records``.

Measured by a loop of its own next to each sink's consumer (sinks/consumer.py) rather than
after each batch: during a database outage the sink's batch loop waits inside a write, and that
is exactly when the lag must keep moving on the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

from app import metrics

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 10.0


async def consumer_lag(consumer: Any) -> int:
    """Records between the committed offsets of the consumer's partitions and their ends
    (the beginning where the group has committed nothing yet)."""
    partitions = sorted(consumer.assignment())
    if not partitions:
        return 0
    ends = await consumer.end_offsets(partitions)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
    if any(offset is None for offset in committed):
        starts = await consumer.beginning_offsets(partitions)
        committed = [
            starts[tp] if c is None else c for tp, c in zip(partitions, committed, strict=True)
        ]
    return sum(max(0, ends[tp] - c) for tp, c in zip(partitions, committed, strict=True))


async def watch_lag(table: str, consumer: Any, interval_s: float = LAG_INTERVAL_S) -> None:
    """Update the table's lag gauge every ``interval_s`` until cancelled."""
    while True:
        try:
            metrics.sink_lag(table, await consumer_lag(consumer))
        except (KafkaError, KeyError) as exc:  # a rebalance or a broker hiccup: next time
            log.debug("sink %s: lag not measured: %s", table, exc)
        await asyncio.sleep(interval_s)
