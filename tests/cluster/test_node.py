"""``meterd run`` with ``[cluster]``: one node (gateway + the shards whose leases it took) on a
real 3-server NATS cluster; producers' batches acked through the log, totals exact through
the node's API, and kept across a kill -9 of the node."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from meterd.config import Config, load
from meterd.partitions import shard_of
from tests.cluster.servers import NatsCluster
from tests.partitions.gateway_harness import Lane, gateway, now_ms, write_gateway_config

ACCOUNTS = ["acme", "globex", "initech", "umbrella"]

# The lease TTL of tests where a node must lose its shards soon (a kill -9, a pause): short
# so a takeover takes seconds, yet long enough that a node starved of CPU on a busy machine
# (renewals every TTL / 3, seen late by ~2 s under load 10) does not lose a lease by accident.
SHORT_TTL = "5s"


def node_config(
    where: Path,
    nats: NatsCluster,
    node: str = "n1",
    *,
    lease_ttl: str = "10s",
    rebalance: bool = False,
    slice_timeout: str = "10s",
) -> Config:
    """A node's config (16 partitions in 4 shards); ``rebalance`` off unless asked, so a node
    that joins takes only free shards (the placement these tests set up stays put)."""
    config = write_gateway_config(
        where, owners=0, count=16, shard_size=4, slice_timeout=slice_timeout
    )
    with config.path.open("a") as file:
        file.write(
            f'\n[cluster]\nnode = "{node}"\nnats = {json.dumps(nats.urls)}\n'
            f'lease_ttl = "{lease_ttl}"\nrebalance = {"true" if rebalance else "false"}\n'
        )
    return load(config.path)


async def cluster_doc(config: Config, *, unavailable_for: float = 30.0) -> dict[str, Any]:
    """``GET /v1/cluster`` of the node of ``config``. A 503 ``unavailable`` (NATS not
    answering in time, e.g. while a stream elects a new leader after a kill) is asked again,
    as the answer says to, for up to ``unavailable_for`` seconds."""
    token = {"Authorization": f"Bearer {config.api.admin_token}"}
    async with httpx.AsyncClient(base_url=f"http://{config.api.listen}", timeout=30) as client:
        assert (await client.get("/v1/cluster")).status_code == 401
        deadline = trio.current_time() + unavailable_for
        while True:
            answer = await client.get("/v1/cluster", headers=token)
            if answer.status_code != 503 or trio.current_time() > deadline:
                break
            assert answer.json()["error"]["code"] == "unavailable", answer.text
            await trio.sleep(0.25)  # NATS's state, in another process: look again soon
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document


async def usage_total(
    client: httpx.AsyncClient, config: Config, account: str, *, settling: float = 0.0
) -> Decimal:
    """The account's total over all time. ``settling``: seconds during which a 503
    ``owner_unavailable`` (a node taking the shard over and replaying its log, which says to
    retry) is asked again, as a client would."""
    deadline = trio.current_time() + settling
    while True:
        answer = await client.get(
            f"/v1/accounts/{account}/usage",
            params={
                "meter": "dyno.seconds",
                "from": 0,
                "to": now_ms() + 86_400_000,
                "window": "day",
            },
            headers={"Authorization": f"Bearer {config.api.admin_token}"},
        )
        retry = answer.status_code == 503 and "owner_unavailable" in answer.text
        if not retry or trio.current_time() >= deadline:
            break
        await trio.sleep(0.2)  # the answer says to retry in a moment
    assert answer.status_code == 200, answer.text
    return sum((Decimal(row["value"]) for row in answer.json()["rows"]), Decimal(0))


async def totals(config: Config, accounts: list[str]) -> dict[str, Decimal]:
    """Each of ``accounts``' total (those with usage), asked of the node of ``config``."""
    found: dict[str, Decimal] = {}
    async with httpx.AsyncClient(base_url=f"http://{config.api.listen}", timeout=30) as client:
        for account in accounts:
            total = await usage_total(client, config, account)
            if total:
                found[account] = total
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
    one = node_config(tmp_path / "n1", nats3, "n1", lease_ttl=SHORT_TTL)
    two = node_config(tmp_path / "n2", nats3, "n2", lease_ttl=SHORT_TTL)
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
                # GET /v1/cluster (§5), on either node: both nodes live, every partition
                # owned by n1 at its lease's revision, applied up to the log (lag 0 once
                # n1's next heartbeat reports it).
                for config in (one, two):
                    doc = await cluster_doc(config)
                    assert config.cluster is not None
                    assert doc["node"] == config.cluster.node
                    assert doc["nodes"] == [
                        {"name": "n1", "status": "live", "partitions": 16},
                        {"name": "n2", "status": "live", "partitions": 0},
                    ]
                    assert [row["partition"] for row in doc["partitions"]] == list(range(16))
                    assert {row["owner"] for row in doc["partitions"]} == {"n1"}
                    assert all(row["epoch"] > 0 for row in doc["partitions"])
                used = {shard_of(account, one.partitions) for account in ACCOUNTS}
                caught_up: list[dict[str, Any]] = []

                async def applied_everywhere() -> bool:
                    rows = (await cluster_doc(two))["partitions"]
                    caught_up[:] = rows
                    return all(
                        row["lag"] == 0
                        and (row["applied_seq"] > 0) == (row["partition"] // 4 in used)
                        for row in rows
                    )

                for _ in range(100):  # 20 s at most
                    if await applied_everywhere():
                        break
                    await trio.sleep(0.2)  # the next heartbeat (every lease_ttl / 3)
                else:
                    raise AssertionError(f"not applied everywhere within 20 s: {caught_up}")
