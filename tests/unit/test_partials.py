"""The combiner never stops on a kpi-partials record (analytics.partials, analytics.combiner,
agents/kpi_combiner.py): what the partitions publish is taken unchanged, anything else is
refused with errors naming the fields and sent to kpi-partials-dlq, a message the combination
fails on is set apart while the rest of its batch is used, and counters past 64 bits are
summed and published exactly."""

from __future__ import annotations

import random
import zlib
from typing import Any

import orjson
import pytest

from agents import kpi_combiner
from agents.kpi_combiner import CombinedBatch, Received
from analytics import combiner as combiner_module
from analytics import wide_json
from analytics.combiner import CombinerRules, combine, combine_each, new_state
from analytics.partials import (
    INT64_MAX,
    KPI_COUNTERS,
    MAX_COUNTER,
    MAX_ERRORS,
    PartialLimits,
    PartialRejected,
    check_message,
    decode_message,
)
from analytics.timeutil import format_ts
from generator.traffic import TrafficProfile, generate
from tests.pure_pipeline import PureCombiner, PurePartition

W = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PARTITIONS = 4
LIMITS = PartialLimits(partitions=PARTITIONS, window_ms=W)
RULES = CombinerRules(partitions=PARTITIONS, window_ms=W)


def partial(
    partition: int = 0, start: int = T0, *, final: bool = True, **kpi: int
) -> dict[str, Any]:
    counters = dict.fromkeys(KPI_COUNTERS, 0) | {"events": 1, "active_users": 1} | kpi
    return {
        "type": "partial",
        "partition": partition,
        "window_start": start,
        "final": final,
        "kpi": counters,
        "pages": {"/home": [1, 1, 500]} if final else {},
        "dims": {"device": {"mobile": [1, 1, 1, 0]}} if final else {},
    }


def progress(partition: int, wm: int | None, late: int = 0) -> dict[str, Any]:
    return {"type": "progress", "partition": partition, "wm": wm, "late": late, "arrived": T0}


def test_every_message_the_partitions_publish_is_taken_unchanged() -> None:
    profile = TrafficProfile(seed=9, users=40, start_ms=T0, span_ms=20 * W, events=1_500)
    profile = TrafficProfile(**{**profile.__dict__, "disorder_ms": 5_000, "invalid_rate": 0.02})
    parts = [PurePartition(p) for p in range(PARTITIONS)]
    batches: list[list[bytes]] = [[] for _ in parts]
    keys: list[list[bytes | None]] = [[] for _ in parts]
    for event in generate(profile):
        value = event if isinstance(event, bytes) else orjson.dumps(event)
        user = event.get("user_id") if isinstance(event, dict) else None
        key = user.encode() if isinstance(user, str) else None
        p = zlib.crc32(key or b"") % PARTITIONS
        batches[p].append(value)
        keys[p].append(key)
    rng = random.Random(3)
    seen = 0
    for part, values, part_keys in zip(parts, batches, keys, strict=True):
        while values:
            size = rng.randint(1, 60)
            chunk, values = values[:size], values[size:]
            chunk_keys, part_keys = part_keys[:size], part_keys[size:]
            messages = part.messages(chunk, chunk_keys, arrived_ms=T0 + part.offset)
            for raw in part.run(messages, live=rng.random() < 0.5).partials:
                message = orjson.loads(raw)
                assert check_message(message, LIMITS) == message
                seen += 1
    assert seen > 100


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (b"", ["message"]),
        (b"{not json", ["message"]),
        (b"\xff\xfe", ["message"]),
        (b"[1, 2]", ["message"]),
        (b'"partial"', ["message"]),
        (orjson.dumps({"type": "window", "partition": 0}), ["type"]),
        (orjson.dumps({"type": "progress", "wm": 1, "late": 0}), ["partition"]),
        (orjson.dumps(progress(PARTITIONS, 1)), ["partition"]),  # a partition we do not have
        (orjson.dumps(progress(True, 1)), ["partition"]),
        (orjson.dumps(progress(0, "soon")), ["wm"]),  # type: ignore[arg-type]
        (orjson.dumps(progress(0, 1, late=-1)), ["late"]),
        (orjson.dumps(progress(0, 2**64 - 1)), ["wm"]),
        (orjson.dumps(partial(start=T0 + 1)), ["window_start"]),  # not a window of 60 s
        (orjson.dumps(partial(start=2**62)), ["window_start"]),  # after year 9999
        (orjson.dumps(partial(start=253_402_300_740_000)), ["window_start"]),  # ends in 10000
        (orjson.dumps({**partial(), "final": "yes"}), ["final"]),
        (orjson.dumps({**partial(), "kpi": []}), ["kpi"]),
        (orjson.dumps(partial(events=-1)), ["kpi.events"]),
        (wide_json.dumps(partial(revenue_cents=MAX_COUNTER + 1)), ["kpi.revenue_cents"]),
        (
            b'{"type":"partial","partition":0,"window_start":0,"final":true,'
            b'"kpi":{"events":1.5e300}}',
            ["kpi.events", *[f"kpi.{n}" for n in KPI_COUNTERS[1:9]]],
        ),
        (orjson.dumps({**partial(), "pages": {"/a": [1, 1]}}), ["pages./a"]),
        (orjson.dumps({**partial(), "pages": {"/a": [1, "1", 1]}}), ["pages./a[1]"]),
        (
            orjson.dumps({**partial(), "pages": {"/" + "a" * 2048: [1, 1, 1]}}),
            ["pages./aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa..."],
        ),
        (orjson.dumps({**partial(), "dims": {"planet": {"mars": [1, 1, 1, 1]}}}), ["dims.planet"]),
        (
            orjson.dumps({**partial(), "dims": {"device": {"x": [1, 1, 1, None]}}}),
            ["dims.device.x[3]"],
        ),
    ],
)
def test_what_the_combiner_cannot_use_is_refused_naming_the_field(
    raw: bytes, fields: list[str]
) -> None:
    with pytest.raises(PartialRejected) as rejected:
        decode_message(raw, LIMITS)
    assert [error.field for error in rejected.value.errors][: len(fields)] == fields
    assert str(rejected.value).startswith(f"{fields[0]}: ")


def test_a_message_with_many_problems_lists_a_bounded_number_of_them() -> None:
    message = {**partial(), "pages": {f"/p{n}": [-1, -1, -1] for n in range(1_000)}}
    with pytest.raises(PartialRejected) as rejected:
        check_message(message, LIMITS)
    errors = rejected.value.errors
    assert len(errors) == MAX_ERRORS + 1
    assert (errors[-1].field, errors[-1].message) == ("message", "and 2990 more problems")


def test_fields_the_combiner_does_not_read_are_left_out() -> None:
    message = {**progress(1, T0), "from": "a newer tracker", "extra": [1]}
    assert check_message(message, LIMITS) == progress(1, T0)


def test_counters_at_their_bound_in_every_partition_are_summed_exactly() -> None:
    """The most each partition may publish (more than valid input reaches, far past 64 bits),
    summed by the combiner: every output and the state encode and decode back exactly."""
    top = LIMITS.max_counter
    state = new_state()
    messages = []
    for p in range(PARTITIONS):
        big = partial(p)
        big["kpi"] = dict.fromkeys(KPI_COUNTERS, top)
        big["pages"] = {"/home": [top, top, top]}
        big["dims"] = {d: {"x": [top] * 4} for d in ("device", "country", "browser")}
        messages += [check_message(big, LIMITS), progress(p, T0 + W, late=top)]
    out = combine(state, messages, RULES)
    (kpi,) = out.kpis
    assert kpi["is_final"] and kpi["total_revenue_cents"] == top * PARTITIONS > INT64_MAX
    assert kpi["late_events_total"] == top * PARTITIONS
    assert out.pages[0]["views"] == top * PARTITIONS
    for record in [*out.kpis, *out.pages, *out.traffic, state]:
        assert wide_json.loads(wide_json.dumps(record)) == record


def test_a_message_the_combination_fails_on_is_set_apart_and_the_rest_is_used() -> None:
    state = new_state()
    good = [partial(p) for p in range(PARTITIONS)] + [progress(p, T0 + W) for p in range(3)]
    broken = {"type": "partial", "partition": "0", "window_start": "soon"}  # never checked
    messages = [*good[:2], broken, *good[2:], progress(3, T0 + W)]
    before = orjson.dumps(state)
    out, failed = combine_each(state, messages, RULES, live=False)
    assert [index for index, _ in failed] == [2]
    assert failed[0][1] == "could not be processed: KeyError('final')"
    finals = [k for k in out.kpis if k["is_final"]]
    assert [(k["window_start"], k["total_events"]) for k in finals] == [(format_ts(T0), 4)]
    # the same messages without the broken one, folded in one go, leave the same state
    again = orjson.loads(before)
    combine(again, [m for m in messages if m is not broken], RULES, live=False)
    assert orjson.loads(orjson.dumps(state)) == orjson.loads(orjson.dumps(again))


def test_the_pure_combiner_publishes_finals_from_the_partitions() -> None:
    parts = [PurePartition(p) for p in range(2)]
    comb = PureCombiner(CombinerRules(partitions=2, window_ms=W))
    kpis = []
    for ts in (T0 + 1_000, T0 + W + 20_000):
        for part in parts:
            event = {"user_id": f"u{part.index}", "action": "page_view", "page": "/a"}
            event["timestamp"] = format_ts(ts)
            raw = part.messages([orjson.dumps(event)], [f"u{part.index}".encode()], ts)
            kpis += comb.fold(part.run(raw).partials).kpis
    finals = [k for k in kpis if k["is_final"]]
    assert [(k["window_start"], k["total_events"]) for k in finals] == [(format_ts(T0), 2)]


# --------------------------------------------------------------------------- the agent


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kpi_combiner, "RULES", RULES)
    monkeypatch.setattr(kpi_combiner, "LIMITS", LIMITS)


def received(values: list[bytes]) -> list[Received]:
    return [Received("kpi-partials", 0, n, T0, v) for n, v in enumerate(values)]


def sent_values(combined: CombinedBatch, topic_end: str) -> list[Any]:
    """The JSON values of the batch's records to a topic, as they are sent."""
    return [
        orjson.loads(orjson.dumps(value))
        for topic, _, value, _ in combined.records
        if topic.endswith(topic_end)
    ]


def test_the_agent_dead_letters_what_it_cannot_use_and_publishes_the_rest(agent: None) -> None:
    good = [orjson.dumps(partial(p)) for p in range(PARTITIONS)]
    good += [orjson.dumps(progress(p, T0 + W)) for p in range(PARTITIONS)]
    bad = [b"{not json", orjson.dumps(partial(7)), orjson.dumps(partial(0, events=-5))]
    batch = received([bad[0], *good[:4], bad[1], *good[4:], bad[2]])
    combined = kpi_combiner.combine_received(new_state(), batch)
    letters = sent_values(combined, "kpi-partials-dlq")
    assert [(d["offset"], d["errors"][0]["field"]) for d in letters] == [
        (0, "message"),
        (5, "partition"),
        (10, "kpi.events"),
    ]
    assert all(d["source"] == "kpi-combiner" and d["topic"] == "kpi-partials" for d in letters)
    assert letters[0]["raw"] == "{not json" and letters[0]["error"].startswith("message: invalid")
    assert letters[0]["received_at"] == format_ts(T0)
    finals = [v for v in sent_values(combined, "live-kpis") if v["is_final"]]
    assert [(k["window_start"], k["total_events"]) for k in finals] == [(format_ts(T0), 4)]
    assert combined.state is not None and combined.state["applied"] == 10
    # the same batch again (a re-delivery after a crash) is applied already
    assert kpi_combiner.combine_received(combined.state, batch).state is None


def test_when_the_batch_fails_the_agent_folds_it_again_message_by_message(
    agent: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that one message meets: the batch starts again from the saved state, one message
    at a time; that message goes to the dead letters, the others are used."""
    poison = T0 + 7 * W
    real_combine = combine

    def buggy(state: Any, messages: Any, rules: Any, *, live: bool = True) -> Any:
        out = real_combine(state, messages, rules, live=live)  # state changed, then it fails
        if any(m.get("window_start") == poison for m in messages):
            raise ZeroDivisionError("a bug")
        return out

    monkeypatch.setattr(kpi_combiner, "combine", buggy)
    monkeypatch.setattr(combiner_module, "combine", buggy)
    values = [orjson.dumps(partial(p)) for p in range(PARTITIONS)]
    values.insert(2, orjson.dumps(partial(1, poison)))
    values += [orjson.dumps(progress(p, T0 + W)) for p in range(PARTITIONS)]
    combined = kpi_combiner.combine_received(new_state(), received(values))
    letters = sent_values(combined, "kpi-partials-dlq")
    assert [d["offset"] for d in letters] == [2]
    assert letters[0]["error"] == "message: could not be processed: ZeroDivisionError('a bug')"
    finals = [v for v in sent_values(combined, "live-kpis") if v["is_final"]]
    assert [(k["window_start"], k["total_events"]) for k in finals] == [(format_ts(T0), 4)]
    state = combined.state
    assert state is not None
    assert str(poison) not in state["windows"] and state["applied"] == 8
