"""The Quix Streams peer of bench/compare.py, run as its own process.

The work FACTS.md measured for Quix Streams: per-user first-seen state, and a one-minute
tumbling event-time window per user key (count and revenue) emitted when final, on RocksDB
state with changelog topics, at-least-once. It reads ``--topic`` from the beginning until
``--events`` messages have passed and prints one JSON line: when the first and the last
message were processed (monotonic seconds) and the process's peak RSS.

    python bench/peers/quix_pipeline.py --bootstrap 127.0.0.1:9092 --topic T --events 200000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import aggregations as agg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument(
        "--emit",
        choices=("final", "current"),
        default="final",
        help="window results once closed, or on every update (Quix's two ways)",
    )
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"quix-bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        use_changelog_topics=True,
        loglevel="WARNING",
    )

    def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
        return int(datetime.fromisoformat(value["timestamp"]).timestamp() * 1000)

    source = app.topic(args.topic, value_deserializer="json", timestamp_extractor=event_time)
    windows = app.topic(f"{args.topic}-quix-windows", value_serializer="json")
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def first_seen(value: dict[str, Any], state: Any) -> dict[str, Any]:
        if state.get("first_seen") is None:
            state.set("first_seen", value["timestamp"])
        value["revenue"] = (
            (value.get("metadata") or {}).get("amount", 0) if value["action"] == "purchase" else 0
        )
        return value

    def count(value: dict[str, Any]) -> None:
        now = time.monotonic()
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"] = now
        seen["last"] = now
        if seen["n"] >= args.events:
            app.stop()

    sdf = app.dataframe(source)
    sdf = sdf.update(count)
    sdf = sdf.apply(first_seen, stateful=True)
    sdf = (
        sdf.tumbling_window(duration_ms=60_000)
        .agg(count=agg.Count(), revenue=agg.Sum("revenue"))
        .final()
    )
    sdf = sdf.to_topic(windows)
    app.run()
    print(
        json.dumps(
            {
                "events": seen["n"],
                "first": seen["first"],
                "last": seen["last"],
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
