"""Sums of money and counts never overflow what the encoders and the columns hold (issue 9).

SPEC 1 bounds ``metadata.amount`` to 1,000,000,000, so an event carries at most 1e11 cents.
Ten million such events in one window, one session or one user make 1e18 cents: under the
2**63 - 1 (9.2e18) that orjson encodes as a signed integer and a PostgreSQL ``bigint`` holds,
and 1e16 currency units, under the 1e18 of ``numeric(20, 2)``. Each stage is checked at that
size through its pure functions, with the value encoded as it is published (orjson) and, for
the sinks, converted to the row that is written; tests/integration/test_sinks.py writes the
same rows to PostgreSQL and reads them back through the history queries. The whole pipeline
runs at the largest amount too, with fewer events (a real count is too slow for a unit test).

Past 64 bits (a user's lifetime revenue, or a session's, after 185 million purchases of the
largest amount; SPEC bounds neither) every stage still encodes and decodes exactly
(analytics.wide_json): the partition state, the published records, the sinks' rows (up to
what ``numeric(20, 2)`` holds, past which the row is refused naming the column) and the API.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson

from agents.behavior_tracker import session_record
from analytics import partition_codec as codec
from analytics import record_chunks, wide_json
from analytics.combiner import CombinerRules, combine, new_state
from analytics.kpis import kpi_figures, trends
from analytics.partials import KPI_COUNTERS, PartialLimits, check_message
from analytics.partition import PartitionRules, PartitionState, SessionKey, UserState
from analytics.rows import Row
from analytics.sessions import SessionSummary
from analytics.timeutil import datetime_of, format_ts
from analytics.traffic import dimension_rows, page_rows
from analytics.validation import MAX_AMOUNT
from sinks import queries
from sinks.schema import DIMENSION_STATS, KPI_METRICS, PAGE_VIEW_STATS, SESSION_METRICS, prepare
from tables.memory_store import MemoryStore
from tests.pure_pipeline import PureCombiner, PurePartition
from web.api_queries import user_sessions
from web.history_views import answer_json

MAX_CENTS = MAX_AMOUNT * 100
COUNT = 10_000_000
TOTAL_CENTS = MAX_CENTS * COUNT  # 1e18
W = 60_000
T0 = 1_767_225_600_000
PARTITIONS = 8
INT64_MAX = 2**63 - 1


def roundtrip(value: Any) -> Any:
    """``value`` encoded as it is published and decoded again; equal to it when it fits."""
    decoded = wide_json.loads(wide_json.dumps(value))
    assert decoded == value
    return decoded


def row_of(spec: Any, record: dict[str, Any]) -> dict[str, Any]:
    rows, rejected = prepare(spec, [roundtrip(record)])
    assert rejected == []
    return dict(zip(spec.columns, rows[0][1], strict=True))


def test_the_bound_leaves_room() -> None:
    assert TOTAL_CENTS == 10**18 < INT64_MAX
    # what one partition may publish for a window (analytics.partials), with 8 partitions
    assert PartialLimits(PARTITIONS, W).max_counter >= TOTAL_CENTS


def test_a_window_of_ten_million_purchases_of_the_largest_amount() -> None:
    sums = {
        "events": COUNT,
        "purchases": COUNT,
        "conversions": COUNT,
        "revenue_cents": TOTAL_CENTS,
        "active_users": 1,
        "users_total": 1,
        "new_users": 1,
        "sessions": 1,
        "session_duration_ms": 59_999,
        "engagement_x10000": 1_000_000,
    }
    record = kpi_figures(T0, W, sums)
    record["trends"] = trends(sums, {**sums, "revenue_cents": MAX_CENTS})
    record |= {"late_events_total": 0, "is_final": True}
    roundtrip(record)
    assert record["total_revenue_cents"] == TOTAL_CENTS
    assert record["total_revenue"] == 1e16
    assert record["average_order_value"] == MAX_AMOUNT
    assert record["revenue_per_user"] == 1e16
    row = row_of(KPI_METRICS, record)
    assert row["total_revenue"] == Decimal(10**16)  # exact, from the cents
    assert row["average_order_value"] == Decimal(MAX_AMOUNT)
    assert row["revenue_per_user"] == Decimal(10**16)
    assert row["total_events"] == COUNT


def test_the_combiner_adds_up_partitions_to_ten_million_purchases() -> None:
    """Eight partitions' shares of one window, 1.25 million purchases each."""
    share = COUNT // PARTITIONS
    limits = PartialLimits(PARTITIONS, W)
    state = new_state()
    messages = []
    for p in range(PARTITIONS):
        kpi = dict.fromkeys(KPI_COUNTERS, 0)
        kpi |= {"events": share, "purchases": share, "conversions": share}
        kpi |= {"revenue_cents": share * MAX_CENTS, "page_views": share, "active_users": 1}
        kpi |= {"new_users": 1, "users_total": 1, "sessions": 1, "bounces": 0}
        partial = {
            "type": "partial",
            "partition": p,
            "window_start": T0,
            "final": True,
            "kpi": kpi,
            "pages": {"/checkout": [share, 1, share * 86_400_000]},
            "dims": {"device": {"desktop": [share, 1, share, share * MAX_CENTS]}},
        }
        messages.append(check_message(roundtrip(partial), limits))
        messages.append({"type": "progress", "partition": p, "wm": T0 + W, "late": 0})
    out = combine(state, messages, CombinerRules(PARTITIONS, W))
    (record,) = out.kpis
    roundtrip(record)
    assert (record["total_events"], record["total_revenue_cents"]) == (COUNT, TOTAL_CENTS)
    (page,) = out.pages
    assert page["total_time_on_page_ms"] == COUNT * 86_400_000  # the longest duration, each
    (dim,) = out.traffic
    assert dim["revenue_cents"] == TOTAL_CENTS
    assert row_of(PAGE_VIEW_STATS, page)["views"] == COUNT
    assert row_of(DIMENSION_STATS, dim)["revenue"] == Decimal(10**16)
    roundtrip(state)


def test_page_and_dimension_rows_at_the_largest_sums() -> None:
    (page,) = page_rows(T0, W, {"/p": [COUNT, COUNT, COUNT * 86_400_000]})
    roundtrip(page)
    (dim,) = dimension_rows(T0, W, {"country": {"DE": [COUNT, COUNT, COUNT, TOTAL_CENTS]}})
    roundtrip(dim)
    assert dim["revenue"] == 1e16 and row_of(DIMENSION_STATS, dim)["revenue"] == Decimal(10**16)


def _summary(events: int, cents: int) -> SessionSummary:
    """A session of ``events`` purchases over a day, as the partition keeps it folded."""
    day = 86_400_000
    encoded = ["s1", T0, T0 + day, events, {"purchase": events}, {"/buy": events}]
    return SessionSummary.decode([*encoded, events * day, events, cents, "desktop", "DE"])


def test_a_session_of_ten_million_purchases_of_the_largest_amount() -> None:
    record = session_record(_summary(COUNT, TOTAL_CENTS).figures("u1"))
    roundtrip(record)
    assert record["revenue_cents"] == TOTAL_CENTS and record["revenue"] == 1e16
    row = row_of(SESSION_METRICS, record)
    assert (row["total_events"], row["conversions"]) == (COUNT, COUNT)  # integer columns
    assert row["revenue"] == Decimal(10**16)
    assert row["total_duration_ms"] == COUNT * 86_400_000


def test_partition_state_at_the_largest_sums_decodes_back() -> None:
    """A user with ten million purchases of the largest amount in an open session and a
    window's live counters at the same size: stored and read back unchanged."""
    rules = PartitionRules()
    store = MemoryStore()
    state = PartitionState(store, rules)
    user = state.user_for_update("u1")
    user.first_seen, user.last_seen = T0, T0 + 86_400_000
    user.events, user.revenue_cents = COUNT - 1, TOTAL_CENTS - MAX_CENTS
    key = user.keys["s1"] = SessionKey()
    key.summaries = [_summary(COUNT - 1, TOTAL_CENTS - MAX_CENTS)]
    user.add(
        Row(T0 + 86_400_001, "e", "s1", "purchase", "", 0, "", "", "", True, MAX_CENTS),
        rules.gap_ms,
    )
    window = state.window_for_update(T0 + 86_400_000 // W * W)
    window.count("u1", key.pending[0])
    window.live[3] = TOTAL_CENTS
    store.apply(state.take_writes())
    again = PartitionState(store, rules)
    stored = again.user("u1")
    assert stored is not None
    assert (stored.events, stored.revenue_cents) == (COUNT, TOTAL_CENTS)
    (summary,) = stored.keys["s1"].summaries
    assert summary.revenue_cents == TOTAL_CENTS - MAX_CENTS
    (figures,) = stored.open_sessions("u1", rules.gap_ms)
    assert figures["revenue_cents"] == TOTAL_CENTS and figures["total_events"] == COUNT
    assert again.windows[window.start].live_figures()["revenue_cents"] == TOTAL_CENTS


def test_history_answers_at_the_largest_sums_encode() -> None:
    """The bucket sums the history API builds from the database's rows: a bucket of one
    window at the largest sums, and an hour of them, past 64 bits, still answered exactly."""
    start = datetime_of(T0)
    for windows in (1, 60):
        counts = (COUNT * windows, 0, COUNT * windows, COUNT * windows)
        revenue = Decimal(10**16) * windows
        row = (start, windows, *counts, revenue, 1, 1, 1, windows, windows, 60_000, 0, 60.0, 0)
        bucket = queries.kpi_bucket(row, timedelta(hours=1))
        assert json.loads(answer_json({"buckets": [bucket]})) == {"buckets": [bucket]}
        assert bucket["total_revenue_cents"] == windows * TOTAL_CENTS
        assert bucket["average_order_value"] == MAX_AMOUNT
    assert json.loads(answer_json({"a": 1})) == {"a": 1}


def test_the_real_pipeline_at_the_largest_amount() -> None:
    """Purchases of the largest amount through validation, enrichment, the partition state,
    the partials and the combiner: every figure exact in cents."""
    n = 2_000
    rules = CombinerRules(2, W)
    parts = [PurePartition(p) for p in range(2)]
    comb = PureCombiner(rules)
    finals: dict[str, dict[str, Any]] = {}
    for part in parts:
        user = f"buyer{part.index}"
        events = [
            {
                "user_id": user,
                "action": "purchase",
                "metadata": {"amount": MAX_AMOUNT},
                "timestamp": format_ts(T0 + i),
                "event_id": f"{user}-{i}",
            }
            for i in range(n)
        ]
        values = [orjson.dumps(e) for e in events]
        out = part.run(part.messages(values, [user.encode()] * n, T0 + n))
        assert out.tracked.dead_letters == [] and len(out.tracked.timeline) == n
        for item in out.tracked.timeline:
            assert orjson.loads(item.payload)["revenue_cents"] == MAX_CENTS  # type: ignore[union-attr]
        comb.fold(out.partials)
    for part in parts:  # a later event moves each watermark past the window
        late = {"user_id": f"buyer{part.index}", "action": "click"}
        late["timestamp"] = format_ts(T0 + 2 * W + 20_000)
        out = part.run(part.messages([orjson.dumps(late)], [late["user_id"].encode()], T0 + 3 * W))
        for record in comb.fold(out.partials).kpis:
            if record["is_final"]:
                finals[record["window_start"]] = roundtrip(record)
    final = finals[format_ts(T0)]
    assert final["total_revenue_cents"] == 2 * n * MAX_CENTS
    assert final["purchases"] == 2 * n and final["average_order_value"] == MAX_AMOUNT
    buyer = codec.decode_user(parts[0].store.get(b"buyer0") or b"")
    assert isinstance(buyer, UserState) and buyer.revenue_cents == n * MAX_CENTS


def test_a_users_lifetime_revenue_never_stops_the_partition() -> None:
    """Past 2**64 - 1 cents (185 million purchases of the largest amount by one user) the
    user is stored as wide JSON and read back exact; below it, as before."""
    rules = PartitionRules()
    store = MemoryStore()
    state = PartitionState(store, rules)
    user = state.user_for_update("u1")
    user.first_seen = user.last_seen = T0
    user.events, user.revenue_cents = 185_000_000, 2**64 - MAX_CENTS + 1
    store.apply(state.take_writes())
    assert store.data[b"u1"][0] != codec.WIDE  # fits: orjson's, as before
    state = PartitionState(store, rules)
    state.user_for_update("u1").add(
        Row(T0 + 1, "e", "", "purchase", "", 0, "", "", "", True, MAX_CENTS), rules.gap_ms
    )
    store.apply(state.take_writes())
    assert store.data[b"u1"][0] == codec.WIDE
    again = PartitionState(store, rules).user("u1")
    assert again is not None and again.revenue_cents == 2**64 + 1
    assert codec.encode_user(again) == store.data[b"u1"]
    (figures,) = again.open_sessions("u1", rules.gap_ms)
    assert figures["revenue_cents"] == MAX_CENTS


def _wide_user(cents: int) -> tuple[MemoryStore, UserState]:
    """A user whose lifetime revenue, open session, closed sessions and window are all at
    ``cents``: stored and read back."""
    rules = PartitionRules()
    store = MemoryStore()
    state = PartitionState(store, rules)
    user = state.user_for_update("u1")
    user.first_seen, user.last_seen = T0, T0 + 86_400_000
    user.events, user.revenue_cents = COUNT, cents
    key = user.keys["s1"] = SessionKey()
    key.summaries = [_summary(COUNT, cents)]
    closed = session_record(_summary(COUNT, cents).figures("u1"))
    user.recent = [
        {**closed, "start_ms": T0, "end_ms": T0 + 1, "revenue_cents": cents, "unique_pages": 1}
    ]
    window = state.window_for_update(T0)
    window.count("u1", Row(T0, "e", "s1", "purchase", "", 0, "", "", "", True, MAX_CENTS))
    window.live[3] = cents
    store.apply(state.take_writes())
    loaded = PartitionState(store, rules)
    assert loaded.windows[T0].live_figures()["revenue_cents"] == cents
    stored = loaded.user("u1")
    assert stored is not None
    return store, stored


def test_every_sum_of_the_partition_state_past_64_bits_reads_back_exact() -> None:
    cents = 2**64 * 1000 + 7
    store, user = _wide_user(cents)
    assert user.revenue_cents == cents and user.recent[0]["revenue_cents"] == cents
    (summary,) = user.keys["s1"].summaries
    assert summary.revenue_cents == cents
    assert store.data[codec.window_key(T0)][0] == codec.WIDE


def test_session_and_window_records_past_64_bits_are_published_and_written_exact() -> None:
    cents = 2**64 + 1
    record = session_record(_summary(COUNT, cents).figures("u1"))
    (message,) = record_chunks.encode(record, record_chunks.SESSION)
    assert wide_json.loads(message) == record  # exact JSON numbers
    row = row_of(SESSION_METRICS, wide_json.loads(message))
    assert row["revenue"] == Decimal(cents).scaleb(-2)  # numeric(20, 2) holds it exactly
    sums = {"events": 1, "purchases": 1, "revenue_cents": cents, "active_users": 1}
    kpi = kpi_figures(T0, W, sums) | {"trends": trends(sums, None), "late_events_total": 0}
    kpi["is_final"] = True
    decoded = wide_json.loads(wide_json.dumps(kpi))
    assert decoded["total_revenue_cents"] == cents
    assert row_of(KPI_METRICS, decoded)["total_revenue"] == Decimal(cents).scaleb(-2)


def test_a_sum_beyond_its_column_is_refused_naming_it() -> None:
    """numeric(20, 2) holds 1e20 cents: past that (a billion purchases of the largest amount
    in one session) the row goes to sink-dlq naming the column, whole in the dead letter."""
    record = session_record(_summary(COUNT, 10**20).figures("u1"))
    _, rejected = prepare(SESSION_METRICS, [wide_json.loads(wide_json.dumps(record))])
    (refused,) = rejected
    assert "revenue" in refused.error and "numeric(20, 2)" in refused.error


def test_the_api_answers_a_user_past_64_bits() -> None:
    cents = 2**64 * 3
    _, user = _wide_user(cents)
    answer = user_sessions("u1", user, PartitionRules().gap_ms)
    decoded = json.loads(wide_json.dumps(answer))
    assert decoded["profile"]["revenue_cents"] == cents
    assert decoded["sessions"][0]["revenue_cents"] == cents
    assert decoded["recent"][0]["revenue_cents"] == cents
