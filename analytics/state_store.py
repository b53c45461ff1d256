"""Where a partition's state is read from (its RocksDB table partition, or a dict in tests and
benches) and the form of what a batch writes to it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class StateStore(Protocol):
    """Where a partition's state is read from: its table partition (RocksDB), or a dict."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterable[tuple[bytes, bytes]]:
        """Items with ``start <= key < stop``, in key order."""
        ...


Write = tuple[bytes, bytes | None]
"""A key and its new value; None deletes the key."""
