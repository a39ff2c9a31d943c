"""An owner's CPU as a function of its event rate: the per-second floor (issue 15).

``python -m meterd.bench.floor [--owners 2] [--rates 0,2000,7000] [--seconds 10]`` starts
``meterd run`` with ``[partitions] owners`` (as ``meterd bench ingest --spawn`` does: a
temporary config, free loopback ports), wakes every account (one event each, 10,000
accounts: 5,000 awake per owner at 2 owners), waits for it to go idle, then for each rate
offers that many events/s (open loop, the issue-4 batches) for ``--seconds`` and reads each
process's CPU from ``/proc`` (all its threads). Rate 0 offers nothing: the accounts stay
awake and the owners only run their timers (sweeper, collector, WAL and housekeeping).

It prints, per rate, each process's CPU as a share of one core, and a least-squares fit of
each owner's CPU share on its events/s: ``CPU = floor + rate x per-event``; the floor is
what an owner costs per second whatever its rate (its timers and the periodic work of its
awake actors), the slope its cost per event.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

from meterd.bench._proc import TreeMeter, command_line, process_name, tree
from meterd.bench.ingest import (
    BenchOptions,
    Stopped,
    build_load,
    drive,
    settle,
    spawn_meterd,
)


def log(message: str) -> None:
    print(f"[bench floor] {message}", file=sys.stderr, flush=True)


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` over ``(x, y)`` points: ``(a, b)``."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return mean_y, 0.0
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return mean_y - b * mean_x, b


async def measure(
    owners: int,
    rates: Sequence[float],
    seconds: float,
    accounts: int,
    settings: Sequence[str],
    profile: str | None = None,
    py_spy: str = "py-spy",
) -> list[tuple[float, float, dict[str, float]]]:
    """(rate offered, events/s acked, {process: share of a core}) per rate; with
    ``profile``, owner-0 recorded with ``py-spy record --gil`` during each rate into
    ``PROFILE.rate-N.raw``."""
    extra = [("partitions", "owners", str(owners))]
    for setting in settings:
        name, _, value = setting.partition("=")
        section, _, key = name.partition(".")
        extra.append((section, key, value))
    options = BenchOptions(spawn=True, accounts=accounts, settings=tuple(extra))
    rows: list[tuple[float, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="meterd-floor-") as tmp:
        stopped = Stopped()
        async with spawn_meterd(Path(tmp), options, stopped, f"owners={owners}") as target:
            warm = build_load(0, accounts, 4, 500, every_account_once=True)
            await drive(target, warm, "warm-up")
            await settle(target.pid)
            for number, rate in enumerate(rates):
                await settle(target.pid)
                assert target.pid is not None
                meter = TreeMeter(target.pid)
                spy = None
                if profile is not None:
                    owner = next(
                        pid
                        for pid in tree(target.pid)
                        if process_name(command_line(pid) or []) == "owner-0"
                    )
                    spy = await trio.lowlevel.open_process(
                        [
                            py_spy,
                            "record",
                            "--gil",
                            "--nonblocking",
                            "-r",
                            "200",
                            "-f",
                            "raw",
                            "-d",
                            str(int(seconds)),
                            "-p",
                            str(owner),
                            "-o",
                            f"{profile}.rate-{rate:.0f}.raw",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                start = trio.current_time()
                acked = 0.0
                if rate <= 0:
                    await trio.sleep(seconds)
                    meter.sample()
                    elapsed = trio.current_time() - start
                else:
                    count = max(2_000, round(rate * seconds))
                    load = build_load(count, accounts, 4, 500, seed=10 + number)
                    load.batch_interval = 500 / rate
                    result = await drive(target, load, f"rate {rate:,.0f}")
                    meter.sample()
                    elapsed = trio.current_time() - start
                    acked = result.rate
                if spy is not None:
                    await spy.wait()
                shares = {p.name: p.cpu_seconds / elapsed for p in meter.processes()}
                rows.append((rate, acked, shares))
                log(
                    f"rate {rate:,.0f}: acked {acked:,.0f}/s, load {os.getloadavg()[0]:.2f}: "
                    + ", ".join(f"{name} {share * 100:.1f} %" for name, share in shares.items())
                )
    return rows


def report(rows: list[tuple[float, float, dict[str, float]]], owners: int) -> str:
    names = sorted({name for _, _, shares in rows for name in shares})
    lines = [
        "| offered ev/s | acked ev/s | " + " | ".join(f"{n} % core" for n in names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for rate, acked, shares in rows:
        cells = " | ".join(f"{shares.get(n, 0.0) * 100:.1f}" for n in names)
        lines.append(f"| {rate:,.0f} | {acked:,.0f} | {cells} |")
    for name in names:
        if not name.startswith("owner"):
            continue
        # each owner takes ~1/owners of the events
        points = [(acked / max(owners, 1), shares.get(name, 0.0)) for _, acked, shares in rows]
        floor, slope = fit(points)
        lines.append(
            f"{name}: CPU = {floor * 100:.1f} % of a core + {slope * 1e6:.1f} µs per event"
            f" of its own (fit over {len(points)} rates)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.floor", description=__doc__)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--rates", default="0,2000,7000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--set", action="append", default=[], dest="settings")
    parser.add_argument("--profile", default=None, help="py-spy raw output prefix (owner-0)")
    parser.add_argument("--py-spy", default="py-spy", dest="py_spy")
    arguments = parser.parse_args(argv)
    rates = [float(part) for part in arguments.rates.split(",") if part.strip()]
    rows = trio.run(
        measure,
        arguments.owners,
        rates,
        arguments.seconds,
        arguments.accounts,
        arguments.settings,
        arguments.profile,
        arguments.py_spy,
    )
    print(report(rows, arguments.owners))


if __name__ == "__main__":
    main()

__all__ = ["fit", "main", "measure"]
