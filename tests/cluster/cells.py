"""Helpers of the cluster tests: a small config, a shard's cell running in this process, slices
as a gateway builds them, and what a store holds (its journal, audit trail, log position)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from meterd.config import Config, PartitionsConfig, load
from meterd.partitions import BatchId, Slice, SliceEvent, shard_files, shard_of
from meterd.partitions._cell import Cell
from meterd.store import codec

LAYOUT = PartitionsConfig(count=4, shard_size=1, owners=0)
ADMIN = "cluster-test-admin-token"
MINUTE = 60_000
DAY = 24 * 60 * MINUTE
NOW = time.time_ns() // 1_000_000
T0 = NOW - 10 * MINUTE - NOW % MINUTE  # a minute boundary, well inside late_window
SHARD = 1


def accounts_in(shard: int, count: int) -> list[str]:
    found = [f"acct-{n}" for n in range(1000) if shard_of(f"acct-{n}", LAYOUT) == shard]
    return found[:count]


def write_config(folder: Path, *, cluster: str = "", ports: tuple[int, int] = (0, 0)) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    ingest, api = ports
    path.write_text(
        f"""
late_window = "1d"
dedupe_window = "1d"

[ingest]
listen = "127.0.0.1:{ingest or 18700}"

[api]
listen = "127.0.0.1:{api or 18701}"
admin_token = "{ADMIN}"

[store]
path = "var/meterd.sqlite3"

[partitions]
count = {LAYOUT.count}
shard_size = {LAYOUT.shard_size}

[[producers]]
name = "platform"
token = "cluster-test-platform-token"

[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["app"]
{cluster}
"""
    )
    return load(path)


def make_cell(config: Config, shard: int, *, attach: bool = True) -> Cell:
    shard_files(config, shard).store.parent.mkdir(parents=True, exist_ok=True)
    cell = Cell.for_shard(config, shard)
    if attach:
        cell.attach(cell.supervisor)
    return cell


@asynccontextmanager
async def running_cell(config: Config, shard: int) -> AsyncIterator[Cell]:
    """Shard ``shard``'s cell, its tree started (writer, actors); stopped in order after."""
    cell = make_cell(config, shard)
    await cell.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cell.supervisor.run)
            try:
                yield cell
            finally:
                cell.supervisor.stop()
                await cell.supervisor.wait_stopped()
    finally:
        await cell.aclose()


def ev(
    index: int, id: str, account: str, quantity: int = 1, at: int = T0, app: str = "web"
) -> SliceEvent:
    return SliceEvent(index, id, account, "dyno.seconds", quantity, at, (("app", app),))


def a_slice(
    seq: int, shard: int, events: Sequence[SliceEvent], *, gateway: str = "gw", **more: Any
) -> Slice:
    return Slice(BatchId(gateway, seq, seq), shard, "platform", NOW, list(events), **more)


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def journal(path: Path) -> dict[tuple[str, str], int]:
    """Every event the store counts: (account, id) -> quantity; fails on an id counted twice."""
    counted: dict[tuple[str, str], int] = {}
    for account, payload in rows(path, "SELECT account, payload FROM event_batches"):
        for event in codec.decode_batch(payload, account):
            key = (account, event.id)
            assert key not in counted, f"{key} counted twice"
            counted[key] = int(event.quantity)
    return counted


def position(path: Path, log: str) -> int:
    """The store's applied position of ``log`` (0 while the store or its table is not there:
    read-only, never creating the file)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT seq FROM log_positions WHERE log = ?", (log,)).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return 0
        raise
    finally:
        conn.close()
    return int(found[0][0]) if found else 0
