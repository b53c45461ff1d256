"""agents/alert_webhook.py against a small aiohttp receiver in the test: retries on 5xx and
refused connections with backoff, none on 4xx, the Idempotency-Key, order, and a failure that
is logged and counted instead of raised."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from agents.alert_webhook import WebhookDelivery
from analytics.alerts import Transition
from app.settings import AlertWebhookSettings
from tests.http_receiver import serving_posts
from tests.worker_process import free_port

FIRING = Transition("busy", "firing", 120_000, 25, 20, "total_events", ">=")
RESOLVED = Transition("busy", "resolved", 240_000, 5, 20, "total_events", ">=")


class Receiver:
    """Answers each request with the next of ``statuses`` (then 204), recording them."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, object, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 204
        self.requests.append((request.headers["Idempotency-Key"], await request.json(), status))
        return web.Response(status=status)


def settings(url: str, attempts: int = 4) -> AlertWebhookSettings:
    return AlertWebhookSettings.model_validate(
        {
            "url": url,
            "attempts": attempts,
            "timeout": timedelta(seconds=2),
            "backoff_initial": timedelta(milliseconds=10),
            "backoff_max": timedelta(milliseconds=40),
        }
    )


async def test_5xx_is_retried_and_each_transition_is_posted_in_order_with_its_key() -> None:
    receiver = Receiver([503, 500])
    async with serving_posts(receiver.handle) as url:
        delivery = WebhookDelivery(settings(url))
        delivery.send([FIRING, RESOLVED])
        await delivery.drained()
        await delivery.stop()
    assert [(key, status) for key, _, status in receiver.requests] == [
        ("busy|firing|120000", 503),
        ("busy|firing|120000", 500),
        ("busy|firing|120000", 204),
        ("busy|resolved|240000", 204),
    ]
    assert receiver.requests[-1][1] == RESOLVED.record()
    assert delivery.failures == 0


async def test_a_4xx_is_not_retried_and_the_next_transition_still_goes() -> None:
    receiver = Receiver([400])
    async with serving_posts(receiver.handle) as url:
        delivery = WebhookDelivery(settings(url))
        delivery.send([FIRING, RESOLVED])
        await delivery.drained()
        await delivery.stop()
    assert [(key, status) for key, _, status in receiver.requests] == [
        ("busy|firing|120000", 400),
        ("busy|resolved|240000", 204),
    ]
    assert delivery.failures == 1


async def test_an_unreachable_receiver_is_given_up_after_the_attempts_without_raising() -> None:
    delivery = WebhookDelivery(settings(f"http://127.0.0.1:{free_port()}/hook", attempts=3))
    delivery.send([FIRING])
    await delivery.drained()
    await delivery.stop()
    assert delivery.failures == 1
