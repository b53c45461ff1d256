"""Global SPEC 7-9 rows from the partitions' shares (analytics.journeys sends them).

Funnels:

Users are disjoint across partitions, so a (funnel, day)'s figures are the sum of the
partitions' shares (analytics.funnels.combine, medians from the merged multisets). Each share
is a partition's whole partial of the day, so a re-delivered one overwrites and changes
nothing. A day is final when every partition's watermark has passed the day's end plus the
funnel's window (the combiner's ``ready`` rule, as for KPI windows); its final row is
published once and the day dropped. A share of a day that is final already (a replay) is
ignored. Live rows go out for the days whose shares changed.

Each row carries ``durations_ms``, per transition k -> k+1 the flat ``[ms, count, ...]``
multiset its median comes from, so a reader can merge days exactly (``GET
/api/funnels/{name}?from=&to=``, analytics.funnels.range_row).

State (inside the combiner's JSON state): ``funnels`` = ``{"name|day": {partition: [final,
share]}}``. A partition's final share is not replaced by a live one: a partition replaying
after a crash shows its day open again on its way back to final, while the combiner already
knows its watermark passed the day (the same rule as for KPI windows).

Experiments and cohorts come as counters per key, the changed keys of a partition replacing
its earlier ones; experiments are published on change (at most once per publish interval per
experiment), cohort rows live as they change and final once every partition has passed the
end of their day (SPEC 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analytics.cohorts import CohortsSpec, cohort_row
from analytics.experiments import ExperimentPartial, ExperimentsSpec
from analytics.experiments import rows as experiment_rows
from analytics.funnels import DayPartial, FunnelSpec, day_row
from analytics.timeutil import DAY_MS

Ready = Callable[[int], bool]
"""Whether every partition's lowest acceptable ts has reached a time (the combiner's rule for
a window's end, ``analytics.combiner.passed``)."""


def _key(name: str, day: int) -> str:
    return f"{name}|{day}"


def _split(key: str) -> tuple[str, int]:
    name, _, day = key.rpartition("|")
    return name, int(day)


def final_at(spec: FunnelSpec, day: int) -> int:
    """The watermark that makes a funnel's day final (SPEC 7)."""
    return (day + 1) * DAY_MS + spec.window_ms


def take(
    state: dict[str, Any],
    message: dict[str, Any],
    specs: Sequence[FunnelSpec],
    ready: Ready,
    touched: set[str],
) -> bool:
    """Keep a partition's share; False when it was ignored (its day is final already, or
    its funnel is not configured here)."""
    spec = next((s for s in specs if s.name == message["funnel"]), None)
    day = int(message["day"])
    if spec is None or (ready(final_at(spec, day)) and _key(spec.name, day) not in state):
        return False
    key = _key(spec.name, day)
    shares = state.setdefault(key, {})
    partition = str(message["partition"])
    known = shares.get(partition)
    if known is not None and known[0] and not message["final"]:
        return True  # a replay after a crash shows the day open again on its way to final
    shares[partition] = [message["final"], message["partial"]]
    touched.add(key)
    return True


def publish(
    state: dict[str, Any],
    specs: Sequence[FunnelSpec],
    ready: Ready,
    touched: set[str],
    *,
    live: bool,
) -> list[dict[str, Any]]:
    """Final rows of the days every partition has passed (dropped from the state), then,
    with ``live``, rows of the other days ``touched``."""
    by_name = {spec.name: spec for spec in specs}
    rows: list[dict[str, Any]] = []
    for key in sorted(state, key=_split):
        name, day = _split(key)
        spec = by_name.get(name)
        if spec is None:
            del state[key]
            continue
        at = final_at(spec, day)
        final = ready(at)
        if not final and not (live and key in touched):
            continue
        total = DayPartial()
        for _, share in state[key].values():
            total.merge(DayPartial.decode(share))
        row = day_row(spec, day, total, at if final else at - 1)
        row["durations_ms"] = total.encode()[1]
        rows.append(row)
        if final:
            del state[key]
    return rows


# --------------------------------------------------------------------------- experiments (SPEC 9)


def take_experiments(state: dict[str, Any], message: dict[str, Any], touched: set[str]) -> None:
    """A partition's changed (experiment, variant) counters replace its earlier ones.

    State: ``experiments`` = ``{partition: {"experiment|variant": counters}}``."""
    mine = state.setdefault("experiments", {}).setdefault(str(message["partition"]), {})
    for experiment, variant, *counters in message["counters"]:
        mine[f"{experiment}|{variant}"] = counters
        touched.add(experiment)


def publish_experiments(
    state: dict[str, Any], spec: ExperimentsSpec, touched: set[str], now_ms: int
) -> list[dict[str, Any]]:
    """Rows of the experiments that changed, each at most once per ``publish_interval_ms``
    (``now_ms``: the partitions' latest append time); one that must wait is published by a
    later batch (``experiments_due``).

    Each row carries the experiment's ``version``: the publication's time, or one more than
    the last one when that is not earlier, so it grows with every publication of the
    experiment; a reader keeps the row of the highest (the sink: sinks.schema)."""
    due = set(state.get("experiments_due", [])) | touched
    if not due:
        return []
    published = state.setdefault("experiments_published", {})
    ready = {e for e in due if now_ms - published.get(e, -(2**62)) >= spec.publish_interval_ms}
    state["experiments_due"] = sorted(due - ready)
    if not ready:
        return []
    combined = ExperimentPartial()
    for shares in state.get("experiments", {}).values():
        for key, counters in shares.items():
            experiment, _, variant = key.partition("|")
            if experiment in ready:
                combined.add((experiment, variant), counters)
    versions = state.setdefault("experiments_version", {})
    for experiment in ready:
        published[experiment] = now_ms
        versions[experiment] = max(now_ms, versions.get(experiment, 0) + 1)
    rows = experiment_rows(spec, combined, ready)
    for row in rows:
        row["version"] = versions[row["experiment"]]
    return rows


# --------------------------------------------------------------------------- cohorts (SPEC 8)


def take_cohorts(state: dict[str, Any], message: dict[str, Any], touched: set[str]) -> None:
    """A partition's changed (cohort, offset) counters replace its earlier ones; counters of
    a row already published as final (a replay) are ignored.

    State: ``cohorts_open`` = ``{partition: {"cohort|offset": [*counters, final]}}`` for rows
    not yet final (a partition's final counters are not replaced by live ones, as for funnel
    days), ``cohorts_done`` = ``{cohort: [last final offset, size, cumulative cents]}``."""
    done = state.setdefault("cohorts_done", {})
    mine = state.setdefault("cohorts_open", {}).setdefault(str(message["partition"]), {})
    final = int(message["final"])
    for cohort, offset, *counters in message["counters"]:
        finished = done.get(str(cohort))
        if finished is not None and offset <= finished[0]:
            continue
        key = f"{cohort}|{offset}"
        known = mine.get(key)
        if known is not None and known[-1] and not final:
            continue  # a replay shows the row open again on its way back to final
        mine[key] = [*counters, final]
        touched.add(key)


def _open_sum(state: dict[str, Any], cohort: int, offset: int) -> list[int]:
    total = [0, 0, 0, 0]
    key = f"{cohort}|{offset}"
    for shares in state.get("cohorts_open", {}).values():
        counters = shares.get(key)  # the four counters, then whether they are final
        if counters:
            total = [a + b for a, b in zip(total, counters[:4], strict=True)]
    return total


def _cohort_row(
    state: dict[str, Any], cohort: int, offset: int, *, final: bool
) -> dict[str, Any] | None:
    done = state.get("cohorts_done", {}).get(str(cohort))
    last, size, cumulative = done if done is not None else (-1, 0, 0)
    if last < 0:
        size = _open_sum(state, cohort, 0)[0]
    if not size:
        return None  # every user of the cohort moved to an earlier one (while it was open)
    for d in range(last + 1, offset + 1):
        cumulative += _open_sum(state, cohort, d)[1]
    counters = _open_sum(state, cohort, offset)
    return cohort_row(cohort, offset, size, counters, cumulative, final=final)


def publish_cohorts(
    state: dict[str, Any], spec: CohortsSpec, ready: Ready, touched: set[str]
) -> list[dict[str, Any]]:
    """Final rows of every (cohort, offset) whose day every partition has passed, in offset
    order (rows of days without a share of the cohort included), then live rows of the
    other ``touched`` ones."""
    out: list[dict[str, Any]] = []
    done = state.setdefault("cohorts_done", {})
    opened = state.setdefault("cohorts_open", {})
    cohorts = {int(c) for c in done} | {
        int(key.partition("|")[0]) for shares in opened.values() for key in shares
    }
    for cohort in sorted(cohorts):
        last = done.get(str(cohort), [-1, 0, 0])[0]
        offset = last + 1
        while offset <= spec.max_day_offset and ready((cohort + offset + 1) * DAY_MS):
            row = _cohort_row(state, cohort, offset, final=True)
            key = f"{cohort}|{offset}"
            if row is None:  # nobody in it: forget the cohort
                done.pop(str(cohort), None)
                for shares in opened.values():
                    for old in [k for k in shares if k.startswith(f"{cohort}|")]:
                        del shares[old]
                break
            out.append(row)
            done[str(cohort)] = [offset, row["cohort_size"], row["cumulative_revenue_cents"]]
            for shares in opened.values():
                shares.pop(key, None)
            touched.discard(key)
            offset += 1
        if offset > spec.max_day_offset:
            done.pop(str(cohort), None)
    for key in sorted(touched, key=lambda k: tuple(int(x) for x in k.split("|"))):
        cohort, offset = (int(x) for x in key.split("|"))
        row = _cohort_row(state, cohort, offset, final=False)
        if row is not None:
            out.append(row)
    return out
