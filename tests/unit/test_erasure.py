"""Erasing a user from a partition (analytics.erasure): which keys go, what open windows
count afterwards, idempotence, and how rounds and sink batches are cut around erasures."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from analytics import partition_codec
from analytics.erasure import (
    Erasure,
    before_clock,
    erase,
    seen_keys,
    segments,
    state_keys,
)
from analytics.journeys import EXPIRY
from analytics.partition import PartitionRules, PartitionState, apply_batch
from analytics.timeutil import format_ts
from analytics.tracking import RawMessage, TrackerRules, dedup_key, track_batch
from sinks.erasure import runs
from tables.memory_store import MemoryStore
from tests.pure_pipeline import PurePartition

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RULES = PartitionRules()


def event(user: str, n: int, at_ms: int, action: str = "page_view") -> tuple[bytes, bytes]:
    body: dict[str, Any] = {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "action": action,
        "page": f"/p{n % 3}",
        "timestamp": format_ts(at_ms),
        "duration": 1000 * n,
    }
    if action == "purchase":
        body["metadata"] = {"amount": 12.5}
    return user.encode(), orjson.dumps(body)


ARRIVED_MS = START_MS + 2 * 3_600_000  # after every event time here: none is clamped


def send(part: PurePartition, events: list[tuple[bytes, bytes]]) -> list[bytes]:
    keys = [key for key, _ in events]
    values = [value for _, value in events]
    return part.run(part.messages(values, list(keys), ARRIVED_MS), live=True).partials


def erase_in(part: PurePartition, user: str) -> tuple[Any, list[Any]]:
    """Erase ``user`` at the partition's next offset, as the tracker does; the writes go in."""
    state = PartitionState(part.store, part.rules)
    seen = MemoryStore({key: value.encode() for key, value in part.seen.items()})
    erased, writes, seen_writes = erase(state, seen, Erasure(part.offset, 0, user), part.index)
    part.offset += 1
    part.store.apply(writes)
    for key, _ in seen_writes:
        part.seen.pop(key, None)
    return erased, writes


def traffic(users: list[str], start_ms: int) -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(6):
        for user in users:
            action = "purchase" if n == 4 else "page_view"
            out.append(event(user, n, start_ms + n * 7_000 + len(user), action))
    return out


def final_kpis(partials: list[bytes]) -> dict[int, dict[str, Any]]:
    found = {}
    for raw in partials:
        message = orjson.loads(raw)
        if message.get("type") == "partial" and message.get("final"):
            found[message["window_start"]] = {
                "kpi": message["kpi"],
                "pages": message["pages"],
                "dims": message["dims"],
            }
    return found


def test_every_key_of_the_user_goes_and_no_other_users() -> None:
    part = PurePartition(0)
    send(part, traffic(["alice", "al", "bob"], START_MS))
    part.store.apply([(EXPIRY + (5).to_bytes(8, "big") + b"alice", b"")])
    before = set(part.store.data)
    keys = state_keys(part.store, "alice")
    assert b"alice" in keys and all(b"alice" in key for key in keys)
    assert any(key.startswith(partition_codec.ROW) for key in keys)
    assert any(key.startswith(partition_codec.MEMBER) for key in keys)
    assert any(key.startswith(EXPIRY) for key in keys)

    erased, _ = erase_in(part, "alice")

    assert erased.profile and erased.events == 6 and erased.open_sessions == 1
    assert erased.state_keys == len(keys) and erased.dedup_records == 6
    assert not [key for key in part.store.data if b"alice" in key]
    others = {key for key in before if b"alice" not in key}
    assert others <= set(part.store.data)  # "al" and "bob" untouched
    assert PartitionState(part.store, RULES).user("al") is not None
    assert not [key for key in part.seen if b"alice" in key]
    assert len([key for key in part.seen if key.startswith(b"2:al")]) == 6


def test_open_windows_count_as_if_the_user_had_never_come() -> None:
    """The exact rule of docs/contract-choices.md: a window not final at the erasure ends
    with the figures of the same traffic without the user."""
    closing = [event("bob", 99, START_MS + 3_600_000)]
    erased_part, never_part = PurePartition(0), PurePartition(0)
    send(erased_part, traffic(["alice", "bob", "carol"], START_MS))
    erase_in(erased_part, "alice")
    erased_finals = final_kpis(send(erased_part, closing))
    send(never_part, traffic(["bob", "carol"], START_MS))
    never_finals = final_kpis(send(never_part, closing))
    assert erased_finals and erased_finals == never_finals


def test_the_same_with_the_state_kept_in_memory_as_the_tracker_does() -> None:
    """The tracker keeps its PartitionState between rounds (running figures included)."""
    part = PurePartition(0)
    state = PartitionState(part.store, RULES)
    seen = MemoryStore()

    def run(events: list[tuple[bytes, bytes]]) -> dict[int, dict[str, Any]]:
        raws = part.messages([v for _, v in events], [k for k, _ in events], ARRIVED_MS)
        tracked = track_batch(raws, topic="t", lookup=lambda key: None, rules=TrackerRules())
        out = apply_batch(state, tracked.timeline, RULES, live=True)
        part.store.apply(state.take_writes())
        return final_kpis([orjson.dumps({"type": "partial", **p}) for p in out.partials])

    run(traffic(["alice", "bob", "carol"], START_MS))
    erased, writes, _ = erase(state, seen, Erasure(part.offset, 0, "alice"), 0)
    part.offset += 1
    part.store.apply(writes)
    finals = run([event("bob", 99, START_MS + 3_600_000)])
    never = PurePartition(0)
    send(never, traffic(["bob", "carol"], START_MS))
    assert (
        erased.profile
        and finals
        and finals == final_kpis(send(never, [event("bob", 99, START_MS + 3_600_000)]))
    )


def test_windows_final_before_the_erasure_keep_the_user() -> None:
    part = PurePartition(0)
    first = final_kpis(
        send(part, [*traffic(["alice", "bob"], START_MS), event("bob", 50, START_MS + 300_000)])
    )
    assert first[START_MS]["kpi"]["active_users"] == 2
    state_before = PartitionState(part.store, RULES).clock.users_total
    erase_in(part, "alice")
    assert PartitionState(part.store, RULES).clock.users_total == state_before  # stays counted


def test_a_second_erasure_removes_nothing_and_a_replay_writes_nothing() -> None:
    part = PurePartition(0)
    send(part, traffic(["alice", "bob"], START_MS))
    erase_in(part, "alice")
    data = dict(part.store.data)
    again, writes = erase_in(part, "alice")
    assert not again.profile and (again.events, again.state_keys, again.dedup_records) == (0, 0, 0)
    assert [key for key, _ in writes] == [partition_codec.CLOCK_KEY]
    assert {k: v for k, v in part.store.data.items() if k != partition_codec.CLOCK_KEY} == {
        k: v for k, v in data.items() if k != partition_codec.CLOCK_KEY
    }
    state = PartitionState(part.store, RULES)
    replay = Erasure(state.clock.applied, 0, "bob")  # an offset the state applied already
    erased, writes, seen_writes = erase(state, MemoryStore(), replay, 0)
    assert (writes, seen_writes, erased.profile) == ([], [], False)


def test_events_after_the_erasure_start_a_new_user() -> None:
    part = PurePartition(0)
    send(part, traffic(["alice"], START_MS))
    erase_in(part, "alice")
    send(part, [event("alice", 7, START_MS + 50_000)])
    user = PartitionState(part.store, RULES).user("alice")
    assert user is not None and user.events == 1 and user.first_seen == START_MS + 50_000


def test_dedup_keys_are_found_by_the_length_prefixed_user() -> None:
    store = MemoryStore(
        {dedup_key("ab", "c1"): b"1:1", dedup_key("abc", "1"): b"1:2", dedup_key("a", "bc"): b""}
    )
    assert seen_keys(store, "ab") == [dedup_key("ab", "c1")]


def test_deletions_go_just_before_the_clock() -> None:
    clock = (partition_codec.CLOCK_KEY, b"{}")
    writes = [(b"w", b"1"), clock, (b"after", None)]
    assert before_clock(writes, [b"x"]) == [(b"w", b"1"), (b"x", None), clock, (b"after", None)]
    assert before_clock([], [b"x"]) == [(b"x", None)]


def test_an_erasure_makes_a_round_of_its_own() -> None:
    assert segments([1, 2, 0, 3, 0, 0], lambda m: m == 0) == [[1, 2], [0], [3], [0], [0]]
    assert segments([1, 2], lambda m: m == 0) == [[1, 2]]


def test_the_request_is_neither_an_event_nor_a_dead_letter() -> None:
    request = RawMessage(b"alice", b"", 0, 7, START_MS, erase=True)
    tracked = track_batch([request], topic="t", lookup=lambda key: None, rules=TrackerRules())
    assert (tracked.timeline, tracked.dead_letters, tracked.failures) == ([], [], 0)


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None


def test_sink_batches_are_cut_after_tombstones() -> None:
    s1, s2, t, other = (
        Record(b"a", b"1"),
        Record(b"a", b"2"),
        Record(b"a", None),
        Record(None, b"3"),
    )
    assert runs([s1, other, t, s2]) == [([s1, other], ["a"]), ([s2], [])]
    assert runs([t, Record(b"b", None), s1]) == [([], ["a", "b"]), ([s1], [])]
    assert runs([s1]) == [([s1], [])]
