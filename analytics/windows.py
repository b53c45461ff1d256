"""Tumbling windows aligned to the Unix epoch (SPEC section 4): W = [start, start + size)."""

from __future__ import annotations


def window_start(ts_ms: int, size_ms: int) -> int:
    """Start of the window holding ``ts_ms``; floor division keeps pre-1970 times aligned too."""
    return ts_ms // size_ms * size_ms


def window_end(ts_ms: int, size_ms: int) -> int:
    """End (exclusive) of the window holding ``ts_ms``."""
    return window_start(ts_ms, size_ms) + size_ms
