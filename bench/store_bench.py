#!/usr/bin/env python3
"""Benchmark the store writer against a naive SQLite design, in one command.

Run from the repository root::

    .venv/bin/python bench/store_bench.py             # 10,000 accounts, 200k events
    .venv/bin/python bench/store_bench.py --quick     # 1,000 accounts, 20k events
    .venv/bin/python bench/store_bench.py --json      # machine-readable, on stdout

Workload: ``--events`` events over ``--accounts`` accounts, in appends of ``--batch`` events of
one account each (the shape the accounts layer produces: one call per account per producer
batch), spread over the accounts round-robin with a stride, 3 meters, a mix of int and
``Decimal`` quantities, one property. Events are built before any timing starts.

``meterd store``
    :meth:`Writer.submit` with ``--in-flight`` appends outstanding at a time (each ``on_done``
    submits the next one, as acks free a producer's window), ``commit_interval`` 2 ms,
    ``synchronous=FULL``. Timed from the first submit to the last ``on_done`` (every event
    durable). Reports events/s, group transactions and their average size, and the
    submit-to-``on_done`` latency; and, apart, the latency at light load (one append in
    flight: each is its own transaction and fsync). Then one checkpoint per account (its
    minute windows, as the actors write them every ``checkpoint_interval``), reported apart.
``naive``
    What a first design would do: per event, ``INSERT OR IGNORE`` into a text-keyed events
    table (the dedupe) and, if new, upsert its minute window (``count + 1``,
    ``total + quantity`` computed by SQLite, so not even exact for decimals: favourable to
    the baseline), one transaction per ``--naive-txn`` events (1,000), same WAL and
    ``synchronous=FULL``, straight ``sqlite3`` on one thread (no Trio).

Each figure is the median of ``--repeats`` runs, each on a fresh database in a temporary
directory. These are figures, never pass/fail thresholds. ``disk bytes per event`` is the
database and its log over the events written; every event here is within the last hour, so
nothing is past ``dedupe_window``: what retention saves over time is measured by
``python -m meterd.bench.retention`` (a simulated clock, against ``main``).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from meterd.config import StoreConfig
from meterd.logs import configure
from meterd.model import MINUTE_MS, Event, canonical_quantity
from meterd.store import AppendResult, Writer

METERS = ("api_calls", "storage_gb", "jobs")
BASE_TIME = 1_764_000_000_000


def build_workload(accounts: int, events: int, batch: int) -> list[tuple[str, list[Event]]]:
    appends = []
    calls = math.ceil(events / batch)
    stride = 7919 if accounts % 7919 else 7907  # a prime: visits every account
    for call in range(calls):
        account = f"acct-{(call * stride) % accounts:05d}"
        size = min(batch, events - call * batch)
        evs = []
        for j in range(size):
            n = call * batch + j
            meter = METERS[n % 3]
            quantity: int | Decimal = Decimal(n % 1000) / 100 if meter == "storage_gb" else 1
            evs.append(
                Event(
                    id=f"evt-{n:08d}",
                    account=account,
                    meter=meter,
                    quantity=quantity,
                    time=BASE_TIME + (n * 37 % 3_600_000),
                    properties=(("region", ("eu", "us", "ap")[n % 3]),),
                    producer="bench",
                    received_at=BASE_TIME + 3_600_000,
                )
            )
        appends.append((account, evs))
    return appends


def window_states(appends: list[tuple[str, list[Event]]]) -> dict[str, list[Any]]:
    """Per account, its minute windows as an actor would checkpoint them."""
    sums: dict[str, dict[tuple[str, int, str], int | Decimal]] = defaultdict(dict)
    for account, events in appends:
        cells = sums[account]
        for e in events:
            key = (e.meter, e.time - e.time % MINUTE_MS, f"region={e.property('region')}")
            cells[key] = cells.get(key, 0) + e.quantity
    return {
        account: [
            (meter, start, dims, canonical_quantity(total).encode())
            for (meter, start, dims), total in cells.items()
        ]
        for account, cells in sums.items()
    }


async def run_ours(
    path: Path, appends: list[tuple[str, list[Event]]], in_flight: int, checkpoints: bool = True
) -> dict[str, float]:
    writer = Writer(path, StoreConfig())  # the daemon's [store] defaults (2 ms groups)
    latencies: list[float] = []
    total = sum(len(events) for _, events in appends)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        done = trio.Event()
        state = {"next": 0, "open": 0}

        def submit_next() -> None:
            index = state["next"]
            if index == len(appends):
                if state["open"] == 0:
                    done.set()
                return
            state["next"] = index + 1
            state["open"] += 1
            account, events = appends[index]
            sent = time.perf_counter()

            def on_done(outcome: AppendResult | BaseException) -> None:
                if isinstance(outcome, BaseException):
                    raise outcome
                latencies.append(time.perf_counter() - sent)
                state["open"] -= 1
                submit_next()

            writer.submit(account, events, on_done)

        start = time.perf_counter()
        for _ in range(in_flight):
            submit_next()
        await done.wait()
        elapsed = time.perf_counter() - start
        stats = writer.stats
        assert stats.events_accepted == total, stats
        commits = stats.commits

        windows = window_states(appends) if checkpoints else {}
        checkpoint_start = time.perf_counter()
        async with trio.open_nursery() as tasks:
            limiter = trio.Semaphore(in_flight)

            async def checkpoint(account: str, rows: list[Any]) -> None:
                async with limiter:
                    await writer.checkpoint(account, rows, 1)

            for account, rows in windows.items():
                tasks.start_soon(checkpoint, account, rows)
        checkpoint_elapsed = time.perf_counter() - checkpoint_start
        nursery.cancel_scope.cancel()
    latencies.sort()
    window_rows = sum(len(rows) for rows in windows.values())
    return {
        "events_per_s": total / elapsed,
        "seconds": elapsed,
        "commits": commits,
        "appends_per_commit": len(appends) / commits,
        "events_per_commit": total / commits,
        "latency_p50_ms": latencies[len(latencies) // 2] * 1000,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "checkpoint_windows": window_rows,
        "checkpoint_windows_per_s": window_rows / checkpoint_elapsed if window_rows else 0.0,
        "db_mb": db_size(path),
    }


def run_naive(path: Path, appends: list[tuple[str, list[Event]]], txn: int) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE events (account TEXT, id TEXT, meter TEXT, quantity TEXT, time INTEGER,"
        " properties TEXT, producer TEXT, received_at INTEGER, PRIMARY KEY (account, id))"
    )
    conn.execute(
        "CREATE TABLE windows (account TEXT, meter TEXT, start INTEGER, dims TEXT,"
        " count INTEGER, total NUMERIC, PRIMARY KEY (account, meter, start, dims)) WITHOUT ROWID"
    )
    total = sum(len(events) for _, events in appends)
    start = time.perf_counter()
    in_txn = 0
    commits = 0
    conn.execute("BEGIN")
    for account, events in appends:
        for e in events:
            quantity = canonical_quantity(e.quantity)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    account,
                    e.id,
                    e.meter,
                    quantity,
                    e.time,
                    json.dumps(e.properties),
                    e.producer,
                    e.received_at,
                ),
            )
            if cursor.rowcount == 1:
                conn.execute(
                    "INSERT INTO windows VALUES (?, ?, ?, ?, 1, ?)"
                    " ON CONFLICT (account, meter, start, dims) DO UPDATE"
                    " SET count = count + 1, total = total + excluded.total",
                    (
                        account,
                        e.meter,
                        e.time - e.time % MINUTE_MS,
                        f"region={e.property('region')}",
                        quantity,
                    ),
                )
            in_txn += 1
            if in_txn == txn:
                conn.execute("COMMIT")
                commits += 1
                conn.execute("BEGIN")
                in_txn = 0
    conn.execute("COMMIT")
    commits += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return {
        "events_per_s": total / elapsed,
        "seconds": elapsed,
        "commits": commits,
        "events_per_commit": total / commits,
        "db_mb": db_size(path),
    }


def db_size(path: Path) -> float:
    files = [path, path.with_name(path.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--naive-txn", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 accounts, 20k events")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    configure(level="warning")  # the store logs to stderr; stdout is the report
    if args.quick:
        args.accounts, args.events, args.repeats = 1_000, 20_000, 1

    appends = build_workload(args.accounts, args.events, args.batch)
    ours: list[dict[str, float]] = []
    naive: list[dict[str, float]] = []
    light: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
            ours.append(trio.run(run_ours, Path(tmp) / "ours.sqlite3", appends, args.in_flight))
            naive.append(run_naive(Path(tmp) / "naive.sqlite3", appends, args.naive_txn))
            light.append(trio.run(run_ours, Path(tmp) / "light.sqlite3", appends[:500], 1, False))
        print(
            f"repeat {repeat + 1}: ours {ours[-1]['events_per_s']:,.0f} ev/s,"
            f" naive {naive[-1]['events_per_s']:,.0f} ev/s",
            file=sys.stderr,
        )

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    result: dict[str, Any] = {
        "params": vars(args),
        "sqlite": sqlite3.sqlite_version,
        "ours": median(ours),
        "naive": median(naive),
        "light_load": median(light),
    }
    result["speedup"] = result["ours"]["events_per_s"] / result["naive"]["events_per_s"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    o, n = result["ours"], result["naive"]
    print(
        f"{args.events:,} events, {args.accounts:,} accounts, appends of {args.batch},"
        f" {args.in_flight} in flight; SQLite {sqlite3.sqlite_version}, synchronous=FULL, WAL;"
        f" median of {args.repeats}"
    )
    print(f"{'':28}{'meterd store':>16}{'naive':>16}")
    print(f"{'events/s (durable)':28}{o['events_per_s']:>16,.0f}{n['events_per_s']:>16,.0f}")
    print(f"{'seconds':28}{o['seconds']:>16.2f}{n['seconds']:>16.2f}")
    print(f"{'transactions':28}{o['commits']:>16,.0f}{n['commits']:>16,.0f}")
    ept = "events per transaction"
    print(f"{ept:28}{o['events_per_commit']:>16,.0f}{n['events_per_commit']:>16,.0f}")
    print(f"{'appends per transaction':28}{o['appends_per_commit']:>16,.1f}{'-':>16}")
    latency = f"{o['latency_p50_ms']:.1f} / {o['latency_p99_ms']:.1f}"
    print(f"{'append latency p50 / p99 ms':28}{latency:>16}{'-':>16}")
    print(f"{'database MB (+ WAL)':28}{o['db_mb']:>16.1f}{n['db_mb']:>16.1f}")
    per_event = f"{o['db_mb'] * 1e6 / args.events:.0f}", f"{n['db_mb'] * 1e6 / args.events:.0f}"
    print(f"{'disk bytes per event':28}{per_event[0]:>16}{per_event[1]:>16}")
    print(f"speedup: {result['speedup']:.1f}x")
    lo = result["light_load"]
    print(
        f"light load (one append of {args.batch} in flight, 500 appends): append latency"
        f" p50 {lo['latency_p50_ms']:.2f} ms, p99 {lo['latency_p99_ms']:.2f} ms,"
        f" {lo['events_per_s']:,.0f} events/s"
    )
    print(
        f"checkpoint (one per account, {o['checkpoint_windows']:,.0f} windows):"
        f" {o['checkpoint_windows_per_s']:,.0f} windows/s"
    )


if __name__ == "__main__":
    main()
