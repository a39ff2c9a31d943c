"""Store-writer microbenchmark: CPU per event of :meth:`Writer.submit_batch` (issue 4's shape).

``python -m meterd.bench.writer`` drives a real :class:`~meterd.store.Writer` on a temporary
SQLite file (WAL, ``synchronous=FULL``, as the daemon opens it) from Trio, the way ingest
does: producer batches of ``--batch`` validated events, each event's account drawn uniformly
among ``--accounts`` (so a 500-event batch over 10,000 accounts is ~488 one-event groups),
grouped by account in arrival order, ``--in-flight`` batches submitted at a time (ingest's
connections) and awaited. Events are those of ``meterd bench ingest``: meter
``dyno.seconds``, quantities ``Decimal`` with 3 decimals, properties ``size`` and ``app``,
times within the last hour, ids unique.

The writer gets the daemon's options (``meterd/app.py`` with the default config:
``audit_retention_ms`` and ``dedupe_window_ms`` of 35 days) where the code measured takes
them. Each repeat opens a fresh database and first writes one event per account, untimed (every
account row exists and the writer's per-account caches are warm, as in steady state), then
times ``--batches`` batches. The collector runs with the daemon's settings (``meterd/app.py``:
a 50,000-object first generation, start-up objects frozen). Figures, medians over
``--repeats``:

* ``process CPU µs/event``: ``time.process_time`` (every thread: the Trio thread, the
  writer thread, SQLite's C code) over the timed batches, divided by their events;
* ``CPU outside SQLite µs/event``: the same less the CPU time spent inside the connection's
  ``execute``/``executemany`` calls (measured on the calling thread around each call, the
  rows fetched inside it): roughly the GIL-held part, what limits a GIL-bound daemon, since
  SQLite's C code runs without the GIL;
* ``submit_batch µs/event``: ``time.thread_time`` of the ``submit_batch`` calls alone (the
  argument check on the Trio thread);
* ``wall µs/event`` (fsyncs included: the disk, not the CPU, may dominate this one);
* ``storage writes KiB/event``: what the process caused to be written to storage over the
  timed batches (``write_bytes`` of ``/proc/self/io``: WAL frames, and database pages when
  SQLite copies the WAL back), divided by their events. SQLite writes whole pages, so a row
  inserted at a random place in a B-tree costs a 4 KiB page at the next commit unless
  another row of the group landed on the same page: this is the write amplification of the
  storage layout, and the disk's bandwidth caps a sustained ingest rate at roughly
  bandwidth / this figure. ``—`` where ``/proc/self/io`` cannot be read.

The **naive peer** (same process, same events, same Trio/thread arrangement): the baseline
server's store of :mod:`meterd.bench.ingest` (``_Baseline.insert``): one ``INSERT OR IGNORE``
per event into one ``(account, id)``-keyed table, one transaction per batch on a worker
thread, given each batch's events as dicts, as it gets them from a decoded frame (built
before the clock starts, as the writer's ``Event`` objects are): a floor for "make the events
durable" with the same libraries.

``--against REF`` (default ``main``) also runs the writer part on the code of git revision
``REF`` (``git archive`` of ``meterd/`` and ``supervisors/`` into a temporary directory, this
bench file copied in, run in a subprocess), so a change is shown as before/after.
``--against ''`` skips it. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import trio

from meterd import logs
from meterd.bench._proc import write_bytes
from meterd.bench._revision import figures_at
from meterd.bench.ingest import _Baseline
from meterd.config import StoreConfig
from meterd.memory import THRESHOLDS
from meterd.model import Event
from meterd.store import AppendResult, Writer

__all__ = ["Figures", "build_batches", "main", "run_naive", "run_writer"]

METER: Final = "dyno.seconds"
SIZES: Final = ("std-1x", "std-2x", "perf-m", "perf-l")
APPS: Final = tuple(f"app-{n}" for n in range(8))

Groups = list[tuple[str, list[Event]]]


@dataclass(frozen=True, slots=True)
class Figures:
    """One run: per-event figures in microseconds."""

    events: int
    process_cpu_us: float
    outside_sqlite_us: float
    submit_us: float
    wall_us: float
    written_kib: float  # NaN: not measurable here


class _Fetched:
    """A cursor's rows, fetched inside the timed call (rows and ``rowcount``, what the
    store and the baseline use of a cursor)."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.rows = cursor.fetchall()
        self.rowcount = cursor.rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


class _TimedConnection:
    """A connection that adds up the CPU time of the thread calling it spends in
    ``execute``/``executemany`` (SQLite's C code, which runs without the GIL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.seconds = 0.0

    def execute(self, sql: str, parameters: Any = ()) -> _Fetched:
        before = time.thread_time()
        try:
            return _Fetched(self.conn.execute(sql, parameters))
        finally:
            self.seconds += time.thread_time() - before

    def executemany(self, sql: str, rows: Iterable[Any]) -> _Fetched:
        before = time.thread_time()
        try:
            return _Fetched(self.conn.executemany(sql, rows))
        finally:
            self.seconds += time.thread_time() - before

    def __getattr__(self, name: str) -> Any:  # in_transaction, total_changes, close
        return getattr(self.conn, name)


def account_name(index: int) -> str:
    return f"acct-{index:05d}"


def _event(rng: random.Random, number: int, account: str, now: int, prefix: str) -> Event:
    quantity = rng.randrange(1, 3_600_000)
    return Event(
        id=f"{prefix}-{number}",
        account=account,
        meter=METER,
        quantity=Decimal(f"{quantity // 1000}.{quantity % 1000:03d}"),
        time=now - rng.randrange(3_600_000),
        properties=(("app", rng.choice(APPS)), ("size", rng.choice(SIZES))),
        producer="bench",
        received_at=now,
    )


def _grouped(events: Sequence[Event]) -> Groups:
    """Events grouped by account in arrival order, as ingest submits them."""
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.account, []).append(event)
    return list(groups.items())


def build_batches(
    batches: int, batch: int, accounts: int, *, seed: int = 1, now: int | None = None
) -> tuple[list[Groups], list[Groups]]:
    """``(warm_up, timed)``: one event per account, then ``batches`` random batches."""
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000 if now is None else now
    names = [account_name(index) for index in range(accounts)]
    warm = [_event(rng, n, names[n], now, "warm") for n in range(accounts)]
    warm_up = [_grouped(warm[start : start + batch]) for start in range(0, accounts, batch)]
    timed = []
    for number in range(batches):
        events = [
            _event(rng, number * batch + n, names[rng.randrange(accounts)], now, "run")
            for n in range(batch)
        ]
        timed.append(_grouped(events))
    return warm_up, timed


def _count(batches: Sequence[Groups]) -> int:
    return sum(len(events) for groups in batches for _, events in groups)


async def _drive_writer(
    writer: Writer, batches: Sequence[Groups], in_flight: int
) -> tuple[float, int]:
    """Submit ``batches`` ``in_flight`` at a time; the Trio-thread CPU of the submits and
    the events accepted."""
    submit_cpu = 0.0
    accepted = 0
    done = trio.Semaphore(0)
    outcomes: list[Any] = []

    def on_done(outcome: list[AppendResult] | BaseException) -> None:
        outcomes.append(outcome)
        done.release()

    for start in range(0, len(batches), in_flight):
        chunk = batches[start : start + in_flight]
        outcomes.clear()
        for groups in chunk:
            before = time.thread_time()
            writer.submit_batch(groups, on_done, producer="bench", seq=start)
            submit_cpu += time.thread_time() - before
        for _ in chunk:
            await done.acquire()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            accepted += sum(len(result.accepted) for result in outcome)
    return submit_cpu, accepted


def _daemon_options() -> dict[str, Any]:
    """The options the daemon gives its writer (meterd/app.py, the default config) that this
    code's :class:`Writer` takes: a reference revision that predates one runs without it."""
    window = 35 * 86_400_000  # dedupe_window
    wanted = {"audit_retention_ms": window, "dedupe_window_ms": window}
    known = inspect.signature(Writer).parameters
    return {name: value for name, value in wanted.items() if name in known}


def new_writer(path: Path, **options: Any) -> Writer:
    """A :class:`Writer` with the daemon's ``[store]`` defaults, on this code or on a
    reference revision's (where the table's keys were keyword arguments with defaults)."""
    if "config" in inspect.signature(Writer).parameters:
        return Writer(path, StoreConfig(), **options)  # type: ignore[call-arg, unused-ignore]
    return Writer(path, **options)  # type: ignore[call-arg, unused-ignore]


async def _writer_run(
    path: Path, warm_up: list[Groups], timed: list[Groups], in_flight: int
) -> Figures:
    writer = new_writer(path, **_daemon_options())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        timed_conn = _TimedConnection(cast(sqlite3.Connection, writer._connection))
        writer._connection = cast(sqlite3.Connection, timed_conn)
        await _drive_writer(writer, warm_up, in_flight)
        events = _count(timed)
        timed_conn.seconds = 0.0
        written0 = write_bytes(os.getpid())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        submit_cpu, accepted = await _drive_writer(writer, timed, in_flight)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        written = _written_kib(written0, events)
        sql = timed_conn.seconds
        if accepted != events:
            raise RuntimeError(f"the writer accepted {accepted} of {events} new events")
        nursery.cancel_scope.cancel()
    return Figures(
        events,
        cpu / events * 1e6,
        (cpu - sql) / events * 1e6,
        submit_cpu / events * 1e6,
        wall / events * 1e6,
        written,
    )


def _written_kib(before: int | None, events: int) -> float:
    """KiB per event this process wrote to storage since ``before`` (NaN if unknown)."""
    after = write_bytes(os.getpid())
    if before is None or after is None:
        return math.nan
    return (after - before) / events / 1024


def run_writer(warm_up: list[Groups], timed: list[Groups], in_flight: int) -> Figures:
    """One repeat of the writer on a fresh temporary database."""
    with tempfile.TemporaryDirectory(prefix="meterd-bench-writer-") as tmp:
        return trio.run(_writer_run, Path(tmp) / "store.db", warm_up, timed, in_flight)


def _as_frame_events(groups: Groups) -> list[dict[str, Any]]:
    """A batch's events as the baseline server gets them from a decoded frame."""
    return [
        {
            "id": e.id,
            "account": e.account,
            "meter": e.meter,
            "quantity": str(e.quantity),
            "time": e.time,
            "properties": dict(e.properties),
        }
        for _, events in groups
        for e in events
    ]


async def _naive_run(
    path: Path, warm_up: list[Groups], timed: list[Groups], in_flight: int
) -> Figures:
    naive = _Baseline(path, token="")
    timed_conn = _TimedConnection(naive.db)
    naive.db = cast(sqlite3.Connection, timed_conn)
    limiter = trio.CapacityLimiter(1)

    async def drive(batches: Sequence[list[dict[str, Any]]]) -> int:
        inserted = 0

        async def one(events: list[dict[str, Any]]) -> None:
            nonlocal inserted
            new = await trio.to_thread.run_sync(naive.insert, events, limiter=limiter)
            inserted += new

        for start in range(0, len(batches), in_flight):
            async with trio.open_nursery() as nursery:
                for events in batches[start : start + in_flight]:
                    nursery.start_soon(one, events)
        return inserted

    try:
        await drive([_as_frame_events(groups) for groups in warm_up])
        frames = [_as_frame_events(groups) for groups in timed]  # decoded: not timed
        events = _count(timed)
        timed_conn.seconds = 0.0
        written0 = write_bytes(os.getpid())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        inserted = await drive(frames)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        written = _written_kib(written0, events)
        sql = timed_conn.seconds
    finally:
        naive.db.close()
    if inserted != events:
        raise RuntimeError(f"the naive peer inserted {inserted} of {events} new events")
    return Figures(
        events, cpu / events * 1e6, (cpu - sql) / events * 1e6, 0.0, wall / events * 1e6, written
    )


def run_naive(warm_up: list[Groups], timed: list[Groups], in_flight: int) -> Figures:
    """One repeat of the naive peer on a fresh temporary database."""
    with tempfile.TemporaryDirectory(prefix="meterd-bench-naive-") as tmp:
        return trio.run(_naive_run, Path(tmp) / "naive.db", warm_up, timed, in_flight)


def _median(runs: Sequence[Figures]) -> dict[str, float]:
    return {
        "process_cpu_us": statistics.median(r.process_cpu_us for r in runs),
        "outside_sqlite_us": statistics.median(r.outside_sqlite_us for r in runs),
        "submit_us": statistics.median(r.submit_us for r in runs),
        "wall_us": statistics.median(r.wall_us for r in runs),
        "written_kib": statistics.median(r.written_kib for r in runs),
    }


def _reference(ref: str, argv: list[str]) -> dict[str, float] | str:
    """The figures on the code of git revision ``ref`` (or why it could not run)."""
    return figures_at(ref, "writer", argv, "writer")


def _cell(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.writer", description=__doc__)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per repeat")
    parser.add_argument("--batch", type=int, default=500, help="events per batch")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=4, help="batches submitted at a time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", default="main", help="git revision to compare ('': none)")
    parser.add_argument("--json", action="store_true", help="writer figures only, as JSON")
    args = parser.parse_args(argv)
    logs.configure(level="warning")  # no store_migrated line per repeat
    warm_up, timed = build_batches(args.batches, args.batch, args.accounts)
    # The daemon's collector settings (meterd/app.py: serve), with the events built so far
    # frozen like what the daemon allocates at start-up; the defaults would add a few
    # µs/event of collections to every column.
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
    writer = _median([run_writer(warm_up, timed, args.in_flight) for _ in range(args.repeats)])
    if args.json:
        import meterd

        print(json.dumps({"writer": writer, "source": meterd.__file__}))
        return
    naive = _median([run_naive(warm_up, timed, args.in_flight) for _ in range(args.repeats)])
    passed = [
        f"--batches={args.batches}",
        f"--batch={args.batch}",
        f"--accounts={args.accounts}",
        f"--in-flight={args.in_flight}",
        f"--repeats={args.repeats}",
    ]
    reference = _reference(args.against, passed) if args.against else None
    groups = statistics.mean(len(g) for g in timed)
    print(
        f"store writer bench: {args.batches} batches x {args.batch} events over"
        f" {args.accounts} accounts ({groups:.0f} groups a batch), {args.in_flight} in flight,"
        f" median of {args.repeats} repeats (µs per event)"
    )
    columns = [("this code", writer), ("naive peer", naive)]
    if isinstance(reference, dict):
        columns.insert(1, (f"writer @ {args.against}", reference))
    print(f"| figure | {' | '.join(name for name, _ in columns)} |")
    print(f"|---|{'---:|' * len(columns)}")
    for key, label in (
        ("process_cpu_us", "process CPU µs/event"),
        ("outside_sqlite_us", "CPU outside SQLite µs/event"),
        ("submit_us", "submit_batch µs/event"),
        ("wall_us", "wall µs/event"),
        ("written_kib", "storage writes KiB/event"),
    ):
        cells = [_cell(figures.get(key, math.nan)) for _, figures in columns]
        print(f"| {label} | {' | '.join(cells)} |")
    if isinstance(reference, str):
        print(f"(no reference: {reference})")
    elif reference is not None:
        for key, label in (
            ("process_cpu_us", "process CPU"),
            ("outside_sqlite_us", "CPU outside SQLite"),
        ):
            ratio = reference[key] / writer[key]
            print(f"{label}: {args.against} / this code = {ratio:.2f}x")


if __name__ == "__main__":
    main()
