"""Send fuzz cases (tests/fuzz_inputs.py) to a running worker, over HTTP and straight to
``user-events``, and judge everything that comes back (issue 11, item 3).

Each case is judged against the pure decision for the same bytes (web/ingestion.py for HTTP,
analytics/tracking.py for the topic), so the properties are exact, not "some 4xx":

* no 5xx and no dropped connection; every answer is the pure decision's status, whatever the
  content type, compression or transfer encoding;
* every 4xx names a field or the problem (``errors`` of fields SPEC 1 knows, the body or the
  batch envelope, or keys of the payload; ``error`` says the same), and so does every rejected
  item of a batch;
* every rejected event or body is on ``user-events-dlq`` exactly once, with the errors'
  fields, and nothing else is; every accepted event is in ``user-behavior-enriched`` once.

Used by tests/integration/test_no_input_stops_a_partition.py (a few hundred cases) and
bench/fuzz_ingest.py (10,000 and more).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from analytics.rows import Arrival
from analytics.tracking import RawMessage, TrackerRules, track_batch
from analytics.validation import FIELDS, MAX_BATCH_BYTES, MAX_EVENT_BYTES
from app.topics import TopicNames
from tests.fuzz_inputs import Delivery
from tests.kafka_helpers import Outgoing, Record, barrier, end_offsets, produce, read_to_end
from web.ingestion import IngestOutcome, ingest_batch, ingest_single, too_large, unreadable

SINGLE, BATCH, TOPIC = "/ingest", "/ingest/batch", "topic"
#: the fields an error may name besides the payload's own keys (web/ingestion.py,
#: analytics/validation.py)
NAMED = FIELDS | {"event", "body", "events", "metadata.amount"}
#: sent before a body labelled gzip or deflate so that it is surely not such data
NOT_COMPRESSED = b"\xff"
RAW_START = 1000  # characters of a dead letter's raw payload that tell payloads apart
RULES = TrackerRules()
#: how the tracker's dead letter says it failed in a way nobody foresaw (analytics/tracking.py)
UNFORESEEN = "could not be processed"


@dataclass(frozen=True, slots=True)
class HttpCase:
    path: str  # SINGLE or BATCH
    body: bytes
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class TopicCase:
    raw: bytes
    wrong_key: bool  # keyed by another user than the event's


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status and body (JSON, else text), or why there was none."""

    status: int | None
    body: Any = None
    dropped: str | None = None


LetterKey = tuple[str, str, int | None, tuple[str, ...]]


@dataclass
class Findings:
    """What a run showed; ``violations`` lists every broken property, with the case."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    letters_expected: int = 0
    letters_found: int = 0
    letters_missing: list[str] = field(default_factory=list)
    letters_unexpected: list[str] = field(default_factory=list)
    accepted: int = 0
    accepted_enriched: int = 0
    not_enriched: list[str] = field(default_factory=list)
    enriched_twice: list[str] = field(default_factory=list)
    tracker_failures: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        kinds = {
            "5xx": self.server_errors,
            "dropped connection": self.dropped,
            "4xx naming no field or problem": self.unnamed,
            "answer other than the pure decision": self.wrong_answers,
            "rejected but not on the DLQ": self.letters_missing,
            "on the DLQ unexpected or twice": self.letters_unexpected,
            "accepted but not enriched": self.not_enriched,
            "enriched twice": self.enriched_twice,
            "the tracker failed unforeseen": self.tracker_failures,
        }
        return [f"{kind}: {case}" for kind, cases in kinds.items() for case in cases]

    def add(self, other: Findings) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)
            else:
                setattr(self, name, mine + value)


# --------------------------------------------------------------------------- sending


def _encoded(delivery: Delivery, body: bytes) -> bytes:
    if delivery.encoding is None:
        return body
    if delivery.mislabelled:
        return NOT_COMPRESSED + body
    return gzip.compress(body, 1) if delivery.encoding == "gzip" else zlib.compress(body, 1)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


async def post(session: aiohttp.ClientSession, url: str, case: HttpCase) -> Answer:
    """POST a case as its delivery says; a connection closed without an answer is ``dropped``."""
    delivery = case.delivery
    headers = {}
    if delivery.content_type is not None:
        headers["Content-Type"] = delivery.content_type
    if delivery.encoding is not None:
        headers["Content-Encoding"] = delivery.encoding
    data = _encoded(delivery, case.body)
    try:
        async with session.post(
            url + case.path,
            data=_chunks(data) if delivery.chunked else data,
            headers=headers,
            skip_auto_headers=("Content-Type",),
        ) as response:
            raw = await response.read()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return Answer(response.status, body)
    except (aiohttp.ClientError, OSError) as exc:
        return Answer(None, dropped=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- deciding


def decision(case: HttpCase) -> IngestOutcome:
    """What the worker must answer and dead-letter for ``case`` (received at time 0)."""
    single = case.path == SINGLE
    source, limit = ("http", MAX_EVENT_BYTES) if single else ("http-batch", MAX_BATCH_BYTES)
    if case.delivery.encoding is not None and case.delivery.mislabelled:
        return unreadable("not compressed", source, b"", 0)
    if len(case.body) > limit:
        return too_large(len(case.body), limit, source, case.body, 0)
    return (ingest_single if single else ingest_batch)(case.body, 0)


def letter_key(letter: dict[str, Any]) -> LetterKey:
    """A dead letter as it can be expected: its source, the start of its payload, its batch
    index and the fields its errors name (messages may say sizes that differ)."""
    raw = str(letter["raw"])[:RAW_START]
    fields = tuple(e["field"] for e in letter["errors"])
    return (letter["source"], raw, letter.get("batch_index"), fields)


def _decoded(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def field_is_named(name: str, payload: Any) -> bool:
    """An error's field is one SPEC 1 knows, the body or the envelope, or (shortened to 60
    characters and "...", the empty key quoted) a key of ``payload``."""
    if name in NAMED:
        return True
    keys = list(payload) if isinstance(payload, dict) else []
    return (
        name in keys
        or (name == '""' and "" in keys)
        or (name.endswith("...") and any(k.startswith(name[:-3]) for k in keys))
    )


def names_the_problem(errors: Any, payload: Any) -> bool:
    """``errors`` is a non-empty list of {field, message}, each naming its field."""
    if not isinstance(errors, list) or not errors:
        return False
    for error in errors:
        name, message = error.get("field"), error.get("message")
        if not (isinstance(name, str) and isinstance(message, str) and message):
            return False
        if not field_is_named(name, payload):
            return False
    return True


def _described(body: bytes) -> str:
    return repr(body[:160]) + (f"... ({len(body)} bytes)" if len(body) > 160 else "")


def judge_answer(case: HttpCase, answer: Answer, expected: IngestOutcome) -> Findings:
    """The properties of one HTTP answer (the dead letters are judged per round)."""
    found = Findings()
    what = f"{case.path} {case.delivery} {_described(case.body)} -> {answer}"
    found.sent[case.path] += 1
    found.statuses[str(answer.status)] += 1
    if answer.dropped is not None or answer.status is None:
        found.dropped.append(what)
        return found
    if answer.status >= 500:
        found.server_errors.append(what)
    if answer.status != expected.status:
        found.wrong_answers.append(f"expected {expected.status}: {what}")
        return found
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status >= 400 and "errors" in body:  # the request as a whole was refused
        errors = body["errors"]
        joined = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors or [{}])
        if not names_the_problem(errors, _decoded(case.body)) or body.get("error") != joined:
            found.unnamed.append(what)
    elif case.path == BATCH:
        items = (_decoded(case.body) or {}).get("events") or []
        rejected = body.get("rejected", [])
        if [r["index"] for r in rejected] != [r["index"] for r in expected.body["rejected"]]:
            found.wrong_answers.append(f"rejected {expected.body['rejected']}: {what}")
        elif not all(names_the_problem(r["errors"], items[r["index"]]) for r in rejected):
            found.unnamed.append(what)
    elif answer.status >= 400:
        found.unnamed.append(what)  # a 4xx without errors
    return found


def topic_decision(case: TopicCase, topic: str, partition: int, offset: int) -> Any:
    """(user_id, event_id) the event is enriched under, or None when it must be dead-lettered."""
    key = _topic_key(case)
    message = RawMessage(key, case.raw, partition, offset, 0)
    tracked = track_batch([message], topic=topic, lookup=lambda _: None, rules=RULES)
    if tracked.dead_letters:
        return None
    if tracked.rekeyed:
        event = orjson.loads(tracked.rekeyed[0].value)
        return (event["user_id"], event["event_id"])
    arrival = tracked.timeline[0]
    assert isinstance(arrival, Arrival)
    return (arrival.event["user_id"], arrival.event["event_id"])


def _topic_key(case: TopicCase) -> bytes | None:
    """The user_id, as a producer keys an event (none when it is too long to be a key of a
    message that must also hold the value), or a wrong key."""
    if case.wrong_key:
        return b"not-the-user"
    obj = _decoded(case.raw)
    user = obj.get("user_id") if isinstance(obj, dict) else None
    return user.encode() if isinstance(user, str) and len(user) <= 1000 else None


# --------------------------------------------------------------------------- a round


@dataclass
class Target:
    """The worker and topics a run fuzzes; ``enriched`` grows with every round (an event
    repeated from an earlier round is counted once, there)."""

    url: str
    bootstrap: str
    topics: TopicNames
    enriched: Counter[tuple[str, str]] = field(default_factory=Counter)
    enriched_mark: dict[int, int] | None = None  # None: from the beginning


async def _send_all(
    session: aiohttp.ClientSession, url: str, cases: list[HttpCase], concurrency: int
) -> list[Answer]:
    answers: list[Answer] = []
    for start in range(0, len(cases), concurrency):
        group = cases[start : start + concurrency]
        answers += await asyncio.gather(*(post(session, url, case) for case in group))
    return answers


async def fuzz_round(
    target: Target,
    http_cases: list[HttpCase],
    topic_cases: list[TopicCase],
    *,
    concurrency: int = 1,
) -> Findings:
    """Send the cases, wait until the worker has processed them, judge every property."""
    topics = target.topics
    dead_mark = await end_offsets(target.bootstrap, topics.dead_letters)
    async with aiohttp.ClientSession() as session:
        answers = await _send_all(session, target.url, http_cases, concurrency)
    messages = [Outgoing(_topic_key(case), case.raw) for case in topic_cases]
    produced = await produce(target.bootstrap, topics.user_events, messages)
    await barrier(target.bootstrap, topics.user_events, topics.enriched)

    records = await read_to_end(
        target.bootstrap, topics.enriched, start_offsets=target.enriched_mark
    )
    target.enriched_mark = _next_offsets(records, target.enriched_mark or {})
    fresh = Counter((e["user_id"], e["event_id"]) for e in (r.json() for r in records))
    target.enriched.update(fresh)
    letters = [
        r.json()
        for r in await read_to_end(target.bootstrap, topics.dead_letters, start_offsets=dead_mark)
    ]

    found = Findings()
    expected_letters: Counter[LetterKey] = Counter()
    accepted: list[tuple[tuple[str, str], str]] = []
    for case, answer in zip(http_cases, answers, strict=True):
        expected = decision(case)
        found.add(judge_answer(case, answer, expected))
        expected_letters.update(letter_key(d) for d in expected.dead_letters)
        body = answer.body if isinstance(answer.body, dict) else {}
        ids = body.get("accepted") or ([body["event_id"]] if "event_id" in body else [])
        users = [a.key.decode() for a in expected.accepted]
        accepted += [((u, i), _described(case.body)) for u, i in zip(users, ids, strict=False)]
    for message, where in zip(topic_cases, produced, strict=True):
        found.sent[TOPIC] += 1
        enriched_as = topic_decision(message, topics.user_events, where.partition, where.offset)
        if enriched_as is None:
            expected_letters[("topic", str(where.partition), where.offset, ())] += 1
        else:
            accepted.append((enriched_as, _described(message.raw)))

    raws = {(w.partition, w.offset): c.raw for c, w in zip(topic_cases, produced, strict=True)}
    for letter in letters:
        payload = raws.get((letter.get("partition"), letter.get("offset")))
        if letter["source"] != "topic":
            continue
        if not names_the_problem(letter["errors"], _decoded(payload or b"")):
            found.unnamed.append(f"dead letter {letter['errors']}: {_described(payload or b'')}")
        if any(e["message"].startswith(UNFORESEEN) for e in letter["errors"]):
            found.tracker_failures.append(f"{letter['errors']}: {_described(payload or b'')}")
    found_letters = Counter(_found_key(letter) for letter in letters)
    found.letters_expected = sum(expected_letters.values())
    found.letters_found = sum(found_letters.values())
    found.letters_missing = [str(k) for k in (expected_letters - found_letters).elements()]
    found.letters_unexpected = [str(k) for k in (found_letters - expected_letters).elements()]
    found.accepted = len(accepted)
    for key, what in accepted:
        if key in target.enriched:
            found.accepted_enriched += 1
        else:
            found.not_enriched.append(f"{key}: {what}")
    found.enriched_twice = [str(k) for k, n in fresh.items() if target.enriched[k] > 1]
    return found


def _found_key(letter: dict[str, Any]) -> LetterKey:
    """A topic letter by where it was read (its errors are the tracker's); others by content."""
    if letter.get("source") == "topic":
        return ("topic", str(letter["partition"]), letter["offset"], ())
    return letter_key(letter)


def _next_offsets(records: list[Record], mark: dict[int, int]) -> dict[int, int]:
    """Where to read on from, after ``records`` read from ``mark``."""
    following = dict(mark)
    for record in records:
        following[record.partition] = max(following.get(record.partition, 0), record.offset + 1)
    return following
