"""Cost of alert evaluation per event, and delivery throughput: ``python -m meterd.bench.alerts``.

**Evaluation** (issue 17: at most 1 µs added per event with 10 rules on the account's
meter). The meter actor's hot path, :meth:`AccountUsage.apply_events` on 500-event batches
of one account (meter ``dyno.seconds``, ``sum``, one dimension, decimal quantities, times
within one month), is timed alone and followed by :meth:`AccountAlerts.observe` with 10
usage rules on that meter whose thresholds are far above the usage (no rule near: the
common case). The same for a ``unique_count`` and a ``max`` meter. Rows take turns (each
repeat runs every row once); the figure is the median of CPU time per event
(``time.process_time``), and "added" is the difference with the row without rules.

**Delivery**: ``N`` crossings written to a store's outbox, delivered by
:class:`~meterd.alerts._delivery.DeliveryService` (its own database, signing, one delivery
per account at a time, ``max_concurrency`` per webhook) to a local receiver (hypercorn is
not needed: a threaded ``http.server`` answering 200), against a baseline of bare httpx
POSTs of the same bodies with the same concurrency and no bookkeeping, in the same command.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

from meterd.accounts.aggregate import AccountUsage
from meterd.alerts import AlertRule, Webhook
from meterd.alerts._delivery import DeliveryService
from meterd.alerts._eval import AccountAlerts, Crossing
from meterd.alerts._outbox import write_crossings
from meterd.alerts._runtime import AlertBook
from meterd.config import StoreConfig
from meterd.model import DAY_MS, Aggregation, Event, Meter
from meterd.store import Store
from meterd.store.schema import open_database

NOW = 1_796_000_000_000
MONTH_START = NOW - 25 * DAY_MS
METERS = {
    "sum": Meter("dyno.seconds", Aggregation.SUM, ("size",)),
    "unique_count": Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user"),
    "max": Meter("postgres.storage_bytes", Aggregation.MAX),
}


def _batches(meter: Meter, count: int, size: int) -> list[list[Event]]:
    out = []
    for b in range(count):
        batch = []
        for i in range(size):
            n = b * size + i
            props: tuple[tuple[str, str], ...] = (("size", ("std-1x", "perf-l")[n % 2]),)
            if meter.aggregation is Aggregation.UNIQUE_COUNT:
                props = (("user", f"u{n % 5000}"),)
            batch.append(
                Event(
                    f"e{n}",
                    "acme",
                    meter.name,
                    Decimal(n % 1000) / 8,
                    MONTH_START + (n * 997) % (20 * DAY_MS),
                    props,
                )
            )
        out.append(batch)
    return out


def _run_apply(meter: Meter, batches: list[list[Event]], rules: int) -> float:
    meters = {meter.name: meter}
    usage = AccountUsage()
    alerts: AccountAlerts | None = None
    if rules:
        alerts = AccountAlerts(
            "acme",
            [
                AlertRule(f"r{i}", meter.name, "hook", threshold=Decimal(10**12 + i))
                for i in range(rules)
            ],
            meters,
            (),
            MONTH_START - 40 * DAY_MS,
            lambda: NOW,
        )
    started = time.process_time()
    for batch_id, batch in enumerate(batches, 1):
        usage.apply_events(meters, batch)
        if alerts is not None:
            alerts.observe(batch_id, batch)
    spent = time.process_time() - started
    assert alerts is None or not alerts.pending
    return spent / sum(len(b) for b in batches)


def evaluation(repeats: int, batches: int) -> None:
    print(f"evaluation: CPU per event, median of {repeats}, {batches} x 500-event batches")
    for kind, meter in METERS.items():
        data = _batches(meter, batches, 500)
        rows: dict[str, list[float]] = {"no rules": [], "10 rules": []}
        for _ in range(repeats):
            for name in rows:
                gc.collect()
                rows[name].append(_run_apply(meter, data, 0 if name == "no rules" else 10))
        base = statistics.median(rows["no rules"]) * 1e9
        with_rules = statistics.median(rows["10 rules"]) * 1e9
        print(
            f"  {kind:<13} apply alone {base:7.0f} ns   apply + 10 rules {with_rules:7.0f} ns"
            f"   added {with_rules - base:6.0f} ns/event"
        )


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _crossings(count: int, accounts: int) -> list[Crossing]:
    rules = [
        AlertRule(f"r{i}", "dyno.seconds", "hook", threshold=Decimal(i + 1)) for i in range(count)
    ]
    return [
        Crossing(
            rules[n].crossing_id(f"a{n % accounts}", "2026-11"),
            rules[n],
            f"a{n % accounts}",
            "2026-11",
            Decimal(n + 1),
            MONTH_START,
            f"e{n}",
            1,
            NOW,
        )
        for n in range(count)
    ]


async def _deliver(where: Path, url: str, count: int, accounts: int, concurrency: int) -> float:
    path = where / "store.sqlite3"
    conn = open_database(path)
    with conn:
        write_crossings(conn, _crossings(count, accounts))
    conn.close()
    store = Store.at(path, StoreConfig())
    book = AlertBook((), {}, history_ms=35 * DAY_MS)
    hook = Webhook("hook", url, "bench-secret-0123456789", max_concurrency=concurrency)
    service = DeliveryService(store, book, [hook], where / "deliveries.sqlite3")
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.wait_until(lambda: service.delivered >= count)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    await store.aclose()
    return count / elapsed


async def _bare(url: str, bodies: list[bytes], concurrency: int) -> float:
    limiter = trio.CapacityLimiter(concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=10) as client:

        async def post(body: bytes) -> None:
            async with limiter:
                response = await client.post(url, content=body)
                assert response.status_code == 200

        async with trio.open_nursery() as nursery:
            for body in bodies:
                nursery.start_soon(post, body)
    return len(bodies) / (time.perf_counter() - started)


def delivery(count: int, accounts: int, concurrency: int, repeats: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    bodies = [c.body() for c in _crossings(count, accounts)]
    rows: dict[str, list[float]] = {"bare httpx POSTs": [], "DeliveryService": []}
    try:
        for _ in range(repeats):
            rows["bare httpx POSTs"].append(trio.run(_bare, url, bodies, concurrency))
            with tempfile.TemporaryDirectory() as where:
                rows["DeliveryService"].append(
                    trio.run(_deliver, Path(where), url, count, accounts, concurrency)
                )
    finally:
        server.shutdown()
        server.server_close()
    print(
        f"delivery: {count} crossings of {accounts} accounts, max_concurrency {concurrency},"
        f" median of {repeats}"
    )
    for name, figures in rows.items():
        print(f"  {name:<18} {statistics.median(figures):8.0f} deliveries/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.alerts", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats")
    args = parser.parse_args(argv)
    gc.set_threshold(50_000, 20, 20)
    evaluation(repeats=3 if args.quick else 7, batches=20 if args.quick else 200)
    delivery(
        count=200 if args.quick else 2000,
        accounts=50 if args.quick else 500,
        concurrency=4,
        repeats=1 if args.quick else 3,
    )


run: Callable[[list[str] | None], None] = main

if __name__ == "__main__":
    main()
