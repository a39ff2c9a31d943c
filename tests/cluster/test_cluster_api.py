"""The operator's views of a cluster: ``GET /v1/cluster`` (protocol.md §5) declared in
``/openapi.json`` and answered in its model's shape, a node listed ``down`` while it holds
leases after its registry entry expired, and ``/v1/tree`` showing the node's own tree with
the shards it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import trio

from meterd.api.cluster import ClusterStatus
from meterd.cluster import AsyncioBridge, Leases, connect
from meterd.cluster._registry import NodeRegistry, cluster_status
from tests.cluster.servers import NatsCluster
from tests.cluster.test_forward import call
from tests.cluster.test_node import SHORT_TTL, cluster_doc, node_config
from tests.cluster.test_takeover import SHARDS, owned, wait_lines
from tests.partitions.gateway_harness import gateway

SECTION_5_KEYS = {"node", "nodes", "partitions"}
NODE_KEYS = {"name", "status", "partitions"}
PARTITION_KEYS = {"partition", "owner", "epoch", "applied_seq", "lag"}


def check_shape(doc: dict[str, Any], partitions: int) -> ClusterStatus:
    """``doc`` as protocol.md §5 writes it: exactly its keys, every partition in order."""
    assert set(doc) == SECTION_5_KEYS
    assert all(set(node) == NODE_KEYS for node in doc["nodes"])
    assert all(set(row) == PARTITION_KEYS for row in doc["partitions"])
    assert [row["partition"] for row in doc["partitions"]] == list(range(partitions))
    return msgspec.convert(doc, ClusterStatus, strict=True)


def shard_nodes(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    stack = [tree]
    while stack:
        here = stack.pop()
        if "shard" in here:
            found[here["name"]] = here
        stack.extend(here.get("children", ()))
    return found


def names(tree: dict[str, Any]) -> list[str]:
    out, stack = [], [tree]
    while stack:
        here = stack.pop()
        out.append(here["name"])
        stack.extend(here.get("children", ()))
    return out


async def test_cluster_view_tree_and_document_on_real_nodes(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    one = node_config(tmp_path / "n1", nats3, "n1", lease_ttl=SHORT_TTL)
    two = node_config(tmp_path / "n2", nats3, "n2", lease_ttl=SHORT_TTL)
    partitions = one.partitions.count
    with trio.fail_after(180):
        async with gateway(one, meterd_run=True, expect_clean_stop=False) as first:
            await first.wait_for(first.event("meterd_started"))
            async with gateway(two, meterd_run=True) as second:
                await second.wait_for(second.event("meterd_started"))
                # the operation is in the served document, with its model's schema
                document = (await call(two, "GET", "/openapi.json")).json()
                operation = document["paths"]["/v1/cluster"]["get"]
                assert operation["operationId"] == "cluster"
                answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
                assert answer == {"$ref": "#/components/schemas/ClusterStatus"}
                schema = document["components"]["schemas"]["ClusterStatus"]
                assert set(schema["required"]) == SECTION_5_KEYS
                # both nodes answer the same cluster, in the §5 shape
                for config, name in ((one, "n1"), (two, "n2")):
                    status = check_shape(await cluster_doc(config), partitions)
                    assert status.node == name
                    assert {(n.name, n.status, n.partitions) for n in status.nodes} == {
                        ("n1", "live", partitions),
                        ("n2", "live", 0),
                    }
                    assert {row.owner for row in status.partitions} == {"n1"}
                    assert all(row.epoch > 0 for row in status.partitions)
                # /v1/tree: the node's own tree; n1's shards marked, n2 holds none
                tree = (await call(one, "GET", "/v1/tree")).json()
                assert tree["node"] == "n1"
                marked = shard_nodes(tree)
                assert sorted(marked) == [f"shard-{s:03d}" for s in range(SHARDS)]
                assert all(m["epoch"] > 0 and m["fenced"] is None for m in marked.values())
                assert {m["shard"] for m in marked.values()} == set(range(SHARDS))
                assert "owner-0" not in names(tree)  # the node's tree, not grafted twice
                assert "applier" in names(tree)
                other = (await call(two, "GET", "/v1/tree", params={"limit": 5})).json()
                assert other["node"] == "n2"
                assert shard_nodes(other) == {}
                bad = await call(two, "GET", "/v1/tree", params={"limit": -1})
                assert bad.status_code == 400
                assert bad.json()["error"]["parameter"] == "limit"
                # kill -9 of n1: listed (down, then its shards move) until it holds nothing
                first.kill9()
                seen: list[ClusterStatus] = []
                while True:
                    status = check_shape(await cluster_doc(two), partitions)
                    seen.append(status)
                    holders = {row.owner for row in status.partitions}
                    listed = {n.name: n for n in status.nodes}
                    if "n1" in holders:
                        assert "n1" in listed  # never dropped while it holds a partition
                    if holders == {"n2"}:
                        break
                    await trio.sleep(0.05)  # poll the condition (as servers.until does)
                await wait_lines([second], lambda: len(owned([second])) == SHARDS, 30)
                final = check_shape(await cluster_doc(two), partitions)
                assert [(n.name, n.status, n.partitions) for n in final.nodes] == [
                    ("n2", "live", partitions)
                ]
                print(
                    "statuses of n1 seen after the kill:",
                    [next((n.status for n in s.nodes if n.name == "n1"), "dropped") for s in seen],
                )


async def test_a_node_whose_entry_expired_is_down_until_its_shards_moved(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    """On real NATS, with a registry TTL shorter than the leases': n1 stops writing its entry
    (a kill -9 as the bucket sees it) while its leases live: listed ``down`` with its
    partitions; its shards move to n2: n1 is dropped."""
    partitions = node_config(tmp_path / "cfg", nats3).partitions
    connection = await connect(bridge, nats3.urls, name="test")
    registry = await NodeRegistry.open(connection, ttl=1)
    leases = await Leases.open(connection, "test-leases", ttl=60)
    keys = [f"shard-{s:03d}" for s in range(partitions.shards)]
    held = [await leases.acquire(key, "n1") for key in keys]
    await registry.heartbeat("n1", {s: (0, 0) for s in range(partitions.shards)})
    with trio.fail_after(60):
        while True:
            await registry.heartbeat("n2", {})
            status = await cluster_status("n2", registry, leases, partitions)
            state = {n.name: (n.status, n.partitions) for n in status.nodes}
            assert state["n1"][1] == partitions.count
            if state["n1"][0] == "down":
                break
            await trio.sleep(0.1)  # poll: the entry expires in NATS, nothing signals it
        assert state == {"n1": ("down", partitions.count), "n2": ("live", 0)}
        check_shape(msgspec.to_builtins(status), partitions.count)
        for lease in held:
            await leases.release(lease)
        for key in keys:
            await leases.acquire(key, "n2")
        status = await cluster_status("n2", registry, leases, partitions)
        assert [(n.name, n.status, n.partitions) for n in status.nodes] == [
            ("n2", "live", partitions.count)
        ]
