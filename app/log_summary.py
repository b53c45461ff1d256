"""Repeated library log records said once, then counted: one line per interval per message.

While a broker or a database is away, the Kafka clients under the worker report every failed
attempt ("Unable connect to node with id 1: ...", "Failed fetch messages from 1: ..."), each
client on its own. The first record of each message (same logger, level and format string)
passes; the next ones within ``interval`` are counted instead, and the count is logged once the
interval is over: ``aiokafka.client: 312 more like "Unable connect to node with id %s: %s"
in the last 60 s``. The project's own loggers are left alone: they already say a state change
once (web/broker_gate.py, sinks/sink.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
#: the library loggers whose repeats are summarised (and their children)
#: aiohttp.server: a request aiohttp cannot parse as HTTP is answered 400 by aiohttp itself and
#: logged at ERROR with a traceback, so any client could fill the log (docs/reliability.md)
LIBRARIES = (
    "aiokafka",
    "kafka",
    "faust",
    "mode",
    "confluent_kafka",
    "rdkafka",
    "psycopg",
    "aiohttp.server",
)

Key = tuple[str, int, str]
_DECIDED = "_repeat_summary_passes"


@dataclass(slots=True)
class _Window:
    started: float
    suppressed: int = 0


class RepeatSummary(logging.Filter):
    """A handler filter: passes the first of each message per interval, counts the rest."""

    def __init__(
        self,
        interval: float = INTERVAL_S,
        libraries: Iterable[str] = LIBRARIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.libraries = tuple(libraries)
        self.clock = clock
        self._windows: dict[Key, _Window] = {}

    def _summarised(self, name: str) -> bool:
        return any(name == lib or name.startswith(lib + ".") for lib in self.libraries)

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECIDED, None)
        if decided is None:  # one decision per record, however many handlers carry the filter
            decided = self._decide(record)
            setattr(record, _DECIDED, decided)
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        if not self._summarised(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval:
            if window is not None and window.suppressed:
                self._report(key, window.suppressed, now - window.started)
            self._windows[key] = _Window(now)
            return True
        window.suppressed += 1
        return False

    def flush(self) -> int:
        """Report and close every window whose interval is over; returns how many lines."""
        now = self.clock()
        reported = 0
        for key, window in list(self._windows.items()):
            if now - window.started < self.interval:
                continue
            if window.suppressed:
                self._report(key, window.suppressed, now - window.started)
                reported += 1
            del self._windows[key]
        return reported

    def _report(self, key: Key, count: int, seconds: float) -> None:
        name, level, message = key
        log.log(
            level,
            '%s: %d more like "%s" in the last %.0f s',
            name,
            count,
            message,
            seconds,
        )


def install(root: logging.Logger | None = None, interval: float = INTERVAL_S) -> RepeatSummary:
    """Put one summary filter on every handler of the root logger (once logging is set up)."""
    summary = RepeatSummary(interval)
    for handler in (root or logging.getLogger()).handlers:
        handler.addFilter(summary)
    return summary


async def flush_every(summary: RepeatSummary) -> None:
    """Report the counts of finished intervals even when no further record comes."""
    while True:
        await asyncio.sleep(summary.interval / 4)  # a timer: counts are at most a quarter late
        summary.flush()
