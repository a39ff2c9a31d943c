"""Fixtures: real NATS servers (1 or 3, JetStream, fsync always) and a Trio ↔ asyncio bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meterd.cluster import AsyncioBridge, open_bridge
from tests.cluster.servers import NatsCluster, running_cluster


@pytest.fixture
def nats1(tmp_path: Path) -> Iterator[NatsCluster]:
    """One JetStream server (not clustered) on a free loopback port."""
    with running_cluster(tmp_path / "nats", 1) as cluster:
        yield cluster


@pytest.fixture
def nats3(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three clustered JetStream servers (n1, n2, n3) on free loopback ports."""
    with running_cluster(tmp_path / "nats", 3) as cluster:
        yield cluster


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_bridge(name="test-bridge") as opened:
        yield opened
