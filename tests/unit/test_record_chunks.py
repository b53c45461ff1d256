"""Records larger than a Kafka message (analytics.record_chunks): split into chunks that each
fit and each pass the checks of their topic, put together again exactly by the combiner and
the session sink, whatever is replayed, interleaved or left unfinished by a stopped producer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from agents.behavior_tracker import session_record
from analytics import record_chunks, wide_json
from analytics.combiner import CombinerRules, combine, new_state
from analytics.partials import KPI_COUNTERS, PartialLimits, check_message, decode_message
from analytics.record_chunks import PARTIAL, SESSION, ChunkError, encode, gather, split
from analytics.sessions import SessionSummary
from sinks.consumer import SinkConsumer
from sinks.schema import SESSION_METRICS, prepare
from tests.unit.test_sinks_consumer import FakeConsumer, FakeSink, Message, sink_consumer

W = 60_000
T0 = 1_767_225_600_000
PARTITIONS = 2
LIMITS = PartialLimits(PARTITIONS, W)
RULES = CombinerRules(PARTITIONS, W)
LIMIT = 4096  # a small message size, so that tests split small records
LONG = "\x01" * 2000  # a page part of 12 KB as JSON escapes (SPEC 1: any characters)


def final_partial(partition: int, pages: int, start: int = T0) -> dict[str, Any]:
    kpi = dict.fromkeys(KPI_COUNTERS, 0) | {"events": pages, "page_views": pages}
    return {
        "type": "partial",
        "partition": partition,
        "window_start": start,
        "final": True,
        "kpi": kpi | {"active_users": 1, "users_total": 1, "new_users": 1},
        "pages": {f"/{partition}/{n:04d}{LONG}": [1, 1, n] for n in range(pages)},
        "dims": {
            "device": {"desktop": [pages, 1, pages, 0]},
            "country": {},
            "browser": {f"b{n}" + "x" * 900: [1, 1, 1, n] for n in range(pages)},
        },
    }


def progress(partition: int, wm: int) -> dict[str, Any]:
    return {"type": "progress", "partition": partition, "wm": wm, "late": 0, "arrived": T0}


def test_a_record_that_fits_is_published_whole() -> None:
    record = final_partial(0, 2)
    assert encode(record, PARTIAL) == [orjson.dumps(record)]


@given(st.integers(1, 120), st.integers(0, 3))
def test_chunks_fit_pass_the_checks_and_make_the_record_again(pages: int, skip: int) -> None:
    record = final_partial(1, pages)
    chunks = encode(record, PARTIAL, limit=64 * 1024)
    assert all(len(chunk) <= 64 * 1024 for chunk in chunks)
    values = [orjson.loads(chunk) for chunk in chunks]
    if len(chunks) > 1:
        assert all(check_message(v, LIMITS)["chunk"] == v["chunk"] for v in values)
    # the first chunks sent by a producer that stopped, then all of them again: the record,
    # once (a whole set sent again gives the record again: an overwrite for its consumers)
    pending: dict[str, Any] = {}
    wholes = []
    replayed = values[: min(skip, len(values) - 1)]
    for value in replayed + values:
        if "chunk" not in value:
            wholes.append(value)
            continue
        whole = gather(pending, value, PARTIAL)
        if whole is not None:
            wholes.append(whole)
    assert wholes == [record] and pending == {}


def test_a_dimension_with_no_values_survives_the_split() -> None:
    record = final_partial(0, 20)
    values = [orjson.loads(chunk) for chunk in split(record, PARTIAL, limit=LIMIT * 8)]
    assert all(v["dims"].keys() == record["dims"].keys() for v in values)
    assert record_chunks.assemble(values, PARTIAL) == record


def test_a_version_left_unfinished_is_dropped_when_another_is_complete() -> None:
    """A producer stopped half-way; its round is sent again (here with other figures)."""
    first = [orjson.loads(c) for c in split(final_partial(0, 30), PARTIAL, limit=LIMIT * 8)]
    again = final_partial(0, 30)
    again["kpi"]["events"] = 31
    second = [orjson.loads(c) for c in split(again, PARTIAL, limit=LIMIT * 8)]
    pending: dict[str, Any] = {}
    assert gather(pending, first[0], PARTIAL) is None
    results = [gather(pending, chunk, PARTIAL) for chunk in second]
    assert results[-1] == again and pending == {}


def test_chunks_that_do_not_make_their_record_are_refused() -> None:
    values = [orjson.loads(c) for c in split(final_partial(0, 30), PARTIAL, limit=LIMIT * 8)]
    values[-1]["pages"] = {"/forged": [1, 1, 1]}
    pending: dict[str, Any] = {}
    with pytest.raises(ChunkError, match="do not make the record"):
        for value in values:
            gather(pending, value, PARTIAL)
    assert pending == {}


@pytest.mark.parametrize(
    ("chunk", "field"),
    [
        ("one", "chunk"),
        ({"index": 0, "count": 0, "digest": "0" * 16}, "chunk.count"),
        ({"index": 2, "count": 2, "digest": "0" * 16}, "chunk.index"),
        ({"index": 0, "count": 2, "digest": "short"}, "chunk.digest"),
    ],
)
def test_a_malformed_chunk_is_refused_naming_the_field(chunk: Any, field: str) -> None:
    message = {**final_partial(0, 1), "chunk": chunk}
    with pytest.raises(Exception) as refused:
        decode_message(orjson.dumps(message), LIMITS)
    assert str(refused.value).startswith(f"{field}: ")


def test_the_combiner_puts_chunks_together_across_batches_and_partitions() -> None:
    """Chunks of two partitions' partials interleaved, over batches whose state goes through
    JSON between them, one chunk replayed: the same figures as the partials sent whole."""
    partials = [final_partial(p, 60) for p in range(PARTITIONS)]
    chunked = [[orjson.loads(c) for c in split(p, PARTIAL, limit=LIMIT * 16)] for p in partials]
    assert all(len(c) > 2 for c in chunked)
    stream: list[dict[str, Any]] = []
    for pair in zip(*chunked, strict=False):
        stream += pair
    stream.insert(3, chunked[0][0])  # a replay
    stream += [progress(p, T0 + W) for p in range(PARTITIONS)]
    state = new_state()
    out_kpis, out_pages = [], []
    for at in range(0, len(stream), 3):
        batch = [check_message(m, LIMITS) for m in stream[at : at + 3]]
        out = combine(state, batch, RULES)
        out_kpis += [k for k in out.kpis if k["is_final"]]
        out_pages += out.pages
        state = wide_json.loads(wide_json.dumps(state))
    expected = combine(new_state(), [*partials, *stream[-PARTITIONS:]], RULES)
    assert out_kpis == [k for k in expected.kpis if k["is_final"]]
    assert sorted(out_pages, key=str) == sorted(expected.pages, key=str)
    assert len(out_pages) == 120 and state["chunks"] == {}


def test_chunks_of_a_published_window_are_dropped() -> None:
    chunks = [orjson.loads(c) for c in split(final_partial(0, 30), PARTIAL, limit=LIMIT * 8)]
    state = new_state()
    combine(state, [check_message(chunks[0], LIMITS)], RULES)
    assert len(state["chunks"]) == 1
    finals = [final_partial(p, 1, start=T0 + W) for p in range(PARTITIONS)]
    combine(state, [*finals, *(progress(p, T0 + 2 * W) for p in range(PARTITIONS))], RULES)
    assert state["published_through"] == T0 + W and state["chunks"] == {}


# --------------------------------------------------------------------------- the session sink


def long_session(pages: int) -> dict[str, Any]:
    summary = SessionSummary.decode(
        ["s1", T0, T0 + 60_000, pages, {"page_view": pages}, {}, 0, 0, 0, "desktop", "DE"]
    )
    summary.pages = {f"/{n:04d}{LONG}": 1 for n in range(pages)}
    return session_record(summary.figures("u1"))


TOPIC = "t-session-metrics"


def session_consumer(fake: FakeSink, published: list[Any]) -> SinkConsumer:
    return sink_consumer(fake, published, SESSION_METRICS, TOPIC)


def owning(*partitions: int) -> FakeConsumer:
    consumer = FakeConsumer([])
    consumer.owned = {TopicPartition(TOPIC, p) for p in partitions}
    return consumer


async def test_the_session_sink_writes_a_session_whole_from_its_chunks(
    published: list[Any],
) -> None:
    """A session of 100 pages of 2,048 characters (over 1 MB) as chunks, split over two
    batches: written once, whole, when its last chunk comes; until then no offset is
    committed past its first chunk."""
    record = long_session(100)
    chunks = encode(record, SESSION)
    assert len(chunks) > 2 and all(len(c) < 1_000_000 for c in chunks)
    other = orjson.dumps(long_session(1) | {"session_id": "s0"})
    messages = [Message(TOPIC, 0, 10, b"u1", other)]
    messages += [Message(TOPIC, 0, 11 + n, b"u1", chunk) for n, chunk in enumerate(chunks)]
    consumer = owning(0)
    fake = FakeSink()
    sink = session_consumer(fake, published)
    await sink.handle(consumer, messages[:3])
    assert [r["session_id"] for r in fake.batches[0]] == ["s0"]
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 11}]  # held at the first chunk
    await sink.handle(consumer, messages[3:])
    (whole,) = fake.batches[1]
    assert whole == record and consumer.commits[-1] == {TopicPartition(TOPIC, 0): 11 + len(chunks)}
    rows, rejected = prepare(SESSION_METRICS, [whole])
    assert rejected == [] and len(rows) == 1
    assert published == [] and sink.pending == {TopicPartition(TOPIC, 0): {}}


async def test_chunks_of_a_partition_lost_to_a_rebalance_are_left_to_its_new_owner(
    published: list[Any],
) -> None:
    chunks = encode(long_session(100), SESSION)
    consumer = owning(0, 1)
    sink = session_consumer(FakeSink(), published)
    await sink.handle(consumer, [Message(TOPIC, 1, 5, b"u1", chunks[0])])
    assert consumer.commits == [{TopicPartition(TOPIC, 1): 5}]
    consumer.owned = {TopicPartition(TOPIC, 0)}
    await sink.handle(consumer, [Message(TOPIC, 0, 0, b"u2", orjson.dumps(long_session(1)))])
    assert TopicPartition(TOPIC, 1) not in sink.pending


async def test_a_chunk_that_cannot_be_used_goes_to_the_dead_letters(
    published: list[Any],
) -> None:
    value = orjson.loads(encode(long_session(100), SESSION)[0])
    value["chunk"]["index"] = 99
    consumer = owning(0)
    fake = FakeSink()
    await session_consumer(fake, published).handle(
        consumer, [Message(TOPIC, 0, 3, b"u1", orjson.dumps(value))]
    )
    (letter,) = [value for _, _, value, _ in published]
    assert "chunk.index" in letter["error"] and letter["offset"] == 3
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]
