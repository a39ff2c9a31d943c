#!/usr/bin/env python3
"""Peer benchmark: the same workloads as our own supervisors, run on triotp 0.2.1.

Run this with the python of the dedicated triotp virtualenv (triotp 0.2.1
pins ``trio>=0.19,<0.20``, which must never enter the project's environment);
:mod:`meterd.bench.triotp_env` creates that venv and runs this script (by its path: the
venv has no meterd, and the script imports nothing of it).

It prints ONE JSON object on stdout; everything else goes to stderr.

Every workload uses triotp's public API only:

* the process is a triotp node: ``node.run([application.app_spec(...)])``;
* actors are ``gen_server.start(module, init_arg, name)`` tasks whose callbacks
  (``init``, ``handle_call``, ``handle_cast``) are the functions of this module;
* they are supervised by ``dynamic_supervisor.start`` /
  ``dynamic_supervisor.start_child`` or ``supervisor.start`` with
  ``supervisor.child_spec`` / ``supervisor.options``;
* messages go through ``gen_server.call`` / ``gen_server.cast`` by name.

Each (workload, repeat) pair runs in a fresh child process (this script
re-invoked with ``--scenario``), so RSS readings are not polluted by earlier
workloads and every repeat starts from the same state. Figures are medians over
the repeats; restart latencies are pooled over all repeats.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel

# triotp lives only in the dedicated venv (see meterd/bench/triotp_env.py) and is untyped.
from triotp import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    application,
    dynamic_supervisor,
    gen_server,
    mailbox,
    node,
    supervisor,
)
from triotp.helpers import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
    current_module,
)

#: This module doubles as the triotp application module (``start``) and as
#: the gen_server callback module (``init``, ``handle_call``, ``handle_cast``).
THIS_MODULE = current_module()

SCENARIOS = ("spawn", "call", "cast", "dispatch", "restart")

FULL_SIZES: dict[str, int] = {
    "actors": 100_000,
    "calls": 20_000,
    "casts": 200_000,
    "dispatch_messages": 1_000_000,
    "dispatch_actors": 10_000,
    "restarts": 200,
    "repeats": 3,
}
QUICK_SIZES: dict[str, int] = {
    "actors": 5_000,
    "calls": 2_000,
    "casts": 10_000,
    "dispatch_messages": 50_000,
    "dispatch_actors": 1_000,
    "restarts": 50,
    "repeats": 1,
}

#: Exceptions a client sees while a named gen_server is down or restarting:
#: the name is unregistered (MailboxDoesNotExist) or the mailbox is closed
#: under a pending send (ClosedResourceError / BrokenResourceError).
RESTARTING_ERRORS = (
    mailbox.MailboxDoesNotExist,
    trio.ClosedResourceError,
    trio.BrokenResourceError,
)

#: Safety net so a lost reply fails the run instead of hanging it.
CALL_TIMEOUT_S = 10.0


def log(*parts: object) -> None:
    """Print a progress line on stderr (stdout carries only the JSON)."""
    print("[peer_triotp]", *parts, file=sys.stderr, flush=True)


# Deliberately repeated from meterd/bench/supervisors.py: this script runs in the triotp
# virtualenv (trio 0.19), where the project's packages must not be importable.
def rss_bytes() -> int:
    """Return this process's resident set size from /proc/self/status VmRSS."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                assert unit == "kB", unit
                return int(value) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


# --------------------------------------------------------------------------
# gen_server callbacks (this module is passed to gen_server.start)
# --------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts events down to zero, then sets ``done``."""

    remaining: int
    done: trio.Event = field(default_factory=trio.Event)

    def hit(self) -> None:
        """Record one event."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


@dataclass
class ActorConfig:
    """Shared init_arg of every actor in a workload; it is also their state.

    Sharing one object keeps the per-actor state to a single reference, so
    ``rss_bytes_per_actor`` measures triotp's own per-actor cost.
    """

    on_init: Tally | None = None
    on_cast: Tally | None = None
    crashed_at: float = 0.0


class DeliberateCrash(RuntimeError):
    """Raised by ``handle_cast("crash")`` to make the gen_server die."""


async def init(config: ActorConfig) -> ActorConfig:
    """gen_server ``init`` callback: announce readiness, state is the config."""
    if config.on_init is not None:
        config.on_init.hit()
    return config


async def handle_call(message: Any, _caller: Any, state: ActorConfig) -> tuple[Any, ActorConfig]:
    """gen_server ``handle_call``: reply immediately."""
    return gen_server.Reply(payload=message), state


async def handle_cast(message: Any, state: ActorConfig) -> tuple[Any, ActorConfig]:
    """gen_server ``handle_cast``: count ``"inc"``, die on ``"crash"``."""
    if message == "inc":
        assert state.on_cast is not None
        state.on_cast.hit()
        return gen_server.NoReply(), state
    if message == "crash":
        state.crashed_at = time.perf_counter()
        raise DeliberateCrash("crash requested by benchmark")
    raise ValueError(f"unexpected cast {message!r}")


def actor_spec(name: str, config: ActorConfig) -> Any:
    """A PERMANENT child spec running a named gen_server of this module."""
    return supervisor.child_spec(
        id=name,
        task=gen_server.start,
        args=[THIS_MODULE, config, name],
        restart=supervisor.restart_strategy.PERMANENT,
    )


def release_names(names: list[str]) -> None:
    """Unregister names before teardown.

    triotp's ``mailbox.destroy`` calls ``unregister_all(mid)``, which scans the
    whole name registry, so cancelling N named gen_servers costs O(N^2);
    unregistering each name first (O(1) each) keeps teardown linear. This is
    outside every timed region.
    """
    for name in names:
        mailbox.unregister(name)


# --------------------------------------------------------------------------
# workloads (each runs inside a triotp node, see ``start``)
# --------------------------------------------------------------------------


async def spawn_actors(nursery: trio.Nursery, names: list[str], config: ActorConfig) -> float:
    """Start one dynamic supervisor and ``len(names)`` named gen_servers in it.

    Returns the wall seconds from the first ``start_child`` until every
    actor's ``init`` has run and the last one answered a call.
    """
    assert config.on_init is not None
    opts = supervisor.options(max_restarts=3, max_seconds=5)
    sup = await nursery.start(dynamic_supervisor.start, opts, "bench-dynsup")
    t0 = time.perf_counter()
    for name in names:
        await dynamic_supervisor.start_child(sup, actor_spec(name, config))
    await config.on_init.done.wait()
    reply = await gen_server.call(names[-1], "ping", timeout=CALL_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    assert reply == "ping", reply
    return elapsed


async def bench_spawn(actors: int) -> dict[str, Any]:
    """Spawn ``actors`` idle gen_servers; time per actor and RSS per actor."""
    names = [f"actor-{i}" for i in range(actors)]
    config = ActorConfig(on_init=Tally(actors))
    async with trio.open_nursery() as nursery:
        gc.collect()
        rss_before = rss_bytes()
        elapsed = await spawn_actors(nursery, names, config)
        await trio.sleep(0.05)  # let every actor settle into mailbox.receive
        gc.collect()
        rss_after = rss_bytes()
        t_down = time.perf_counter()
        release_names(names)
        nursery.cancel_scope.cancel()
    teardown = time.perf_counter() - t_down
    return {
        "spawn_us_per_actor": elapsed / actors * 1e6,
        "rss_bytes_per_actor": (rss_after - rss_before) / actors,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "teardown_s": teardown,
    }


async def start_single(nursery: trio.Nursery, name: str, config: ActorConfig) -> None:
    """Start one named gen_server under a static (one_for_one) supervisor.

    ``max_restarts`` is per child in triotp and must exceed the number of
    crashes we inflict, hence the large value.
    """
    opts = supervisor.options(max_restarts=1_000_000, max_seconds=5)
    await nursery.start(supervisor.start, [actor_spec(name, config)], opts)
    await wait_serving(name)


async def wait_serving(name: str) -> None:
    """Call ``name`` until it answers; retry (yielding) while it is down."""
    while True:
        try:
            await gen_server.call(name, "ping", timeout=CALL_TIMEOUT_S)
        except RESTARTING_ERRORS:
            await trio.lowlevel.checkpoint()  # yield so the supervisor can restart it
        else:
            return


async def bench_call(calls: int) -> dict[str, Any]:
    """Sequential call round-trips from one task to one gen_server."""
    async with trio.open_nursery() as nursery:
        await start_single(nursery, "echo", ActorConfig())
        for _ in range(max(calls // 10, 100)):  # warm-up
            await gen_server.call("echo", "ping")
        t0 = time.perf_counter()
        for _ in range(calls):
            await gen_server.call("echo", "ping")
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"call_per_s": calls / elapsed}


async def bench_cast(casts: int) -> dict[str, Any]:
    """Casts from one task into one gen_server, until it handled them all."""
    handled = Tally(casts)
    config = ActorConfig(on_cast=handled)
    async with trio.open_nursery() as nursery:
        await start_single(nursery, "sink", config)
        t0 = time.perf_counter()
        for _ in range(casts):
            await gen_server.cast("sink", "inc")
        await handled.done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"cast_per_s": casts / elapsed}


async def bench_dispatch(messages: int, actors: int) -> dict[str, Any]:
    """Cast ``messages`` round-robin over ``actors`` gen_servers, until handled."""
    names = [f"worker-{i}" for i in range(actors)]
    handled = Tally(messages)
    config = ActorConfig(on_init=Tally(actors), on_cast=handled)
    async with trio.open_nursery() as nursery:
        await spawn_actors(nursery, names, config)
        t0 = time.perf_counter()
        for i in range(messages):
            await gen_server.cast(names[i % actors], "inc")
        await handled.done.wait()
        elapsed = time.perf_counter() - t0
        release_names(names)
        nursery.cancel_scope.cancel()
    return {"dispatch_msgs_per_s": messages / elapsed}


async def bench_restart(restarts: int) -> dict[str, Any]:
    """Crash a supervised named gen_server; time crash -> next successful call.

    The crash instant is taken inside ``handle_cast`` right before it raises;
    the client then calls the name in a loop (``trio.lowlevel.checkpoint()``
    between attempts) until the restarted incarnation answers. The first few
    crashes are a warm-up and are not recorded.
    """
    config = ActorConfig()
    warmup = min(10, max(restarts // 10, 1))
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await start_single(nursery, "victim", config)
        for i in range(warmup + restarts):
            await gen_server.cast("victim", "crash")
            await wait_serving("victim")
            latency = time.perf_counter() - config.crashed_at
            if i >= warmup:
                samples.append(latency * 1e6)
        nursery.cancel_scope.cancel()
    return {"restart_samples_us": samples}


async def run_scenario(scenario: str, sizes: dict[str, int]) -> dict[str, Any]:
    """Dispatch to the workload named ``scenario``."""
    if scenario == "spawn":
        return await bench_spawn(sizes["actors"])
    if scenario == "call":
        return await bench_call(sizes["calls"])
    if scenario == "cast":
        return await bench_cast(sizes["casts"])
    if scenario == "dispatch":
        return await bench_dispatch(sizes["dispatch_messages"], sizes["dispatch_actors"])
    if scenario == "restart":
        return await bench_restart(sizes["restarts"])
    raise ValueError(f"unknown scenario {scenario!r}")


_RESULT: dict[str, Any] = {}


async def start(start_arg: tuple[str, dict[str, int]]) -> None:
    """triotp application entry point (``application.app_spec.module.start``)."""
    scenario, sizes = start_arg
    _RESULT.update(await run_scenario(scenario, sizes))


def run_in_node(scenario: str, sizes: dict[str, int]) -> dict[str, Any]:
    """Run one workload as a non-permanent triotp application on a fresh node.

    ``node.run`` installs triotp's default log handler (level NONE, i.e. a
    logbook NullHandler) and initialises the mailbox registry.
    """
    spec = application.app_spec(
        module=THIS_MODULE,
        start_arg=(scenario, sizes),
        permanent=False,  # TRANSIENT: a normal return ends the node
        opts=supervisor.options(max_restarts=0, max_seconds=5),  # never rerun
    )
    node.run(apps=[spec])
    if not _RESULT:
        raise RuntimeError(f"scenario {scenario} produced no result")
    return dict(_RESULT)


# --------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------


def run_child(scenario: str, sizes: dict[str, int]) -> dict[str, Any]:
    """Run one workload in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, "-I", os.path.abspath(__file__), "--scenario", scenario]
    for key, value in sizes.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scenario {scenario} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def p99(samples: list[float]) -> float:
    """99th percentile (inclusive method, interpolated)."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def orchestrate(sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    """Run every workload ``repeats`` times and summarise medians."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for scenario in SCENARIOS:
        runs[scenario] = []
        for rep in range(repeats):
            t0 = time.perf_counter()
            res = run_child(scenario, sizes)
            shown = {k: v for k, v in res.items() if k != "restart_samples_us"}
            log(f"{scenario} #{rep + 1}/{repeats} ({time.perf_counter() - t0:.1f}s)", shown)
            runs[scenario].append(res)

    def median_of(scenario: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[scenario]))

    restart_samples = [s for r in runs["restart"] for s in r["restart_samples_us"]]
    return {
        "spawn_us_per_actor": median_of("spawn", "spawn_us_per_actor"),
        "rss_bytes_per_actor": median_of("spawn", "rss_bytes_per_actor"),
        "call_per_s": median_of("call", "call_per_s"),
        "cast_per_s": median_of("cast", "cast_per_s"),
        "dispatch_msgs_per_s": median_of("dispatch", "dispatch_msgs_per_s"),
        "restart_us_median": statistics.median(restart_samples),
        "restart_us_p99": p99(restart_samples),
        "notes": NOTES,
        "meta": {
            "peer": "triotp",
            "versions": {
                dist: importlib.metadata.version(dist)
                for dist in ("triotp", "trio", "tenacity", "trio-util", "Logbook")
            },
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "repeats": repeats,
            "sizes": sizes,
            "restart_samples": len(restart_samples),
            "samples": {
                "spawn_us_per_actor": [r["spawn_us_per_actor"] for r in runs["spawn"]],
                "rss_bytes_per_actor": [r["rss_bytes_per_actor"] for r in runs["spawn"]],
                "spawn_teardown_s": [r["teardown_s"] for r in runs["spawn"]],
                "call_per_s": [r["call_per_s"] for r in runs["call"]],
                "cast_per_s": [r["cast_per_s"] for r in runs["cast"]],
                "dispatch_msgs_per_s": [r["dispatch_msgs_per_s"] for r in runs["dispatch"]],
            },
        },
    }


NOTES = (
    "triotp 0.2.1 on trio 0.19, each workload in a fresh triotp node "
    "(node.run + application.app_spec, default log level NONE), medians over "
    "repeats, restart latencies pooled. Actors are named gen_server.start "
    "tasks. spawn/rss: dynamic_supervisor.start + dynamic_supervisor."
    "start_child(child_spec(task=gen_server.start, restart=PERMANENT)), timed "
    "until every init ran and the last actor answered a call (start_child only "
    "hands the spec to the supervisor's mailbox; it gives no 'started' signal). "
    "call/cast: one "
    "gen_server under supervisor.start; gen_server.call / gen_server.cast by "
    "name; casts counted until handle_cast saw them all. dispatch: one sender "
    "task, round-robin gen_server.cast over the actors (spawned as for "
    "spawn). restart: supervisor.start (triotp supervisors have no strategy "
    "option; each child is restarted on its own, i.e. one_for_one) with "
    "max_restarts=1e6 because triotp's restart intensity is counted per "
    "child, and exceeding it re-raises and tears down the whole supervisor; "
    "latency = crash raised in handle_cast -> gen_server.call by name "
    "succeeds (client retries on MailboxDoesNotExist/ClosedResourceError "
    "with trio.lowlevel.checkpoint()). triotp mailboxes are trio.open_memory_channel(0), "
    "i.e. unbuffered rendezvous: a cast blocks until the server receives it, "
    "so there is no mailbox queue (and no unbounded growth) but also no "
    "pipelining. mailbox.destroy scans the whole name registry, so tearing "
    "down N named actors is O(N^2); names are unregistered before teardown "
    "(untimed)."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    for key, full in FULL_SIZES.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {full:,} ({QUICK_SIZES[key]:,} with --quick)",
        )
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: orchestrate all workloads, or run one (``--scenario``)."""
    args = parse_args(argv)
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    for key in FULL_SIZES:
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
            sizes[key] = value
    repeats = sizes.pop("repeats")
    if args.scenario is not None:
        result = run_in_node(args.scenario, sizes)
    else:
        log(f"triotp peer benchmark: sizes={sizes} repeats={repeats}")
        result = orchestrate(sizes, repeats)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
