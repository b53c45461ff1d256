"""Seeded, realistic user traffic as SPEC section 1 input events (pure: no I/O, no clock).

Why it looks the way it does:

- The same profile always yields the same events, so a test or benchmark can replay a
  stream into the pipeline and compare with a batch computation over an identical copy.
- Users have stable attributes (device, country, user agent, IP) and browse in sessions
  that walk a shop funnel (home -> products -> add_to_cart -> checkout -> purchase) with
  drop-off at every step, so every KPI, session and page figure has something to show.
- SPEC 7-9 shapes are opt-in profile fields, off by default so that existing seeds keep
  producing the very same streams: ``checkout_action`` adds a ``checkout`` event to the
  funnel, ``experiment`` puts exposures (``metadata.experiment`` / ``metadata.variant``) on
  product and checkout page views, with a few users who see two variants. A ``span_ms`` of
  several days (``DAY_MS``) gives cohorts: users keep coming back on later days and a
  quarter of them first appear after the start.
- Users are simulated in *virtual* time (realistic gaps in ms), merged with a heap into one
  time-ordered stream, then mapped onto ``[start_ms, start_ms + span_ms)`` by a monotone,
  piecewise-linear map fitted with a bounded look-ahead (``_timed``), so the last event lands
  on the span's last millisecond without a second pass or holding the stream in memory. The
  idle time between visits is calibrated so that the map's slope stays near 1 and gaps (the
  > 30 minute ones that split sessions included) stay realistic; when a profile asks for
  more events than realistic pacing allows, the map compresses time instead.
- Disorder, duplicates and invalid events are added on top of that ordered stream through a
  small re-ordering buffer keyed by ``ts + jitter`` with ``0 <= jitter <= disorder_ms``, so
  the emitted order is sorted by that key and every emitted event satisfies
  ``ts >= max(ts emitted before it) - disorder_ms``. Their counts are exact
  (selection sampling), not merely expected.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from statistics import NormalDist
from typing import Any, Literal

import orjson

__all__ = [
    "BREAKAGES",
    "DAY_MS",
    "Event",
    "Kind",
    "TrafficProfile",
    "format_ts",
    "generate",
    "generate_labelled",
]

Event = dict[str, Any]
Kind = Literal["valid", "duplicate", "invalid"]

_MINUTE_MS = 60_000
DAY_MS = 86_400_000
# Averages of the visit model below, measured over 20,000 visits; they only steer the idle
# time between visits, the exact fit onto the span comes from the time map (_timed).
_MEAN_SESSION_EVENTS = 3.8
_MEAN_IN_SESSION_GAP_MS = 110_000.0
_MIN_IDLE_MS = 60_000.0
_PAUSE_SHARE = 0.02  # in-visit gaps that are a long pause (same session_id, > 30 min)
_PAUSE_MIN_MS = 32.0 * _MINUTE_MS
_PAUSE_MAX_MS = 120.0 * _MINUTE_MS
_LATE_USER_SHARE = 0.25  # users whose first visit falls anywhere in the span (new users)
_LOOKAHEAD = 2_048  # simulated steps held back to fit the time map (see _timed)
_CHUNK = 512  # steps mapped per segment of the time map
_VARIANT_LIFT = 0.10  # more buying at checkout for every variant but the first (control)


@dataclass(frozen=True)
class TrafficProfile:
    """What to generate; every field has a default so tests only state what they vary.

    ``events`` counts the distinct valid events. Duplicates (``duplicate_rate * events``)
    and invalid events (``invalid_rate * events``) come on top, both rounded to the nearest
    integer; ``total_emitted`` is the sum.

    Off by default (the streams of existing seeds stay as they were):

    - ``checkout_action``: right after the ``/checkout`` page view, a ``checkout`` event
      (page ``/checkout``, metadata ``cart_value`` and ``currency``), so the funnel
      ``page_view:/products -> add_to_cart -> checkout -> purchase`` has a stage per step.
    - ``experiment``: a non-empty name turns on an A/B test. Each human user is assigned one
      of ``variants`` (uniformly); every page view of ``/products...`` or ``/checkout`` is an
      exposure, with metadata ``{"experiment": experiment, "variant": ...}``. Users drawn
      with probability ``variant_conflict_rate`` see their variant and the next one of
      ``variants`` on alternate visits (SPEC 9 conflicts). Every variant but the first buys
      at checkout a little more often, so the experiment has an effect to find. Crawlers
      are never exposed.
    """

    seed: int = 42
    users: int = 500
    start_ms: int = 1_705_312_800_000  # 2024-01-15T10:00:00Z
    span_ms: int = 3_600_000
    events: int = 10_000
    disorder_ms: int = 0
    duplicate_rate: float = 0.0
    invalid_rate: float = 0.0
    explicit_event_ids: bool = True
    checkout_action: bool = False
    experiment: str = ""
    variants: tuple[str, ...] = ("control", "green")
    variant_conflict_rate: float = 0.03

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.span_ms < 1:
            raise ValueError(f"span_ms must be >= 1, got {self.span_ms}")
        if self.events < 0:
            raise ValueError(f"events must be >= 0, got {self.events}")
        if self.disorder_ms < 0:
            raise ValueError(f"disorder_ms must be >= 0, got {self.disorder_ms}")
        for name in ("duplicate_rate", "invalid_rate", "variant_conflict_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        names = self.variants
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"variants must be >= 2 distinct non-empty names, got {names!r}")

    @property
    def duplicates(self) -> int:
        """Exact number of re-emitted events."""
        return round(self.events * self.duplicate_rate)

    @property
    def invalids(self) -> int:
        """Exact number of extra invalid events."""
        return round(self.events * self.invalid_rate)

    @property
    def total_emitted(self) -> int:
        """Everything ``generate`` yields: valid + duplicates + invalid."""
        return self.events + self.duplicates + self.invalids


# --------------------------------------------------------------------------- catalogues

_COUNTRIES = ("US", "IN", "GB", "DE", "BR", "FR", "CA", "JP", "AU", "ES", "IT", "MX", "NL", "KR")
_COUNTRY_WEIGHTS = (30, 12, 9, 8, 7, 6, 5, 5, 3, 3, 3, 3, 2, 2)

# (device, weight, user agents). device "bot" users get crawler behaviour.
_CLIENTS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    (
        "mobile",
        28,
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        ),
    ),
    (
        "mobile",
        27,
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.6099.144 Mobile Safari/537.36",
            "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/119.0.6045.193 Mobile Safari/537.36",
        ),
    ),
    (
        "tablet",
        6,
        (
            "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
        ),
    ),
    (
        "desktop",
        21,
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
        ),
    ),
    (
        "desktop",
        11,
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.2 Safari/605.1.15",
        ),
    ),
    (
        "desktop",
        4,
        ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",),
    ),
    (
        "bot",
        3,
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",),
    ),
)
_CLIENT_WEIGHTS = tuple(c[1] for c in _CLIENTS)

_CONTENT_PAGES = (
    "/",
    "/about",
    "/pricing",
    "/help",
    "/blog/choosing-running-shoes",
    "/blog/winter-gear-guide",
    "/blog/how-we-ship",
)
_TERMS = ("shoes", "jacket", "running", "gift", "sale", "backpack", "socks", "rain coat")
_CLICK_TARGETS = ("nav-link", "banner", "recommendation", "filter", "image-gallery", "footer")
_SIGNUP_METHODS = ("email", "google", "apple")
_N_PRODUCTS = 120

BREAKAGES: tuple[str, ...] = (
    "missing_user_id",
    "empty_user_id",
    "numeric_user_id",
    "missing_action",
    "bad_action",
    "long_action",
    "page_view_without_page",
    "negative_duration",
    "string_duration",
    "fractional_duration",
    "duration_too_large",
    "unknown_field",
    "bad_country",
    "bad_timestamp",
    "metadata_list",
    "metadata_too_big",
    "negative_amount",
    "bad_ip_address",
    "bad_device",
    "empty_event_id",
    "bad_json",
)
"""Ways an invalid event breaks exactly one SPEC section 1 rule (one is picked per event)."""


# --------------------------------------------------------------------------- time text


@lru_cache(maxsize=4096)
def _minute_prefix(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of an epoch minute; cached, most events share a few minutes."""
    t = time.gmtime(minute * 60)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"


def format_ts(ms: int) -> str:
    """Epoch ms -> RFC 3339 UTC with milliseconds and ``Z`` (fast path of the hot loop)."""
    minute, rest = divmod(ms, _MINUTE_MS)
    sec, milli = divmod(rest, 1000)
    return f"{_minute_prefix(minute)}{sec:02d}.{milli:03d}Z"


# --------------------------------------------------------------------------- simulation

_TABLE_SIZE = 2048


def _lognormal_table(median: float, sigma: float, lo: float, hi: float) -> tuple[float, ...]:
    """Quantiles of a clamped log-normal, so ``table[int(random() * size)]`` is a cheap draw."""
    dist = NormalDist(math.log(median), sigma)
    return tuple(
        min(hi, max(lo, math.exp(dist.inv_cdf((k + 0.5) / _TABLE_SIZE))))
        for k in range(_TABLE_SIZE)
    )


# Time on a page: 1-120 s, median 12 s, about one page view in eight above 30 s.
_DWELL = tuple(int(x) for x in _lognormal_table(12_000, 0.8, 1_000, 120_000))
_AFTER_PAGE = _lognormal_table(1_500, 0.7, 100, 60_000)  # from leaving a page to the next event
_AFTER_ACTION = _lognormal_table(4_000, 0.9, 200, 300_000)  # after a click, search, purchase...


class _User:
    """A visitor: stable attributes plus the script of its current visit."""

    __slots__ = (
        "bot",
        "fields",
        "head",
        "idle_mean",
        "index",
        "other",
        "pos",
        "script",
        "shown",
        "signed_up",
    )

    def __init__(self, index: int, bot: bool, fields: Event) -> None:
        self.index = index
        self.bot = bot
        self.fields = fields  # ip_address, user_agent, country, device (those not omitted)
        self.head: Event = {"user_id": f"user-{index:05d}"}  # plus session_id, per visit
        self.idle_mean = _MIN_IDLE_MS
        self.script: list[tuple[Event, float]] = []  # (step fields, virtual ms to the next)
        self.pos = 0
        self.signed_up = False
        self.shown = -1  # index of the variant shown this visit; -1: no experiment
        self.other = -1  # conflicting users: the variant shown on alternate visits


def _make_user(rng: random.Random, index: int) -> _User:
    """Draw one user's stable attributes."""
    device, _, agents = rng.choices(_CLIENTS, _CLIENT_WEIGHTS)[0]
    bot = device == "bot"
    fields: Event = {}
    if rng.random() < 0.15:
        fields["ip_address"] = f"2001:db8:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
    else:
        fields["ip_address"] = (
            f"{rng.randint(23, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}"
        )
    no_agent = not bot and rng.random() < 0.01  # some clients send no user agent at all
    if not no_agent:
        fields["user_agent"] = rng.choice(agents)
    country = "US" if bot else rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
    r = rng.random()
    if r < 0.03:
        pass  # country unknown
    elif r < 0.06:
        fields["country"] = country.lower()  # SPEC: any case, stored upper-case
    else:
        fields["country"] = country
    # A quarter of the clients leave device out, so the server derives it from the agent.
    if no_agent or rng.random() >= 0.25:
        fields["device"] = device
    return _User(index, bot, fields)


def _catalog(rng: random.Random) -> list[tuple[str, str, int]]:
    """Products as (id, page, price in cents), log-uniform 5..300 dollars, .99 endings."""
    products = []
    for i in range(_N_PRODUCTS):
        dollars = int(math.exp(rng.uniform(math.log(5), math.log(300))))
        products.append((str(1000 + i), f"/products/{1000 + i}", max(dollars, 1) * 100 - 1))
    return products


def _human_visit(
    rng: random.Random,
    user: _User,
    catalog: list[tuple[str, str, int]],
    profile: TrafficProfile,
) -> None:
    """A shopper's visit: a walk through the funnel with drop-off at every step.

    Stages: 0 landing/content, 1 browsing products, 2 has a cart, 3 at checkout. Each step's
    following gap is drawn here too, so a visit's timing is fixed once its script exists.
    Hot code: draws are ``table[int(random() * size)]`` rather than ``rng.choice``.
    With an experiment, product and checkout page views are exposures to the variant the
    user is shown this visit (``user.shown``).
    """
    rand = rng.random
    size = _TABLE_SIZE
    steps: list[tuple[Event, float]] = []
    append = steps.append
    n = len(catalog)

    def gap(base: float, table: tuple[float, ...]) -> float:
        r = rand()
        if r < _PAUSE_SHARE:
            # Tab left open, back much later with the same session id: SPEC splits it anyway.
            return _PAUSE_MIN_MS + r / _PAUSE_SHARE * (_PAUSE_MAX_MS - _PAUSE_MIN_MS)
        return base + table[int((r - _PAUSE_SHARE) / (1.0 - _PAUSE_SHARE) * size)]

    experiment = profile.experiment
    variant = profile.variants[user.shown] if user.shown >= 0 else ""
    lift = _VARIANT_LIFT if user.shown > 0 else 0.0

    def view(page: str) -> None:
        dwell = _DWELL[int(rand() * size)]
        step: Event = {"action": "page_view", "page": page, "duration": dwell}
        if variant and (page.startswith("/products") or page == "/checkout"):
            step["metadata"] = {"experiment": experiment, "variant": variant}
        append((step, gap(dwell, _AFTER_PAGE)))

    def act(action: str, page: str, metadata: Event) -> None:
        step = {"action": action, "page": page, "metadata": metadata}
        append((step, gap(0.0, _AFTER_ACTION)))

    def view_product() -> tuple[str, str, int]:
        item = catalog[int(n * rand() ** 2.2)]  # a few best sellers, a long tail
        view(item[1])
        return item

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rand() * len(options))]

    current: tuple[str, str, int] | None = None
    cart_cents = 0
    r = rand()
    if r < 0.6:
        view("/home")
        stage = 0
    elif r < 0.8:  # landed on a product page from a search engine
        current = view_product()
        stage = 1
    elif r < 0.87:
        view("/products")
        stage = 1
    else:
        view(pick(_CONTENT_PAGES))
        stage = 0

    for _ in range(40):
        page = steps[-1][0]["page"]
        r = rand()
        if stage == 0:
            if r < 0.50:
                if rand() < 0.5:
                    view("/products")
                current = view_product()
                stage = 1
            elif r < 0.58:
                act("search", "/search", {"query": pick(_TERMS)})
                current = view_product()
                stage = 1
            elif r < 0.62 and not user.signed_up:
                view("/signup")
                act("signup", "/signup", {"method": pick(_SIGNUP_METHODS)})
                user.signed_up = True
            elif r < 0.70:
                act("click", page, {"element": pick(_CLICK_TARGETS)})
            elif r < 0.74:
                view(pick(_CONTENT_PAGES))
            else:
                break
        elif stage == 1:
            if r < 0.20 and current is not None:
                qty = 1 if rand() < 0.85 else 2
                cart_cents += current[2] * qty
                meta = {"product_id": current[0], "price": current[2] / 100, "qty": qty}
                act("add_to_cart", page, meta)
                stage = 2
            elif r < 0.58:
                current = view_product()
            elif r < 0.68:
                act("click", page, {"element": pick(_CLICK_TARGETS)})
            elif r < 0.73:
                act("search", "/search", {"query": pick(_TERMS)})
            else:
                break
        elif stage == 2:
            if r < 0.45:
                view("/checkout")
                if profile.checkout_action:
                    act(
                        "checkout", "/checkout", {"cart_value": cart_cents / 100, "currency": "USD"}
                    )
                stage = 3
            elif r < 0.62:
                current = view_product()
                stage = 1  # keeps the cart; another add_to_cart brings it back here
            elif r < 0.67:
                act("click", page, {"element": "mini-cart"})
            else:
                break
        else:  # stage 3, checkout
            if r < 0.55 + lift:
                act("purchase", "/checkout", {"amount": cart_cents / 100, "currency": "USD"})
                cart_cents = 0
                if rand() < 0.5:
                    view("/orders/confirmation")
                if rand() < 0.6:
                    break
                stage = 0
            elif r < 0.63 + lift:
                act("click", "/checkout", {"element": "edit-cart"})
            else:
                break
    user.script = steps


def _bot_visit(rng: random.Random, user: _User, catalog: list[tuple[str, str, int]]) -> None:
    """A crawler pass: page views only, short dwell, no cart, no pauses."""
    steps: list[tuple[Event, float]] = []
    for _ in range(rng.randint(2, 8)):
        page = rng.choice(catalog)[1] if rng.random() < 0.7 else rng.choice(_CONTENT_PAGES)
        dwell = rng.randint(1_000, 3_000)
        steps.append(({"action": "page_view", "page": page, "duration": dwell}, dwell + 500.0))
    user.script = steps


def _new_visit(
    rng: random.Random, user: _User, catalog: list[tuple[str, str, int]], profile: TrafficProfile
) -> None:
    """Start the user's next visit: script, session id (sometimes none), idle time after."""
    head: Event = {"user_id": user.head["user_id"]}
    if user.bot:
        _bot_visit(rng, user, catalog)  # crawlers keep no cookies: no session_id
    else:
        if user.other >= 0:  # a conflicting user: the two variants take turns by visit
            user.shown, user.other = user.other, user.shown
        _human_visit(rng, user, catalog, profile)
        r = rng.random()
        if r < 0.08:
            pass  # no session_id: SPEC then cuts sessions by the inactivity gap alone
        elif r < 0.10:
            head["session_id"] = ""
        else:
            head["session_id"] = f"s-{rng.getrandbits(48):012x}"
    user.head = head
    user.pos = 0
    last, _ = user.script[-1]
    idle = last.get("duration", 0) + _MIN_IDLE_MS / 4 + rng.expovariate(1.0 / user.idle_mean)
    user.script[-1] = (last, idle)


def _assign_variants(profile: TrafficProfile, users: list[_User]) -> None:
    """Each human user's variant, and who of them also sees the next variant (conflicts).

    Drawn from a generator of their own, so turning an experiment on changes the main
    simulation only through the exposures' effect on buying.
    """
    rng = random.Random(f"{profile.seed}/experiment")
    count = len(profile.variants)
    for user in users:
        variant = rng.randrange(count)
        conflicted = rng.random() < profile.variant_conflict_rate
        if user.bot:
            continue
        user.shown = variant
        if conflicted:
            user.other = (variant + 1) % count


def _simulate(profile: TrafficProfile) -> Iterator[tuple[float, Event, Event, Event]]:
    """Endless time-ordered (virtual ms, head, step, fields) stream; same profile, same stream.

    ``head`` (user_id, session_id) is replaced, never mutated, when a visit starts, so it
    stays right for the step it came with; ``fields`` are the user's stable attributes.
    """
    rng = random.Random(profile.seed)
    catalog = _catalog(rng)
    users = [_make_user(rng, i) for i in range(profile.users)]
    if profile.experiment:
        _assign_variants(profile, users)
    span = float(profile.span_ms)

    # Calibrate each user's idle time between visits so that all users together produce
    # about `events` events in `span`; busier users (log-normal weights) visit more often.
    weights = [rng.lognormvariate(0.0, 0.8) for _u in users]
    firsts: list[float] = []
    active: list[float] = []
    for _u in users:
        if rng.random() < _LATE_USER_SHARE:
            first = rng.uniform(0.0, 0.9 * span)
            firsts.append(first)
            active.append(1.0 - first / span)
        else:
            firsts.append(-1.0)  # drawn below, once the user's idle mean is known
            active.append(1.0)
    rate = max(profile.events, 1) / span  # events per virtual ms, all users together
    effective = sum(w * a for w, a in zip(weights, active, strict=True)) or 1.0
    busy = (_MEAN_SESSION_EVENTS - 1) * _MEAN_IN_SESSION_GAP_MS
    heap: list[tuple[float, int]] = []
    for u, w, first in zip(users, weights, firsts, strict=True):
        cycle = _MEAN_SESSION_EVENTS / (rate * w / effective)
        u.idle_mean = max(_MIN_IDLE_MS, cycle - busy)
        start = first if first >= 0.0 else rng.uniform(0.0, min(u.idle_mean, span))
        _new_visit(rng, u, catalog, profile)
        heap.append((start, u.index))
    heapq.heapify(heap)

    replace = heapq.heapreplace
    while True:
        v, i = heap[0]
        u = users[i]
        step, gap = u.script[u.pos]
        u.pos += 1
        yield v, u.head, step, u.fields
        if u.pos == len(u.script):
            _new_visit(rng, u, catalog, profile)
        replace(heap, (v + gap, i))


def _timed(profile: TrafficProfile) -> Iterator[list[tuple[int, Event, Event, Event]]]:
    """The first ``events`` simulated steps mapped onto the span, in chunks of (ts, ...).

    The map from virtual time is piecewise linear and continuous, so order and gap ratios
    survive. Simulation runs ``_LOOKAHEAD`` steps ahead of what is mapped: each segment's
    slope aims the remaining span at the extrapolated virtual time of the last event, and
    once that last event has been simulated the final slope lands it exactly on the span's
    last millisecond. A stream of at most ``_LOOKAHEAD`` events gets one exact linear map.
    Mapped times never pass the end: a segment only covers steps already simulated, which
    lie before the extrapolated end. Chunks (not single steps) keep the per-event cost low.
    """
    n = profile.events
    start = profile.start_ms
    end = float(profile.span_ms - 1)
    sim = _simulate(profile)
    buf = list(islice(sim, min(n, _LOOKAHEAD)))
    made = len(buf)
    anchor_v = anchor_r = 0.0  # last mapped point (virtual, real offset in ms)
    while made < n:
        target = buf[-1][0] * n / made  # extrapolated virtual time of the last event
        slope = (end - anchor_r) / (target - anchor_v) if target > anchor_v else 0.0
        chunk = buf[:_CHUNK]
        del buf[:_CHUNK]
        yield [
            (start + int(anchor_r + slope * (v - anchor_v)), head, step, fields)
            for v, head, step, fields in chunk
        ]
        last = chunk[-1][0]
        anchor_r += slope * (last - anchor_v)
        anchor_v = last
        more = list(islice(sim, min(_CHUNK, n - made)))
        buf += more
        made += len(more)
    last = buf[-1][0] if buf else anchor_v
    slope = (end - anchor_r) / (last - anchor_v) if last > anchor_v else 0.0
    yield [
        (start + int(min(end, anchor_r + slope * (v - anchor_v))), head, step, fields)
        for v, head, step, fields in buf
    ]


# --------------------------------------------------------------------------- invalid events


def _break(rng: random.Random, event: Event, how: str) -> Event | bytes:
    """``event`` (a fresh copy, changed in place) made to break one SPEC section 1 rule."""
    bad = event
    if how == "missing_user_id":
        del bad["user_id"]
    elif how == "empty_user_id":
        bad["user_id"] = ""
    elif how == "numeric_user_id":
        bad["user_id"] = rng.randint(1, 99_999)
    elif how == "missing_action":
        del bad["action"]
    elif how == "bad_action":
        bad["action"] = "Page View"
    elif how == "long_action":
        bad["action"] = "x" * 65
    elif how == "page_view_without_page":
        bad["action"] = "page_view"
        bad.pop("page", None)
    elif how == "negative_duration":
        bad["duration"] = -1
    elif how == "string_duration":
        bad["duration"] = "5"
    elif how == "fractional_duration":
        bad["duration"] = 1500.5
    elif how == "duration_too_large":
        bad["duration"] = 86_400_001
    elif how == "unknown_field":
        bad["referrer"] = "https://www.google.com/"
    elif how == "bad_country":
        bad["country"] = "XX"
    elif how == "bad_timestamp":
        bad["timestamp"] = "yesterday"
    elif how == "metadata_list":
        bad["metadata"] = ["campaign", "spring-sale"]
    elif how == "metadata_too_big":
        bad["metadata"] = {"blob": "x" * (33 * 1024)}
    elif how == "negative_amount":
        bad["action"] = "purchase"
        bad["metadata"] = {"amount": -10.0, "currency": "USD"}
    elif how == "bad_ip_address":
        bad["ip_address"] = "999.12.0.1"
    elif how == "bad_device":
        bad["device"] = "smartwatch"
    elif how == "empty_event_id":
        bad["event_id"] = ""
    elif how == "bad_json":
        text = orjson.dumps(bad)
        return text[: len(text) // 2]  # truncated mid-object: never valid JSON
    else:  # pragma: no cover - BREAKAGES and this chain are kept in step
        raise ValueError(f"unknown breakage {how!r}")
    return bad


# --------------------------------------------------------------------------- public API


def generate_labelled(profile: TrafficProfile) -> Iterator[tuple[Event | bytes, Kind]]:
    """Yield ``(event, kind)`` in emission order; ``kind`` tells tests the ground truth.

    ``valid`` events are exactly ``profile.events``; a ``duplicate`` is the very same dict
    object as its earlier ``valid`` original (identical payload, same event_id, emitted
    later); an ``invalid`` event is a dict breaking one rule, or raw ``bytes`` for bad JSON.
    """
    n = profile.events
    if n == 0:
        return
    noise = random.Random(f"{profile.seed}/noise")
    rand = noise.random
    disorder = float(profile.disorder_ms)
    prefix = f"{profile.seed}-"
    explicit = profile.explicit_event_ids
    dup_left, bad_left = profile.duplicates, profile.invalids
    pending: list[tuple[float, int, Event | bytes, Kind]] = []  # (emit key, seq, event, kind)
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    ident = 0

    minutes: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:" per epoch minute, format_ts inlined
    i = -1
    for chunk in _timed(profile):
        for ts, head, step, fields in chunk:
            i += 1
            minute, rest = divmod(ts, _MINUTE_MS)
            text = minutes.get(minute)
            if text is None:
                text = minutes[minute] = _minute_prefix(minute)
            stamp = f"{text}{rest // 1000:02d}.{rest % 1000:03d}Z"
            if explicit:
                event: Event = {
                    "event_id": prefix + str(ident),
                    **head,
                    **step,
                    "timestamp": stamp,
                    **fields,
                }
            else:
                event = {**head, **step, "timestamp": stamp, **fields}
            ident += 1
            dup = bad = False
            if dup_left or bad_left:
                remaining = n - i
                # Selection sampling: exactly `duplicates` and `invalids` picks over the run.
                if dup_left and rand() * remaining < dup_left:
                    dup_left -= 1
                    dup = True
                if bad_left and rand() * remaining < bad_left:
                    bad_left -= 1
                    bad = True

            if not disorder:
                # Emission key == ts for everything: emit in generation order, no buffer.
                yield event, "valid"
                if dup:
                    yield event, "duplicate"
                if bad:
                    yield _invalid(noise, event, explicit, prefix + str(ident)), "invalid"
                    ident += 1
                continue

            # Everything buffered with key <= ts can go now: later events all have keys >= ts.
            while pending and pending[0][0] <= ts:
                out = pop(pending)
                yield out[2], out[3]
            jitter = rand() * disorder
            push(pending, (ts + jitter, seq, event, "valid"))
            seq += 1
            if dup:
                # After the original, still within ts + disorder_ms.
                push(pending, (ts + jitter + rand() * (disorder - jitter), seq, event, "duplicate"))
                seq += 1
            if bad:
                wrong = _invalid(noise, event, explicit, prefix + str(ident))
                ident += 1
                push(pending, (ts + rand() * disorder, seq, wrong, "invalid"))
                seq += 1

    while pending:
        out = pop(pending)
        yield out[2], out[3]


def _invalid(rng: random.Random, event: Event, explicit: bool, event_id: str) -> Event | bytes:
    """A new invalid event modelled on ``event``, with its own event_id."""
    base = dict(event)
    if explicit:
        base["event_id"] = event_id
    return _break(rng, base, rng.choice(BREAKAGES))


def generate(profile: TrafficProfile) -> Iterator[Event | bytes]:
    """The emitted stream without labels: what a real client would send."""
    for event, _kind in generate_labelled(profile):
        yield event
