"""Microbenchmark: CPU per event of delivering committed batches to the meter actors.

``python -m meterd.bench.deliver`` measures what happens on the Trio thread after the store
writer committed a producer batch: ``Accounts.submit``'s commit callback (``committed``:
one delivery per account share, the in-flight budget's per-account bookkeeping, the
mailbox send) and the actors applying the deliveries (the dispatcher's drain,
``MeterActor.handle_info`` -> ``AccountUsage.apply``, the budget given back).

Set-up
    A real :class:`~meterd.accounts.service.Accounts` on a temporary store, under its real
    supervisor (``root`` = [store writer, ``accounts``]), with ``accounts`` meter actors
    all awake (started before the clock). The load is the issue's shape: ``batch``-event
    batches, each event's account drawn uniformly among ``accounts``, meter
    ``dyno.seconds`` (``sum``, dimensions ``size`` and ``app``), quantities decimal strings
    with 3 decimals, 2 properties, times within the last hour.

What is timed
    The writer itself is not run: its ``submit_batch`` is replaced by one that keeps the
    batch's commit callback, and the bench calls that callback with the verdicts a commit
    would report (every event accepted, journal batch ids increasing), ``group`` batches in
    a row as the writer does for one group commit, then lets the actors drain (until every
    task is blocked). ``time.process_time`` over all of it, per event; ``callback`` is the
    part spent in the commit callbacks, ``drain`` the rest (actors, scheduler). Medians of
    ``repeats`` runs of ``batches`` batches, after one untimed run.

Peer (the floor)
    The same events applied straight to one :class:`~meterd.accounts.aggregate.AccountUsage`
    per account in a loop (``apply_events`` per share, or ``apply`` per event on code without
    it): no messages, no actors, no budget.

The collector runs with the daemon's thresholds (:data:`meterd.memory.THRESHOLDS`, as
``meterd.app.serve`` sets them; ``--gc-threshold``), and its passes are reported apart
(``gc.callbacks``): what they cost depends on the whole heap, not only on this path.

At the end the actors' usage is checked against the floor's (every event counted once) and
the budget must be back to zero.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from meterd.accounts.actor import MeterActor
from meterd.accounts.aggregate import AccountUsage
from meterd.accounts.service import Accounts, running_accounts
from meterd.config import AccountsConfig, Duration, StoreConfig
from meterd.memory import THRESHOLDS
from meterd.model import MINUTE_MS, Aggregation, Event, Meter
from meterd.store import AppendResult

METER = Meter("dyno.seconds", Aggregation.SUM, ("size", "app"))
SIZES = ("std-1x", "std-2x", "perf-m", "perf-l")
APPS = tuple(f"app-{n}" for n in range(8))

DAEMON_GC_THRESHOLD = THRESHOLDS  # what meterd.app.serve sets

Groups = list[tuple[str, list[Event]]]


@dataclass(frozen=True, slots=True)
class Figures:
    """Median CPU microseconds per event."""

    total: float  # callbacks + drain, without the cyclic garbage collector's passes
    callback: float
    drain: float
    gc: float  # the collector's passes during the actors' runs (a mean: passes are rare)
    floor: float
    floor_gc: float  # the same during the floor's runs
    full: int  # full collections during the actors' timed runs
    floor_full: int


class GcTimer:
    """CPU seconds spent in the cyclic garbage collector while :attr:`on` (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.on = False
        self.full = 0  # full collections (generation 2) while on
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        elif self.on:
            self.seconds += time.process_time() - self._start
            self.full += info["generation"] == 2

    def take(self) -> tuple[float, int]:
        """Seconds and full collections since the last take."""
        seconds, self.seconds = self.seconds, 0.0
        full, self.full = self.full, 0
        return seconds, full


def account_name(index: int) -> str:
    return f"acct-{index:05d}"


def build_batches(
    count: int, batch: int, accounts: int, rng: random.Random, tag: str
) -> list[Groups]:
    """``count`` batches of ``batch`` events, each grouped by account as ingest groups them."""
    now = int(time.time() * 1000)
    out: list[Groups] = []
    for b in range(count):
        groups: dict[str, list[Event]] = {}
        for i in range(batch):
            account = account_name(rng.randrange(accounts))
            event = Event(
                f"{tag}-{b}-{i}",
                account,
                METER.name,
                Decimal(f"{rng.randrange(1, 100_000) / 1000:.3f}"),
                now - rng.randrange(3_600_000),
                (("app", rng.choice(APPS)), ("size", rng.choice(SIZES))),
            )
            groups.setdefault(account, []).append(event)
        out.append(list(groups.items()))
    return out


FLOOR_BY_SHARE = hasattr(AccountUsage, "apply_events")  # False on code before it


def floor_run(batches: Sequence[Groups], usage: dict[str, AccountUsage]) -> float:
    """CPU seconds to apply ``batches`` straight to per-account usage (the peer): one
    ``AccountUsage.apply_events`` per share (``apply`` per event where that is missing)."""
    meters = {METER.name: METER}
    started = time.process_time()
    for groups in batches:
        for account, events in groups:
            found = usage.get(account)
            if found is None:
                found = usage[account] = AccountUsage()
            if FLOOR_BY_SHARE:
                found.apply_events(meters, events)
            else:
                for event in events:
                    found.apply(METER, event)
    return time.process_time() - started


class _Capture:
    """Stands in for ``Writer.submit_batch``: keeps the commit callback of each batch."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def __call__(self, groups: Any, on_done: Callable[[Any], None], **_: Any) -> None:
        self.callbacks.append(on_done)


async def actors_run(
    accounts: Accounts,
    batches: Sequence[Groups],
    group: int,
    next_batch_id: list[int],
    gc_timer: GcTimer,
) -> tuple[float, float, float, int]:
    """CPU seconds (total, in the callbacks, in the collector) to deliver ``batches`` and let
    the actors apply them, and the full collections meanwhile; total and callbacks exclude
    the collector's passes."""
    capture = _Capture()
    writer = accounts.store.writer
    original = writer.submit_batch
    writer.submit_batch = capture  # type: ignore[method-assign]
    try:
        for groups in batches:
            accounts.submit(groups, lambda outcome: None)
    finally:
        writer.submit_batch = original  # type: ignore[method-assign]
    verdicts: list[list[AppendResult]] = []
    for groups in batches:
        results = []
        for _account, events in groups:
            next_batch_id[0] += 1
            results.append(AppendResult(next_batch_id[0], list(range(len(events))), [], []))
        verdicts.append(results)
    callbacks = capture.callbacks
    in_callbacks = 0.0
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()  # what the bench itself allocated is old now: not the actors' garbage
    gc_timer.take()
    gc_timer.on = True
    started = time.process_time()
    for first in range(0, len(batches), group):
        mark = time.process_time()
        gc_mark = gc_timer.seconds
        for index in range(first, min(first + group, len(batches))):
            callbacks[index](verdicts[index])
        in_callbacks += time.process_time() - mark - (gc_timer.seconds - gc_mark)
        await trio.testing.wait_all_tasks_blocked()
    total = time.process_time() - started
    gc_timer.on = False
    in_gc, full = gc_timer.take()
    return total - in_gc, in_callbacks, in_gc, full


@dataclass(frozen=True, slots=True)
class Shape:
    """The load and how it is timed (the command's options)."""

    accounts: int = 10_000
    batch: int = 500
    batches: int = 100  # per timed run
    repeats: int = 5
    group: int = 4  # batches per writer group commit
    seed: int = 1
    freeze: bool = False  # gc.freeze() once the actors are awake


async def bench(shape: Shape) -> Figures:
    gc_timer = GcTimer()
    gc.callbacks.append(gc_timer)
    try:
        with tempfile.TemporaryDirectory(prefix="meterd-bench-deliver-") as tmp:
            async with running_accounts(
                Path(tmp) / "meterd.sqlite3",
                {METER.name: METER},
                store=StoreConfig(checkpoint_interval=Duration(86_400_000)),
                accounts=AccountsConfig(idle_timeout=Duration(86_400_000)),
                max_in_flight_events=10**9,
            ) as accounts:
                await wake_all(accounts, shape.accounts)
                if shape.freeze:
                    gc.collect()
                    gc.freeze()
                runs = await timed_runs(accounts, gc_timer, shape)
    finally:
        gc.callbacks.remove(gc_timer)
        gc.unfreeze()
    medians = [statistics.median(column) for column in zip(*runs, strict=True)]
    means = [statistics.fmean(column) for column in zip(*runs, strict=True)]
    total, callback, _, floor, _, _, _ = medians
    _, _, in_gc, _, floor_gc, full, floor_full = means
    return Figures(
        total,
        callback,
        total - callback,
        in_gc,
        floor,
        floor_gc,
        round(full * shape.repeats),
        round(floor_full * shape.repeats),
    )


async def wake_all(accounts: Accounts, count: int) -> None:
    """Start the actors of accounts ``0..count-1`` (a few hundred at a time)."""
    limiter = trio.CapacityLimiter(256)

    async def wake(account: str) -> None:
        async with limiter:
            await accounts.ensure_started(account)

    async with trio.open_nursery() as waking:
        for index in range(count):
            waking.start_soon(wake, account_name(index))
    awake = len(accounts.registry)
    if awake != count:
        raise AssertionError(f"{awake} actors awake, not {count}")


async def timed_runs(
    accounts: Accounts, gc_timer: GcTimer, shape: Shape
) -> list[tuple[float, ...]]:
    """One untimed run then ``repeats`` timed ones, each followed by the floor on the same
    load: ``(total, callbacks, gc, floor, floor's gc)`` in CPU us per event and the full
    collections of the actors' and of the floor's, per run."""
    rng = random.Random(shape.seed)
    floor_usage: dict[str, AccountUsage] = {}
    next_batch_id = [0]
    runs: list[tuple[float, ...]] = []
    for run in range(shape.repeats + 1):
        load = build_batches(shape.batches, shape.batch, shape.accounts, rng, f"r{run}")
        events = shape.batches * shape.batch
        total, callbacks, in_gc, full = await actors_run(
            accounts, load, shape.group, next_batch_id, gc_timer
        )
        gc.collect()
        gc_timer.on = True
        floor = floor_run(load, floor_usage)
        gc_timer.on = False
        floor_gc, floor_full = gc_timer.take()
        if run:  # the first run warms up (first cells, first messages)
            per_event = (total, callbacks, in_gc, floor - floor_gc, floor_gc)
            runs.append((*(seconds / events * 1e6 for seconds in per_event), full, floor_full))
    check(accounts, floor_usage)
    return runs


def check(accounts: Accounts, floor_usage: dict[str, AccountUsage]) -> None:
    """Every event reached its actor's windows once (same totals as the floor)."""
    if accounts.budget.used != 0:
        raise AssertionError(f"budget not given back: {accounts.budget.used} events held")
    for account, usage in floor_usage.items():
        ref = accounts.registry.whereis(account)
        if ref is None:
            raise AssertionError(f"{account}: its actor stopped")
        actor = ref._actor
        if not isinstance(actor, MeterActor):
            raise TypeError(f"{account}: not a meter actor: {actor!r}")
        want = {(s // MINUTE_MS, d, st.value()) for s, d, st in usage.states(METER.name)}
        got = {(s // MINUTE_MS, d, st.value()) for s, d, st in actor.usage.states(METER.name)}
        if want != got:
            raise AssertionError(f"{account}: actor usage differs from the floor's")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.deliver", description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=100, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--group", type=int, default=4, help="batches per writer group commit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--freeze", action="store_true", help="gc.freeze() once the actors are awake"
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        nargs=3,
        default=DAEMON_GC_THRESHOLD,
        help="gc.set_threshold (default: the daemon's, meterd/app.py; Python's is 700 10 10)",
    )
    args = parser.parse_args(argv)
    gc.set_threshold(*args.gc_threshold)
    shape = Shape(
        args.accounts, args.batch, args.batches, args.repeats, args.group, args.seed, args.freeze
    )
    figures = trio.run(bench, shape)
    print(
        f"deliver {args.batch}-event batches over {args.accounts} accounts"
        f" ({args.group} per group; median of {args.repeats} x {args.batches} batches;"
        f" gc threshold {gc.get_threshold()}{', frozen' if args.freeze else ''}),"
        " CPU us/event:"
    )
    print(
        f"  actors (callbacks + drain)  {figures.total:7.2f}  + gc {figures.gc:6.2f}"
        f"  ({figures.full} full collections)"
    )
    print(f"    commit callbacks          {figures.callback:7.2f}")
    print(f"    actors draining           {figures.drain:7.2f}")
    print(
        f"  floor (no actors/messages)  {figures.floor:7.2f}  + gc {figures.floor_gc:6.2f}"
        f"  ({figures.floor_full} full collections; AccountUsage."
        f"{'apply_events per share' if FLOOR_BY_SHARE else 'apply per event'})"
    )


if __name__ == "__main__":
    main()
