"""Fixtures: a Trio ↔ asyncio bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meterd.cluster import AsyncioBridge, open_bridge


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_bridge(name="test-bridge") as opened:
        yield opened
