"""``DELETE /api/users/{user_id}``: erase a user (analytics.erasure), on the worker that owns
the user's partition (web/api.py routes it there; the admin token is checked by web/access.py).

The request record goes to ``user-events`` and the tracker erases the user in order, after
the user's earlier events; the answer waits up to ``erasure.wait`` for that to be durable:
200 with what was removed (all zero the second time: erasing is idempotent), else 202 (the
request is queued and will be done all the same), 503 when Kafka does not take the request.
"""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaError

from agents import erasures
from app import app

_wait_s = app.analytics_settings.erasure.wait.total_seconds()


async def erase_user(user_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of erasing ``user_id`` (module docstring)."""
    try:
        partition, offset = await erasures.request(user_id)
    except KafkaError as exc:
        return 503, {"error": f"the erasure request could not be sent to Kafka: {exc!r}"}
    erased = await erasures.outcome(partition, offset, _wait_s)
    if erased is None:
        return 202, {
            "user_id": user_id,
            "erased": False,
            "queued": {"partition": partition, "offset": offset},
            "message": f"not done within {_wait_s:g} s; it will be, in order",
        }
    return 200, erased.answer()
