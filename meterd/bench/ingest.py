"""End-to-end ingest benchmark: producers over websockets against meterd and a baseline.

``meterd bench ingest`` (:mod:`meterd.cli.bench`) calls :func:`run`; docs/ingest-bench.md
has the results and how to read them.

Load
    ``events`` events of one meter (``dyno.seconds`` by default: a ``sum`` meter with
    dimensions ``size`` and ``app``), decimal-string quantities with 3 decimals, times in the
    last hour, each event's account drawn uniformly among ``accounts`` accounts (so a
    500-event batch over 10,000 accounts touches ~490 accounts). Batches of ``batch`` events
    are dealt round-robin to ``connections`` producer connections and **encoded before the
    clock starts** (msgpack frames, seq 0, 1, ... per connection); ids are unique per run
    (a random run prefix), so every event is new to the server.

Producers
    Raw trio-websocket clients in this process, one task pair per connection: a sender that
    keeps up to ``min(window, max_in_flight)`` batches unacknowledged (``window`` from the
    server's ``hello``), and a receiver that reads the acks (checking they come in ``seq``
    order and add up to the batch). Every connection is open and has its ``hello`` before
    the clock starts; the clock stops at the last ack. An ack means "durable" (protocol.md
    §2.3), so events/s here is *acked durable* events per second.

Rows
    ``warm-up`` (untimed, unless ``warmup=False``): one event per account, so every meter
    actor is awake, as in steady state. ``max``: the whole load as fast as the window allows;
    ack latency there is mostly queueing (batches in flight per connection x connections).
    ``re-send`` (``resend=True``): the ``max`` row's frames sent again as fast as the window
    allows on new connections, as producers do after a reconnect: every event is a duplicate
    (meterd records one audit row per duplicate: docs/accounts.md).
    ``half load``: open-loop producers at half the ``max`` row's rate (each batch has a
    scheduled send time; latency is measured from it, so a late send counts against the
    server: no coordinated omission), for ``half_load_seconds`` or ``half_load_min_batches``
    batches, whichever is longer. Before each timed row the bench waits (up to 60 s) for the
    server's CPU to drop under 15 % of a core, so one row's tail does not bleed into the next.

Failures
    A server ``error`` frame or a closed connection during a timed row ends that row, which is
    then reported with what was acknowledged before it and the error (``FAILED at N %``), and
    the half-load row is skipped (the rate was not a maximum). Failing to connect, a refused
    handshake, or a load that every event of is rejected stop the bench with the reason.

Figures
    Events acknowledged per second of the run (``timeline``; the notes show the rate in each
    quarter, so a drift or a stall is visible). Server CPU (user + system, all threads) from
    ``/proc/<pid>/stat`` over the row, RSS from ``/proc/<pid>/status`` (sampled every 100 ms:
    peak; and at the end), bytes written to storage from ``/proc/<pid>/io`` over the row (per
    event acked: the write amplification of the storage layout; in the max row meterd's
    checkpoints mostly come after the row, in the half-load row they are included), and for
    a spawned meterd the garbage collector's pauses over the half-load row (ms per second,
    and how many collections) from its ``/metrics`` (``meterd_gc_pause_seconds``). The
    server's pid is known when spawned, given (``pid``), or found
    from the listening socket (``/proc/net/tcp``, processes this user may inspect); otherwise
    those figures are left out. The load generator's own CPU is shown too: on a 2-core
    machine it shares the cores with the server. ``profile``: ``py-spy record --gil`` of
    meterd during the max row (see :func:`summarize_profile`).

Baseline
    ``python -m meterd.bench.ingest baseline-server``: a minimal trio-websocket server that
    speaks enough of the protocol for these producers: checks the bearer token, sends
    ``hello`` (same limits as meterd's defaults), and for each batch frame decodes it and
    ``INSERT OR IGNORE``s its events into one SQLite table keyed ``(account, id)`` (WAL,
    ``synchronous=FULL``), one transaction per batch, in a worker thread (one at a time),
    then acks. No validation, aggregation, journal or checkpoints: a floor for "decode,
    make durable, ack" with the same libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgpack  # type: ignore[import-untyped]
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from meterd.bench._proc import (
    ProcessFigures,
    TreeMeter,
    command_line,
    cpu_seconds,
    process_name,
    tree,
    tree_cpu_seconds,
)

__all__ = [
    "BenchError",
    "BenchOptions",
    "Load",
    "Report",
    "RunResult",
    "TargetReport",
    "build_load",
    "format_report",
    "run",
]

INGEST_PATH: Final = "/v1/ingest"
DEFAULT_METER: Final = "dyno.seconds"
HELLO_LIMITS: Final = {"max_frame_bytes": 1_048_576, "max_batch": 1000, "window": 64}
START_TIMEOUT: Final = 30.0  # seconds for a spawned server to listen
CONNECT_TIMEOUT: Final = 60.0  # seconds for every producer to connect and get its hello
STOP_TIMEOUT: Final = 15.0  # seconds for a spawned server to exit after SIGTERM
HALF_LOAD_GOAL_MS: Final = 50.0  # the issue's goal: p99 ack latency at half load
CPU_GOAL_US: Final = 25.0  # the issue's goal: CPU µs per event, summed over the processes
RSS_SAMPLE_SECONDS: Final = 0.1
SIZES: Final = ("std-1x", "std-2x", "perf-m", "perf-l")
APPS: Final = tuple(f"app-{n}" for n in range(8))

_packb = msgpack.Packer(use_bin_type=True).pack


class BenchError(Exception):
    """The benchmark could not run (a server refused, failed or misbehaved)."""


def log(message: str) -> None:
    print(f"[bench ingest] {message}", file=sys.stderr, flush=True)


# ---- options ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    events: int = 200_000
    accounts: int = 10_000
    connections: int = 4
    batch: int = 500
    url: str | None = None  # a running daemon's ingest endpoint
    token: str | None = None  # its producer token
    pid: int | None = None  # its process (found from the port when None)
    spawn: bool = False  # start `python -m meterd run` on a temporary config instead
    baseline: bool = True
    half_load: bool = True
    half_load_seconds: float = 10.0
    half_load_rate: float | None = None  # events/s offered in the half-load row (None: max / 2)
    half_load_min_batches: int = 100  # the half-load row runs longer if needed for these
    warmup: bool = True
    meter: str = DEFAULT_METER
    seed: int = 1
    cafile: str | None = None  # for wss:// URLs with a private CA
    max_in_flight: int | None = None  # batches unacknowledged per connection (None: window)
    profile: Path | None = None  # py-spy raw output of meterd during the max run
    py_spy: str = "py-spy"  # the py-spy executable
    resend: bool = False  # also re-send the max row's load (every event a duplicate)
    # --spawn: settings for the spawned daemon's config, as (section, key, TOML value)
    settings: tuple[tuple[str, str, str], ...] = ()
    keep_log: Path | None = None  # --spawn: copy the daemon's log here when it stops
    # --spawn: run meterd once per value, with [partitions] owners = N (the scaling curve)
    owners: tuple[int, ...] = ()

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        """Small sizes (well under 20 s for both servers)."""
        quick = cls(events=20_000, accounts=1_000, half_load_seconds=3.0, half_load_min_batches=0)
        return replace(quick, **overrides)

    def check(self) -> None:
        if self.spawn == (self.url is not None):
            raise BenchError("give either --spawn or --url (with --token)")
        if self.url is not None and not self.token:
            raise BenchError("--url needs the producer's --token")
        if min(self.events, self.accounts, self.connections, self.batch) < 1:
            raise BenchError("--events, --accounts, --connections and --batch must be >= 1")
        if self.half_load_seconds <= 0:
            raise BenchError("--half-load-seconds must be > 0")
        if self.half_load_rate is not None and self.half_load_rate <= 0:
            raise BenchError("--half-load-rate must be > 0 events/s")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise BenchError("--max-in-flight must be >= 1")
        if (self.settings or self.keep_log) and not self.spawn:
            raise BenchError("--set and --keep-log are for a daemon the bench starts (--spawn)")
        if self.owners and not self.spawn:
            raise BenchError("--owners is for daemons the bench starts (--spawn)")
        if any(owners < 0 for owners in self.owners):
            raise BenchError("--owners: give owner counts >= 0, e.g. --owners 0,1,2,3")
        if self.owners and any(s[:2] == ("partitions", "owners") for s in self.settings):
            raise BenchError("give partitions.owners with --owners or with --set, not both")
        for section, key, _ in self.settings:
            if section not in SETTING_SECTIONS or not key:
                raise BenchError(
                    f"--set {section}.{key}: give SECTION.KEY=VALUE with SECTION one of"
                    f" {', '.join(SETTING_SECTIONS)} (e.g. ingest.max_in_flight_events=4000)"
                )


SETTING_SECTIONS: Final = ("ingest", "api", "store", "accounts", "partitions")


def parse_owners(text: str | None) -> tuple[int, ...]:
    """``--owners 0,1,2,3`` as owner counts, in the order given."""
    if text is None:
        return ()
    try:
        owners = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(
            f"--owners {text!r}: give owner counts separated by commas, e.g. 0,1,2,3"
        ) from None
    if not owners:
        raise BenchError("--owners: give at least one owner count, e.g. 0,1,2,3")
    return owners


def parse_setting(text: str) -> tuple[str, str, str]:
    """``SECTION.KEY=VALUE`` (VALUE in TOML: ``4000``, ``"30s"``) as a ``--set`` triple."""
    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not value.strip():
        raise BenchError(
            f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. store.commit_interval='\"5ms\"'"
        )
    return section, key.strip(), value.strip()


# ---- the load ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """Encoded batch frames, per connection, in seq order."""

    frames: list[list[bytes]]
    sizes: list[list[int]]  # events per frame
    events: int
    batch_interval: float = 0.0  # seconds between two batches overall (open loop); 0 = closed

    @property
    def batches(self) -> int:
        return sum(len(frames) for frames in self.frames)

    @property
    def largest_frame(self) -> int:
        return max((len(frame) for frames in self.frames for frame in frames), default=0)


def account_name(index: int) -> str:
    return f"acct-{index:05d}"


def build_load(
    events: int,
    accounts: int,
    connections: int,
    batch: int,
    *,
    meter: str = DEFAULT_METER,
    seed: int = 1,
    prefix: str = "",
    every_account_once: bool = False,
    now_ms: int | None = None,
) -> Load:
    """``events`` events in frames of ``batch``, dealt round-robin to ``connections``.

    ``every_account_once``: one event per account in account order (the warm-up), ``events``
    is then ignored.
    """
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    prefix = prefix or secrets.token_hex(4)
    total = accounts if every_account_once else events
    frames: list[list[bytes]] = [[] for _ in range(connections)]
    sizes: list[list[int]] = [[] for _ in range(connections)]
    names = [account_name(index) for index in range(accounts)]
    for number, start in enumerate(range(0, total, batch)):
        stop = min(start + batch, total)
        batch_events = []
        for n in range(start, stop):
            quantity = rng.randrange(1, 3_600_000)
            batch_events.append(
                {
                    "id": f"{prefix}-{n}",
                    "account": names[n if every_account_once else rng.randrange(accounts)],
                    "meter": meter,
                    "quantity": f"{quantity // 1000}.{quantity % 1000:03d}",
                    "time": now - rng.randrange(3_600_000),
                    "properties": {"size": rng.choice(SIZES), "app": rng.choice(APPS)},
                }
            )
        lane = number % connections
        seq = len(frames[lane])
        frames[lane].append(_packb({"type": "batch", "seq": seq, "events": batch_events}))
        sizes[lane].append(stop - start)
    return Load(frames, sizes, total)


# ---- producers --------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    events: int = 0  # in acknowledged batches
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per batch
    first_rejection: str | None = None
    last_ack: float = 0.0  # trio clock
    acks: list[tuple[float, int]] = field(default_factory=list)  # (trio clock, events)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    token: str
    pid: int | None
    ssl_context: ssl.SSLContext | None = None
    metrics_url: str | None = None  # a spawned meterd's /metrics (its collector's pauses)


class _Run:
    """What the producers of one run share: the start signal, the clock, the first failure."""

    def __init__(
        self, target: Target, producers: int, events: int, max_in_flight: int | None
    ) -> None:
        self.target = target
        self.unacked = events
        self.done = trio.Event()  # every event acknowledged
        self.max_in_flight = max_in_flight
        self.waiting = producers
        self.all_ready = trio.Event()
        self.go = trio.Event()
        self.t0 = 0.0
        self.window: int | None = None  # the server's, from hello
        self.in_flight: int | None = None  # what the producers keep unacknowledged
        self.error: str | None = None
        self.failed_at: float | None = None
        self.scope = trio.CancelScope()
        if producers == 0:
            self.all_ready.set()
        if events <= 0:
            self.done.set()

    def ready(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_ready.set()

    def acked(self, events: int) -> None:
        self.unacked -= events
        if self.unacked <= 0:
            self.done.set()

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self.failed_at = trio.current_time()
        self.scope.cancel()


async def _producer(
    run: _Run,
    frames: Sequence[bytes],
    sizes: Sequence[int],
    schedule: Sequence[float] | None,
    tally: Tally,
) -> None:
    target = run.target
    headers = [(b"Authorization", f"Bearer {target.token}".encode())]
    try:
        async with open_websocket_url(
            target.url, target.ssl_context, extra_headers=headers, connect_timeout=10
        ) as ws:
            run.window = _check_hello(_decode(await ws.get_message()), frames, sizes)
            run.in_flight = min(run.window, run.max_in_flight or run.window)
            window = trio.Semaphore(run.in_flight)
            run.ready()
            await run.go.wait()
            await _exchange(ws, frames, sizes, schedule, window, tally, run)
    except BenchError as error:
        run.fail(f"{target.name}: {error}")
    except ConnectionClosed as closed:
        run.fail(f"{target.name}: the connection closed early ({closed.reason})")
    except ConnectionRejected as rejected:
        body = rejected.body.decode(errors="replace")[:300] if rejected.body else ""
        run.fail(
            f"{target.name}: {target.url} refused the websocket handshake with HTTP"
            f" {rejected.status_code} {body}".rstrip()
            + (" (wrong --token?)" if rejected.status_code == 401 else "")
        )
    except (OSError, HandshakeError) as error:
        cause = error.__cause__ or error.__context__ or error
        run.fail(f"{target.name}: cannot connect to {target.url}: {cause}")


def _check_hello(hello: dict[str, Any], frames: Sequence[bytes], sizes: Sequence[int]) -> int:
    """The server's window, once its hello says the load fits its limits."""
    if hello.get("type") != "hello":
        raise BenchError(f"expected a hello frame, got {hello!r}")
    largest = max((len(frame) for frame in frames), default=0)
    if largest > int(hello.get("max_frame_bytes", math.inf)):
        raise BenchError(
            f"a batch frame is {largest} bytes, over the server's max_frame_bytes"
            f" ({hello['max_frame_bytes']}); use a smaller --batch"
        )
    if max(sizes, default=0) > int(hello.get("max_batch", math.inf)):
        raise BenchError(f"--batch is over the server's max_batch ({hello['max_batch']})")
    return int(hello.get("window", 1))


async def _exchange(
    ws: WebSocketConnection,
    frames: Sequence[bytes],
    sizes: Sequence[int],
    schedule: Sequence[float] | None,
    window: trio.Semaphore,
    tally: Tally,
    run: _Run,
) -> None:
    t0 = run.t0
    sent_at = [0.0] * len(frames)

    async def send() -> None:
        for index, frame in enumerate(frames):
            if schedule is not None:
                due = t0 + schedule[index]
                await trio.sleep_until(due)
                await window.acquire()
                sent_at[index] = due  # from the scheduled time: a late send is the server's
            else:
                await window.acquire()
                sent_at[index] = trio.current_time()
            await ws.send_message(frame)

    async def receive() -> None:
        latencies = tally.latencies
        for index, size in enumerate(sizes):
            frame = _decode(await ws.get_message())
            now = trio.current_time()
            kind = frame.get("type")
            if kind == "error":
                raise BenchError(
                    f"error {frame.get('code')} after {index} acks on this connection:"
                    f" {frame.get('message')}"
                )
            if kind != "ack" or frame.get("seq") != index:
                raise BenchError(f"expected the ack of seq {index}, got {frame!r}")
            window.release()
            latencies.append(now - sent_at[index])
            rejected = frame.get("rejected") or []
            accepted, duplicates = int(frame["accepted"]), int(frame["duplicates"])
            if accepted + duplicates + len(rejected) != size:
                raise BenchError(f"the ack of seq {index} does not add up: {frame!r}")
            tally.events += size
            tally.accepted += accepted
            tally.duplicates += duplicates
            tally.rejected += len(rejected)
            if rejected and tally.first_rejection is None:
                tally.first_rejection = f"{rejected[0].get('code')}: {rejected[0].get('message')}"
            tally.last_ack = now
            tally.acks.append((now, size))
            run.acked(size)

    async def guarded(part: Callable[[], Awaitable[None]]) -> None:
        try:
            await part()
        except BenchError as error:
            run.fail(f"{run.target.name}: {error}")
        except ConnectionClosed as closed:
            run.fail(f"{run.target.name}: the connection closed early ({closed.reason})")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, send)
        nursery.start_soon(guarded, receive)


def _decode(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, str):
        raise BenchError(f"the server sent a text frame: {message[:200]!r}")
    try:
        frame = msgpack.unpackb(message, raw=False)
    except ValueError as error:
        raise BenchError(f"the server sent a frame that is not msgpack: {error}") from None
    if not isinstance(frame, dict):
        raise BenchError(f"the server sent a frame that is not a map: {frame!r}")
    return frame


# ---- the server's CPU and memory --------------------------------------------------------------


def scrape(metrics_url: str) -> str | None:
    """A meterd's ``/metrics`` text; None if it cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def gc_pauses(
    metrics_url: str | None = None, *, text: str | None = None
) -> tuple[float, int] | None:
    """The collector's pauses so far from a meterd's ``/metrics`` (or its ``text``):
    (seconds, collections), all generations (``meterd_gc_pause_seconds``), summed over the
    processes (a gateway's series per process, labelled ``owner``, are not added again);
    None if it cannot be read."""
    if text is None:
        text = scrape(metrics_url) if metrics_url else None
    if text is None:
        return None
    seconds, count = 0.0, 0
    for line in text.splitlines():
        if 'owner="' in line:
            continue
        if line.startswith("meterd_gc_pause_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
        elif line.startswith("meterd_gc_pause_seconds_count{"):
            count += int(float(line.rsplit(" ", 1)[1]))
    return seconds, count


BREAKDOWN: Final = (
    ("ack in the server", "meterd_ack_latency_seconds"),
    ("slice round trip", "meterd_gateway_slice_seconds"),
    ("slice in the owner", "meterd_owner_slice_seconds"),
    ("store commit", "meterd_store_commit_seconds"),
    ("GC pause", "meterd_gc_pause_seconds"),
)
"""Where an ack's time goes, from the server's histograms (docs/partitions.md "Ack
latency"): a batch from its read to its ack sent (the producers' latency adds the network,
the load generator and the wait for the server to read: pacing's backpressure), the
slices' round trip from the gateway (its link's queue, the socket, the owner), their time
in the owner (its budget, the commit round, the actors), each file's commit (fsync
included), and the collector's pauses of every process."""


def histogram(text: str, name: str, process: str | None = None) -> dict[float, float]:
    """The cumulative buckets (upper bound -> count) of histogram ``name`` in a
    ``/metrics`` text, summed over its label sets: over every process, or only
    ``process``'s (a gateway's ``owner`` label: ``gateway``, ``owner-K``)."""
    buckets: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, value = line[len(prefix) :].rsplit("} ", 1)
        pairs = dict(_label_pairs(labels))
        if pairs.get("owner") != process:
            continue
        bound = float(pairs["le"])
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def _label_pairs(labels: str) -> Iterator[tuple[str, str]]:
    for pair in labels.split('",'):
        key, _, value = pair.partition("=")
        yield key.strip(), value.strip().strip('"')


def bucket_quantile(
    start: Mapping[float, float], end: Mapping[float, float], q: float
) -> float | None:
    """The ``q`` quantile (0-1) of the observations between two readings of a histogram's
    cumulative buckets, interpolated linearly within its bucket as Prometheus's
    ``histogram_quantile`` does (the bucket's upper bound if it is the last finite one);
    None without observations."""
    bounds = sorted(end)
    counts = [end[b] - start.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _gc_by_process(start: str, end: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(process, generation) -> (seconds, collections) of the collector's pauses between two
    scrapes of a gateway's ``/metrics`` (its per-process series, labelled ``owner``)."""
    found: dict[tuple[str, str], list[float]] = {}
    for text, sign in ((end, 1.0), (start, -1.0)):
        for line in text.splitlines():
            if not line.startswith("meterd_gc_pause_seconds_") or 'owner="' not in line:
                continue
            name, labels = line.split("{", 1)
            if name not in ("meterd_gc_pause_seconds_sum", "meterd_gc_pause_seconds_count"):
                continue
            pairs = dict(_label_pairs(labels.rsplit("} ", 1)[0]))
            key = (pairs["owner"], pairs.get("generation", "?"))
            slot = found.setdefault(key, [0.0, 0.0])
            slot[0 if name.endswith("_sum") else 1] += sign * float(line.rsplit(" ", 1)[1])
    return {key: (value[0], value[1]) for key, value in sorted(found.items())}


def breakdown(start: str, end: str) -> dict[str, float]:
    """The p50 and p99 (ms) of each of :data:`BREAKDOWN`'s histograms between two
    scrapes, and the collector's pauses per process (ms, summed): figure -> value."""
    figures: dict[str, float] = {}
    for label, name in BREAKDOWN:
        before, after = histogram(start, name), histogram(end, name)
        for q in (0.5, 0.99):
            value = bucket_quantile(before, after, q)
            if value is not None:
                figures[f"{label} p{round(q * 100)}, ms"] = value * 1000
    for (process, generation), (seconds, count) in _gc_by_process(start, end).items():
        name = f"GC pauses, ms: {process}"
        figures[name] = figures.get(name, 0.0) + seconds * 1000
        figures[f"GC gen {generation}, ms: {process}"] = seconds * 1000
        figures[f"GC gen {generation}, collections: {process}"] = count
    return figures


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (among those this user may inspect), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) <= 9 or parts[3] != "0A":  # 0A: LISTEN
                    continue
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
    return None


@dataclass(frozen=True, slots=True)
class Settled:
    """What :func:`settle` waited: ``seconds`` in all, ``busy_seconds`` of them before the
    quiet half second that ended the wait, and the process tree's CPU seconds from ``since``
    (or the wait's start) to its end (``None``: the process could not be read)."""

    seconds: float
    cpu_seconds: float | None
    busy_seconds: float = 0.0


async def settle(
    pid: int | None, *, since: float | None = None, limit: float = 60.0, busy: float = 0.15
) -> Settled:
    """Wait until process ``pid`` and its descendants (a gateway's owners) use under ``busy``
    of a core over half a second (the tail of the previous run done), at most ``limit``
    seconds. ``since``: the tree's CPU seconds (:func:`tree_cpu_seconds`) when the previous
    run ended, so that the CPU it spent after its last ack counts from there."""
    if pid is None:
        return Settled(0.0, None)
    start = busy_until = trio.current_time()
    first = last = tree_cpu_seconds(pid)
    while last is not None and trio.current_time() - start < limit:
        sampled = trio.current_time()
        await trio.sleep(0.5)
        now = tree_cpu_seconds(pid)
        if now is None:
            break
        quiet = now - last < busy * 0.5
        last = now  # the quiet half second's CPU counts too: the work may end in it
        if quiet:
            break
        busy_until = sampled + 0.5
    origin = first if since is None else since
    used = None if last is None or origin is None else max(0.0, last - origin)
    return Settled(trio.current_time() - start, used, busy_until - start)


class _Watch:
    """CPU and storage writes over a run, and RSS sampled during it, of the server's process
    tree (the process and its descendants: a gateway and its owners), in total and per
    process (:class:`~meterd.bench._proc.TreeMeter`)."""

    def __init__(self, pid: int | None, metrics_url: str | None = None) -> None:
        self.pid = pid
        self.metrics_url = metrics_url
        self.scraped = scrape(metrics_url) if metrics_url else None
        self.gc_start = gc_pauses(text=self.scraped) if self.scraped is not None else None
        self.breakdown: dict[str, float] = {}  # set by stop(): breakdown()
        self.gc: tuple[float, int] | None = None  # (seconds, collections) during the run
        self.meter = TreeMeter(pid) if pid and cpu_seconds(pid) is not None else None
        self.written: int | None = None  # bytes written during the run, set by stop()
        self.own_cpu_start = time.process_time()
        self.rss_peak: int | None = None  # the tree's, summed at one sample
        self.processes: list[ProcessFigures] = []  # set by stop()

    async def sample_rss(self) -> None:
        """Re-read the tree (new and restarted processes) and its RSS, every 100 ms."""
        if self.meter is None:
            return
        while True:
            self.meter.sample()
            await trio.sleep(RSS_SAMPLE_SECONDS)

    def stop(self) -> tuple[float | None, int | None, float]:
        """(server CPU seconds, server RSS now, load generator CPU seconds), all processes."""
        own = time.process_time() - self.own_cpu_start
        if self.meter is None:
            return None, None, own
        self.meter.sample()
        scraped = scrape(self.metrics_url) if self.metrics_url else None
        gc_end = gc_pauses(text=scraped) if scraped is not None else None
        if scraped is not None and self.scraped is not None:
            self.breakdown = breakdown(self.scraped, scraped)
        if gc_end is not None and self.gc_start is not None:
            self.gc = (gc_end[0] - self.gc_start[0], gc_end[1] - self.gc_start[1])
        self.processes = self.meter.processes()
        writes = [p.write_bytes for p in self.processes if p.write_bytes is not None]
        self.written = sum(writes) if writes else None
        self.rss_peak = self.meter.rss_total_peak
        ends = [p.rss_end for p in self.processes if p.rss_end is not None]
        cpu = sum(p.cpu_seconds for p in self.processes)
        return cpu, (sum(ends) if ends else None), own


# ---- one run ----------------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    label: str
    events: int  # acknowledged (all of the load unless ``error``)
    sent_events: int  # in the load
    accepted: int
    duplicates: int
    rejected: int
    seconds: float  # first send to last ack (to the failure, if any)
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    batches: int  # acknowledged
    window: int | None = None  # the server's (hello)
    in_flight: int | None = None  # batches the producers kept unacknowledged, per connection
    offered_rate: float | None = None  # events/s asked of the producers (open loop)
    server_cpu_seconds: float | None = None
    server_rss_peak: int | None = None
    server_rss_end: int | None = None
    server_write_bytes: int | None = None  # written to storage during the run
    server_gc_seconds: float | None = None  # the collector's pauses during the run (meterd)
    server_gc_collections: int | None = None
    # where the time goes (ms, from the server's histograms: BREAKDOWN), and each process's
    # collector pauses; empty for a server without them
    breakdown: dict[str, float] = field(default_factory=dict)
    generator_cpu_seconds: float = 0.0
    # the server's processes (the total above is their sum), named from their command lines
    server_processes: list[ProcessFigures] = field(default_factory=list)
    first_rejection: str | None = None
    error: str | None = None  # what ended the run early
    load_average: float | None = None  # the machine's 1-minute load average at the start
    timeline: list[int] = field(default_factory=list)  # events acked in each second of the run
    # the tree's CPU seconds when the last ack came (where the work after it counts from),
    # and when that was (Trio's clock)
    server_tree_cpu_end: float | None = None
    ended_at: float | None = None
    # after the last ack, until the server went idle (settle): seconds, and its CPU seconds
    after_ack_seconds: float | None = None
    after_ack_cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cpu_share(self) -> float | None:
        """Server CPU as a fraction of one core over the run."""
        if self.server_cpu_seconds is None or self.seconds <= 0:
            return None
        return self.server_cpu_seconds / self.seconds

    @property
    def server_cpu_per_event_us(self) -> float | None:
        if self.server_cpu_seconds is None or not self.events:
            return None
        return self.server_cpu_seconds / self.events * 1e6

    @property
    def total_cpu_per_event_us(self) -> float | None:
        """CPU µs per event with the work the server did after the last ack, until it went
        idle (meterd's actors apply acknowledged events, its writers index them): what the
        row's events cost, where :attr:`server_cpu_per_event_us` stops at the last ack."""
        if self.server_cpu_seconds is None or self.after_ack_cpu_seconds is None:
            return None
        if not self.events:
            return None
        return (self.server_cpu_seconds + self.after_ack_cpu_seconds) / self.events * 1e6

    @property
    def server_write_per_event_kib(self) -> float | None:
        """KiB the server wrote to storage during the run per event acked in it."""
        if self.server_write_bytes is None or not self.events:
            return None
        return self.server_write_bytes / self.events / 1024

    @property
    def server_gc_ms_per_second(self) -> float | None:
        """Milliseconds of collector pauses per second of the run."""
        if self.server_gc_seconds is None or self.seconds <= 0:
            return None
        return self.server_gc_seconds * 1000 / self.seconds

    def quarter_rates(self) -> list[float]:
        """Events/s acked in each quarter of the run (a drift shows as a trend)."""
        whole = self.timeline[: int(self.seconds)]
        if len(whole) < 4:
            return []
        size = len(whole) / 4
        quarters = [whole[round(i * size) : round((i + 1) * size)] for i in range(4)]
        return [sum(part) / len(part) for part in quarters if part]

    @property
    def generator_cpu_share(self) -> float | None:
        return self.generator_cpu_seconds / self.seconds if self.seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate"] = self.rate
        data["server_cpu_share"] = self.server_cpu_share
        data["server_cpu_per_event_us"] = self.server_cpu_per_event_us
        data["total_cpu_per_event_us"] = self.total_cpu_per_event_us
        data["server_write_per_event_kib"] = self.server_write_per_event_kib
        data["generator_cpu_share"] = self.generator_cpu_share
        for process, entry in zip(self.server_processes, data["server_processes"], strict=True):
            entry["cpu_per_event_us"] = self.per_event_us(process)
            entry["cpu_share"] = process.cpu_seconds / self.seconds if self.seconds > 0 else None
            entry["write_per_event_kib"] = (
                None
                if process.write_bytes is None or not self.events
                else process.write_bytes / self.events / 1024
            )
        return data

    def per_event_us(self, process: ProcessFigures) -> float | None:
        """CPU µs of one of the server's processes per event acked in the run."""
        return process.cpu_seconds / self.events * 1e6 if self.events else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (any order); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def drive(
    target: Target, load: Load, label: str, *, max_in_flight: int | None = None
) -> RunResult:
    """Send ``load`` over its connections; the clock runs from the first send to the last ack.

    A failure after the start (an ``error`` frame, a closed connection) ends the run; the
    result then holds what was acknowledged before it, and ``error``. A failure before the
    start (cannot connect, refused) raises :class:`BenchError`.
    """
    lanes = len(load.frames)
    tallies = [Tally() for _ in range(lanes)]
    run = _Run(target, sum(1 for frames in load.frames if frames), load.events, max_in_flight)
    schedule: list[list[float]] | None = None
    if load.batch_interval > 0:
        schedule = [
            [(index * lanes + lane) * load.batch_interval for index in range(len(frames))]
            for lane, frames in enumerate(load.frames)
        ]
    watch = _Watch(None)
    measured: tuple[float | None, int | None, float] | None = None
    tree_cpu_end: float | None = None
    ended_at: float | None = None
    load_average: float | None = None
    with run.scope:
        async with trio.open_nursery() as nursery:
            for lane, frames in enumerate(load.frames):
                if frames:
                    nursery.start_soon(
                        _producer,
                        run,
                        frames,
                        load.sizes[lane],
                        None if schedule is None else schedule[lane],
                        tallies[lane],
                    )
            with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
                await run.all_ready.wait()
            if connecting.cancelled_caught:
                raise BenchError(
                    f"{target.name}: the producers were not all connected and greeted"
                    f" within {CONNECT_TIMEOUT:.0f} s"
                )
            load_average = os.getloadavg()[0]
            watch = _Watch(target.pid, target.metrics_url)
            sampler = trio.CancelScope()
            nursery.start_soon(_within, sampler, watch.sample_rss)
            run.t0 = trio.current_time()
            run.go.set()
            await run.done.wait()  # a failure cancels this wait
            measured = watch.stop()  # before the producers close their connections
            tree_cpu_end = None if target.pid is None else tree_cpu_seconds(target.pid)
            ended_at = trio.current_time()
            sampler.cancel()
    if not run.go.is_set():
        raise BenchError(run.error or f"{target.name}: the producers could not start")
    if measured is None:  # the run failed
        measured = watch.stop()
    server_cpu, rss_end, own_cpu = measured
    last_ack = max((tally.last_ack for tally in tallies), default=run.t0)
    end = run.failed_at if run.failed_at is not None else last_ack
    latencies = [latency for tally in tallies for latency in tally.latencies]
    return RunResult(
        label=label,
        events=sum(tally.events for tally in tallies),
        sent_events=load.events,
        accepted=sum(tally.accepted for tally in tallies),
        duplicates=sum(tally.duplicates for tally in tallies),
        rejected=sum(tally.rejected for tally in tallies),
        seconds=max(end - run.t0, 0.0),
        latency_p50_ms=percentile(latencies, 50) * 1000,
        latency_p99_ms=percentile(latencies, 99) * 1000,
        latency_max_ms=max(latencies, default=0.0) * 1000,
        batches=len(latencies),
        window=run.window,
        in_flight=run.in_flight,
        offered_rate=(
            load.events / (load.batches * load.batch_interval) if load.batch_interval else None
        ),
        server_cpu_seconds=server_cpu,
        server_rss_peak=watch.rss_peak,
        server_rss_end=rss_end,
        server_write_bytes=watch.written,
        server_gc_seconds=None if watch.gc is None else watch.gc[0],
        server_gc_collections=None if watch.gc is None else watch.gc[1],
        breakdown=watch.breakdown,
        generator_cpu_seconds=own_cpu,
        server_processes=watch.processes,
        first_rejection=next((t.first_rejection for t in tallies if t.first_rejection), None),
        error=run.error,
        load_average=load_average,
        timeline=_timeline(tallies, run.t0),
        server_tree_cpu_end=tree_cpu_end,
        ended_at=ended_at,
    )


def _timeline(tallies: Sequence[Tally], t0: float) -> list[int]:
    """Events acknowledged in each whole second since ``t0``."""
    seconds: list[int] = []
    for tally in tallies:
        for when, events in tally.acks:
            second = max(0, int(when - t0))
            if second >= len(seconds):
                seconds.extend([0] * (second + 1 - len(seconds)))
            seconds[second] += events
    return seconds


async def _within(scope: trio.CancelScope, function: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await function()


# ---- servers ----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (the OS picks them; they are released before use)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def meterd_config(
    port: int,
    api_port: int,
    store: Path,
    token: str,
    meter: str,
    settings: Sequence[tuple[str, str, str]] = (),
) -> str:
    """The spawned daemon's config; ``settings`` (section, key, TOML value) are added to
    the ``ingest``, ``api``, ``store``, ``accounts`` or ``partitions`` table (``--set``,
    ``--owners``)."""
    extra: dict[str, str] = {}
    for section, key, value in settings:
        extra[section] = extra.get(section, "") + f"{key} = {value}\n"
    return f"""# written by meterd bench ingest
[ingest]
listen = "127.0.0.1:{port}"
{extra.get("ingest", "")}
[api]
listen = "127.0.0.1:{api_port}"
admin_token = "{secrets.token_urlsafe(16)}"
{extra.get("api", "")}
[store]
path = {json.dumps(str(store))}
{extra.get("store", "")}
[accounts]
{extra.get("accounts", "")}
[partitions]
{extra.get("partitions", "")}

[[producers]]
name = "bench"
token = "{token}"

[[meters]]
name = "{meter}"
aggregation = "sum"
dimensions = ["size", "app"]
"""


async def _wait_listening(port: int, process: trio.Process, name: str, log_path: Path) -> None:
    with trio.move_on_after(START_TIMEOUT):
        while True:
            if process.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {process.returncode} while starting:\n"
                    + _tail(log_path)
                )
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(slots=True)
class Stopped:
    status: int | None = None  # exit status after SIGTERM (None: killed, or not ours)
    seconds: float | None = None


async def _stop(process: trio.Process, stopped: Stopped) -> None:
    if process.poll() is not None:
        stopped.status = process.returncode
        return
    started = trio.current_time()
    process.send_signal(signal.SIGTERM)
    # Shielded (this runs on the way out of a cancelled bench too), with its own deadline.
    with trio.CancelScope(deadline=started + STOP_TIMEOUT, shield=True) as scope:
        stopped.status = await process.wait()
        stopped.seconds = trio.current_time() - started
    if scope.cancelled_caught:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


@contextlib.asynccontextmanager
async def spawn_meterd(
    workdir: Path, options: BenchOptions, stopped: Stopped, name: str = "meterd"
) -> AsyncIterator[Target]:
    """``python -m meterd run`` on a temporary config (free loopback ports, a tmp store)."""
    os.makedirs(workdir, exist_ok=True)
    port, api_port = free_ports(2)
    token = secrets.token_urlsafe(16)
    config = workdir / "meterd.toml"
    config.write_text(
        meterd_config(
            port, api_port, workdir / "meterd.sqlite3", token, options.meter, options.settings
        )
    )
    log_path = workdir / "meterd.log"
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            # Not the caller's directory: "-m" puts it first on sys.path, so a checkout of
            # meterd there would be benchmarked instead of this interpreter's meterd.
            cwd=workdir,
        )
    try:
        await _wait_listening(port, process, "meterd", log_path)
        yield Target(
            name,
            f"ws://127.0.0.1:{port}{INGEST_PATH}",
            token,
            process.pid,
            metrics_url=f"http://127.0.0.1:{api_port}/metrics",
        )
    except BaseException:
        log(f"meterd log (last lines):\n{_tail(log_path)}")
        raise
    finally:
        await _stop(process, stopped)
        if options.keep_log is not None:
            shutil.copyfile(log_path, options.keep_log)


@contextlib.asynccontextmanager
async def spawn_baseline(workdir: Path, stopped: Stopped) -> AsyncIterator[Target]:
    """The baseline server (:func:`baseline_main`) in a subprocess."""
    (port,) = free_ports(1)
    token = secrets.token_urlsafe(16)
    log_path = workdir / "baseline.log"
    command = [
        sys.executable,
        "-m",
        "meterd.bench.ingest",
        "baseline-server",
        "--port",
        str(port),
        "--db",
        str(workdir / "baseline.sqlite3"),
    ]
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env={**os.environ, "METERD_BENCH_TOKEN": token},
            cwd=workdir,  # as for meterd: this interpreter's code, whatever the caller's directory
        )
    try:
        await _wait_listening(port, process, "baseline", log_path)
        yield Target("baseline", f"ws://127.0.0.1:{port}{INGEST_PATH}", token, process.pid)
    except BaseException:
        log(f"baseline log (last lines):\n{_tail(log_path)}")
        raise
    finally:
        await _stop(process, stopped)


# ---- the benchmark ----------------------------------------------------------------------------


@dataclass(slots=True)
class TargetReport:
    name: str
    url: str
    pid: int | None
    warmup: RunResult | None = None
    max: RunResult | None = None
    half: RunResult | None = None
    resend: RunResult | None = None
    half_skipped: str | None = None  # why there is no half-load row
    stop_status: int | None = None
    stop_seconds: float | None = None
    owners: int | None = None  # --owners: this daemon's [partitions] owners

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owners": self.owners,
            "url": self.url,
            "pid": self.pid,
            "stop_status": self.stop_status,
            "stop_seconds": self.stop_seconds,
            "warmup": None if self.warmup is None else self.warmup.to_json(),
            "max": None if self.max is None else self.max.to_json(),
            "half_load": None if self.half is None else self.half.to_json(),
            "resend": None if self.resend is None else self.resend.to_json(),
            "half_load_skipped": self.half_skipped,
        }


@dataclass(slots=True)
class Report:
    options: BenchOptions
    cpus: int
    targets: list[TargetReport]

    def to_json(self) -> dict[str, Any]:
        options = {
            key: str(value) if isinstance(value, Path) else value  # --profile, --keep-log
            for key, value in asdict(self.options).items()
        }
        options.pop("token", None)
        return {
            "options": options,
            "cpus": self.cpus,
            "half_load_goal_p99_ms": HALF_LOAD_GOAL_MS,
            "targets": [target.to_json() for target in self.targets],
        }


async def bench_target(target: Target, options: BenchOptions, report: TargetReport) -> None:
    """Warm-up, max and half-load rows against one server."""
    load_args = (options.accounts, options.connections, options.batch)
    in_flight = options.max_in_flight
    if options.warmup:
        warm = build_load(0, *load_args, meter=options.meter, every_account_once=True)
        log(f"{target.name}: warm-up, one event for each of {options.accounts:,} accounts")
        report.warmup = await drive(target, warm, "warm-up", max_in_flight=in_flight)
        _check(target, report.warmup)
        if report.warmup.error is not None:
            raise BenchError(f"the warm-up failed: {report.warmup.error}")
    load = build_load(options.events, *load_args, meter=options.meter, seed=options.seed)
    await _settle(target)
    log(
        f"{target.name}: max, {load.events:,} events in {load.batches:,} batches"
        f" over {options.connections} connections"
    )
    profiling = options.profile is not None and target.name.startswith("meterd")
    tag = "" if report.owners is None else f".owners-{report.owners}"
    async with _profiled(target.pid, options, enabled=profiling, tag=tag):
        report.max = await drive(target, load, "max", max_in_flight=in_flight)
    _check(target, report.max)
    log(f"{target.name}: {report.max.rate:,.0f} events/s acked")
    await _settle(target, after=report.max)
    if options.resend and report.max.error is None:
        await _settle(target)
        log(f"{target.name}: re-send, the same {load.events:,} events again (all duplicates)")
        report.resend = await drive(target, load, "re-send", max_in_flight=in_flight)
        await _settle(target, after=report.resend)
        _check(target, report.resend)
        log(f"{target.name}: re-send {report.resend.rate:,.0f} events/s acked")
    if not options.half_load:
        return
    if report.max.error is not None or report.max.rate <= 0:
        report.half_skipped = "the max run failed, so its rate is not a maximum"
        log(f"{target.name}: half load skipped: {report.half_skipped} (try --max-in-flight)")
        return
    # A fixed rate compares two servers (or settings) at the same load; by default half
    # of what this one acknowledged at most.
    rate = options.half_load_rate or report.max.rate / 2
    count = max(
        options.connections * options.batch,
        options.half_load_min_batches * options.batch,
        round(rate * options.half_load_seconds),
    )
    half = build_load(count, *load_args, meter=options.meter, seed=options.seed + 1)
    half.batch_interval = options.batch / rate
    await _settle(target)
    log(f"{target.name}: half load, {rate:,.0f} events/s offered for ~{count / rate:.1f} s")
    report.half = await drive(target, half, "half load", max_in_flight=in_flight)
    await _settle(target, after=report.half)
    collections = [
        f"{figure.split(': ', 1)[1]} gen {figure[7]} {value:,.0f} ms"
        f" ({report.half.breakdown.get(figure.replace(', ms:', ', collections:'), 0):,.0f})"
        for figure, value in report.half.breakdown.items()
        if figure.startswith("GC gen ") and ", ms: " in figure
    ]
    if collections:
        log(f"{target.name}: half load, GC pauses (collections): {'; '.join(collections)}")
    _check(target, report.half)


@contextlib.asynccontextmanager
async def _profiled(
    pid: int | None, options: BenchOptions, *, enabled: bool, tag: str = ""
) -> AsyncIterator[None]:
    """``py-spy record --gil`` of ``pid`` and of each of its descendants (a gateway's owners)
    while the body runs (samples only the thread holding the GIL: where the one core a
    Python process can use goes); then a summary per process on stderr. One process is
    recorded into ``--profile`` itself; several (or with ``--owners``) into
    ``STEM[.owners-N].NAME.SUFFIX``, NAME from the command line (gateway, owner-0, ...)."""
    if not enabled or pid is None or options.profile is None:
        yield
        return
    pids = tree(pid)
    names = [process_name(command_line(each) or []) for each in pids]
    base = options.profile
    outputs = [
        base
        if len(pids) == 1 and not tag
        else base.with_name(f"{base.stem}{tag}.{name}{base.suffix or '.raw'}")
        for name in names
    ]
    processes: list[trio.Process] = []
    try:
        for each, out in zip(pids, outputs, strict=True):
            command = [options.py_spy, "record", "--pid", str(each), "--gil", "--rate", "200"]
            command += ["--format", "raw", "--nonblocking", "--output", str(out)]
            try:
                processes.append(
                    await trio.lowlevel.open_process(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            except OSError as error:
                raise BenchError(f"cannot run py-spy ({options.py_spy}): {error}") from None
        await trio.sleep(0.5)  # py-spy attaches
        yield
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            for process in processes:
                with trio.move_on_after(30):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()
    for process, name, out in zip(processes, names, outputs, strict=True):
        if process.returncode != 0 or not out.exists():
            errors: bytes | bytearray = b""
            if process.stderr is not None:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    errors = await process.stderr.receive_some(4096)
            log(
                f"py-spy of {name} failed (exit {process.returncode}):"
                f" {errors.decode(errors='replace')}"
            )
            continue
        log(f"profile of {name} during the max run: {out}\n{summarize_profile(out)}")


def summarize_profile(path: Path, top: int = 20) -> str:
    """The functions holding the GIL most often, in a py-spy raw (collapsed stacks) file:
    by self time and by inclusive time, as shares of all samples."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    # py-spy writes a frame's text as the process has it (a thread name, a string from C
    # code): not always UTF-8. A byte it cannot read must not lose the whole summary.
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = [_frame_name(frame) for frame in stack.split(";")]
        own[names[-1]] = own.get(names[-1], 0) + count
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total:,} samples; self:"]
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {count / total:6.1%}  {name}")
    lines.append("inclusive (meterd and supervisors code below the entry point):")
    ours = [
        (name, count)
        for name, count in inclusive.items()
        if ("(meterd/" in name or "(supervisors/" in name) and name not in _ENTRY_FRAMES
    ]
    for name, count in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"  {count / total:6.1%}  {name}")
    return "\n".join(lines)


_ENTRY_FRAMES: Final = frozenset(
    {
        "<module> (meterd/__main__.py)",
        "run (meterd/cli/main.py)",
        "TaskIncarnation.run (supervisors/_child.py)",
    }
)


def _frame_name(frame: str) -> str:
    """``function (path:line)`` -> ``function (short path)``."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/meterd/", "/supervisors/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker != "site-packages/":
                path = marker.strip("/") + "/" + path
            break
    return f"{function} ({path})" if path else function


async def _settle(target: Target, after: RunResult | None = None) -> None:
    """Wait for ``target`` to go idle; ``after``: the row just run, which is given the
    seconds and CPU the server spent after its last ack."""
    waiting = trio.current_time()
    settled = await settle(target.pid, since=None if after is None else after.server_tree_cpu_end)
    if after is not None:
        # From the last ack to the quiet half second that ended the wait (with --profile,
        # py-spy's stop in between counts as busy).
        ack = waiting if after.ended_at is None else after.ended_at
        after.after_ack_seconds = waiting - ack + settled.busy_seconds
        after.after_ack_cpu_seconds = settled.cpu_seconds
    if settled.seconds > 1.5:
        log(f"{target.name}: waited {settled.seconds:.1f} s for the server to go idle")


def _check(target: Target, result: RunResult) -> None:
    if result.error is not None:
        log(
            f"{target.name}: the {result.label} run FAILED after {result.seconds:.1f} s and"
            f" {result.events:,} acked events: {result.error}"
        )
    if result.rejected:
        log(
            f"{target.name}: {result.rejected:,} events rejected in the {result.label} run"
            f" (first: {result.first_rejection})"
        )
    if result.rejected == result.events and result.events:
        raise BenchError(
            f"{target.name} rejected every event (first: {result.first_rejection});"
            " is --meter a configured meter this producer may write?"
        )


async def run(options: BenchOptions) -> Report:
    """Run the whole benchmark (see the module doc)."""
    options.check()
    report = Report(options, os.cpu_count() or 1, [])
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as tmp:
        workdir = Path(tmp)
        if options.spawn:
            for owners in options.owners or (None,):
                name, spawned, where = "meterd", options, workdir
                if owners is not None:
                    name, where = f"meterd owners={owners}", workdir / f"owners-{owners}"
                    owning = ("partitions", "owners", str(owners))
                    spawned = replace(options, settings=(*options.settings, owning))
                log(f"starting {name} (python -m meterd run) on a temporary config")
                stopped = Stopped()
                async with spawn_meterd(where, spawned, stopped, name) as target:
                    entry = TargetReport(target.name, target.url, target.pid, owners=owners)
                    report.targets.append(entry)
                    await bench_target(target, options, entry)
                entry.stop_status, entry.stop_seconds = stopped.status, stopped.seconds
        else:
            assert options.url is not None
            assert options.token is not None
            target = _external_target(options.url, options.token, options.pid, options.cafile)
            entry = TargetReport(target.name, target.url, target.pid)
            report.targets.append(entry)
            await bench_target(target, options, entry)
        if options.baseline:
            log("starting the baseline server")
            stopped = Stopped()
            async with spawn_baseline(workdir, stopped) as target:
                entry = TargetReport(target.name, target.url, target.pid)
                report.targets.append(entry)
                await bench_target(target, options, entry)
            entry.stop_status, entry.stop_seconds = stopped.status, stopped.seconds
    return report


def _external_target(url: str, token: str, pid: int | None, cafile: str | None) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise BenchError(f"--url must be ws:// or wss://, got {url!r}")
    if parts.path in ("", "/"):
        url = url.rstrip("/") + INGEST_PATH
    context = ssl.create_default_context(cafile=cafile) if parts.scheme == "wss" else None
    if pid is None and parts.port is not None:
        pid = listening_pid(parts.port)
        if pid is None:
            log("the daemon's process was not found from its port: no CPU/RSS (give --pid)")
    return Target("meterd", url, token, pid, context)


# ---- the report -------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 1024 / 1024


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


Row = tuple[str, str, float | None]  # figure, cell, value compared in the ratio column


def _rows(target: TargetReport) -> list[Row]:
    """The table's rows for one server."""
    rows: list[Row] = []

    def add(figure: str, value: float | None, digits: int = 0) -> None:
        rows.append((figure, _number(value, digits), value))

    top, half = target.max, target.half
    if top is not None:
        done = "all" if top.error is None else f"FAILED at {top.events / top.sent_events:.0%}"
        rows.append(("max: events acked of sent", done, None))
        add("max: events/s acked", top.rate)
        add("max: batches in flight per connection", top.in_flight)
        add("max: ack latency p50, ms", top.latency_p50_ms, 1)
        add("max: ack latency p99, ms", top.latency_p99_ms, 1)
        add("max: server CPU, % of one core", _percent(top.server_cpu_share))
        for process in _several(top):
            share = process.cpu_seconds / top.seconds if top.seconds > 0 else None
            add(f"max: server CPU, % of one core: {process.name}", _percent(share))
        add("max: server CPU, µs per event", top.server_cpu_per_event_us, 1)
        for process in _several(top):
            add(f"max: server CPU, µs per event: {process.name}", top.per_event_us(process), 1)
        add("max: server busy after the last ack, s", top.after_ack_seconds, 1)
        add("max: server CPU with the work after the last ack, µs per event",
            top.total_cpu_per_event_us, 1)  # fmt: skip
        add("max: server RSS peak, MiB", _mib(top.server_rss_peak), 1)
        for process in _several(top):
            add(f"max: server RSS peak, MiB: {process.name}", _mib(process.rss_peak), 1)
        add("max: server storage writes, KiB per event", top.server_write_per_event_kib, 1)
        for process in _several(top):
            written = process.write_bytes
            add(
                f"max: server storage writes, KiB per event: {process.name}",
                None if written is None or not top.events else written / top.events / 1024,
                1,
            )
        add("max: load generator CPU, % of one core", _percent(top.generator_cpu_share))
    again = target.resend
    if again is not None:
        add("re-send: events/s acked (all duplicates)", again.rate)
        add("re-send: ack latency p99, ms", again.latency_p99_ms, 1)
        add("re-send: server CPU, µs per event", again.server_cpu_per_event_us, 1)
        add("re-send: server CPU with the work after the last ack, µs per event",
            again.total_cpu_per_event_us, 1)  # fmt: skip
    if half is not None or target.half_skipped is not None:
        if half is None:
            done = "skipped"
        elif half.error is None:
            done = "all"
        else:
            done = f"FAILED at {half.events / half.sent_events:.0%}"
        rows.append(("half load: events acked of sent", done, None))
        figures: list[tuple[str, Callable[[RunResult], float | None], int]] = [
            ("half load: offered events/s", lambda r: r.offered_rate, 0),
            ("half load: events/s acked", lambda r: r.rate, 0),
            ("half load: ack latency p50, ms", lambda r: r.latency_p50_ms, 1),
            ("half load: ack latency p99, ms", lambda r: r.latency_p99_ms, 1),
            ("half load: ack latency max, ms", lambda r: r.latency_max_ms, 1),
            ("half load: server CPU, % of one core", lambda r: _percent(r.server_cpu_share), 0),
            ("half load: server CPU, µs per event", lambda r: r.server_cpu_per_event_us, 1),
            ("half load: server busy after the last ack, s", lambda r: r.after_ack_seconds, 1),
            (
                "half load: server CPU with the work after the last ack, µs per event",
                lambda r: r.total_cpu_per_event_us,
                1,
            ),
            (
                "half load: server storage writes, KiB per event",
                lambda r: r.server_write_per_event_kib,
                1,
            ),
            ("half load: server GC pauses, ms per second", lambda r: r.server_gc_ms_per_second, 1),
            ("half load: server GC collections", lambda r: r.server_gc_collections, 0),
        ]
        for figure, value, digits in figures:
            add(figure, None if half is None else value(half), digits)
            if figure == "half load: server CPU, µs per event" and half is not None:
                for process in _several(half):
                    add(f"{figure}: {process.name}", half.per_event_us(process), 1)
            if figure == "half load: server GC pauses, ms per second" and half is not None:
                for figure_, value_ in half.breakdown.items():
                    if figure_.startswith("GC pauses, ms: ") and half.seconds > 0:
                        who = figure_.removeprefix("GC pauses, ms: ")
                        add(f"{figure}: {who}", value_ / half.seconds, 1)
        if half is not None:
            for figure_, value_ in half.breakdown.items():
                if not figure_.startswith(("GC pauses, ms: ", "GC gen ")):
                    add(f"half load: {figure_}", value_, 1)
    return rows


def _several(result: RunResult) -> list[ProcessFigures]:
    """The server's processes, for rows of their own when there are several (one process's
    rows would repeat the total)."""
    return result.server_processes if len(result.server_processes) > 1 else []


def _merged(lists: Sequence[Sequence[str]]) -> list[str]:
    """The figures of every server in one order: each new one right after the figure it
    follows in its own server's list (an owner's rows under the gateway's)."""
    merged: list[str] = []
    for figures in lists:
        previous: str | None = None
        for figure in figures:
            if figure not in merged:
                at = 0 if previous is None else merged.index(previous) + 1
                while at < len(merged) and merged[at].startswith(f"{previous}: "):
                    at += 1  # after the processes already listed under the same figure
                merged.insert(at, figure)
            previous = figure
    return merged


def format_report(report: Report) -> str:
    """A Markdown table (one column per server, and meterd / baseline), then notes."""
    options = report.options
    lines = [
        f"meterd bench ingest: {options.events:,} events, {options.accounts:,} accounts,"
        f" {options.connections} connections x {options.batch}-event batches,"
        f" {report.cpus} CPUs, load generator on the same machine",
        "",
    ]
    columns = [target.name for target in report.targets]
    per_target = [
        {figure: (cell, value) for figure, cell, value in _rows(t)} for t in report.targets
    ]
    figures = _merged([list(rows) for rows in per_target])
    compare = len(columns) == 2
    header = ["figure", *columns, *(["ratio"] if compare else [])]
    table = []
    for figure in figures:
        cells = [figure]
        values: list[float | None] = []
        for rows in per_target:
            cell, value = rows.get(figure, ("—", None))
            cells.append(cell)
            values.append(value)
        if compare:
            a, b = values
            # No ratio to a figure shown as zero (a baseline idle right after its last ack).
            shown_zero = cells[2].replace(",", "").replace(".", "").strip("0") == ""
            cells.append("—" if a is None or not b or shown_zero else f"{a / b:.2f}x")
        table.append(cells)
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    lines.append(
        "|"
        + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    for cells in table:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("| " + " | ".join(padded) + " |")
    lines.append("")
    if compare:
        lines.append(f"ratio = {columns[0]} / {columns[1]}.")
    lines.append(
        "server = the server's process and its descendants (a gateway and its owners),"
        ' summed; "figure: NAME" rows (for a server of several processes) are one process,'
        " named from its command line."
    )
    if any(target.owners is not None for target in report.targets):
        lines += ["", *_scaling(report)]
    for target in report.targets:
        notes = []
        for result in (target.warmup, target.max, target.resend, target.half):
            if result is None:
                continue
            note = (
                f"{result.label}: {result.events:,} of {result.sent_events:,} events acked in"
                f" {result.batches:,} batches, {result.seconds:.2f} s (accepted"
                f" {result.accepted:,}, duplicates {result.duplicates:,}, rejected"
                f" {result.rejected:,}; load average {_number(result.load_average, 2)})"
            )
            quarters = result.quarter_rates()
            if quarters:
                note += ", events/s by quarter " + " / ".join(f"{q:,.0f}" for q in quarters)
            if result.error is not None:
                note += f", FAILED: {result.error}"
            notes.append(note)
        if target.half_skipped is not None:
            notes.append(f"half load skipped: {target.half_skipped}")
        if target.stop_status is not None and target.stop_seconds is not None:
            notes.append(f"SIGTERM: exit {target.stop_status} in {target.stop_seconds:.2f} s")
        lines.append(f"{target.name} ({target.url}, pid {target.pid}): " + "; ".join(notes))
    for meterd in report.targets:
        if meterd.name.startswith("meterd"):
            lines.extend(_goal(meterd, report.options))
    return "\n".join(lines)


def _goal(meterd: TargetReport, options: BenchOptions) -> list[str]:
    """The goals' lines for one meterd: CPU per event (max row) and half-load latency."""
    lines: list[str] = []
    top = meterd.max
    cpu_goal = f"goal: {meterd.name} CPU <= {CPU_GOAL_US:.0f} µs per event, all processes, max row:"
    if top is not None and top.error is not None:
        lines.append(f"{cpu_goal} not measured, NOT met (the max run failed)")
    elif top is not None and top.server_cpu_per_event_us is not None:
        total = top.total_cpu_per_event_us  # what the events cost (judged), when measured
        judged = top.server_cpu_per_event_us if total is None else total
        lines.append(
            f"{cpu_goal} {top.server_cpu_per_event_us:,.1f} to the last ack"
            + ("" if total is None else f", {total:,.1f} with the work after it")
            + f", {'met' if judged <= CPU_GOAL_US else 'NOT met'}"
        )
    goal = f"goal: {meterd.name} ack latency p99 < {HALF_LOAD_GOAL_MS:.0f} ms at half load:"
    if meterd.half is not None and options.half_load_rate:
        lines.append(
            f"{goal} not measured (the row offered --half-load-rate"
            f" {options.half_load_rate:,.0f} events/s, not half the max):"
            f" p99 {meterd.half.latency_p99_ms:,.1f} ms at that rate"
        )
    elif meterd.half is not None:
        p99 = meterd.half.latency_p99_ms
        met = p99 < HALF_LOAD_GOAL_MS and meterd.half.error is None
        lines.append(f"{goal} {p99:,.1f} ms, {'met' if met else 'NOT met'}")
    elif meterd.half_skipped is not None:
        lines.append(f"{goal} not measured, NOT met ({meterd.half_skipped})")
    return lines


def _scaling(report: Report) -> list[str]:
    """The scaling curve (``--owners``): one line per owner count, max row, each with its
    ratio to the baseline of the same command, and the baseline's line under them."""
    baseline = next((t for t in report.targets if t.name == "baseline"), None)
    base = None if baseline is None else baseline.max
    header = [
        "owners",
        "events/s acked",
        "ratio",
        "CPU µs per event, all processes",
        "ratio",
        "with the work after the last ack",
        "ratio",
        "CPU µs per event (% of one core), per process",
        "RSS peak MiB, all",
        "half load p99, ms",
    ]

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or not b else f"{a / b:.2f}x"

    table = []
    for target in report.targets:
        top = target.max
        if top is None or (target.owners is None and target is not baseline):
            continue
        per_process = ", ".join(
            f"{p.name} {_number(top.per_event_us(p), 1)}"
            f" ({_number(_percent(p.cpu_seconds / top.seconds if top.seconds else None))} %)"
            for p in top.server_processes
        )
        done = "" if top.error is None else f" FAILED at {top.events / top.sent_events:.0%}"
        table.append(
            [
                "baseline" if target is baseline else str(target.owners),
                _number(top.rate) + done,
                ratio(top.rate, None if base is None else base.rate),
                _number(top.server_cpu_per_event_us, 1),
                ratio(
                    top.server_cpu_per_event_us,
                    None if base is None else base.server_cpu_per_event_us,
                ),
                _number(top.total_cpu_per_event_us, 1),
                ratio(
                    top.total_cpu_per_event_us,
                    None if base is None else base.total_cpu_per_event_us,
                ),
                per_process or "—",
                _number(_mib(top.server_rss_peak), 1),
                _number(None if target.half is None else target.half.latency_p99_ms, 1),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines = [
        "scaling curve (max row; ratio = meterd with N owners / the baseline of this command;"
        " owners = 0: one process):",
        "",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|",
    ]
    for cells in table:
        lines.append(
            "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        )
    return lines


# ---- the baseline server ----------------------------------------------------------------------


class _Baseline:
    """Decode each batch, INSERT its events in one transaction (WAL, synchronous=FULL), ack."""

    def __init__(self, db: Path, token: str) -> None:
        self.token = token
        self.db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (account TEXT NOT NULL, id TEXT NOT NULL,"
            " meter TEXT NOT NULL, quantity, time INTEGER NOT NULL, properties BLOB,"
            " PRIMARY KEY (account, id)) WITHOUT ROWID"
        )
        self.writer = trio.CapacityLimiter(1)  # one writer thread at a time

    def insert(self, events: list[dict[str, Any]]) -> int:
        """Returns how many events were new."""
        rows = [
            (
                event["account"],
                event["id"],
                event["meter"],
                event.get("quantity"),
                event["time"],
                _packb(event.get("properties")),
            )
            for event in events
        ]
        before = self.db.total_changes
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.db.total_changes - before

    async def handle(self, request: WebSocketRequest) -> None:
        authorization = [v for k, v in request.headers if k.lower() == b"authorization"]
        expected = f"Bearer {self.token}".encode()
        if len(authorization) != 1 or not hmac.compare_digest(authorization[0], expected):
            await request.reject(401)
            return
        ws = await request.accept()
        try:
            await ws.send_message(
                _packb({"type": "hello", "protocol": 1, "server": "baseline", **HELLO_LIMITS})
            )
            while True:
                message = await ws.get_message()
                frame = msgpack.unpackb(message, raw=False)
                if frame.get("type") != "batch":
                    await ws.send_message(
                        _packb({"type": "error", "code": "unknown_type", "message": "batch only"})
                    )
                    await ws.aclose(1002)
                    return
                events = frame["events"]
                accepted = await trio.to_thread.run_sync(self.insert, events, limiter=self.writer)
                await ws.send_message(
                    _packb(
                        {
                            "type": "ack",
                            "seq": frame["seq"],
                            "accepted": accepted,
                            "duplicates": len(events) - accepted,
                            "rejected": [],
                        }
                    )
                )
        except ConnectionClosed:
            return


async def _serve_baseline(db: Path, token: str, host: str, port: int) -> None:
    baseline = _Baseline(db, token)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial_serve(baseline.handle, host, port, HELLO_LIMITS["max_frame_bytes"])
            )
            print(f"LISTENING {port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    baseline.db.close()


def partial_serve(
    handler: Callable[[WebSocketRequest], Any], host: str, port: int, max_message_size: int
) -> Callable[..., Any]:
    async def serve(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_websocket(
            handler,
            host,
            port,
            None,
            max_message_size=max_message_size,
            receive_buffer_size=65_536,  # as meterd's server reads
            task_status=task_status,
        )

    return serve


def baseline_main(argv: Sequence[str] | None = None) -> None:
    """``python -m meterd.bench.ingest baseline-server --port P --db PATH`` (token from
    ``METERD_BENCH_TOKEN``)."""
    parser = argparse.ArgumentParser(prog="python -m meterd.bench.ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("baseline-server", help="the baseline server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    token = os.environ.get("METERD_BENCH_TOKEN")
    if not token:
        parser.error("set METERD_BENCH_TOKEN to the producer token")
    trio.run(_serve_baseline, args.db, token, args.host, args.port)


if __name__ == "__main__":
    baseline_main()
