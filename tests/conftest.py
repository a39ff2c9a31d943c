"""Shared fixtures: run supervisors inside the test's nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import supervisors as sv


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.fixture
async def dynsup(nursery: trio.Nursery) -> AsyncIterator[sv.DynamicSupervisor]:
    """A running DynamicSupervisor with a generous restart intensity."""
    sup = sv.DynamicSupervisor(max_restarts=100, max_seconds=1, name="dyn")
    await nursery.start(sup.run)
    yield sup
    sup.stop()
    await sup.wait_stopped()
