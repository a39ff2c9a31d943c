"""``meterd run`` with ``[cluster]``: one node (gateway + the shards whose leases it took) on a
real 3-server NATS cluster; producers' batches acked through the log, totals exact through
the node's API, and kept across a kill -9 of the node."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from pathlib import Path

import httpx
import trio

from meterd.config import Config, load
from tests.cluster.servers import NatsCluster
from tests.partitions.gateway_harness import Lane, gateway, now_ms, write_gateway_config

ACCOUNTS = ["acme", "globex", "initech", "umbrella"]


def node_config(where: Path, nats: NatsCluster, node: str = "n1") -> Config:
    config = write_gateway_config(where, owners=0, count=16, shard_size=4, slice_timeout="10s")
    with config.path.open("a") as file:
        file.write(f'\n[cluster]\nnode = "{node}"\nnats = {json.dumps(nats.urls)}\n')
    return load(config.path)


async def totals(config: Config, accounts: list[str]) -> dict[str, Decimal]:
    found: dict[str, Decimal] = {}
    token = {"Authorization": f"Bearer {config.api.admin_token}"}
    async with httpx.AsyncClient(base_url=f"http://{config.api.listen}", timeout=30) as client:
        for account in accounts:
            answer = await client.get(
                f"/v1/accounts/{account}/usage",
                params={
                    "meter": "dyno.seconds",
                    "from": 0,
                    "to": now_ms() + 86_400_000,
                    "window": "day",
                },
                headers=token,
            )
            assert answer.status_code == 200, answer.text
            rows = answer.json()["rows"]
            if rows:
                found[account] = sum((Decimal(row["value"]) for row in rows), Decimal(0))
    return found


async def test_meterd_run_with_cluster_acks_through_the_log(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    config = node_config(tmp_path / "n1", nats3)
    with trio.fail_after(120):
        await run_twice(config)


async def run_twice(config: Config) -> None:
    async with gateway(config, meterd_run=True, expect_clean_stop=False) as node:
        _, started = await node.wait_for(node.event("meterd_started"))
        assert started["node"] == "n1"
        assert started["shards"] == [0, 1, 2, 3]  # every lease was free: it holds them all
        first = Lane("one", ACCOUNTS)
        await first.run(node.url, node.token("platform"), trio.Event(), limit=60)
        assert first.accepted == 60
        assert await totals(config, ACCOUNTS) == first.expected()
        node.kill9()
    # The node comes back (it takes over the leases its killed process held) and goes on from
    # the positions its stores committed: nothing lost, nothing counted twice.
    async with gateway(config, meterd_run=True) as node:
        _, started = await node.wait_for(node.event("meterd_started"))
        assert started["shards"] == [0, 1, 2, 3]
        await node.wait_for(node.event("cluster.lease.taken_over", key="shard-003"))
        second = Lane("two", ACCOUNTS)
        await second.run(node.url, node.token("platform"), trio.Event(), limit=40)
        assert second.accepted == 40
        expected = first.expected()
        for account, total in second.expected().items():
            expected[account] = expected.get(account, Decimal(0)) + total
        assert await totals(config, ACCOUNTS) == expected


async def test_two_nodes_on_one_nats_cluster(tmp_path: Path, nats3: NatsCluster) -> None:
    """Two nodes: the first takes every shard's lease; the second holds none (every lease is
    held) and is a gateway only. Producers on both are acked, each event counted once by the
    owner on the first node, whatever node it came through."""
    one = node_config(tmp_path / "n1", nats3, "n1")
    two = node_config(tmp_path / "n2", nats3, "n2")
    with trio.fail_after(120):
        async with gateway(one, meterd_run=True) as first:
            _, started = await first.wait_for(first.event("meterd_started"))
            assert started["shards"] == [0, 1, 2, 3]
            async with gateway(two, meterd_run=True) as second:
                _, started = await second.wait_for(second.event("meterd_started"))
                assert started["shards"] == []
                lanes = [Lane("via-1", ACCOUNTS), Lane("via-2", ACCOUNTS)]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        partial(lanes[0].run, limit=50),
                        first.url,
                        first.token("platform"),
                        trio.Event(),
                    )
                    nursery.start_soon(
                        partial(lanes[1].run, limit=50),
                        second.url,
                        second.token("platform"),
                        trio.Event(),
                    )
                assert [lane.accepted for lane in lanes] == [50, 50]
                expected = lanes[0].expected()
                for account, total in lanes[1].expected().items():
                    expected[account] = expected.get(account, Decimal(0)) + total
                assert await totals(one, ACCOUNTS) == expected
