"""RocksDB options shared by every table: rocksdict, and a small block cache per partition.

The RocksDB default block cache is 2 GiB per partition database (../shared/FACTS.md).
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def rocksdb_options(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "rocksdict",
        "block_cache_size": settings.engine.rocksdb_block_cache_mib * 1024 * 1024,
        **extra,
    }
