"""How long ``meterd migrate partitions`` takes for a store of N events, beside copying the
same bytes (docs/partitions.md, "Changing the layout").

Writes a single store through the store writer (N events over ``--accounts`` accounts, in
appends of ``--per-append`` events of one account, as a producer batch splits), stops it,
then in the same command times: copying the store file (read, write, fsync: the floor of
any migration that rewrites the data once), the migration single -> shards (``--owners``
owner processes, 16 shards), and back shards -> single (ids given again). Each figure is
the wall time of one run on the disk of ``--dir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import trio

from meterd.config import Config, load
from meterd.model import Event
from meterd.partitions._migrate import migrate
from meterd.store import Store

_CONFIG = """
late_window = "35d"
dedupe_window = "35d"
[ingest]
listen = "127.0.0.1:18997"
[api]
listen = "127.0.0.1:18996"
admin_token = "bench-admin-token-0123"
[store]
path = "var/meterd.sqlite3"
[partitions]
owners = {owners}
[[producers]]
name = "platform"
token = "bench-platform-token"
[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["size"]
"""


def config_at(directory: Path, owners: int) -> Config:
    path = directory / "meterd.toml"
    path.write_text(_CONFIG.format(owners=owners))
    return load(path)


async def write_store(config: Config, events: int, accounts: int, per_append: int) -> None:
    store = Store.at(config.store_path, config.store)
    now = int(time.time() * 1000)
    appends = events // per_append
    async with trio.open_nursery() as nursery:
        writer = await nursery.start(store.writer.run)

        async def lane(first: int, step: int) -> None:
            for n in range(first, appends, step):
                account = f"acct-{n % accounts:06d}"
                batch = [
                    Event(
                        f"e{n}-{k}",
                        account,
                        "dyno.seconds",
                        Decimal(k + 1),
                        now - n,
                        (("size", "std"),),
                    )
                    for k in range(per_append)
                ]
                await writer.append(account, batch)

        async with trio.open_nursery() as lanes:
            for first in range(64):
                lanes.start_soon(lane, first, 64)
        nursery.cancel_scope.cancel()
    await store.aclose()


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(events: int, accounts: int, per_append: int, owners: int, where: Path) -> list[str]:
    single = config_at(where, 0)
    started = time.monotonic()
    trio.run(write_store, single, events, accounts, per_append)
    written = time.monotonic() - started
    size = single.store_path.stat().st_size
    started = time.monotonic()
    _copy(single.store_path, where / "copy.sqlite3")
    copy_s = time.monotonic() - started
    (where / "copy.sqlite3").unlink()
    sharded = config_at(where, owners)
    split = migrate(sharded).seconds
    merged = migrate(config_at(where, 0)).seconds
    lines = [
        f"store: {events:,} events, {accounts:,} accounts, {size / 2**20:,.1f} MiB"
        f" (written in {written:.1f} s)",
        f"{'step':<34}{'seconds':>9}{'ratio':>8}{'events/s':>12}",
    ]
    for name, seconds in (
        ("copy the store file (baseline)", copy_s),
        (f"single -> {sharded.partitions.shards} shards", split),
        (f"{sharded.partitions.shards} shards -> single", merged),
    ):
        lines.append(
            f"{name:<34}{seconds:>9.2f}{seconds / copy_s:>7.1f}x{events / seconds:>12,.0f}"
        )
    return lines


def main(argv: Sequence[str] | None = None, prog: str = "python -m meterd.bench.migrate") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--per-append", type=int, default=20)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the store goes [the current directory]")
    parser.add_argument("--quick", action="store_true", help="40,000 events")
    args = parser.parse_args(argv)
    events = 40_000 if args.quick else args.events
    with tempfile.TemporaryDirectory(prefix="meterd-bench-migrate-", dir=args.dir or ".") as d:
        for line in run(events, args.accounts, args.per_append, args.owners, Path(d)):
            print(line)


if __name__ == "__main__":
    main()
