"""SPEC section 9: A/B tests, per user, per partition, and combined into ``experiment-stats`` rows.

Four layers (docs/contract-choices.md, "A/B tests"), plain data only:

1. ``ExperimentsSpec``: the settings (``experiments:`` in the YAML file).
2. ``UserExperiments``: what one user must remember. ``add`` takes one accepted event in
   arrival order, which is ts order only within ``grace``, and returns a ``Delta`` (the
   user's old and new ``Share`` of the experiments it touched), or None when nothing changed.
3. ``ExperimentPartial``: a partition's counters per (experiment, variant); ``apply(delta)``
   subtracts the old shares and adds the new ones.
4. ``combine(partials)`` and ``rows(spec, combined)``: the published rows.

Exact under disorder within grace. Per user and experiment the state keeps the first exposure
in (ts, event_id) order (variant, ts, event_id), whether the user converted at or after it,
their purchase revenue at or after it and whether they saw another variant. An exposure that
arrives late but within grace can still move the exposure earlier (and change the variant), or
be the user's first of a new experiment; to stay exact the user keeps, besides, the greatest ts
of their conversions and their purchases (ts, cents), both only while not older than the
horizon ``forget`` was last given. That is the bound: every event still to come has
ts >= horizon, so a moved or new exposure has ts >= horizon and needs nothing older. The
horizon is the lowest ts the partition still accepts (its watermark, or the start of the KPI
window holding it while "late" means "in a closed window"). So the state is, per user, one
record per experiment seen (variant, ts, flags, revenue; the event_id only while a tie can
still come) plus what the user bought or converted within the last grace period.

Choices SPEC leaves open:

* An exposure needs ``metadata.experiment`` and ``metadata.variant`` both non-empty strings
  (``exposure_of``); otherwise the event is no exposure (it still converts and buys).
* "Exposed to another variant" counts however the other exposure is ordered: the user's
  first exposure is the earliest, so every other one is later. A user counts once in
  ``variant_conflicts``, in the row of each variant of the experiment (the figure is the
  experiment's).
* A variant that only ever appears in exposures after a user's first (every user who saw it
  saw another variant first) is published with 0 users: the variants of an experiment are the
  values of ``metadata.variant`` of its exposures. So a variant does not vanish from the rows
  when a late exposure moves its last user to another variant.
* ``conversion_rate_percent`` is 100 * converted_users / users; money is shown like the KPI
  rows (analytics.kpis): 2 decimals, the exact cents beside it (``revenue_cents``).
* The control row and every row of an experiment without a ``control`` variant (the name is
  ``experiments.control_variant``) carry ``p_value`` and ``probability_to_beat_control``
  null and ``significant`` false: there is nothing to compare with.
* ``p_value`` is 1 when either variant has no users (the z statistic is undefined), as SPEC
  says for a pooled rate of 0 or 1.
* ``probability_to_beat_control`` is exact: the closed-form sum (Evan Miller's formula,
  ``probability_beats``), taken over the smallest of the four Beta parameters, each term from
  the one before, stopping once the terms left cannot add 1e-12. The worst case, 1e6 users in
  both variants at a 50 % conversion rate (500,000 terms), took 0.15 s; 1e6 users at 5 %
  took 0.015 s (``.venv/bin/python -c "import time; from analytics.experiments import
  probability_beats as p; t=time.perf_counter(); p(500_001, 500_001, 500_101, 499_901);
  print(time.perf_counter()-t)"``, then ``p(50_001, 950_001, 50_501, 949_501)``).
* Rows have no ``is_final``: SPEC 9 figures are "over all events so far" and never close.
* Publishing "on change, at most once a second per experiment": ``changed_experiments``
  names the experiments whose counters differ between two combined partials; the combiner
  publishes those whose last publication is ``spec.publish_interval_ms`` old.

Bytes per user (``.venv/bin/python -m analytics.experiments``, names of 8 characters): a user
never exposed and with nothing bought or converted within the grace has an empty state
(``encode() == []``, 2 bytes; the partition need not keep it at all); with one experiment,
56 bytes encoded and 436 decoded (tracemalloc over 10,000 users, names interned); with two,
101 and 568.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from sys import intern
from typing import Any, NamedTuple

from analytics.counter_table import CounterTable
from analytics.kpis import ratio
from analytics.money import currency, currency_per
from analytics.plain_spec import checked_keys, whole_number

_CONVERTED = 1
_CONFLICT = 2
_STANDARD_NORMAL = NormalDist()


# --------------------------------------------------------------------------- 1. spec


@dataclass(frozen=True, slots=True)
class ExperimentsSpec:
    """How experiments are compared: SPEC 9's ``control``, 100 users, p < 0.05, once a second."""

    control_variant: str = "control"
    min_users: int = 100
    alpha: float = 0.05
    publish_interval_ms: int = 1_000

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "experiments") -> ExperimentsSpec:
        """The spec from plain data (the YAML section); errors start with ``where`` and
        the key (app/settings.py gives no ``where``: it names the section itself)."""
        prefix = checked_keys(data, cls.__dataclass_fields__, where)
        spec = cls(**data)
        if not isinstance(spec.control_variant, str) or not spec.control_variant:
            raise ValueError(f"{prefix}control_variant: must be a non-empty string")
        whole_number(prefix, "min_users", spec.min_users, 0)
        whole_number(prefix, "publish_interval_ms", spec.publish_interval_ms, 1)
        alpha = spec.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise ValueError(f"{prefix}alpha: must be a number between 0 and 1 (exclusive)")
        return spec


def exposure_of(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """(experiment, variant) when the event is an exposure (SPEC 9), else None."""
    experiment = metadata.get("experiment")
    variant = metadata.get("variant")
    if isinstance(experiment, str) and experiment and isinstance(variant, str) and variant:
        return experiment, variant
    return None


# --------------------------------------------------------------------------- 2. per user


class Share(NamedTuple):
    """One user's contribution to one (experiment, variant) counter of the partial.

    ``users`` is 1 for the user's variant; 0 in a share that only makes a variant known."""

    experiment: str
    variant: str
    users: int
    converted: int
    revenue_cents: int
    conflicts: int


class Delta(NamedTuple):
    """What one event changed: subtract ``old``, add ``new`` (either may be empty)."""

    old: tuple[Share, ...]
    new: tuple[Share, ...]


class _Exposure:
    """The user's first exposure to one experiment, and what counts after it."""

    __slots__ = ("event_id", "flags", "revenue_cents", "ts", "variant")

    def __init__(self, variant: str, ts: int, event_id: str, flags: int, revenue: int) -> None:
        self.variant = variant
        self.ts = ts
        self.event_id = event_id  # "" once older than the horizon: no tie can come any more
        self.flags = flags  # _CONVERTED | _CONFLICT
        self.revenue_cents = revenue

    def share(self, experiment: str) -> Share:
        return Share(
            experiment,
            self.variant,
            1,
            self.flags & _CONVERTED,
            self.revenue_cents,
            (self.flags & _CONFLICT) >> 1,
        )


class UserExperiments:
    """Everything SPEC 9 needs to remember of one user (see the module docstring).

    Add each accepted event once (the partition's replay check guards that); events may come
    out of ts order by up to the grace. Call ``forget(horizon_ms)`` with a time before which
    no event will be added any more (the partition's lowest still acceptable ts)."""

    __slots__ = ("exposures", "last_conversion", "purchases")

    def __init__(self) -> None:
        self.last_conversion: int | None = None  # greatest conversion ts, None once < horizon
        self.purchases: list[int] = []  # ts, cents, ts, cents...: revenue since the horizon
        self.exposures: dict[str, _Exposure] = {}

    def is_empty(self) -> bool:
        """True when there is nothing to store (a user never exposed, with no recent event)."""
        return not self.exposures and not self.purchases and self.last_conversion is None

    def _revenue_since(self, start: int, end: int | None = None) -> int:
        purchases = self.purchases
        return sum(
            purchases[i + 1]
            for i in range(0, len(purchases), 2)
            if purchases[i] >= start and (end is None or purchases[i] < end)
        )

    def add(
        self,
        ts_ms: int,
        event_id: str,
        *,
        conversion: bool,
        revenue_cents: int,
        exposure: tuple[str, str] | None,
    ) -> Delta | None:
        """Take one event (``exposure`` from ``exposure_of(metadata)``); what changed."""
        exposures = self.exposures
        old: dict[str, Share] = {}
        if conversion and (self.last_conversion is None or ts_ms > self.last_conversion):
            self.last_conversion = ts_ms
            for name, record in exposures.items():
                if not record.flags & _CONVERTED and ts_ms >= record.ts:
                    old.setdefault(name, record.share(name))
                    record.flags |= _CONVERTED
        if revenue_cents:
            self.purchases += (ts_ms, revenue_cents)
            for name, record in exposures.items():
                if ts_ms >= record.ts:
                    old.setdefault(name, record.share(name))
                    record.revenue_cents += revenue_cents
        seen = () if exposure is None else self._expose(*exposure, ts_ms, event_id, old)
        if not old and not seen:
            return None
        new = tuple(exposures[name].share(name) for name in old)
        return Delta(tuple(share for share in old.values() if share.users), new + seen)

    def _expose(
        self, name: str, variant: str, ts_ms: int, event_id: str, old: dict[str, Share]
    ) -> tuple[Share, ...]:
        """Take an exposure: the first one, an earlier one, or a later one (a conflict when
        its variant differs). Records the touched experiment's old share in ``old``; returns
        the share that makes a later exposure's variant known, if any."""
        record = self.exposures.get(name)
        last_conversion = self.last_conversion
        if record is None:
            converted = last_conversion is not None and last_conversion >= ts_ms
            self.exposures[intern(name)] = _Exposure(
                intern(variant),
                ts_ms,
                event_id,
                _CONVERTED if converted else 0,
                self._revenue_since(ts_ms),
            )
            old.setdefault(name, Share(name, variant, 0, 0, 0, 0))
        elif (ts_ms, event_id) < (record.ts, record.event_id):
            old.setdefault(name, record.share(name))
            if variant != record.variant:
                record.flags |= _CONFLICT
                record.variant = intern(variant)
            record.revenue_cents += self._revenue_since(ts_ms, record.ts)
            if last_conversion is not None and last_conversion >= ts_ms:
                record.flags |= _CONVERTED
            record.ts, record.event_id = ts_ms, event_id
        elif variant != record.variant:
            if not record.flags & _CONFLICT:
                old.setdefault(name, record.share(name))
                record.flags |= _CONFLICT
            return (Share(name, variant, 0, 0, 0, 0),)
        return ()

    def forget(self, horizon_ms: int) -> None:
        """Drop what no event with ts >= ``horizon_ms`` can need any more."""
        if self.last_conversion is not None and self.last_conversion < horizon_ms:
            self.last_conversion = None
        purchases = self.purchases
        if any(purchases[i] < horizon_ms for i in range(0, len(purchases), 2)):
            self.purchases = [
                value
                for i in range(0, len(purchases), 2)
                if purchases[i] >= horizon_ms
                for value in purchases[i : i + 2]
            ]
        for record in self.exposures.values():
            if record.event_id and record.ts < horizon_ms:
                record.event_id = ""

    def encode(self) -> list[Any]:
        """Compact plain data: ``[]`` when empty, else [last_conversion, purchases, exposures]
        with exposures flat: name, variant, ts, event_id, flags, revenue, name, ..."""
        if self.is_empty():
            return []
        flat: list[Any] = []
        for name, record in self.exposures.items():
            flat += (name, record.variant, record.ts, record.event_id)
            flat += (record.flags, record.revenue_cents)
        return [self.last_conversion, self.purchases, flat]

    @classmethod
    def decode(cls, data: list[Any]) -> UserExperiments:
        user = cls()
        if data:
            user.last_conversion, purchases, flat = data
            user.purchases = list(purchases)
            for i in range(0, len(flat), 6):
                variant, ts, event_id, flags, revenue = flat[i + 1 : i + 6]
                user.exposures[intern(flat[i])] = _Exposure(
                    intern(variant), ts, event_id, flags, revenue
                )
        return user


# --------------------------------------------------------------------------- 3. per partition


class ExperimentPartial(CounterTable):
    """Counters per (experiment, variant): [users, converted_users, revenue_cents,
    conflicted_users]. Keys stay at zero (a variant seen stays a variant)."""

    WIDTH = 4
    KEEP_ZEROS = True
    __slots__ = ()

    def apply(self, delta: Delta) -> None:
        for share in delta.old:
            self.add((share.experiment, share.variant), share[2:], -1)
        for share in delta.new:
            self.add((share.experiment, share.variant), share[2:])


# --------------------------------------------------------------------------- 4. combine, rows


def combine(partials: Iterable[ExperimentPartial]) -> ExperimentPartial:
    """The sum of the partitions' partials (their users are disjoint)."""
    return ExperimentPartial.summed(partials)


def changed_experiments(before: ExperimentPartial, after: ExperimentPartial) -> set[str]:
    """Experiments whose counters differ between two combined partials."""
    keys = before.counters.keys() | after.counters.keys()
    return {key[0] for key in keys if before.counters.get(key) != after.counters.get(key)}


def p_value(users_a: int, converted_a: int, users_b: int, converted_b: int) -> float:
    """Two-sided two-proportion z-test with pooled variance; 1 when the pooled rate is 0 or 1
    or a group is empty."""
    users = users_a + users_b
    converted = converted_a + converted_b
    if not users_a or not users_b or converted in (0, users):
        return 1.0
    pooled = converted / users
    error = math.sqrt(pooled * (1 - pooled) * (1 / users_a + 1 / users_b))
    z = (converted_a / users_a - converted_b / users_b) / error
    return min(1.0, 2 * _STANDARD_NORMAL.cdf(-abs(z)))


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


_NEGLIGIBLE = 1e-18  # relative size of a term after which the rest cannot matter


def _beats_sum(a: int, b: int, c: int, d: int) -> float:
    """P(X > Y), X ~ Beta(a, b), Y ~ Beta(c, d), as the sum over i < a of
    B(c + i, b + d) / ((b + i) B(1 + i, b) B(c, d)); each term from the one before."""
    log_term = _lbeta(c, b + d) - math.log(b) - _lbeta(1, b) - _lbeta(c, d)
    total = 0.0
    for i in range(a):
        if log_term > -745:  # below, exp() is 0
            term = math.exp(log_term)
            total += term
            shrinking = (c + i) * (b + i) < (i + 1) * (c + b + d + i)
            if shrinking and term < _NEGLIGIBLE * total:
                break  # the terms only shrink from here: the rest add < 1e-12
        log_term += math.log((c + i) * (b + i) / ((i + 1) * (c + b + d + i)))
    return total


def probability_beats(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X > Y) for X ~ Beta(a1, b1), Y ~ Beta(a2, b2), whole parameters >= 1, exactly.

    The closed-form sum has a1 terms; by P(X > Y) = 1 - P(Y > X) = P(1 - Y > 1 - X) it is
    taken over the smallest of the four parameters instead."""
    if (a1, b1) == (a2, b2):
        return 0.5
    smallest = min(a1, b1, a2, b2)
    if smallest == a1:
        value = _beats_sum(a1, b1, a2, b2)
    elif smallest == a2:
        value = 1 - _beats_sum(a2, b2, a1, b1)
    elif smallest == b2:
        value = _beats_sum(b2, a2, b1, a1)
    else:
        value = 1 - _beats_sum(b1, a1, b2, a2)
    return min(1.0, max(0.0, value))


def _figures(experiment: str, variant: str, counters: list[int], conflicts: int) -> dict[str, Any]:
    users, converted, cents, _ = counters
    return {
        "experiment": experiment,
        "variant": variant,
        "users": users,
        "converted_users": converted,
        "conversion_rate_percent": ratio(100 * converted, users),
        "revenue": currency(cents),
        "revenue_cents": cents,
        "revenue_per_user": currency_per(cents, users),
        "variant_conflicts": conflicts,
    }


def _comparison(
    spec: ExperimentsSpec, variant: list[int], control: list[int] | None
) -> dict[str, Any]:
    if control is None:
        return {"p_value": None, "probability_to_beat_control": None, "significant": False}
    users, converted = variant[0], variant[1]
    users_c, converted_c = control[0], control[1]
    p = p_value(users, converted, users_c, converted_c)
    return {
        "p_value": p,
        "probability_to_beat_control": probability_beats(
            1 + converted, 1 + users - converted, 1 + converted_c, 1 + users_c - converted_c
        ),
        "significant": p < spec.alpha and min(users, users_c) >= spec.min_users,
    }


def rows(
    spec: ExperimentsSpec, combined: ExperimentPartial, experiments: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One row per (experiment, variant), of every experiment or of ``experiments`` only;
    per experiment the control first, then the variants by name."""
    by_experiment: dict[str, dict[str, list[int]]] = {}
    for (experiment, variant), counters in combined.counters.items():
        by_experiment.setdefault(experiment, {})[variant] = counters
    wanted = sorted(by_experiment) if experiments is None else sorted(set(experiments))
    out: list[dict[str, Any]] = []
    for experiment in wanted:
        variants = by_experiment.get(experiment, {})
        conflicts = sum(counters[3] for counters in variants.values())
        control = variants.get(spec.control_variant)
        for variant in sorted(variants, key=lambda v: (v != spec.control_variant, v)):
            row = _figures(experiment, variant, variants[variant], conflicts)
            is_control = variant == spec.control_variant
            row.update(_comparison(spec, variants[variant], None if is_control else control))
            out.append(row)
    return out


def _measure() -> None:
    """Bytes per user of the state, encoded (stored) and decoded (cached in memory)."""
    import tracemalloc

    import orjson

    def user_with(experiments: int) -> UserExperiments:
        user = UserExperiments()
        user.add(1_700_000_000_000, "e" * 36, conversion=True, revenue_cents=0, exposure=None)
        for n in range(experiments):
            exposure = (f"exp-{n:04d}", "control" if n % 2 else "variant")
            ts = 1_700_000_100_000 + n
            user.add(ts, "f" * 36, conversion=False, revenue_cents=4_999, exposure=exposure)
        user.forget(1_700_000_200_000)
        return user

    for experiments in (0, 1, 2):
        encoded = orjson.dumps(user_with(experiments).encode())
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        decoded = [UserExperiments.decode(orjson.loads(encoded)) for _ in range(10_000)]
        in_memory = (tracemalloc.get_traced_memory()[0] - before) / len(decoded)
        tracemalloc.stop()
        shown = f"{len(encoded)} bytes encoded {encoded!r}, {in_memory:.0f} bytes decoded"
        print(f"{experiments} experiments: {shown}")


if __name__ == "__main__":
    _measure()
