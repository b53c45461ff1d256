"""Waiting for a condition with a deadline: the one way tests synchronise with workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(
    fetch: Callable[[], Any],
    done: Callable[[Any], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.25,
) -> Any:
    """Call ``fetch`` until ``done(result)``; fail with the last result at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached after {timeout:.0f} s; last: {result}")
        time.sleep(interval)  # polling interval, bounded by the deadline
