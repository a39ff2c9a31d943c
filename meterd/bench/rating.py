"""Rating benchmark: a large invoice against a steady producer's acks, on a spawned daemon.

``meterd bench rating`` (:mod:`meterd.cli.bench`) calls :func:`run`; docs/billing.md has the
figures and how to read them.

Daemon
    ``python -m meterd run`` on a temporary config (free loopback ports, a store in a
    temporary directory, the API's admin token, one ``sum`` meter ``dyno.seconds`` with
    dimensions ``size`` and ``app``, one price for it), stopped with SIGTERM after.

Load
    For each size N (``sizes``): one account (``rating-N``) with N events of the current
    month, each with its own ``size`` value (so N cells and N invoice lines: the issue's
    case), sent before anything is timed in batches of 1,000 over a websocket (acked =
    durable). Then the bench waits for the daemon's CPU to settle.

Rating rows
    ``GET /v1/accounts/rating-N/invoices/<month>``, once untimed (the account's actor
    checkpoints what it holds), then ``repeats`` times timed from the request to the last
    byte of the answer: the whole request (the store's read of the cells, rating, the
    answer's JSON). The median and the best are shown, with microseconds per line: linear
    cost shows as a flat column.

Latency rows
    A steady producer: one websocket connection sending one event (to its own account)
    every ``interval`` seconds on a fixed schedule (open loop: latency is measured from the
    scheduled send, so a late send counts against the server), for ``seconds``; and
    ``/healthz`` requested every ``healthz_interval`` seconds on its own connection.
    ``baseline``: nothing else runs. ``while rating``: the same, while the invoice of the
    largest size is requested again and again (one request at a time), in the same daemon
    right after. Ack latency p50/p99/max and ``/healthz`` p99/max are shown side by side.
    The bench does not parse the large answers during that row (its own loop must stay free
    to read the acks); it checks their status and length.

Figures, never pass/fail thresholds. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import msgpack  # type: ignore[import-untyped]
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from meterd.bench.ingest import (
    INGEST_PATH,
    BenchError,
    Stopped,
    _decode,
    _stop,
    _tail,
    _wait_listening,
    free_ports,
    gc_pauses,
    percentile,
    settle,
)
from meterd.billing import Period

__all__ = ["RatingOptions", "RatingReport", "format_report", "run"]

METER: Final = "dyno.seconds"
UNIT_PRICE: Final = "0.000173"
BATCH: Final = 1000  # events per frame while loading (the daemon's default max_batch)
IN_FLIGHT: Final = 8  # frames unacknowledged while loading
STEADY_ACCOUNT: Final = "steady"

_packb = msgpack.Packer(use_bin_type=True).pack


def log(message: str) -> None:
    print(f"[bench rating] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class RatingOptions:
    sizes: tuple[int, ...] = (5_000, 10_000, 20_000, 50_000)
    repeats: int = 3  # timed invoice requests per size
    seconds: float = 20.0  # each latency row
    interval: float = 0.05  # the steady producer's period
    healthz_interval: float = 0.1
    keep_log: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> RatingOptions:
        """Small sizes: a few seconds in all."""
        values: dict[str, Any] = {
            "sizes": (1_000, 2_000, 5_000),
            "repeats": 2,
            "seconds": 5.0,
            **overrides,
        }
        return cls(**values)

    def check(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise BenchError("--sizes: give one or more numbers of lines, each >= 1")
        if self.repeats < 1 or self.seconds <= 0 or self.interval <= 0:
            raise BenchError("--repeats must be >= 1, --seconds and --interval > 0")


@dataclass(slots=True)
class RatingRow:
    lines: int
    seconds: list[float] = field(default_factory=list)  # each timed request
    answer_bytes: int = 0
    total: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def us_per_line(self) -> float:
        return self.median / self.lines * 1e6

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "us_per_line": self.us_per_line}


@dataclass(slots=True)
class LatencyRow:
    label: str
    seconds: float = 0.0
    acks: list[float] = field(default_factory=list)  # seconds, from the scheduled send
    healthz: list[float] = field(default_factory=list)  # seconds per /healthz request
    invoices: list[float] = field(default_factory=list)  # seconds per invoice request
    missing: int = 0  # events sent and not acked when the row ended
    gc: tuple[float, int] | None = None  # the daemon's collector over the row: seconds, count
    errors: list[str] = field(default_factory=list)  # failed /healthz or invoice requests

    def figures(self) -> dict[str, float]:
        ms = 1000.0
        return {
            "ack_p50_ms": percentile(self.acks, 50) * ms,
            "ack_p99_ms": percentile(self.acks, 99) * ms,
            "ack_max_ms": max(self.acks, default=0.0) * ms,
            "healthz_p99_ms": percentile(self.healthz, 99) * ms,
            "healthz_max_ms": max(self.healthz, default=0.0) * ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), **self.figures()}


@dataclass(slots=True)
class RatingReport:
    options: RatingOptions
    rating: list[RatingRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    stopped: Stopped = field(default_factory=Stopped)

    def to_json(self) -> dict[str, Any]:
        options = asdict(self.options)
        options["keep_log"] = None if self.options.keep_log is None else str(self.options.keep_log)
        return {
            "options": options,
            "rating": [row.to_json() for row in self.rating],
            "latency": [row.to_json() for row in self.latency],
            "stopped": asdict(self.stopped),
        }


# ---- the daemon -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Daemon:
    ingest_url: str
    api_url: str
    producer_token: str
    admin_token: str
    pid: int


def daemon_config(port: int, api_port: int, workdir: Path, producer: str, admin: str) -> str:
    return f"""# written by meterd bench rating
[ingest]
listen = "127.0.0.1:{port}"

[api]
listen = "127.0.0.1:{api_port}"
admin_token = "{admin}"

[store]
path = {json.dumps(str(workdir / "meterd.sqlite3"))}

[[producers]]
name = "bench"
token = "{producer}"

[[meters]]
name = "{METER}"
aggregation = "sum"
dimensions = ["size", "app"]

[[prices]]
meter = "{METER}"
unit_price = "{UNIT_PRICE}"
effective_from = 2000-01-01
"""


@contextlib.asynccontextmanager
async def spawn(workdir: Path, options: RatingOptions, stopped: Stopped) -> AsyncIterator[Daemon]:
    port, api_port = free_ports(2)
    producer, admin = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    config = workdir / "meterd.toml"
    config.write_text(daemon_config(port, api_port, workdir, producer, admin))
    log_path = workdir / "meterd.log"
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=workdir,  # this interpreter's meterd, whatever the caller's directory
        )
    try:
        await _wait_listening(port, process, "meterd", log_path)
        await _wait_listening(api_port, process, "meterd API", log_path)
        yield Daemon(
            f"ws://127.0.0.1:{port}{INGEST_PATH}",
            f"http://127.0.0.1:{api_port}",
            producer,
            admin,
            process.pid,
        )
    except BaseException:
        log(f"meterd log (last lines):\n{_tail(log_path)}")
        raise
    finally:
        await _stop(process, stopped)
        if options.keep_log is not None:
            options.keep_log.write_bytes(log_path.read_bytes())


# ---- loading ----------------------------------------------------------------------------------


def distinct_sizes(account: str, lines: int, low: int, high: int) -> list[bytes]:
    """``lines`` events of ``account`` in ``[low, high)``, each with its own ``size``, as
    batch frames (seq from 0)."""
    span = max(1, high - low)
    frames = []
    for seq, start in enumerate(range(0, lines, BATCH)):
        events = [
            {
                "id": f"{account}-{n}",
                "account": account,
                "meter": METER,
                "quantity": f"{1 + n % 3600}.5",
                "time": low + n * span // lines,
                "properties": {"size": f"s{n:07d}", "app": "web"},
            }
            for n in range(start, min(start + BATCH, lines))
        ]
        frames.append(_packb({"type": "batch", "seq": seq, "events": events}))
    return frames


def _connect(daemon: Daemon) -> contextlib.AbstractAsyncContextManager[WebSocketConnection]:
    headers = [(b"Authorization", f"Bearer {daemon.producer_token}".encode())]
    return open_websocket_url(daemon.ingest_url, extra_headers=headers, connect_timeout=10)


async def send_all(daemon: Daemon, frames: Sequence[bytes]) -> None:
    """Send ``frames`` (up to :data:`IN_FLIGHT` unacknowledged) and wait for every ack."""
    async with _connect(daemon) as ws:
        hello = _decode(await ws.get_message())
        if hello.get("type") != "hello":
            raise BenchError(f"expected a hello frame, got {hello!r}")
        window = trio.Semaphore(min(IN_FLIGHT, int(hello.get("window", 1))))

        async def send() -> None:
            for frame in frames:
                await window.acquire()
                await ws.send_message(frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            for seq in range(len(frames)):
                ack = _decode(await ws.get_message())
                if ack.get("type") != "ack" or ack.get("seq") != seq or ack.get("rejected"):
                    raise BenchError(
                        f"loading: expected a clean ack of seq {seq}, got {ack!r:.300}"
                    )
                window.release()


# ---- the rows ---------------------------------------------------------------------------------


def _invoice_path(account: str, period: Period) -> str:
    return f"/v1/accounts/{account}/invoices/{period}"


async def rating_row(
    client: httpx.AsyncClient, lines: int, period: Period, repeats: int
) -> RatingRow:
    row = RatingRow(lines)
    path = _invoice_path(f"rating-{lines}", period)
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"GET {path}: HTTP {response.status_code} {response.text[:300]}")
        if attempt == 0:  # untimed: the account's actor checkpoints first
            invoice = response.json()
            if len(invoice["lines"]) != lines:
                raise BenchError(f"{path}: {len(invoice['lines'])} lines, expected {lines}")
            row.total, row.answer_bytes = invoice["total"], len(response.content)
            continue
        row.seconds.append(elapsed)
    log(f"{lines:,} lines: median {row.median:.3f} s ({row.us_per_line:.1f} µs/line)")
    return row


async def latency_row(
    daemon: Daemon,
    client: httpx.AsyncClient,
    label: str,
    options: RatingOptions,
    invoice: str | None,
) -> LatencyRow:
    """The steady producer and ``/healthz`` for ``options.seconds``; with ``invoice`` (a
    path), that invoice requested again and again meanwhile."""
    row = LatencyRow(label, options.seconds)
    count = max(1, round(options.seconds / options.interval))
    gc_before = gc_pauses(f"{daemon.api_url}/metrics")
    prefix = secrets.token_hex(4)
    async with _connect(daemon) as ws:
        hello = _decode(await ws.get_message())
        if hello.get("type") != "hello":
            raise BenchError(f"expected a hello frame, got {hello!r}")
        t0 = trio.current_time() + 0.2
        done = trio.Event()

        async def produce() -> None:
            for seq in range(count):
                await trio.sleep_until(t0 + seq * options.interval)
                event = {
                    "id": f"{prefix}-{seq}",
                    "account": STEADY_ACCOUNT,
                    "meter": METER,
                    "quantity": "1",
                    "time": time.time_ns() // 1_000_000,
                    "properties": {"size": "std", "app": "steady"},
                }
                await ws.send_message(_packb({"type": "batch", "seq": seq, "events": [event]}))

        async def acks() -> None:
            for seq in range(count):
                ack = _decode(await ws.get_message())
                if ack.get("type") != "ack" or ack.get("seq") != seq:
                    raise BenchError(f"steady producer: expected the ack of seq {seq}, got {ack!r}")
                row.acks.append(trio.current_time() - (t0 + seq * options.interval))
            done.set()

        async def healthz() -> None:
            async with httpx.AsyncClient(base_url=daemon.api_url, timeout=120) as probe:
                while not done.is_set():
                    started = time.perf_counter()
                    try:
                        response = await probe.get("/healthz")
                        ok = response.status_code == 200
                        failed = None if ok else f"HTTP {response.status_code}"
                    except httpx.HTTPError as error:  # counted with its time, then again
                        failed = f"{type(error).__name__}: {error}"
                    row.healthz.append(time.perf_counter() - started)
                    if failed is not None:
                        row.errors.append(f"/healthz: {failed}")
                    await trio.sleep(options.healthz_interval)

        async def invoices(path: str) -> None:
            await trio.sleep_until(t0)
            while not done.is_set():
                started = time.perf_counter()
                try:
                    async with client.stream("GET", path) as response:
                        size = 0
                        async for chunk in response.aiter_raw():
                            size += len(chunk)
                except httpx.HTTPError as error:
                    row.errors.append(f"GET {path}: {type(error).__name__}: {error}")
                    continue
                if response.status_code != 200 or size < 100:
                    raise BenchError(f"GET {path}: HTTP {response.status_code}, {size} bytes")
                row.invoices.append(time.perf_counter() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(healthz)
            if invoice is not None:
                nursery.start_soon(invoices, invoice)
            with trio.move_on_after(options.seconds + 120):
                await acks()
            row.missing = count - len(row.acks)
            done.set()
            nursery.cancel_scope.cancel()
    gc_after = gc_pauses(f"{daemon.api_url}/metrics")
    if gc_before is not None and gc_after is not None:
        row.gc = (gc_after[0] - gc_before[0], gc_after[1] - gc_before[1])
    figures = row.figures()
    log(
        f"{label}: ack p99 {figures['ack_p99_ms']:.1f} ms, max {figures['ack_max_ms']:.1f} ms;"
        f" /healthz max {figures['healthz_max_ms']:.1f} ms; {len(row.invoices)} invoices"
    )
    return row


async def run(options: RatingOptions) -> RatingReport:
    report = RatingReport(options)
    now = time.time_ns() // 1_000_000
    period = Period.containing(now)
    low, high = period.start_ms, min(period.end_ms, now - 1000)
    with tempfile.TemporaryDirectory(prefix="meterd-bench-rating-") as tmp:
        async with spawn(Path(tmp), options, report.stopped) as daemon:
            for lines in options.sizes:
                log(f"loading {lines:,} events with distinct sizes into rating-{lines}")
                await send_all(daemon, distinct_sizes(f"rating-{lines}", lines, low, high))
            await send_all(daemon, distinct_sizes(STEADY_ACCOUNT, 1, low, high))
            await settle(daemon.pid)
            headers = {"Authorization": f"Bearer {daemon.admin_token}"}
            async with httpx.AsyncClient(
                base_url=daemon.api_url, headers=headers, timeout=600
            ) as client:
                for lines in options.sizes:
                    report.rating.append(await rating_row(client, lines, period, options.repeats))
                await settle(daemon.pid)
                report.latency.append(
                    await latency_row(
                        daemon, client, "baseline (no invoice request)", options, None
                    )
                )
                await settle(daemon.pid)
                largest = max(options.sizes)
                report.latency.append(
                    await latency_row(
                        daemon,
                        client,
                        f"while rating the {largest:,}-line invoice",
                        options,
                        _invoice_path(f"rating-{largest}", period),
                    )
                )
    return report


def format_report(report: RatingReport) -> str:
    options = report.options
    out = [
        "Rating: GET of an invoice whose N lines each have their own dimension value"
        f" (median of {options.repeats}; the whole request)",
        f"{'lines':>8} {'median s':>9} {'best s':>8} {'µs/line':>8} {'answer MiB':>11}",
    ]
    for row in report.rating:
        out.append(
            f"{row.lines:>8,} {row.median:>9.3f} {min(row.seconds):>8.3f}"
            f" {row.us_per_line:>8.1f} {row.answer_bytes / 2**20:>11.1f}"
        )
    out += [
        "",
        f"Steady producer: one event every {options.interval * 1000:.0f} ms for"
        f" {options.seconds:.0f} s (ack latency from the scheduled send), /healthz every"
        f" {options.healthz_interval * 1000:.0f} ms",
        f"{'row':<36} {'acks':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'healthz p99':>11} {'healthz max':>11} {'GC ms/s':>7} {'invoices':>8}",
    ]
    for line in report.latency:
        f = line.figures()
        gc = "-" if line.gc is None else f"{line.gc[0] * 1000 / line.seconds:.1f}"
        invoices = (
            f"{len(line.invoices)} x {statistics.median(line.invoices):.2f} s"
            if line.invoices
            else "-"
        )
        out.append(
            f"{line.label:<36} {len(line.acks):>5} {f['ack_p50_ms']:>7.1f} {f['ack_p99_ms']:>7.1f}"
            f" {f['ack_max_ms']:>7.1f} {f['healthz_p99_ms']:>11.1f} {f['healthz_max_ms']:>11.1f}"
            f" {gc:>7} {invoices:>8}"
            + (f"  ({line.missing} not acked)" if line.missing else "")
            + (f"  ({len(line.errors)} failed requests: {line.errors[0]})" if line.errors else "")
        )
    stopped = report.stopped
    out.append(
        f"\nmeterd stopped with status {stopped.status}"
        + ("" if stopped.seconds is None else f" in {stopped.seconds:.1f} s")
    )
    return "\n".join(out)
