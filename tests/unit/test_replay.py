"""``faust -A app replay``'s judging of lines (web/replay.py), without a broker."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from web.replay import Replay, ReplayFileError, numbered_lines, open_events

LINES = [
    b'{"user_id":"u1","action":"click","event_id":"a","ip_address":"203.0.113.77"}',
    b'{"user_id":"u1","action":"click","event_id":"a"}',  # duplicate of line 1
    b'{"user_id":"u2","action":"click","event_id":"a"}',  # same event_id, another user
    b"",
    b"not json",
    b'{"user_id":"u2","action":"BAD","duration":-1}',
    b'{"user_id":"u3","action":"page_view","page":"/"}',  # no event_id: one is assigned
]


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, dict[str, Any], int]] = []
        self.acked = 0  # how many of the records the broker has taken

    async def __call__(self, topic: str, key: bytes | None, value: bytes, ts_ms: int) -> Any:
        self.records.append((topic, key, orjson.loads(value), ts_ms))
        count = len(self.records)

        async def ack() -> None:
            self.acked = max(self.acked, count)

        return ack()


@pytest.mark.parametrize("name", ["events.ndjson", "events.ndjson.gz", "events.gz.txt"])
async def test_replay_counts_accepted_rejected_duplicates_and_blank(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    data = b"\n".join(LINES) + b"\n"
    path.write_bytes(gzip.compress(data) if "gz" in name else data)
    raw, events = open_events(path)
    sent = Sent()
    replay = Replay(path, sent, "user-events", "user-events-dlq", "anonymize", 10_000)
    with raw, events:
        for number, line in numbered_lines(events, path):
            await replay.line(number, line)
    await replay.acknowledged()

    summary = replay.summary
    assert (summary.lines, summary.accepted, summary.rejected_lines) == (7, 3, 2)
    assert (summary.duplicates, summary.blank) == (1, 1)
    assert dict(summary.rejected) == {"body": 1, "action": 1, "duration": 1}
    assert summary.text() == (
        "lines 7: accepted 3, rejected 2 (action 1, body 1, duration 1), duplicates 1, blank 1"
    )
    events_sent = [(key, value) for topic, key, value, _ in sent.records if topic == "user-events"]
    assert [key for key, _ in events_sent] == [b"u1", b"u2", b"u3"]
    assert events_sent[0][1]["ip_address"] == "203.0.113.0"  # privacy.ip, as over HTTP
    assert events_sent[2][1]["event_id"]  # assigned, like POST /ingest does
    dead = [value for topic, _, value, _ in sent.records if topic == "user-events-dlq"]
    assert [(d["line"], d["source"], d["file"]) for d in dead] == [
        (5, "replay", str(path)),
        (6, "replay", str(path)),
    ]


def test_an_unreadable_or_broken_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayFileError, match="cannot read"):
        open_events(tmp_path / "missing.ndjson")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:-40])
    raw, events = open_events(broken)
    with raw, events, pytest.raises(ReplayFileError, match="cannot read after line"):
        list(numbered_lines(events, broken))


async def test_an_event_waits_for_the_events_more_than_grace_before_it(tmp_path: Path) -> None:
    """So that no partition's later events are appended (and make a window final) before
    another partition's events of that window: each event is sent only once the broker has
    taken every event sent earlier whose time is more than ``grace`` before its own."""
    times = [0, 4_000, 9_000, 12_000, 11_000, 30_000, 31_000, 45_000]
    lines = [
        orjson.dumps(
            {
                "user_id": f"u{n % 3}",
                "action": "click",
                "event_id": f"e{n}",
                "timestamp": f"2026-01-01T00:00:{ts // 1000:02d}Z",
            }
        )
        for n, ts in enumerate(times)
    ]
    sent = Sent()
    replay = Replay(tmp_path / "f", sent, "user-events", "user-events-dlq", "anonymize", 10_000)
    taken_before: list[int] = []
    for number, line in enumerate(lines, 1):
        await replay.line(number, line)
        taken_before.append(sent.acked)
    await replay.acknowledged()
    # the broker had taken events 1-3 before the one at 12 s (0 s is more than 10 s before
    # it), 1-5 before 30 s, and 1-7 before 45 s; none at all before the first three
    assert taken_before == [0, 0, 0, 3, 3, 5, 5, 7]
