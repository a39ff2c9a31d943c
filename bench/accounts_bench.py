#!/usr/bin/env python3
"""Benchmark the accounts layer (meter actors + store, no network) against a naive pipeline.

Run from the repository root::

    .venv/bin/python bench/accounts_bench.py              # 10,000 accounts, 500k events (~5 min)
    .venv/bin/python bench/accounts_bench.py --quick      # 1,000 accounts, 50k events (~25 s)
    .venv/bin/python bench/accounts_bench.py --repeats 3 --what-if   # as in docs/accounts-bench.md
    .venv/bin/python bench/accounts_bench.py --json       # machine-readable, on stdout
    .venv/bin/python bench/accounts_bench.py --burst      # waves of new accounts, vs main

Options: ``--events N --accounts K --concurrency C --batch B`` (the load), ``--repeats R``
(medians; the best is shown too), ``--seed S``, ``--spread-minutes M`` (event times over M
minutes, 60), ``--checkpoint-interval S`` (the accounts' own default otherwise), ``--what-if``
(variants of the warm uniform run), ``--no-profile``, ``--no-memory``, ``--json-out FILE``.

Load
    ``--events`` events of one ``sum`` meter with a dimension (``region``, 4 values), 3-decimal
    ``Decimal`` quantities, times spread over the current hour, built before any timing (then
    ``gc.freeze()``-d: a server holds a batch only while it is in flight, so the pre-built load
    must not weigh on the collector). They are grouped as the ingest layer would: calls of
    ``--batch`` events of one account (the account's share of a producer batch); the account of
    each call is drawn **uniformly** or **Zipf** (s = 1.1, hot accounts at random ids) among
    ``--accounts`` accounts. ``--concurrency`` tasks take calls from one shared queue and
    ``await accounts.ingest(account, events)``; the clock runs from the first call to the last
    reply, and every reply means "durable" (the writer committed before the actor replied).

``meterd`` (warm)
    The real layer, as ``meterd run`` builds it: ``Store.at(path, StoreConfig())`` (group
    commit, 2 ms),
    ``Accounts(store, meters)`` with its defaults (a checkpoint every 5 s per awake account with
    changes, so checkpoints happen during the run), a root ``rest_for_one`` supervisor over the
    writer and the accounts. Before the clock starts every account of the load gets one event
    (untimed): all its actors are awake. Reported: events/s, ingest (call) latency p50/p99, CPU
    per event (process, Trio thread, writer thread, reader threads), how busy the writer was and
    how much of that was ``COMMIT``, group transactions, reader queries (the checkpoints'
    reads), and the share of the run spent in the cyclic garbage collector.
``meterd`` (cold)
    The same load on a fresh store with no warm-up: each account's first call wakes its actor
    (a writer barrier and a journal read) inside the timed run.
``naive``
    The same events, in the same order, through a minimal pipeline: per event, read its
    ``(account, meter, minute, dims)`` window, add the quantity in Python (``Decimal``), upsert
    the row; one transaction per 1,000 events; WAL, ``synchronous=FULL``; plain ``sqlite3``, one
    thread. It keeps no journal and does no dedupe (less work than meterd: favourable to it).
``naive+dedupe``
    The same, each event first ``INSERT OR IGNORE``-d into an ``(account, id)`` table (the
    least a pipeline that must not count a re-sent event twice would do).

Every run checks exactness afterwards (untimed): each actor checkpoints, and every stored
window must equal the sum computed here; the naive tables are checked the same way.

What if (``--what-if``): the warm uniform run again with one change each (4x concurrency, times
in one minute, GC thresholds, GC off, no checkpoints during the run, calls of 500), to weigh
what dominates.

Memory (two fresh subprocesses, one measuring RSS, one ``tracemalloc``): wake ``--accounts``
accounts with one event each (events built on the fly, so what an actor keeps of them is
counted), per awake actor = growth / accounts; let them all hibernate, per hibernated account =
what is left / accounts, the peak while they hibernate, and the database bytes per account
(after a WAL checkpoint, by table, from ``dbstat``). Then one account grown by 2,000 events.

Wake-up latency: the first ingest (one event) to a hibernated account, one call at a time, p50 /
p99, against a second ingest to the same, now awake, account; measured on the store of the warm
uniform run (every account with journal batches and windows) and in the memory subprocess.

Profile: the warm uniform run again under ``cProfile``: the Trio thread, and one profiler per
writer / reader thread around the group transaction / the query (the writer's
``GroupTransactions.write``, ``Reader._in_thread``, wrapped on the instances). Own time by
component, top 15 functions by own time and (our code) by cumulative time. cProfile slows
Python down 2-3x; read the shares.

Burst (``--burst``, only this): waves of new accounts and their hibernation, as the daemon
sees them, on this tree and on ``--baseline-ref`` (default ``main``: its ``meterd`` and
``supervisors`` taken with ``git archive`` into a temporary directory), each in a fresh
interpreter run from this file, so one command prints both. Each of ``--waves`` waves sends
``--burst-accounts`` new accounts, one event each, in 1,000-event producer batches through
``Accounts.submit`` (the ingest path: 4 "connections" with a window of 64 batches, each read
waiting for the daemon-wide in-flight budget), then lets every actor hibernate (idle timeout
0 and sweeps) and waits 2 s. Meanwhile a steady producer sends a 10-event batch every 50 ms
to one account (its ack latency: budget wait + commit), and a probe reads the quarantine
count every 250 ms (the store read of ``GET /metrics``). The collector runs as in ``meterd
run`` (``meterd.memory``). Reported per wave: seconds until every batch was acknowledged,
every account woken and every actor asleep; peak RSS and live actors; RSS, live pymalloc
blocks (``sys.getallocatedblocks``) and frozen objects once all sleep; the steady
producer's p50/p99/max and the probe's max. After the last wave, what a full collection
(``gc.unfreeze`` + ``gc.collect``) and then glibc's ``malloc_trim(0)`` give back: garbage the
freezing kept, and free memory the allocator kept (its high-water mark), as opposed to live
objects (a leak).

Figures, never pass/fail thresholds. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import gc
import inspect
import io
import itertools
import json
import math
import os
import pstats
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

import supervisors as sv
from meterd.accounts.aggregate import decode
from meterd.accounts.service import DEFAULT_IN_FLIGHT_EVENTS, Accounts
from meterd.config import AccountsConfig, Duration, StoreConfig
from meterd.logs import configure
from meterd.model import HOUR_MS, MINUTE_MS, Aggregation, Event, Meter
from meterd.store import Store

METER = Meter("compute.seconds", Aggregation.SUM, ("region",))
METERS = {METER.name: METER}
REGIONS = ("eu-west", "us-east", "us-west", "ap-south")
PROPERTIES = tuple((("region", region),) for region in REGIONS)
ZIPF_S = 1.1
NAIVE_TXN = 1_000
WAKE_SAMPLES = 1_000
HANG_LIMIT = 900.0  # seconds: a run that takes longer is reported as a hang

Call = tuple[str, list[Event]]
Key = tuple[str, int, str]  # (account, minute start, region)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hour_start() -> int:
    now = time.time_ns() // 1_000_000
    return now - now % HOUR_MS


def account_name(index: int) -> str:
    return f"acct-{index:05d}"


# --------------------------------------------------------------------------- the load


def build_load(
    accounts: int, events: int, batch: int, distribution: str, seed: int, spread: int = 60
) -> tuple[list[Call], float]:
    """The calls of one run and the share of calls the hottest account gets."""
    rng = random.Random(f"{seed}-{distribution}")
    calls = math.ceil(events / batch)
    if distribution == "uniform":
        ranks = [rng.randrange(accounts) for _ in range(calls)]
    else:
        cum = list(itertools.accumulate(1 / k**ZIPF_S for k in range(1, accounts + 1)))
        ranks = rng.choices(range(accounts), cum_weights=cum, k=calls)
    ids = list(range(accounts))
    rng.shuffle(ids)  # hot accounts are not the low ids
    quantities = [Decimal(n).scaleb(-3) for n in range(1, 20_001)]  # 0.001 .. 20.000
    base = hour_start()
    load: list[Call] = []
    tally: dict[int, int] = {}
    for call, rank in enumerate(ranks):
        account = account_name(ids[rank])
        tally[rank] = tally.get(rank, 0) + 1
        size = min(batch, events - call * batch)
        evs = [
            Event(
                id=f"{distribution[0]}{call * batch + j:011d}",
                account=account,
                meter=METER.name,
                quantity=rng.choice(quantities),
                time=base + rng.randrange(spread * MINUTE_MS),
                properties=rng.choice(PROPERTIES),
                producer="bench",
                received_at=base,
            )
            for j in range(size)
        ]
        load.append((account, evs))
    return load, max(tally.values()) / calls


def warmup_calls(load: Sequence[Call]) -> list[Call]:
    """One event for each account of ``load`` (the untimed warm-up)."""
    base = hour_start()
    seen = dict.fromkeys(account for account, _ in load)
    return [
        (account, [Event(f"w-{account}", account, METER.name, Decimal("1.5"), base, PROPERTIES[0])])
        for account in seen
    ]


def expected_sums(calls: Iterator[Call]) -> dict[Key, Decimal]:
    sums: dict[Key, Decimal] = {}
    for account, events in calls:
        for e in events:
            key = (account, e.time - e.time % MINUTE_MS, e.properties[0][1])
            sums[key] = sums.get(key, Decimal(0)) + e.quantity
    return sums


def mismatches(expected: dict[Key, Decimal], got: dict[Key, Decimal]) -> int:
    keys = expected.keys() | got.keys()
    return sum(1 for key in keys if expected.get(key) != got.get(key))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def db_bytes(path: Path) -> int:
    files = [path, path.with_name(path.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


class GcPauses:
    """Time spent in the cyclic garbage collector, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            generation = info["generation"]
            pause = time.perf_counter() - self._start
            self.count[generation] += 1
            self.seconds[generation] += pause
            self.longest[generation] = max(self.longest[generation], pause)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def freeze_load() -> None:
    """Move what exists now (the pre-built load) out of the collector's sight.

    The load is a benchmark artefact (a server holds a batch only while it is in flight);
    left in the heap, its millions of objects make each full collection take ~0.3 s.
    """
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- the real layer


class ThreadTimes:
    """How a store thread spent the run: wall and CPU seconds inside the wrapped function.

    Several threads may run it at once (the reader's connections): the sums are taken under a
    lock, and when ``profiling`` each thread gets its own ``cProfile.Profile`` (one profiler
    cannot follow two threads).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.busy = 0.0  # wall seconds inside
        self.cpu = 0.0  # thread CPU seconds inside
        self.commit = 0.0  # writer only: wall seconds from "before COMMIT" to the end (fsync)
        self.profiling = False
        self.profiles: dict[int, cProfile.Profile] = {}
        self._lock = threading.Lock()
        self._before_commit: dict[int, float] = {}

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            ident = threading.get_ident()
            start, cpu = time.perf_counter(), time.thread_time()
            self._before_commit.pop(ident, None)
            profile = None
            if self.profiling:
                profile = self.profiles.get(ident)
                if profile is None:
                    profile = self.profiles[ident] = cProfile.Profile()
                profile.enable()
            try:
                return original(*args)
            finally:
                if profile is not None:
                    profile.disable()
                end = time.perf_counter()
                cpu = time.thread_time() - cpu
                before_commit = self._before_commit.pop(ident, None)
                with self._lock:
                    self.calls += 1
                    self.busy += end - start
                    self.cpu += cpu
                    if before_commit is not None:
                        self.commit += end - before_commit

        return timed

    def mark_commit(self) -> None:
        self._before_commit[threading.get_ident()] = time.perf_counter()

    def snapshot(self) -> tuple[int, float, float, float]:
        with self._lock:
            return self.calls, self.busy, self.cpu, self.commit


def store_at(path: Path) -> Store:
    """The store with the daemon's ``[store]`` defaults, on this code or on a baseline
    revision's (``--burst``), where the table's keys were keyword arguments with defaults."""
    if "config" in inspect.signature(Store.at).parameters:
        return Store.at(path, StoreConfig())  # type: ignore[call-arg, unused-ignore]
    return Store.at(path)  # type: ignore[call-arg, unused-ignore]


def accounts_of(store: Store, **options: Any) -> Accounts:
    """:class:`Accounts` with the config model's defaults but ``options`` (seconds), on this
    code or on a baseline revision's (``--burst``), where they were keyword arguments."""
    if "config" not in inspect.signature(Accounts).parameters:
        return Accounts(store, METERS, **options)  # type: ignore[call-arg, unused-ignore]
    durations = {"idle_timeout", "max_seconds", "checkpoint_interval"}
    given: dict[str, Any] = {
        k: Duration(round(v * 1000)) if k in durations else v for k, v in options.items()
    }
    keys = {f.name for f in dataclasses.fields(AccountsConfig)}
    config = dataclasses.replace(AccountsConfig(), **{k: given.pop(k) for k in keys & set(given)})
    given.setdefault("checkpoint_interval", StoreConfig().checkpoint_interval)
    given.setdefault("max_in_flight_events", DEFAULT_IN_FLIGHT_EVENTS)
    return Accounts(store, METERS, config, **given)  # type: ignore[arg-type, unused-ignore]


def instrument(store: Store) -> tuple[ThreadTimes, ThreadTimes]:
    """Time the writer's group transactions and the reader's queries (instance attributes)."""
    writer_times, reader_times = ThreadTimes(), ThreadTimes()
    writer = store.writer
    mark_commit = writer_times.mark_commit

    class CommitMarked(sqlite3.Connection):  # opened by the writer's next run
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if sql == "COMMIT":
                mark_commit()
            return super().execute(sql, parameters)

    writer.connection_factory = CommitMarked
    groups = writer._groups
    setattr(groups, "write", writer_times.wrap(groups.write))  # noqa: B010
    reader = store.reader
    setattr(reader, "_in_thread", reader_times.wrap(reader._in_thread))  # noqa: B010
    return writer_times, reader_times


@dataclass
class Layer:
    store: Store
    accounts: Accounts
    root: sv.Supervisor
    nursery: trio.Nursery
    writer_times: ThreadTimes
    reader_times: ThreadTimes


class _LayerContext:
    """``async with _LayerContext(path) as layer``: the store and accounts, supervised."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.options = options
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Layer:
        store = store_at(self.path)
        accounts = accounts_of(store, **self.options)
        root = sv.Supervisor(
            [store.writer_spec(), accounts.supervisor_spec()],
            strategy=sv.Strategy.REST_FOR_ONE,
            name="root",
        )
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        layer = Layer(store, accounts, root, nursery, *instrument(store))
        await nursery.start(root.run)
        self.layer = layer
        return layer

    async def __aexit__(self, *exc: Any) -> bool:
        self.layer.root.stop()
        try:
            return bool(await self._nursery_cm.__aexit__(*exc))
        finally:
            await self.layer.store.aclose()


async def drive(
    accounts: Accounts, calls: Sequence[Call], concurrency: int
) -> tuple[float, list[float], int]:
    """Run ``calls`` with ``concurrency`` tasks: (seconds, sorted latencies, events accepted)."""
    latencies: list[float] = []
    accepted = 0
    queue = iter(calls)

    async def worker() -> None:
        nonlocal accepted
        for account, events in queue:
            sent = time.perf_counter()
            verdict = await accounts.ingest(account, events)
            latencies.append(time.perf_counter() - sent)
            accepted += len(verdict.accepted)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return elapsed, latencies, accepted


async def checkpoint_all(accounts: Accounts, concurrency: int) -> None:
    limiter = trio.Semaphore(concurrency)

    async def one(account: str) -> None:
        async with limiter:
            await accounts.checkpoint(account)

    async with trio.open_nursery() as nursery:
        for account in list(accounts.registry.keys()):
            nursery.start_soon(one, str(account))


async def hibernate_all(accounts: Accounts, limit: float = 120.0) -> float:
    """Let every awake actor hibernate (idle timeout 0 and a sweep); seconds it took."""
    idle_timeout = accounts.idle_timeout
    accounts.idle_timeout = 0.0
    start = time.perf_counter()
    try:
        with trio.fail_after(limit):
            while len(accounts.registry) or len(accounts.supervisor):
                accounts.sweep_once()
                await trio.sleep(0.25)  # about the sweeper's own pace (1.25 s by default)
    finally:
        accounts.idle_timeout = idle_timeout
    return time.perf_counter() - start


def stored_sums(path: Path) -> dict[Key, Decimal]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        got: dict[Key, Decimal] = {}
        for account, meter, start, dims, state in conn.execute(
            "SELECT account, meter, start, dims, state FROM windows"
        ):
            assert meter == METER.name
            total = decode(METER, state).value()
            got[(account, start, dims)] = Decimal(total)
        return got
    finally:
        conn.close()


async def wake_latencies(accounts: Accounts, names: Sequence[str]) -> dict[str, float]:
    """First ingest to each hibernated account, one at a time; then a second one (awake)."""
    base = hour_start()
    first: list[float] = []
    second: list[float] = []
    for round_, out in (("wake", first), ("awake", second)):
        for account in names:
            event = Event(
                f"{round_}-{account}", account, METER.name, Decimal(1), base, PROPERTIES[1]
            )
            sent = time.perf_counter()
            verdict = await accounts.ingest(account, [event])
            out.append(time.perf_counter() - sent)
            assert verdict.accepted == [0], verdict
    first.sort()
    second.sort()
    return {
        "samples": len(names),
        "wake_p50_ms": percentile(first, 0.5) * 1e3,
        "wake_p99_ms": percentile(first, 0.99) * 1e3,
        "awake_p50_ms": percentile(second, 0.5) * 1e3,
        "awake_p99_ms": percentile(second, 0.99) * 1e3,
    }


@dataclass
class Profiles:
    """cProfile of the Trio thread, and one per writer / reader thread."""

    main: cProfile.Profile = field(default_factory=cProfile.Profile)
    writer: list[cProfile.Profile] = field(default_factory=list)
    reader: list[cProfile.Profile] = field(default_factory=list)


async def run_meterd(
    path: Path,
    load: Sequence[Call],
    concurrency: int,
    *,
    warm: bool,
    wake_samples: int = 0,
    options: dict[str, Any] | None = None,
    profiles: Profiles | None = None,
    gc_off: bool = False,
    gc_threshold: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    warmup = warmup_calls(load) if warm else []
    total = sum(len(events) for _, events in load)
    result: dict[str, Any] = {}
    with trio.fail_after(HANG_LIMIT):
        async with _LayerContext(path, **(options or {})) as layer:
            accounts = layer.accounts
            if warmup:
                await drive(accounts, warmup, concurrency)
            stats = layer.store.writer.stats
            commits0, events0 = stats.commits, stats.events_accepted
            writer0, reader0 = layer.writer_times.snapshot(), layer.reader_times.snapshot()
            freeze_load()
            cpu = time.process_time()
            main_cpu = time.thread_time()
            if profiles is not None:
                layer.writer_times.profiling = layer.reader_times.profiling = True
                profiles.main.enable()
            thresholds = gc.get_threshold()
            if gc_threshold is not None:
                gc.set_threshold(*gc_threshold)
            if gc_off:
                gc.disable()
            with GcPauses() as pauses:
                elapsed, latencies, accepted = await drive(accounts, load, concurrency)
            gc.enable()
            gc.set_threshold(*thresholds)
            if profiles is not None:
                profiles.main.disable()
                layer.writer_times.profiling = layer.reader_times.profiling = False
                profiles.writer.extend(layer.writer_times.profiles.values())
                profiles.reader.extend(layer.reader_times.profiles.values())
            main_cpu = time.thread_time() - main_cpu
            cpu = time.process_time() - cpu
            gc.unfreeze()
            commits = stats.commits - commits0
            _, w_busy, w_cpu, w_commit = (
                b - a for a, b in zip(writer0, layer.writer_times.snapshot(), strict=True)
            )
            r_calls, r_busy, r_cpu, _ = (
                b - a for a, b in zip(reader0, layer.reader_times.snapshot(), strict=True)
            )
            us = 1e6 / total
            result.update(
                events=total,
                seconds=elapsed,
                events_per_s=total / elapsed,
                latency_p50_ms=percentile(latencies, 0.5) * 1e3,
                latency_p99_ms=percentile(latencies, 0.99) * 1e3,
                commits=commits,
                events_per_commit=(stats.events_accepted - events0) / max(commits, 1),
                cpu_us=cpu * us,
                main_cpu_us=main_cpu * us,
                writer_cpu_us=w_cpu * us,
                reader_cpu_us=r_cpu * us,
                main_busy=main_cpu / elapsed,
                writer_busy=w_busy / elapsed,
                commit_share=w_commit / max(w_busy, 1e-9),
                reader_queries=r_calls,
                reader_busy=r_busy / elapsed,
                gc_full=pauses.count[2],
                gc_share=sum(pauses.seconds) / elapsed,
                awake_actors=len(accounts.registry),
                accepted=accepted,
            )
            # exactness (untimed): every actor writes its deltas, then compare the windows
            await checkpoint_all(accounts, concurrency)
            expected = expected_sums(itertools.chain(warmup, load))
            result["mismatched_windows"] = mismatches(expected, stored_sums(path))
            result["windows"] = len(expected)
            result["db_bytes_per_account"] = db_bytes(path) / max(1, len({a for a, _ in load}))
            if wake_samples:
                result["hibernate_all_s"] = await hibernate_all(accounts)
                names = sorted({account for account, _ in load})
                random.Random(7).shuffle(names)
                result["wake"] = await wake_latencies(accounts, names[:wake_samples])
    return result


# --------------------------------------------------------------------------- the naive pipeline


def run_naive(
    path: Path, load: Sequence[Call], txn: int = NAIVE_TXN, dedupe: bool = False
) -> dict[str, Any]:
    """The naive pipeline; with ``dedupe``, each event first ``INSERT OR IGNORE``s its
    ``(account, id)`` into an ``events`` table and only a new one is counted."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE windows (account TEXT, meter TEXT, minute INTEGER, dims TEXT, total TEXT,"
        " PRIMARY KEY (account, meter, minute, dims)) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE events (account TEXT, id TEXT, PRIMARY KEY (account, id))")
    remember = "INSERT OR IGNORE INTO events (account, id) VALUES (?, ?)"
    select = "SELECT total FROM windows WHERE account = ? AND meter = ? AND minute = ? AND dims = ?"
    upsert = (
        "INSERT INTO windows (account, meter, minute, dims, total) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (account, meter, minute, dims) DO UPDATE SET total = excluded.total"
    )
    total = sum(len(events) for _, events in load)
    commits = 0
    in_txn = 0
    execute = conn.execute
    cpu = time.process_time()
    start = time.perf_counter()
    execute("BEGIN")
    for account, events in load:
        for e in events:
            if dedupe and execute(remember, (account, e.id)).rowcount != 1:
                continue  # a duplicate (never, in this load)
            key = (account, e.meter, e.time - e.time % MINUTE_MS, e.properties[0][1])
            row = execute(select, key).fetchone()
            new = e.quantity if row is None else Decimal(row[0]) + e.quantity
            execute(upsert, (*key, str(new)))
            in_txn += 1
            if in_txn == txn:
                execute("COMMIT")
                commits += 1
                execute("BEGIN")
                in_txn = 0
    execute("COMMIT")
    commits += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    got = {
        (account, minute, dims): Decimal(value)
        for account, minute, dims, value in conn.execute(
            "SELECT account, minute, dims, total FROM windows"
        )
    }
    conn.close()
    return {
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "commits": commits,
        "events_per_commit": total / commits,
        "cpu_us": cpu / total * 1e6,
        "mismatched_windows": mismatches(expected_sums(iter(load)), got),
    }


# --------------------------------------------------------------------------- memory (subprocess)


async def memory_child(accounts_n: int, concurrency: int, traced: bool) -> dict[str, Any]:
    """Run in a fresh interpreter: memory per awake actor / hibernated account, wake-ups."""
    import tracemalloc

    def measure() -> int:
        gc.collect()
        if traced:
            return tracemalloc.get_traced_memory()[0]
        return rss_bytes()

    base = hour_start()
    out: dict[str, Any] = {"accounts": accounts_n, "measure": "tracemalloc" if traced else "rss"}
    with tempfile.TemporaryDirectory(prefix="accounts-bench-mem-") as tmp:
        path = Path(tmp) / "meterd.sqlite3"
        async with _LayerContext(path, idle_timeout=3600.0) as layer:
            accounts = layer.accounts

            async def wake(names: Sequence[str], tag: str) -> None:
                queue = iter(names)

                async def worker() -> None:
                    for account in queue:
                        quantity = Decimal(len(account)).scaleb(-2)
                        event = Event(
                            f"{tag}-{account}", account, METER.name, quantity, base, PROPERTIES[2]
                        )
                        verdict = await accounts.ingest(account, [event])
                        assert verdict.accepted == [0], verdict

                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(worker)

            # warm every code path, thread and connection, then let them sleep
            await wake([f"warm-{i}" for i in range(200)], "w")
            await hibernate_all(accounts)
            names = [account_name(i) for i in range(accounts_n)]
            if traced:
                tracemalloc.start()
            db_before = await trio.to_thread.run_sync(wal_checkpoint, path)
            before = measure()
            await wake(names, "a")
            awake = measure()
            out["awake_actors"] = len(accounts.registry)
            out["per_awake_actor"] = (awake - before) / accounts_n
            if traced:
                tracemalloc.reset_peak()
            seconds = await hibernate_all(accounts)
            out["hibernate_s"] = seconds
            if traced:  # what the wave of 10k concurrent checkpoints held at its peak
                out["hibernation_peak_per_account"] = (
                    tracemalloc.get_traced_memory()[1] - before
                ) / accounts_n
            asleep = measure()
            out["per_hibernated_account"] = (asleep - before) / accounts_n
            db_after = await trio.to_thread.run_sync(wal_checkpoint, path)
            out["db_bytes_per_account"] = (db_after["total"] - db_before["total"]) / accounts_n
            out["db_tables_per_account"] = {
                name: (db_after.get(name, 0) - db_before.get(name, 0)) / accounts_n
                for name in db_after
                if name != "total"
            }
            if not traced:
                sample = names[: min(WAKE_SAMPLES, accounts_n)]
                out["wake"] = await wake_latencies(accounts, sample)
                rewoken = measure()
                out["rss_growth_rewaking"] = rewoken - asleep
                out["rewoken"] = len(sample)
            if traced:
                # What an awake actor holds after many events (its deltas, no id window).
                before = measure()
                count = 2_000
                for start in range(0, count, 50):
                    events = [
                        Event(
                            f"big-{n:012d}",
                            "big",
                            METER.name,
                            Decimal(n).scaleb(-3),
                            base + n % 60 * MINUTE_MS,
                            PROPERTIES[n % 4],
                        )
                        for n in range(start, min(count, start + 50))
                    ]
                    await accounts.ingest("big", events)
                await accounts.checkpoint("big")
                out["per_account_grown"] = {
                    "events": count,
                    "bytes": measure() - before,
                }
                tracemalloc.stop()
    return out


def wal_checkpoint(path: Path) -> dict[str, int]:
    """Fold the WAL into the file; its size, and the bytes of each table and index (dbstat)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = {"total": db_bytes(path)}
        try:
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                sizes[str(name)] = int(size)
        except sqlite3.OperationalError:
            pass  # no dbstat in this SQLite build
        return sizes
    finally:
        conn.close()


def run_memory(accounts_n: int, concurrency: int, traced: bool) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        "traced" if traced else "rss",
        "--accounts",
        str(accounts_n),
        "--concurrency",
        str(concurrency),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_LIMIT, check=False)
    if done.returncode:
        raise RuntimeError(f"memory subprocess failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- burst (subprocess)

BURST_BATCH = 1_000
BURST_CONNECTIONS = 4
BURST_WINDOW = 64
STEADY_EVERY = 0.05  # seconds between two batches of the steady producer
STEADY_EVENTS = 10
PROBE_EVERY = 0.25  # seconds between two /metrics-like store reads
SAMPLE_EVERY = 0.1  # seconds between two RSS / live-actor samples


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: hand free heap memory back to the OS (False without glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except AttributeError:
        return False


def live_blocks() -> int:
    return sys.getallocatedblocks()


async def burst_child(accounts_n: int, waves: int) -> dict[str, Any]:
    """Run in a fresh interpreter (this tree's code or the baseline's): see the module doc."""
    from meterd import memory

    base = hour_start()
    out: dict[str, Any] = {"accounts": accounts_n, "waves": []}
    with tempfile.TemporaryDirectory(prefix="accounts-bench-burst-") as tmp:
        path = Path(tmp) / "meterd.sqlite3"
        store = store_at(path)
        accounts = accounts_of(store)  # the daemon's defaults (idle timeout 300 s)
        root = sv.Supervisor(
            [store.writer_spec(), accounts.supervisor_spec()],
            strategy=sv.Strategy.REST_FOR_ONE,
            name="root",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            memory.tune()  # as meterd.app.serve, then its collector schedule
            collect: Any = memory.collect_on_schedule  # the baseline's may not take it:
            if "live_actors" in inspect.signature(collect).parameters:
                collect = functools.partial(collect, live_actors=lambda: len(accounts.supervisor))
            nursery.start_soon(collect)
            steady_latencies: list[float] = []
            probe_latencies: list[float] = []
            stop = trio.Event()

            async def steady() -> None:
                budget = accounts.budget
                for n in itertools.count():
                    events = [
                        Event(f"s{n}-{k}", "steady", METER.name, Decimal(1), base, PROPERTIES[0])
                        for k in range(STEADY_EVENTS)
                    ]
                    done = trio.Event()
                    sent = time.perf_counter()
                    await budget.wait_for_room()  # ingest reads only with room in the budget
                    budget.take(len(events))

                    def acked(
                        outcome: Any, done: trio.Event = done, size: int = len(events)
                    ) -> None:
                        budget.give(size)
                        done.set()

                    accounts.submit([("steady", events)], acked)
                    await done.wait()
                    steady_latencies.append(time.perf_counter() - sent)
                    with trio.move_on_at(sent + STEADY_EVERY):
                        await stop.wait()
                    if stop.is_set():
                        return

            async def probe() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    await store.reader.quarantined_count()
                    probe_latencies.append(time.perf_counter() - started)
                    with trio.move_on_after(PROBE_EVERY):
                        await stop.wait()

            # warm every code path, thread and connection, then let them sleep
            await burst_wave(accounts, [f"warm-{i}" for i in range(200)], base, "w")
            await hibernate_all(accounts, HANG_LIMIT)
            await trio.sleep(2.0)
            out["start"] = {"rss": rss_bytes(), "blocks": live_blocks()}
            for wave in range(waves):
                names = [f"b{wave}-{account_name(i)}" for i in range(accounts_n)]
                steady_latencies.clear()
                probe_latencies.clear()
                stop = trio.Event()
                nursery.start_soon(steady)
                nursery.start_soon(probe)
                with GcPauses() as pauses:
                    row = await burst_wave(accounts, names, base, f"b{wave}")
                    row["hibernate_s"] = await hibernate_burst(accounts)
                    stop.set()
                    await trio.sleep(2.0)  # the collector's schedule runs meanwhile
                row["gc_full"] = pauses.count[2]
                row["gc_longest_ms"] = [pause * 1e3 for pause in pauses.longest]
                steady_latencies.sort()
                row.update(
                    rss_after=rss_bytes(),
                    blocks_after=live_blocks(),
                    frozen_after=gc.get_freeze_count(),
                    steady_p50_ms=percentile(steady_latencies, 0.5) * 1e3,
                    steady_p99_ms=percentile(steady_latencies, 0.99) * 1e3,
                    steady_max_ms=max(steady_latencies, default=math.nan) * 1e3,
                    probe_max_ms=max(probe_latencies, default=math.nan) * 1e3,
                    probe_reads=len(probe_latencies),
                )
                out["waves"].append(row)
                log(
                    f"burst wave {wave + 1}: acked {row['acked_s']:.1f} s, RSS after"
                    f" {row['rss_after'] / 1e6:,.0f} MB"
                )
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            out["after_full_collection"] = {"rss": rss_bytes(), "blocks": live_blocks()}
            out["malloc_trim"] = malloc_trim()
            out["after_malloc_trim"] = {"rss": rss_bytes(), "blocks": live_blocks()}
            root.stop()
            nursery.cancel_scope.cancel()
        await store.aclose()
    return out


async def hibernate_burst(accounts: Accounts) -> float:
    """Let every awake actor but the steady producer's hibernate; seconds it took."""
    idle_timeout = accounts.idle_timeout
    accounts.idle_timeout = 0.0
    start = time.perf_counter()
    try:
        with trio.fail_after(HANG_LIMIT):
            while len(accounts.supervisor) > ("steady" in accounts.registry):
                accounts.sweep_once()
                await trio.sleep(0.25)  # about the sweeper's own pace
    finally:
        accounts.idle_timeout = idle_timeout
    return time.perf_counter() - start


async def burst_wave(
    accounts: Accounts, names: Sequence[str], base: int, tag: str
) -> dict[str, Any]:
    """``names`` (new accounts) one event each, in producer batches through
    ``Accounts.submit``; returns once every account is awake (peaks sampled meanwhile)."""
    budget = accounts.budget
    batches = [names[i : i + BURST_BATCH] for i in range(0, len(names), BURST_BATCH)]
    queue = iter(batches)
    left = len(batches)
    all_acked = trio.Event()
    peak = {"rss": rss_bytes(), "live": len(accounts.supervisor)}
    started = time.perf_counter()
    row: dict[str, Any] = {}

    async def connection() -> None:
        window = trio.Semaphore(BURST_WINDOW)
        for batch in queue:
            await window.acquire()
            await budget.wait_for_room()
            events = [
                Event(f"{tag}-{name}", name, METER.name, Decimal(1), base, PROPERTIES[1])
                for name in batch
            ]
            budget.take(len(events))

            def acked(outcome: Any, size: int = len(events), window: Any = window) -> None:
                nonlocal left
                assert not isinstance(outcome, BaseException), outcome
                budget.give(size)
                window.release()
                left -= 1
                if not left:
                    all_acked.set()

            accounts.submit([(event.account, [event]) for event in events], acked)

    async def sample() -> None:
        while True:
            peak["rss"] = max(peak["rss"], rss_bytes())
            peak["live"] = max(peak["live"], len(accounts.supervisor))
            await trio.sleep(SAMPLE_EVERY)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        for _ in range(BURST_CONNECTIONS):
            nursery.start_soon(connection)
        await all_acked.wait()
        row["acked_s"] = time.perf_counter() - started
        while accounts._waking:  # noqa: ASYNC110 (a bench polls: no event for it on main)
            await trio.sleep(SAMPLE_EVERY)
        row["woken_s"] = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    row.update(peak_rss=peak["rss"], peak_live=peak["live"])
    return row


def run_burst_child(accounts_n: int, waves: int, code: Path | None) -> dict[str, Any]:
    """The burst in a fresh interpreter, on this tree's code or on ``code`` (a directory
    holding another tree's ``meterd`` and ``supervisors``)."""
    command = [
        sys.executable,
        __file__,
        "--burst-child",
        "--burst-accounts",
        str(accounts_n),
        "--waves",
        str(waves),
    ]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=HANG_LIMIT * waves, check=False, env=env
    )
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise RuntimeError(f"burst subprocess failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_burst(args: argparse.Namespace) -> dict[str, Any]:
    """The burst on ``--baseline-ref``'s code and on this tree's, one after the other."""
    root = Path(__file__).resolve().parent.parent
    result: dict[str, Any] = {"params": vars(args)}
    with tempfile.TemporaryDirectory(prefix="accounts-bench-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", args.baseline_ref, "meterd", "supervisors"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        result["commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", args.baseline_ref],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        log(f"burst on {args.baseline_ref} ({result['commit']})")
        result["baseline"] = run_burst_child(args.burst_accounts, args.waves, Path(tmp))
    log("burst on this tree")
    result["this"] = run_burst_child(args.burst_accounts, args.waves, None)
    return result


def _mb(size: float) -> str:
    return f"{size / 1e6:,.0f} MB"


def _memory(where: dict[str, Any]) -> str:
    return f"{_mb(where['rss'])} / {where['blocks'] / 1e6:.2f}M"


def _wave_rows(w: dict[str, Any]) -> dict[str, str]:
    asleep = w["woken_s"] + w["hibernate_s"]
    return {
        "  all acknowledged / woken / asleep, s": (
            f"{w['acked_s']:.1f} / {w['woken_s']:.1f} / {asleep:.1f}"
        ),
        "  peak RSS": _mb(w["peak_rss"]),
        "  peak live actors": f"{w['peak_live']:,}",
        "  RSS / live blocks once all sleep": _memory(
            {"rss": w["rss_after"], "blocks": w["blocks_after"]}
        ),
        "  frozen objects once all sleep": f"{w['frozen_after'] / 1e6:.2f}M",
        "  steady producer p50 / p99 / max, ms": (
            f"{w['steady_p50_ms']:.0f} / {w['steady_p99_ms']:.0f} / {w['steady_max_ms']:,.0f}"
        ),
        "  /metrics store read, max ms": f"{w['probe_max_ms']:,.0f}",
        "  full collections / longest pause, ms": (
            f"{w['gc_full']} / {w['gc_longest_ms'][2]:,.0f}"
            f" (young {w['gc_longest_ms'][0]:,.0f}, middle {w['gc_longest_ms'][1]:,.0f})"
        ),
    }


def print_burst(result: dict[str, Any]) -> None:
    p = result["params"]
    base, this = result["baseline"], result["this"]
    print(
        f"burst: {p['waves']} waves of {p['burst_accounts']:,} new accounts (one event each,"
        f" {BURST_BATCH:,}-event batches over {BURST_CONNECTIONS} connections), every actor"
        f" hibernated after each; meanwhile a steady producer ({STEADY_EVENTS} events every"
        f" {STEADY_EVERY * 1e3:.0f} ms) and a /metrics store read every"
        f" {PROBE_EVERY * 1e3:.0f} ms; {os.cpu_count()} cores"
    )
    label = f"{p['baseline_ref']} ({result['commit']})"
    print(f"{'':44}{label:>26}{'this tree':>26}")

    def row(name: str, left: str, right: str) -> None:
        print(f"{name:44}{left:>26}{right:>26}")

    row("RSS / live blocks at start", _memory(base["start"]), _memory(this["start"]))
    for wave, (b, t) in enumerate(zip(base["waves"], this["waves"], strict=True), start=1):
        print(f"wave {wave}")
        left, right = _wave_rows(b), _wave_rows(t)
        for name in left:
            row(name, left[name], right[name])
    print("after the last wave (RSS / live blocks)")
    for name, key in (
        ("  a full collection (unfreeze, collect)", "after_full_collection"),
        ("  then malloc_trim(0)", "after_malloc_trim"),
    ):
        row(name, _memory(base[key]), _memory(this[key]))


# --------------------------------------------------------------------------- profile summary


def _where(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function  # a builtin
    parts = Path(filename).parts
    for anchor in ("site-packages", "main", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    return f"{'/'.join(parts[-2:])}:{line}({function})"


IDLE = "<method 'poll' of 'select.epoll' objects>"  # the Trio thread waiting for I/O/threads
COMPONENTS = (  # (label, substrings of the file or builtin name), first match wins
    ("idle (epoll wait)", ("select.epoll",)),
    ("sqlite3 (C, GIL released inside)", ("sqlite3.",)),
    ("hashing (blake2b)", ("_blake2",)),
    ("msgpack", ("msgpack",)),
    ("decimal", ("decimal",)),
    ("meterd/accounts", ("meterd/accounts",)),
    ("meterd/store", ("meterd/store",)),
    ("meterd/model", ("meterd/model",)),
    ("supervisors", ("supervisors/",)),
    ("trio", ("trio/", "_contextvars", "outcome/")),
    ("structlog", ("structlog",)),
    ("threading", ("threading", "_thread", "queue")),
)


def _stats(profiles: Sequence[cProfile.Profile]) -> dict[Any, Any]:
    if not profiles:
        return {}
    stats = pstats.Stats(profiles[0], stream=io.StringIO())
    for more in profiles[1:]:
        stats.add(more)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return raw


def _component(key: tuple[str, int, str]) -> str:
    text = key[0] + " " + key[2]
    for label, marks in COMPONENTS:
        if any(mark in text for mark in marks):
            return label
    return "other Python" if key[0] != "~" else "other builtins"


def summarize(profiles: Sequence[cProfile.Profile], count: int = 15) -> dict[str, Any]:
    """Own time by component, top functions by own time, and (project code) by cumulative."""
    raw = _stats(profiles)
    total = sum(value[2] for value in raw.values())
    idle = sum(value[2] for key, value in raw.items() if key[2] == IDLE)
    busy = max(total - idle, 1e-9)
    components: dict[str, float] = {}
    for key, value in raw.items():
        components[_component(key)] = components.get(_component(key), 0.0) + value[2]

    def row(key: Any, value: Any) -> dict[str, Any]:
        return {
            "function": _where(key),
            "calls": value[1],
            "tottime_s": value[2],
            "cumtime_s": value[3],
            "tottime_share": value[2] / busy,
            "cumtime_share": value[3] / busy,
        }

    busy_items = [(k, v) for k, v in raw.items() if k[2] != IDLE]
    by_own = sorted(busy_items, key=lambda item: item[1][2], reverse=True)[:count]
    ours = [(k, v) for k, v in busy_items if "meterd/" in k[0] or "supervisors/" in k[0]]
    by_cum = sorted(ours, key=lambda item: item[1][3], reverse=True)[:count]
    return {
        "seconds": total,
        "idle_share": idle / max(total, 1e-9),
        "components": {
            label: seconds / busy
            for label, seconds in sorted(components.items(), key=lambda item: -item[1])
            if label != "idle (epoll wait)"
        },
        "tottime": [row(k, v) for k, v in by_own],
        "cumtime": [row(k, v) for k, v in by_cum],
    }


def run_profile(
    path: Path, load: Sequence[Call], concurrency: int, options: dict[str, Any]
) -> dict[str, Any]:
    profiles = Profiles()
    run = functools.partial(
        run_meterd, path, load, concurrency, warm=True, options=options, profiles=profiles
    )
    result = trio.run(run)
    return {
        "run": result,
        "main": summarize([profiles.main]),
        "writer": summarize(profiles.writer),
        "reader": summarize(profiles.reader),
    }


# --------------------------------------------------------------------------- what if


def run_what_if(
    args: argparse.Namespace, load: Sequence[Call], options: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The warm uniform run again, changing one thing at a time (the first is unchanged)."""

    def other_load(**change: int) -> list[Call]:
        shape = {"batch": args.batch, "spread": args.spread_minutes, **change}
        calls, _ = build_load(
            args.accounts, args.events, shape["batch"], "uniform", args.seed, shape["spread"]
        )
        return calls

    no_checkpoints = {**options, "checkpoint_interval": 3600.0}
    bare = {"options": no_checkpoints, "gc_off": True}
    variants: list[tuple[str, Callable[[], Sequence[Call]], dict[str, Any]]] = [
        ("as is", lambda: load, {}),
        (
            f"concurrency {args.concurrency * 4}",
            lambda: load,
            {"concurrency": args.concurrency * 4},
        ),
        ("times in 1 minute", lambda: other_load(spread=1), {}),
        ("GC gen0 at 100k", lambda: load, {"gc_threshold": (100_000, 10, 10)}),
        ("GC off", lambda: load, {"gc_off": True}),
        ("no checkpoints", lambda: load, {"options": no_checkpoints}),
        ("no ckpt, GC off", lambda: load, bare),
        ("no ckpt, GC off, calls of 500", lambda: other_load(batch=500), bare),
    ]
    out: dict[str, dict[str, Any]] = {}
    for label, make, change in variants:
        calls = make()
        kwargs: dict[str, Any] = {"options": options, "concurrency": args.concurrency, **change}
        concurrency = kwargs.pop("concurrency")
        with tempfile.TemporaryDirectory(prefix="accounts-bench-") as tmp:
            run = functools.partial(
                run_meterd, Path(tmp) / "what-if.sqlite3", calls, concurrency, warm=True, **kwargs
            )
            out[label] = trio.run(run)
        log(f"what if {label}: {out[label]['events_per_s']:,.0f} ev/s")
        del calls
    return out


# --------------------------------------------------------------------------- report


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the repeats (and the best events/s, as ``best_per_s``)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if all(key in run for run in runs) and isinstance(value, int | float):
            out[key] = statistics.median(run[key] for run in runs)
        else:
            out[key] = value
    out["mismatched_windows"] = max(run.get("mismatched_windows", 0) for run in runs)
    out["best_per_s"] = max(run["events_per_s"] for run in runs)
    out["repeats"] = len(runs)
    return out


def _table(
    columns: list[str], runs: list[dict[str, Any]], baselines: dict[str, dict[str, Any]]
) -> None:
    """One column per meterd run, then one per baseline (naive) run."""
    width = max(14, *(len(col) + 2 for col in [*columns, *baselines]))
    all_runs = [*runs, *baselines.values()]
    print(f"{'':34}" + "".join(f"{col:>{width}}" for col in [*columns, *baselines]))

    def row(label: str, fmt: Callable[[dict[str, Any]], str], both: bool = False) -> None:
        cells = [fmt(x) for x in (all_runs if both else runs)]
        if not both:
            cells += ["-"] * len(baselines)
        print(f"{label:34}" + "".join(f"{cell:>{width}}" for cell in cells))

    row("events/s (durable)", lambda x: f"{x['events_per_s']:,.0f}", both=True)
    if any(x.get("repeats", 1) > 1 for x in all_runs):
        row("  best of the repeats", lambda x: f"{x['best_per_s']:,.0f}", both=True)
    row("seconds", lambda x: f"{x['seconds']:.2f}", both=True)
    row(
        "ingest latency p50 / p99 ms",
        lambda x: f"{x['latency_p50_ms']:.0f} / {x['latency_p99_ms']:.0f}",
    )
    row("CPU µs per event (all threads)", lambda x: f"{x['cpu_us']:.1f}", both=True)
    row("  Trio thread", lambda x: f"{x['main_cpu_us']:.1f}")
    row("  writer thread", lambda x: f"{x['writer_cpu_us']:.1f}")
    row("  reader threads (checkpoints)", lambda x: f"{x['reader_cpu_us']:.1f}")
    row("Trio thread CPU busy", lambda x: f"{x['main_busy']:.0%}")
    row("writer thread busy (wall)", lambda x: f"{x['writer_busy']:.0%}")
    row("  of which COMMIT (fsync)", lambda x: f"{x['commit_share']:.0%}")
    row("reader queries", lambda x: f"{x['reader_queries']:,.0f}")
    row("transactions", lambda x: f"{x['commits']:,.0f}", both=True)
    row("events per transaction", lambda x: f"{x['events_per_commit']:,.0f}", both=True)
    row("GC pause share (full GCs)", lambda x: f"{x['gc_share']:.0%} ({x['gc_full']:.0f})")
    row("windows wrong (exactness)", lambda x: f"{x['mismatched_windows']:,}", both=True)


def print_report(result: dict[str, Any]) -> None:
    p = result["params"]
    print(
        f"{p['events']:,} events, {p['accounts']:,} accounts, calls of {p['batch']} events of one"
        f" account, {p['concurrency']} concurrent callers; sum meter + 1 dimension, Decimal"
        f" quantities, times over {p['spread_minutes']} minute(s); SQLite {result['sqlite']}, WAL,"
        f" synchronous=FULL; {os.cpu_count()} cores; median of {p['repeats']}"
    )
    for dist in ("uniform", "zipf"):
        r = result[dist]
        w, c, n, nd = r["warm"], r["cold"], r["naive"], r["naive_dedupe"]
        hot = f" (hottest account: {r['hottest_share']:.1%} of calls)" if dist == "zipf" else ""
        print(f"\n{dist}{hot}")
        _table(["meterd warm", "meterd cold"], [w, c], {"naive": n, "naive+dedupe": nd})
        print(
            f"ratio meterd / naive: warm {w['events_per_s'] / n['events_per_s']:.2f}x,"
            f" cold {c['events_per_s'] / n['events_per_s']:.2f}x"
            f" (vs naive+dedupe: warm {w['events_per_s'] / nd['events_per_s']:.2f}x)"
        )
    what_if = result.get("what_if")
    if what_if:
        print("\nwhat if (the warm uniform run, one change each; CPU in µs per event)")
        print(
            f"{'':32}{'events/s':>10}{'p50/p99 ms':>13}{'CPU':>7}{'Trio':>7}{'writer':>7}"
            f"{'reader':>7}{'ckpt reads':>11}{'GC':>6}{'wrong':>7}"
        )
        for label, x in what_if.items():
            latency = f"{x['latency_p50_ms']:.0f}/{x['latency_p99_ms']:.0f}"
            print(
                f"{label:32}{x['events_per_s']:>10,.0f}{latency:>13}{x['cpu_us']:>7.1f}"
                f"{x['main_cpu_us']:>7.1f}{x['writer_cpu_us']:>7.1f}{x['reader_cpu_us']:>7.1f}"
                f"{x['reader_queries']:>11,.0f}{x['gc_share']:>6.0%}{x['mismatched_windows']:>7,}"
            )
    memory = result.get("memory")
    if memory:
        rss, traced = memory["rss"], memory["traced"]
        print(f"\nmemory ({rss['accounts']:,} accounts woken with one event each, fresh process)")
        print(f"{'':34}{'RSS':>14}{'tracemalloc':>14}")
        for label, key in (
            ("bytes per awake actor", "per_awake_actor"),
            ("bytes per hibernated account", "per_hibernated_account"),
        ):
            print(f"{label:34}{rss[key]:>14,.0f}{traced[key]:>14,.0f}")
        tables = ", ".join(
            f"{name} {size:,.0f}"
            for name, size in sorted(rss["db_tables_per_account"].items())
            if size
        )
        print(
            f"database bytes per hibernated account (one event): {rss['db_bytes_per_account']:,.0f}"
            f" ({tables})"
        )
        if "hibernation_peak_per_account" in traced:
            print(
                "peak while they all hibernate at once (tracemalloc):"
                f" {traced['hibernation_peak_per_account']:,.0f} B per account"
            )
        print(
            f"re-waking {rss['rewoken']:,} of them grew RSS by"
            f" {rss['rss_growth_rewaking'] / 1e6:.1f} MB;"
            f" hibernating all took {rss['hibernate_s']:.2f} s"
        )
        grown = traced.get("per_account_grown")
        if grown:
            print(
                f"one account after {grown['events']:,} events: "
                f"{grown['bytes']:,.0f} B (tracemalloc)"
            )
    print("\nwake-up latency (one call at a time, one event; p50 / p99 ms)")
    print(f"{'':48}{'wake (asleep)':>16}{'same, awake':>16}")
    rows = []
    wake = result["uniform"].get("wake")
    if wake:
        db = result["uniform"]["warm"]["db_bytes_per_account"]
        rows.append((f"after the uniform run ({db / 1e3:,.0f} kB of DB per account)", wake))
    if memory:
        rows.append(("memory process (1 event per account)", memory["rss"]["wake"]))
    for label, x in rows:
        wake_text = f"{x['wake_p50_ms']:.2f} / {x['wake_p99_ms']:.2f}"
        awake_text = f"{x['awake_p50_ms']:.2f} / {x['awake_p99_ms']:.2f}"
        print(f"{label:48}{wake_text:>16}{awake_text:>16}")
    profile = result.get("profile")
    if profile:
        print_profile(profile)


def print_profile(profile: dict[str, Any]) -> None:
    run = profile["run"]
    print(
        f"\nprofile: the warm uniform run under cProfile ({run['events_per_s']:,.0f} events/s"
        " profiled); shares are of each thread's busy time"
    )
    for thread in ("main", "writer", "reader"):
        summary = profile[thread]
        if not summary["tottime"]:
            continue
        name = {"main": "Trio thread", "writer": "writer thread", "reader": "reader threads"}
        idle = f", idle {summary['idle_share']:.0%}" if thread == "main" else ""
        print(f"\n{name[thread]}: {summary['seconds']:.1f} s profiled{idle}")
        print(
            "  by component: "
            + ", ".join(
                f"{label} {share:.0%}"
                for label, share in summary["components"].items()
                if share >= 0.01
            )
        )
        for title, key, share in (
            ("top 15 by own time", "tottime", "tottime_share"),
            ("top 15 by cumulative time (meterd and supervisors code)", "cumtime", "cumtime_share"),
        ):
            if thread != "main" and key == "cumtime":
                continue
            print(f"  {title}:")
            for item in summary[key]:
                print(
                    f"    {item[share]:6.1%} {item['tottime_s']:6.2f}s own"
                    f" {item['cumtime_s']:6.2f}s cum {item['calls']:>9,}  {item['function']}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spread-minutes", type=int, default=60, help="event times over this many minutes"
    )
    parser.add_argument(
        "--checkpoint-interval", type=float, default=None, help="Accounts' (default: its own)"
    )
    parser.add_argument(
        "--what-if", action="store_true", help="also run variants of the warm uniform run"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 accounts, 50k events")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--json-out", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--memory-child", choices=("rss", "traced"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--burst", action="store_true", help="only the burst of new accounts (see the doc)"
    )
    parser.add_argument("--burst-accounts", type=int, default=50_000, help="per wave")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--baseline-ref", default="main", help="the burst's baseline (git ref)")
    parser.add_argument("--burst-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure(level="warning")
    if args.burst_child:
        print(json.dumps(trio.run(burst_child, args.burst_accounts, args.waves)))
        return
    if args.burst:
        burst = run_burst(args)
        if args.json_out:
            args.json_out.write_text(json.dumps(burst, indent=2, default=str))
        if args.json:
            print(json.dumps(burst, indent=2, default=str))
        else:
            print_burst(burst)
        return
    if args.memory_child:
        child = trio.run(
            memory_child, args.accounts, args.concurrency, args.memory_child == "traced"
        )
        print(json.dumps(child))
        return
    if args.quick:
        args.accounts, args.events = 1_000, 50_000

    options: dict[str, Any] = {}
    if args.checkpoint_interval is not None:
        options["checkpoint_interval"] = args.checkpoint_interval
    result: dict[str, Any] = {"params": vars(args), "sqlite": sqlite3.sqlite_version}
    for dist in ("uniform", "zipf"):
        load, hottest = build_load(
            args.accounts, args.events, args.batch, dist, args.seed, args.spread_minutes
        )
        runs: dict[str, list[dict[str, Any]]] = {
            "warm": [],
            "cold": [],
            "naive": [],
            "naive_dedupe": [],
        }
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="accounts-bench-") as tmp:
                wake = WAKE_SAMPLES if dist == "uniform" and repeat == 0 else 0
                warm = functools.partial(
                    run_meterd,
                    Path(tmp) / "warm.sqlite3",
                    load,
                    args.concurrency,
                    warm=True,
                    wake_samples=min(wake, args.accounts),
                    options=options,
                )
                runs["warm"].append(trio.run(warm))
                cold = functools.partial(
                    run_meterd,
                    Path(tmp) / "cold.sqlite3",
                    load,
                    args.concurrency,
                    warm=False,
                    options=options,
                )
                runs["cold"].append(trio.run(cold))
                runs["naive"].append(run_naive(Path(tmp) / "naive.sqlite3", load))
                runs["naive_dedupe"].append(
                    run_naive(Path(tmp) / "naive-dedupe.sqlite3", load, dedupe=True)
                )
            log(
                f"{dist} repeat {repeat + 1}:"
                + "".join(f" {k} {v[-1]['events_per_s']:,.0f} ev/s" for k, v in runs.items())
            )
        wake_result = runs["warm"][0].pop("wake", None)
        hibernated_in = runs["warm"][0].pop("hibernate_all_s", None)
        result[dist] = {k: median_runs(v) for k, v in runs.items()}
        result[dist]["hottest_share"] = hottest
        if dist == "uniform":
            result[dist]["wake"] = wake_result
            result[dist]["hibernate_all_s"] = hibernated_in
            if not args.no_profile:
                with tempfile.TemporaryDirectory(prefix="accounts-bench-") as tmp:
                    result["profile"] = run_profile(
                        Path(tmp) / "prof.sqlite3", load, args.concurrency, options
                    )
                log("profiled run done")
            if args.what_if:
                result["what_if"] = run_what_if(args, load, options)
        del load
        gc.collect()
    if not args.no_memory:
        result["memory"] = {
            "rss": run_memory(args.accounts, args.concurrency, traced=False),
            "traced": run_memory(args.accounts, args.concurrency, traced=True),
        }
        log("memory subprocesses done")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
