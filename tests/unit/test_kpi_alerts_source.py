"""agents/kpi_alerts.py's reading of the kpi-history changelog and the gauge's figures."""

from __future__ import annotations

import orjson

from agents.kpi_alerts import final_record, gauge_figures


def test_only_final_records_under_window_keys_are_taken() -> None:
    record = {"window_start": "2026-01-01T00:00:00.000Z", "is_final": True, "total_events": 3}
    assert final_record(b"1767225600000", orjson.dumps(record)) == record
    assert final_record(b"live", orjson.dumps(record)) is None  # the newest live record
    assert final_record(b"1767225600000", None) is None  # a pruned window
    assert final_record(b"1767225600000", orjson.dumps({**record, "is_final": False})) is None
    assert final_record(b"1767225600000", b"{not json") is None


def test_the_gauge_shows_every_figure_and_custom_kpi_that_is_a_number() -> None:
    record = {
        "window_start": "2026-01-01T00:00:00.000Z",
        "is_final": True,
        "total_events": 3,
        "bounce_rate_percent": 50.0,
        "new_users": None,
        "custom": {"signups": 2, "broken": "x"},
    }
    assert gauge_figures(record) == {
        "total_events": 3,
        "bounce_rate_percent": 50.0,
        "custom.signups": 2,
    }
