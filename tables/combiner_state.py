"""The combiner's state (analytics.combiner), one value in a one-partition table, written by
agents/kpi_combiner.py (through tables/staged_table.py)."""

from __future__ import annotations

from typing import Any

from analytics import wide_json
from analytics.combiner import CombinerState, new_state
from app import app
from tables import large_values
from tables.rocksdb_options import rocksdb_options

STATE_KEY = b"state"

combiner_state: Any = app.Table(
    "combiner-state",
    partitions=1,
    key_type=bytes,
    value_type=bytes,
    help="partials of open windows and the last final figures",
    options=rocksdb_options(app.analytics_settings),
)


def decode_state(stored: bytes | None) -> CombinerState:
    # fields added by later versions start empty in state written by older ones
    return {**new_state(), **wide_json.loads(stored)} if stored is not None else new_state()


def load() -> CombinerState:
    """The saved state, read through the table (the web API's view)."""
    return decode_state(large_values.get(combiner_state, STATE_KEY))
