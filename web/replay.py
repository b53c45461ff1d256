"""``faust -A app replay FILE``: historical events from a newline-delimited JSON file, through
the same door as ``POST /ingest`` (web/ingestion.py: validation, key, value, dead letters).

Each line is judged by ``ingest_single`` at the time it is read (its ingestion time: an
event without a timestamp gets it, as over HTTP), then produced to ``user-events`` keyed by
user_id with that time, or dead-lettered with ``source: "replay"``, the file and the line
number. A line repeating the (user_id, event_id) of an earlier line of the file is a
duplicate: counted and not sent, as the tracker would not count it either (its repeats are
per user, analytics/tracking.py). Blank lines are counted and skipped. Sends are pipelined
(linger, batches); the file is read as fast as the broker acknowledges.
"""

from __future__ import annotations

import gzip
import io
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from analytics.privacy import IpMode
from analytics.timeutil import parse_ts
from analytics.tracking import dedup_key
from web.ingestion import ingest_single

GZIP_MAGIC = b"\x1f\x8b"

#: (topic, key, value, timestamp_ms) -> a future of the broker's acknowledgement
Send = Callable[[str, bytes | None, bytes, int], Awaitable[Awaitable[Any]]]


class ReplayFileError(Exception):
    """The file cannot be read (missing, unreadable, a broken gzip stream)."""


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did; ``rejected`` counts each error's field (an event with two bad
    fields counts under both)."""

    lines: int = 0
    accepted: int = 0
    rejected_lines: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    blank: int = 0

    def text(self) -> str:
        reasons = ", ".join(f"{name} {count}" for name, count in sorted(self.rejected.items()))
        return (
            f"lines {self.lines}: accepted {self.accepted}, rejected {self.rejected_lines}"
            + (f" ({reasons})" if reasons else "")
            + f", duplicates {self.duplicates}, blank {self.blank}"
        )


def open_events(path: Path) -> tuple[io.BufferedReader, io.BufferedIOBase]:
    """``(the file, its events' bytes)``: gunzipped when it starts with gzip's magic bytes,
    whatever its name (a ``.gz`` that is not gzip is read as it is). The file's position
    says how far the replay is."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ReplayFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        magic = raw.read(2)
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise ReplayFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic == GZIP_MAGIC:
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def numbered_lines(handle: Iterable[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line without its line break)``; a broken file raises
    ReplayFileError naming the line it stopped at."""
    number = 0
    try:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip(b"\r\n")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ReplayFileError(f"{path}: cannot read after line {number}: {exc}") from exc


class Replay:
    """One file's replay: judges lines and hands what to produce to ``send``."""

    def __init__(
        self,
        path: Path,
        send: Send,
        topic: str,
        dead_topic: str,
        ip_mode: IpMode,
        grace_ms: int,
    ) -> None:
        self.path = path
        self.grace_ms = grace_ms
        self.pending_min_ts: int | None = None
        """The earliest event time of the events sent since the broker last took them all."""
        self.send = send
        self.topic = topic
        self.dead_topic = dead_topic
        self.ip_mode = ip_mode
        self.summary = ReplaySummary()
        self.seen: set[bytes] = set()
        self.pending: list[Awaitable[Any]] = []

    async def line(self, number: int, raw: bytes) -> None:
        """Judge and send one line."""
        summary = self.summary
        summary.lines += 1
        if not raw.strip():
            summary.blank += 1
            return
        received_ms = time.time_ns() // 1_000_000
        outcome = ingest_single(raw, received_ms, self.ip_mode, source="replay")
        for accepted in outcome.accepted:
            seen = dedup_key(accepted.key.decode(), accepted.event_id)
            if seen in self.seen:
                summary.duplicates += 1
                continue
            self.seen.add(seen)
            summary.accepted += 1
            await self._in_time_order(accepted.value, received_ms)
            self.pending.append(
                await self.send(self.topic, accepted.key, accepted.value, received_ms)
            )
        for dead in outcome.dead_letters:
            summary.rejected_lines += 1
            summary.rejected.update({error["field"] for error in dead["errors"]})
            letter = orjson.dumps({**dead, "file": str(self.path), "line": number})
            self.pending.append(await self.send(self.dead_topic, None, letter, received_ms))

    async def _in_time_order(self, value: bytes, received_ms: int) -> None:
        """Before an event, wait for the broker to take the events sent more than ``grace``
        of event time before it. A file replays an hour in a second: without this, one
        partition's later events could be appended (and make a window final, as its
        watermark passes the window's end) before another partition's events of that window,
        which the combiner would then leave out. Events sent live arrive in that order."""
        stamp = orjson.loads(value).get("timestamp")  # none: the message's time, as live
        ts = parse_ts(stamp) if stamp else received_ms
        if self.pending_min_ts is not None and ts - self.grace_ms >= self.pending_min_ts:
            await self.acknowledged()
        if self.pending_min_ts is None or ts < self.pending_min_ts:
            self.pending_min_ts = ts

    async def acknowledged(self) -> None:
        """Wait for the broker to take every send so far; raises the first failure."""
        self.pending_min_ts = None
        pending, self.pending = self.pending, []
        for ack in pending:
            await ack
