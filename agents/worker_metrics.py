"""Worker-wide gauges that no agent sees change: table sizes, and which partitions count.

A timer on every worker (not only the leader), since each worker reports its own partitions.
"""

from __future__ import annotations

import logging

from app import app, metrics
from tables.sizes import table_keys

log = logging.getLogger(__name__)

INTERVAL_S = 15.0


@app.timer(interval=INTERVAL_S)  # type: ignore[untyped-decorator]
async def update_worker_gauges() -> None:
    """Table sizes, and per-partition gauges limited to the partitions still owned."""
    actives = app.assignor.assigned_actives()
    user_events = app.topic_names.user_events
    metrics.keep_partitions(tp.partition for tp in actives if tp.topic == user_events)
    for name, table in app.tables.items():
        try:
            metrics.table_keys(name, table_keys(table))
        except Exception as exc:  # a partition closing under a rebalance: next time
            log.debug("table %s: size not read: %s", name, exc)
