"""Writes on their way to a store, read as if they were there already.

The hot path produces a round's state changes to their changelog and writes them to RocksDB
only once the broker has acknowledged them (RocksDB never ahead of its changelog); meanwhile
the next round is computed, and must read them. An ``OverlayStore`` holds them over the
partition's ``RocksStore`` until they are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class ReadableStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterable[tuple[bytes, bytes]]: ...


class OverlayStore:
    """``analytics.state_store.StateStore`` over ``base`` with pending writes on top."""

    def __init__(self, base: ReadableStore) -> None:
        self.base = base
        self.pending: dict[bytes, bytes | None] = {}

    def stage(self, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Writes not yet in ``base``, in order (a later write of a key wins)."""
        self.pending.update(writes)

    def clear(self) -> None:
        """The staged writes are in ``base`` now."""
        self.pending.clear()

    def written(self, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """These staged writes are in ``base`` now; keys staged again since (by a later
        round, with another value object) stay."""
        pending = self.pending
        for key, value in writes:
            if key in pending and pending[key] is value:
                del pending[key]

    def get(self, key: bytes) -> bytes | None:
        pending = self.pending
        if key in pending:
            return pending[key]
        return self.base.get(key)

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        staged = {k: v for k, v in self.pending.items() if start <= k < stop}
        if not staged:
            yield from self.base.scan(start, stop)
            return
        merged = {k: v for k, v in self.base.scan(start, stop) if k not in staged}
        merged.update((k, v) for k, v in staged.items() if v is not None)
        for key in sorted(merged):
            yield key, merged[key]
