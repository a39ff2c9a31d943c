"""Takeover and fencing on real servers: 3 NATS servers and 2-3 ``meterd run`` nodes.

* kill -9 of the node owning every shard: live nodes own its shards within 15 s (leases
  expire, rendezvous hashing over the live nodes places them, each new owner rebuilds the
  shard by replaying its log), the producers on the other nodes re-send what was answered
  ``unavailable``, and every acked event is counted exactly once.
* SIGSTOP of the owner past its lease: another node takes over and applies; after SIGCONT
  the paused node commits nothing more (its shard stores' log positions do not move) and
  gives its shards up.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio

from meterd.cluster import STREAM, AsyncioBridge, Connection, connect, log_subject
from meterd.cluster._node import cluster_view
from meterd.cluster._placement import rendezvous
from meterd.config import Config
from meterd.partitions import Slice, decode, shard_files, shard_of
from tests.cluster.servers import NatsCluster, until
from tests.cluster.test_node import SHORT_TTL, cluster_doc, node_config, usage_total
from tests.partitions.gateway_harness import Gateway, Lane, gateway, merged

TTL = SHORT_TTL
SHARDS = 4  # count 16, shard_size 4 (node_config)


def accounts_per_shard(config: Config, n: int) -> list[str]:
    """``n`` account names in each shard."""
    found: dict[int, list[str]] = {s: [] for s in range(SHARDS)}
    i = 0
    while any(len(names) < n for names in found.values()):
        name = f"acct-{i}"
        names = found[shard_of(name, config.partitions)]
        if len(names) < n:
            names.append(name)
        i += 1
    return [name for names in found.values() for name in names]


async def wait_lines(nodes: Sequence[Gateway], done: Callable[[], bool], timeout: float) -> None:
    """Until ``done()`` holds, looked at whenever one of ``nodes`` logs a line. On a timeout
    the failure shows each node's last cluster lines (what it was doing instead)."""
    try:
        with trio.fail_after(timeout):
            while True:
                # The events are taken before done() looks: a line read after the look sets
                # one of them (a node's reader sets its event, then makes a new one).
                news = [node._new for node in nodes]
                if done():
                    return
                async with trio.open_nursery() as nursery:

                    async def one(new: trio.Event) -> None:
                        await new.wait()
                        nursery.cancel_scope.cancel()

                    for new in news:
                        nursery.start_soon(one, new)
    except trio.TooSlowError:
        shown = {
            index: [
                line for line in node.lines if str(line.get("event", "")).startswith("cluster.")
            ][-40:]
            for index, node in enumerate(nodes)
        }
        raise AssertionError(
            f"not done within {timeout} s; the nodes' last lines: {shown}"
        ) from None


def owned(nodes: Sequence[Gateway]) -> dict[int, str]:
    """shard -> the node that last logged it owned it."""
    found: dict[int, str] = {}
    for node in nodes:
        for line in node.lines:
            if line.get("event") == "cluster.shard.owned":
                found[int(line["shard"])] = str(line["node"])
    return found


async def totals_from_owners(
    configs: dict[str, Config], accounts: list[str], via: Config
) -> dict[str, Decimal]:
    """Each account's total, asked of the node that owns its shard (per ``/v1/cluster``),
    once that node serves it (a shard taken over during the test may still be replaying)."""
    doc = await cluster_doc(via)
    owner_of = {row["partition"] // 4: row["owner"] for row in doc["partitions"]}
    found: dict[str, Decimal] = {}
    for account in accounts:
        config = configs[owner_of[shard_of(account, via.partitions)]]
        async with httpx.AsyncClient(base_url=f"http://{config.api.listen}", timeout=30) as client:
            total = await usage_total(client, config, account, settling=60)
        if total:
            found[account] = total
    return found


@asynccontextmanager
async def lanes_running(
    targets: Sequence[tuple[Gateway, Lane]],
) -> AsyncIterator[trio.Event]:
    """Each lane sending to its node until the yielded event is set, then flushed."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for node, lane in targets:
            nursery.start_soon(lane.run, node.url, node.token("platform"), stop)
        yield stop
        stop.set()


async def first_holds_all(
    stack: AsyncExitStack, first: Config, *others: Config
) -> tuple[Gateway, ...]:
    """``meterd run`` on ``first`` (it takes every shard; the test may kill it), then on each
    of ``others`` (started once ``first`` holds them all, so they take none; started side by
    side, each waited for after): the nodes."""
    one = await stack.enter_async_context(gateway(first, meterd_run=True, expect_clean_stop=False))
    _, started = await one.wait_for(one.event("meterd_started"))
    assert started["shards"] == list(range(SHARDS))
    nodes = [one]
    for config in others:
        nodes.append(
            await stack.enter_async_context(gateway(config, meterd_run=True, listening=False))
        )
    for node in nodes[1:]:
        _, started = await node.wait_for(node.event("meterd_started"))
        assert started["shards"] == []
        await node.wait_for(node.event("listening"))
    return tuple(nodes)


def positions(config: Config) -> dict[int, int]:
    """The log position each of the node's shard stores committed (read-only)."""
    view = cluster_view(config)
    found: dict[int, int] = {}
    for shard in range(SHARDS):
        path = shard_files(view, shard).store
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT max(seq) FROM log_positions").fetchone()
        finally:
            conn.close()
        found[shard] = int(row[0] or 0)
    return found


async def takeover_run(
    tmp_path: Path, nats: NatsCluster, *, acks_after: int, ttl: str = TTL
) -> float:
    names = ("n1", "n2", "n3")
    configs = {n: node_config(tmp_path / n, nats, n, lease_ttl=ttl) for n in names}
    accounts = accounts_per_shard(configs["n1"], 2)
    async with AsyncExitStack() as stack:
        one, two, three = await first_holds_all(stack, *configs.values())
        lanes = [Lane("via-2", accounts), Lane("via-3", accounts)]
        async with lanes_running([(two, lanes[0]), (three, lanes[1])]):
            for lane in lanes:
                await lane.wait_acks(5)
            one.kill9()
            killed = trio.current_time()
            await wait_lines([two, three], lambda: len(owned([two, three])) == SHARDS, 30)
            took = trio.current_time() - killed
            assert set(owned([two, three]).values()) <= {"n2", "n3"}
            for lane in lanes:
                await lane.wait_acks(lane.acks + acks_after)
        # Every event sent was acked in the end (the lanes flush); each counted once.
        assert sum(lane.acked for lane in lanes) == sum(len(lane.sent) for lane in lanes)
        live = {n: configs[n] for n in ("n2", "n3")}
        assert await totals_from_owners(live, accounts, configs["n2"]) == merged(lanes)
        doc = await cluster_doc(configs["n3"])
        assert {row["owner"] for row in doc["partitions"]} <= {"n2", "n3"}
    return took


async def test_kill9_of_the_owner_its_shards_are_taken_within_15s(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    with trio.fail_after(240):
        took = await takeover_run(tmp_path, nats3, acks_after=10)
    print(f"takeover after kill -9: {took:.1f} s (lease_ttl {TTL})")
    assert took < 15


@pytest.mark.slow
async def test_kill9_takeover_campaign(tmp_path: Path, nats3: NatsCluster) -> None:
    """The same with the default lease_ttl (10 s) and a longer load after the takeover."""
    with trio.fail_after(600):
        took = await takeover_run(tmp_path, nats3, acks_after=200, ttl="10s")
    print(f"takeover after kill -9: {took:.1f} s (lease_ttl 10s)")
    assert took < 15


async def log_sequences(connection: Connection) -> dict[tuple[int, int, int], int]:
    """(shard, connection, seq) of every slice in the log -> its stream sequence."""
    found: dict[tuple[int, int, int], int] = {}
    for shard in range(SHARDS):
        async with connection.reader(STREAM, log_subject(shard)) as reader:
            while messages := await reader.fetch(256, timeout=1.0):
                for message in messages:
                    piece = decode(message.data)
                    assert isinstance(piece, Slice)
                    found[(shard, piece.batch.connection, piece.batch.seq)] = message.seq
    return found


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP delivered): state T in /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


async def test_a_paused_owner_decides_nothing_after_the_takeover(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    """n1 owns every shard and is SIGSTOPped past its lease; n2 takes over and applies what
    its producer keeps sending; SIGCONT: n1 must not commit any slice published after it was
    stopped (a commit already under way at the stop may complete: its decision was made
    while the lease held, and is the one the log dictates), must publish no verdict (n2's
    gateway sees none of an old epoch), and gives its shards up."""
    configs = {n: node_config(tmp_path / n, nats3, n, lease_ttl=TTL) for n in ("n1", "n2")}
    accounts = accounts_per_shard(configs["n1"], 2)
    connection = await connect(bridge, nats3.urls, name="test")
    with trio.fail_after(240):
        async with AsyncExitStack() as stack:
            one = await stack.enter_async_context(gateway(configs["n1"], meterd_run=True))
            _, started = await one.wait_for(one.event("meterd_started"))
            assert started["shards"] == list(range(SHARDS))
            two = await stack.enter_async_context(gateway(configs["n2"], meterd_run=True))
            await two.wait_for(two.event("meterd_started"))
            lane = Lane("via-2", accounts)
            async with lanes_running([(two, lane)]):
                await lane.wait_acks(5)
                pid = one.process.pid
                os.kill(pid, signal.SIGSTOP)
                try:
                    await until(lambda: stopped(pid), timeout=10, what="n1 stopped")
                    # n1 has read nothing after this sequence (it is stopped)
                    last_read = (await connection.stream_info(STREAM)).last_seq
                    await wait_lines([two], lambda: len(owned([two])) == SHARDS, 30)
                    # n2 owns and applies everything; slices keep coming while n1 sleeps
                    # (the first acks may be of slices published before the stop, which n2
                    # applied when it replayed the log: wait for new ones in the log)
                    while (await connection.stream_info(STREAM)).last_seq <= last_read + 8:
                        await lane.wait_acks(lane.acks + 1)
                finally:
                    os.kill(pid, signal.SIGCONT)
                # n1 wakes up with slices of its shards in the log it has not applied: its
                # fence lapsed while it was stopped, so it commits none and gives them up.
                for shard in range(SHARDS):
                    await one.wait_for(one.event("cluster.shard.lost", shard=shard))
                await lane.wait_acks(lane.acks + 10)
            after = positions(configs["n1"])
            assert all(seq <= last_read for seq in after.values()), (after, last_read)
            # A verdict n1 had handed to its NATS client before it was stopped may reach n2's
            # gateway after the takeover: the gateway drops it (older epoch). None may be of
            # a slice published after n1 was stopped.
            stale = [
                line for line in two.lines if line.get("event") == "cluster.gateway.stale_verdict"
            ]
            where = await log_sequences(connection)
            for line in stale:
                assert where[(int(line["shard"]), *line["batch"])] <= last_read, line
            assert lane.acked == len(lane.sent)
            assert await totals_from_owners({"n2": configs["n2"]}, accounts, configs["n2"]) == (
                merged([lane])
            )


@pytest.mark.slow  # the default suite joins a node in test_snapshot_takeover.py
async def test_a_node_that_joins_gets_its_share_by_handoff(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """n1 holds every shard under load; n2 joins: within 60 s n1 hands over the shards
    rendezvous hashing ranks n2 first for (n1 stops them, releases; n2 takes and replays),
    the producer on n1 re-sends what was answered unavailable meanwhile, totals exact."""
    configs = {
        n: node_config(tmp_path / n, nats3, n, lease_ttl=TTL, rebalance=True) for n in ("n1", "n2")
    }
    accounts = accounts_per_shard(configs["n1"], 2)
    share = {s for s in range(SHARDS) if rendezvous(["n1", "n2"], s) == "n2"}
    assert 0 < len(share) < SHARDS  # the names split the 4 shards
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
                await lane.wait_acks(5)
                async with gateway(configs["n2"], meterd_run=True) as two:
                    joined = trio.current_time()
                    await wait_lines([two], lambda: set(owned([two])) == share, 60)
                    took = trio.current_time() - joined
                    await lane.wait_acks(lane.acks + 10)
                    stop.set()
                    await flushed.wait()
                    print(f"a joining node got its {len(share)} shards in {took:.1f} s")
                    assert lane.acked == len(lane.sent)
                    assert await totals_from_owners(configs, accounts, configs["n2"]) == (
                        merged([lane])
                    )
                    doc = await cluster_doc(configs["n1"])
                    held = {node["name"]: node["partitions"] for node in doc["nodes"]}
                    assert held == {"n1": 4 * (SHARDS - len(share)), "n2": 4 * len(share)}
