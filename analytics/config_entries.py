"""Checks shared by the YAML lists that become specs (``funnels``, ``custom_kpis``): each
entry a mapping of known keys with a name, errors naming the entry and field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def known_keys(item: Any, keys: tuple[str, ...], where: str) -> Mapping[str, Any]:
    """``item`` as a mapping holding only ``keys``, or a ValueError naming the first other."""
    listed = ", ".join(keys)
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be a mapping of {listed}")
    if unknown := sorted(set(item) - set(keys), key=str):
        raise ValueError(f"{where}.{unknown[0]}: unknown key ({listed})")
    return item


def entry_name(item: Mapping[str, Any], pattern: re.Pattern[str], allowed: str, where: str) -> str:
    """The entry's ``name``, matching ``pattern`` (``allowed`` says what it takes)."""
    name = item.get("name")
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise ValueError(f"{where}.name: required, {allowed}, got {name!r}")
    return name
