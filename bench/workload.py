"""The benchmark workload: seeded JSON events with long, busy sessions (pure: no I/O).

The shape of the workload in issue 10 and ../shared/FACTS.md: ``users`` users, a global event
time that advances ``events_per_second`` events per simulated second, a fifth of the traffic
from the busiest 5 % of users, and each user's ``session_id`` changing on 1 in
``session_events`` of their events (so sessions are about that long; no inactivity gap inside
the span splits them). Every event is valid SPEC section 1 input with a distinct event_id, so
every one must come out of the pipeline exactly once. ``user_agent`` is set and ``device`` is
not, so the pipeline parses user agents as it would for browser traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from generator.traffic import format_ts

USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
)
COUNTRIES = ("US", "IN", "GB", "DE", "BR", "FR", "CA", "JP")
PAGES = tuple(
    ["/", "/pricing", "/help", "/cart", "/checkout"] + [f"/products/{i}" for i in range(40)]
)
EXPOSING_PAGES = ("/pricing", "/checkout")
# (action, weight): mostly page views, a few conversions
ACTIONS = (("page_view", 70), ("click", 18), ("add_to_cart", 7), ("purchase", 3), ("signup", 2))


@dataclass(frozen=True)
class Workload:
    """What to generate. ``start_ms`` is 2026-01-01T00:00:00Z."""

    events: int = 200_000
    users: int = 2_000
    session_events: int = 20
    events_per_second: float = 100.0
    busy_user_share: float = 0.05
    busy_traffic_share: float = 0.2
    seed: int = 7
    start_ms: int = 1_767_225_600_000
    experiment: bool = False
    """Page views of /pricing and /checkout expose the user to an A/B test (SPEC 9): variant
    ``control`` or ``green`` by user, so SPEC 7-9's cost shows in a run (bench/compare.py
    ``--only plain``). No random draw depends on it: the rest of the workload is the same."""

    @property
    def span_ms(self) -> int:
        """Event time the workload covers."""
        return round(self.events / self.events_per_second * 1000)


def events(workload: Workload) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) pairs in event-time order; the key is the user_id."""
    rng = random.Random(workload.seed)
    busy = max(1, round(workload.users * workload.busy_user_share))
    user_agents = [rng.choice(USER_AGENTS) for _ in range(workload.users)]
    countries = [rng.choice(COUNTRIES) for _ in range(workload.users)]
    sessions = [0] * workload.users
    action_names = [name for name, _ in ACTIONS]
    action_weights = [weight for _, weight in ACTIONS]
    step_ms = 1000.0 / workload.events_per_second
    for n in range(workload.events):
        if rng.random() < workload.busy_traffic_share:
            user = rng.randrange(busy)
        else:
            user = rng.randrange(busy, workload.users) if workload.users > busy else 0
        if rng.random() < 1.0 / workload.session_events:
            sessions[user] += 1
        action = rng.choices(action_names, action_weights)[0]
        user_id = f"user-{user:06d}"
        event: dict[str, object] = {
            "event_id": f"e{workload.seed}-{n:09d}",
            "user_id": user_id,
            "session_id": f"{user_id}-s{sessions[user]}",
            "action": action,
            "timestamp": format_ts(workload.start_ms + int(n * step_ms)),
            "duration": rng.randrange(0, 60_000) if action == "page_view" else 0,
            "user_agent": user_agents[user],
            "country": countries[user],
        }
        if action == "page_view":
            event["page"] = page = rng.choice(PAGES)
            if workload.experiment and page in EXPOSING_PAGES:
                variant = "green" if user % 2 else "control"
                event["metadata"] = {"experiment": "checkout_button", "variant": variant}
        if action == "purchase":
            event["metadata"] = {"amount": round(rng.uniform(5, 400), 2)}
        yield user_id.encode(), orjson.dumps(event)
