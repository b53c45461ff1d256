"""A one-partition Faust table written outside Faust's streams, the way Faust makes a write
durable: the changelog record first, then RocksDB with the changelog offset it reaches.

Faust's ``table[key] = value`` needs the current event of a stream (it picks the partition
and the changelog offset from it). The combiner reads its input without a Faust stream
(agents/kpi_combiner.py), so it stages a batch's writes here: reads see them at once, and
the combiner publishes them to the changelog, waits for the broker, and writes RocksDB
(tables/rocksdb_store.py), as the hot path does with its own tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class StagedTable:
    """A Faust table's stored values with this batch's changes on top."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.changes:
            return self.changes[key]
        value: bytes | None = self.table.get(key)
        return value

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.changes.pop(key, None)  # the latest change goes last: order matters (large_values)
        self.changes[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.changes.pop(key, None)
        self.changes[key] = None

    def keys(self) -> Iterator[bytes]:
        for key in self.table:
            if key not in self.changes:
                yield key
        yield from (key for key, value in self.changes.items() if value is not None)

    def take(self) -> list[tuple[bytes, bytes | None]]:
        """The staged changes, each key where it last changed; none staged after."""
        changes, self.changes = list(self.changes.items()), {}
        return changes
