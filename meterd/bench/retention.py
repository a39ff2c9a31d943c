"""Disk bytes per event with dedupe retention, against a revision without it, in one command.

``python -m meterd.bench.retention`` drives a real :class:`~meterd.store.Writer` on a
temporary SQLite file for ``--span`` seconds of a *simulated* wall clock (the writer's
``clock``; nothing sleeps): ``--events`` new events in producer batches of ``--batch``, each
event's account drawn among ``--accounts`` (one-event account shares, issue 4's shape), event
times a few seconds behind the clock, batches spread evenly over the span, ``--in-flight``
at a time. With ``--window`` seconds of ``dedupe_window`` (issue 13 used 60 s over about
four minutes), everything but the last window's rows is forgotten and deleted as the clock
goes; a revision without retention keeps every row. The writer then stops (its tail passed)
and the log is checkpointed into the file.

Figures, per event written (bytes; ``dbstat``: the pages each table's B-tree occupies):

* ``dedupe rows kept`` and ``dedupe B/event``: the dedupe index (``dedupe`` table);
* ``journal B/event``: ``event_batches`` and ``journal_index`` (the truth, kept forever);
* ``file B/event``: the database file; ``in use B/event``: less its free pages (a file
  does not shrink: pages freed by deletions are reused by later inserts).

Columns: this code with ``dedupe_window_ms`` (what the daemon runs), this code without it
(nothing forgotten: what the event-time column costs alone), and ``--against REF`` (default
``main``: ``git archive`` of ``meterd/`` and ``supervisors/`` into a temporary directory, this
file copied in, run in a subprocess; its writer is built with the options it takes).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from meterd import logs
from meterd.bench._revision import figures_at
from meterd.config import StoreConfig
from meterd.model import Event
from meterd.store import AppendResult, Writer

__all__ = ["main", "measure"]

T0: Final = 1_764_000_000_000
TABLES: Final = ("dedupe", "event_batches", "journal_index")


def _batches(events: int, batch: int, accounts: int) -> list[list[tuple[str, list[Event]]]]:
    rng = random.Random(7)
    out = []
    for start in range(0, events, batch):
        groups: dict[str, list[Event]] = {}
        for n in range(start, min(events, start + batch)):
            account = f"acct-{rng.randrange(accounts):05d}"
            # The time is set when the batch is sent (the clock then); a placeholder here.
            groups.setdefault(account, []).append(
                Event(f"evt-{n:09d}", account, "dyno.seconds", 1, 0, (("size", "std-1x"),))
            )
        out.append(list(groups.items()))
    return out


def _timed(groups: list[tuple[str, list[Event]]], now: int) -> list[tuple[str, list[Event]]]:
    return [
        (
            account,
            [
                Event(e.id, e.account, e.meter, e.quantity, now - int(e.id[-3:]) * 7, e.properties)
                for e in events
            ],
        )
        for account, events in groups
    ]


async def _run(path: Path, args: argparse.Namespace, window: bool) -> dict[str, float]:
    now = [T0]
    options: dict[str, Any] = {}
    if window and "dedupe_window_ms" in inspect.signature(Writer).parameters:
        options["dedupe_window_ms"] = args.window * 1000
    # The [store] table (2 ms groups), or a reference revision's keyword arguments.
    if "config" in inspect.signature(Writer).parameters:
        options["config"] = StoreConfig()
    else:
        options["commit_interval"] = 0.002
    writer = Writer(path, clock=lambda: now[0], **options)
    batches = _batches(args.events, args.batch, args.accounts)
    step = args.span * 1000 // max(1, len(batches))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        room = trio.Semaphore(args.in_flight)

        def done(outcome: list[AppendResult] | BaseException) -> None:
            if isinstance(outcome, BaseException):
                raise outcome
            room.release()

        for groups in batches:
            await room.acquire()
            now[0] += step
            writer.submit_batch(_timed(groups, now[0]), done)
        for _ in range(args.in_flight):
            await room.acquire()
        nursery.cancel_scope.cancel()  # the stop passes the tail
    return _sizes(path, args.events)


def _sizes(path: Path, events: int) -> dict[str, float]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (rows,) = conn.execute("SELECT count(*) FROM dedupe").fetchone()
        size = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    file = path.stat().st_size
    journal = sum(size.get(name, 0) for name in TABLES[1:])
    return {
        "dedupe_rows": rows,
        "dedupe_b": size.get("dedupe", 0) / events,
        "journal_b": journal / events,
        "file_b": file / events,
        "in_use_b": (file - free * page) / events,
    }


def measure(args: argparse.Namespace, window: bool) -> dict[str, float]:
    """The figures of one run (a fresh database in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="meterd-bench-retention-") as tmp:
        return trio.run(_run, Path(tmp) / "store.sqlite3", args, window)


def _reference(ref: str, argv: list[str]) -> dict[str, float] | str:
    """The figures on the code of git revision ``ref`` (or why it could not run)."""
    return figures_at(ref, "retention", argv, "window")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.retention", description=__doc__)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=100, help="events per producer batch")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=2, help="batches submitted at a time")
    parser.add_argument("--window", type=int, default=60, help="dedupe_window, seconds")
    parser.add_argument("--span", type=int, default=240, help="simulated seconds of the run")
    parser.add_argument("--against", default="main", help="git revision to compare ('': none)")
    parser.add_argument("--json", action="store_true", help="this code's figures, as JSON")
    args = parser.parse_args(argv)
    logs.configure(level="warning")
    if args.json:
        import meterd

        print(json.dumps({"window": measure(args, True), "source": meterd.__file__}))
        return
    passed = [
        f"--events={args.events}",
        f"--batch={args.batch}",
        f"--accounts={args.accounts}",
        f"--in-flight={args.in_flight}",
        f"--window={args.window}",
        f"--span={args.span}",
    ]
    columns = [("this code", measure(args, True)), ("this code, no window", measure(args, False))]
    reference = _reference(args.against, passed) if args.against else None
    if isinstance(reference, dict):
        columns.append((f"@ {args.against}", reference))
    print(
        f"dedupe retention bench: {args.events:,} events in batches of {args.batch} over"
        f" {args.accounts:,} accounts, {args.span} s of simulated clock, dedupe_window"
        f" {args.window} s; bytes per event written"
    )
    print(f"| figure | {' | '.join(name for name, _ in columns)} |")
    print(f"|---|{'---:|' * len(columns)}")
    for key, label, form in (
        ("dedupe_rows", "dedupe rows kept", "{:,.0f}"),
        ("dedupe_b", "dedupe B/event", "{:.1f}"),
        ("journal_b", "journal B/event", "{:.1f}"),
        ("file_b", "file B/event", "{:.1f}"),
        ("in_use_b", "in use B/event", "{:.1f}"),
    ):
        cells = [
            "—" if math.isnan(value := figures.get(key, math.nan)) else form.format(value)
            for _, figures in columns
        ]
        print(f"| {label} | {' | '.join(cells)} |")
    if isinstance(reference, str):
        print(f"(no reference: {reference})")


if __name__ == "__main__":
    main()
