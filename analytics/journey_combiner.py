"""Global SPEC 7 funnel rows from the partitions' shares (analytics.journeys sends them).

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

State (inside the combiner's JSON state): ``funnels`` = ``{"name|day": {partition: share}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analytics.funnels import DAY_MS, DayPartial, FunnelSpec, day_row

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
    state.setdefault(key, {})[str(message["partition"])] = message["partial"]
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
        for share in state[key].values():
            total.merge(DayPartial.decode(share))
        row = day_row(spec, day, total, at if final else at - 1)
        row["durations_ms"] = total.encode()[1]
        rows.append(row)
        if final:
            del state[key]
    return rows
