#!/usr/bin/env python3
"""Cluster mode: one node against two on the same local NATS, latency at half load, and the
takeover time, beside the single-host baseline, in one command.

    .venv/bin/meterd bench cluster                  # 2,000 batches of 20 events, 3 servers
    .venv/bin/meterd bench cluster --quick          # 300 batches, lease_ttl 3s
    .venv/bin/meterd bench cluster --servers 1 --no-takeover

Starts its own NATS server(s) (the pip-installed binary, ``sync_interval: always``, free
loopback ports, a temporary store: ``meterd cluster dev``'s). Each run has 4 shards' cells
(count 16, shard_size 4) in fresh files and the gateway's
:class:`~meterd.partitions._gateway.GatewaySubmitter` splitting each batch by shard; with
``--in-flight`` batches waiting at a time per node, a batch's latency is from its submit to
its outcome (every slice's verdict). The log stream is deleted between runs.

``embedded`` (the single-host baseline)
    In this process: each slice is handed to its shard's :class:`~meterd.cluster.ShardApplier`
    (the same decode, grouping, commit with its position, verdicts) without NATS.
``1 node``
    One node process holding the 4 shards drives every batch: each slice is published to
    ``meterd.log.<shard>`` (R3 on 3 servers), applied by its shard's applier reading the
    log, its verdict back over core NATS (:class:`~meterd.cluster.JetStreamLinks`).
``2 nodes``
    Two node processes, each holding 2 shards and driving half of the batches (its own
    producers); a batch's slices go to both nodes' shards, verdicts cross between them.
``half load``
    One node paced at half the events/s ``1 node`` reached: each slice's publish latency
    (publish to JetStream's ack) and verdict latency (the ack to the owner's verdict).
``takeover``
    Two ``meterd run`` nodes; kill -9 of the one holding every shard: the seconds until the
    other logged it owned them all (``--lease-ttl``, 10s; 3s with ``--quick``).

Figures: events/s (and the ratio 2 nodes / 1 node), latency p50/p99, CPU µs per event of
the node processes (sum over nodes; the NATS servers' CPU is not in it), the load average.
Figures, never pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import nats.js.errors
import trio

from meterd import logs
from meterd.cluster import (
    JetStreamLinks,
    ShardApplier,
    connect,
    open_bridge,
    provision,
)
from meterd.cluster._dev import running_cluster
from meterd.cluster._nats import LogMessage
from meterd.config import Config, load
from meterd.ingest.server import Decided
from meterd.model import Event, new_event
from meterd.partitions import OwnerUnavailable, Slice, Verdicts, decode, encode, shard_files
from meterd.partitions._cell import Cell
from meterd.partitions._gateway import GatewaySubmitter

CONFIG = """
late_window = "1d"
dedupe_window = "1d"
[ingest]
listen = "127.0.0.1:18700"
[api]
listen = "127.0.0.1:18701"
admin_token = "bench-admin-token"
[store]
path = "var/meterd.sqlite3"
[partitions]
count = 16
shard_size = 4
[[producers]]
name = "platform"
token = "bench-platform-token"
[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["app"]
[cluster]
node = "bench"
nats = {nats}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def cells(config: Config) -> AsyncIterator[dict[int, Cell]]:
    async with AsyncExitStack() as stack:
        found: dict[int, Cell] = {}
        for shard in range(config.partitions.shards):
            shard_files(config, shard).store.parent.mkdir(parents=True, exist_ok=True)
            cell = Cell.for_shard(config, shard, cells=config.partitions.shards)
            cell.attach(cell.supervisor)
            await cell.open()
            stack.push_async_callback(cell.aclose)
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(cell.supervisor.run)

            async def stop(cell: Cell = cell) -> None:
                cell.supervisor.stop()
                await cell.supervisor.wait_stopped()

            stack.push_async_callback(stop)
            found[shard] = cell
        yield found


class DirectLinks:
    """Slices to the appliers in-process: the baseline (no NATS)."""

    def __init__(self, config: Config, appliers: dict[int, ShardApplier]) -> None:
        self._partitions = config.partitions
        self.appliers = appliers
        self.seq = 0
        self.waiting: dict[tuple[Any, int], Callable[[Verdicts | OwnerUnavailable], None]] = {}
        self.queue: trio.MemorySendChannel[Slice]
        self.queue, self._receive = trio.open_memory_channel[Slice](1 << 20)

    @property
    def partitions(self) -> Any:
        return self._partitions

    def link_of_shard(self, shard: int) -> DirectLinks:
        return self

    def send(self, message: Slice, done: Callable[[Verdicts | OwnerUnavailable], None]) -> None:
        self.waiting[(message.batch, message.shard)] = done
        self.queue.send_nowait(message)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for applier in self.appliers.values():
                nursery.start_soon(self._answers, applier)
            async for message in self._receive:
                self.seq += 1
                data = encode(message)
                log = LogMessage(self.seq, f"meterd.log.{message.shard}", data, None, 0)
                await self.appliers[message.shard].apply(log)

    async def _answers(self, applier: ShardApplier) -> None:
        async for _, data in applier.verdicts:
            answer = decode(data)
            assert isinstance(answer, Verdicts)
            self.waiting.pop((answer.batch, answer.shard))(answer)


async def drive(
    submitter: GatewaySubmitter,
    batches: int,
    events: int,
    in_flight: int,
    accounts: int,
    *,
    rate: float = 0.0,
    prefix: str = "b",
) -> dict[str, float]:
    """Submit ``batches`` (``in_flight`` at a time; paced at ``rate`` events/s when given)."""
    latencies: list[float] = []
    room = trio.Semaphore(in_flight)
    finished = trio.Event()
    outstanding = batches
    now = time.time_ns() // 1_000_000

    def one(number: int) -> list[tuple[str, list[Event]]]:
        by_account: dict[str, list[Event]] = {}
        for i in range(events):
            account = f"acct-{(number * events + i) % accounts}"
            by_account.setdefault(account, []).append(
                new_event(
                    f"{prefix}{number}-{i}",
                    account,
                    "dyno.seconds",
                    1 + i % 5,
                    now - 60_000,
                    (("app", "web"),),
                    "platform",
                    now,
                )
            )
        return list(by_account.items())

    cpu, started = time.process_time(), time.perf_counter()
    start = trio.current_time()
    t0 = time.time()
    for number in range(batches):
        if rate:
            await trio.sleep_until(start + number * events / rate)
        await room.acquire()
        sent = time.perf_counter()

        def done(outcome: object, sent: float = sent) -> None:
            nonlocal outstanding
            assert isinstance(outcome, Decided), outcome
            latencies.append(time.perf_counter() - sent)
            room.release()
            outstanding -= 1
            if outstanding == 0:
                finished.set()

        submitter.submit(one(number), done, producer="platform", seq=number)
    await finished.wait()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "t0": t0,
        "t1": time.time(),
        "cpu_s": cpu,
        "batches_per_s": batches / elapsed,
        "events_per_s": batches * events / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_us_per_event": cpu / (batches * events) * 1e6,
    }


def write_config(root: Path, urls: list[str], node: str = "bench", extra: str = "") -> Config:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    text = CONFIG.format(nats=json.dumps(urls)).replace('node = "bench"', f'node = "{node}"')
    path.write_text(text + extra)
    return load(path)


class TimedLinks(JetStreamLinks):
    """:class:`JetStreamLinks` timing each slice's publish (to JetStream's ack) and its
    verdict (from the ack to the owner's answer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publish_ms: list[float] = []
        self.verdict_ms: list[float] = []

    async def _to_log(self, key: Any, message: Slice) -> bool:
        started = time.perf_counter()
        taken = await super()._to_log(key, message)
        if taken:
            self.publish_ms.append((time.perf_counter() - started) * 1000)
        return taken

    async def _verdict(self, arrived: trio.Event) -> None:
        acked = time.perf_counter()
        await super()._verdict(arrived)
        self.verdict_ms.append((time.perf_counter() - acked) * 1000)


async def run_direct(root: Path, urls: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The single-host baseline (see the module doc), in this process."""
    config = write_config(root, urls)
    async with open_bridge(name="bench-embedded") as bridge, cells(config) as held:
        conn = await connect(bridge, urls, name="bench-embedded")
        await provision(conn, config.cluster)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            appliers = {
                shard: ShardApplier(None, cell, shard, config.partitions)
                for shard, cell in held.items()
            }
            links = DirectLinks(config, appliers)
            nursery.start_soon(links.run)
            submitter = GatewaySubmitter(
                "bench-embedded",
                links,
                max_in_flight_events=1 << 20,
                clock=lambda: time.time_ns() // 1_000_000,
            )
            result = await drive(
                submitter, args.batches, args.events, args.in_flight, args.accounts
            )
            nursery.cancel_scope.cancel()
    return result


async def run_node(spec: dict[str, Any]) -> dict[str, Any]:
    """One node process of a run (``--node SPEC``): its shards' cells and appliers, its
    gateway; ``ready`` on stdout, a line on stdin to start, its figures as JSON on stdout
    when its batches are done, a line on stdin to stop."""
    config = write_config(Path(spec["root"]), spec["urls"], spec["name"])
    assert config.cluster is not None
    owned: list[int] = spec["shards"]
    async with open_bridge(name=f"bench-{spec['name']}") as bridge, cells(config) as held:
        conn = await connect(bridge, spec["urls"], name=f"bench-{spec['name']}")
        await provision(conn, config.cluster)
        async with trio.open_nursery() as nursery:
            gateway = f"bench-{spec['name']}"
            links = TimedLinks(conn, gateway, config.partitions, slice_timeout=60)
            await nursery.start(links.run)
            for shard in owned:
                applier = ShardApplier(conn, held[shard], shard, config.partitions)
                await nursery.start(applier.run)
            submitter = GatewaySubmitter(
                gateway,
                links,
                max_in_flight_events=1 << 20,
                clock=lambda: time.time_ns() // 1_000_000,
            )
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            result: dict[str, Any] = await drive(
                submitter,
                spec["batches"],
                spec["events"],
                spec["in_flight"],
                spec["accounts"],
                rate=spec.get("rate", 0.0),
                prefix=spec["name"],
            )
            result["publish_p50_ms"] = percentile(links.publish_ms, 0.5)
            result["publish_p99_ms"] = percentile(links.publish_ms, 0.99)
            result["verdict_p50_ms"] = percentile(links.verdict_ms, 0.5)
            result["verdict_p99_ms"] = percentile(links.verdict_ms, 0.99)
            result["started"], result["finished"] = result.pop("t0"), result.pop("t1")
            print(json.dumps(result), flush=True)
            # its shards answer the other nodes' slices until every node is done
            await trio.to_thread.run_sync(sys.stdin.readline)
            nursery.cancel_scope.cancel()
    return result


def delete_log(urls: list[str]) -> None:
    """Delete the log stream (each run's appliers start from fresh stores at sequence 1) and
    the lease and node buckets (the takeover's nodes make them with their lease_ttl)."""

    async def delete() -> None:
        async with open_bridge(name="bench-reset") as bridge:
            conn = await connect(bridge, urls, name="bench-reset")
            js = conn._jetstream

            async def drop() -> None:
                for stream in ("METERD_LOG", "KV_meterd-shard-leases", "KV_meterd-nodes"):
                    try:
                        await js.delete_stream(stream)
                    except nats.js.errors.NotFoundError:  # absent: nothing to delete
                        continue

            await conn._run("delete the log", drop)

    trio.run(delete)


def nodes_run(
    root: Path, urls: list[str], parts: list[list[int]], args: argparse.Namespace, rate: float = 0
) -> dict[str, Any]:
    """``len(parts)`` node processes (see the module doc), started together; the figures of
    the run: events/s over the slowest node's span, CPU µs/event summed over the nodes."""
    delete_log(urls)
    procs = []
    batches = args.batches // len(parts)
    for i, shards in enumerate(parts):
        spec = {
            "root": str(root / f"node{i}"),
            "urls": urls,
            "name": f"n{i + 1}",
            "shards": shards,
            "batches": batches,
            "events": args.events,
            "in_flight": args.in_flight,
            "accounts": args.accounts,
            "rate": rate / len(parts),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "meterd.bench.cluster", "--node", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a bench node did not start: {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        found = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"a bench node failed (exit {proc.wait()})")
            found.append(json.loads(line))
        for proc in procs:
            proc.communicate("stop\n", timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    events = batches * args.events * len(parts)
    span = max(r["finished"] for r in found) - min(r["started"] for r in found)
    return {
        "events_per_s": events / span,
        "p50_ms": max(r["p50_ms"] for r in found),
        "p99_ms": max(r["p99_ms"] for r in found),
        "cpu_us_per_event": sum(r["cpu_s"] for r in found) / events * 1e6,
        "publish_p50_ms": max(r["publish_p50_ms"] for r in found),
        "publish_p99_ms": max(r["publish_p99_ms"] for r in found),
        "verdict_p50_ms": max(r["verdict_p50_ms"] for r in found),
        "verdict_p99_ms": max(r["verdict_p99_ms"] for r in found),
    }


def takeover(root: Path, urls: list[str], lease_ttl: str) -> float:
    """Seconds from kill -9 of the node holding every shard until the other node logged it
    owned them all (two ``meterd run`` nodes, no load)."""
    delete_log(urls)
    procs: list[subprocess.Popen[str]] = []
    extra = f'lease_ttl = "{lease_ttl}"\nrebalance = false\n'
    owned: set[int] = set()
    try:
        for i, name in enumerate(("n1", "n2")):
            where = root / name
            config = write_config(where, urls, name, extra)
            text = config.path.read_text()
            text = text.replace("18700", str(18710 + 2 * i)).replace("18701", str(18711 + 2 * i))
            config.path.write_text(text)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meterd",
                    "run",
                    "--json-logs",
                    "--config",
                    str(config.path),
                ],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )
            procs.append(proc)
            assert proc.stderr is not None
            seen: list[str] = []
            for line in proc.stderr:
                seen.append(line)
                if '"meterd_started"' in line:
                    break
            else:
                raise RuntimeError(f"node {name} did not start: {''.join(seen[-5:])}")
        procs[0].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        stderr = procs[1].stderr
        assert stderr is not None
        for line in stderr:
            if '"cluster.shard.owned"' in line:
                owned.add(int(json.loads(line)["shard"]))
                if len(owned) == 4:
                    return time.perf_counter() - killed
        raise RuntimeError("the surviving node stopped before owning every shard")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meterd.bench.cluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=20, help="events per batch")
    parser.add_argument(
        "--in-flight", type=int, default=32, help="batches awaiting their ack, per node"
    )
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--servers", type=int, choices=(1, 3), default=3)
    parser.add_argument("--lease-ttl", default=None, help="for the takeover [10s; 3s --quick]")
    parser.add_argument("--no-takeover", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--node", help=argparse.SUPPRESS)  # a node process of a run
    args = parser.parse_args(argv)
    logs.configure(level="warning")
    if args.node:
        trio.run(run_node, json.loads(args.node))
        return 0
    if args.quick:
        args.batches = 300
    lease_ttl = args.lease_ttl or ("3s" if args.quick else "10s")
    results: dict[str, dict[str, float]] = {}
    loads: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp) / "nats", args.servers) as nats,
    ):
        root = Path(tmp)
        print("running embedded ...", file=sys.stderr, flush=True)
        results["embedded"] = trio.run(run_direct, root / "embedded", nats.urls, args)
        loads.append(os.getloadavg()[0])
        print("running 1 node ...", file=sys.stderr, flush=True)
        results["1 node"] = nodes_run(root / "one", nats.urls, [[0, 1, 2, 3]], args)
        loads.append(os.getloadavg()[0])
        print("running 2 nodes ...", file=sys.stderr, flush=True)
        results["2 nodes"] = nodes_run(root / "two", nats.urls, [[0, 1], [2, 3]], args)
        loads.append(os.getloadavg()[0])
        half = results["1 node"]["events_per_s"] / 2
        print(f"running 1 node at half load ({half:,.0f} events/s) ...", file=sys.stderr)
        results["half load"] = nodes_run(root / "half", nats.urls, [[0, 1, 2, 3]], args, half)
        loads.append(os.getloadavg()[0])
        took = None
        if not args.no_takeover:
            print(f"running takeover (lease_ttl {lease_ttl}) ...", file=sys.stderr, flush=True)
            took = takeover(root / "takeover", nats.urls, lease_ttl)
    ratio = results["2 nodes"]["events_per_s"] / results["1 node"]["events_per_s"]
    if args.json:
        print(
            json.dumps(
                {"results": results, "two_over_one": ratio, "takeover_s": took, "load1": loads},
                indent=2,
            )
        )
        return 0
    print(
        f"{args.batches} batches of {args.events} events, {args.in_flight} in flight per node,"
        f" 4 shards, {args.servers} NATS server(s) (sync_interval always);"
        f" load average {', '.join(f'{x:.1f}' for x in loads)} after each run"
    )
    header = ("run", "events/s", "p50 ms", "p99 ms", "CPU us/event")
    print(f"{header[0]:10} " + " ".join(f"{h:>12}" for h in header[1:]))
    for mode, r in results.items():
        print(
            f"{mode:10} {r['events_per_s']:>12,.0f}"
            f" {r['p50_ms']:>12.1f} {r['p99_ms']:>12.1f} {r['cpu_us_per_event']:>12.1f}"
        )
    h = results["half load"]
    print(
        f"half load: publish p50 {h['publish_p50_ms']:.1f} ms p99 {h['publish_p99_ms']:.1f} ms;"
        f" verdict p50 {h['verdict_p50_ms']:.1f} ms p99 {h['verdict_p99_ms']:.1f} ms"
    )
    embedded = results["embedded"]["events_per_s"]
    print(
        f"2 nodes / 1 node events/s: {ratio:.2f}; 1 node / embedded:"
        f" {results['1 node']['events_per_s'] / embedded:.2f}"
    )
    if took is not None:
        print(f"takeover after kill -9 (lease_ttl {lease_ttl}): {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
