"""Records larger than a Kafka message: published as chunks, put together again before use.

SPEC 1 bounds a page to 2,048 characters (any characters) and an action to 64, but not how
many distinct ones a window or a session has. 100 pages of 2,048 control characters (12 KiB
each as JSON escapes) make a window's partial or a session's record larger than the 1 MB a
Kafka message holds by default, and a record the broker refuses fails its round on every
retry. So a record whose JSON is over ``MAX_RECORD_BYTES`` is published as ``n`` messages,
its *chunks*, in order, with the same key and partition. Each chunk is the record with its
other fields whole and a share of the entries of its maps (``Shape.maps``: a window's pages
and dimension values, a session's pages and actions), in key order, plus

    "chunk": {"index": i, "count": n, "digest": d}

``d`` names the record's content (a hash of its JSON with sorted keys): every chunk of one
version carries it, so a replay that sends the chunks again adds nothing, and chunks of two
versions never mix. A consumer ``gather``s chunks until it has all ``n`` of a version, then
uses the record whole, checked against its digest; when a version is complete the unfinished
ones of the same record (``Shape.identity``; a producer stopped half-way, whose round is then
sent again whole) are dropped. Every chunk is itself a valid message of its topic with fewer
map entries, so a consumer that checks messages (analytics.partials) checks chunks the same
way. Records that fit are published as before, with no ``chunk`` field.

No valid input makes a chunk too large: the other fields of a partial or a session record
are a few KiB at most (ids of 128 characters, counters), and a map entry at most 2,048
characters of 6-byte escapes, so a chunk holds at least dozens of entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from analytics import wide_json

MAX_RECORD_BYTES = 256 * 1024
"""The largest message published whole: a quarter of a Kafka message's default 1 MB (the
broker's ``message.max.bytes``, librdkafka's and aiokafka's request limits)."""

_MARKER_ROOM = len(orjson.dumps({"chunk": {"index": 2**31, "count": 2**31, "digest": "0" * 16}}))


class ChunkError(ValueError):
    """A chunk that cannot be put together with the others (malformed, or not matching)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Which fields of a record name it, and which maps are shared out over its chunks, with
    their depth (1: ``{key: value}``; 2: ``{key: {key: value}}``)."""

    identity: tuple[str, ...]
    maps: tuple[tuple[str, int], ...]


PARTIAL = Shape(("partition", "window_start"), (("pages", 1), ("dims", 2)))
"""A ``kpi-partials`` partial (analytics.partials)."""
SESSION = Shape(("user_id", "session_id", "window_start"), (("pages", 1), ("actions", 1)))
"""A ``session-metrics`` record (agents/behavior_tracker.session_record)."""


def digest(record: dict[str, Any]) -> str:
    """A name of the record's content, the same whatever the order of its maps."""
    data = wide_json.dumps(record, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def encode(record: dict[str, Any], shape: Shape, limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """The messages of ``record``: its JSON when that fits ``limit``, else its chunks."""
    data = wide_json.dumps(record)
    if len(data) <= limit:
        return [data]
    return split(record, shape, limit)


def _entries(value: Any, depth: int, path: tuple[str, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """``(key, ..., value)`` of every entry of a map ``depth`` levels deep."""
    for key, item in value.items():
        if depth == 1:
            yield (*path, key, item)
        else:
            yield from _entries(item, depth - 1, (*path, key))


def _skeleton(record: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The record with its maps emptied (a deeper map keeps its first level of keys)."""
    skeleton = dict(record)
    for name, depth in shape.maps:
        value = record.get(name)
        if isinstance(value, dict):
            skeleton[name] = {key: {} for key in value} if depth == 2 else {}
    return skeleton


def split(record: dict[str, Any], shape: Shape, limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """``record`` as chunks of at most ``limit`` bytes each (module docstring)."""
    skeleton = _skeleton(record, shape)
    room = limit - len(wide_json.dumps(skeleton)) - _MARKER_ROOM
    groups: list[list[tuple[int, tuple[Any, ...]]]] = [[]]
    used = 0
    for index, (name, depth) in enumerate(shape.maps):
        value = record.get(name)
        if not isinstance(value, dict):
            continue
        for entry in sorted(_entries(value, depth)):
            # "key":value, in the innermost map of its chunk
            size = len(wide_json.dumps(entry[-2])) + len(wide_json.dumps(entry[-1])) + 2
            if size > room:
                raise ChunkError(f"{name}: an entry of {size} bytes cannot fit a chunk")
            if used + size > room and groups[-1]:
                groups.append([])
                used = 0
            groups[-1].append((index, entry))
            used += size
    version = digest(record)
    chunks = []
    for number, group in enumerate(groups):
        chunk = _skeleton(record, shape)
        for index, entry in group:
            inner = chunk[shape.maps[index][0]]
            for key in entry[:-2]:
                inner = inner[key]
            inner[entry[-2]] = entry[-1]
        chunk["chunk"] = {"index": number, "count": len(groups), "digest": version}
        data = wide_json.dumps(chunk)
        if len(data) > limit:  # the sizes above are exact: a bug if it happens
            raise ChunkError(f"chunk {number} is {len(data)} bytes, over {limit}")
        chunks.append(data)
    return chunks


def marker(record: dict[str, Any]) -> tuple[int, int, str]:
    """``(index, count, digest)`` of a chunk, or ChunkError naming what is wrong."""
    value = record.get("chunk")
    if type(value) is not dict:
        raise ChunkError("chunk: must be a JSON object")
    index, count, version = value.get("index"), value.get("count"), value.get("digest")
    if type(count) is not int or count < 1:
        raise ChunkError(f"chunk.count: must be a positive integer, got {count!r}"[:120])
    if type(index) is not int or not 0 <= index < count:
        raise ChunkError(f"chunk.index: must be an integer from 0 to {count - 1}"[:120])
    if type(version) is not str or len(version) != 16:
        raise ChunkError("chunk.digest: must be 16 hexadecimal characters")
    return index, count, version


def identity(record: dict[str, Any], shape: Shape) -> list[Any]:
    return [record.get(name) for name in shape.identity]


def gather(
    pending: dict[str, Any], record: dict[str, Any], shape: Shape, offset: int = -1
) -> dict[str, Any] | None:
    """Keep a chunk in ``pending`` (plain JSON data: a consumer may store it with its
    state); the record whole once every chunk of its version is there, else None.

    ``offset`` is where the chunk came from, for a consumer that must not commit past the
    first chunk of a record it has not used yet (``first_offset``)."""
    index, count, version = marker(record)
    name = f"{version}/{count}"
    whole = identity(record, shape)
    entry = pending.setdefault(name, {"id": whole, "count": count, "first": offset, "parts": {}})
    if entry["id"] != whole:
        raise ChunkError(f"chunk {index} of {name} names another record than its first chunk")
    entry["parts"][str(index)] = record
    if offset >= 0 and (entry["first"] < 0 or offset < entry["first"]):
        entry["first"] = offset
    if len(entry["parts"]) < count:
        return None
    for other in [key for key, e in pending.items() if e["id"] == whole]:
        del pending[other]  # this version, and any a stopped producer left unfinished
    assembled = assemble([entry["parts"][str(i)] for i in range(count)], shape)
    if digest(assembled) != version:
        raise ChunkError(f"the {count} chunks of {name} do not make the record they name")
    return assembled


def assemble(parts: list[dict[str, Any]], shape: Shape) -> dict[str, Any]:
    """The record the chunks ``parts`` (in order) were split from."""
    whole = {key: value for key, value in parts[0].items() if key != "chunk"}
    for name, depth in shape.maps:
        merged: dict[str, Any] = {}
        for part in parts:
            value = part.get(name)
            if not isinstance(value, dict):
                continue
            if depth == 1:
                merged.update(value)
            else:
                for key, inner in value.items():
                    merged.setdefault(key, {}).update(inner)
        if name in whole:
            whole[name] = merged
    return whole


def first_offset(pending: dict[str, Any]) -> int | None:
    """The offset of the earliest chunk still waiting for the rest of its record."""
    offsets = [entry["first"] for entry in pending.values() if entry["first"] >= 0]
    return min(offsets) if offsets else None


def drop_where(pending: dict[str, Any], field: str, shape: Shape, at_most: int) -> int:
    """Forget the unfinished records whose identity ``field`` is at or below ``at_most``
    (a combiner's windows already published); returns how many."""
    position = shape.identity.index(field)
    stale = [key for key, entry in pending.items() if entry["id"][position] <= at_most]
    for key in stale:
        del pending[key]
    return len(stale)
