"""SPEC section 2: add business fields to a normalised event (output of ``validate_event``).

Device derivation, used only when the event did not give ``device`` (first rule that matches):

1. ``bot``: ua-parser's device family is ``Spider`` (its curated crawler list: Googlebot,
   bingbot, FacebookBot, Slackbot, ...), or the agent is a headless browser or an HTTP
   tool/library (HeadlessChrome, PhantomJS, curl, Wget, python-requests, Go-http-client, ...),
   or it contains "crawler", "spider" or "robot".
2. ``tablet``: iPad, Kindle/Silk, PlayBook, a "Tablet" token (but not Windows' "Tablet PC"),
   a device that ua-parser files under a tablet brand, or Android without "Mobile" (Google's
   documented convention for Android tablets).
3. ``mobile``: "Mobi", iPhone, iPod, Android, Windows Phone, BlackBerry, Opera Mini, or a
   mobile OS family (iOS, Android, ...).
4. ``desktop``: OS family Windows, Mac OS X, Chrome OS, Linux or a Linux/BSD distribution.
5. ``other``: anything else (TV sets, consoles, unknown strings).

With no user agent at all, device is ``unknown``; browser and os are ``unknown`` too. When
ua-parser cannot name the browser or OS (its family ``Other``), they are ``other``. Note that
iPadOS Safari sends a macOS user agent by default, so those iPads count as desktop.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import ua_parser

from analytics.money import currency
from analytics.privacy import IpMode, protect_ip
from analytics.timeutil import DAY_MS, parse_ts
from analytics.validation import amount_to_cents

__all__ = ["DEFAULT_RULES", "EnrichmentRules", "enrich", "parse_user_agent"]

DEFAULT_CONVERSION_ACTIONS = frozenset(
    {"purchase", "signup", "subscribe", "download", "submit_form"}
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_MS_PER_HOUR = 3_600_000
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

_BOT = re.compile(
    r"crawler|spider|robot|headless|phantomjs|curl/|wget/|python-|go-http-client|libwww-perl"
    r"|java/|scrapy|httpclient",
    re.IGNORECASE,
)
_TABLET = re.compile(r"iPad|Tablet(?! PC)|Kindle|Silk/|PlayBook")
_MOBILE = re.compile(r"Mobi|iPhone|iPod|Android|Windows Phone|BlackBerry|BB10|Opera Mini")
_MOBILE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "Symbian OS", "KaiOS", "Firefox OS"}
)
_DESKTOP_OS = frozenset(
    {
        "Mac OS X",
        "Chrome OS",
        "Linux",
        "Ubuntu",
        "Kubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "CentOS",
        "SUSE",
        "openSUSE",
        "Mint",
        "Arch Linux",
        "Gentoo",
        "Slackware",
        "Mandriva",
        "Mageia",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)


@dataclass(frozen=True, slots=True)
class EnrichmentRules:
    """Configurable parts of SPEC section 2 (defaults are the SPEC's)."""

    conversion_actions: frozenset[str] = DEFAULT_CONVERSION_ACTIONS
    high_value_revenue_cents: int = 10_000
    high_value_duration_ms: int = 30_000
    ip_mode: IpMode = "anonymize"
    """SPEC 10, ``privacy.ip``: what the enriched event carries as ``ip_address``."""


DEFAULT_RULES = EnrichmentRules()


def _family(family: str | None) -> str:
    return "other" if family is None or family == "Other" else family


def _device_of(ua: str, device_family: str, brand: str, os_family: str) -> str:
    """Apply the device rule of the module docstring."""
    if device_family == "Spider" or _BOT.search(ua):
        return "bot"
    if (
        _TABLET.search(ua)
        or "Tablet" in brand
        or device_family.startswith("Kindle")
        or ("Android" in ua and "Mobile" not in ua)
    ):
        return "tablet"
    if _MOBILE.search(ua) or os_family in _MOBILE_OS:
        return "mobile"
    if os_family.startswith("Windows") or os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


@functools.lru_cache(maxsize=10_000)
def parse_user_agent(ua: str) -> tuple[str, str, str]:
    """``(device, browser, os)`` of a non-empty user agent; cached, as parsing is slow."""
    result = ua_parser.parse(ua)
    browser = _family(result.user_agent.family if result.user_agent else None)
    os = _family(result.os.family if result.os else None)
    device_family = result.device.family if result.device else "Other"
    brand = (result.device.brand if result.device else None) or ""
    return _device_of(ua, device_family, brand, os), browser, os


def enrich(
    event: dict[str, Any], rules: EnrichmentRules = DEFAULT_RULES, ts_ms: int | None = None
) -> dict[str, Any]:
    """Return a new dict: the normalised ``event`` plus the SPEC section 2 fields.
    ``ts_ms`` is the event's time when the caller has it already (else it is parsed).
    ``ip_address`` is anonymised, dropped (null) or kept by ``rules.ip_mode`` (SPEC 10)."""
    action = event["action"]
    cents = 0
    if action == "purchase":
        amount = event["metadata"].get("amount")
        if amount is not None:
            cents = amount_to_cents(amount)
    if ts_ms is None:
        ts_ms = parse_ts(event["timestamp"])
    ua = event.get("user_agent")
    if ua:
        derived, browser, os = parse_user_agent(ua)
    else:
        derived, browser, os = "unknown", "unknown", "unknown"
    device = event.get("device")
    return {
        **event,
        "ip_address": protect_ip(event["ip_address"], rules.ip_mode),
        "is_conversion": action in rules.conversion_actions,
        "revenue": currency(cents),
        "revenue_cents": cents,
        "is_high_value": cents >= rules.high_value_revenue_cents
        or event["duration"] > rules.high_value_duration_ms,
        "hour_of_day": ts_ms // _MS_PER_HOUR % 24,
        "day_of_week": DAYS[(ts_ms // DAY_MS + _EPOCH_WEEKDAY) % 7],
        "device": device if device else derived,
        "browser": browser,
        "os": os,
    }
