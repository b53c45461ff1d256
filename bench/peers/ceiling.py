"""The ceiling of bench/compare.py, run as its own process: an aiokafka consumer that reads
``--topic`` from the beginning and decodes every value with orjson, nothing else. Prints one
JSON line like bench/peers/quix_pipeline.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


async def consume(bootstrap: str, topic: str, events: int, partitions: int) -> dict[str, float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, first, last = 0, 0.0, 0.0
        while n < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches and not first:
                first = time.monotonic()
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value or b"{}")
                n += len(records)
            last = time.monotonic()
        return {"events": n, "first": first, "last": last}
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    result = asyncio.run(consume(args.bootstrap, args.topic, args.events, args.partitions))
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
