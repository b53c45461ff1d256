"""Sums of money and counts never overflow what the encoders and the columns hold (issue 9).

SPEC 1 bounds ``metadata.amount`` to 1,000,000,000, so an event carries at most 1e11 cents.
Ten million such events in one window, one session or one user make 1e18 cents: under the
2**63 - 1 (9.2e18) that orjson encodes as a signed integer and a PostgreSQL ``bigint`` holds,
and 1e16 currency units, under the 1e18 of ``numeric(20, 2)``. Each stage is checked at that
size through its pure functions, with the value encoded as it is published (orjson) and, for
the sinks, converted to the row that is written; tests/integration/test_sinks.py writes the
same rows to PostgreSQL and reads them back through the history queries. The whole pipeline
runs at the largest amount too, with fewer events (a real count is too slow for a unit test).
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agents.behavior_tracker import session_record
from analytics import partition_codec as codec
from analytics.combiner import CombinerRules, combine, new_state
from analytics.kpis import kpi_figures, trends
from analytics.partials import KPI_COUNTERS, PartialLimits, check_message
from analytics.partition import PartitionRules, PartitionState, SessionKey, UserState
from analytics.rows import Row
from analytics.sessions import SessionSummary
from analytics.timeutil import format_ts
from analytics.traffic import dimension_rows, page_rows
from analytics.validation import MAX_AMOUNT
from sinks import queries
from sinks.schema import DIMENSION_STATS, KPI_METRICS, PAGE_VIEW_STATS, SESSION_METRICS, prepare
from tables.memory_store import MemoryStore
from tests.pure_pipeline import PureCombiner, PurePartition
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
    decoded = orjson.loads(orjson.dumps(value))
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
    start = queries.as_time(T0)
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


@pytest.mark.xfail(
    strict=True,
    reason="lead's analytics/partition.py: UserState.revenue_cents is a user's lifetime sum, "
    "unbounded: past 2**64 - 1 cents (185 million purchases of the largest amount by one "
    "user) orjson cannot encode the user (partition_codec.encode_user), take_writes raises "
    "and the partition's round fails on every retry",
)
def test_a_users_lifetime_revenue_never_stops_the_partition() -> None:
    rules = PartitionRules()
    store = MemoryStore()
    state = PartitionState(store, rules)
    user = state.user_for_update("u1")
    user.first_seen = user.last_seen = T0
    user.events, user.revenue_cents = 185_000_000, 2**64 - MAX_CENTS + 1
    store.apply(state.take_writes())
    state = PartitionState(store, rules)
    state.user_for_update("u1").add(
        Row(T0 + 1, "e", "", "purchase", "", 0, "", "", "", True, MAX_CENTS), rules.gap_ms
    )
    store.apply(state.take_writes())  # raises: Integer exceeds 64-bit range
