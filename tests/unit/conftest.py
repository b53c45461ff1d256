"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def published() -> list[Any]:
    """What a sink sends to its dead-letter topic (tests.unit.test_sinks_consumer.sink_consumer)."""
    return []
