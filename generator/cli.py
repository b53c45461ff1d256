"""``analytics-generate``: send synthetic traffic to Kafka or to the HTTP ingest API.

The events come from ``generator.traffic`` (seeded, so a run can be replayed exactly). By
default event times are the wall clock at send time, so a live dashboard fills up;
``--start``/``--span`` replays a fixed stretch of event time instead. ``send_to_kafka`` and
``send_over_http`` are reusable from tests and benchmarks. Straight to Kafka, the producer
connects with the security settings of the workers' configuration (``sources.kafka``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from tqdm import tqdm

from generator.traffic import DAY_MS, Event, Kind, TrafficProfile, format_ts, generate_labelled

__all__ = [
    "DeliveryError",
    "HttpResult",
    "TokenBucket",
    "build_parser",
    "main",
    "restamp",
    "send_over_http",
    "send_to_kafka",
]

_PROG = "analytics-generate"
_MAX_BATCH_EVENTS = 1000  # SPEC section 1: a batch holds at most 1,000 events ...
_MAX_BATCH_BYTES = 1000 * 1024  # ... and 1 MiB; keep some room for the envelope
_YIELD_EVERY = 512  # give the event loop (producer sender, HTTP I/O) a turn this often


class DeliveryError(RuntimeError):
    """Some events were not acknowledged; ``failed`` counts them."""

    def __init__(self, failed: int, first: BaseException | None) -> None:
        self.failed = failed
        super().__init__(f"{failed} events were not delivered (first error: {first!r})")


class TokenBucket:
    """Average ``rate`` tokens per second with bursts of at most ``burst`` tokens.

    Debt instead of busy waiting: taking more than is available returns how long to sleep,
    and waits under a millisecond are carried over rather than slept, so high rates do not
    pay an ``asyncio.sleep`` per event. ``rate <= 0`` means no pacing.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20.0)  # 50 ms worth
        self.tokens = 1.0
        self._clock = clock
        self._last = clock()

    def delay(self, n: float = 1.0) -> float:
        """Take ``n`` tokens; seconds to wait before using them (0 when available)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    async def take(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are ours."""
        wait = self.delay(n)
        if wait > 0.001:
            await asyncio.sleep(wait)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_ms(text: str) -> int | None:
    """Epoch ms of an RFC 3339 timestamp, None when it is not one (e.g. ``yesterday``)."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def restamp(
    labelled: Iterable[tuple[Event | bytes, Kind]], clock: Callable[[], int] = _now_ms
) -> Iterator[tuple[Event | bytes, Kind]]:
    """Realtime mode: give each event the wall-clock time at which it is pulled (= sent).

    Disorder survives: an event ``d`` ms older than the newest one seen so far is stamped
    ``now - d``. Timestamps are rewritten in place; duplicates are the same dict object as
    their original (see ``generate_labelled``), so they keep the original's new timestamp
    and stay identical to it. Unparseable timestamps (invalid events) are left alone.
    """
    newest: int | None = None
    for event, kind in labelled:
        if kind != "duplicate" and isinstance(event, dict):
            text = event.get("timestamp")
            ms = _parse_ms(text) if isinstance(text, str) else None
            if ms is not None:
                if newest is None or ms > newest:
                    newest = ms
                event["timestamp"] = format_ts(clock() - (newest - ms))
        yield event, kind


def _progress_bar(progress: bool, total: int | None) -> Any:
    """A tqdm bar on stderr (tqdm has no type stubs, hence ``Any``)."""
    return tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _kafka_record(event: Event | bytes) -> tuple[bytes, bytes | None]:
    """(value, key): orjson bytes keyed by user_id; raw bytes (bad JSON) go unkeyed."""
    if isinstance(event, bytes):
        return event, None
    user_id = event.get("user_id")
    key = user_id.encode() if isinstance(user_id, str) and user_id else None
    return orjson.dumps(event), key


async def send_to_kafka(
    events: Iterable[Event | bytes],
    bootstrap: str,
    topic: str,
    rate: float,
    progress: bool,
    *,
    total: int | None = None,
    security: Mapping[str, Any] | None = None,
) -> int:
    """Produce ``events`` to ``topic`` at ``rate`` events/s (0: as fast as possible).

    Returns how many the broker acknowledged. Raises ``KafkaConnectionError`` when the
    broker is unreachable and ``DeliveryError`` when some sends failed. Events are pulled
    from the iterable only when their send slot comes, so ``restamp`` sees send time.
    ``security``: the producer's security options (app.kafka_security.aiokafka_security).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, client_id=_PROG, acks="all", **(security or {})
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    acked = 0
    failed = 0
    first_error: BaseException | None = None
    pending: set[asyncio.Future[Any]] = set()

    def done(fut: asyncio.Future[Any]) -> None:
        nonlocal acked, failed, first_error
        pending.discard(fut)
        if fut.cancelled():
            failed += 1
        elif (exc := fut.exception()) is not None:
            failed += 1
            first_error = first_error or exc
        else:
            acked += 1

    bucket = TokenBucket(rate)
    it = iter(events)
    try:
        with _progress_bar(progress, total) as bar:
            count = 0
            while True:
                await bucket.take()
                event = next(it, None)
                if event is None:
                    break
                value, key = _kafka_record(event)
                fut = await producer.send(topic, value=value, key=key)
                pending.add(fut)
                fut.add_done_callback(done)
                count += 1
                if count % _YIELD_EVERY == 0:
                    bar.update(_YIELD_EVERY)
                    await asyncio.sleep(0)
            bar.update(count % _YIELD_EVERY)
            await producer.flush()
            if pending:
                await asyncio.wait(set(pending))
    finally:
        await producer.stop()
    if failed:
        raise DeliveryError(failed, first_error)
    return acked


@dataclass
class HttpResult:
    """What the ingest API made of the posted events."""

    sent: int = 0  # events posted
    accepted: int = 0  # listed as accepted (202)
    rejected: int = 0  # listed as rejected, or in a request answered 4xx
    failed: int = 0  # in requests answered with anything else (5xx, ...)


async def send_over_http(
    events: Iterable[Event | bytes],
    url: str,
    rate: float,
    progress: bool,
    *,
    batch: int = 200,
    total: int | None = None,
    concurrency: int = 1,
    linger_s: float = 0.2,
    path: str = "/ingest",
) -> HttpResult:
    """POST ``events`` to ``{url}{path}/batch`` in batches of ``batch`` at ``rate`` events/s.

    A batch goes out when full, over the size limit, or ``linger_s`` after its first event,
    so slow rates still show up promptly. Raw bytes (the bad-JSON case) cannot sit in a JSON
    batch and are posted alone to ``{path}``. ``concurrency`` > 1 keeps several requests in
    flight, at the price of the server seeing batches out of order. Raises
    ``aiohttp.ClientConnectorError`` when the server is unreachable.
    """
    if not 1 <= batch <= _MAX_BATCH_EVENTS:
        raise ValueError(f"batch must be within 1..{_MAX_BATCH_EVENTS}, got {batch}")
    base = url.rstrip("/")
    single, batched = path, path + "/batch"
    result = HttpResult()
    bucket = TokenBucket(rate)
    slots = asyncio.Semaphore(max(1, concurrency))
    tasks: set[asyncio.Task[None]] = set()
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        with _progress_bar(progress, total) as bar:

            async def post(path: str, body: bytes, count: int) -> None:
                try:
                    async with session.post(base + path, data=body, headers=headers) as resp:
                        payload = await resp.read()
                        status = resp.status
                finally:
                    slots.release()
                result.sent += count
                bar.update(count)
                if 200 <= status < 300:
                    if path == single:
                        result.accepted += count
                        return
                    try:
                        doc = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        doc = {}
                    rejected = len(doc.get("rejected") or ()) if isinstance(doc, dict) else 0
                    accepted = doc.get("accepted") if isinstance(doc, dict) else None
                    result.rejected += rejected
                    result.accepted += (
                        len(accepted) if isinstance(accepted, list) else count - rejected
                    )
                elif 400 <= status < 500:
                    result.rejected += count
                else:
                    result.failed += count

            async def submit(path: str, body: bytes, count: int) -> None:
                await slots.acquire()
                if concurrency <= 1:
                    await post(path, body, count)
                    return
                task = asyncio.create_task(post(path, body, count))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            parts: list[bytes] = []
            size = 0
            first_at = 0.0

            async def flush() -> None:
                nonlocal parts, size
                if parts:
                    body = b'{"events":[' + b",".join(parts) + b"]}"
                    count = len(parts)
                    parts, size = [], 0
                    await submit(batched, body, count)

            it = iter(events)
            try:
                while True:
                    await bucket.take()
                    event = next(it, None)
                    if event is None:
                        break
                    if isinstance(event, bytes):
                        await flush()
                        await submit(single, event, 1)
                        continue
                    data = orjson.dumps(event)
                    if parts and size + len(data) > _MAX_BATCH_BYTES:
                        await flush()
                    if not parts:
                        first_at = time.monotonic()
                    parts.append(data)
                    size += len(data) + 1
                    if len(parts) >= batch or time.monotonic() - first_at >= linger_s:
                        await flush()
                await flush()
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
    return result


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The ``analytics-generate`` options."""
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Send realistic synthetic user events to Kafka or the HTTP ingest API.",
    )
    p.add_argument("--target", choices=("kafka", "http"), default="kafka")
    p.add_argument(
        "--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible"
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--events", type=int, help="distinct valid events (default 10000)")
    amount.add_argument("--duration", type=float, help="seconds to send for (needs --rate > 0)")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="Kafka HOST:PORT (default: $KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    p.add_argument("--topic", default="user-events")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:6066",
        help="the worker's base URL; https:// checks its certificate against the system's CAs "
        "or $SSL_CERT_FILE",
    )
    p.add_argument(
        "--path", default="/ingest", help="the worker's sources.http.path (default /ingest)"
    )
    p.add_argument("--batch", type=int, default=200, help="events per POST /ingest/batch")
    p.add_argument(
        "--concurrency", type=int, default=1, help="HTTP requests in flight (>1 reorders)"
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--realtime",
        action="store_true",
        help="event time = wall-clock time of sending (the default)",
    )
    when.add_argument("--start", help="replay: event time of the first event (ISO 8601)")
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--span",
        type=float,
        help="seconds of event time the traffic covers (default: events/rate, else 3600)",
    )
    length.add_argument(
        "--days",
        type=int,
        help="days of event time the traffic covers, for cohorts (needs --start)",
    )
    p.add_argument("--disorder-ms", type=int, default=0, help="max out-of-order lag in ms")
    p.add_argument("--duplicates", type=float, default=0.0, help="share re-sent (0..1)")
    p.add_argument("--invalid", type=float, default=0.0, help="share of extra invalid (0..1)")
    p.add_argument("--no-event-ids", action="store_true", help="let the server assign event ids")
    p.add_argument(
        "--checkout-action",
        action="store_true",
        help="a checkout event after the /checkout page view (a funnel stage of its own)",
    )
    p.add_argument(
        "--experiment",
        default="",
        help="name of an A/B test exposed on product and checkout page views (default: none)",
    )
    p.add_argument(
        "--variants",
        default="control,green",
        help="the experiment's variants, comma-separated, control first (default control,green)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _parse_start(text: str) -> int:
    """``--start`` as epoch ms; no offset means UTC, like SPEC section 1."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--start: not an ISO 8601 time: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def profile_from_args(args: argparse.Namespace, now_ms: int | None = None) -> TrafficProfile:
    """Turn the options into a ``TrafficProfile``; ``ValueError`` names a bad option."""
    if args.rate < 0:
        raise ValueError("--rate must be >= 0")
    extra = 1.0 + args.duplicates + args.invalid
    if args.duration is not None:
        if args.rate <= 0:
            raise ValueError("--duration needs --rate > 0 (use --events to go flat out)")
        events = max(1, round(args.rate * args.duration / extra))
    else:
        events = 10_000 if args.events is None else args.events
    if args.days is not None:
        if not args.start:
            raise ValueError("--days needs --start (realtime event time is the wall clock)")
        if args.days < 1:
            raise ValueError("--days must be >= 1")
        span_ms = args.days * DAY_MS
    elif args.span is not None:
        span_ms = round(args.span * 1000)
    elif args.rate > 0:
        span_ms = round(events * extra / args.rate * 1000)
    else:
        span_ms = 3_600_000
    start_ms = _parse_start(args.start) if args.start else (now_ms or _now_ms())
    return TrafficProfile(
        seed=args.seed,
        users=args.users,
        start_ms=start_ms,
        span_ms=max(1, span_ms),
        events=events,
        disorder_ms=args.disorder_ms,
        duplicate_rate=args.duplicates,
        invalid_rate=args.invalid,
        explicit_event_ids=not args.no_event_ids,
        checkout_action=args.checkout_action,
        experiment=args.experiment,
        variants=tuple(name.strip() for name in args.variants.split(",")),
    )


def _kafka_security() -> dict[str, Any]:
    """The producer's security options from the configuration (``sources.kafka``), which the
    generator shares with the workers: ``ANALYTICS_CONFIG`` and ``ANALYTICS__...`` variables."""
    from app.kafka_security import aiokafka_security  # importing app/ builds the Faust app
    from app.settings import load_settings

    return aiokafka_security(load_settings())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when the target cannot be reached)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        profile = profile_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    progress = not args.no_progress and sys.stdout.isatty() and sys.stderr.isatty()

    kinds: Counter[str] = Counter()
    labelled: Iterable[tuple[Event | bytes, Kind]] = generate_labelled(profile)
    if args.start is None:
        labelled = restamp(labelled)

    def counted() -> Iterator[Event | bytes]:
        for event, kind in labelled:
            kinds[kind] += 1
            yield event

    total = profile.total_emitted
    began = time.perf_counter()
    http: HttpResult | None = None
    try:
        if args.target == "kafka":
            try:
                security = _kafka_security()
            except RuntimeError as exc:  # app.settings.ConfigurationError, named in the message
                print(f"{_PROG}: {exc}", file=sys.stderr)
                return 2
            sent = asyncio.run(
                send_to_kafka(
                    counted(),
                    args.bootstrap,
                    args.topic,
                    args.rate,
                    progress,
                    total=total,
                    security=security,
                )
            )
        else:
            http = asyncio.run(
                send_over_http(
                    counted(),
                    args.url,
                    args.rate,
                    progress,
                    batch=args.batch,
                    total=total,
                    concurrency=args.concurrency,
                    path=args.path,
                )
            )
            sent = http.sent
    except KafkaConnectionError as exc:
        print(f"{_PROG}: cannot reach Kafka at {args.bootstrap}: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientConnectorError as exc:
        print(f"{_PROG}: cannot reach the ingest API at {args.url}: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, DeliveryError, aiohttp.ClientError) as exc:
        print(f"{_PROG}: sending failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted after {kinds.total()} events", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - began
    line = (
        f"sent {sent} events in {elapsed:.2f} s ({sent / elapsed if elapsed else 0.0:.0f} "
        f"events/s), {kinds['invalid']} invalid, {kinds['duplicate']} duplicates"
    )
    if http is not None:
        line += f"; server accepted {http.accepted}, rejected {http.rejected}"
        if http.failed:
            line += f", {http.failed} in failed requests"
    print(line)
    return 1 if http is not None and http.failed else 0


if __name__ == "__main__":
    sys.exit(main())
