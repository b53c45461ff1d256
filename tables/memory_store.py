"""A partition's state in a plain dict: the same reads as the RocksDB store
(tables/rocksdb_store.py), for unit tests and benchmarks of the pure code."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class MemoryStore:
    """``analytics.state_store.StateStore`` over a dict; ``apply`` takes a batch's writes."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(items or {})
        self._keys: list[bytes] | None = None  # sorted, until the next write

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        if self._keys is None:
            self._keys = sorted(self.data)
        keys = self._keys
        for key in keys[bisect.bisect_left(keys, start) : bisect.bisect_left(keys, stop)]:
            yield key, self.data[key]

    def apply(self, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
        self._keys = None
        for key, value in writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
