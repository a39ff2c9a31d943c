"""Which nodes are in the cluster and what they hold: ``GET /v1/cluster`` (protocol.md §5).

Every node writes, every ``lease_ttl / 3``, one entry of the KV bucket :data:`NODES` under its
name: the shards it holds with each one's applied sequence and lag. The bucket's TTL is
``lease_ttl``: the entry of a node that stopped writing (killed, paused, cut off) expires, so
the live nodes are the entries present (no wall clocks compared). Placement hashes shards
over them (:mod:`._placement`). :func:`cluster_status` reads that bucket and the shard leases
(owner and epoch: the revision that started the owner's tenure) and builds the §5 document,
one row per partition (a partition's owner, epoch, applied sequence and lag are its
shard's). A node holding a lease without a live entry is listed ``down``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

import nats.js.errors
from nats.js.kv import KeyValue

import supervisors as sv
from meterd.api.cluster import ClusterNode, ClusterPartition, ClusterStatus
from meterd.config import PartitionsConfig

from ._lease import Leases, open_ttl_bucket
from ._nats import Connection

__all__ = ["NODES", "NodeRegistry", "cluster_status", "node_tree"]

NODES: Final = "meterd-nodes"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeRegistry:
    def __init__(self, connection: Connection, kv: KeyValue, ttl: float) -> None:
        self.connection = connection
        self.ttl = ttl
        self._kv = kv

    @classmethod
    async def open(
        cls, connection: Connection, *, ttl: float, timeout: float = 10.0
    ) -> NodeRegistry:
        replicas = 3 if connection.known_servers >= 3 else 1
        kv = await open_ttl_bucket(
            connection,
            NODES,
            ttl=ttl,
            replicas=replicas,
            timeout=timeout,
            what="[cluster] lease_ttl",
        )
        return cls(connection, kv, ttl)

    async def heartbeat(
        self, node: str, shards: dict[int, tuple[int, int]], *, draining: bool = False
    ) -> None:
        """Write ``node``'s entry: now, and ``shards`` (shard -> (applied_seq, lag)); a
        draining node says so (placement ranks shards over the others)."""
        entry: dict[str, Any] = {
            "at": _now_ms(),
            "shards": {str(s): list(v) for s, v in shards.items()},
        }
        if draining:
            entry["draining"] = True
        value = json.dumps(entry).encode()
        kv = self._kv

        async def put() -> int:
            return await kv.put(node, value)

        await self.connection._run(f"heartbeat of {node} in {NODES}", put)

    async def leave(self, node: str) -> None:
        """Remove ``node``'s entry (a clean stop: its shards are placed elsewhere at once)."""
        kv = self._kv

        async def delete() -> bool:
            return await kv.delete(node)

        await self.connection._run(f"remove {node} from {NODES}", delete)

    async def entries(self) -> dict[str, dict[str, Any]]:
        kv = self._kv

        js = self.connection._jetstream

        async def read() -> dict[str, dict[str, Any]]:
            # The bucket's subjects, not kv.keys(): nats-py's watcher-based listing came
            # back empty under load here.
            prefix = f"$KV.{NODES}."
            info = await js.stream_info(f"KV_{NODES}", subjects_filter=prefix + ">")
            names = [s.removeprefix(prefix) for s in (info.state.subjects or {})]
            found: dict[str, dict[str, Any]] = {}
            for name in names:
                try:
                    entry = await kv.get(name)
                except nats.js.errors.KeyNotFoundError:
                    continue
                try:
                    found[name] = json.loads(entry.value or b"{}")
                except ValueError:
                    continue
            return found

        return await self.connection._run(f"read {NODES}", read)


async def cluster_status(
    node: str, registry: NodeRegistry, leases: Leases, partitions: PartitionsConfig
) -> ClusterStatus:
    """The §5 document (see the module doc), as :mod:`meterd.api.cluster` declares it."""
    entries = await registry.entries()
    found = await leases.entries(f"shard-{shard:03d}" for shard in range(partitions.shards))
    owners: dict[int, tuple[str, int] | None] = {}
    for shard in range(partitions.shards):
        entry = found.get(f"shard-{shard:03d}")
        owners[shard] = None if entry is None else (entry[0], entry[1])
    held: dict[str, int] = {}
    for owner in owners.values():
        if owner is not None:
            held[owner[0]] = held.get(owner[0], 0) + partitions.shard_size
    names = sorted(set(entries) | set(held))
    nodes = [
        ClusterNode(
            name=name,
            status="live" if name in entries else "down",
            partitions=held.get(name, 0),
        )
        for name in names
    ]
    rows = []
    for partition in range(partitions.count):
        shard = partition // partitions.shard_size
        owner = owners[shard]
        applied, lag = 0, 0
        if owner is not None:
            reported = entries.get(owner[0], {}).get("shards", {}).get(str(shard))
            if isinstance(reported, list) and len(reported) == 2:
                applied, lag = int(reported[0]), int(reported[1])
        rows.append(
            ClusterPartition(
                partition=partition,
                owner=None if owner is None else owner[0],
                epoch=0 if owner is None else owner[1],
                applied_seq=applied,
                lag=lag,
            )
        )
    return ClusterStatus(node=node, nodes=nodes, partitions=rows)


def node_tree(
    root: sv.SupervisorCore,
    node: str,
    held: Mapping[int, tuple[int, str | None]],
    report: Mapping[int, tuple[int, int]],
    limit: int,
) -> dict[str, Any]:
    """``GET /v1/tree`` on a node: its own tree (protocol.md §3's shape), the root marked with
    the node's name and each ``shard-SSS`` subtree of a shard it holds now (``held``: shard
    -> (epoch, why it may not decide or None)) with ``shard``, ``epoch``, ``applied_seq``,
    ``lag`` and ``fenced``; ``report``: shard -> (applied_seq, lag)."""
    tree = sv.snapshot(root, limit=limit)
    tree["node"] = node
    names = {f"shard-{shard:03d}": shard for shard in held}
    stack = [tree]
    while stack:
        here = stack.pop()
        shard = names.get(here.get("name", ""))
        if shard is not None:
            epoch, fenced = held[shard]
            applied, lag = report.get(shard, (0, 0))
            here["shard"] = shard
            here["epoch"] = epoch
            here["applied_seq"] = applied
            here["lag"] = lag
            here["fenced"] = fenced
        stack.extend(here.get("children", ()))
    return tree
