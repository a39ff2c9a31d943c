"""kill -9 of the NATS server leading meterd's log, under load through two meterd nodes.

3 NATS servers, 2 ``meterd run`` nodes (n1 holds every shard), a producer on each node:
the log's stream leader is killed; acks pause while JetStream elects another leader (the
gateways answer ``unavailable`` meanwhile, producers re-send) and then resume; in the end
every event sent was acked and every acked event is counted exactly once.
"""

from __future__ import annotations

from pathlib import Path

import trio

from meterd.cluster import STREAM, AsyncioBridge, ClusterUnavailable, Connection, connect
from tests.cluster.servers import NatsCluster
from tests.cluster.test_node import node_config
from tests.cluster.test_takeover import accounts_per_shard, lanes_running, totals_from_owners
from tests.partitions.gateway_harness import Lane, gateway, merged


async def log_leader(conn: Connection) -> str:
    """The server leading meterd's log stream (asked again while one is being elected)."""
    with trio.fail_after(60):
        while True:
            try:
                leader = (await conn.stream_info(STREAM)).leader
            except ClusterUnavailable:
                leader = None
            if leader is not None:
                return leader
            await trio.sleep(0.1)  # an election is going on: ask again shortly


async def test_kill9_of_the_log_leader_pauses_acks_and_loses_nothing(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    # A publish the killed leader never answers is given up after 3 s (the batch answered
    # unavailable, re-sent), not after the 10 s of the other tests: acks resume ~7 s after
    # the kill instead of ~11 s.
    configs = {n: node_config(tmp_path / n, nats3, n, slice_timeout="3s") for n in ("n1", "n2")}
    accounts = accounts_per_shard(configs["n1"], 2)
    conn = await connect(bridge, nats3.urls, name="test")
    with trio.fail_after(240):
        async with gateway(configs["n1"], meterd_run=True) as one:
            await one.wait_for(one.event("meterd_started"))
            async with gateway(configs["n2"], meterd_run=True) as two:
                await two.wait_for(two.event("meterd_started"))
                lanes = [Lane("via-1", accounts), Lane("via-2", accounts)]
                async with lanes_running([(one, lanes[0]), (two, lanes[1])]):
                    for lane in lanes:
                        await lane.wait_acks(5)
                    leader = await log_leader(conn)
                    nats3.server(leader).kill()
                    killed = trio.current_time()
                    for lane in lanes:  # acks resume on both nodes, through a new leader
                        await lane.wait_acks(lane.acks + 10)
                    resumed = trio.current_time() - killed
                    assert await log_leader(conn) != leader
                assert sum(lane.acked for lane in lanes) == sum(len(lane.sent) for lane in lanes)
                assert await totals_from_owners(configs, accounts, configs["n2"]) == merged(lanes)
    print(f"acks resumed {resumed:.1f} s after kill -9 of the log leader {leader}")
