"""SPEC section 2: every field enrichment adds, on normalised events."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.enrichment import DEFAULT_RULES, EnrichmentRules, enrich, parse_user_agent
from analytics.timeutil import parse_ts
from analytics.validation import validate_event

RECEIVED = parse_ts("2024-01-15T10:30:00Z")  # a Monday

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX_ANDROID_TABLET = "Mozilla/5.0 (Android 4.4; Tablet; rv:41.0) Gecko/41.0 Firefox/41.0"
KINDLE = (
    "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT Build/IML74K) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Silk/3.68 like Chrome/39.0 Safari/537.36"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
WINDOWS_TABLET_PC = "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Tablet PC 2.0)"
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Safari/605.1.15"
)
CHROMEBOOK = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
UBUNTU_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
WINDOWS_PHONE = (
    "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/52.0 Mobile Safari/537.36 Edge/15.15063"
)
CUBOT_PHONE = (  # a phone brand that ends in "bot"
    "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/90.0 Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
)


def event(received_at_ms: int = RECEIVED, **fields: Any) -> dict[str, Any]:
    """A normalised event, produced the way the pipeline produces it."""
    raw = {"user_id": "u1", "action": "click", **fields}
    return validate_event(raw, received_at_ms=received_at_ms, default_event_id="e1")


def test_keeps_the_normalised_event_and_adds_fields() -> None:
    source = event(user_agent=WINDOWS_CHROME, metadata={"amount": 5})
    before = dict(source)
    result = enrich(source, DEFAULT_RULES)
    assert source == before  # not mutated
    assert {k: v for k, v in result.items() if k in source and k != "device"} == {
        k: v for k, v in source.items() if k != "device"
    }
    assert set(result) - set(source) == {
        "is_conversion",
        "revenue",
        "revenue_cents",
        "is_high_value",
        "hour_of_day",
        "day_of_week",
        "browser",
        "os",
    }


def test_default_rules() -> None:
    assert EnrichmentRules() == DEFAULT_RULES
    assert DEFAULT_RULES.conversion_actions == {
        "purchase",
        "signup",
        "subscribe",
        "download",
        "submit_form",
    }
    assert DEFAULT_RULES.high_value_revenue_cents == 10_000
    assert DEFAULT_RULES.high_value_duration_ms == 30_000


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("purchase", True),
        ("signup", True),
        ("subscribe", True),
        ("download", True),
        ("submit_form", True),
        ("page_view", False),
        ("click", False),
        ("add_to_cart", False),
        ("purchases", False),
    ],
)
def test_is_conversion_default_list(action: str, expected: bool) -> None:
    page: dict[str, Any] = {"page": "/"} if action == "page_view" else {}
    assert enrich(event(action=action, **page), DEFAULT_RULES)["is_conversion"] is expected


def test_conversion_actions_are_configurable() -> None:
    rules = EnrichmentRules(conversion_actions=frozenset({"click"}))
    assert enrich(event(action="click"), rules)["is_conversion"] is True
    assert enrich(event(action="purchase"), rules)["is_conversion"] is False


@pytest.mark.parametrize(
    ("action", "metadata", "revenue", "cents"),
    [
        ("purchase", {"amount": 10.005}, 10.01, 1001),  # half-up on the decimal text
        ("purchase", {"amount": 10.004}, 10.0, 1000),
        ("purchase", {"amount": 19.99}, 19.99, 1999),
        ("purchase", {"amount": 7}, 7.0, 700),
        ("purchase", {"amount": 0.1 + 0.2}, 0.3, 30),
        ("purchase", {}, 0.0, 0),  # purchase without amount
        ("purchase", {"amount": None}, 0.0, 0),
        ("signup", {"amount": 50}, 0.0, 0),  # only purchases carry revenue
        ("click", {"amount": 500}, 0.0, 0),
    ],
)
def test_revenue(action: str, metadata: dict[str, Any], revenue: float, cents: int) -> None:
    result = enrich(event(action=action, metadata=metadata), DEFAULT_RULES)
    assert result["revenue"] == revenue
    assert type(result["revenue"]) is float
    assert result["revenue_cents"] == cents
    assert type(result["revenue_cents"]) is int


@pytest.mark.parametrize(
    ("amount", "duration", "expected"),
    [
        (99.99, 0, False),
        (99.994, 0, False),  # rounds to 99.99
        (99.995, 0, True),  # rounds to 100.00
        (100.00, 0, True),  # revenue >= 100.00
        (100, 0, True),
        (1000, 0, True),
        (None, 30_000, False),  # duration > 30,000 ms, not >=
        (None, 30_001, True),
        (None, 0, False),
        (99.99, 30_001, True),
    ],
)
def test_is_high_value(amount: float | None, duration: int, expected: bool) -> None:
    metadata = {} if amount is None else {"amount": amount}
    result = enrich(event(action="purchase", metadata=metadata, duration=duration), DEFAULT_RULES)
    assert result["is_high_value"] is expected


def test_high_value_thresholds_are_configurable() -> None:
    rules = EnrichmentRules(high_value_revenue_cents=500, high_value_duration_ms=10)
    assert enrich(event(action="purchase", metadata={"amount": 5}), rules)["is_high_value"]
    assert enrich(event(duration=11), rules)["is_high_value"]
    assert not enrich(event(duration=10), rules)["is_high_value"]


def test_non_purchase_amount_is_not_high_value() -> None:
    result = enrich(event(action="click", metadata={"amount": 1000}), DEFAULT_RULES)
    assert result["is_high_value"] is False


@pytest.mark.parametrize(
    ("timestamp", "hour", "day"),
    [
        ("2024-01-15T01:30:00+02:00", 23, "Sunday"),  # 2024-01-14T23:30Z
        ("2024-01-15T10:30:00Z", 10, "Monday"),
        ("2024-01-15T00:00:00Z", 0, "Monday"),
        ("2024-01-14T23:59:59.999Z", 23, "Sunday"),
        ("2024-01-16T12:00:00-12:30", 0, "Wednesday"),  # 2024-01-17T00:30Z
        ("2024-01-19T12:00:00", 12, "Friday"),  # no offset: UTC
        ("2024-01-20T12:00:00Z", 12, "Saturday"),
        ("2024-01-18T12:00:00Z", 12, "Thursday"),
        ("2024-01-16T12:00:00Z", 12, "Tuesday"),
        ("1970-01-01T00:00:00Z", 0, "Thursday"),
        ("1969-12-31T23:00:00Z", 23, "Wednesday"),  # before the epoch
    ],
)
def test_hour_and_day_are_utc(timestamp: str, hour: int, day: str) -> None:
    later = parse_ts("2030-01-01T00:00:00Z")  # so that no timestamp here is clamped
    result = enrich(event(timestamp=timestamp, received_at_ms=later), DEFAULT_RULES)
    assert not result["timestamp_clamped"]
    assert (result["hour_of_day"], result["day_of_week"]) == (hour, day)


@pytest.mark.parametrize(
    ("user_agent", "device", "browser", "os"),
    [
        (IPHONE, "mobile", "Mobile Safari", "iOS"),
        (IPAD, "tablet", "Mobile Safari", "iOS"),
        (ANDROID_PHONE, "mobile", "Chrome Mobile", "Android"),
        (ANDROID_TABLET, "tablet", "Chrome", "Android"),
        (FIREFOX_ANDROID_TABLET, "tablet", "Firefox Mobile", "Android"),
        (KINDLE, "tablet", "Amazon Silk", "Android"),
        (WINDOWS_CHROME, "desktop", "Chrome", "Windows"),
        (WINDOWS_TABLET_PC, "desktop", "IE", "Windows"),
        (MAC_SAFARI, "desktop", "Safari", "Mac OS X"),
        (CHROMEBOOK, "desktop", "Chrome", "Chrome OS"),
        (UBUNTU_FIREFOX, "desktop", "Firefox", "Ubuntu"),
        (WINDOWS_PHONE, "mobile", "Edge Mobile", "Windows Phone"),
        (CUBOT_PHONE, "mobile", "Chrome", "Android"),
        (GOOGLEBOT, "bot", "Googlebot", "other"),
        (GOOGLEBOT_SMARTPHONE, "bot", "Googlebot", "Android"),
        (HEADLESS, "bot", "HeadlessChrome", "Linux"),
        ("curl/8.4.0", "bot", "curl", "other"),
        ("python-requests/2.31.0", "bot", "Python Requests", "other"),
        (
            "Mozilla/5.0 (PlayStation 4 3.11) AppleWebKit/537.73 (KHTML, like Gecko)",
            "other",
            "other",
            "other",
        ),
        ("something odd", "other", "other", "other"),
        (None, "unknown", "unknown", "unknown"),
        ("", "unknown", "unknown", "unknown"),
    ],
)
def test_device_browser_os_from_user_agent(
    user_agent: str | None, device: str, browser: str, os: str
) -> None:
    result = enrich(event(user_agent=user_agent), DEFAULT_RULES)
    assert (result["device"], result["browser"], result["os"]) == (device, browser, os)


def test_given_device_wins_over_user_agent() -> None:
    result = enrich(event(device="tablet", user_agent=WINDOWS_CHROME), DEFAULT_RULES)
    assert (result["device"], result["browser"], result["os"]) == ("tablet", "Chrome", "Windows")
    no_ua = enrich(event(device="bot"), DEFAULT_RULES)
    assert (no_ua["device"], no_ua["browser"], no_ua["os"]) == ("bot", "unknown", "unknown")


def test_user_agent_parsing_is_cached() -> None:
    parse_user_agent.cache_clear()
    for _ in range(3):
        enrich(event(user_agent=IPHONE), DEFAULT_RULES)
    info = parse_user_agent.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    assert info.maxsize == 10_000
