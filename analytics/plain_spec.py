"""Checks for the feature specs parsed from plain YAML data (analytics.cohorts,
analytics.experiments): errors start with the dotted place of the bad value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def checked_keys(data: Mapping[str, Any], known: Iterable[str], where: str) -> str:
    """Refuse a key not in ``known``; the prefix for error messages (``where.``, or nothing
    when ``where`` is empty: app/settings.py names the section itself)."""
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key")
    return prefix


def whole_number(prefix: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` when it is an int (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{prefix}{key}: must be a whole number")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{prefix}{key}: must be {bounds}")
    return value
