"""``meterd run`` with ``[cluster]``: one node of a cluster on NATS JetStream (docs/cluster.md).

A node is, in one process:

* a **gateway**: ingest and the operator API as with ``[partitions] owners >= 1``, its
  batches split by shard by the existing :class:`~meterd.partitions._gateway.GatewaySubmitter`
  and sent through the log (:class:`~._gateway.JetStreamLinks`);
* the **owner of the shards whose lease it took** at start: each shard's cell (its store
  file in the shard layout) with a :class:`~._applier.ShardApplier` applying its log.

Start: connect to ``[cluster] nats``, provision the stream and the lease bucket
(:func:`~._log.provision`), take the lease of every shard nobody holds (key ``shard-SSS``,
holder the node's name), create the shard files it lacks, and run the tree::

    root (one_for_one)
    ├── links                 verdicts for this node's gateway (core NATS)
    ├── leases                renews the node's leases every ttl / 3
    ├── shard-SSS ...         (rest_for_one) store-writer, accounts, deliveries, applier
    ├── ingest
    └── api

A node that cannot renew a lease before it expires (or finds it taken) stops deciding: the
``leases`` child fails at each restart and the tree gives up, so the process exits and its
service manager restarts it (it then takes the shards that are free). Shards held by another
node at start are not taken later (takeover and rebalancing are not built yet).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog
import trio

import supervisors as sv
from meterd import __version__
from meterd.config import Config
from meterd.gateway import GatewayApi
from meterd.ingest.server import IngestServer, wall_clock_ms
from meterd.partitions import shard_files
from meterd.partitions._cell import Cell
from meterd.partitions._gateway import GatewaySubmitter
from meterd.partitions._migrate import create_shards
from meterd.startup import StartupFailed, hold_store, prepare_paths, run_until_signalled

from ._api import ClusterRoute
from ._applier import ShardApplier
from ._bridge import open_bridge
from ._gateway import JetStreamLinks
from ._lease import Lease, LeaseHeld, LeaseLost, Leases
from ._log import provision
from ._nats import ClusterUnavailable, Connection, StreamMismatch, connect
from ._registry import NodeRegistry, cluster_status

__all__ = ["LeaseKeeper", "cluster_view", "lease_key", "serve_node"]

log = structlog.get_logger("meterd.cluster.node")

MAX_RESTARTS: Final = 5
MAX_SECONDS: Final = 10.0


def lease_key(shard: int) -> str:
    return f"shard-{shard:03d}"


def cluster_view(config: Config) -> Config:
    """``config`` as the shard layout sees it: shard files (``[partitions] owners`` read as
    1: the node itself is the owner of the shards it holds)."""
    partitions = dataclasses.replace(config.partitions, owners=max(1, config.partitions.owners))
    return dataclasses.replace(config, partitions=partitions)


class LeaseKeeper:
    """Renews the node's shard leases; fails (every time it is restarted) once one is lost.
    ``heartbeat`` (the node's entry for ``/v1/cluster``) is written at start and with each
    renewal round."""

    def __init__(
        self,
        leases: Leases,
        held: dict[int, Lease],
        heartbeat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.leases = leases
        self.held = held
        self.heartbeat = heartbeat
        self.lost: str | None = None

    async def _beat(self) -> None:
        if self.heartbeat is None:
            return
        try:
            await self.heartbeat()
        except ClusterUnavailable as error:
            log.warning("cluster.node.heartbeat_failed", error=str(error))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.lost is not None:
            raise LeaseLost(self.lost)
        task_status.started()
        period = self.leases.ttl / 3
        while True:
            await self._beat()
            await trio.sleep(period)  # renewal period: a timer, not a wait for a condition
            for shard, lease in list(self.held.items()):
                try:
                    self.held[shard] = await self.leases.renew(lease)
                except LeaseLost as error:
                    self.lost = str(error)
                    raise
                except ClusterUnavailable as error:
                    if trio.current_time() >= lease.valid_until:
                        self.lost = (
                            f"lease {lease.key} expired while NATS did not answer ({error});"
                            " this node stops deciding for its shards"
                        )
                        raise LeaseLost(self.lost) from error
                    log.warning("cluster.lease.renew_failed", key=lease.key, error=str(error))


async def _claim(leases: Leases, shards: Sequence[int], node: str) -> dict[int, Lease]:
    held: dict[int, Lease] = {}
    for shard in shards:
        try:
            held[shard] = await leases.acquire(lease_key(shard), node)
            continue
        except LeaseHeld as error:
            holder, revision = error.holder, error.revision
        if holder == node and revision is not None:
            # This node's previous process (killed) held it: node names are unique, so
            # nobody else decides for the shard; take it over at once rather than wait
            # for the lease to expire.
            try:
                held[shard] = await leases.take_over(lease_key(shard), node, revision)
                continue
            except LeaseHeld:
                pass
        log.info("cluster.shard.held_elsewhere", shard=shard, holder=holder)
    return held


def _shard_tree(cell: Cell, applier: ShardApplier) -> sv.Supervisor:
    tree = sv.Supervisor(
        [*cell.child_specs(), sv.task_spec("applier", applier.run)],
        strategy=sv.Strategy.REST_FOR_ONE,
        name=cell.name,
    )
    cell.attach(tree)
    return tree


async def serve_node(config: Config) -> None:
    """Run this node until SIGINT or SIGTERM (see the module doc). Raises
    :class:`~meterd.startup.StartupFailed` or :class:`~meterd.startup.DaemonFailed`."""
    cluster = config.cluster
    if cluster is None:
        raise ValueError("serve_node needs a [cluster] table")
    view = cluster_view(config)
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    prepare_paths(view)
    with hold_store(view):
        try:
            create_shards(view)
        except (OSError, sqlite3.Error) as error:
            raise StartupFailed(f"store.path {config.store_path}: {error}") from None
        async with open_bridge(name=f"nats-{cluster.node}") as bridge:
            try:
                connection = await connect(bridge, list(cluster.nats), name=cluster.node)
                provisioned = await provision(connection, cluster)
                registry = await NodeRegistry.open(connection, ttl=cluster.lease_ttl.seconds)
                held = await _claim(provisioned.leases, range(view.partitions.shards), cluster.node)
            except (ClusterUnavailable, StreamMismatch) as error:
                raise StartupFailed(f"cluster.nats {list(cluster.nats)}: {error}") from None
            try:
                await _run(view, connection, provisioned.leases, held, registry)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for lease in held.values():
                        try:
                            await provisioned.leases.release(lease)
                        except (LeaseLost, ClusterUnavailable) as error:
                            log.info("cluster.lease.not_released", key=lease.key, error=str(error))


async def _run(
    config: Config,
    connection: Connection,
    leases: Leases,
    held: dict[int, Lease],
    registry: NodeRegistry,
) -> None:
    cluster = config.cluster
    assert cluster is not None
    cells: dict[int, Cell] = {}
    appliers: dict[int, ShardApplier] = {}
    shard_trees: list[sv.Supervisor] = []
    for shard in sorted(held):
        files = shard_files(config, shard)
        cell = Cell(
            config,
            store_path=files.store,
            billing_path=files.billing,
            deliveries_path=files.deliveries,
            name=f"shard-{shard:03d}",
            cells=max(1, len(held)),
        )
        applier = appliers[shard] = ShardApplier(connection, cell, shard, config.partitions)
        shard_trees.append(_shard_tree(cell, applier))
        cells[shard] = cell
    gateway = f"{cluster.node}-{os.getpid()}-{time.time_ns() // 1_000_000}"
    links = JetStreamLinks(
        connection,
        gateway,
        config.partitions,
        slice_timeout=config.partitions.slice_timeout.seconds,
        cells=cells,
    )
    submitter = GatewaySubmitter(
        gateway, links, max_in_flight_events=config.ingest.max_in_flight_events, clock=wall_clock_ms
    )
    ingest = IngestServer(config, submitter)
    api = GatewayApi(config, links, ingest)
    node = cluster.node

    async def heartbeat() -> None:
        await registry.heartbeat(node, {shard: (a.applied, a.lag) for shard, a in appliers.items()})

    async def status() -> dict[str, object]:
        return await cluster_status(node, registry, leases, config.partitions)

    api.app = ClusterRoute(api.app, config.api, status)
    keeper = LeaseKeeper(leases, held, heartbeat)
    specs = [
        sv.task_spec("links", links.run),
        sv.task_spec("leases", keeper.run),
        *[tree.as_child() for tree in shard_trees],
        ingest.child_spec(),
        api.child_spec(),
    ]
    root = sv.Supervisor(specs, max_restarts=MAX_RESTARTS, max_seconds=MAX_SECONDS, name="root")
    links.tree = root
    api.root = root
    api.metrics.watch(root, None, None, ingest)
    for cell in cells.values():
        await cell.open()

    def started() -> None:
        log.info(
            "meterd_started",
            version=__version__,
            config=str(config.path),
            node=cluster.node,
            gateway=gateway,
            shards=sorted(held),
        )
        log.info("listening", ingest=ingest.url, api=api.url)

    try:
        await run_until_signalled(root, config, on_started=started)
    finally:
        for cell in cells.values():
            await cell.aclose()
    log.info("meterd_stopped", node=cluster.node)
