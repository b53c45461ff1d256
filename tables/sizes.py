"""How many keys a Faust table holds on this worker, for the ``table_keys`` gauge.

Faust's ``len(table)`` walks every key, which would block the event loop for seconds on a
table of millions of event_ids. A partition database with few keys is counted exactly (its
RocksDB estimate is poor while writes sit in the memtable: a key written twice counts twice);
a larger one reports RocksDB's own estimate, which is cheap and close once data is flushed.
The event loop gets a turn between partition databases: counting every small database of
every table in one go had held it ~100 ms every 15 s, the slowest events of a latency run
(docs/performance.md, "Latency").
"""

from __future__ import annotations

import asyncio
from typing import Any

from app import faust_compat

#: partition databases estimated at up to this many keys are counted exactly (~1 ms)
EXACT_UP_TO = 2_000
ESTIMATE_PROPERTY = "rocksdb.estimate-num-keys"


def partition_keys(table: Any, db: Any) -> int:
    """Keys of one partition database of a RocksDB table (Faust's offset key left out)."""
    estimate = int(db.property_int_value(ESTIMATE_PROPERTY) or 0)
    if estimate > EXACT_UP_TO:
        return estimate
    return sum(1 for _ in faust_compat.visible_keys(table, db))


async def table_keys(table: Any) -> int:
    """Keys of ``table`` in the partitions this worker holds as active (not standby)."""
    databases = faust_compat.active_partition_dbs(table)
    if databases is None:
        return len(table.data)
    total = 0
    for db in databases:
        total += partition_keys(table, db)
        await asyncio.sleep(0)  # the hot path's turn between databases
    return total
