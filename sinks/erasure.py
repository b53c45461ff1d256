"""Erasing a user's rows (analytics.erasure) as a sink reads its topic.

The tracker sends a tombstone (the user_id as key, no value) to ``session-metrics`` after
the user's last session record. The session sink takes its batch in runs cut at the
tombstones: each run's records are written, then the rows of the users whose tombstones
end it are deleted. So a session written just before the erasure is deleted with the rest,
and one of a user who came back after it (a new user, analytics.erasure) is kept: the
deletion is exact whatever the batches look like, and read again after a crash it deletes
nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sinks.db import Connection
from sinks.schema import SESSION_METRICS


class Keyed(Protocol):
    """A consumed record (aiokafka's ConsumerRecord)."""

    @property
    def key(self) -> Any: ...

    @property
    def value(self) -> Any: ...


R = TypeVar("R", bound=Keyed)

#: per table whose rows name a user: the statement deleting the rows of some users
ERASE_STATEMENTS: dict[str, str] = {
    SESSION_METRICS.name: "DELETE FROM session_metrics WHERE user_id = ANY(%s)",
}


class Eraser(Protocol):
    """What deletes a table's rows of some users (sinks.sink.TableSink)."""

    async def erase(self, users: Sequence[str]) -> int:
        """Delete the rows of ``users``, retrying until committed; the rows deleted."""
        ...


def is_tombstone(record: Keyed) -> bool:
    return record.value is None and record.key is not None


def runs(records: Sequence[R]) -> list[tuple[list[R], list[str]]]:
    """``records`` cut after each tombstone: (records to write, users to erase after)."""
    out: list[tuple[list[R], list[str]]] = [([], [])]
    for record in records:
        if is_tombstone(record):
            out[-1][1].append(bytes(record.key).decode("utf-8", "replace"))
        elif out[-1][1]:
            out.append(([record], []))
        else:
            out[-1][0].append(record)
    return out


async def erase_rows(conn: Connection, table: str, users: Sequence[str]) -> int:
    """Delete ``table``'s rows of ``users`` in one transaction; the rows deleted."""
    async with conn.transaction():
        cursor = await conn.execute(ERASE_STATEMENTS[table], (list(users),))
        return max(cursor.rowcount, 0)
