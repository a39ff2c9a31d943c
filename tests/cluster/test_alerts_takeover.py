"""Alerts across the loss of a node (protocol.md §4 and §5): a crossing decided on the node
holding an account's shard is delivered, with the same id and body bytes, by the node that
takes the shard over after ``kill -9`` of the first, which had only failed attempts; a
crossing the first had delivered before its last snapshot is not sent again by the new
owner (one delivered after it is: docs/cluster.md "Not built yet"). On 3 real NATS servers
with two ``meterd run`` nodes and a real local webhook receiver (tests/alerts/receiver.py)
that answers 500 while the test says so."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.config import Config, load
from tests.alerts.receiver import Receiver
from tests.cluster.servers import NatsCluster
from tests.cluster.test_node import node_config
from tests.cluster.test_takeover import (
    SHARDS,
    TTL,
    accounts_per_shard,
    first_holds_all,
    owned,
    wait_lines,
)
from tests.partitions.gateway_harness import Gateway, Lane

SECRET = "whsec-cluster-0123456789"
THRESHOLD = 3  # every account of the lane passes it (its first events are 1, 2, ...)
SNAPSHOT_LINES = ("cluster.snapshot.taken", "cluster.snapshot.deliveries_taken")


def alert_config(
    where: Path, nats: NatsCluster, node: str, url: str, *, snapshot_interval: str | None = None
) -> Config:
    config = node_config(where, nats, node, lease_ttl=TTL)
    with config.path.open("a") as file:
        if snapshot_interval is not None:  # still in the [cluster] table
            file.write(f'snapshot_interval = "{snapshot_interval}"\n')
        file.write(
            f'\n[[webhooks]]\nname = "hook"\nurl = "{url}"\nsecret = "{SECRET}"\n'
            f'\n[[alerts]]\nname = "three"\nmeter = "dyno.seconds"\nperiod = "month"\n'
            f'threshold = "{THRESHOLD}"\nwebhook = "hook"\n'
        )
    return load(config.path)


def bodies(receiver: Receiver) -> dict[str, set[bytes]]:
    """Every body the receiver was sent, by crossing id."""
    with receiver.changed:
        found: dict[str, set[bytes]] = {}
        for request in receiver.received:
            assert request.valid, request
            found.setdefault(request.id, set()).add(request.body)
        return found


async def test_crossings_are_delivered_after_kill9_of_the_deciding_node(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    receiver = Receiver(SECRET, fail_first=10**9)  # every attempt fails until the kill
    receiver.start()
    try:
        configs = {n: alert_config(tmp_path / n, nats3, n, receiver.url) for n in ("n1", "n2")}
        accounts = accounts_per_shard(configs["n1"], 1)  # one account in each shard
        with trio.fail_after(240):
            async with AsyncExitStack() as stack:
                one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
                lane = Lane("via-2", accounts)
                await lane.run(two.url, two.token("platform"), trio.Event(), limit=4 * SHARDS)

                def attempted(r: Receiver) -> bool:  # every crossing tried (and failed) by n1
                    return {x.json["account"] for x in r.received} == set(accounts)

                assert await trio.to_thread.run_sync(receiver.wait_for, attempted)
                before = bodies(receiver)
                assert len(before) == len(accounts)  # one crossing (one id) per account
                one.kill9()
                with receiver.changed:  # from now on the receiver answers 200
                    receiver.fail_first = len(receiver.received)
                await wait_lines([two], lambda: len(owned([two])) == SHARDS, 60)
                assert set(owned([two]).values()) == {"n2"}

                def all_delivered(r: Receiver) -> bool:
                    return {x.id for x in r.received if x.status == 200} == set(before)

                assert await trio.to_thread.run_sync(receiver.wait_for, all_delivered)
                after = bodies(receiver)
                # the same crossings, with the same bytes on every attempt, from either node
                assert set(after) == set(before)
                assert all(len(sent) == 1 for sent in after.values()), after
                crossings: list[dict[str, Any]] = [
                    next(x.json for x in receiver.received if x.id == id) for id in after
                ]
                assert {c["account"] for c in crossings} == set(accounts)
                assert all(c["alert"] == "three" for c in crossings)
    finally:
        receiver.stop()


def lines(node: Gateway, event: str) -> list[dict[str, Any]]:
    return [line for line in node.lines if line.get("event") == event]


async def delivered_by_n1(
    stack: AsyncExitStack, configs: dict[str, Config], receiver: Receiver
) -> tuple[Gateway, Gateway, list[str]]:
    """n1 holding every shard and n2 beside it; one account a shard sent through n2, each
    crossing its threshold, until the receiver has every crossing delivered (200) by n1."""
    accounts = accounts_per_shard(configs["n1"], 1)  # one account (one crossing) a shard
    one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
    lane = Lane("via-2", accounts)
    await lane.run(two.url, two.token("platform"), trio.Event(), limit=4 * SHARDS)

    def delivered(r: Receiver) -> bool:
        return len(r.delivered_ids()) == len(accounts)

    assert await trio.to_thread.run_sync(receiver.wait_for, delivered)
    return one, two, accounts


async def test_crossings_delivered_before_the_last_snapshot_are_not_sent_again(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """n1 delivers every crossing, snapshots each shard with its deliveries, and is killed:
    n2 restores the snapshots, re-decides the crossings from the log and records them
    delivered without sending any (each id reached the receiver once, answered 200)."""
    receiver = Receiver(SECRET)  # answers 200 throughout
    receiver.start()
    try:
        configs = {
            n: alert_config(tmp_path / n, nats3, n, receiver.url, snapshot_interval="1s")
            for n in ("n1", "n2")
        }
        with trio.fail_after(240):
            async with AsyncExitStack() as stack:
                one, two, accounts = await delivered_by_n1(stack, configs, receiver)

                def snapshotted() -> bool:  # each shard's last snapshot knows its crossing
                    last: dict[int, int] = {}
                    for line in one.lines:
                        if line.get("event") in SNAPSHOT_LINES and "delivered" in line:
                            last[int(line["shard"])] = int(line["delivered"] or 0)
                    return last == dict.fromkeys(range(SHARDS), 1)

                await wait_lines([one], snapshotted, 60)
                one.kill9()
                await wait_lines([two], lambda: len(owned([two])) == SHARDS, 60)

                def all_known_or_resent() -> bool:  # every crossing found delivered (or not)
                    known = sum(int(x["crossings"]) for x in lines(two, "delivered_elsewhere"))
                    with receiver.changed:
                        resent = len(receiver.received) > len(accounts)
                    return known == len(accounts) or resent

                await wait_lines([two], all_known_or_resent, 60)
                with receiver.changed:
                    sent = [(x.id, x.status) for x in receiver.received]
                assert len(sent) == len(accounts)  # each id once: none sent again
                assert sorted(sent) == sorted((id, 200) for id in receiver.delivered_ids())
                restored = lines(two, "cluster.snapshot.restored")
                assert sorted(int(x["shard"]) for x in restored) == list(range(SHARDS))
                assert all(x["delivered"] == 1 and x["made_by"] == "n1" for x in restored)
    finally:
        receiver.stop()


@pytest.mark.slow  # documents a limitation (docs/cluster.md "Not built yet"), not a guarantee
async def test_crossings_delivered_after_the_last_snapshot_are_sent_again(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """What the owner delivered after the shard's last snapshot (here: none was taken, the
    interval is the default 5 minutes) is known only on the lost node: the new owner sends
    it again, the same id and bytes, which a receiver deduping by id drops."""
    receiver = Receiver(SECRET)  # answers 200 throughout
    receiver.start()
    try:
        configs = {n: alert_config(tmp_path / n, nats3, n, receiver.url) for n in ("n1", "n2")}
        with trio.fail_after(240):
            async with AsyncExitStack() as stack:
                one, _, _ = await delivered_by_n1(stack, configs, receiver)
                before = bodies(receiver)
                one.kill9()

                def twice(r: Receiver) -> bool:
                    ids = [x.id for x in r.received if x.status == 200]
                    return all(ids.count(id) >= 2 for id in before)

                assert await trio.to_thread.run_sync(receiver.wait_for, twice)
                assert bodies(receiver) == before  # nothing new, the same bytes
    finally:
        receiver.stop()
