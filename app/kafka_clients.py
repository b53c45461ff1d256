"""Configuration of the librdkafka (confluent-kafka) clients of the hot path, from settings."""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by the hot path's consumer and producer."""
    return {
        "bootstrap.servers": ",".join(settings.brokers),
        "client.id": settings.sources.kafka.group_id,
    }
