"""Snapshots of a shard's store in the JetStream object store, on a real NATS server: a
consistent copy of a live store named by its shard with its log position S; restored into a
store that never held the shard, which then replays only the log after S; the truncation
check per shard (sequences retention dropped that held only other shards' slices do not
stop a restore)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import nats.js.errors
import pytest
import structlog
import trio

from meterd.alerts._delivered import connect as connect_deliveries
from meterd.cluster import (
    STREAM,
    AsyncioBridge,
    Connection,
    ShardApplier,
    connect,
    log_subject,
    provision,
    slice_msg_id,
)
from meterd.cluster._snapshot import (
    SNAPSHOTS,
    Snapshots,
    copy_store,
    deliveries_object,
    store_position,
)
from meterd.config import Config
from meterd.partitions import Slice, encode, shard_files
from tests.cluster.cells import (
    LAYOUT,
    SHARD,
    a_slice,
    accounts_in,
    ev,
    journal,
    running_cell,
    write_config,
)
from tests.cluster.servers import NatsCluster, until

A, B = accounts_in(SHARD, 2)
(OTHER,) = accounts_in(SHARD + 1, 1)


def node_config(folder: Path, nats: NatsCluster) -> Config:
    return write_config(folder, cluster=f'[cluster]\nnode = "n1"\nnats = {json.dumps(nats.urls)}\n')


async def publish(conn: Connection, piece: Slice) -> int:
    ack = await conn.publish(
        log_subject(piece.shard), encode(piece), msg_id=slice_msg_id(piece.batch, piece.shard)
    )
    return ack.seq


async def publish_mine(conn: Connection, first: int, count: int) -> int:
    """``count`` slices of SHARD (numbered from ``first``), each followed by one of another
    shard; the last sequence of SHARD's."""
    last = 0
    for n in range(first, first + count):
        last = await publish(conn, a_slice(n, SHARD, [ev(0, f"e{n}", (A, B)[n % 2], n)]))
        await publish(conn, a_slice(n, SHARD + 1, [ev(0, f"o{n}", OTHER)]))
    return last


async def apply_until(applier: ShardApplier, seq: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(applier.run)
        with trio.fail_after(30):
            await applier.wait_applied(seq)
        nursery.cancel_scope.cancel()


async def test_a_snapshot_of_a_live_store_restores_at_its_position_and_replays_the_rest(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    old = node_config(tmp_path / "old", nats1)
    new = node_config(tmp_path / "new", nats1)
    assert old.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, old.cluster)
    snapshots = await Snapshots.open(conn, "n1")
    info = await conn.stream_info(f"OBJ_{SNAPSHOTS}")
    assert info.replicas == 1  # one server: R1 (R3 with 3: test_takeover_snapshot)
    assert await snapshots.latest(SHARD) is None
    last = await publish_mine(conn, 1, 20)
    async with running_cell(old, SHARD) as cell:
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(applier.run)
            with trio.fail_after(30):
                await applier.wait_applied(last)
            # The store is live (WAL, its writer open): the copy is one committed state.
            taken = await snapshots.take(SHARD, cell.store_path, epoch=7)
            nursery.cancel_scope.cancel()
        expected = journal(cell.store_path)
    assert taken is not None
    assert (taken.shard, taken.seq, taken.epoch, taken.node) == (SHARD, last, 7, "n1")
    stream_last = (await conn.stream_info(STREAM)).last_seq
    assert taken.covered == stream_last  # no slice of SHARD after `last` in the stream
    assert await snapshots.latest(SHARD) == taken
    # Nothing newer: not uploaded again.
    assert await snapshots.take(SHARD, shard_files(old, SHARD).store, epoch=7) is None

    # A store that never held the shard: restored at S, then replays only what follows.
    target = shard_files(new, SHARD).store
    target.parent.mkdir(parents=True, exist_ok=True)
    restored = await snapshots.restore(SHARD, target)
    assert restored.snapshot == taken
    assert (restored.position, restored.covered) == (last, stream_last)
    assert store_position(target, SHARD) == last
    assert journal(target) == expected
    more = await publish_mine(conn, 21, 5)
    async with running_cell(new, SHARD) as cell:
        applier = ShardApplier(
            conn, cell, SHARD, LAYOUT, fetch_timeout=0.2, covered=restored.covered
        )
        await apply_until(applier, more)
        assert applier.started_from == last
        assert applier.slices == 5  # only the slices after the snapshot
    assert len(journal(target)) == 25
    # The restored store is now ahead of the snapshot: kept, not restored again.
    again = await snapshots.restore(SHARD, target)
    assert again.snapshot is None
    assert again.position == more
    # A snapshot of it replaces the stored one; an older store's does not.
    newer = await snapshots.take(SHARD, target, epoch=9)
    assert newer is not None
    assert newer.seq == more
    assert await snapshots.take(SHARD, shard_files(old, SHARD).store, epoch=7) is None
    assert await snapshots.latest(SHARD) == newer


async def test_a_copy_is_a_single_file_at_one_committed_position(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """The copy made while slices commit is a self-contained file (no WAL) whose position
    is one the store committed, with exactly the events of the slices up to it."""
    config = node_config(tmp_path, nats1)
    assert config.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, config.cluster)
    last = await publish_mine(conn, 1, 60)
    copies: list[tuple[int, Path]] = []
    async with running_cell(config, SHARD) as cell:
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(applier.run)
            with trio.fail_after(30):
                while applier.applied < last:
                    target = tmp_path / f"copy-{len(copies)}.sqlite3"
                    seq = await trio.to_thread.run_sync(copy_store, cell.store_path, target, SHARD)
                    copies.append((seq, target))
                    await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    sequences = {n: seq for n, seq in zip(range(1, 61), range(1, 200, 2), strict=False)}
    for seq, path in copies:
        assert not Path(f"{path}-wal").exists()  # noqa: ASYNC240
        conn_ = sqlite3.connect(path)
        try:
            assert conn_.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        finally:
            conn_.close()
        applied = {n for n, s in sequences.items() if s <= seq}
        assert {event for _, event in journal(path)} == {f"e{n}" for n in applied}


async def test_the_truncation_check_is_per_shard(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """Retention dropped sequences after the snapshot's position that held only other
    shards' slices: a node restoring the snapshot rebuilds the shard (the snapshot says the
    shard has nothing there); a node with no snapshot, whose store is at the same position,
    is refused loudly (it cannot tell)."""
    config = node_config(tmp_path / "a", nats1)
    fresh = node_config(tmp_path / "b", nats1)
    bare = node_config(tmp_path / "c", nats1)
    assert config.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, config.cluster)
    snapshots = await Snapshots.open(conn, "n1")
    last = await publish_mine(conn, 1, 3)
    for n in range(10):  # another shard's traffic only
        await publish(conn, a_slice(100 + n, SHARD + 1, [ev(0, f"x{n}", OTHER)]))
    async with running_cell(config, SHARD) as cell:
        await apply_until(ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2), last)
        taken = await snapshots.take(SHARD, cell.store_path, epoch=3)
    assert taken is not None
    assert taken.seq == last
    end = (await conn.stream_info(STREAM)).last_seq
    assert taken.covered == end > last + 1
    # Retention drops everything up to the end (here: a purge below end + 1).
    await conn.bridge.call(lambda: conn._jetstream.purge_stream(STREAM, seq=end + 1))
    more = await publish(conn, a_slice(50, SHARD, [ev(0, "e50", A, 50)]))
    assert (await conn.stream_info(STREAM)).first_seq == more

    target = shard_files(fresh, SHARD).store
    target.parent.mkdir(parents=True, exist_ok=True)
    restored = await snapshots.restore(SHARD, target)
    async with running_cell(fresh, SHARD) as cell:
        applier = ShardApplier(
            conn, cell, SHARD, LAYOUT, fetch_timeout=0.2, covered=restored.covered
        )
        await apply_until(applier, more)
        assert applier.refused is None
    assert len(journal(target)) == 4

    # The same position without the snapshot's knowledge: refused, nothing applied.
    bare_store = shard_files(bare, SHARD).store
    bare_store.parent.mkdir(parents=True, exist_ok=True)
    await trio.to_thread.run_sync(copy_store, shard_files(config, SHARD).store, bare_store, SHARD)
    async with running_cell(bare, SHARD) as cell:
        applier = ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(applier.run)
            await until(lambda: applier.refused is not None, timeout=30, what="refused")
            nursery.cancel_scope.cancel()
    assert f"sequences {last + 1}..{more - 1} are gone" in str(applier.refused)
    assert store_position(bare_store, SHARD) == last


@pytest.mark.parametrize("damage", ["headers", "bytes"])
async def test_a_bad_snapshot_is_not_restored(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge, damage: str
) -> None:
    """A snapshot whose position is not its headers' (or that is not a store) is refused
    with an error; the local file stays, and the shard is rebuilt from the log."""
    config = node_config(tmp_path / "a", nats1)
    fresh = node_config(tmp_path / "b", nats1)
    assert config.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, config.cluster)
    snapshots = await Snapshots.open(conn, "n1")
    last = await publish_mine(conn, 1, 2)
    async with running_cell(config, SHARD) as cell:
        await apply_until(ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2), last)
    store = shard_files(config, SHARD).store
    headers = {
        "Meterd-Log-Seq": str(last + (5 if damage == "headers" else 0)),
        "Meterd-Log-Covered": str(last),
        "Meterd-Epoch": "1",
        "Meterd-Node": "n1",
    }
    if damage == "bytes":
        bad = tmp_path / "bad.sqlite3"
        bad.write_bytes(b"not a database" * 100)
        store = bad
    await snapshots._upload(SHARD, store, headers)
    target = shard_files(fresh, SHARD).store
    target.parent.mkdir(parents=True, exist_ok=True)
    restored = await snapshots.restore(SHARD, target)
    assert restored.snapshot is None
    assert restored.position == 0
    assert not target.exists()


def deliveries_rows(path: Path, rows: list[tuple[str, int, str]], cursor: int) -> None:
    """Rows (id, seq, status) in the deliveries database at ``path`` and its cursor."""
    conn = connect_deliveries(path)
    try:
        for id, seq, status in rows:
            delivered_at = 1000 + seq if status == "delivered" else None
            conn.execute(
                "INSERT OR REPLACE INTO deliveries (id, seq, account, alert, webhook, period,"
                " event_id, body, created_at, status, delivered_at)"
                " VALUES (?, ?, 'a', 'r', 'hook', '2026-11', 'e', x'7b7d', 1, ?, ?)",
                (id, seq, status, delivered_at),
            )
        conn.execute(
            "INSERT INTO cursor (one, seq) VALUES (1, ?) ON CONFLICT (one) DO UPDATE"
            " SET seq = excluded.seq",
            (cursor,),
        )
    finally:
        conn.close()


def rows_of(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def test_a_snapshot_carries_which_crossings_were_delivered_and_nothing_else(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    """The deliveries database goes with the snapshot; a node restoring it learns the ids
    delivered (merged into its own database), never the copy's cursor or seqs; crossings
    delivered while the log stood still replace the deliveries object alone; a snapshot
    without one restores as before."""
    old, new, later, bare = (node_config(tmp_path / n, nats1) for n in ("o", "n", "l", "b"))
    assert old.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, old.cluster)
    snapshots = await Snapshots.open(conn, "n1")
    last = await publish_mine(conn, 1, 3)
    files = shard_files(old, SHARD)
    async with running_cell(old, SHARD) as cell:
        await apply_until(ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2), last)
        # The owner's deliveries (live, WAL): one delivered, one pending, its own cursor.
        deliveries_rows(files.deliveries, [("x1", 40, "delivered"), ("x2", 41, "pending")], 41)
        taken = await snapshots.take(
            SHARD,
            files.store,
            epoch=4,
            billing_path=files.billing,
            deliveries_path=files.deliveries,
        )
    assert taken is not None
    stored = await conn.bridge.call(lambda: snapshots._store.get_info(deliveries_object(SHARD)))
    assert stored.headers is not None
    assert stored.headers["Meterd-Log-Seq"] == str(last)
    assert stored.headers["Meterd-Delivered"] == "1"

    # A node that never held the shard: the delivered id only.
    target = shard_files(new, SHARD)
    target.store.parent.mkdir(parents=True, exist_ok=True)
    restored = await snapshots.restore(SHARD, target.store, target.billing, target.deliveries)
    assert restored.snapshot == taken
    assert restored.delivered == 1
    assert rows_of(target.deliveries, "SELECT id, delivered_at FROM delivered_elsewhere") == [
        ("x1", 1040)
    ]
    assert rows_of(target.deliveries, "SELECT id FROM deliveries") == []  # no seq of the copy
    assert rows_of(target.deliveries, "SELECT seq FROM cursor") == []  # nor its cursor

    # x2 is delivered while no slice comes: the store is not newer, the deliveries are.
    deliveries_rows(files.deliveries, [("x2", 41, "delivered")], 41)
    again = await snapshots.take(
        SHARD, files.store, epoch=4, billing_path=files.billing, deliveries_path=files.deliveries
    )
    assert again is None  # the store's snapshot is as recent
    assert await snapshots.latest(SHARD) == taken
    target = shard_files(later, SHARD)
    target.store.parent.mkdir(parents=True, exist_ok=True)
    restored = await snapshots.restore(SHARD, target.store, target.billing, target.deliveries)
    assert restored.delivered == 2
    assert rows_of(target.deliveries, "SELECT id FROM delivered_elsewhere ORDER BY id") == [
        ("x1",),
        ("x2",),
    ]

    # A node whose store is as recent as the snapshot keeps it, its rows and its cursor, and
    # still learns what the snapshot's deliveries know (another owner may have delivered).
    restored = await snapshots.restore(SHARD, files.store, files.billing, files.deliveries)
    assert (restored.snapshot, restored.position, restored.delivered) == (None, last, 2)
    assert rows_of(files.deliveries, "SELECT id, seq, status FROM deliveries ORDER BY id") == [
        ("x1", 40, "delivered"),
        ("x2", 41, "delivered"),
    ]
    assert rows_of(files.deliveries, "SELECT seq FROM cursor") == [(41,)]

    # A snapshot made without a deliveries object (an older meterd): restored as before.
    await conn.bridge.call(lambda: snapshots._store.delete(deliveries_object(SHARD)))
    target = shard_files(bare, SHARD)
    target.store.parent.mkdir(parents=True, exist_ok=True)
    with structlog.testing.capture_logs() as logs:
        restored = await snapshots.restore(SHARD, target.store, target.billing, target.deliveries)
    assert restored.snapshot == taken
    assert (restored.position, restored.delivered) == (last, 0)
    assert store_position(target.store, SHARD) == last
    assert [line["event"] for line in logs if line["log_level"] == "info"] == [
        "cluster.snapshot.no_deliveries",
        "cluster.snapshot.restored",
    ]


async def test_a_shard_without_a_deliveries_database_uploads_none(
    tmp_path: Path, nats1: NatsCluster, bridge: AsyncioBridge
) -> None:
    config = node_config(tmp_path, nats1)
    assert config.cluster is not None
    conn = await connect(bridge, nats1.urls, name="t")
    await provision(conn, config.cluster)
    snapshots = await Snapshots.open(conn, "n1")
    last = await publish_mine(conn, 1, 2)
    files = shard_files(config, SHARD)
    async with running_cell(config, SHARD) as cell:
        await apply_until(ShardApplier(conn, cell, SHARD, LAYOUT, fetch_timeout=0.2), last)
    files.deliveries.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{files.deliveries}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
    taken = await snapshots.take(
        SHARD, files.store, epoch=1, billing_path=files.billing, deliveries_path=files.deliveries
    )
    assert taken is not None
    assert not files.deliveries.exists()

    async def missing() -> bool:
        try:
            await snapshots._store.get_info(deliveries_object(SHARD))
        except nats.js.errors.ObjectNotFoundError:
            return True
        return False

    assert await conn.bridge.call(missing)
