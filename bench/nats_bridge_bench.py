#!/usr/bin/env python3
"""JetStream publishes from Trio through meterd's bridge, against nats-py on plain asyncio.

Run from the repository root::

    .venv/bin/python bench/nats_bridge_bench.py            # 20,000 publishes, 1 server
    .venv/bin/python bench/nats_bridge_bench.py --quick    # 5,000
    .venv/bin/python bench/nats_bridge_bench.py --servers 3  # R3 on a 3-server cluster
    .venv/bin/python bench/nats_bridge_bench.py --sync-interval 2m  # without fsync per write

Starts its own NATS server(s) (the pip-installed binary, ``sync_interval: always``, free
loopback ports, a temporary store) exactly as tests/cluster does.

``asyncio`` (the baseline)
    nats-py on its own asyncio loop (``asyncio.run``), ``--concurrency`` coroutines each
    publishing with ``Nats-Msg-Id`` and awaiting the ack, ``--messages`` in all.
``bridge``
    The same through :class:`meterd.cluster.Connection.publish` from ``--concurrency`` Trio
    tasks (every call crosses to the asyncio thread and back).

Also the cost of one bridge round trip with nothing to do (a no-op coroutine), sequential and
with 64 concurrent callers. Each figure is the median of ``--repeats`` runs, each on a fresh
stream; figures, never pass/fail thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats

from meterd.cluster import connect, open_bridge
from tests.cluster.servers import running_cluster


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def asyncio_run(
    urls: list[str], stream: str, messages: int, concurrency: int, payload: bytes, replicas: int
) -> tuple[float, list[float]]:
    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], num_replicas=replicas)
    latencies: list[float] = []
    counter = iter(range(messages))

    async def lane() -> None:
        for i in counter:
            started = time.perf_counter()
            await js.publish(f"{stream}.p{i % 16}", payload, headers={"Nats-Msg-Id": f"m{i}"})
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed, latencies


async def bridge_run(
    urls: list[str], stream: str, messages: int, concurrency: int, payload: bytes, replicas: int
) -> tuple[float, list[float]]:
    async with open_bridge(name="bench") as bridge:
        conn = await connect(bridge, urls, name="bench")
        await conn.ensure_stream(stream, [f"{stream}.>"], replicas=replicas)
        latencies: list[float] = []
        counter = iter(range(messages))

        async def lane() -> None:
            for i in counter:
                started = time.perf_counter()
                await conn.publish(f"{stream}.p{i % 16}", payload, msg_id=f"m{i}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(lane)
        elapsed = time.perf_counter() - started
        return elapsed, latencies


async def noop_calls(calls: int, concurrency: int) -> float:
    """Seconds per bridge round trip of a coroutine that does nothing."""
    async with open_bridge(name="bench-noop") as bridge:

        async def nothing() -> None:
            return None

        counter = iter(range(calls))

        async def lane() -> None:
            for _ in counter:
                await bridge.call(nothing)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(lane)
        return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="payload bytes")
    parser.add_argument("--servers", type=int, choices=(1, 3), default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sync-interval",
        default="always",
        help="the servers' JetStream sync_interval: 'always' (meterd's setting) or e.g. '2m' "
        "(the server's default) to see the client's costs without the disk's",
    )
    args = parser.parse_args()
    messages = 5_000 if args.quick else args.messages
    payload = b"x" * args.size
    replicas = 3 if args.servers == 3 else 1
    results: dict[str, list[tuple[float, list[float]]]] = {"asyncio": [], "bridge": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), args.servers, sync_interval=args.sync_interval) as cluster,
    ):
        for run in range(args.repeats):
            for name in ("asyncio", "bridge"):
                stream = f"B{name}{run}"
                if name == "asyncio":
                    outcome = asyncio.run(
                        asyncio_run(
                            cluster.urls, stream, messages, args.concurrency, payload, replicas
                        )
                    )
                else:
                    outcome = trio.run(
                        bridge_run,
                        cluster.urls,
                        stream,
                        messages,
                        args.concurrency,
                        payload,
                        replicas,
                    )
                results[name].append(outcome)
    print(
        f"JetStream publishes with Nats-Msg-Id, awaiting each ack: {messages} x {args.size} B, "
        f"{args.concurrency} in flight, R{replicas} on {args.servers} server(s), "
        f"sync_interval {args.sync_interval}; median of {args.repeats}"
    )
    print(f"{'':10} {'publishes/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in results.items():
        rate = statistics.median(messages / elapsed for elapsed, _ in runs)
        p50 = statistics.median(percentile(lat, 0.50) for _, lat in runs) * 1000
        p99 = statistics.median(percentile(lat, 0.99) for _, lat in runs) * 1000
        print(f"{name:10} {rate:12,.0f} {p50:8.2f} {p99:8.2f}")
    calls = 5_000 if args.quick else 20_000
    sequential = statistics.median(trio.run(noop_calls, calls, 1) for _ in range(args.repeats))
    concurrent = statistics.median(trio.run(noop_calls, calls, 64) for _ in range(args.repeats))
    print(
        f"bridge round trip of a no-op coroutine: {sequential * 1e6:.1f} µs sequential, "
        f"{concurrent * 1e6:.1f} µs each with 64 callers"
    )


if __name__ == "__main__":
    main()
