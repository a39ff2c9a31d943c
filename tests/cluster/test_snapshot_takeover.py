"""Restore on takeover and handoff through a snapshot, with ``meterd run`` nodes on 3 real
NATS servers under load:

* kill -9 of the owner after its periodic snapshots: the node that takes its shards (it
  never held them) restores each one's latest snapshot (position S) and replays only the
  slices after S; totals exact;
* a node that joins is handed its share through snapshots: the old owner snapshots each
  shard at the position it stopped at, the new owner restores exactly that position and
  replays what followed; totals exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.cluster import STREAM, AsyncioBridge, Connection, connect, log_subject
from meterd.cluster._placement import rendezvous
from meterd.cluster._snapshot import SNAPSHOTS
from meterd.config import Config, load
from tests.cluster.servers import NatsCluster
from tests.cluster.test_node import node_config
from tests.cluster.test_takeover import (
    SHARDS,
    TTL,
    accounts_per_shard,
    first_holds_all,
    lanes_running,
    owned,
    totals_from_owners,
    wait_lines,
)
from tests.partitions.gateway_harness import Gateway, Lane, gateway, merged


def snap_config(
    where: Path,
    nats: NatsCluster,
    node: str,
    *,
    snapshot_interval: str,
    lease_ttl: str = TTL,
    rebalance: bool = False,
) -> Config:
    config = node_config(where, nats, node, lease_ttl=lease_ttl, rebalance=rebalance)
    with config.path.open("a") as file:
        file.write(f'snapshot_interval = "{snapshot_interval}"\n')
    return load(config.path)


def all_caught_up(node: Gateway) -> bool:
    return len(by_shard(node, "cluster.applier.caught_up")) == SHARDS


def lines(node: Gateway, event: str) -> list[dict[str, Any]]:
    return [line for line in node.lines if line.get("event") == event]


def by_shard(node: Gateway, event: str) -> dict[int, dict[str, Any]]:
    """The last line of ``event`` for each shard."""
    return {int(line["shard"]): line for line in lines(node, event)}


async def subject_sequences(connection: Connection, shard: int) -> list[int]:
    """The stream sequences of shard ``shard``'s slices, in order."""
    found: list[int] = []
    async with connection.reader(STREAM, log_subject(shard)) as reader:
        while messages := await reader.fetch(256, timeout=1.0):
            found.extend(message.seq for message in messages)
    return found


async def check_replayed_only_after(
    connection: Connection, node: Gateway, shards: Sequence[int]
) -> dict[int, tuple[int, int]]:
    """Each of ``shards`` was restored on ``node`` from a snapshot at S > 0, its applier
    started reading at S and replayed exactly the shard's slices in S+1..(what it had read
    when it caught up): shard -> (S, slices replayed)."""
    restored = by_shard(node, "cluster.snapshot.restored")
    caught_up = by_shard(node, "cluster.applier.caught_up")
    found: dict[int, tuple[int, int]] = {}
    for shard in shards:
        seq = int(restored[shard]["seq"])
        line = caught_up[shard]
        assert seq > 0, restored[shard]
        assert line["started_from"] == seq, (line, restored[shard])
        sequences = await subject_sequences(connection, shard)
        after = [s for s in sequences if seq < s <= int(line["read"])]
        assert line["replayed"] == len(after), (line, seq)
        assert len(after) < len([s for s in sequences if s <= int(line["read"])])
        found[shard] = (seq, len(after))
    return found


async def test_kill9_after_a_snapshot_the_new_owner_replays_only_what_followed(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    configs = {n: snap_config(tmp_path / n, nats3, n, snapshot_interval="1s") for n in ("n1", "n2")}
    accounts = accounts_per_shard(configs["n1"], 2)
    connection = await connect(bridge, nats3.urls, name="test")
    with trio.fail_after(240):
        async with AsyncExitStack() as stack:
            one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
            lane = Lane("via-2", accounts)
            async with lanes_running([(two, lane)]):
                await lane.wait_acks(5)
                # Every shard snapshotted with slices in it, then more load, then kill -9.
                await wait_lines(
                    [one],
                    lambda: (
                        all(
                            int(line["seq"]) > 0
                            for line in by_shard(one, "cluster.snapshot.taken").values()
                        )
                        and len(by_shard(one, "cluster.snapshot.taken")) == SHARDS
                    ),
                    60,
                )
                await lane.wait_acks(lane.acks + 5)
                one.kill9()
                killed = time.monotonic()
                await wait_lines(
                    [two], lambda: len(by_shard(two, "cluster.applier.caught_up")) == SHARDS, 60
                )
                took = time.monotonic() - killed
                assert set(owned([two]).values()) == {"n2"}
                await lane.wait_acks(lane.acks + 10)
            assert lane.acked == len(lane.sent)
            assert await totals_from_owners({"n2": configs["n2"]}, accounts, configs["n2"]) == (
                merged([lane])
            )
            replays = await check_replayed_only_after(connection, two, range(SHARDS))
            assert (await connection.stream_info(f"OBJ_{SNAPSHOTS}")).replicas == 3
    print(f"kill -9 to every shard caught up on the new owner: {took:.1f} s; {replays}")


async def test_a_joining_node_is_handed_its_share_through_snapshots(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    """No periodic snapshot (interval 1 h): the only snapshots are the handoffs'. For each
    shard handed over, n1 stopped it, snapshotted it at S and released; n2 restored S and
    replayed from S+1."""
    configs = {
        n: snap_config(tmp_path / n, nats3, n, snapshot_interval="1h", rebalance=True)
        for n in ("n1", "n2")
    }
    accounts = accounts_per_shard(configs["n1"], 2)
    share = {s for s in range(SHARDS) if rendezvous(["n1", "n2"], s) == "n2"}
    connection = await connect(bridge, nats3.urls, name="test")
    with trio.fail_after(240):
        async with gateway(configs["n1"], meterd_run=True) as one:
            _, started = await one.wait_for(one.event("meterd_started"))
            assert started["shards"] == list(range(SHARDS))
            lane = Lane("via-1", accounts)
            stop, flushed = trio.Event(), trio.Event()

            async def produce() -> None:
                await lane.run(one.url, one.token("platform"), stop)
                flushed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                await lane.wait_acks(10)
                async with gateway(configs["n2"], meterd_run=True) as two:
                    await wait_lines(
                        [two],
                        lambda: set(by_shard(two, "cluster.applier.caught_up")) == share,
                        60,
                    )
                    await lane.wait_acks(lane.acks + 10)
                    stop.set()
                    await flushed.wait()
                    assert lane.acked == len(lane.sent)
                    # The old owner quiesced each shard before it stopped: every slice it
                    # committed was answered; the new owner answered the rest.
                    assert lane.unavailable == 0
                    assert await totals_from_owners(configs, accounts, configs["n2"]) == (
                        merged([lane])
                    )
                    taken = by_shard(one, "cluster.snapshot.taken")
                    restored = by_shard(two, "cluster.snapshot.restored")
                    assert set(taken) == set(restored) == share
                    for shard in share:
                        assert restored[shard]["seq"] == taken[shard]["seq"]
                        assert restored[shard]["made_by"] == "n1"
                    handed = by_shard(one, "cluster.shard.handed_over")
                    assert all(handed[shard]["released"] for shard in share)
                    await check_replayed_only_after(connection, two, sorted(share))


@pytest.mark.slow  # with -m slow only (tests/conftest.py)
async def test_takeover_time_with_and_without_a_snapshot(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """Figures for docs/cluster.md: n1 applies a long log (every shard), is killed; n2 takes
    over. Once with no snapshot (interval 1 d: the whole log is replayed), then with
    snapshots every 2 s (the same NATS: its log holds the first run's slices too). The
    time from the kill until every shard caught up on n2."""
    figures: dict[str, tuple[float, int, float, float]] = {}
    acks = int(os.environ.get("METERD_TAKEOVER_ACKS", "1500"))
    every: list[Lane] = []
    for label, interval in (("no snapshot", "1d"), ("snapshot", "2s")):
        where = tmp_path / label.replace(" ", "-")
        configs = {
            n: snap_config(where / n, nats3, n, snapshot_interval=interval) for n in ("n1", "n2")
        }
        accounts = accounts_per_shard(configs["n1"], 2)
        async with AsyncExitStack() as stack:
            one = await stack.enter_async_context(
                gateway(configs["n1"], meterd_run=True, expect_clean_stop=False)
            )
            await one.wait_for(one.event("meterd_started"))
            two = await stack.enter_async_context(gateway(configs["n2"], meterd_run=True))
            await two.wait_for(two.event("meterd_started"))
            lanes = [Lane(f"{label}-{k}", accounts) for k in range(2)]
            every.extend(lanes)
            async with lanes_running([(two, lane) for lane in lanes]):
                for lane in lanes:
                    await lane.wait_acks(acks)
                one.kill9()
                killed = time.monotonic()
                await wait_lines([two], partial(all_caught_up, two), 120)
                took = time.monotonic() - killed
            caught = by_shard(two, "cluster.applier.caught_up").values()
            replayed = sum(int(v["replayed"]) for v in caught)
            replay = max(float(v["seconds"]) for v in caught)
            restore = max(
                [float(v["seconds"]) for v in by_shard(two, "cluster.snapshot.restored").values()]
                or [0.0]
            )
            figures[label] = (took, replayed, replay, restore)
            assert await totals_from_owners({"n2": configs["n2"]}, accounts, configs["n2"]) == (
                merged(every)
            )
    for label, (took, replayed, replay, restore) in figures.items():
        print(
            f"takeover ({label}): {took:.1f} s from the kill to every shard caught up;"
            f" {replayed} slices replayed, longest replay {replay:.2f} s,"
            f" longest restore {restore:.2f} s"
        )
