"""kill -9 of the stream leader of a 3-server JetStream cluster while publishing.

Publishers behave as meterd's gateway will: each message has its own ``Nats-Msg-Id`` and is
re-sent with that id until an ack comes. After the cluster recovers, every message that got an
ack is in the stream exactly once, at the sequence its ack named, and no id is stored twice.

The default suite kills the leader once; ``pytest -m slow`` runs a campaign of kills
(``METERD_NATS_KILLS``, 10 by default), each of the leader of the moment, the killed server
restarted and caught up before the next.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
import structlog
import trio

from meterd.cluster import (
    AsyncioBridge,
    ClusterUnavailable,
    Connection,
    LogMessage,
    PublishAck,
    StreamInfo,
    connect,
)
from tests.cluster.servers import NatsCluster, until

STREAM = "LOG"
LANES = 4
PUBLISH_TIMEOUT = 0.5
log = structlog.get_logger("tests.cluster.failover")


@dataclass
class Load:
    """Lanes publishing distinct ids, each re-sent with its id until acked."""

    conn: Connection
    acked: dict[str, PublishAck] = field(default_factory=dict)
    failures: int = 0
    running: bool = True

    async def lane(self, lane: int) -> None:
        i = 0
        while self.running:
            msg_id = f"g1:c{lane}:s{i}"
            payload = f"{lane}/{i}".encode()
            while True:
                try:
                    ack = await self.conn.publish(
                        f"log.p{lane}", payload, msg_id=msg_id, timeout=PUBLISH_TIMEOUT
                    )
                except ClusterUnavailable:
                    self.failures += 1  # no ack: the gateway answers `unavailable`; re-send
                    continue
                self.acked[msg_id] = ack
                break
            i += 1

    async def wait_for_acks(self, count: int, timeout: float) -> None:
        target = len(self.acked) + count
        await until(lambda: len(self.acked) >= target, timeout=timeout, what=f"{count} acks")


async def stream_info(conn: Connection) -> StreamInfo:
    """The stream's info; while the JetStream API itself is electing a meta leader (the killed
    server may have been it), asked again until it answers."""
    with trio.fail_after(60):
        while True:
            try:
                return await conn.stream_info(STREAM)
            except ClusterUnavailable:
                await trio.sleep(0.1)  # the API answers again once a meta leader is elected


async def leader_of(conn: Connection) -> str:
    with trio.fail_after(60):
        while True:
            leader = (await stream_info(conn)).leader
            if leader is not None:
                return leader
            await trio.sleep(0.1)  # a stream leader is being elected


async def read_all(conn: Connection) -> list[LogMessage]:
    """The whole stream, read the way an owner reads it: a read the cluster cannot serve yet
    (``ClusterUnavailable``, e.g. the consumer's create timing out while the restarted
    server catches up) is retried from the first message not yet read."""
    last = (await stream_info(conn)).last_seq
    out: list[LogMessage] = []
    with trio.fail_after(60):
        while not out or out[-1].seq < last:
            start = out[-1].seq + 1 if out else 1
            try:
                async with conn.reader(STREAM, "log.>", start_seq=start) as reader:
                    while not out or out[-1].seq < last:
                        out += await reader.fetch(1000, timeout=2)
            except ClusterUnavailable:
                log.info("test.failover.read_retried", from_seq=start)
    return out


def check_exactly_once(load: Load, stored: list[LogMessage]) -> None:
    ids = Counter(m.msg_id for m in stored)
    twice = [msg_id for msg_id, n in ids.items() if n > 1]
    assert twice == [], f"stored more than once: {twice[:10]}"
    by_id = {m.msg_id: m for m in stored}
    missing = [msg_id for msg_id in load.acked if msg_id not in by_id]
    assert missing == [], f"acked but not in the stream: {missing[:10]}"
    moved = [a.msg_id for a in load.acked.values() if by_id[a.msg_id].seq != a.seq]
    assert moved == [], f"stored at another sequence than acked: {moved[:10]}"
    assert [m.seq for m in stored] == sorted(m.seq for m in stored)


async def kill_the_leader_and_recover(
    conn: Connection, nats3: NatsCluster, load: Load, *, acks_after: int
) -> str:
    leader = await leader_of(conn)
    nats3.server(leader).kill()
    log.info("test.failover.killed", server=leader, acked=len(load.acked))
    killed_at = trio.current_time()
    await load.wait_for_acks(acks_after, timeout=60)  # a new leader acks again
    assert await leader_of(conn) != leader
    log.info("test.failover.acking_again", after_s=round(trio.current_time() - killed_at, 2))
    nats3.server(leader).start()
    nats3.server(leader).wait_for_log("Server is ready")

    with trio.fail_after(60):
        while True:
            info = await stream_info(conn)
            if leader in info.current_followers or info.leader == leader:
                log.info(
                    "test.failover.caught_up", after_s=round(trio.current_time() - killed_at, 2)
                )
                return leader
            await trio.sleep(0.1)  # the restarted server catches up in the background


async def run_campaign(bridge: AsyncioBridge, nats3: NatsCluster, kills: int) -> Load:
    conn = await connect(bridge, nats3.urls, name="gateway", publish_timeout=PUBLISH_TIMEOUT)
    info = await conn.ensure_stream(STREAM, ["log.>"], duplicate_window=120)
    assert info.replicas == 3
    load = Load(conn)
    async with trio.open_nursery() as nursery:
        for lane in range(LANES):
            nursery.start_soon(load.lane, lane)
        await load.wait_for_acks(100, timeout=30)
        for _ in range(kills):
            await kill_the_leader_and_recover(conn, nats3, load, acks_after=100)
        load.running = False
    reader_conn = await connect(bridge, nats3.urls, name="owner")
    stored = await read_all(reader_conn)
    check_exactly_once(load, stored)
    log.info(
        "test.failover.done",
        kills=kills,
        acked=len(load.acked),
        stored=len(stored),
        publish_failures=load.failures,
    )
    return load


async def test_kill_9_of_the_stream_leader_loses_no_acked_publish_and_stores_none_twice(
    bridge: AsyncioBridge, nats3: NatsCluster
) -> None:
    load = await run_campaign(bridge, nats3, kills=1)
    assert len(load.acked) >= 200


@pytest.mark.slow
async def test_kill_9_campaign_of_stream_leaders(bridge: AsyncioBridge, nats3: NatsCluster) -> None:
    kills = int(os.environ.get("METERD_NATS_KILLS", "10"))
    load = await run_campaign(bridge, nats3, kills=kills)
    assert len(load.acked) >= 100 * (kills + 1)
