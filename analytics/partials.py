"""The ``kpi-partials`` messages the combiner takes in (analytics.combiner), checked first.

The partition stage (analytics.partition, agents/behavior_tracker.py) publishes these kinds
(and the shares of SPEC 7-9, ``funnel``, ``experiment`` and ``cohort``, analytics.journeys):

* ``{"type": "progress", "partition", "wm", "late", "arrived"}``: a partition's watermark,
  its late events so far and the append time of its latest message;
* ``{"type": "partial", "partition", "window_start", "final", "kpi": {counter: n} (the
  ``KPI_COUNTERS``, and ``custom.<name>`` per custom KPI count, analytics.custom_kpis),
  "pages": {page: [views, visitors, time_ms]}, "dims": {dimension: {value: [events, users,
  page_views, revenue_cents]}}}``: its share of a window.

The combiner keeps what it takes in its state and saves the state after every batch, so one
bad value taken in would fail every later batch: the partitions' figures would never be final
again. Anything on the topic that is not one of these (not JSON, a foreign producer, a
partition count or window length that does not match this worker's settings, a counter that
is not a whole number) is refused here with errors naming the fields, and the combiner sends
it to ``kpi-partials-dlq`` (agents/kpi_combiner.py).

A partial too large for one Kafka message comes as chunks (analytics.record_chunks), each a
partial with a share of the pages and dimension values and a ``chunk`` field
(``{"index", "count", "digest"}``), checked here like any partial; the combiner puts them
together before using them.

Counters are bounded by what valid input can reach, not by 64 bits (analytics.wide_json
reads and writes integers of any size): a partition holds at most 2**63 - 1 messages (Kafka
offsets are signed 64-bit) and an event adds at most 1e11 cents (SPEC 1: ``metadata.amount``
up to 1e9) or 8.64e7 ms to a counter, so no partition's counter passes
``MAX_COUNTER`` = (2**63 - 1) * 1e11, about 9.2e29. A larger one is not from a partition.

Fields the combiner does not read are left out of the checked message (and of the state), so
a newer tracker that adds a field does not stop an older combiner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from analytics import wide_json
from analytics.custom_kpis import MAX_CUSTOM_KPIS, is_counter
from analytics.record_chunks import ChunkError, marker
from analytics.timeutil import DAY_MS
from analytics.traffic import DIMENSIONS
from analytics.validation import FieldError

INT64_MAX = 2**63 - 1
MAX_EVENT_CENTS = 100 * 1_000_000_000  # SPEC 1: metadata.amount, the most one event adds
MAX_COUNTER = INT64_MAX * MAX_EVENT_CENTS
#: the earliest and latest epoch ms a published timestamp can show (analytics.timeutil): a
#: window's start and its end must both be writable, so the last minute of year 9999 is not
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999
MAX_PAGE_CHARS = 2048  # SPEC 1: page
MAX_VALUE_CHARS = 1024  # a dimension value: a device, a country, a browser parsed from a UA
MAX_ERRORS = 10  # errors listed per message, so a dead letter stays small

KPI_COUNTERS = (
    "events",
    "page_views",
    "conversions",
    "revenue_cents",
    "purchases",
    "sessions",
    "session_duration_ms",
    "bounces",
    "engagement_x10000",
    "active_users",
    "new_users",
    "users_total",
)
"""The counters every partial carries (analytics.partition.window_partial)."""


class PartialRejected(ValueError):
    """A ``kpi-partials`` message the combiner cannot use; ``errors`` names each problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class PartialLimits:
    """What a message must agree with: the worker's partition count and window length."""

    partitions: int
    window_ms: int

    @property
    def max_counter(self) -> int:
        """The largest counter of one partition's partial (module docstring)."""
        return MAX_COUNTER


MISSING: Any = ...


def _show(value: Any) -> str:
    """An offending value quoted back in an error, bounded."""
    if value is None or type(value) in (bool, int, float):
        return wide_json.dumps(value).decode()[:60]
    if type(value) is str:
        text = orjson.dumps(value[:40]).decode()
        return text if len(value) <= 40 else f'{text[:-1]}..." ({len(value)} characters)'
    return "an object" if type(value) is dict else "an array"


class _Check:
    """Collects the errors of one message, listing at most MAX_ERRORS of them."""

    def __init__(self, limits: PartialLimits) -> None:
        self.limits = limits
        self.errors: list[FieldError] = []
        self.more = 0

    def fail(self, field: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(FieldError(field, message))
        else:
            self.more += 1

    def integer(self, field: str, value: Any, lo: int, hi: int) -> int:
        if value is MISSING:
            self.fail(field, "required")
        elif type(value) is not int or not lo <= value <= hi:
            self.fail(field, f"must be an integer from {lo} to {hi}, got {_show(value)}")
        else:
            return int(value)
        return lo

    def counter(self, field: str, value: Any) -> int:
        return self.integer(field, value, 0, self.limits.max_counter)

    def cells(self, field: str, value: Any, size: int) -> list[int]:
        if type(value) is not list or len(value) != size:
            self.fail(field, f"must be a list of {size} counters, got {_show(value)}")
            return [0] * size
        return [self.counter(f"{field}[{i}]", cell) for i, cell in enumerate(value)]

    def table(self, field: str, value: Any, max_key: int, size: int) -> dict[str, list[int]]:
        """{name: [size counters]} with names of at most ``max_key`` characters."""
        if type(value) is not dict:
            self.fail(field, f"must be a JSON object, got {_show(value)}")
            return {}
        checked = {}
        for key, cells in value.items():
            if len(key) > max_key:
                self.fail(f"{field}.{key[:40]}...", f"longer than {max_key} characters")
            else:
                checked[key] = self.cells(f"{field}.{key}", cells, size)
        return checked

    def raise_errors(self) -> None:
        if self.more:
            more = f"{self.more} more problem{'s' if self.more > 1 else ''}"
            self.errors.append(FieldError("message", f"and {more}"))
        if self.errors:
            raise PartialRejected(self.errors)


def _int64(check: _Check, field: str, value: Any) -> int | None:
    if value is None:
        return None
    return check.integer(field, value, -INT64_MAX - 1, INT64_MAX)


def _progress(check: _Check, message: dict[str, Any], partition: int) -> dict[str, Any]:
    return {
        "type": "progress",
        "partition": partition,
        "wm": _int64(check, "wm", message.get("wm")),
        "late": check.counter("late", message.get("late", MISSING)),
        "arrived": _int64(check, "arrived", message.get("arrived")) or 0,
    }


def _dims(check: _Check, value: Any) -> dict[str, dict[str, list[int]]]:
    if type(value) is not dict:
        check.fail("dims", f"must be a JSON object, got {_show(value)}")
        return {}
    checked = {}
    for dimension, values in value.items():
        if dimension not in DIMENSIONS:
            check.fail(f"dims.{dimension[:40]}", f"not one of {', '.join(DIMENSIONS)}")
        else:
            checked[dimension] = check.table(f"dims.{dimension}", values, MAX_VALUE_CHARS, 4)
    return checked


def _partial(check: _Check, message: dict[str, Any], partition: int) -> dict[str, Any]:
    window_ms = check.limits.window_ms
    start = check.integer(
        "window_start", message.get("window_start", MISSING), MIN_MS, MAX_MS - window_ms
    )
    if start % window_ms:
        check.fail("window_start", f"{start} is not the start of a {window_ms} ms window")
    final = message.get("final", MISSING)
    if type(final) is not bool:
        check.fail(
            "final",
            "required" if final is MISSING else f"must be true or false, got {_show(final)}",
        )
    kpi_value = message.get("kpi", MISSING)
    kpi: dict[str, int] = {}
    if type(kpi_value) is not dict:
        check.fail(
            "kpi",
            "required"
            if kpi_value is MISSING
            else f"must be a JSON object, got {_show(kpi_value)}",
        )
    else:
        for name in KPI_COUNTERS:
            kpi[name] = check.counter(f"kpi.{name}", kpi_value.get(name, MISSING))
        custom = [name for name in kpi_value if type(name) is str and is_counter(name)]
        if len(custom) > MAX_CUSTOM_KPIS:
            check.fail("kpi", f"at most {MAX_CUSTOM_KPIS} custom counters, got {len(custom)}")
        for name in custom[:MAX_CUSTOM_KPIS]:  # SPEC 10, analytics.custom_kpis
            kpi[name] = check.counter(f"kpi.{name}", kpi_value[name])
    checked = {
        "type": "partial",
        "partition": partition,
        "window_start": start,
        "final": final,
        "kpi": kpi,
        "pages": check.table("pages", message.get("pages", {}), MAX_PAGE_CHARS, 3),
        "dims": _dims(check, message.get("dims", {})),
    }
    if "chunk" in message:
        try:
            index, count, version = marker(message)
        except ChunkError as exc:
            field, _, problem = str(exc).partition(": ")
            check.fail(field, problem)
        else:
            checked["chunk"] = {"index": index, "count": count, "digest": version}
    return checked


MAX_FUNNEL_NAME = 63  # analytics.funnels: names of 1-63 characters
MAX_DAY = MAX_MS // DAY_MS
MIN_DAY = MIN_MS // DAY_MS


def _funnel(check: _Check, message: dict[str, Any], partition: int) -> dict[str, Any]:
    """A partition's share of a funnel's day (analytics.journeys): ``partial`` is
    ``[reached per stage, per transition a flat list of ms, count pairs]``."""
    name = message.get("funnel", MISSING)
    if type(name) is not str or not 0 < len(name) <= MAX_FUNNEL_NAME:
        check.fail("funnel", f"must be a funnel name, got {_show(name)}")
    day = check.integer("day", message.get("day", MISSING), MIN_DAY, MAX_DAY)
    final = message.get("final", MISSING)
    if type(final) is not bool:
        check.fail("final", f"must be true or false, got {_show(final)}")
    partial = message.get("partial", MISSING)
    if type(partial) is not list or len(partial) != 2:
        check.fail("partial", f"must be [reached, gaps], got {_show(partial)}")
        partial = [[], []]
    reached, gaps = partial
    if type(reached) is not list or type(gaps) is not list or len(gaps) != max(0, len(reached) - 1):
        check.fail("partial", "must hold one list of gaps per transition of the stages reached")
    else:
        for k, n in enumerate(reached):
            check.counter(f"partial.reached[{k}]", n)
        for k, flat in enumerate(gaps):
            if type(flat) is not list or len(flat) % 2:
                check.fail(f"partial.gaps[{k}]", "must be a flat list of ms, count pairs")
                continue
            for i, n in enumerate(flat):
                bound = (0, MAX_MS - MIN_MS) if i % 2 == 0 else (1, MAX_COUNTER)
                check.integer(f"partial.gaps[{k}][{i}]", n, *bound)
    return {
        "type": "funnel",
        "partition": partition,
        "funnel": name,
        "day": day,
        "final": final,
        "partial": partial,
    }


MAX_NAME = 1024  # an experiment or variant name (metadata strings, bounded by 32 KiB)


def _counter_rows(
    check: _Check, message: dict[str, Any], names: tuple[str, str], texts: bool
) -> list[list[Any]]:
    """``counters``: ``[[key, key, c, c, c, c], ...]``, the keys two names (``texts``) or two
    day numbers (cohort day, offset)."""
    rows = message.get("counters", MISSING)
    if type(rows) is not list:
        check.fail("counters", f"must be a list, got {_show(rows)}")
        return []
    checked = []
    for i, row in enumerate(rows):
        where = f"counters[{i}]"
        if type(row) is not list or len(row) != 6:
            check.fail(where, f"must be [{names[0]}, {names[1]}, 4 counters], got {_show(row)}")
            continue
        if texts:
            for j in (0, 1):
                if type(row[j]) is not str or not 0 < len(row[j]) <= MAX_NAME:
                    check.fail(f"{where}[{j}]", f"must be a {names[j]} name")
        else:
            check.integer(f"{where}[0]", row[0], MIN_DAY, MAX_DAY)
            check.integer(f"{where}[1]", row[1], 0, 100_000)
        for j in range(2, 6):  # differences of counters may pass through zero, never below
            check.integer(f"{where}[{j}]", row[j], 0, MAX_COUNTER)
        checked.append(row)
    return checked


def _experiment(check: _Check, message: dict[str, Any], partition: int) -> dict[str, Any]:
    counters = _counter_rows(check, message, ("experiment", "variant"), texts=True)
    return {"type": "experiment", "partition": partition, "counters": counters}


def _cohort(check: _Check, message: dict[str, Any], partition: int) -> dict[str, Any]:
    counters = _counter_rows(check, message, ("cohort day", "day offset"), texts=False)
    final = message.get("final", MISSING)
    if type(final) is not bool:
        check.fail("final", f"must be true or false, got {_show(final)}")
    return {"type": "cohort", "partition": partition, "final": final, "counters": counters}


def check_message(message: Any, limits: PartialLimits) -> dict[str, Any]:
    """The message with only the fields the combiner reads, or PartialRejected."""
    check = _Check(limits)
    if type(message) is not dict:
        check.fail("message", f"must be a JSON object, got {_show(message)}")
        check.raise_errors()
    partition = check.integer(
        "partition", message.get("partition", MISSING), 0, limits.partitions - 1
    )
    kind = message.get("type", MISSING)
    checked: dict[str, Any] = {}
    if kind == "progress":
        checked = _progress(check, message, partition)
    elif kind == "partial":
        checked = _partial(check, message, partition)
    elif kind == "funnel":
        checked = _funnel(check, message, partition)
    elif kind == "experiment":
        checked = _experiment(check, message, partition)
    elif kind == "cohort":
        checked = _cohort(check, message, partition)
    else:
        kinds = '"progress", "partial", "funnel", "experiment" or "cohort"'
        check.fail("type", f"must be {kinds}, got {_show(kind)}")
    check.raise_errors()
    return checked


def decode_message(raw: bytes | None, limits: PartialLimits) -> dict[str, Any]:
    """A ``kpi-partials`` message value, decoded and checked (``check_message``)."""
    if not raw:
        raise PartialRejected([FieldError("message", "empty value")])
    try:
        message = wide_json.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PartialRejected([FieldError("message", f"invalid JSON: {exc}")]) from None
    return check_message(message, limits)
