"""RocksDB options shared by every table: rocksdict, small caches and buffers per partition.

The RocksDB default block cache is 2 GiB per partition database (../shared/FACTS.md), and
Faust's default write buffer 64 MiB, up to three of them: with 8 partitions of 3 tables that
alone could hold gigabytes of memtables.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def rocksdb_options(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "rocksdict",
        "block_cache_size": settings.engine.rocksdb_block_cache_mib * 1024 * 1024,
        "write_buffer_size": settings.engine.rocksdb_write_buffer_mib * 1024 * 1024,
        "max_write_buffer_number": 2,
        **extra,
    }
