"""Property tests (hypothesis): random inputs, valid and not, through every pure stage.

Inputs come from tests/fuzz_inputs.py. The properties, for any input:

* validation returns an event or raises EventRejected whose errors name a field or the
  problem; nothing else is raised;
* the tracker (``track_batch``) accounts for every message exactly once: enriched, dead-
  lettered with its errors, produced again under its user_id (then enriched), or a repeat;
  it never fails unexpectedly; what it publishes decodes back to what it built;
* the partition state (``apply_batch``, ``take_writes``, a MemoryStore) stores values that
  decode back to the same bytes; the partials it publishes are taken by the combiner
  unchanged; the combiner's records and the closed sessions encode, decode back, and become
  rows of the sink tables (a NUL character, which PostgreSQL text cannot hold, is the one
  refusal, and it names the column);
* the HTTP functions answer 202 only for events the tracker then enriches, and dead-letter
  everything else with its errors.

The tracker's dead letters for messages near 1 MB, and records and state values grown past a
Kafka message by many long pages (published as chunks, stored as pieces), are tests of their
own below.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from agents.behavior_tracker import session_record
from analytics import partition_codec as codec
from analytics import record_chunks
from analytics.combiner import CombinerRules, combine, new_state
from analytics.partials import MAX_MS, PartialLimits, PartialRejected, check_message
from analytics.partition import PartitionRules, PartitionState, apply_batch
from analytics.rows import Arrival, Tick, row_of
from analytics.tracking import RawMessage, TrackedBatch, TrackerRules, track_batch
from analytics.validation import EventRejected, decode_json, validate_event
from sinks.schema import DIMENSION_STATS, KPI_METRICS, PAGE_VIEW_STATS, SESSION_METRICS, prepare
from tables.memory_store import MemoryStore
from tests.fuzz_http import field_is_named
from tests.fuzz_inputs import NEAR_TIMES, RAW_INPUTS, raw_inputs, valid_events, wrong_events
from web.ingestion import ingest_batch, ingest_single

T0 = 1_767_225_600_000
DAY = 86_400_000
TOPIC = "user-events"
RULES = TrackerRules()
PARTITION_RULES = PartitionRules()
LIMITS = PartialLimits(partitions=1, window_ms=PARTITION_RULES.window_ms)
#: what a Kafka message may hold by default (the broker's message.max.bytes)
KAFKA_MESSAGE_BYTES = 1_048_588
#: JSON nested deeper than orjson writes (254 levels) but not than it reads (1,024)
DEEP = orjson.Fragment(b"[" * 300 + b"]" * 300)


def decoded(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def key_for(raw: bytes, choice: int) -> bytes | None:
    """The message key: the event's user_id (as a producer should), none, or another one."""
    obj = decoded(raw)
    user = obj.get("user_id") if isinstance(obj, dict) else None
    if choice == 0 and isinstance(user, str):
        return user.encode()
    return None if choice == 1 else b"someone-else"


def messages(values: list[bytes], keys: list[int], start: int = 0) -> list[RawMessage]:
    return [
        RawMessage(key_for(raw, choice), raw, 0, start + n, T0 + n * 1_000)
        for n, (raw, choice) in enumerate(zip(values, keys, strict=True))
    ]


def assert_accounted(batch: list[RawMessage], tracked: TrackedBatch) -> None:
    """Every message has exactly one outcome, and each outcome is whole."""
    arrivals = {a.offset: a for a in tracked.timeline if isinstance(a, Arrival)}
    dead = {d["offset"]: d for d in tracked.dead_letters}
    assert tracked.failures == 0, tracked.dead_letters
    assert not arrivals.keys() & dead.keys()
    outcomes = len(arrivals) + len(dead) + len(tracked.rekeyed) + tracked.duplicates
    assert outcomes == len(batch)
    for message in batch:
        if message.offset in dead:
            letter = dead[message.offset]
            obj = decoded(message.value)
            assert letter["errors"] and letter["partition"] == message.partition
            assert all(field_is_named(e["field"], obj) and e["message"] for e in letter["errors"])
            assert letter["error"].startswith(f"{letter['errors'][0]['field']}: ")
            assert orjson.loads(orjson.dumps(letter)) == letter
    for arrival in arrivals.values():
        event = arrival.event
        assert orjson.loads(arrival.payload) == event  # what is published is what was built
        assert arrival.row == row_of(event)
        assert event["event_id"] and 0 <= event["revenue_cents"] <= 100 * 1_000_000_000


@given(RAW_INPUTS)
def test_validation_accepts_or_names_the_problem(raw: bytes) -> None:
    try:
        obj = decode_json(raw)
        event = validate_event(obj, received_at_ms=T0, default_event_id="e")
    except EventRejected as rejected:
        obj = decoded(raw)
        assert rejected.errors
        assert all(field_is_named(e.field, obj) and e.message for e in rejected.errors)
    else:
        assert orjson.loads(orjson.dumps(event)) == event


@given(st.lists(st.tuples(RAW_INPUTS, st.integers(0, 2)), max_size=12))
def test_the_tracker_accounts_for_every_message(inputs: list[tuple[bytes, int]]) -> None:
    batch = messages([raw for raw, _ in inputs], [k for _, k in inputs])
    tracked = track_batch(batch, topic=TOPIC, lookup=lambda key: None, rules=RULES)
    assert_accounted(batch, tracked)
    # re-keyed events come back under their user_id and are enriched then
    again = [m._replace(offset=100 + n) for n, m in enumerate(tracked.rekeyed)]
    second = track_batch(again, topic=TOPIC, lookup=tracked.seen.get, rules=RULES)
    assert second.dead_letters == [] and second.rekeyed == []
    assert len(second.timeline) + second.duplicates == len(again)


def rows_or_nul(spec: Any, records: list[dict[str, Any]]) -> None:
    """Every record the pipeline publishes becomes a row, unless text holds a NUL."""
    _, rejected = prepare(spec, [orjson.loads(orjson.dumps(r)) for r in records])
    for refused in rejected:
        assert "contains a NUL character" in refused.error, refused.error


def run_partition(
    store: MemoryStore, items: list[Arrival | Tick], live: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], PartitionState]:
    state = PartitionState(store, PARTITION_RULES)
    out = apply_batch(state, items, PARTITION_RULES, live=live)
    store.apply(state.take_writes())
    partials = [
        orjson.loads(orjson.dumps({"type": "partial", "partition": 0, **p})) for p in out.partials
    ]
    progress = {"type": "progress", "partition": 0, "wm": state.clock.wm, "late": state.clock.late}
    progress["arrived"] = max((appended(item) for item in items), default=0)
    return [*partials, progress], out.sessions, state


def appended(item: Arrival | Tick) -> int:
    return item.arrived_ms if isinstance(item, Arrival) else item.timestamp_ms


def stored_user(store: MemoryStore, key: bytes) -> bytes:
    """A user's value as written, its pieces joined when it was too large for one."""
    value = store.data[key]
    if value[0] != codec.PIECED:
        return value
    count, digest = orjson.loads(value[1:])
    prefix = codec.PIECE + len(key).to_bytes(2, "big") + key + bytes.fromhex(digest)
    pieces = [v for k, v in sorted(store.data.items()) if k.startswith(prefix)]
    assert len(pieces) == count
    return b"".join(pieces)


def assert_state_decodes(store: MemoryStore) -> None:
    """Every stored value reads back; a user reads back to the very bytes it was stored as;
    no value is larger than a changelog record (a Kafka message) may be."""
    for key, value in store.data.items():
        assert len(key) + len(value) < KAFKA_MESSAGE_BYTES
        if key == codec.CLOCK_KEY:
            codec.decode_clock(value)
        elif not key.startswith(b"\xff"):
            loaded = codec.load_user(store, key.decode())
            assert loaded is not None and loaded[1] == []  # no stale rows or pieces
            assert codec.encode_user(loaded[0]) == stored_user(store, key)
    list(codec.scan_windows(store))
    list(codec.scan_members(store))


@given(
    st.lists(st.tuples(raw_inputs(NEAR_TIMES) | RAW_INPUTS, st.integers(0, 1)), max_size=15),
    st.booleans(),
)
def test_state_partials_combiner_sessions_and_rows(
    inputs: list[tuple[bytes, int]], live: bool
) -> None:
    batch = messages([raw for raw, _ in inputs], [k for _, k in inputs])
    tracked = track_batch(batch, topic=TOPIC, lookup=lambda key: None, rules=RULES)
    store = MemoryStore()
    offset = len(batch)
    sent, sessions, state = run_partition(store, tracked.timeline, live)
    assert_state_decodes(store)
    # a day of wall clock later, twice: every window final and every session closed
    for step in (1, 2):
        now = max(T0, state.clock.max_ts or T0) + step * DAY
        more, closed, state = run_partition(store, [Tick(offset + step, now)], live)
        sent += more
        sessions += closed
        assert_state_decodes(store)
    cstate = new_state()
    checked = []
    for message in sent:
        try:
            checked.append(check_message(message, LIMITS))
        except PartialRejected as rejected:  # only a window that ends after year 9999
            assert message["window_start"] > MAX_MS - LIMITS.window_ms, rejected
            continue
        assert checked[-1] == message
    out = combine(cstate, checked, CombinerRules(1, LIMITS.window_ms), live=live)
    assert orjson.loads(orjson.dumps(cstate)) == cstate
    rows_or_nul(KPI_METRICS, out.kpis)
    rows_or_nul(PAGE_VIEW_STATS, out.pages)
    rows_or_nul(DIMENSION_STATS, out.traffic)
    rows_or_nul(SESSION_METRICS, [session_record(figures) for figures in sessions])
    users = {a.user_id for a in tracked.timeline if isinstance(a, Arrival)}
    assert {s["user_id"] for s in sessions} <= users
    for key in store.data:  # every session closed (late events joined none)
        if not key.startswith(b"\xff"):
            assert codec.decode_user(stored_user(store, key)).keys == {}


@given(st.one_of(RAW_INPUTS, st.lists(valid_events() | wrong_events(), max_size=8)))
@example([{"user_id": "u", "action": "click"}, {"user_id": "u", "action": DEEP}])  # found
def test_http_accepts_only_what_the_tracker_enriches(body: bytes | list[dict[str, Any]]) -> None:
    if isinstance(body, bytes):
        outcome = ingest_single(body, T0)
        items = 1
    else:
        outcome = ingest_batch(orjson.dumps({"events": body}, default=str), T0)
        items = len(body)
    for letter in outcome.dead_letters:
        assert letter["errors"] and letter["source"] in ("http", "http-batch")
        assert len(orjson.dumps(letter)) < KAFKA_MESSAGE_BYTES
    if outcome.status != 202:
        assert outcome.accepted == [] and len(outcome.dead_letters) >= 1
        assert 400 <= outcome.status < 500
        assert outcome.body.get("errors") or outcome.body.get("rejected")
        return
    assert len(outcome.accepted) + len(outcome.dead_letters) == items
    batch = [RawMessage(a.key, a.value, 0, n, T0) for n, a in enumerate(outcome.accepted)]
    tracked = track_batch(batch, topic=TOPIC, lookup=lambda key: None, rules=RULES)
    assert tracked.dead_letters == [] and tracked.rekeyed == []
    enriched = [a.event["event_id"] for a in tracked.timeline if isinstance(a, Arrival)]
    accepted = [a.event_id for a in outcome.accepted]
    # an event_id accepted twice in one batch is enriched once (SPEC 1)
    assert set(enriched) == set(accepted)
    assert len(enriched) + tracked.duplicates == len(accepted)


# --------------------------------------------------------------------------- too large


def test_the_trackers_dead_letter_of_a_large_message_fits_a_kafka_message() -> None:
    batch = [RawMessage(b"u", b"\xff" * 1_000_000, 0, 0, T0)]
    tracked = track_batch(batch, topic=TOPIC, lookup=lambda key: None, rules=RULES)
    (letter,) = tracked.dead_letters
    assert len(orjson.dumps(letter)) < KAFKA_MESSAGE_BYTES


def _page_views(count: int) -> list[RawMessage]:
    """``count`` page views of one user in one window, each on a page of its own of 2,048
    control characters: valid events (SPEC 1 sets no alphabet for pages), 12 KiB each as
    JSON (a control character is a six-character escape)."""
    event = {"user_id": "u", "action": "page_view", "timestamp": "2026-01-01T00:00:10Z"}
    values = [
        orjson.dumps(event | {"event_id": f"e{n}", "page": f"/{n:04d}" + "\x01" * 2043})
        for n in range(count)
    ]
    return [RawMessage(b"u", value, 0, n, T0) for n, value in enumerate(values)]


def published(record: dict[str, Any], shape: record_chunks.Shape) -> dict[str, Any]:
    """``record`` as the tracker publishes it (whole, or as chunks when too large), each
    message within a Kafka message, and as a consumer puts it together again."""
    messages = record_chunks.encode(record, shape)
    assert all(len(message) < KAFKA_MESSAGE_BYTES for message in messages)
    pending: dict[str, Any] = {}
    for offset, message in enumerate(messages):
        value = orjson.loads(message)
        if "chunk" not in value:
            return dict(value)
        whole = record_chunks.gather(pending, value, shape, offset)
    assert whole is not None and pending == {}
    return whole


def test_a_window_or_session_of_many_long_pages_fits_a_kafka_message() -> None:
    """100 page views on distinct pages of 2,048 control characters: the window's partial
    and the session's record are several MB as JSON, so they are published as chunks, which
    a consumer puts together to the very record; the user's value (its session keeps every
    page) is stored in pieces. Nothing the partition writes or publishes exceeds a message."""
    tracked = track_batch(_page_views(100), topic=TOPIC, lookup=lambda key: None, rules=RULES)
    store = MemoryStore()
    sent, sessions, _ = run_partition(store, tracked.timeline, live=False)
    assert_state_decodes(store)
    for step in (1, 2):
        more, closed, _ = run_partition(store, [Tick(200 + step, T0 + step * DAY)], False)
        sent += more
        sessions += closed
        assert_state_decodes(store)
    (session,) = sessions
    assert session["unique_pages"] == 100 and len(session["pages"]) == 100
    record = session_record(session)
    assert len(record_chunks.encode(record, record_chunks.SESSION)) > 1
    assert published(record, record_chunks.SESSION) == orjson.loads(orjson.dumps(record))
    (final,) = [m for m in sent if m["type"] == "partial" and m["final"]]
    assert len(final["pages"]) == 100
    assert len(record_chunks.encode(final, record_chunks.PARTIAL)) > 1
    assert check_message(published(final, record_chunks.PARTIAL), LIMITS) == final


def test_a_user_whose_session_has_many_long_pages_is_stored_in_pieces() -> None:
    """The session's summary holds its pages: the user's value outgrows a changelog record
    while the session is open, is stored in pieces, reads back whole, and once the session
    closes is stored whole again with its pieces deleted."""
    tracked = track_batch(_page_views(100), topic=TOPIC, lookup=lambda key: None, rules=RULES)
    store = MemoryStore()
    run_partition(store, tracked.timeline, live=False)
    # the window final; a later event of the session folds its rows into the summary
    _, closed, _ = run_partition(store, [Tick(201, T0 + 2 * PARTITION_RULES.window_ms)], False)
    click = {"user_id": "u", "action": "click", "timestamp": "2026-01-01T00:03:00Z"}
    later = [RawMessage(b"u", orjson.dumps(click), 0, 202, T0 + 180_000)]
    more = track_batch(later, topic=TOPIC, lookup=lambda key: None, rules=RULES)
    _, closed, state = run_partition(store, more.timeline, False)
    assert closed == []
    assert store.data[b"u"][0] == codec.PIECED
    pieces = [k for k in store.data if k.startswith(codec.PIECE)]
    assert len(pieces) > 1
    user = state.user("u")
    assert user is not None and user.events == 101
    (figures,) = user.open_sessions("u", PARTITION_RULES.gap_ms)
    assert figures["unique_pages"] == 100 and figures["total_events"] == 101
    assert_state_decodes(store)
    run_partition(store, [Tick(203, T0 + DAY)], False)  # closes at the next batch's start
    _, closed, _ = run_partition(store, [Tick(204, T0 + 2 * DAY)], False)
    assert len(closed) == 1 and closed[0]["unique_pages"] == 100
    assert store.data[b"u"][0] != codec.PIECED
    assert not [k for k in store.data if k.startswith(codec.PIECE)]


def test_a_crash_between_a_users_pieces_and_its_header_is_repaired_by_the_replay() -> None:
    """The new pieces of a pieced user are durable, its header is not (a crash): after the
    restart they are stale, and the replay of the batch writes them again; the stored user
    must then read back whole (the replay must not delete what it writes)."""
    tracked = track_batch(_page_views(100), topic=TOPIC, lookup=lambda key: None, rules=RULES)
    store = MemoryStore()
    run_partition(store, tracked.timeline, live=False)
    run_partition(store, [Tick(201, T0 + 2 * PARTITION_RULES.window_ms)], False)
    click = {"user_id": "u", "action": "click", "timestamp": "2026-01-01T00:03:00Z"}
    later = [RawMessage(b"u", orjson.dumps(click), 0, 202, T0 + 180_000)]
    run_partition(
        store, track_batch(later, topic=TOPIC, lookup=lambda k: None, rules=RULES).timeline, False
    )
    assert store.data[b"u"][0] == codec.PIECED
    # the next event changes the user (new digest): its writes cut before the user's header
    click2 = {"user_id": "u", "action": "signup", "timestamp": "2026-01-01T00:04:00Z"}
    again = [RawMessage(b"u", orjson.dumps(click2), 0, 203, T0 + 240_000)]
    items = track_batch(again, topic=TOPIC, lookup=lambda k: None, rules=RULES).timeline
    state = PartitionState(store, PARTITION_RULES)
    apply_batch(state, items, PARTITION_RULES)
    writes = state.take_writes()
    header = next(n for n, (key, _) in enumerate(writes) if key == b"u")
    assert any(key.startswith(codec.PIECE) for key, _ in writes[:header])
    store.apply(writes[:header])  # the crash
    _, _, state = run_partition(store, items, False)  # the restart replays the batch
    assert_state_decodes(store)
    user = state.user("u")
    assert user is not None and user.events == 102
    loaded = codec.load_user(store, "u")
    assert loaded is not None and loaded[0].events == 102
