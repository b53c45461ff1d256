"""Which event_ids each partition has seen recently, for dropping repeats (SPEC section 1).

Key: ``analytics.tracking.dedup_key(user_id, event_id)``; value: ``SeenEvent.encode()``.
Entries older than the dedup window no longer matter; RocksDB's TTL and the changelog's
retention remove them some time after that.
"""

from __future__ import annotations

from typing import Any

from app import app
from tables.rocksdb_options import rocksdb_options

_settings = app.analytics_settings
_keep_seconds = int(_settings.engine.dedup_window.total_seconds()) + 3600

seen_events: Any = app.Table(
    "seen-event-ids",
    partitions=_settings.engine.topic_partitions,
    key_type=bytes,
    value_type=bytes,
    help="event_ids seen within the dedup window, per partition",
    options=rocksdb_options(_settings, ttl=_keep_seconds),
    extra_topic_configs={
        "cleanup.policy": "compact,delete",
        "retention.ms": str(_keep_seconds * 1000),
    },
)
