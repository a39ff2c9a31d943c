"""A stand-in owner process with a durable dedupe ledger, for the gateway's kill tests.

::

    python -m tests.partitions.procs.ledger_owner --config PATH --owner K --socket PATH

The real owner's command line (meterd.partitions.owner). It holds the shards the layout
gives owner K, each in a SQLite file of its own beside the real shard files
(``<shards dir>/ledger-SSS.sqlite3``, ``synchronous=FULL``), with one row per
``(account, id)``: the first copy's fingerprint, meter and quantity. A slice is decided
event by event against it (accepted; duplicate: same fingerprint; ``id_conflict``: another
one), committed, and only then answered with its verdicts, as the real owner does (a
batch's ``slices`` for several shards: each part so, one answer with their sums), so
what was acknowledged survives a kill -9. It answers ``ping`` queries, ``usage`` queries
(``{"account": A}`` -> ``{meter: quantity as a string}``, exact sums) and tree requests.
It serves, then says it is ready (its socket's path as the ready line).

:func:`usage_of` reads the ledgers of a stopped daemon: exact sums per account and meter.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import trio

import supervisors as sv
from meterd.config import Config, load
from meterd.model import Event, canonical_quantity
from meterd.partitions import (
    Answer,
    Channel,
    ChannelClosed,
    Hello,
    Query,
    Rejection,
    Slice,
    Slices,
    TreeRequest,
    TreeSnapshot,
    UnixTransport,
    Verdicts,
    shards_directory,
    shards_of_owner,
)


def ledger_path(config: Config, shard: int) -> Path:
    return shards_directory(config) / f"ledger-{shard:03d}.sqlite3"


def open_ledger(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")  # a killed owner's successor may overlap it
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS events (account TEXT, id TEXT, fingerprint INTEGER,"
        " meter TEXT, quantity TEXT, PRIMARY KEY (account, id))"
    )
    return db


def decide(db: sqlite3.Connection, message: Slice) -> Verdicts:
    accepted = duplicates = 0
    conflicts: list[Rejection] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for ev in message.events:
            event = Event(
                ev.id,
                ev.account,
                ev.meter,
                ev.quantity,
                ev.time,
                ev.properties,
            )
            fingerprint = event.fingerprint()
            row = db.execute(
                "SELECT fingerprint FROM events WHERE account = ? AND id = ?", (ev.account, ev.id)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    (ev.account, ev.id, fingerprint, ev.meter, canonical_quantity(ev.quantity)),
                )
                accepted += 1
            elif row[0] == fingerprint:
                duplicates += 1
            else:
                conflicts.append(
                    Rejection(
                        ev.index, ev.id, "id_conflict", "another event has this id", ev.account
                    )
                )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return Verdicts(message.batch, message.shard, accepted, duplicates, conflicts)


def decide_parts(ledgers: dict[int, sqlite3.Connection], message: Slices) -> Verdicts:
    """Each part as the slice of its shard (its own ledger, its own commit), summed."""
    accepted = duplicates = 0
    conflicts: list[Rejection] = []
    for part in message.parts:
        piece = Slice(message.batch, part.shard, message.producer, message.received_at, part.events)
        verdicts = decide(ledgers[part.shard], piece)
        accepted += verdicts.accepted
        duplicates += verdicts.duplicates
        conflicts += verdicts.id_conflicts
    return Verdicts(message.batch, message.shard, accepted, duplicates, conflicts)


def usage(db: sqlite3.Connection, account: str) -> dict[str, str]:
    sums: dict[str, Decimal] = {}
    for meter, quantity in db.execute(
        "SELECT meter, quantity FROM events WHERE account = ?", (account,)
    ):
        sums[meter] = sums.get(meter, Decimal(0)) + Decimal(quantity)
    return {meter: str(total) for meter, total in sorted(sums.items())}


def usage_of(config: Config) -> dict[str, dict[str, Decimal]]:
    """Every account's exact sums per meter, from every shard's ledger (a stopped daemon)."""
    found: dict[str, dict[str, Decimal]] = {}
    for shard in range(config.partitions.shards):
        path = ledger_path(config, shard)
        if not path.exists():
            continue
        db = sqlite3.connect(path)
        try:
            for account, meter, quantity in db.execute(
                "SELECT account, meter, quantity FROM events"
            ):
                meters = found.setdefault(account, {})
                meters[meter] = meters.get(meter, Decimal(0)) + Decimal(quantity)
        finally:
            db.close()
    return found


async def main(config_path: Path, owner: int, socket_path: str) -> None:
    config = load(config_path)
    shards = list(shards_of_owner(owner, config.partitions))
    ledgers = {shard: open_ledger(ledger_path(config, shard)) for shard in shards}
    name = f"owner-{owner}"

    async def handle(channel: Channel) -> None:
        await channel.send(Hello(name, os.getpid(), shards))
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                return
            if isinstance(message, Slice):
                await channel.send(decide(ledgers[message.shard], message))
            elif isinstance(message, Slices):  # one message per owner per batch (version 3)
                await channel.send(decide_parts(ledgers, message))
            elif isinstance(message, Query):
                if message.op == "ping":
                    await channel.send(Answer(message.id, "pong"))
                elif message.op == "usage" and message.shard in ledgers:
                    value = usage(ledgers[message.shard], str(message.args["account"]))
                    await channel.send(Answer(message.id, value))
                else:
                    await channel.send(Answer(message.id, error=f"no op {message.op!r} here"))
            elif isinstance(message, TreeRequest):
                tree = {"name": name, "kind": "supervisor", "children": []}
                await channel.send(TreeSnapshot(message.id, name, os.getpid(), tree))

    async with trio.open_nursery() as nursery:
        await nursery.start(UnixTransport().serve, socket_path, handle)
        sv.notify_ready(socket_path)


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ledger_owner")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    try:
        trio.run(main, args.config, args.owner, args.socket)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    run()
