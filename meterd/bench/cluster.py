#!/usr/bin/env python3
"""The ack path of cluster mode through the JetStream log, against the same batches decided
in-process without the log.

    .venv/bin/meterd bench cluster                  # 2,000 batches of 20 events, 3 servers
    .venv/bin/meterd bench cluster --quick          # 300 batches
    .venv/bin/meterd bench cluster --servers 1

Starts its own NATS server(s) (the pip-installed binary, ``sync_interval: always``, free
loopback ports, a temporary store: ``meterd cluster dev``'s) and, per mode, 4 shards' cells
(count 16, shard_size 4) in fresh files, in this process. The gateway's
:class:`~meterd.partitions._gateway.GatewaySubmitter` splits each batch by shard; with
``--in-flight`` batches waiting at a time, each batch's latency is from its submit to its
outcome (every slice's verdict).

``direct`` (the baseline)
    Each slice is handed to its shard's :class:`~meterd.cluster.ShardApplier` in-process
    (the same decode, grouping, commit with its log position, verdicts) without NATS.
``log``
    Each slice is published to ``meterd.log.<shard>`` (R3 on 3 servers) and its verdict
    comes back over core NATS (:class:`~meterd.cluster.JetStreamLinks`), the appliers
    reading the log: cluster mode's path on one node.

Figures: batches/s, events/s, latency p50/p99, this process's CPU µs per event (the NATS
servers' CPU is not in it). Figures, never pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from meterd import logs
from meterd.cluster import JetStreamLinks, ShardApplier, connect, open_bridge, provision
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
    submitter: GatewaySubmitter, batches: int, events: int, in_flight: int, accounts: int
) -> dict[str, float]:
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
                    f"b{number}-{i}",
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
    for number in range(batches):
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
        "batches_per_s": batches / elapsed,
        "events_per_s": batches * events / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_us_per_event": cpu / (batches * events) * 1e6,
    }


def write_config(root: Path, urls: list[str]) -> Config:
    root.mkdir(parents=True)
    path = root / "config.toml"
    path.write_text(CONFIG.format(nats=json.dumps(urls)))
    return load(path)


async def run_mode(
    mode: str, root: Path, urls: list[str], args: argparse.Namespace
) -> dict[str, float]:
    config = write_config(root, urls)
    assert config.cluster is not None
    async with open_bridge(name=f"bench-{mode}") as bridge, cells(config) as held:
        conn = await connect(bridge, urls, name=f"bench-{mode}")
        await provision(conn, config.cluster)
        async with trio.open_nursery() as nursery:
            appliers = {
                shard: ShardApplier(conn if mode == "log" else None, cell, shard, config.partitions)
                for shard, cell in held.items()
            }
            links: Any
            if mode == "log":
                links = JetStreamLinks(conn, f"bench-{mode}", config.partitions, slice_timeout=30)
                await nursery.start(links.run)
                for applier in appliers.values():
                    await nursery.start(applier.run)
            else:
                links = DirectLinks(config, appliers)
                nursery.start_soon(links.run)
            submitter = GatewaySubmitter(
                f"bench-{mode}",
                links,
                max_in_flight_events=1 << 20,
                clock=lambda: time.time_ns() // 1_000_000,
            )
            result = await drive(
                submitter, args.batches, args.events, args.in_flight, args.accounts
            )
            nursery.cancel_scope.cancel()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meterd.bench.cluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=20, help="events per batch")
    parser.add_argument("--in-flight", type=int, default=32, help="batches awaiting their ack")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--servers", type=int, choices=(1, 3), default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logs.configure(level="warning")
    if args.quick:
        args.batches = 300
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp) / "nats", args.servers) as nats,
    ):
        for mode in ("direct", "log"):
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            results[mode] = trio.run(run_mode, mode, Path(tmp) / mode, nats.urls, args)
    load1 = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"results": results, "load1": load1}, indent=2))
        return 0
    print(
        f"{args.batches} batches of {args.events} events, {args.in_flight} in flight,"
        f" 4 shards, {args.servers} NATS server(s) (sync_interval always); load average {load1:.2f}"
    )
    header = ("mode", "batches/s", "events/s", "p50 ms", "p99 ms", "CPU us/event")
    print(f"{header[0]:8} " + " ".join(f"{h:>12}" for h in header[1:]))
    for mode, r in results.items():
        print(
            f"{mode:8} {r['batches_per_s']:>12,.0f} {r['events_per_s']:>12,.0f}"
            f" {r['p50_ms']:>12.1f} {r['p99_ms']:>12.1f} {r['cpu_us_per_event']:>12.1f}"
        )
    ratio = results["log"]["events_per_s"] / results["direct"]["events_per_s"]
    print(f"log / direct events/s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
