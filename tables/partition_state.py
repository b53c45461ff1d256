"""Per-partition analytics state (analytics.partition), laid out by analytics.partition_codec.

User values are keyed by the bare user_id, so Faust's table routing (which hashes the key like
the default partitioner hashes user-events keys) finds the worker that owns a user. The hot
path (agents/behavior_tracker.py) reads and writes the partition databases directly
(tables/rocksdb_store.py); the web API reads users through Faust's table.
"""

from __future__ import annotations

from typing import Any

from analytics import partition_codec
from analytics.user_state import UserState
from app import app
from tables.rocksdb_options import rocksdb_options
from tables.rocksdb_store import RocksStore

_settings = app.analytics_settings

partition_state: Any = app.Table(
    "partition-state",
    partitions=_settings.engine.topic_partitions,
    key_type=bytes,
    value_type=bytes,
    help="users' profiles and open sessions, open windows and each partition's clock",
    options=rocksdb_options(_settings),
    extra_topic_configs={"max.message.bytes": str(16 * 1024 * 1024)},
)


def load_user(user_id: str) -> UserState | None:
    """A user of a partition this worker holds, as last written (a round or two behind the
    hot path's memory), with its pending rows."""
    topic = partition_state.changelog_topic.get_topic_name()
    partition = app.producer.key_partition(topic, user_id.encode()).partition
    loaded = partition_codec.load_user(RocksStore.of(partition_state, partition), user_id)
    return loaded[0] if loaded is not None else None
