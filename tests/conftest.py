"""Shared fixtures: run supervisors inside the test's nursery; ``slow`` tests only with -m slow,
which also runs every property test's full example count (tests/examples.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import HealthCheck, settings

import supervisors as sv
from tests import examples

# Bytecode caches on, for the suite and every process it starts: an environment with
# PYTHONDONTWRITEBYTECODE=1 (this machine's has it) makes each daemon, owner and helper the
# suite starts compile meterd from source again (~0.3 s of CPU each, hundreds of starts).
# The caches go to __pycache__ directories, which git ignores; nothing else changes.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Hypothesis' too_slow health check times the generation of the first inputs: on a machine
# shared by several suites that fails a correct test now and then (seen on
# test_messages.py under load 12). No test here is timed, so neither is generation.
settings.register_profile("meterd", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meterd")


def pytest_configure(config: pytest.Config) -> None:
    """``-m slow``: property tests run their full example count (before any test module is
    imported, so ``examples(n)`` in a decorator sees it)."""
    if "slow" in (config.getoption("markexpr") or "").replace("not slow", ""):
        examples.full = True


# Directories whose tests start processes (daemons, owners, NATS servers, chromium): they
# take most of the suite's time, a few seconds to a minute each, so they go first. With
# ``-n 2`` xdist hands tests out in this order, and the last ones to run are then short:
# neither worker waits long at the end for the other's last kill campaign.
LONG_FIRST = ("system", "partitions", "cluster", "console", "cli", "bench")


def _long_first(item: pytest.Item) -> int:
    parts = item.path.relative_to(item.config.rootpath).parts
    where = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    return LONG_FIRST.index(where) if where in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long-running directories first (a stable sort: each file stays whole, in order); a
    test marked ``slow`` (a soak, a kill campaign) runs only when ``-m`` names ``slow``;
    the default suite skips it, whether or not its module says so too."""
    items.sort(key=_long_first)
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="runs with -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


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
