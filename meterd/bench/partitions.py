"""The storage unit of a partition owner, measured: one SQLite file per partition, per shard
(a fixed group of partitions), or one for all (issue 15; docs/partitions.md "Storage unit").

``python -m meterd.bench.partitions [--quick] [--json]`` (or ``meterd bench partitions``)
runs the same load against each layout, each in a fresh process (so its memory and open
descriptors are its own), and prints them side by side with their ratios to the one-file
layout, then the cost and spread of the account -> partition hash.

The load is an owner holding ``--partitions`` (128) partitions: gateway batches of
``--batch`` (500) events over ``--accounts`` (10,000) accounts, uniform, split by partition
as a gateway does; a group commit takes ``--group`` (4) such batches (what the writer's
~2 ms commit window collects from 4 busy connections) and writes each storage unit it
touches in one transaction of its own (``BEGIN IMMEDIATE`` ... ``COMMIT``): a transaction
cannot span files, and SQLite commits (and fsyncs) each file's WAL on its own even when
they are attached to one connection. The rows are the writer's (``meterd/store/schema.py``):
one ``event_batches`` row per account slice (its events packed as the writer packs them),
and every ``--index-every`` (64) group commits, the ``dedupe`` and ``journal_index`` rows of
the batches since (the writer's index passes). Every file is opened by
``open_database``: the real schema, WAL, ``synchronous=FULL`` (one fsync per commit), the
writer's page cache. Events are encoded before the clock starts: the figures are the
storage's alone.

Per layout: events/s, CPU per event (user + system of the process, which does nothing
else), commits/s (= WAL fsyncs/s), group-commit time p50/p99 (what an ack waits for
beyond the window), files, open descriptors, RSS added. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meterd.bench._proc import rss_bytes
from meterd.model import Event
from meterd.partitions import partition_of
from meterd.store import codec
from meterd.store.schema import account_bucket, dedupe_row_key, open_database

__all__ = ["Options", "main", "run_layout"]


@dataclass(frozen=True)
class Options:
    partitions: int = 128
    # Storage units (files) per owner; "16x4": 16 files committed by 4 threads at once.
    layouts: tuple[str, ...] = ("1", "16", "128", "16x4", "128x8")
    events: int = 200_000
    accounts: int = 10_000
    batch: int = 500
    group: int = 4
    index_every: int = 64
    seed: int = 7
    directory: str | None = None
    hash_samples: int = 20_000  # ids timed per hash function
    spread_sizes: tuple[int, ...] = (10_000, 100_000)  # ids spread over 256 partitions

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        return cls(**{"events": 40_000, **overrides})


@dataclass
class LayoutResult:
    units: int
    threads: int
    events: int
    seconds: float
    cpu_seconds: float
    commits: int
    group_commits: int
    group_ms: list[float] = field(default_factory=list)
    files: int = 0
    fds_opened: int = 0
    rss_added: int = 0
    store_bytes: int = 0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds


# ---- the load -------------------------------------------------------------------------------

_BatchRow = tuple[str, int, int, bytes, int, int]  # account, received_at, count, payload, times
_DedupeRow = tuple[int, int, int]  # key, fingerprint, time_s (batch id added when written)


@dataclass
class _Slice:
    """The rows of one account's events in one group commit."""

    batch: _BatchRow
    dedupe: list[_DedupeRow]


def build_load(options: Options, units: int) -> list[dict[int, list[_Slice]]]:
    """Group commits, each: storage unit -> the account slices it writes."""
    rng = random.Random(options.seed)
    accounts = [f"acct-{i:07d}" for i in range(options.accounts)]
    unit_of = {
        a: partition_of(a, options.partitions) * units // options.partitions for a in accounts
    }
    buckets = {a: account_bucket(a) for a in accounts}
    per_group = options.batch * options.group
    commits: list[dict[int, list[_Slice]]] = []
    serial = 0
    now = 1_764_900_000_000
    for start in range(0, options.events, per_group):
        by_account: dict[str, list[Event]] = {}
        for _ in range(min(per_group, options.events - start)):
            account = accounts[rng.randrange(len(accounts))]
            serial += 1
            event = Event(
                f"ev-{serial:09d}", account, "dyno.seconds", rng.randrange(1, 3600),
                now + serial, (("dyno", f"web.{serial % 8}"),), "bench", now,
            )  # fmt: skip
            by_account.setdefault(account, []).append(event)
        group: dict[int, list[_Slice]] = {}
        for account, events in by_account.items():
            packed, fingerprints = codec.encode_rows(events)
            times = [e.time for e in events]
            row: _BatchRow = (
                account, now, len(events), codec.pack_batch(packed), min(times), max(times),
            )  # fmt: skip
            dedupe = [
                (dedupe_row_key(buckets[account], e), f, e.time // 1000)
                for e, f in zip(events, fingerprints, strict=True)
            ]
            group.setdefault(unit_of[account], []).append(_Slice(row, dedupe))
        commits.append(group)
    return commits


# ---- one layout, in its own process ---------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_layout(options: Options, units: int, directory: Path, threads: int = 1) -> LayoutResult:
    """Write the load into ``units`` store files under ``directory``, each group commit's
    transactions run by ``threads`` threads at once (1: one after the other, as one
    writer thread does); see the module doc."""
    load = build_load(options, units)
    rss_before = rss_bytes(os.getpid()) or 0
    fds_before = _open_fds()
    connections = [open_database(directory / f"unit-{u:03d}.sqlite3") for u in range(units)]
    fds_opened = _open_fds() - fds_before
    next_batch = [1] * units
    pending: list[list[tuple[int, _Slice]]] = [[] for _ in range(units)]
    result = LayoutResult(units, threads, options.events, 0.0, 0.0, 0, len(load))
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def commit(unit: int, slices: list[_Slice], index_now: bool) -> None:
        waiting = pending[unit]
        conn = connections[unit]
        conn.execute("BEGIN IMMEDIATE")
        if slices:
            first = next_batch[unit]
            conn.executemany(
                "INSERT INTO event_batches"
                " (batch_id, account, received_at, count, payload, min_time, max_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(first + i, *s.batch) for i, s in enumerate(slices)],
            )
            waiting.extend((first + i, s) for i, s in enumerate(slices))
            next_batch[unit] = first + len(slices)
        if index_now and waiting:
            conn.executemany(
                "INSERT INTO dedupe (key, batch_id, fingerprint, time_s) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                [(k, b, f, t) for b, s in waiting for k, f, t in s.dedupe],
            )
            conn.executemany(
                "INSERT INTO journal_index (account, batch_id, min_time, max_time)"
                " VALUES (?, ?, ?, ?)",
                [(s.batch[0], b, s.batch[4], s.batch[5]) for b, s in waiting],
            )
            waiting.clear()
        conn.execute("COMMIT")

    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for number, group in enumerate(load, start=1):
        began = time.perf_counter()
        index_now = number % options.index_every == 0 or number == len(load)
        due = [
            (unit, group.get(unit, []))
            for unit in range(units)
            if group.get(unit) or (index_now and pending[unit])
        ]
        if pool is None:
            for unit, slices in due:
                commit(unit, slices, index_now)
        else:
            for future in [pool.submit(commit, unit, sl, index_now) for unit, sl in due]:
                future.result()
        result.commits += len(due)
        result.group_ms.append((time.perf_counter() - began) * 1000)
    result.seconds = time.perf_counter() - wall_start
    result.cpu_seconds = time.process_time() - cpu_start
    result.rss_added = (rss_bytes(os.getpid()) or 0) - rss_before
    if pool is not None:
        pool.shutdown()
    for conn in connections:
        conn.close()
    stored = list(directory.glob("unit-*"))
    result.store_bytes = sum(p.stat().st_size for p in stored)
    result.files = units * 3  # each store is its file, its -wal and its -shm while open
    result.fds_opened = fds_opened
    return result


def parse_layout(text: str) -> tuple[int, int]:
    """``"16"`` -> (16, 1); ``"16x4"`` -> (16, 4)."""
    units, _, threads = text.partition("x")
    return int(units), int(threads or 1)


def _layout_in_subprocess(options: Options, layout: str, root: Path) -> LayoutResult:
    directory = Path(tempfile.mkdtemp(prefix=f"units-{layout}-", dir=root))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "meterd.bench.partitions", "--_layout", layout,
             "--_options", json.dumps(asdict(options)), "--_dir", str(directory),
             "--_out", str(directory / "result.json")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"layout {layout} failed:\n{done.stderr[-3000:]}")
        data = json.loads((directory / "result.json").read_text())
        return LayoutResult(**data)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- the hash -------------------------------------------------------------------------------


@dataclass
class HashCost:
    name: str
    us_per_call: float


@dataclass
class Spread:
    ids: str
    count: int
    partitions: int
    min_over_mean: float
    max_over_mean: float
    cv: float  # standard deviation / mean of the partitions' counts
    cv_random: float  # what a perfectly random assignment gives (binomial)


def _crc32(account: str, partitions: int) -> int:
    return zlib.crc32(account.encode()) % partitions


def _python_hash(account: str, partitions: int) -> int:
    return hash(account) % partitions


HASHES: dict[str, Callable[[str, int], int]] = {
    "blake2b-64 (chosen)": partition_of,
    "crc32": _crc32,
    "python hash() (unstable)": _python_hash,
}


def hash_costs(samples: int = 20_000) -> list[HashCost]:
    ids = [f"acct-{i:07d}" for i in range(samples)]
    costs = []
    for name, fn in HASHES.items():

        def calls(fn: Callable[[str, int], int] = fn) -> None:
            for account in ids:
                fn(account, 256)

        best = min(timeit.repeat(calls, number=1, repeat=5))
        costs.append(HashCost(name, best / samples * 1e6))
    return costs


def spreads(
    partitions: int = 256, seed: int = 7, sizes: Sequence[int] = (10_000, 100_000)
) -> list[Spread]:
    rng = random.Random(seed)
    found = []
    for count in sizes:
        kinds = {
            "sequential acct-0000001...": [f"acct-{i:07d}" for i in range(count)],
            "random 128-bit hex": [f"{rng.getrandbits(128):032x}" for _ in range(count)],
        }
        for kind, ids in kinds.items():
            for name, fn in (("blake2b-64", partition_of), ("crc32", _crc32)):
                counts = [0] * partitions
                for account in ids:
                    counts[fn(account, partitions)] += 1
                mean = count / partitions
                found.append(
                    Spread(
                        f"{name}, {kind}",
                        count,
                        partitions,
                        min(counts) / mean,
                        max(counts) / mean,
                        statistics.pstdev(counts) / mean,
                        ((partitions - 1) / count) ** 0.5,
                    )
                )
    return found


# ---- the command ----------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    root = Path(options.directory) if options.directory else Path.cwd()
    root.mkdir(parents=True, exist_ok=True)
    bench_root = Path(tempfile.mkdtemp(prefix=".bench-partitions-", dir=root))
    try:
        layouts = [_layout_in_subprocess(options, layout, bench_root) for layout in options.layouts]
    finally:
        shutil.rmtree(bench_root, ignore_errors=True)
    return {
        "options": asdict(options),
        "layouts": [
            {
                **asdict(r),
                "group_ms": None,
                "events_per_s": r.events_per_s,
                "cpu_us_per_event": r.cpu_us_per_event,
                "commits_per_s": r.commits_per_s,
                "group_ms_p50": _pct(r.group_ms, 50),
                "group_ms_p99": _pct(r.group_ms, 99),
            }
            for r in layouts
        ],
        "hash_costs": [asdict(c) for c in hash_costs(options.hash_samples)],
        "spreads": [asdict(s) for s in spreads(sizes=options.spread_sizes)],
    }


def _pct(values: Sequence[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def format_report(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [
        f"Storage unit: an owner of {o['partitions']} partitions, {o['events']:,} events over "
        f"{o['accounts']:,} accounts, {o['batch']}-event batches, {o['group']} per group "
        f"commit, index rows every {o['index_every']} group commits; WAL, synchronous=FULL.",
        "",
    ]
    layouts = report["layouts"]
    base = next((r for r in layouts if r["units"] == 1 and r["threads"] == 1), layouts[0])
    header = (
        f"{'layout':<28}{'events/s':>10}{'ratio':>7}{'CPU us/ev':>11}{'ratio':>7}"
        f"{'commits/s':>11}{'group p50 ms':>14}{'p99 ms':>9}{'files':>7}{'fds':>6}"
        f"{'RSS+ MiB':>10}{'on disk MiB':>13}"
    )
    lines.append(header)
    for r in layouts:
        units = r["units"]
        name = (
            "1 file"
            if units == 1
            else f"{units} files (1/part.)"
            if units == o["partitions"]
            else f"{units} shards ({o['partitions'] // units} part.)"
        )
        if r["threads"] > 1:
            name += f", {r['threads']} thr."
        lines.append(
            f"{name:<28}{r['events_per_s']:>10,.0f}"
            f"{r['events_per_s'] / base['events_per_s']:>6.2f}x"
            f"{r['cpu_us_per_event']:>11.1f}"
            f"{r['cpu_us_per_event'] / base['cpu_us_per_event']:>6.2f}x"
            f"{r['commits_per_s']:>11,.0f}{r['group_ms_p50']:>14.1f}{r['group_ms_p99']:>9.1f}"
            f"{r['files']:>7}{r['fds_opened']:>6}{r['rss_added'] / 2**20:>10.1f}"
            f"{r['store_bytes'] / 2**20:>13.1f}"
        )
    lines += [
        "",
        f"Account -> partition hash: cost per call ({o['hash_samples']:,} ids, best of 5)",
    ]
    for c in report["hash_costs"]:
        lines.append(f"  {c['name']:<28}{c['us_per_call']:>8.3f} us")
    lines += [
        "",
        "Spread over 256 partitions (count / mean; cv = stdev / mean, beside a random "
        "assignment's)",
    ]
    for s in report["spreads"]:
        lines.append(
            f"  {s['ids']:<42}{s['count']:>8,}  min {s['min_over_mean']:.2f}  "
            f"max {s['max_over_mean']:.2f}  cv {s['cv']:.3f} (random {s['cv_random']:.3f})"
        )
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m meterd.bench.partitions"
) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=Options.partitions)
    parser.add_argument(
        "--layouts",
        default=",".join(Options.layouts),
        help="files per owner to compare, FILESxTHREADS to commit them from threads at once"
        f" [{','.join(Options.layouts)}]",
    )
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=Options.accounts)
    parser.add_argument("--batch", type=int, default=Options.batch)
    parser.add_argument("--group", type=int, default=Options.group)
    parser.add_argument("--index-every", type=int, default=Options.index_every)
    parser.add_argument("--dir", default=None, help="where the stores go [the current directory]")
    parser.add_argument("--quick", action="store_true", help="40,000 events per layout")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_layout", help=argparse.SUPPRESS)
    parser.add_argument("--_options", help=argparse.SUPPRESS)
    parser.add_argument("--_dir", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._layout is not None:  # one layout, in the process the parent started for it
        options = Options(**{**json.loads(args._options), "layouts": ()})
        units, threads = parse_layout(args._layout)
        result = run_layout(options, units, Path(args._dir), threads)
        Path(args._out).write_text(json.dumps(asdict(result)))
        return
    layouts = tuple(args.layouts.split(","))
    try:
        parsed = [parse_layout(layout) for layout in layouts]
    except ValueError:
        parser.error(f"--layouts {args.layouts!r}: FILES or FILESxTHREADS, separated by commas")
    if any(u < 1 or t < 1 or args.partitions % u for u, t in parsed):
        parser.error(f"--layouts: each number of files must divide {args.partitions}")
    fields: dict[str, Any] = {
        "partitions": args.partitions, "layouts": layouts, "accounts": args.accounts,
        "batch": args.batch, "group": args.group, "index_every": args.index_every,
        "directory": args.dir,
    }  # fmt: skip
    if args.events is not None:
        fields["events"] = args.events
    options = Options.quick(**fields) if args.quick else Options(**fields)
    report = run(options)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


if __name__ == "__main__":
    main()
