"""Custom KPIs (SPEC 10): counts of events matching a filter per KPI window, and ratios of two
such counts, declared in the YAML file's ``custom_kpis`` list.

A partition counts, per window, the events each count filter matches, as one more counter of
its KPI partial (``custom.<name>``, analytics.partition); counted once per event like the
window's other event counters, so the combiner's sum is exact across partitions, crashes and
duplicates. The combiner derives every KPI record's ``custom`` object from the summed counters
(``figures``): a count as the number, a ratio as ``100 * numerator / denominator`` (0 when the
denominator is 0, as SPEC 4's ratios).

A filter holds when every field it names holds: ``action`` equal, ``page`` starting with
``page_prefix``, and for each ``metadata`` key the event's value equal to the given one (as
JSON values: the string ``"1"`` is not the number ``1``). A filter naming nothing matches every
event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analytics.config_entries import entry_name, known_keys
from analytics.validation import ACTION_PATTERN

COUNTER_PREFIX = "custom."
"""Custom counters in a KPI partial are named ``custom.<name>``."""

MAX_CUSTOM_KPIS = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a count counts (module docstring)."""

    action: str | None = None
    page_prefix: str | None = None
    metadata: tuple[tuple[str, Any], ...] = ()

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.action is not None and event.get("action") != self.action:
            return False
        if self.page_prefix is not None and not str(event.get("page") or "").startswith(
            self.page_prefix
        ):
            return False
        if self.metadata:
            metadata = event.get("metadata") or {}
            for key, value in self.metadata:
                found = metadata.get(key, _ABSENT)
                # JSON equality: True is not 1, 1 equals 1.0
                if (
                    found is _ABSENT
                    or (type(found) is bool) != (type(value) is bool)
                    or found != value
                ):
                    return False
        return True


_ABSENT = object()


@dataclass(frozen=True, slots=True)
class CustomKpis:
    """The configured custom KPIs: counts (in order) and ratios of two counts."""

    counts: tuple[tuple[str, EventFilter], ...] = ()
    ratios: tuple[tuple[str, str, str], ...] = ()  # (name, numerator, denominator)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.counts) + tuple(r[0] for r in self.ratios)

    def kinds(self) -> dict[str, str]:
        """Each KPI's name and kind (``count`` or ``ratio_percent``), in record order: how
        the dashboard shows them."""
        kinds = dict.fromkeys((name for name, _ in self.counts), "count")
        kinds.update((name, "ratio_percent") for name, _, _ in self.ratios)
        return kinds

    def matching(self, event: Mapping[str, Any]) -> list[str]:
        """The counters (``custom.<name>``) an event adds one to."""
        return [COUNTER_PREFIX + name for name, f in self.counts if f.matches(event)]

    def figures(self, sums: Mapping[str, int]) -> dict[str, int | float]:
        """A KPI record's ``custom`` object from a window's summed counters."""
        out: dict[str, int | float] = {
            name: sums.get(COUNTER_PREFIX + name, 0) for name, _ in self.counts
        }
        for name, numerator, denominator in self.ratios:
            below = out[denominator]
            out[name] = 100 * out[numerator] / below if below else 0.0
        return out


NO_CUSTOM_KPIS = CustomKpis()


def is_counter(name: str) -> bool:
    """Whether a KPI partial's counter is a custom one."""
    return (
        name.startswith(COUNTER_PREFIX) and _NAME.fullmatch(name[len(COUNTER_PREFIX) :]) is not None
    )


# --------------------------------------------------------------------------- YAML


def parse_custom_kpis(data: Any, where: str = "custom_kpis") -> CustomKpis:
    """The YAML's ``custom_kpis`` list (None: none). Errors name the entry and field:
    ``custom_kpis[2].ratio_percent.denominator: ...``."""
    if data is None:
        return NO_CUSTOM_KPIS
    if isinstance(data, CustomKpis):
        return data
    if not isinstance(data, list | tuple):
        raise ValueError(f"{where}: must be a list of custom KPIs, got {type(data).__name__}")
    if len(data) > MAX_CUSTOM_KPIS:
        raise ValueError(f"{where}: at most {MAX_CUSTOM_KPIS} custom KPIs, got {len(data)}")
    counts: list[tuple[str, EventFilter]] = []
    ratios: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        at = f"{where}[{i}]"
        item = known_keys(item, ("name", "count", "ratio_percent"), at)
        name = entry_name(item, _NAME, "1-63 of a-z 0-9 _ starting with a letter or digit", at)
        if name in seen:
            raise ValueError(f"{at}.name: {name!r} names another custom KPI already")
        seen.add(name)
        if ("count" in item) == ("ratio_percent" in item):
            raise ValueError(f"{at}: needs exactly one of count and ratio_percent")
        if "count" in item:
            counts.append((name, _parse_filter(item["count"], f"{at}.count")))
        else:
            ratios.append((name, *_parse_ratio(item["ratio_percent"], f"{at}.ratio_percent")))
    count_names = {name for name, _ in counts}
    for name, numerator, denominator in ratios:
        for field, value in (("numerator", numerator), ("denominator", denominator)):
            if value not in count_names:
                at = f"{where}[{[entry.get('name') for entry in data].index(name)}]"
                raise ValueError(
                    f"{at}.ratio_percent.{field}: {value!r} is not a count KPI "
                    f"(counts: {', '.join(sorted(count_names)) or 'none'})"
                )
    return CustomKpis(tuple(counts), tuple(ratios))


def _parse_filter(value: Any, where: str) -> EventFilter:
    if value is None:
        return EventFilter()
    value = known_keys(value, ("action", "page_prefix", "metadata"), where)
    action = value.get("action")
    if action is not None and (not isinstance(action, str) or not ACTION_PATTERN.fullmatch(action)):
        raise ValueError(f"{where}.action: must match [a-z0-9_.:-]{{1,64}}, got {action!r}")
    prefix = value.get("page_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise ValueError(f"{where}.page_prefix: must be a non-empty string, got {prefix!r}")
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{where}.metadata: must be a mapping of key: value")
    pairs = []
    for key, wanted in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}.metadata: keys must be non-empty strings, got {key!r}")
        if wanted is not None and not isinstance(wanted, str | int | float | bool):
            raise ValueError(
                f"{where}.metadata.{key}: must be a string, number, boolean or null, "
                f"got {type(wanted).__name__}"
            )
        pairs.append((key, wanted))
    return EventFilter(action, prefix, tuple(pairs))


def _parse_ratio(value: Any, where: str) -> tuple[str, str]:
    value = known_keys(value, ("numerator", "denominator"), where)
    names = []
    for field in ("numerator", "denominator"):
        named = value.get(field)
        if not isinstance(named, str):
            raise ValueError(f"{where}.{field}: required, the name of a count KPI")
        names.append(named)
    return names[0], names[1]
