#!/usr/bin/env python3
"""Benchmark the ``supervisors`` library against triotp and Erlang/OTP 25.

Run with the project's venv (``meterd bench supervisors ...`` is the same)::

    .venv/bin/python -m meterd.bench.supervisors            # full sizes (a few minutes)
    .venv/bin/python -m meterd.bench.supervisors --quick    # small sizes (< 30 s)
    .venv/bin/python -m meterd.bench.supervisors --no-peer  # ours only
    .venv/bin/python -m meterd.bench.supervisors --json     # machine-readable
    .venv/bin/python -m meterd.bench.supervisors --child-ops-only   # the second table only

It measures our library here and triotp 0.2.1 in its own virtualenv (through
:mod:`meterd.bench.triotp_env` and ``meterd/bench/peer_triotp.py``, with the same sizes), then
prints one table: each figure for ours, triotp, the ratio (oriented so that
> 1 means we are better), the Erlang/OTP 25 figure measured on the same machine,
and our goal.

Figures (the same definitions as the peer's):

``spawn`` / ``rss``
    Start ``--actors`` idle :class:`GenServer` actors under a
    :class:`DynamicSupervisor` with ``await dyn.start_child(actor_spec(i, Idle))``,
    timed until the last one answered a call; RSS (``/proc/self/status``
    ``VmRSS``, after ``gc.collect()``) before and after. Runs once, in a fresh
    interpreter, so nothing measured earlier pollutes the RSS.
``call``
    One task calling one actor (``handle_call`` replies at once), sequentially.
``cast``
    One task casting ``--casts`` messages into one actor, until the actor has
    handled them all (it counts them down; the sender waits for zero).
``dispatch``
    One task casting ``--dispatch-messages`` round-robin to ``--dispatch-actors``
    actors (under a DynamicSupervisor), until all are handled.
``restart``
    An actor under a one_for_one :class:`Supervisor`, registered by name in a
    :class:`Registry`, crashed by a cast that raises; latency from the raise to
    the moment ``await registry.ref(key).call(...)`` returns. Median and p99,
    pooled over the repeats.

``child operations`` (a second table, ours only: triotp has no run-time child admin)
    The cost of one operation on one child of a supervisor that holds
    ``--ops-small`` (1,000) and ``--ops-large`` (100,000) idle actors, side by
    side, so that a cost growing with the number of children shows (OTP-9242 made
    it constant in OTP). Per operation, averaged over ``--child-ops`` of them:
    a static :class:`Supervisor`'s ``start_child`` + ``terminate_child`` +
    ``delete_child`` of one more child, and its lookup by id (``child_status``);
    a :class:`DynamicSupervisor`'s ``start_child`` + ``terminate_child``, and its
    lookup by id. A full collection runs before each timed loop, so that the one
    that filling the supervisor has made due (walking every actor) does not land in
    the loop; the collector's own cost per object is not this table's subject.

Throughput figures are the median of ``--repeats`` runs (3; each in a fresh
``trio.run``). Handler styles: every actor workload is measured with plain
``def`` callbacks and with ``async def`` callbacks (triotp's are always async).
structlog is set to drop debug/info events (and, during the restart workload,
the per-crash warning too), so logging does not dominate.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
import trio

import supervisors as sv
from meterd.bench import triotp_env

# --------------------------------------------------------------------------
# sizes, reference figures, goals
# --------------------------------------------------------------------------

FULL_SIZES: Final[dict[str, int]] = {
    "actors": 100_000,
    "calls": 20_000,
    "casts": 200_000,
    "dispatch_messages": 1_000_000,
    "dispatch_actors": 10_000,
    "restarts": 200,
    "repeats": 3,
    "ops_small": 1_000,
    "ops_large": 100_000,
    "child_ops": 2_000,
}
QUICK_SIZES: Final[dict[str, int]] = {
    "actors": 10_000,
    "calls": 5_000,
    "casts": 50_000,
    "dispatch_messages": 100_000,
    "dispatch_actors": 1_000,
    "restarts": 100,
    "repeats": 3,
    "ops_small": 1_000,
    "ops_large": 10_000,
    "child_ops": 500,
}
#: Sizes the triotp peer understands (it has its own repeats: 3, or 1 with --quick).
PEER_SIZE_KEYS: Final = (
    "actors",
    "calls",
    "casts",
    "dispatch_messages",
    "dispatch_actors",
    "restarts",
)

#: Erlang/OTP 25 figures measured on this machine (2 cores).
OTP25: Final[dict[str, float]] = {
    "spawn_us_per_actor": 2.9,
    "rss_bytes_per_actor": 2713.0,
    "call_per_s": 280_000.0,
    "cast_per_s": 2_100_000.0,
    "dispatch_msgs_per_s": 740_000.0,
    "restart_us_median": 45.0,
}


@dataclass(frozen=True)
class Goal:
    """A target: ``value`` is a ceiling (``at_most``) or a floor."""

    value: float
    at_most: bool

    def met(self, measured: float) -> bool:
        """True when ``measured`` reaches the goal."""
        return measured <= self.value if self.at_most else measured >= self.value


GOALS: Final[dict[str, Goal]] = {
    "spawn_us_per_actor": Goal(10.0, at_most=True),
    "rss_bytes_per_actor": Goal(2048.0, at_most=True),
    "call_per_s": Goal(45_000.0, at_most=False),
    "cast_per_s": Goal(700_000.0, at_most=False),
    "dispatch_msgs_per_s": Goal(300_000.0, at_most=False),
    "restart_us_median": Goal(100.0, at_most=True),
}

#: Figures where less is better (ratio = triotp / ours); for the others
#: (throughputs) ratio = ours / triotp.
LOWER_IS_BETTER: Final = frozenset(
    {"spawn_us_per_actor", "rss_bytes_per_actor", "restart_us_median", "restart_us_p99"}
)

CALL_TIMEOUT_S: Final = 10.0
STYLES: Final = ("def", "async")


def log(*parts: object) -> None:
    """Progress line on stderr (stdout carries only the table or the JSON)."""
    print("[bench supervisors]", *parts, file=sys.stderr, flush=True)


def configure_logging(level: int) -> None:
    """Make structlog drop every event below ``level`` (cheaply: no-op methods)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/status`` ``VmRSS``."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                assert unit == "kB", unit
                return int(value) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def p99(samples: Sequence[float]) -> float:
    """99th percentile (inclusive method, interpolated), as the peer computes it."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


# --------------------------------------------------------------------------
# actors: one class per handler style
# --------------------------------------------------------------------------


class Tally:
    """Counts handled messages down to zero, then sets ``done``."""

    __slots__ = ("done", "remaining")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.done = trio.Event()

    def hit(self) -> None:
        """Record one handled message."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class CrashClock:
    """Where a crashing actor writes the instant it raised."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = 0.0


class DeliberateCrash(RuntimeError):
    """Raised by ``handle_cast("crash")``."""


class Idle(sv.GenServer[str, str]):
    """An actor with no state; answers calls with the request (plain ``def``)."""

    def init(self) -> None:
        """Nothing to prepare."""

    def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request


class AsyncIdle(sv.GenServer[str, str]):
    """:class:`Idle` with ``async def`` callbacks."""

    async def init(self) -> None:
        """Nothing to prepare."""

    async def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request


class Sink(sv.GenServer[str, str]):
    """Counts ``"inc"`` casts into a shared :class:`Tally` (plain ``def``)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request

    def handle_cast(self, request: str) -> None:
        """Count one message."""
        self.tally.hit()


class AsyncSink(sv.GenServer[str, str]):
    """:class:`Sink` with ``async def`` callbacks."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request

    async def handle_cast(self, request: str) -> None:
        """Count one message."""
        self.tally.hit()


class Victim(sv.GenServer[str, str]):
    """Answers calls; ``cast("crash")`` notes the time and raises (plain ``def``)."""

    def __init__(self, clock: CrashClock) -> None:
        self.clock = clock

    def init(self) -> None:
        """Nothing to prepare."""

    def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request

    def handle_cast(self, request: str) -> None:
        """Crash on request."""
        self.clock.at = time.perf_counter()
        raise DeliberateCrash("crash requested by the benchmark")


class AsyncVictim(sv.GenServer[str, str]):
    """:class:`Victim` with ``async def`` callbacks."""

    def __init__(self, clock: CrashClock) -> None:
        self.clock = clock

    async def init(self) -> None:
        """Nothing to prepare."""

    async def handle_call(self, request: str, caller: sv.Caller[str]) -> str:
        """Reply at once."""
        return request

    async def handle_cast(self, request: str) -> None:
        """Crash on request."""
        self.clock.at = time.perf_counter()
        raise DeliberateCrash("crash requested by the benchmark")


IDLE: Final[dict[str, type[sv.GenServer[str, str]]]] = {"def": Idle, "async": AsyncIdle}
SINK: Final[dict[str, type[sv.GenServer[str, str]]]] = {"def": Sink, "async": AsyncSink}
VICTIM: Final[dict[str, type[sv.GenServer[str, str]]]] = {"def": Victim, "async": AsyncVictim}


# --------------------------------------------------------------------------
# workloads (each runs in its own trio.run)
# --------------------------------------------------------------------------


async def bench_spawn(actors: int, style: str) -> dict[str, float]:
    """Start ``actors`` idle actors under a DynamicSupervisor; time and RSS per actor."""
    factory = IDLE[style]
    dyn = sv.DynamicSupervisor(name="bench-spawn")
    async with trio.open_nursery() as nursery:
        gc.collect()
        rss_before = rss_bytes()
        await nursery.start(dyn.run)
        t0 = time.perf_counter()
        last: sv.ActorRef[str, str] | None = None
        for i in range(actors):
            last = await dyn.start_child(sv.actor_spec(i, factory))
        assert last is not None
        reply = await last.call("ping", timeout=CALL_TIMEOUT_S)
        elapsed = time.perf_counter() - t0
        assert reply == "ping", reply
        assert len(dyn) == actors
        gc.collect()
        rss_after = rss_bytes()
        t_down = time.perf_counter()
        dyn.stop()
    teardown = time.perf_counter() - t_down
    return {
        "spawn_us_per_actor": elapsed / actors * 1e6,
        "rss_bytes_per_actor": (rss_after - rss_before) / actors,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "teardown_s": teardown,
    }


async def bench_call(calls: int, style: str, by_name: bool) -> float:
    """Sequential call round-trips from one task to one actor; calls per second."""
    registry = sv.Registry()
    spec = sv.actor_spec("echo", IDLE[style], name=(registry, "echo"))
    sup = sv.Supervisor([spec], name="bench-call")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        ref = registry.ref("echo") if by_name else registry.whereis("echo")
        assert ref is not None
        for _ in range(max(calls // 10, 100)):  # warm-up
            await ref.call("ping")
        t0 = time.perf_counter()
        for _ in range(calls):
            await ref.call("ping")
        elapsed = time.perf_counter() - t0
        sup.stop()
    return calls / elapsed


async def bench_cast(casts: int, style: str) -> float:
    """Casts from one task into one actor, until it handled them all; casts per second."""
    tally = Tally(casts)
    registry = sv.Registry()
    spec = sv.actor_spec("sink", SINK[style], tally, name=(registry, "sink"))
    sup = sv.Supervisor([spec], name="bench-cast")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        ref = registry.whereis("sink")
        assert ref is not None
        t0 = time.perf_counter()
        for _ in range(casts):
            await ref.cast("inc")
        await tally.done.wait()
        elapsed = time.perf_counter() - t0
        sup.stop()
    return casts / elapsed


async def bench_dispatch(messages: int, actors: int, style: str) -> float:
    """Casts round-robin over ``actors`` actors, until all handled; messages per second."""
    tally = Tally(messages)
    factory = SINK[style]
    dyn = sv.DynamicSupervisor(name="bench-dispatch")
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        refs: list[sv.ActorRef[str, str]] = [
            await dyn.start_child(sv.actor_spec(i, factory, tally)) for i in range(actors)
        ]
        t0 = time.perf_counter()
        for i in range(messages):
            await refs[i % actors].cast("inc")
        await tally.done.wait()
        elapsed = time.perf_counter() - t0
        dyn.stop()
    return messages / elapsed


async def bench_restart(restarts: int, style: str) -> list[float]:
    """Crash a named, supervised actor; µs from the raise until a call by name returns."""
    clock = CrashClock()
    registry = sv.Registry()
    spec = sv.actor_spec("victim", VICTIM[style], clock, name=(registry, "victim"))
    sup = sv.Supervisor(
        [spec], strategy=sv.Strategy.ONE_FOR_ONE, max_restarts=1_000_000, name="bench-restart"
    )
    ref: sv.NameRef[str, str] = registry.ref("victim")
    warmup = min(10, max(restarts // 10, 1))
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for i in range(warmup + restarts):
            await ref.cast("crash")
            while True:
                try:
                    reply = await ref.call("ping", timeout=CALL_TIMEOUT_S)
                except (sv.ActorExited, sv.NoSuchActor):  # not expected: NameRef waits
                    await trio.lowlevel.checkpoint()
                else:
                    break
            latency = time.perf_counter() - clock.at
            assert reply == "ping", reply
            if i >= warmup:
                samples.append(latency * 1e6)
        sup.stop()
    return samples


CHILD_OPS: Final = (
    ("static", "start_child + terminate_child + delete_child"),
    ("static", "lookup by id"),
    ("dynamic", "start_child + terminate_child"),
    ("dynamic", "lookup by id"),
)
LOOKUPS_PER_OP: Final = 20  # lookups are cheap: time more of them per operation counted


async def bench_child_ops(children: int, ops: int) -> dict[str, float]:
    """µs per child operation with ``children`` idle actors under each kind of supervisor."""
    out: dict[str, float] = {}
    sup = sv.Supervisor(
        [sv.actor_spec(n, Idle) for n in range(children)], max_restarts=10, name="bench-static"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        gc.collect()  # not the full collection that filling it has made due
        t0 = time.perf_counter()
        for i in range(ops):
            cid = ("extra", i)
            await sup.start_child(sv.actor_spec(cid, Idle))
            await sup.terminate_child(cid)
            await sup.delete_child(cid)
        out["static: start_child + terminate_child + delete_child"] = _us_per(t0, ops)
        step = max(children // (ops * LOOKUPS_PER_OP), 1)
        gc.collect()  # not the full collection that filling it has made due
        t0 = time.perf_counter()
        for i in range(ops * LOOKUPS_PER_OP):
            sup.child_status((i * step) % children)
        out["static: lookup by id"] = _us_per(t0, ops * LOOKUPS_PER_OP)
        sup.stop()
    dyn = sv.DynamicSupervisor(name="bench-dynamic")
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        for n in range(children):
            await dyn.start_child(sv.actor_spec(n, Idle))
        gc.collect()  # not the full collection that filling it has made due
        t0 = time.perf_counter()
        for i in range(ops):
            ref = await dyn.start_child(sv.actor_spec(("extra", i), Idle))
            await dyn.terminate_child(ref)
        out["dynamic: start_child + terminate_child"] = _us_per(t0, ops)
        gc.collect()  # not the full collection that filling it has made due
        t0 = time.perf_counter()
        for i in range(ops * LOOKUPS_PER_OP):
            dyn.child_status((i * step) % children)
        out["dynamic: lookup by id"] = _us_per(t0, ops * LOOKUPS_PER_OP)
        dyn.stop()
    return out


def _fmt_us(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def _us_per(t0: float, count: int) -> float:
    return (time.perf_counter() - t0) / count * 1e6


def measure_child_ops(sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """``{operation: {"small": µs, "large": µs}}``, medians of ``repeats`` runs."""
    result: dict[str, dict[str, float]] = {}
    for size in ("small", "large"):
        t0 = time.perf_counter()
        runs = [
            run_trio(bench_child_ops, sizes[f"ops_{size}"], sizes["child_ops"])
            for _ in range(sizes["repeats"])
        ]
        for key in runs[0]:
            result.setdefault(key, {})[size] = statistics.median(run[key] for run in runs)
        log(
            f"child ops at {sizes[f'ops_{size}']:,} children: {runs} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    return result


def render_child_ops(child_ops: dict[str, dict[str, float]], sizes: dict[str, int]) -> str:
    """The child operation costs at both sizes, side by side, as a Markdown table."""
    small, large = sizes["ops_small"], sizes["ops_large"]
    header = (
        "child operation, µs per operation",
        f"{small:,} children",
        f"{large:,} children",
        "ratio",
    )
    lines = [header]
    for key, cost in child_ops.items():
        lines.append(
            (
                key,
                _fmt_us(cost["small"]),
                _fmt_us(cost["large"]),
                f"{cost['large'] / cost['small']:.2f}x",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(line)]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append(
                "|"
                + "|".join(
                    "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(out)


def run_trio(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run one workload in a fresh Trio run, after a full collection."""
    gc.collect()
    return trio.run(fn, *args)


def median_of_runs(repeats: int, fn: Callable[..., Awaitable[float]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` ``repeats`` times; the median and the samples."""
    samples = [float(run_trio(fn, *args)) for _ in range(repeats)]
    return {"median": statistics.median(samples), "samples": samples}


# --------------------------------------------------------------------------
# ours: orchestration
# --------------------------------------------------------------------------


def spawn_in_subprocess(actors: int, style: str) -> dict[str, float]:
    """Run :func:`bench_spawn` in a fresh interpreter and return its figures."""
    cmd = [
        sys.executable,
        "-m",
        "meterd.bench.supervisors",
        "--scenario",
        "spawn",
        "--style",
        style,
        "--actors",
        str(actors),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"spawn subprocess ({style}) exited with {proc.returncode}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def measure_ours(sizes: dict[str, int]) -> dict[str, Any]:
    """Every figure for our library, per handler style; see the module doc."""
    repeats = sizes["repeats"]
    out: dict[str, Any] = {}
    for style in STYLES:
        t0 = time.perf_counter()
        spawn = spawn_in_subprocess(sizes["actors"], style)
        out[f"spawn_us_per_actor[{style}]"] = spawn["spawn_us_per_actor"]
        out[f"rss_bytes_per_actor[{style}]"] = spawn["rss_bytes_per_actor"]
        out[f"spawn_detail[{style}]"] = spawn
        log(f"spawn {style}: {spawn} ({time.perf_counter() - t0:.1f}s)")

    for style in STYLES:
        for by_name in (False, True):
            key = f"call_per_s[{style}{', by name' if by_name else ''}]"
            res = median_of_runs(repeats, bench_call, sizes["calls"], style, by_name)
            out[key] = res["median"]
            out[f"samples:{key}"] = res["samples"]
            log(key, res)

    for style in STYLES:
        key = f"cast_per_s[{style}]"
        res = median_of_runs(repeats, bench_cast, sizes["casts"], style)
        out[key] = res["median"]
        out[f"samples:{key}"] = res["samples"]
        log(key, res)

    for style in STYLES:
        key = f"dispatch_msgs_per_s[{style}]"
        t0 = time.perf_counter()
        res = median_of_runs(
            repeats, bench_dispatch, sizes["dispatch_messages"], sizes["dispatch_actors"], style
        )
        out[key] = res["median"]
        out[f"samples:{key}"] = res["samples"]
        log(key, res, f"({time.perf_counter() - t0:.1f}s)")

    configure_logging(logging.ERROR)  # drop the child_crashed warning per crash
    try:
        for style in STYLES:
            pooled: list[float] = []
            for _ in range(repeats):
                pooled += run_trio(bench_restart, sizes["restarts"], style)
            out[f"restart_us_median[{style}]"] = statistics.median(pooled)
            out[f"restart_us_p99[{style}]"] = p99(pooled)
            out[f"restart_samples[{style}]"] = len(pooled)
            log(
                f"restart {style}: median {statistics.median(pooled):.1f} µs, "
                f"p99 {p99(pooled):.1f} µs, max {max(pooled):.1f} µs over {len(pooled)}"
            )
    finally:
        configure_logging(logging.WARNING)
    return out


def measure_peer(sizes: dict[str, int], quick: bool) -> dict[str, Any] | None:
    """triotp's figures with the same sizes, or None (with a warning) if it cannot run."""
    args = ["--quick"] if quick else []
    for key in PEER_SIZE_KEYS:
        args += [f"--{key.replace('_', '-')}", str(sizes[key])]
    try:
        python = triotp_env.ensure_triotp_venv()
        return triotp_env.run_peer(python, args)
    except (triotp_env.TriotpEnvError, OSError, subprocess.SubprocessError) as error:
        log(f"triotp peer unavailable, its column stays empty: {error}")
        return None


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One table row: a figure of ours compared with triotp, OTP 25 and the goal."""

    label: str
    figure: str  # the peer's key, e.g. "call_per_s"
    ours: float
    triotp: float | None

    @property
    def ratio(self) -> float | None:
        """Ours vs triotp, > 1 when ours is better."""
        if self.triotp is None or self.ours == 0 or self.triotp == 0:
            return None
        if self.figure in LOWER_IS_BETTER:
            return self.triotp / self.ours
        return self.ours / self.triotp

    @property
    def otp25(self) -> float | None:
        """The Erlang/OTP 25 reference figure, if there is one."""
        return OTP25.get(self.figure)

    @property
    def goal(self) -> Goal | None:
        """Our goal for this figure, if there is one."""
        return GOALS.get(self.figure)

    def as_json(self) -> dict[str, Any]:
        """The row as plain data."""
        goal = self.goal
        return {
            "label": self.label,
            "figure": self.figure,
            "ours": self.ours,
            "triotp": self.triotp,
            "ratio": self.ratio,
            "otp25": self.otp25,
            "goal": None if goal is None else {"value": goal.value, "at_most": goal.at_most},
            "goal_met": None if goal is None else goal.met(self.ours),
        }


ROW_LABELS: Final = (
    ("spawn_us_per_actor[def]", "spawn, µs/actor (def init)"),
    ("spawn_us_per_actor[async]", "spawn, µs/actor (async def init)"),
    ("rss_bytes_per_actor[def]", "RSS, bytes/idle actor"),
    ("call_per_s[def]", "call round-trips/s (def)"),
    ("call_per_s[async]", "call round-trips/s (async def)"),
    ("call_per_s[def, by name]", "call round-trips/s, by name (def)"),
    ("call_per_s[async, by name]", "call round-trips/s, by name (async def)"),
    ("cast_per_s[def]", "casts/s, 1 actor (def)"),
    ("cast_per_s[async]", "casts/s, 1 actor (async def)"),
    ("dispatch_msgs_per_s[def]", "dispatch msgs/s, N actors (def)"),
    ("dispatch_msgs_per_s[async]", "dispatch msgs/s, N actors (async def)"),
    ("restart_us_median[def]", "restart median, µs (def)"),
    ("restart_us_median[async]", "restart median, µs (async def)"),
    ("restart_us_p99[def]", "restart p99, µs (def)"),
    ("restart_us_p99[async]", "restart p99, µs (async def)"),
)


def build_rows(ours: dict[str, Any], peer: dict[str, Any] | None) -> list[Row]:
    """The table rows, in display order."""
    rows = []
    for key, label in ROW_LABELS:
        figure = key.split("[", 1)[0]
        theirs = None if peer is None else peer.get(figure)
        rows.append(Row(label, figure, float(ours[key]), None if theirs is None else float(theirs)))
    return rows


def fmt(value: float | None, figure: str) -> str:
    """A figure, readably: rates in k/M, latencies and sizes with sensible digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if figure.endswith("_per_s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        return f"{value / 1e3:.0f}k" if value >= 1e4 else f"{value / 1e3:.1f}k"
    if figure == "rss_bytes_per_actor":
        return f"{value:,.0f} B"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_goal(goal: Goal | None, figure: str) -> str:
    """``≤ 10.0`` / ``≥ 45k``, or a dash."""
    if goal is None:
        return "—"
    if figure == "rss_bytes_per_actor":
        return "≤ 2 KB"
    return ("≤ " if goal.at_most else "≥ ") + fmt(goal.value, figure)


def render_table(rows: Sequence[Row]) -> str:
    """The comparison as a Markdown table."""
    header = ("figure", "ours", "triotp", "ratio", "OTP 25", "goal", "met")
    lines = [header]
    for row in rows:
        ratio = row.ratio
        goal = row.goal
        lines.append(
            (
                row.label,
                fmt(row.ours, row.figure),
                fmt(row.triotp, row.figure),
                "—" if ratio is None else f"{ratio:.1f}x",
                fmt(row.otp25, row.figure),
                fmt_goal(goal, row.figure),
                "—" if goal is None else ("yes" if goal.met(row.ours) else "NO"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append(
                "|"
                + "|".join(
                    "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m meterd.bench.supervisors", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s in all)")
    parser.add_argument("--no-peer", action="store_true", help="do not run triotp")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-out", metavar="PATH", help="also write the JSON results to PATH")
    parser.add_argument(
        "--child-ops-only", action="store_true", help="only the child operation costs (ours)"
    )
    for key in FULL_SIZES:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, metavar="N")
    parser.add_argument("--scenario", choices=("spawn",), help=argparse.SUPPRESS)
    parser.add_argument("--style", choices=STYLES, default="def", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure ours and triotp, then print the table (or JSON)."""
    args = parse_args(argv)
    configure_logging(logging.WARNING)
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    for key in FULL_SIZES:
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
            sizes[key] = value

    if args.scenario == "spawn":  # the fresh interpreter of spawn_in_subprocess
        json.dump(run_trio(bench_spawn, sizes["actors"], args.style), sys.stdout)
        sys.stdout.write("\n")
        return 0

    started = time.perf_counter()
    log(f"ours: sizes={sizes}")
    if args.child_ops_only:
        child_ops = measure_child_ops(sizes)
        if args.json:
            json.dump({"sizes": sizes, "child_ops": child_ops}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(render_child_ops(child_ops, sizes))
        return 0
    ours = measure_ours(sizes)
    child_ops = measure_child_ops(sizes)
    log(f"ours done in {time.perf_counter() - started:.1f}s")
    peer = None
    if not args.no_peer:
        t0 = time.perf_counter()
        log("triotp peer (its own venv)...")
        peer = measure_peer(sizes, args.quick)
        log(f"triotp done in {time.perf_counter() - t0:.1f}s")
    rows = build_rows(ours, peer)
    meta = {
        "sizes": sizes,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "elapsed_s": time.perf_counter() - started,
    }
    result = {
        "meta": meta,
        "rows": [row.as_json() for row in rows],
        "ours": ours,
        "child_ops": child_ops,
        "triotp": peer,
        "otp25": OTP25,
        "goals": {k: {"value": g.value, "at_most": g.at_most} for k, g in GOALS.items()},
    }
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(render_table(rows))
    print()
    print(render_child_ops(child_ops, sizes))
    print()
    print(
        f"sizes: {sizes}; python {meta['python']}, trio {meta['trio']}, "
        f"{meta['cpus']} cpus; {meta['elapsed_s']:.0f} s"
    )
    print(
        "ratio: ours vs triotp, > 1 means ours is better (rates: ours/triotp; costs: triotp/ours)"
    )
    print(f"ours: throughputs are medians of {sizes['repeats']} runs; restarts pooled over them")
    if peer is not None:
        peer_meta = peer.get("meta", {})
        versions = peer_meta.get("versions", {})
        print(
            f"triotp {versions.get('triotp', '?')} (trio {versions.get('trio', '?')}): "
            f"async def handlers only; medians of {peer_meta.get('repeats', '?')} run(s), "
            "same sizes"
        )
    elif not args.no_peer:
        print("triotp: not measured (see the log above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
