"""Benchmark: CPU per event of a partition owner process, against the same events in-process.

``python -m meterd.bench.owner`` (``meterd bench owner``) measures what an owner process
(``python -m meterd.partitions.owner``, docs/partitions.md "The owner process") costs per
event for the gateway's slices: decoding them, grouping their events by account, its
shards' writers (one SQLite file per shard, group commits), delivery to the meter actors,
and the verdicts back. The baseline, in the same command, is the same events made durable
by today's single process: one cell on one store file in this process
(``Accounts.submit`` of each batch grouped by account, as ingest submits it; no messages).

Load
    The issue's shape: ``batch``-event producer batches (500), each event's account drawn
    uniformly among ``accounts`` (10,000), meter ``dyno.seconds`` (sum; dimensions ``size``
    and ``app``), decimal quantities, times in the last hour; ``[partitions]`` count 256,
    shard_size 16 and ``owners`` owners. Only owner 0's share of each batch is sent (its
    shards' parts, as the gateway splits a batch): with 2 owners, about half of each batch
    in 8 parts, sent as one ``slices`` message per batch as the gateway sends it
    (``--per-shard``: another row, on stores of its own, fed one ``slice`` message per
    shard as gateways before message version 3 did). Every path gets exactly those events,
    ``window`` batches in flight at most (a batch is done when its verdicts came, or its
    ``Accounts.submit`` reported), after an untimed warm-up round that wakes every account.

Figures
    events/s (wall), the worker's CPU per event (the owner process, all its threads, from
    ``/proc``; the baseline: this process), the driver's CPU per event (the owner path: the
    bench as a gateway, encoding slices and decoding verdicts; in-process there is none)
    and the worker's RSS at the end. Events applied by the actors after the last verdict are
    not counted in either (the in-flight budget bounds them).

What limits the figures: the shared machine (both cores, other builds), the disk's fsync
latency (every commit is one per file it touches: up to 8 per group commit for the owner,
1 for the baseline; see docs/partitions.md "Storage unit").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

import supervisors as sv
from meterd import logs
from meterd.config import Config, PartitionsConfig, load
from meterd.config import load as load_config
from meterd.model import Event, new_event
from meterd.partitions import (
    BatchId,
    Part,
    Slice,
    SliceEvent,
    Slices,
    UnixTransport,
    Verdicts,
    shard_of,
    shards_of_owner,
)

from ._proc import (
    cpu_seconds,
    main_thread_cpu_seconds,
    rss_bytes,
    switches,
    system_cpu_seconds,
    tree_cpu_seconds,
)
from .ingest import settle, summarize_profile

SIZES = ("std-1x", "std-2x", "perf-m", "perf-l")
APPS = tuple(f"app-{n}" for n in range(8))
PRODUCER = "platform"
OWNER_LOG_LEVEL = os.environ.get("BENCH_OWNER_LOG_LEVEL", "warning")


@dataclass(frozen=True, slots=True)
class Figures:
    path: str
    events: int
    seconds: float
    events_per_second: float
    worker_cpu_us: float  # per event
    driver_cpu_us: float  # per event
    rss_mib: float
    main_cpu_us: float = 0.0  # per event, the worker's main (Trio) thread alone
    switches: float = 0.0  # per event, the worker's threads' context switches
    system_cpu_us: float = 0.0  # per event, the worker's CPU in the kernel
    # per event, the worker's CPU after the last verdict until it went idle (its actors
    # applying the events, its writers indexing them), and how long that took
    after_cpu_us: float = 0.0
    after_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Shape:
    owners: int
    accounts: int
    batch: int
    batches: int
    window: int
    seed: int
    profile: Path | None = None  # py-spy raw output of the owner process (timed part)
    py_spy: str = "py-spy"
    all_threads: bool = False  # py-spy without --gil


def write_config(folder: Path, owners: int, shard_size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(
        f"""
late_window = "1d"
dedupe_window = "1d"

[ingest]
listen = "127.0.0.1:18700"

[api]
listen = "127.0.0.1:18701"
admin_token = "bench-owner-admin-token"

[store]
path = "var/meterd.sqlite3"

[partitions]
owners = {owners}
shard_size = {shard_size}

[[producers]]
name = "{PRODUCER}"
token = "bench-owner-platform-token"

[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["size", "app"]
"""
    )
    return path


def build_load(
    shape: Shape, partitions: PartitionsConfig, tag: str, count: int
) -> list[dict[int, list[SliceEvent]]]:
    """``count`` batches, each as owner 0's slices: shard -> its events (with their index
    in the producer's batch)."""
    rng = random.Random(f"{shape.seed}-{tag}")
    mine = set(shards_of_owner(0, partitions))
    shards = {f"acct-{n:05d}": shard_of(f"acct-{n:05d}", partitions) for n in range(shape.accounts)}
    names = list(shards)
    now = int(time.time() * 1000)
    batches = []
    for b in range(count):
        slices: dict[int, list[SliceEvent]] = {}
        for index in range(shape.batch):
            account = names[rng.randrange(len(names))]
            shard = shards[account]
            if shard not in mine:
                continue
            slices.setdefault(shard, []).append(
                SliceEvent(
                    index,
                    f"{tag}-{b}-{index}",
                    account,
                    "dyno.seconds",
                    Decimal(rng.randrange(1, 100_000)) / 1000,
                    now - rng.randrange(3_600_000),
                    (("app", rng.choice(APPS)), ("size", rng.choice(SIZES))),
                )
            )
        batches.append(slices)
    return batches


def as_groups(
    slices: dict[int, list[SliceEvent]], received_at: int
) -> list[tuple[str, list[Event]]]:
    """A batch's events grouped by account, as ingest hands them to ``Accounts.submit``."""
    groups: dict[str, list[Event]] = {}
    for events in slices.values():
        for e in events:
            groups.setdefault(e.account, []).append(
                new_event(
                    e.id,
                    e.account,
                    e.meter,
                    e.quantity,
                    e.time,
                    e.properties,
                    PRODUCER,
                    received_at,
                )
            )
    return list(groups.items())


# ---- the owner process ------------------------------------------------------------------------


async def run_owner(
    config_path: Path,
    sockets: Path,
    shape: Shape,
    warm: list[dict[int, list[SliceEvent]]],
    load: list[dict[int, list[SliceEvent]]],
    per_shard: bool = False,
) -> Figures:
    socket = str(sockets / "owner-0.sock")
    argv = [
        sys.executable, "-m", "meterd.partitions.owner", "--config", str(config_path),
        "--owner", "0", "--socket", socket, "--log-level", OWNER_LOG_LEVEL,
    ]  # fmt: skip
    spec = sv.process_spec("owner-0", argv, start_timeout=120)
    sup = sv.Supervisor([spec], name="bench")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        (info,) = sup.which_children()
        ref = info.ref
        assert isinstance(ref, sv.ProcessRef)
        channel = await UnixTransport().connect(ref.ready)
        await channel.receive()  # hello
        await _send(channel, warm, shape.window, seq0=1, per_shard=per_shard)
        # The warm-up's actors are still being woken after its verdicts came: the timed
        # part starts once the owner is idle (as `meterd bench ingest` waits between rows).
        waited = (await settle(ref.pid)).seconds
        print(f"waited {waited:.1f} s for the owner to go idle", file=sys.stderr)
        events = sum(len(events) for slices in load for events in slices.values())
        profile = None if shape.profile is None else _profile_path(shape.profile, config_path)
        async with _py_spy(shape.py_spy, ref.pid, profile, all_threads=shape.all_threads):
            cpu0, driver0 = cpu_seconds(ref.pid), time.process_time()
            main0, switches0 = main_thread_cpu_seconds(ref.pid), switches(ref.pid)
            system0 = system_cpu_seconds(ref.pid)
            wall0 = time.perf_counter()
            accepted = await _send(
                channel, load, shape.window, seq0=1 + len(warm), per_shard=per_shard
            )
            wall, driver = time.perf_counter() - wall0, time.process_time() - driver0
            cpu = (cpu_seconds(ref.pid) or 0.0) - (cpu0 or 0.0)
            end = tree_cpu_seconds(ref.pid)  # the work after the last verdict counts from here
            main = (main_thread_cpu_seconds(ref.pid) or 0.0) - (main0 or 0.0)
            switched = max(0, (switches(ref.pid) or 0) - (switches0 or 0))
            system = (system_cpu_seconds(ref.pid) or 0.0) - (system0 or 0.0)
        after = await settle(ref.pid, since=end)
        rss = rss_bytes(ref.pid) or 0
        if accepted != events:
            raise RuntimeError(f"the owner accepted {accepted} of {events} events")
        await channel.aclose()
        sup.stop()
    shards = len(shards_of_owner(0, load_config(config_path).partitions))
    return Figures(
        f"owner process ({shards} shard{'s' if shards > 1 else ''})"
        f"{', per shard' if per_shard else ''}",
        events,
        wall,
        events / wall,
        cpu / events * 1e6,
        driver / events * 1e6,
        rss / 2**20,
        main / events * 1e6,
        switched / events,
        system / events * 1e6,
        (after.cpu_seconds or 0.0) / events * 1e6,
        after.busy_seconds,
    )


async def _send(
    channel: Any,
    batches: list[dict[int, list[SliceEvent]]],
    window: int,
    seq0: int,
    *,
    per_shard: bool = False,
) -> int:
    """Send each batch's slices as the gateway does, one ``slices`` message for all of the
    owner's shards (``per_shard``: one ``slice`` per shard, as before version 3), ``window``
    batches in flight; the events accepted."""
    room = trio.Semaphore(window)
    outstanding: dict[int, int] = {}
    accepted = 0
    done = trio.Event()
    now = int(time.time() * 1000)

    async def read() -> None:
        nonlocal accepted
        left = sum(len(slices) if per_shard else bool(slices) for slices in batches)
        while left:
            verdicts = await channel.receive()
            if not isinstance(verdicts, Verdicts):
                raise TypeError(f"the owner answered {verdicts!r}, not verdicts")
            accepted += verdicts.accepted
            seq = verdicts.batch.seq
            outstanding[seq] -= 1
            if not outstanding[seq]:
                room.release()
            left -= 1
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for offset, slices in enumerate(batches):
            await room.acquire()
            seq = seq0 + offset
            batch = BatchId("bench", 1, seq)
            if per_shard:
                outstanding[seq] = len(slices)
                for shard, events in slices.items():
                    await channel.send(Slice(batch, shard, PRODUCER, now, events))
            elif slices:
                outstanding[seq] = 1
                parts = [Part(shard, events) for shard, events in slices.items()]
                await channel.send(Slices(batch, parts[0].shard, PRODUCER, now, parts))
            if not slices:
                room.release()
        await done.wait()
    return accepted


# ---- the baseline: one cell in this process ----------------------------------------------------


async def run_in_process(
    config: Config,
    shape: Shape,
    warm: list[dict[int, list[SliceEvent]]],
    load: list[dict[int, list[SliceEvent]]],
) -> Figures:
    from meterd.partitions._cell import Cell  # the whole accounts side: not for the owner path

    cell = Cell(
        config,
        store_path=config.store_path,
        billing_path=config.billing_path,
        deliveries_path=config.store_path.with_name("deliveries.sqlite3"),
        name="root",
    )
    cell.attach(cell.supervisor)
    received_at = int(time.time() * 1000)
    warm_groups = [as_groups(slices, received_at) for slices in warm]
    groups = [as_groups(slices, received_at) for slices in load]
    events = sum(len(e) for batch in groups for _, e in batch)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cell.supervisor.run)
            await _submit(cell, warm_groups, shape.window)
            await _settle_in_process(cell)
            me = os.getpid()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            main0, switches0 = main_thread_cpu_seconds(me), switches(me)
            system0 = system_cpu_seconds(me)
            accepted = await _submit(cell, groups, shape.window)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            main = (main_thread_cpu_seconds(me) or 0.0) - (main0 or 0.0)
            switched = max(0, (switches(me) or 0) - (switches0 or 0))
            system = (system_cpu_seconds(me) or 0.0) - (system0 or 0.0)
            if accepted != events:
                raise RuntimeError(f"the cell accepted {accepted} of {events} events")
            after0, waited0 = time.process_time(), trio.current_time()
            await _settle_in_process(cell)
            after, waited = time.process_time() - after0, trio.current_time() - waited0
            waited = max(0.0, waited - 1.0)  # the wait's last second is its quiet sample
            cell.supervisor.stop()
    finally:
        await cell.aclose()
    return Figures(
        "in-process (1 cell, 1 file)",
        events,
        wall,
        events / wall,
        cpu / events * 1e6,
        0.0,
        (rss_bytes(os.getpid()) or 0) / 2**20,
        main / events * 1e6,
        switched / events,
        system / events * 1e6,
        after / events * 1e6,
        waited,
    )


async def _settle_in_process(cell: Any, limit: float = 60.0) -> None:
    """Wait until the warm-up's actors are awake and their events applied (nothing in
    flight, no wake-up pending), as the owner row waits for its process to go idle."""
    start = trio.current_time()
    while trio.current_time() - start < limit:
        await trio.sleep(0.5)
        before = time.process_time()
        await trio.sleep(0.5)
        if time.process_time() - before < 0.15 * 0.5:
            break


async def _submit(cell: Any, batches: list[list[tuple[str, list[Event]]]], window: int) -> int:
    room = trio.Semaphore(window)
    accepted = 0
    left = len(batches)
    done = trio.Event()

    def report(outcome: Any) -> None:
        nonlocal accepted, left
        if isinstance(outcome, BaseException):
            raise outcome
        accepted += sum(len(result.accepted) for result in outcome)
        room.release()
        left -= 1
        if not left:
            done.set()

    for seq, groups in enumerate(batches, start=1):
        await room.acquire()
        cell.accounts.submit(groups, report, producer=PRODUCER, seq=seq)
    if batches:
        await done.wait()
    return accepted


# ---- the command -------------------------------------------------------------------------------


def measure(
    shape: Shape, folder: Path, *, per_shard: bool = False, shard_sizes: Sequence[int] = (16,)
) -> list[Figures]:
    """The owner's row for each of ``shard_sizes`` (``[partitions] shard_size``: with 2
    owners, 16 gives owner 0 eight shard files, 128 one), with ``per_shard`` an owner's
    row fed a slice per shard (version 2's messages, for comparison in one command), then
    the in-process baseline's."""
    sockets = Path(tempfile.mkdtemp(prefix="meterd-owner-"))
    owners: list[Figures] = []
    warm: list[dict[int, list[SliceEvent]]] = []
    timed: list[dict[int, list[SliceEvent]]] = []
    try:
        for shard_size in shard_sizes:
            config_path = write_config(folder / f"owner-{shard_size}", shape.owners, shard_size)
            partitions = load(config_path).partitions
            warm_batches = max(1, shape.accounts * 2 // shape.batch)  # every account, ~twice
            warm = build_load(shape, partitions, "warm", warm_batches)
            timed = build_load(shape, partitions, "load", shape.batches)
            print(f"owner process, shard_size {shard_size} ...", file=sys.stderr)
            # A socket's path is at most 107 bytes: a short directory of its own.
            owners.append(trio.run(run_owner, config_path, sockets, shape, warm, timed))
        if per_shard:
            print("owner process, a slice per shard ...", file=sys.stderr)
            old_config = write_config(folder / "owner-per-shard", shape.owners, shard_sizes[-1])
            owners.append(trio.run(run_owner, old_config, sockets, shape, warm, timed, True))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    baseline_config = load(write_config(folder / "baseline", 0))
    print("in-process baseline ...", file=sys.stderr)
    baseline = trio.run(run_in_process, baseline_config, shape, warm, timed)
    return [baseline, *owners]


def _profile_path(profile: Path, config_path: Path) -> Path:
    """``STEM.<the row's folder>.SUFFIX``: one py-spy output per owner row."""
    return profile.with_name(f"{profile.stem}.{config_path.parent.name}{profile.suffix or '.raw'}")


@contextlib.asynccontextmanager
async def _py_spy(
    py_spy: str, pid: int, out: Path | None, *, all_threads: bool = False
) -> AsyncIterator[None]:
    """``py-spy record --gil`` of ``pid`` into ``out`` (raw) while the body runs
    (``all_threads``: without ``--gil``, every thread on a CPU, so the SQLite threads too)."""
    if out is None:
        yield
        return
    command = [py_spy, "record", "--pid", str(pid), "--rate", "200"]
    if not all_threads:
        command.append("--gil")
    command += ["--format", "raw", "--nonblocking", "--output", str(out)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await trio.sleep(0.5)  # py-spy attaches
        yield
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            with trio.move_on_after(30):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()
    print(f"profile of the owner: {out}\n{summarize_profile(out)}", file=sys.stderr)


def format_table(figures: Sequence[Figures]) -> str:
    base = figures[0]
    lines = [
        f"{'path':<36} {'events':>8} {'events/s':>10} {'ratio':>6} {'worker CPU us/ev':>17}"
        f" {'ratio':>6} {'main thread':>12} {'kernel':>7} {'switches/ev':>12}"
        f" {'driver CPU us/ev':>17} {'worker RSS MiB':>15} {'with after-work us/ev':>22}"
        f" {'after s':>8}"
    ]
    for f in figures:
        lines.append(
            f"{f.path:<36} {f.events:>8,} {f.events_per_second:>10,.0f}"
            f" {f.events_per_second / base.events_per_second:>5.2f}x {f.worker_cpu_us:>17.1f}"
            f" {f.worker_cpu_us / base.worker_cpu_us:>5.2f}x {f.main_cpu_us:>12.1f}"
            f" {f.system_cpu_us:>7.1f}"
            f" {f.switches:>12.2f} {f.driver_cpu_us:>17.1f}"
            f" {f.rss_mib:>15.1f} {f.worker_cpu_us + f.after_cpu_us:>22.1f}"
            f" {f.after_seconds:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.owner", description=__doc__)
    parser.add_argument(
        "--owners", type=int, default=2, help="[partitions] owners (owner 0 is run)"
    )
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="events per producer batch")
    parser.add_argument("--batches", type=int, default=400, help="producer batches timed")
    parser.add_argument("--window", type=int, default=16, help="batches in flight at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="40 batches over 2,000 accounts")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (a disk)")
    parser.add_argument(
        "--per-shard",
        action="store_true",
        help="also feed an owner one slice per shard (before version 3: one message per"
        " owner per batch), on stores of its own",
    )
    parser.add_argument(
        "--shard-sizes",
        default="16",
        help="[partitions] shard_size of each owner row, comma-separated (16: owner 0 of 2"
        " holds 8 shard files; 128: one)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy record --gil of each owner row's timed part into STEM.ROW.raw",
    )
    parser.add_argument("--py-spy", default="py-spy", help="py-spy to use")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="profile every thread on a CPU (py-spy without --gil): the SQLite threads too",
    )
    args = parser.parse_args(argv)
    try:
        shard_sizes = [int(size) for size in args.shard_sizes.split(",")]
    except ValueError:
        parser.error(f"--shard-sizes: integers separated by commas, not {args.shard_sizes!r}")
    logs.configure(level="warning")
    if args.quick:
        args.batches, args.accounts = 40, 2_000
    shape = Shape(
        args.owners,
        args.accounts,
        args.batch,
        args.batches,
        args.window,
        args.seed,
        args.profile,
        args.py_spy,
        args.all_threads,
    )
    with tempfile.TemporaryDirectory(prefix="bench-owner-", dir=args.dir or Path.cwd()) as tmp:
        figures = measure(shape, Path(tmp), per_shard=args.per_shard, shard_sizes=shard_sizes)
    if args.json:
        print(json.dumps([asdict(f) for f in figures], indent=2))
    else:
        print(
            f"owner 0 of {args.owners}: {args.batches} batches of {args.batch} events over"
            f" {args.accounts:,} accounts (its share of each), {args.window} in flight"
        )
        print(format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
