"""A process applying one shard's log (``python applier.py CONFIG SHARD``; the NATS URLs are
the config's ``[cluster] nats``), for the kill -9 tests: it prints ``ready <stored position>``
once it reads the log, then applies until killed."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from meterd.cluster import ShardApplier, connect, open_bridge, provision
from meterd.config import load
from meterd.partitions import shard_files
from meterd.partitions._cell import Cell


async def main(config_path: str, shard: int) -> None:
    config = load(Path(config_path))
    assert config.cluster is not None
    shard_files(config, shard).store.parent.mkdir(parents=True, exist_ok=True)
    cell = Cell.for_shard(config, shard)
    cell.attach(cell.supervisor)
    await cell.open()
    async with open_bridge(name="applier") as bridge, trio.open_nursery() as nursery:
        conn = await connect(bridge, list(config.cluster.nats), name=config.cluster.node)
        await provision(conn, config.cluster)
        await nursery.start(cell.supervisor.run)
        applier = ShardApplier(conn, cell, shard, config.partitions, fetch_timeout=0.2)
        stored = await nursery.start(applier.run)
        print(f"ready {stored}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
