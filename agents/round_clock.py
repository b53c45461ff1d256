"""Where the hot path's time goes, by phase: for operators, and for docs/performance.md.

Each phase's wall time goes to the ``hot_path_seconds_total{phase}`` counter, and once a
minute the log gets one line with the rate and each phase's share, e.g.

    hot path: 1,234,567 events in 60 s (20,576/s, 4,988 a round); compute 71%, send 9%, ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from app import metrics
from app.metrics import HOT_PATH_PHASES

log = logging.getLogger(__name__)


class RoundClock:
    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._totals = dict.fromkeys(HOT_PATH_PHASES, 0.0)
        self._events = 0
        self._rounds = 0
        self._since = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self._totals[name] += seconds
            metrics.hot_path_phase(name, seconds)

    def events(self, count: int) -> None:
        """A round of ``count`` events done; logs the summary when the interval is over."""
        self._events += count
        self._rounds += 1
        elapsed = time.monotonic() - self._since
        if elapsed < self.interval_s:
            return
        busy = sum(self._totals.values()) or 1.0
        shares = ", ".join(f"{name} {100 * t / busy:.0f}%" for name, t in self._totals.items())
        log.info(
            "hot path: %s events in %.0f s (%s/s, %s a round); %s",
            f"{self._events:,}",
            elapsed,
            f"{self._events / elapsed:,.0f}",
            f"{self._events / max(1, self._rounds):,.0f}",
            shares,
        )
        self._totals = dict.fromkeys(HOT_PATH_PHASES, 0.0)
        self._events = self._rounds = 0
        self._since = time.monotonic()
