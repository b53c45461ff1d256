"""Worker-wide gauges that no agent sees change: table sizes, and which partitions count.

A timer on every worker (not only the leader), since each worker reports its own partitions.
"""

from __future__ import annotations

import logging

from agents.behavior_tracker import owned_partitions
from app import app, metrics
from tables.sizes import table_keys

log = logging.getLogger(__name__)

INTERVAL_S = 15.0


@app.timer(interval=INTERVAL_S)  # type: ignore[untyped-decorator]
async def update_worker_gauges() -> None:
    """Table sizes, and per-partition gauges limited to the partitions still owned."""
    metrics.keep_partitions(owned_partitions())
    for name, table in app.tables.items():
        try:
            metrics.table_keys(name, await table_keys(table))
        except Exception as exc:  # a partition closing under a rebalance: next time
            log.debug("table %s: size not read: %s", name, exc)
