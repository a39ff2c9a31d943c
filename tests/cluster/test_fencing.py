"""Fencing and the retention check, piece by piece on a real NATS server: an applier whose
fence lapsed commits and says nothing until a renewal lifts it, and stamps its verdicts with
the epoch; a gateway drops a verdict of an older epoch; an applier whose store is behind
what the stream still holds refuses loudly instead of skipping; rendezvous placement."""

from __future__ import annotations

import math
import time
from pathlib import Path

import trio

from meterd.cluster import (
    STREAM,
    AsyncioBridge,
    JetStreamLinks,
    Lease,
    ShardApplier,
    connect,
    log_name,
    log_subject,
    provision,
    slice_msg_id,
    verdict_subject,
)
from meterd.cluster._placement import Fence, Placement, rendezvous
from meterd.cluster._registry import NodeRegistry
from meterd.partitions import OwnerUnavailable, Verdicts, decode, encode
from meterd.partitions._messages import BatchId
from tests.cluster.cells import (
    LAYOUT,
    SHARD,
    a_slice,
    accounts_in,
    ev,
    journal,
    position,
    running_cell,
    write_config,
)
from tests.cluster.servers import NatsCluster, until
from tests.cluster.test_applier import cluster_config

(A,) = accounts_in(SHARD, 1)


def lease(epoch: int, *, ttl: float = 10.0) -> Lease:
    return Lease("shard-001", "n1", epoch, math.inf, epoch, time.monotonic())


def test_a_fence_holds_until_its_deadline_and_not_after_a_revoke() -> None:
    fence = Fence(SHARD, ttl=10.0, margin=2.5)
    assert fence.check() is not None  # never renewed
    fence.renewed(lease(7))
    assert fence.check() is None
    assert fence.epoch == 7
    fence.deadline = time.monotonic() - 0.1  # as if the process had been stopped past it
    reason = fence.check()
    assert reason is not None
    assert "not renewed in time" in reason
    fence.renewed(lease(7))  # a renewal that still succeeded: nobody else wrote the lease
    assert fence.check() is None
    fence.revoke("taken over")
    fence.renewed(lease(7))  # too late: revoked for good
    assert fence.check() == "shard 1: lease lost (taken over)"


def test_rendezvous_is_stable_and_moves_only_the_leavers_shards() -> None:
    nodes = ["n1", "n2", "n3"]
    before = {s: rendezvous(nodes, s) for s in range(64)}
    after = {s: rendezvous(["n1", "n3"], s) for s in range(64)}
    assert set(before.values()) == set(nodes)
    assert all(after[s] == before[s] for s in range(64) if before[s] != "n2")
    assert rendezvous([], 0) is None


async def test_a_lapsed_fence_commits_nothing_and_sends_no_verdict(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    config = write_config(tmp_path)
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, cluster_config(nats1))
    piece = a_slice(1, SHARD, [ev(0, "e1", A, 5)])
    ack = await conn.publish(
        log_subject(SHARD), encode(piece), msg_id=slice_msg_id(piece.batch, SHARD)
    )
    fence = Fence(SHARD, ttl=10.0, margin=2.5)  # not renewed yet: lapsed
    async with (
        conn.subscribe(verdict_subject("gw")) as verdicts,
        running_cell(config, SHARD) as cell,
    ):
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2, fence=fence)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(applier.run)
            # Nothing is read, committed or answered while the fence is lapsed: the
            # applier waits on it (a renewal lifts it).
            await until(lambda: applier.fence_waits == 1, timeout=20, what="the fence wait")
            assert position(cell.store_path, log_name(SHARD)) == 0
            assert verdicts.buffered == 0
            fence.renewed(lease(7))
            with trio.fail_after(20):
                await applier.wait_applied(ack.seq)
                _, data = await verdicts.get()
            answer = decode(data)
            assert isinstance(answer, Verdicts)
            assert (answer.accepted, answer.epoch) == (1, 7)
            nursery.cancel_scope.cancel()
        assert journal(cell.store_path) == {(A, "e1"): 5}


async def test_a_gateway_drops_verdicts_of_an_older_epoch(
    nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, cluster_config(nats1))
    links = JetStreamLinks(conn, "gw", LAYOUT, slice_timeout=20)
    outcomes: list[Verdicts | OwnerUnavailable] = []
    got = trio.Event()

    def done(outcome: Verdicts | OwnerUnavailable) -> None:
        outcomes.append(outcome)
        got.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        links.observe(SHARD, 9)  # the shard's current owner took it at epoch 9
        piece = a_slice(1, SHARD, [ev(0, "e1", A, 5)])
        links.send(piece, done)
        with trio.fail_after(20):
            await until(lambda: links.published == 1, timeout=20, what="the slice published")
            old = Verdicts(BatchId("gw", 1, 1), SHARD, 1, 0, epoch=4)
            await conn.send(verdict_subject("gw"), encode(old))
            await until(lambda: links.stale_verdicts == 1, timeout=20, what="the stale verdict")
            assert outcomes == []
            current = Verdicts(BatchId("gw", 1, 1), SHARD, 1, 0, epoch=9)
            await conn.send(verdict_subject("gw"), encode(current))
            await got.wait()
        assert outcomes == [current]
        nursery.cancel_scope.cancel()


async def test_an_applier_refuses_a_log_that_lost_what_it_needs(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """The store has applied nothing, but the stream's first sequences are gone (retention):
    the applier must not start from what is left (it would miss events silently)."""
    config = write_config(tmp_path)
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, cluster_config(nats1))
    for seq in (1, 2):
        piece = a_slice(seq, SHARD, [ev(0, f"e{seq}", A, 5)])
        await conn.publish(
            log_subject(SHARD), encode(piece), msg_id=slice_msg_id(piece.batch, SHARD)
        )
    js = conn._jetstream

    async def purge() -> bool:
        return await js.purge_stream(STREAM)

    await bridge.call(purge)  # as retention would have dropped them
    later = a_slice(3, SHARD, [ev(0, "e3", A, 5)])
    await conn.publish(log_subject(SHARD), encode(later), msg_id=slice_msg_id(later.batch, SHARD))
    async with running_cell(config, SHARD) as cell:
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(applier.run)
            await until(lambda: applier.refused is not None, timeout=20, what="the refusal")
            nursery.cancel_scope.cancel()
        assert applier.refused is not None
        assert "sequences 1..2 are gone" in applier.refused
        assert position(cell.store_path, log_name(SHARD)) == 0
        assert journal(cell.store_path) == {}


class FakeShard:
    def __init__(self) -> None:
        self.alive = True
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True

    def running(self) -> bool:
        return self.alive


async def test_placement_takes_free_shards_and_restarts_a_shard_whose_tree_is_gone(
    nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    conn = await connect(bridge, nats1.urls, name="t")
    provisioned = await provision(conn, cluster_config(nats1))
    registry = await NodeRegistry.open(conn, ttl=provisioned.leases.ttl)
    started: list[tuple[int, FakeShard]] = []

    async def start(shard: int, fence: Fence) -> FakeShard:
        assert fence.check() is None  # a shard starts with its lease certainly held
        handle = FakeShard()
        started.append((shard, handle))
        return handle

    placement = Placement("n1", provisioned.leases, registry, 4, start=start)
    await placement.round()
    assert [shard for shard, _ in started] == [0, 1, 2, 3]  # alone: every free shard is its
    assert {s: e for s, e in placement.describe().items()} == {
        str(s): placement.held[s].fence.epoch for s in range(4)
    }
    started[0][1].alive = False  # shard 0's tree gave up
    await placement.round()
    assert [shard for shard, _ in started] == [0, 1, 2, 3, 0]
    assert started[0][1].stopped
    other = Placement("n2", provisioned.leases, registry, 4, start=start)
    await other.round()  # every lease is held: n2 takes none
    assert len(started) == 5
    await placement.release_all()
    await other.round()  # n1 left and released: n2 takes them all
    assert [shard for shard, _ in started[5:]] == [0, 1, 2, 3]
