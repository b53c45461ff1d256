"""A table partition's RocksDB database (rocksdict, opened by Faust) as the hot path's store.

Faust's ``Store`` picks a partition database from the *current event* and goes through its
buffered changelog; the hot path instead reads and writes one partition's database directly:
``get`` and ``scan`` for ``analytics.state_store.StateStore``, and ``write`` for a batch of
changes whose changelog records the broker has acknowledged, together with the changelog
offset they reach (what Faust's recovery reads from, on its ``offset_key``), in one atomic
RocksDB write batch. The same reads over a dict: tables/memory_store.py.

Writes go through RocksDB's write-ahead log unless ``engine.rocksdb_wal`` is off. The log is
not synced: a process killed with -9 loses nothing the operating system holds, so a restart
opens the state as it was and reads no changelog; a machine that loses power loses the
unflushed end, and Faust's recovery reads the changelog from the offset each write batch
records. Without the log (as Kafka Streams' stores run) the hot path saves about 2 µs a key,
but a worker killed with -9 reads the changelog from its last memtable flush on restart,
at about 10,000 records a second through Faust's recovery (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import rocksdict

from app import faust_compat

OFFSET_KEY = faust_compat.STORE_OFFSET_KEY
"""Where Faust's RocksDB store keeps a partition's persisted changelog offset."""


_NO_LOG = rocksdict.WriteOptions()
_NO_LOG.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub says method
_LOG = rocksdict.WriteOptions()


class RocksStore:
    """One partition database of a Faust RocksDB table."""

    def __init__(self, db: Any, write_ahead_log: bool = True) -> None:
        self.db = db
        self._write_options = _LOG if write_ahead_log else _NO_LOG

    @classmethod
    def of(cls, table: Any, partition: int) -> RocksStore:
        """The partition's database of ``table``, opened by Faust for this worker."""
        wal = table.app.analytics_settings.engine.rocksdb_wal
        return cls(faust_compat.partition_db(table, partition), wal)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        options = rocksdict.ReadOptions()
        options.set_iterate_upper_bound(stop)
        yield from self.db.items(from_key=start, read_opt=options)

    def write(self, writes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int) -> None:
        """Apply ``writes`` in order, and record the changelog offset they reach, atomically."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(OFFSET_KEY, str(changelog_offset).encode())
        self.db.write(batch, write_opt=self._write_options)

    def flush(self, wait: bool = True) -> None:
        """Persist the memtables: a restart then reads the changelog from here on. Without
        ``wait`` RocksDB does it in its own threads."""
        self.db.flush(wait)
