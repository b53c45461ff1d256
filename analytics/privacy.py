"""SPEC 10: ``ip_address`` never leaves the tracker in the clear (``privacy.ip``).

Modes: ``anonymize`` (default) keeps an IPv4 address's first 3 bytes and an IPv6 address's
first 6, the rest zeroed; ``drop`` removes the address (an enriched event then carries
``ip_address: null``, as one that had none); ``keep`` passes it on unchanged.

Edge cases (docs/contract-choices.md, Privacy):

- An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is an IPv4 client seen through an IPv6
  socket: its IPv4 address is anonymised by the IPv4 rule and it stays mapped
  (``::ffff:a.b.c.0``, in canonical form as validation writes addresses: ``::ffff:102:300``
  for ``::ffff:1.2.3.4`` on Python 3.11). The plain IPv6 rule would keep only zeros.
- A 6to4 address (``2002:AABB:CCDD::/16``) carries a whole IPv4 address in bytes 2-5, which
  the 6-byte rule would keep: its last embedded byte is zeroed too (first 5 bytes kept).
- An IPv6 zone (``fe80::1%eth0``) is dropped with the rest.
- Text that is not an address never reaches enrichment (SPEC 1 validation rejects it). Where
  raw payloads leave the tracker (dead letters, ``faust -A app tail``), :func:`scrub_text`
  anonymises every address-like token in the text, valid or not (see there).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, get_args

__all__ = ["IP_MODES", "IpMode", "anonymize_ip", "protect_ip", "scrub_text"]

IpMode = Literal["anonymize", "drop", "keep"]
IP_MODES: tuple[str, ...] = get_args(IpMode)

REMOVED = "[ip removed]"
"""What ``scrub_text`` writes for an address in ``drop`` mode."""

_6TO4 = ipaddress.IPv6Network("2002::/16")
_TOKEN = re.compile(r"[0-9A-Fa-f]*(?:[:.][0-9A-Fa-f]*)+")
_V4_SHAPE = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.)\d{1,3}(?!\d)", re.ASCII)


def anonymize_ip(canonical: str) -> str:
    """The anonymised text of a valid address in canonical form (as SPEC 1 validation
    stores it). Canonical IPv4 text is handled by string work alone: this runs per event."""
    if ":" not in canonical:
        return canonical[: canonical.rindex(".")] + ".0"
    address = ipaddress.IPv6Address(canonical)
    packed = address.packed
    if address.ipv4_mapped is not None:
        return str(ipaddress.IPv6Address(packed[:15] + b"\0"))
    keep = 5 if address in _6TO4 else 6
    return str(ipaddress.IPv6Address(packed[:keep] + bytes(16 - keep)))


def protect_ip(canonical: str | None, mode: IpMode) -> str | None:
    """What an event carries instead of its (canonical, valid) ``ip_address``."""
    if canonical is None or mode == "keep":
        return canonical
    if mode == "drop":
        return None
    return anonymize_ip(canonical)


def _scrub_token(match: re.Match[str], mode: IpMode) -> str:
    token = match.group()
    if token.count(":") >= 2:
        text = token.strip(".")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if token.count(":") >= 4:  # IPv6-like but invalid; a time of day has 2 colons
                return REMOVED if mode == "drop" else ":".join(token.split(":")[:3]) + "::"
        else:
            replaced = REMOVED if mode == "drop" else anonymize_ip(str(address))
            start = token.index(text)
            return token[:start] + replaced + token[start + len(text) :]
    if mode == "drop":
        return _V4_SHAPE.sub(REMOVED, token)
    return _V4_SHAPE.sub(r"\g<1>0", token)


def scrub_text(text: str, mode: IpMode) -> str:
    """``text`` with every address-like token anonymised (``anonymize``) or replaced by
    ``[ip removed]`` (``drop``); unchanged with ``keep``.

    For raw payloads that may not be valid events: a token of hex digits, dots and colons is
    an address when it is a valid IPv4/IPv6 address; four dot-separated groups of 1-3 digits
    are one too, also inside a token (``1.2.3.04``, ``1.2.3.4:8080``: the last group becomes
    0); an invalid IPv6-like token with 4 or more colons keeps its first three groups, then
    ``::``. Times of day (two colons) and version numbers (``120.0.6099.129``) stay."""
    if mode == "keep":
        return text
    return _TOKEN.sub(lambda match: _scrub_token(match, mode), text)
