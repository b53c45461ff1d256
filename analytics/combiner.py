"""Global window figures from per-partition partials (SPEC sections 4-6).

Users are disjoint across partitions, so every counter of a window is the sum of the
partitions' partials; ``total_users`` of a partition that had no event in a window carries over
from its last final partial. A window is final once every partition has reported a watermark
at or past its end; a partition that has never seen an event holds it back only until it has
caught up (see ``_ready``). Partials are overwrites, not increments, so re-delivered ones
change nothing; a partial for a window already published as final is counted and ignored.

A partial too large for one message comes as chunks (analytics.record_chunks): they wait in
the state (``chunks``) until the last one is there, and the partial they make is then taken
like any other; chunks of a window already published are dropped with it.

Trends: a final record's compare it with the whole previous window (SPEC 4); a live record's
compare the window so far with the previous window at the same elapsed point of event time,
marked ``trends_provisional`` (analytics.live_trends, which also says why). For that the state
keeps each open window's counters as it was published live (``checkpoints``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analytics import journey_combiner, wide_json
from analytics.cohorts import CohortsSpec
from analytics.custom_kpis import NO_CUSTOM_KPIS, CustomKpis
from analytics.experiments import ExperimentsSpec
from analytics.funnels import FunnelSpec
from analytics.kpis import kpi_figures, trends
from analytics.live_trends import (
    Checkpoint,
    checkpoint,
    elapsed_ms,
    event_time_now,
    provisional_trends,
    with_checkpoint,
)
from analytics.record_chunks import PARTIAL, drop_where, gather
from analytics.traffic import add_dimensions, add_pages, dimension_rows, page_rows

CombinerState = dict[str, Any]
KEEP_FINALS = 3


@dataclass(frozen=True, slots=True)
class CombinerRules:
    partitions: int
    window_ms: int = 60_000
    grace_ms: int = 10_000
    funnels: tuple[FunnelSpec, ...] = ()
    experiments: ExperimentsSpec | None = None
    cohorts: CohortsSpec | None = None
    custom_kpis: CustomKpis = NO_CUSTOM_KPIS


@dataclass(slots=True)
class CombinerOutput:
    kpis: list[dict[str, Any]] = field(default_factory=list)
    pages: list[dict[str, Any]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    funnels: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    cohorts: list[dict[str, Any]] = field(default_factory=list)
    ignored_partials: int = 0


def new_state() -> CombinerState:
    return {
        "progress": {},
        "windows": {},
        "users": {},
        "finals": {},
        "ready_since": {},
        "published_through": None,
        "checkpoints": {},
        "chunks": {},
    }


def _users_total(state: CombinerState, partition: str, start: int) -> int:
    """A partition's user count as of its last final partial at or before ``start``."""
    best = 0
    for window, total in state["users"].get(partition, []):
        if window <= start:
            best = total
    return best


def _sums(
    state: CombinerState, start: int, rules: CombinerRules
) -> tuple[Counter[str], dict[str, Any], dict[str, Any]]:
    partials: dict[str, Any] = state["windows"].get(str(start), {})
    sums = Counter[str]()
    pages: dict[str, list[int]] = {}
    dims: dict[str, dict[str, list[int]]] = {}
    for partition in range(rules.partitions):
        key = str(partition)
        partial = partials.get(key)
        if partial is None:
            sums["users_total"] += _users_total(state, key, start)
            continue
        sums.update(partial["kpi"])
        add_pages(pages, partial["pages"])
        add_dimensions(dims, partial["dims"])
    return sums, pages, dims


def _ready(state: CombinerState, start: int, rules: CombinerRules) -> bool:
    """Every partition that has seen events has a watermark at or past the window's end, and
    every partition that has not has since processed everything appended to it up to the moment
    the others got there (``arrived``: the append time of its latest message, ticks included).
    An event appended to an empty partition after that is further than ``grace`` behind events
    appended before it elsewhere, so it is late by SPEC section 6."""
    progress = state["progress"]
    if len(progress) < rules.partitions:
        return False
    end = start + rules.window_ms
    active = [p for p in progress.values() if p["wm"] is not None]
    if not active or any(p["wm"] < end for p in active):
        return False
    empty = [p for p in progress.values() if p["wm"] is None]
    if not empty:
        return True
    since = state["ready_since"].setdefault(str(start), max(p.get("arrived", 0) for p in active))
    return all(p.get("arrived", 0) >= since for p in empty)


def passed(state: CombinerState, at: int, rules: CombinerRules) -> bool:
    """Whether no partition can still accept an event with ts before ``at``: a partition
    accepts ts from the start of the window its watermark is in (analytics.partition), so
    this is ``_ready`` for the window that ends at ``at`` rounded up to a window's end."""
    size = rules.window_ms
    end = -(-at // size) * size
    if not _ready(state, end - size, rules):
        return False
    state["ready_since"].pop(str(end - size), None)
    return True


def _figures(
    state: CombinerState, start: int, rules: CombinerRules, sums: Counter[str]
) -> dict[str, Any]:
    """The final KPI record of window ``start`` from its summed counters (SPEC 4 trends)."""
    figures = kpi_figures(start, rules.window_ms, sums)
    figures["custom"] = rules.custom_kpis.figures(sums)
    previous_start = start - rules.window_ms
    previous = state["finals"].get(str(previous_start))
    if previous is None and str(previous_start) in state["windows"]:
        previous = dict(_sums(state, previous_start, rules)[0])
    figures["trends"] = trends(sums, previous)
    figures["late_events_total"] = _late(state)
    return figures


def _late(state: CombinerState) -> int:
    return sum(p["late"] for p in state["progress"].values())


def _previous_checkpoints(
    state: CombinerState, start: int, rules: CombinerRules
) -> list[Checkpoint]:
    """The checkpoints of the window before ``start``, ending in its final counters or, while
    it is still open, its latest ones (event time is past its end once ``start`` has events)."""
    previous = start - rules.window_ms
    points: list[Checkpoint] = state["checkpoints"].get(str(previous), [])
    final = state["finals"].get(str(previous))
    if final is None and str(previous) in state["windows"]:
        final = _sums(state, previous, rules)[0]
    if final is None:
        return points
    return with_checkpoint(points, checkpoint(rules.window_ms, final), rules.window_ms)


def _live_figures(
    state: CombinerState, start: int, rules: CombinerRules, now: int | None
) -> dict[str, Any]:
    """The live KPI record of window ``start``, with provisional trends; remembers its
    counters at this elapsed point for the next window's trends."""
    sums = _sums(state, start, rules)[0]
    elapsed = elapsed_ms(start, rules.window_ms, now)
    figures = kpi_figures(start, rules.window_ms, sums)
    figures["custom"] = rules.custom_kpis.figures(sums)
    previous = _previous_checkpoints(state, start, rules)
    figures.update(provisional_trends(sums, elapsed, previous))
    figures["late_events_total"] = _late(state)
    figures["is_final"] = False
    own = state["checkpoints"].get(str(start), [])
    state["checkpoints"][str(start)] = with_checkpoint(
        own, checkpoint(elapsed, sums), rules.window_ms
    )
    return figures


def combine(
    state: CombinerState,
    messages: Iterable[dict[str, Any]],
    rules: CombinerRules,
    *,
    live: bool = True,
) -> CombinerOutput:
    """Fold partials and progress reports into the state; return what to publish."""
    out = CombinerOutput()
    touched: set[int] = set()
    funnels_touched: set[str] = set()
    experiments_touched: set[str] = set()
    cohorts_touched: set[str] = set()
    funnels = state.setdefault("funnels", {})
    published = state["published_through"]

    def ready(at: int) -> bool:
        return passed(state, at, rules)

    for message in messages:
        partition = str(message["partition"])
        if message["type"] == "funnel":
            if not journey_combiner.take(funnels, message, rules.funnels, ready, funnels_touched):
                out.ignored_partials += 1
            continue
        if message["type"] == "experiment":
            journey_combiner.take_experiments(state, message, experiments_touched)
            continue
        if message["type"] == "cohort":
            journey_combiner.take_cohorts(state, message, cohorts_touched)
            continue
        if message["type"] == "progress":
            before = state["progress"].get(partition, {"wm": None})["wm"]
            wm = message["wm"]
            if before is not None and (wm is None or wm < before):
                wm = before
            state["progress"][partition] = {
                "wm": wm,
                "late": message["late"],
                "arrived": message.get("arrived", 0),
            }
            continue
        start = message["window_start"]
        if published is not None and start <= published:
            out.ignored_partials += 1
            continue
        if "chunk" in message:
            whole = gather(state["chunks"], message, PARTIAL)
            if whole is None:
                continue  # the rest of the partial's chunks are still to come
            message = whole
        partials = state["windows"].setdefault(str(start), {})
        known = partials.get(partition)
        if known is not None and known["final"] and not message["final"]:
            # a re-delivered batch shows the window open again on its way back to final
            continue
        partials[partition] = message
        touched.add(start)
        if message["final"]:
            history = [w for w in state["users"].get(partition, []) if w[0] != start]
            history.append([start, message["kpi"]["users_total"]])
            state["users"][partition] = sorted(history)
    for start in sorted(int(key) for key in state["windows"]):
        if not _ready(state, start, rules):
            break
        _publish_final(state, start, rules, out)
        touched.discard(start)
    if live:
        now = event_time_now((p["wm"] for p in state["progress"].values()), rules.grace_ms)
        for start in sorted(touched):
            out.kpis.append(_live_figures(state, start, rules, now))
    if funnels:
        out.funnels = journey_combiner.publish(
            funnels, rules.funnels, ready, funnels_touched, live=live
        )
    if rules.experiments is not None and (experiments_touched or state.get("experiments_due")):
        now_ms = max((p.get("arrived", 0) for p in state["progress"].values()), default=0)
        out.experiments = journey_combiner.publish_experiments(
            state, rules.experiments, experiments_touched, now_ms
        )
    if rules.cohorts is not None and (state.get("cohorts_open") or state.get("cohorts_done")):
        out.cohorts = journey_combiner.publish_cohorts(
            state, rules.cohorts, ready, cohorts_touched if live else set()
        )
    return out


def combine_each(
    state: CombinerState,
    messages: Sequence[dict[str, Any]],
    rules: CombinerRules,
    *,
    live: bool = True,
) -> tuple[CombinerOutput, list[tuple[int, str]]]:
    """``combine`` one message at a time, each on a copy of the state: a message it fails on
    leaves the state as it was and comes back as ``(index, error)``; the others are folded.

    The way on when ``combine`` failed on a whole batch (a bug that some message meets, since
    every message was checked by analytics.partials): the caller starts again from the state
    saved before the batch. Live records come per message rather than per batch here; each
    replaces the one before, so what is finally published is the same."""
    out = CombinerOutput()
    failed: list[tuple[int, str]] = []
    for index, message in enumerate(messages):
        before = wide_json.dumps(state)
        try:
            one = combine(state, [message], rules, live=live)
        except Exception as exc:  # whatever it is, it must not stop the combiner
            state.clear()
            state.update(wide_json.loads(before))
            failed.append((index, f"could not be processed: {exc!r}"))
            continue
        out.kpis += one.kpis
        out.pages += one.pages
        out.traffic += one.traffic
        out.funnels += one.funnels
        out.experiments += one.experiments
        out.cohorts += one.cohorts
        out.ignored_partials += one.ignored_partials
    return out, failed


def _publish_final(
    state: CombinerState, start: int, rules: CombinerRules, out: CombinerOutput
) -> None:
    sums, pages, dims = _sums(state, start, rules)
    figures = _figures(state, start, rules, sums)
    figures["is_final"] = True
    state["finals"][str(start)] = dict(sums)
    out.kpis.append(figures)
    out.pages.extend(page_rows(start, rules.window_ms, pages))
    out.traffic.extend(dimension_rows(start, rules.window_ms, dims))
    for old in sorted(int(key) for key in state["finals"])[:-KEEP_FINALS]:
        del state["finals"][str(old)]
    for old in [key for key in state["checkpoints"] if int(key) < start]:
        del state["checkpoints"][old]
    del state["windows"][str(start)]
    state["ready_since"].pop(str(start), None)
    state["published_through"] = start
    drop_where(state["chunks"], "window_start", PARTIAL, start)
    for partition, history in state["users"].items():
        keep = [w for w in history if w[0] > start]
        before = [w for w in history if w[0] <= start]
        state["users"][partition] = before[-1:] + keep
