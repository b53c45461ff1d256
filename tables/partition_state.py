"""Per-partition analytics state (analytics.partition): one value per user plus the clock.

User values are keyed by the bare user_id, so Faust's table routing (which hashes the key like
the default partitioner hashes user-events keys) finds the worker that owns a user. The clock's
key starts with the byte 0xFF, which never occurs in UTF-8, so no user_id can collide with it.
"""

from __future__ import annotations

from typing import Any

import orjson

from analytics.partition import Clock, UserState
from app import app
from tables.rocksdb_options import rocksdb_options
from tables.write_through import write_through

CLOCK_KEY = b"\xff\xffclock"

_settings = app.analytics_settings

partition_state: Any = app.Table(
    "partition-state",
    partitions=_settings.engine.topic_partitions,
    key_type=bytes,
    value_type=bytes,
    help="users' profiles and open sessions, and each partition's clock",
    options=rocksdb_options(_settings),
)


def load_user(user_id: str) -> UserState | None:
    stored = partition_state.get(user_id.encode())
    return orjson.loads(stored) if stored is not None else None


def load_clock() -> Clock | None:
    stored = partition_state.get(CLOCK_KEY)
    return orjson.loads(stored) if stored is not None else None


async def save(partition: int, users: dict[str, UserState], dirty: set[str], clock: Clock) -> None:
    """Users first, the clock last: a restored state is then always a prefix of the writes."""
    items = [(user_id.encode(), orjson.dumps(users[user_id])) for user_id in dirty]
    items.append((CLOCK_KEY, orjson.dumps(clock)))
    await write_through(partition_state, partition, items)
