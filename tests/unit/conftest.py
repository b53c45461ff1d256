"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from agents import sink_agents


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []

    async def publish(records: Any) -> int:
        sent.extend(records)
        return len(sent)

    monkeypatch.setattr(sink_agents, "publish", publish)
    return sent
