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

    async def __call__(self, topic: str, key: bytes | None, value: bytes, ts_ms: int) -> Any:
        self.records.append((topic, key, orjson.loads(value), ts_ms))

        async def ack() -> None:
            return None

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
    replay = Replay(path, sent, "user-events", "user-events-dlq", "anonymize")
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
