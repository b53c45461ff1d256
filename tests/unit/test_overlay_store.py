"""tables.overlay_store: staged writes read as if written, in key order, deletions hidden."""

from __future__ import annotations

from tables.memory_store import MemoryStore
from tables.overlay_store import OverlayStore


def test_staged_writes_win_and_deletions_hide_base_keys() -> None:
    base = MemoryStore({b"a1": b"x", b"a2": b"y", b"a4": b"z", b"b1": b"w"})
    overlay = OverlayStore(base)
    overlay.stage([(b"a2", None), (b"a3", b"new"), (b"a1", b"old"), (b"a1", b"newest")])
    assert overlay.get(b"a1") == b"newest"
    assert overlay.get(b"a2") is None
    assert overlay.get(b"a4") == b"z"
    assert list(overlay.scan(b"a", b"b")) == [(b"a1", b"newest"), (b"a3", b"new"), (b"a4", b"z")]
    assert list(overlay.scan(b"b", b"c")) == [(b"b1", b"w")]
    overlay.clear()
    assert overlay.get(b"a1") == b"x"
    assert list(overlay.scan(b"a", b"b")) == [(b"a1", b"x"), (b"a2", b"y"), (b"a4", b"z")]


def test_written_keeps_what_a_later_round_staged_again() -> None:
    base = MemoryStore()
    overlay = OverlayStore(base)
    first = [(b"a", b"1"), (b"b", b"1"), (b"c", None)]
    overlay.stage(first)
    later = [(b"b", b"2")]
    overlay.stage(later)
    base.apply(first)
    overlay.written(first)
    assert overlay.pending == {b"b": b"2"}
    assert overlay.get(b"a") == b"1" and overlay.get(b"b") == b"2" and overlay.get(b"c") is None
