"""Handoff through a snapshot and drain, in the placement rounds (real NATS, shards faked):
the old owner stops deciding, stops the shard, snapshots it, and only then releases the
lease; a draining node hands every shard over, takes none, and the others rank shards
without it."""

from __future__ import annotations

from pathlib import Path

import trio

from meterd.cluster import AsyncioBridge, connect, provision
from meterd.cluster._placement import Fence, Placement, lease_key, rendezvous
from meterd.cluster._registry import NodeRegistry
from tests.cluster.servers import NatsCluster
from tests.cluster.test_applier import cluster_config

SHARDS = 4


class Shard:
    def __init__(self, node: str, shard: int, fence: Fence, events: list[str]) -> None:
        self.node, self.shard, self.fence, self.events = node, shard, fence, events

    async def stop(self) -> None:
        self.events.append(f"{self.node} stop {self.shard} fenced={self.fence.check() is not None}")

    def running(self) -> bool:
        return True


async def test_a_handoff_stops_snapshots_then_releases_and_drain_moves_every_shard(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    conn = await connect(bridge, nats1.urls, name="t")
    provisioned = await provision(conn, cluster_config(nats1))
    leases = provisioned.leases
    registry = await NodeRegistry.open(conn, ttl=leases.ttl)
    events: list[str] = []

    def placement(node: str) -> Placement:
        async def start(shard: int, fence: Fence) -> Shard:
            events.append(f"{node} start {shard}")
            return Shard(node, shard, fence, events)

        async def handoff(shard: int, epoch: int) -> None:
            holder = await leases.holder(lease_key(shard))
            assert holder is not None  # still held while the snapshot is made
            assert holder[0] == node
            events.append(f"{node} snapshot {shard} epoch={epoch}")

        return Placement(node, leases, registry, SHARDS, start=start, handoff=handoff)

    one, two = placement("n1"), placement("n2")
    await one.round()
    assert sorted(one.held) == list(range(SHARDS))
    share = sorted(s for s in range(SHARDS) if rendezvous(["n1", "n2"], s) == "n2")
    assert 0 < len(share) < SHARDS
    # n2 joins; n1 hands one shard over per round once n2 was live for a round.
    await two.round()
    assert two.held == {}
    with trio.fail_after(30):
        while sorted(two.held) != share:
            await one.round()
            await two.round()
    for shard in share:
        stop = events.index(f"n1 stop {shard} fenced=True")  # it decides nothing more
        snap = next(i for i, e in enumerate(events) if e.startswith(f"n1 snapshot {shard} "))
        start = events.index(f"n2 start {shard}")
        assert stop < snap < start
    # Drain n2: its shards go back to n1, it takes none, it keeps its registry entry.
    two.drain()
    with trio.fail_after(30):
        while two.held or two.handing or sorted(one.held) != list(range(SHARDS)):
            await two.round()
            await one.round()
    assert "n2" in await registry.entries()
    assert (await registry.entries())["n2"]["draining"] is True
    for _ in range(3):  # free shards are not taken by a draining node, even unranked
        await one.release_all()
        await two.round()
        assert two.held == {}
        await one.round()
    # Undrained: n2 gets its share again.
    two.drain(False)
    with trio.fail_after(30):
        while sorted(two.held) != share:
            await one.round()
            await two.round()
    await one.release_all()
    await two.release_all()
