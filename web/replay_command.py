"""``faust -A app replay FILE`` (web/replay.py does the work): a pipelined producer, a progress
bar over the file's bytes, and the summary at the end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from aiokafka import AIOKafkaProducer
from faust.cli import argument, option
from tqdm import tqdm

from app import app
from app.commands import topic_partitions
from app.kafka_security import aiokafka_kwargs
from web.replay import Replay, ReplayFileError, numbered_lines, open_events

ACK_EVERY = 20_000
"""Sends between waits for the broker's acknowledgements: bounds what is held in memory."""
PROGRESS_EVERY = 1_000


@app.command(
    argument("file", type=click.Path(path_type=Path, dir_okay=False)),
    option("--progress/--no-progress", default=True, help="Show a progress bar on stderr."),
)
async def replay(self: object, file: Path, progress: bool) -> None:
    """Send a newline-delimited JSON file of events (gzip or not) into user-events, as
    POST /ingest would; exit 2 when the file cannot be read, 1 when the broker fails."""
    settings = app.analytics_settings
    topics = app.topic_names
    try:
        raw, events = open_events(file)
    except ReplayFileError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not await topic_partitions(topics.user_events):
        events.close()
        raw.close()
        print(f"replay: no topic {topics.user_events!r} (a worker creates it)", file=sys.stderr)
        raise SystemExit(1)
    producer = AIOKafkaProducer(
        **aiokafka_kwargs(settings), linger_ms=20, acks="all", max_batch_size=256 * 1024
    )
    await producer.start()

    async def send(topic: str, key: bytes | None, value: bytes, ts_ms: int) -> Any:
        return await producer.send(topic, value, key=key, timestamp_ms=ts_ms)

    grace_ms = int(settings.engine.grace.total_seconds() * 1000)
    run = Replay(file, send, topics.user_events, topics.dead_letters, settings.privacy.ip, grace_ms)
    bar = tqdm(
        total=file.stat().st_size, unit="B", unit_scale=True, disable=not progress, file=sys.stderr
    )
    code = 0
    try:
        for number, line in numbered_lines(events, file):
            await run.line(number, line)
            if number % PROGRESS_EVERY == 0:
                bar.update(raw.tell() - bar.n)
            if len(run.pending) >= ACK_EVERY:
                await run.acknowledged()
        await run.acknowledged()
        bar.update(raw.tell() - bar.n)
    except ReplayFileError as exc:
        await run.acknowledged()
        print(f"replay: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:  # the broker refused or went away: what was sent is unsure
        print(f"replay: sending failed: {exc!r}", file=sys.stderr)
        code = 1
    finally:
        bar.close()
        events.close()
        raw.close()
        await producer.stop()
    print(f"replay {file}: {run.summary.text()}")
    if code:
        raise SystemExit(code)
