"""Whole-number counters of a fixed width per key: the per-partition partials of funnels,
cohorts and experiments (SPEC 7-9), which partitions add into and the combiner sums."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypeVar

_Table = TypeVar("_Table", bound="CounterTable")


class CounterTable:
    """``counters[key]`` is a list of ``WIDTH`` integers; a key is a tuple of ``KEY_LENGTH``
    plain values. With ``KEEP_ZEROS`` false a key whose counters all come back to 0 is
    dropped, so the table holds only what some user still contributes to."""

    WIDTH: ClassVar[int]
    KEY_LENGTH: ClassVar[int] = 2
    KEEP_ZEROS: ClassVar[bool] = False

    __slots__ = ("changed", "counters")

    def __init__(self) -> None:
        self.counters: dict[tuple[Any, ...], list[int]] = {}
        self.changed: set[tuple[Any, ...]] = set()  # keys added to since take_changes

    def add(self, key: tuple[Any, ...], values: Sequence[int], sign: int = 1) -> None:
        """Add ``values`` (``sign`` -1: subtract them) to the counters of ``key``."""
        counters = self.counters.get(key)
        if counters is None:
            counters = self.counters[key] = [0] * self.WIDTH
        for i, value in enumerate(values):
            counters[i] += sign * value
        if not self.KEEP_ZEROS and not any(counters):
            del self.counters[key]
        self.changed.add(key)

    def take_changes(self) -> list[list[Any]]:
        """``[[*key, *counters], ...]`` of the keys added to since the last call (all zeros
        for a key dropped meanwhile): what a partition publishes instead of its whole table."""
        zeros = [0] * self.WIDTH
        changes = [[*key, *self.counters.get(key, zeros)] for key in sorted(self.changed)]
        self.changed.clear()
        return changes

    def replace(self, changes: Iterable[Sequence[Any]]) -> None:
        """Take ``take_changes`` output of the same table elsewhere (the combiner's copy of a
        partition's table): each key's counters become the ones given."""
        length = self.KEY_LENGTH
        for item in changes:
            key, counters = tuple(item[:length]), list(item[length:])
            if any(counters) or self.KEEP_ZEROS:
                self.counters[key] = counters
            else:
                self.counters.pop(key, None)

    def encode(self) -> list[list[Any]]:
        """``[[*key, *counters], ...]`` in key order."""
        return [[*key, *counters] for key, counters in sorted(self.counters.items())]

    @classmethod
    def decode(cls: type[_Table], data: Iterable[Sequence[Any]]) -> _Table:
        table = cls()
        length = cls.KEY_LENGTH
        for item in data:
            table.counters[tuple(item[:length])] = list(item[length:])
        return table

    @classmethod
    def summed(cls: type[_Table], tables: Iterable[_Table]) -> _Table:
        """The sum of several tables (partitions' partials: their users are disjoint)."""
        total = cls()
        for table in tables:
            for key, counters in table.counters.items():
                total.add(key, counters)
        return total
