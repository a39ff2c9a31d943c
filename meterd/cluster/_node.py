"""``meterd run`` with ``[cluster]``: one node of a cluster on NATS JetStream (docs/cluster.md).

A node is, in one process:

* a **gateway**: ingest and the operator API as with ``[partitions] owners >= 1``, its
  batches split by shard by the existing :class:`~meterd.partitions._gateway.GatewaySubmitter`
  and sent through the log (:class:`~._gateway.JetStreamLinks`); queries for accounts of
  shards held elsewhere are forwarded to their owners;
* the **owner of the shards whose lease it holds**: each shard's cell (its store file in the
  shard layout, billing and deliveries beside it) with a :class:`~._applier.ShardApplier`
  applying its log, started from the shard's latest snapshot when that is newer than the
  local file (:mod:`._snapshot`).

Start: connect to ``[cluster] nats``, provision the stream and the buckets
(:func:`~._log.provision`, the node registry, snapshots, closed periods), create the shard
files it lacks, read the drain mark (:class:`~._drain.DrainMark`), and run the tree::

    root (one_for_one)
    ├── links                 verdicts for this node's gateway (core NATS)
    ├── shards                (dynamic) one tree per shard held:
    │   └── shard-SSS         (rest_for_one) store-writer, accounts, deliveries, applier,
    │                         queries, snapshots
    ├── placement             a round every lease_ttl / 3 (:mod:`._placement`)
    ├── ingest
    └── api

Which shards a node holds is the placement rounds' decision: renewals of its leases,
rendezvous ranking over the live nodes (free shards taken, a dead node's taken over once
its leases expire, shards handed over by snapshot to a node that joins or away from a
draining one). A node whose lease of a shard is refused, or not renewed before its fence's
deadline, stops that shard at once; the others keep running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from functools import partial
from typing import Any, Final

import structlog
import trio

import supervisors as sv
from meterd import __version__
from meterd.api.cluster import ClusterStatus
from meterd.billing import Period
from meterd.config import Config
from meterd.gateway import GatewayApi
from meterd.ingest.server import IngestServer, wall_clock_ms
from meterd.partitions._cell import Cell
from meterd.partitions._gateway import GatewaySubmitter
from meterd.partitions._layout import shard_files
from meterd.partitions._migrate import create_shards
from meterd.startup import StartupFailed, hold_store, prepare_paths, run_until_signalled

from ._api import ClusterRoute
from ._applier import ShardApplier
from ._bridge import open_bridge
from ._closes import ShardCloser, publish_closes
from ._corrections import ShardJournal
from ._drain import DrainMark, DrainMarkUnreadable, DrainRoute
from ._gateway import JetStreamLinks
from ._lease import Leases
from ._log import provision
from ._nats import ClusterUnavailable, Connection, StreamMismatch, connect
from ._periods import ClosedPeriods
from ._placement import Fence, Placement, lease_key
from ._registry import NodeRegistry, cluster_status, node_tree
from ._snapshot import Restored, SnapshotInvalid, Snapshots

__all__ = ["cluster_view", "lease_key", "serve_node"]

log = structlog.get_logger("meterd.cluster.node")

MAX_RESTARTS: Final = 5
MAX_SECONDS: Final = 10.0


def cluster_view(config: Config) -> Config:
    """``config`` as the shard layout sees it: shard files (``[partitions] owners`` read as
    1: the node itself is the owner of the shards it holds)."""
    partitions = dataclasses.replace(config.partitions, owners=max(1, config.partitions.owners))
    return dataclasses.replace(config, partitions=partitions)


class _Shards:
    """Starts and stops shard trees under the ``shards`` dynamic supervisor (for
    :class:`~._placement.Placement`); ``cells`` is the gateway's view of them."""

    def __init__(
        self,
        config: Config,
        connection: Connection,
        links: JetStreamLinks,
        snapshots: Snapshots | None = None,
        periods: ClosedPeriods | None = None,
    ) -> None:
        self.config = config
        self.connection = connection
        self.links = links
        self.snapshots = snapshots
        self.periods = periods  # the cluster's closed billing periods (every shard's billing)
        self.supervisor = sv.DynamicSupervisor(
            name="shards", max_restarts=MAX_RESTARTS, max_seconds=MAX_SECONDS
        )
        self.cells: dict[int, Cell] = {}
        self.appliers: dict[int, ShardApplier] = {}

    def replaying(self, shard: int) -> bool:
        """Whether the cell of ``shard`` has not yet reached the end of its log since this
        node started it (a takeover's replay): it may not count every acknowledged event."""
        applier = self.appliers.get(shard)
        return applier is not None and applier.caught_up is None

    async def start(self, shard: int, fence: Fence) -> _Handle:
        config = self.config
        restored = Restored(0, 0)
        # A newer snapshot replaces the local store (and billing) file and tells the local
        # deliveries database which crossings were delivered: before the cell exists, so no
        # delivery service has that database open or has followed the outbox yet.
        if self.snapshots is not None:
            files = shard_files(config, shard)
            restored = await self.snapshots.restore(
                shard, files.store, files.billing, files.deliveries
            )
        cell = Cell.for_shard(config, shard, cells=config.partitions.shards)
        applier = ShardApplier(
            self.connection, cell, shard, config.partitions, fence=fence, covered=restored.covered
        )
        cell.billing.shared_periods = self.periods
        node = self.config.cluster.node if self.config.cluster is not None else "node"
        timeout = config.partitions.slice_timeout.seconds
        cell.billing.journal = ShardJournal(  # corrections go through the shard's log
            self.connection, shard, applier, node, timeout=timeout
        )
        if self.periods is not None:  # and so do a month's closings
            cell.billing.closes = ShardCloser(
                self.connection, shard, applier, cell.billing.db.closure, node, timeout=timeout
            )
        await cell.open()
        try:
            queries = sv.task_spec(
                "queries",
                partial(self.links.serve_queries, shard, lambda: fence.check() is None),
            )
            extra = [queries]
            if self.snapshots is not None:
                extra.append(sv.task_spec("snapshots", partial(self.periodic, shard, cell, fence)))
            ref = await self.supervisor.start_child(
                _shard_tree(cell, applier, *extra).as_child(lease_key(shard))
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await cell.aclose()
            raise
        self.cells[shard] = cell
        self.appliers[shard] = applier
        return _Handle(self, shard, cell, ref, applier)

    def report(self) -> dict[int, tuple[int, int]]:
        return {shard: (a.applied, a.lag) for shard, a in self.appliers.items()}

    async def snapshot(self, shard: int, epoch: int) -> None:
        """Snapshot the store of ``shard`` (stopped or running); a failure is logged: the
        next owner then restores an older snapshot and replays more of the log."""
        if self.snapshots is None:
            return
        try:
            files = shard_files(self.config, shard)
            await self.snapshots.take(
                shard,
                files.store,
                epoch=epoch,
                billing_path=files.billing,
                deliveries_path=files.deliveries,
            )
        except (
            ClusterUnavailable,
            SnapshotInvalid,
            sqlite3.Error,
            OSError,
            trio.TooSlowError,
        ) as error:
            log.warning(
                "cluster.snapshot.failed",
                shard=shard,
                epoch=epoch,
                error=str(error) or type(error).__name__,
                hint="the next owner restores the previous snapshot and replays more of the"
                " log; the next interval tries again",
            )

    async def periodic(
        self,
        shard: int,
        cell: Cell,
        fence: Fence,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every ``[cluster] snapshot_interval``, while the lease holds: a snapshot."""
        cluster = self.config.cluster
        assert cluster is not None
        task_status.started()
        while True:
            await trio.sleep(cluster.snapshot_interval.seconds)  # the interval: a timer
            if fence.check() is None:
                await self.snapshot(shard, fence.epoch)


class _Handle:
    def __init__(
        self, shards: _Shards, shard: int, cell: Cell, ref: object, applier: ShardApplier
    ) -> None:
        self.shards = shards
        self.shard = shard
        self.cell = cell
        self.ref = ref
        self.applier = applier

    async def quiesce(self) -> None:
        """Before a handoff: read no more of the log; what was read committed, answered."""
        await self.applier.quiesce()

    def running(self) -> bool:
        try:
            self.shards.supervisor.child_info(lease_key(self.shard))
        except sv.NoSuchChild:
            return False
        return True

    async def stop(self) -> None:
        self.shards.cells.pop(self.shard, None)
        self.shards.appliers.pop(self.shard, None)
        with trio.CancelScope(shield=True):
            with contextlib.suppress(sv.NoSuchChild):
                await self.shards.supervisor.terminate_child(self.ref)
            await self.cell.aclose()


def _shard_tree(cell: Cell, applier: ShardApplier, *extra: sv.ChildSpec) -> sv.Supervisor:
    tree = sv.Supervisor(
        [*cell.child_specs(), sv.task_spec("applier", applier.run), *extra],
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
                snapshots = await Snapshots.open(connection, cluster.node)
                periods = await ClosedPeriods.open(connection)
            except (ClusterUnavailable, StreamMismatch) as error:
                raise StartupFailed(f"cluster.nats {list(cluster.nats)}: {error}") from None
            await _run(view, connection, provisioned.leases, registry, snapshots, periods)


async def _run(
    config: Config,
    connection: Connection,
    leases: Leases,
    registry: NodeRegistry,
    snapshots: Snapshots | None = None,
    periods: ClosedPeriods | None = None,
) -> None:
    cluster = config.cluster
    assert cluster is not None
    gateway = f"{cluster.node}-{os.getpid()}-{time.time_ns() // 1_000_000}"
    cells: dict[int, Cell] = {}
    links = JetStreamLinks(
        connection,
        gateway,
        config.partitions,
        slice_timeout=config.partitions.slice_timeout.seconds,
        cells=cells,
    )
    shards = _Shards(config, connection, links, snapshots, periods)
    shards.cells = links.cells = cells  # the gateway answers queries from the cells it holds
    links.replaying = shards.replaying  # ... once each has caught up with its log
    placement = Placement(
        cluster.node,
        leases,
        registry,
        config.partitions.shards,
        start=shards.start,
        report=shards.report,
        observe=links.observe,
        rebalance=cluster.rebalance,
        handoff=shards.snapshot,
    )
    submitter = GatewaySubmitter(
        gateway, links, max_in_flight_events=config.ingest.max_in_flight_events, clock=wall_clock_ms
    )
    ingest = IngestServer(config, submitter)
    api = GatewayApi(config, links, ingest)
    node = cluster.node

    async def status() -> ClusterStatus:
        return await cluster_status(node, registry, leases, config.partitions)

    def tree(limit: int) -> dict[str, Any]:
        held = {s: (h.fence.epoch, h.fence.check()) for s, h in placement.held.items()}
        return node_tree(root, node, held, shards.report(), limit)

    async def logged(period: Period, by: str, at: int) -> None:
        await publish_closes(
            connection,
            period,
            range(config.partitions.shards),
            by=by,
            at=at,
            node=node,
            timeout=config.partitions.slice_timeout.seconds,
        )

    api.app = ClusterRoute(
        api.app, config.api, status, node=node, periods=periods, tree=tree, logged=logged
    )

    def drain_state() -> dict[str, object]:
        return {
            "node": node,
            "draining": placement.draining,
            "shards": sorted(placement.held),
            "handing_over": sorted(placement.handing),
        }

    mark = DrainMark.beside(config.store_path, node)
    try:
        drained = await trio.to_thread.run_sync(mark.load)
    except DrainMarkUnreadable as error:
        raise StartupFailed(str(error)) from None
    if drained:
        log.info(
            "cluster.node.drained_at_start",
            node=node,
            mark=str(mark.path),
            hint="`meterd cluster drain --undo` (DELETE /v1/cluster/drain) lifts it",
        )
        placement.drain(True)  # before the first round: it takes no shard

    async def drain(draining: bool) -> None:
        await trio.to_thread.run_sync(mark.save, draining)  # durable before the answer
        placement.drain(draining)

    api.app = DrainRoute(api.app, config.api, drain, drain_state)
    specs = [
        sv.task_spec("links", links.run),
        shards.supervisor.as_child("shards"),
        sv.task_spec("placement", placement.run),
        ingest.child_spec(),
        api.child_spec(),
    ]
    root = sv.Supervisor(specs, max_restarts=MAX_RESTARTS, max_seconds=MAX_SECONDS, name="root")
    links.tree = root
    api.root = root
    api.metrics.watch(root, None, None, ingest)

    def started() -> None:
        log.info(
            "meterd_started",
            version=__version__,
            config=str(config.path),
            node=cluster.node,
            gateway=gateway,
            shards=sorted(placement.held),
        )
        log.info("listening", ingest=ingest.url, api=api.url)

    try:
        await run_until_signalled(root, config, on_started=started)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await placement.release_all()
        for cell in list(cells.values()):
            with trio.CancelScope(shield=True):
                await cell.aclose()
    log.info("meterd_stopped", node=cluster.node)
