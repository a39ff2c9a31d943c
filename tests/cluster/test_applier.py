"""The owner side of cluster mode on a real NATS server: provisioning, a shard's log applied in
order with its position, verdicts back to the gateway, replay after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

import supervisors as sv
from meterd.cluster import (
    LEASES,
    STREAM,
    AsyncioBridge,
    ShardApplier,
    connect,
    log_name,
    log_subject,
    provision,
    slice_msg_id,
    verdict_subject,
)
from meterd.cluster._nats import LogMessage
from meterd.config import ClusterConfig, Config, Duration
from meterd.partitions import Unavailable, Verdicts, decode, encode, shard_files
from tests.cluster.cells import (
    LAYOUT,
    SHARD,
    a_slice,
    accounts_in,
    ev,
    journal,
    make_cell,
    position,
    rows,
    running_cell,
    write_config,
)
from tests.cluster.servers import NatsCluster, until

ROOT = Path(__file__).resolve().parents[2]


def cluster_store(config: Config) -> Path:
    return shard_files(config, SHARD).store


A, B = accounts_in(SHARD, 2)
(OTHER,) = accounts_in(SHARD + 1, 1)


def cluster_config(cluster: NatsCluster, node: str = "n1") -> ClusterConfig:
    return ClusterConfig(node=node, nats=tuple(cluster.urls), lease_ttl=Duration(2_000))


async def test_provisioning_is_idempotent_and_replicated(
    nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    conn = await connect(bridge, nats3.urls, name="prov")
    first = await provision(conn, cluster_config(nats3))
    again = await provision(conn, cluster_config(nats3))
    assert first.stream.name == again.stream.name == STREAM
    assert first.stream.replicas == 3
    assert first.stream.subjects == ("meterd.log.*",)
    assert again.leases.bucket == LEASES
    info = await conn.stream_info(STREAM)
    assert info.replicas == 3


async def test_a_shard_log_is_applied_in_order_with_its_position(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    config = write_config(tmp_path)
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, cluster_config(nats1))
    slices = [
        a_slice(1, SHARD, [ev(0, "e1", A, 5), ev(1, "e2", B, 3)]),
        a_slice(2, SHARD, [ev(0, "e1", A, 5), ev(1, "e3", A, 2)]),  # e1 again: duplicate
        a_slice(3, SHARD, [ev(0, "e1", A, 9)]),  # e1 with another quantity: id_conflict
    ]
    last = 0
    for piece in slices:
        ack = await conn.publish(
            log_subject(SHARD), encode(piece), msg_id=slice_msg_id(piece.batch, SHARD)
        )
        # Another shard's slice in between: not this log's.
        other = a_slice(100 + piece.batch.seq, SHARD + 1, [ev(0, "o", OTHER)])
        await conn.publish(
            log_subject(SHARD + 1), encode(other), msg_id=slice_msg_id(other.batch, SHARD + 1)
        )
        last = ack.seq
    # A re-publish of slice 1 with its id: the stream stores it once.
    again = await conn.publish(
        log_subject(SHARD), encode(slices[0]), msg_id=slice_msg_id(slices[0].batch, SHARD)
    )
    assert again.duplicate
    # Not a slice: passed over, the position still moves.
    junk = await conn.publish(log_subject(SHARD), b"\x01not msgpack", msg_id="junk-1")
    last = junk.seq
    answers: list[Verdicts | Unavailable] = []
    async with (
        conn.subscribe(verdict_subject("gw")) as verdicts,
        running_cell(config, SHARD) as cell,
    ):
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
        async with trio.open_nursery() as nursery:
            assert await nursery.start(applier.run) == 0
            with trio.fail_after(20):
                await applier.wait_applied(last)
                while len(answers) < 3:
                    _, data = await verdicts.get()
                    answer = decode(data)
                    assert isinstance(answer, Verdicts | Unavailable)
                    answers.append(answer)
            nursery.cancel_scope.cancel()
    assert [
        (v.batch.seq, v.accepted, v.duplicates) for v in answers if isinstance(v, Verdicts)
    ] == [
        (1, 2, 0),
        (2, 1, 1),
        (3, 0, 0),
    ]
    third = answers[2]
    assert isinstance(third, Verdicts)
    assert [(r.index, r.code) for r in third.id_conflicts] == [(0, "id_conflict")]
    store = cell.store_path
    assert position(store, log_name(SHARD)) == last
    assert journal(store) == {(A, "e1"): 5, (B, "e2"): 3, (A, "e3"): 2}


APPLIER = str(Path(__file__).with_name("procs") / "applier.py")


async def start_applier(config_path: Path, shard: int) -> trio.Process:
    """The applier process, once it reads the log (it printed ``ready``)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, APPLIER, str(config_path), str(shard)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while b"ready" not in seen:
            chunk = await process.stdout.receive_some()
            assert chunk, f"the applier exited before it was ready ({process.returncode})"
            seen += chunk
    return process


async def test_kill_9_mid_stream_then_replay_counts_each_event_once(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """Slices keep coming while the applying process is killed with SIGKILL; restarted, it
    goes on from the position its store committed: the totals are exact, no event is
    counted twice, and the stored position is the log's last sequence."""
    config = write_config(
        tmp_path, cluster=f'[cluster]\nnode = "n1"\nnats = {json.dumps(nats1.urls)}\n'
    )
    assert config.cluster is not None
    conn = await connect(bridge, nats1.urls, name="publisher")
    await provision(conn, config.cluster)
    store = cluster_store(config)
    expected: dict[tuple[str, str], int] = {}
    last_seq = 0
    killed = trio.Event()
    killed_at: list[int] = []
    after_kill = 60
    resends = 0

    async def publish() -> None:
        """Slices until the kill and ``after_kill`` more: the applier dies mid-stream."""
        nonlocal last_seq, resends
        n = 0
        remaining = after_kill
        while remaining:
            n += 1
            if killed.is_set():
                remaining -= 1
            assert n < 20_000, "the applier never got going"
            events = [ev(j, f"e{n}-{j}", (A, B)[j % 2], n + j) for j in range(4)]
            for event in events:
                expected[(event.account, event.id)] = int(event.quantity)
            if n % 5 == 0:  # a producer's re-send of an event of the slice before
                events.append(ev(4, f"e{n - 1}-0", A, n - 1))
                resends += 1
            piece = a_slice(n, SHARD, events)
            ack = await conn.publish(
                log_subject(SHARD),
                encode(piece),
                msg_id=slice_msg_id(piece.batch, SHARD),
                timeout=30,  # a loaded machine's fsync can take seconds
            )
            last_seq = ack.seq

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        process = await start_applier(config.path, SHARD)
        await until(lambda: position(store, log_name(SHARD)) >= 20, timeout=30, what="applied")
        process.kill()  # SIGKILL, mid-stream: slices are still being published
        await process.wait()
        killed_at.append(position(store, log_name(SHARD)))
        killed.set()
    process = await start_applier(config.path, SHARD)
    try:
        await until(
            lambda: position(store, log_name(SHARD)) == last_seq, timeout=30, what="caught up"
        )
    finally:
        process.kill()
        await process.wait()
    assert 20 <= killed_at[0] < last_seq
    assert journal(store) == expected  # every event once, none twice, none lost
    # Each slice applied exactly once: a slice applied twice would leave duplicate audit
    # rows nobody sent (dedupe would hide it from the totals, not from the audit trail).
    assert rows(store, "SELECT count(*) FROM audit WHERE kind = 'duplicate'") == [(resends,)]
    assert position(store, log_name(SHARD)) == last_seq


async def test_an_applier_killed_by_its_supervisor_goes_on_exactly_once(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """The node's shard tree (writer, accounts, deliveries, applier under rest_for_one): the
    applier child killed three times while slices keep coming restarts from the store's
    position each time; every event once, no duplicate audit row."""
    config = write_config(tmp_path)
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, cluster_config(nats1))
    expected: dict[tuple[str, str], int] = {}
    last = 0
    killed = trio.Event()

    async def publish() -> None:
        nonlocal last
        n, after = 0, 30
        while after:
            n += 1
            after -= killed.is_set()
            assert n < 20_000, "the kills never happened"
            events = [ev(j, f"k{n}-{j}", (A, B)[j % 2], n) for j in range(3)]
            expected.update({(e.account, e.id): int(e.quantity) for e in events})
            piece = a_slice(n, SHARD, events)
            ack = await conn.publish(
                log_subject(SHARD),
                encode(piece),
                msg_id=slice_msg_id(piece.batch, SHARD),
                timeout=30,  # a loaded machine's fsync can take seconds
            )
            last = ack.seq

    cell = make_cell(config, SHARD, attach=False)
    applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
    tree = sv.Supervisor(
        [*cell.child_specs(), sv.task_spec("applier", applier.run)],
        strategy=sv.Strategy.REST_FOR_ONE,
        name=cell.name,
    )
    cell.attach(tree)
    await cell.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            with trio.fail_after(60):
                async with trio.open_nursery() as publishing:
                    publishing.start_soon(publish)
                    for _ in range(3):  # mid-stream: the log grows meanwhile
                        await applier.wait_applied(applier.applied + 10)
                        await tree.kill_child("applier")
                    killed.set()
                await applier.wait_applied(last)
            tree.stop()
            await tree.wait_stopped()
    finally:
        await cell.aclose()
    store = cell.store_path
    assert position(store, log_name(SHARD)) == last
    assert journal(store) == expected
    assert rows(store, "SELECT count(*) FROM audit") == [(0,)]


async def test_a_slice_naming_another_shards_account_is_answered_unavailable(
    tmp_path: Path,
) -> None:
    """The gateway and this node disagree on [partitions]: the slice is passed over (its
    position stored) and its batch answered unavailable, saying which account and why."""
    config = write_config(tmp_path)
    piece = a_slice(1, SHARD, [ev(0, "e1", A), ev(1, "o1", OTHER)])
    message = LogMessage(3, log_subject(SHARD), encode(piece), "id-1", 1)
    async with running_cell(config, SHARD) as cell:
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        await applier.apply(message)
        await applier.wait_drained()
        _, data = applier.verdicts.receive_nowait()
    answer = decode(data)
    assert isinstance(answer, Unavailable)
    assert f"account {OTHER!r} is in shard {SHARD + 1}, not in shard {SHARD}" in answer.reason
    assert "disagree on [partitions]" in answer.reason
    assert position(cell.store_path, log_name(SHARD)) == 3
