"""The gateway side of cluster mode on real NATS servers: the existing GatewaySubmitter sends
slices through the log (JetStreamLinks), the shards' appliers answer with verdicts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from meterd.cluster import AsyncioBridge, JetStreamLinks, ShardApplier, connect, provision
from meterd.config import ClusterConfig, Config
from meterd.ingest.server import Decided
from meterd.model import Event, new_event
from meterd.partitions import OwnerUnavailable
from meterd.partitions._cell import Cell
from meterd.partitions._gateway import GatewaySubmitter
from tests.cluster.cells import NOW, T0, accounts_in, running_cell, write_config
from tests.cluster.servers import NatsCluster

(A,) = accounts_in(1, 1)
(B,) = accounts_in(2, 1)
(C,) = accounts_in(3, 1)  # shard 3: nobody applies it in these tests


def event(id: str, account: str, quantity: int = 1) -> Event:
    return new_event(id, account, "dyno.seconds", quantity, T0, (("app", "web"),), "platform", NOW)


Outcome = Decided | BaseException


async def submit(submitter: GatewaySubmitter, groups: list[tuple[str, list[Event]]]) -> Outcome:
    done = trio.Event()
    outcomes: list[Outcome] = []

    def on_done(outcome: object) -> None:
        assert isinstance(outcome, Decided | BaseException)
        outcomes.append(outcome)
        done.set()

    submitter.submit(groups, on_done, producer="platform", seq=len(groups))
    with trio.fail_after(20):
        await done.wait()
    return outcomes[0]


@asynccontextmanager
async def node(
    config: Config, conn_urls: list[str], bridge: AsyncioBridge, shards: list[int]
) -> AsyncIterator[tuple[GatewaySubmitter, dict[int, Cell]]]:
    """A gateway and the appliers of ``shards`` on one NATS connection."""
    conn = await connect(bridge, conn_urls, name="node")
    assert config.cluster is not None
    await provision(conn, config.cluster)
    async with AsyncExitStack() as stack:
        cells = {
            shard: await stack.enter_async_context(running_cell(config, shard)) for shard in shards
        }
        links = JetStreamLinks(conn, "gw-test", config.partitions, slice_timeout=1.0, cells=cells)
        submitter = GatewaySubmitter(
            "gw-test", links, max_in_flight_events=10_000, clock=lambda: NOW
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(links.run)
            for shard, cell in cells.items():
                applier = ShardApplier(conn, cell, shard, config.partitions, fetch_timeout=0.2)
                await nursery.start(applier.run)
            yield submitter, cells
            nursery.cancel_scope.cancel()


def with_cluster(tmp_path: Path, nats: NatsCluster) -> Config:
    return write_config(
        tmp_path,
        cluster=f'[cluster]\nnode = "n1"\nnats = {list(nats.urls)!r}\n'.replace("'", '"'),
    )


async def test_batches_are_acked_through_the_log(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    config = with_cluster(tmp_path, nats3)
    assert config.cluster == ClusterConfig(node="n1", nats=tuple(nats3.urls))
    async with node(config, nats3.urls, bridge, [1, 2]) as (submitter, _):
        batch = [(A, [event("a1", A, 5), event("a2", A)]), (B, [event("b1", B, 7)])]
        assert await submit(submitter, batch) == Decided(3, 0, [])
        # The producer re-sends it (a new batch for the gateway): duplicates, decided by
        # the owners, not by the stream's duplicate window (another msg id).
        assert await submit(submitter, batch) == Decided(0, 3, [])
        conflict = await submit(submitter, [(A, [event("a1", A, 6)])])
        assert isinstance(conflict, Decided)
        assert (conflict.accepted, [r.code for r in conflict.rejected]) == (0, ["id_conflict"])


async def test_a_shard_nobody_applies_is_unavailable_never_acked(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    config = with_cluster(tmp_path, nats1)
    async with node(config, nats1.urls, bridge, [1]) as (submitter, _):
        outcome = await submit(submitter, [(A, [event("a1", A)]), (C, [event("c1", C)])])
        assert isinstance(outcome, OwnerUnavailable)
        assert outcome.shard == 3
        assert "no verdict" in outcome.reason
