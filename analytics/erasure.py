"""Erasing one user from a partition's state (``DELETE /api/users/{user_id}``).

An erasure is a request record on ``user-events``, keyed by the user_id (so it lands on the
user's partition, after the user's earlier events) with no value and the ``ERASE_HEADER``:
it is a tombstone for the user on that topic, and the tracker handles it in offset order, in
a round of its own (agents/behavior_tracker.py). What it removes:

* the user's value and everything keyed by the user in the partition state
  (analytics.partition_codec: pending rows, pieces, window members, the close index entry;
  analytics.journeys: the expiry index entry), found by ``state_keys``;
* the user's dedup records (analytics.tracking ``dedup_key``), found by ``seen_keys``;
* the user from every open window (``PartitionState.forget_user``): its events leave the
  live counters, the window's other figures are worked out again from the remaining users.

Windows final before the erasure keep their figures, and so do the anonymous SPEC 7-9
shares (funnel days, cohort rows, experiment counters: docs/contract-choices.md,
"Erasure"). The deletions go into the round's writes just before the partition's clock:
a restore that holds the clock holds them, one that does not replays the erasure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from analytics import journeys, partition_codec
from analytics.partition import PartitionState, StateStore, Write

T = TypeVar("T")

ERASE_HEADER = "x-analytics-erase"
"""Marks a ``user-events`` record as an erasure request (its key the user_id, no value)."""


class Erasure(NamedTuple):
    """An erasure request as the tracker takes it: where it sits and whom it erases."""

    offset: int
    timestamp_ms: int
    user_id: str


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure removed (the answer of ``DELETE /api/users/{user_id}``)."""

    user_id: str
    partition: int
    offset: int
    profile: bool
    """Whether the partition knew the user (False: erased already, or never seen)."""
    events: int
    """Events the user's profile counted."""
    open_sessions: int
    """Sessions not yet closed, dropped without being written."""
    state_keys: int
    dedup_records: int

    def answer(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "erased": True,
            "removed": {
                "profile": self.profile,
                "events": self.events,
                "open_sessions": self.open_sessions,
                "state_keys": self.state_keys,
                "dedup_records": self.dedup_records,
            },
        }


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _scan_keys(store: StateStore, prefix: bytes) -> list[bytes]:
    return [key for key, _ in store.scan(prefix, _prefix_end(prefix))]


def _timed_keys(store: StateStore, prefix: bytes, user_id: bytes) -> list[bytes]:
    """Keys ``prefix + 8-byte time + user_id`` of this user (window members, close index,
    expiry index): whole indexes scanned, an erasure is rare and they are small."""
    return [key for key in _scan_keys(store, prefix) if key[len(prefix) + 8 :] == user_id]


def state_keys(store: StateStore, user_id: str) -> list[bytes]:
    """Every key of the partition state that belongs to ``user_id``."""
    user = user_id.encode()
    keys = [user] if store.get(user) is not None else []
    keys += _scan_keys(store, partition_codec.user_rows(user_id))
    named = partition_codec.user_rows(user_id)[len(partition_codec.ROW) :]  # length-prefixed
    keys += _scan_keys(store, partition_codec.PIECE + named)
    for prefix in (partition_codec.MEMBER, partition_codec.CLOSE, journeys.EXPIRY):
        keys += _timed_keys(store, prefix, user)
    return keys


def seen_prefix(user_id: str) -> bytes:
    """The prefix of the user's dedup keys (analytics.tracking ``dedup_key``)."""
    return f"{len(user_id)}:{user_id}".encode()


def seen_keys(store: StateStore, user_id: str) -> list[bytes]:
    return _scan_keys(store, seen_prefix(user_id))


def before_clock(
    writes: list[tuple[bytes, bytes | None]], deletions: list[bytes]
) -> list[tuple[bytes, bytes | None]]:
    """``writes`` with ``deletions`` put just before the clock (module docstring)."""
    deletes: list[tuple[bytes, bytes | None]] = [(key, None) for key in deletions]
    for index, (key, _) in enumerate(writes):
        if key == partition_codec.CLOCK_KEY:
            return writes[:index] + deletes + writes[index:]
    return writes + deletes


def segments(messages: list[T], is_erasure: Callable[[T], bool]) -> list[list[T]]:
    """``messages`` cut around each erasure request, which makes a round of its own: its
    tombstones follow the user's records of the rounds before and precede any later ones."""
    out: list[list[T]] = [[]]
    for message in messages:
        if is_erasure(message):
            out += [[message], []]
        else:
            out[-1].append(message)
    return [segment for segment in out if segment]


def erase(
    state: PartitionState, seen: StateStore, request: Erasure, partition: int
) -> tuple[Erased, list[Write], list[Write]]:
    """Erase ``request.user_id`` from a partition: what it removed, the state's writes (its
    open windows, the user's keys deleted, the clock) and the dedup records' deletions.
    ``state.store`` and ``seen`` must read the earlier rounds' writes (overlays)."""
    user_id = request.user_id
    if request.offset <= state.clock.applied:  # applied already: nothing to do again
        return Erased(user_id, partition, request.offset, False, 0, 0, 0, 0), [], []
    keys = state_keys(state.store, user_id)
    user = state.forget_user(user_id, request.offset)
    dedup = seen_keys(seen, user_id)
    open_sessions = len(user.open_sessions(user_id, state.rules.gap_ms)) if user else 0
    erased = Erased(
        user_id,
        partition,
        request.offset,
        profile=user is not None,
        events=user.events if user is not None else 0,
        open_sessions=open_sessions,
        state_keys=len(keys),
        dedup_records=len(dedup),
    )
    return erased, before_clock(state.take_writes(), keys), [(key, None) for key in dedup]
