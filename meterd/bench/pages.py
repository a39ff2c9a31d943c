"""Storage write amplification: SQLite pages written per event, table by table.

``python -m meterd.bench.pages`` writes the rows meterd's store writes for issue 4's load
(one-event account shares: each event's account drawn uniformly among ``--accounts``) into
the real schema (:func:`meterd.store.schema.open_database`: WAL, ``synchronous=FULL``), one
group transaction of ``--group`` events at a time, and counts the WAL frames each ``COMMIT``
appends (the WAL's growth; automatic checkpoints are off and the WAL is emptied between
groups now and then, so every commit is measured alike). A frame is one page: SQLite writes
whole pages, so a row inserted at a random place in a B-tree costs a page per commit unless
another row of the same group landed on it. The figures are what the disk must absorb per
event before SQLite copies the WAL back into the database (which roughly doubles them).

Parts, each measured alone on a fresh database, then all together:

* ``journal``: one ``event_batches`` row per account share (appended: rowid order), and the
  passes of the journal index as the writer runs them (:mod:`meterd.store.journal_index`:
  each group passes the slices whose turn came, the groups ``--group-interval-ms`` apart,
  every slice once per ``--index-cycle-ms``);
* ``dedupe``: one ``dedupe`` row per event (63-bit key, the account's bucket above the
  event's hash: a random place), written by the same passes;
* ``windows``: checkpoints, one per ``--cells-per-checkpoint`` events: that many new window
  rows of one account and its ``accounts`` row (each event of this load is a new cell);
* ``naive peer``: the baseline server's table of :mod:`meterd.bench.ingest` (one row per
  event, primary key ``(account, id)``, the event's fields inline).

Figures are the mean over the last half of ``--groups`` groups (the tables have grown by
then; pages per event rise with the table until the inserts of a group stop sharing pages)
and are printed, never asserted. The disk's bandwidth divided by pages per event x 4 KiB x 2
bounds the sustained ingest rate of this load.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from meterd import logs
from meterd.store import schema
from meterd.store.journal_index import DedupeRow, JournalTail, NewBatch, pass_slices

__all__ = ["PARTS", "main", "pages_per_event"]

PAYLOAD_BYTES: Final = 110  # a one-event batch payload of this load, msgpack-encoded
STATE: Final = b"\x92\x01\xa51.000"  # a sum window's encoded state
DIMS: Final = '["std-1x","app-1"]'
EVENT_SECONDS: Final = 1_764_000_000  # a dedupe row's event time (s)

Writer = Callable[[sqlite3.Connection, list[str], random.Random], None]


class _Rows:
    """Writes one group's rows of each part (ids and batch ids keep counting across groups)."""

    def __init__(
        self,
        accounts: Sequence[str],
        cells_per_checkpoint: int,
        group_interval_ms: int,
        index_cycle_ms: int,
    ) -> None:
        self.buckets = {account: schema.account_bucket(account) for account in accounts}
        self.cells = cells_per_checkpoint
        self.payload = os.urandom(PAYLOAD_BYTES)
        self.batch_id = 0
        self.event_id = 0
        self.tail = JournalTail(index_cycle_ms)
        self.interval = group_interval_ms
        self.now = 0
        self.new: list[NewBatch] = []
        self.new_dedupe: dict[int, list[DedupeRow]] = {}
        self.passed: list[int] = []

    def journal(self, conn: sqlite3.Connection, group: list[str], rng: random.Random) -> None:
        rows = []
        for account in group:
            self.batch_id += 1
            rows.append((self.batch_id, account, 0, 1, self.payload, 0, 0))
        conn.executemany(
            "INSERT INTO event_batches"
            " (batch_id, account, received_at, count, payload, min_time, max_time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.new = [(account, batch_id, 0, 0) for batch_id, account, *_ in rows]

    def dedupe(self, conn: sqlite3.Connection, group: list[str], rng: random.Random) -> None:
        for account in group:
            row = (self.buckets[account] | rng.getrandbits(40), 1, 2, EVENT_SECONDS)
            self.new_dedupe.setdefault(self.tail.slice_of(account), []).append(row)

    def passes(self, conn: sqlite3.Connection, group: list[str], rng: random.Random) -> None:
        """The writer's passes at the end of a group (journal index and dedupe rows)."""
        self.now += self.interval
        self.passed = self.tail.due(self.now)
        pass_slices(conn, self.tail, self.passed, self.new, self.new_dedupe, self.batch_id)

    def committed(self) -> None:
        """After COMMIT: what the writer's Trio thread does with the tail."""
        self.tail.committed(self.new, self.new_dedupe, self.passed, self.now)
        self.new, self.new_dedupe, self.passed = [], {}, []

    def windows(self, conn: sqlite3.Connection, group: list[str], rng: random.Random) -> None:
        for account in group[:: self.cells]:
            conn.executemany(
                "INSERT INTO windows (account, meter, start, dims, state) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (account, meter, start, dims) DO UPDATE SET state = excluded.state",
                [
                    (account, "dyno.seconds", rng.randrange(1 << 40) * 60_000, DIMS, STATE)
                    for _ in range(self.cells)
                ],
            )
            conn.execute(
                "INSERT INTO accounts (account, watermark, updated_at) VALUES (?, 1, 0)"
                " ON CONFLICT (account) DO UPDATE SET watermark = excluded.watermark",
                (account,),
            )

    def naive(self, conn: sqlite3.Connection, group: list[str], rng: random.Random) -> None:
        rows = []
        for account in group:
            self.event_id += 1
            rows.append((account, f"run-{self.event_id}", "dyno.seconds", "1.500", 0, b"{}"))
        conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)


PARTS: Final = ("journal", "dedupe", "windows", "all", "naive peer")


def _open(path: Path, part: str) -> sqlite3.Connection:
    if part != "naive peer":
        conn = schema.open_database(path)
    else:  # the baseline server's table (meterd/bench/ingest.py, _Baseline)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(
            "CREATE TABLE events (account TEXT NOT NULL, id TEXT NOT NULL, meter TEXT NOT NULL,"
            " quantity, time INTEGER NOT NULL, properties BLOB, PRIMARY KEY (account, id))"
        )
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # each commit's frames, nothing else
    return conn


def pages_per_event(
    part: str,
    *,
    accounts: int,
    group: int,
    groups: int,
    cells_per_checkpoint: int,
    group_interval_ms: int = 83,
    index_cycle_ms: int = 5_000,
    seed: int = 1,
) -> float:
    """WAL pages per event of ``part`` (one of :data:`PARTS`) over the last half of the
    groups, on a fresh database in a temporary directory."""
    names = [f"acct-{index:05d}" for index in range(accounts)]
    rows = _Rows(names, cells_per_checkpoint, group_interval_ms, index_cycle_ms)
    writers: dict[str, list[Writer]] = {
        "journal": [rows.journal, rows.passes],
        "dedupe": [rows.dedupe, rows.passes],
        "windows": [rows.windows],
        "all": [rows.journal, rows.dedupe, rows.windows, rows.passes],
        "naive peer": [rows.naive],
    }
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="meterd-bench-pages-") as tmp:
        path = Path(tmp) / "store.db"
        conn = _open(path, part)
        wal = Path(f"{path}-wal")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        frame = page_size + 24  # a WAL frame: its header and the page
        measured: list[int] = []
        try:
            for number in range(groups):
                accounts_of_group = [names[rng.randrange(accounts)] for _ in range(group)]
                # Before BEGIN: a transaction that outgrows the page cache spills pages to
                # the WAL before its COMMIT; they count.
                before = wal.stat().st_size if wal.exists() else 0
                conn.execute("BEGIN IMMEDIATE")
                for write in writers[part]:
                    write(conn, accounts_of_group, rng)
                conn.execute("COMMIT")
                rows.committed()
                measured.append((wal.stat().st_size - before) // frame)
                if number % 20 == 19:  # empty the WAL (it is reused from its start)
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    tail = measured[len(measured) // 2 :]
    return sum(tail) / len(tail) / group


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.pages", description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--group", type=int, default=1_250, help="events per group commit")
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--cells-per-checkpoint", type=int, default=15)
    parser.add_argument(
        "--group-interval-ms",
        type=int,
        default=83,
        help="time between two groups (83: 1,250 events at 15,000 events/s)",
    )
    parser.add_argument("--index-cycle-ms", type=int, default=5_000, help="the writer's default")
    args = parser.parse_args(argv)
    logs.configure(level="warning")  # no store_migrated line per part
    print(
        f"storage pages bench: {args.groups} groups x {args.group} events over"
        f" {args.accounts:,} accounts, one-event account shares, a checkpoint of"
        f" {args.cells_per_checkpoint} new cells per {args.cells_per_checkpoint} events;"
        " WAL pages per event, last half of the groups"
    )
    print("| part | pages per event | KiB per event (4 KiB pages, before copy-back) |")
    print("|---|---:|---:|")
    for part in PARTS:
        pages = pages_per_event(
            part,
            accounts=args.accounts,
            group=args.group,
            groups=args.groups,
            cells_per_checkpoint=args.cells_per_checkpoint,
            group_interval_ms=args.group_interval_ms,
            index_cycle_ms=args.index_cycle_ms,
        )
        print(f"| {part} | {pages:.2f} | {pages * 4:.1f} |")


if __name__ == "__main__":
    main()
