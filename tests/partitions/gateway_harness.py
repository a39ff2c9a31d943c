"""Running the gateway daemon (with its owner processes) from a Trio test.

:func:`write_gateway_config` writes the shipped config with free ports, the store in a
temporary directory and a ``[partitions]`` table; :func:`gateway` runs
``tests/partitions/procs/gateway_daemon.py`` on it and reads its JSON log lines as they
come, so a test waits on a line (:meth:`Gateway.wait_for`), never on the clock.
:class:`Lane` is a producer (meterd's client) sending a stream of unique events and
counting what was acknowledged; the totals are then checked, exactly, against the owners'
ledgers (:func:`tests.partitions.procs.ledger_owner.usage_of`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from meterd.client import BatchResult, Producer
from meterd.config import Config, load
from meterd.gateway import owner_socket
from meterd.partitions import Answer, Hello, Query, UnixTransport, owner_of_shard, shard_of
from tests.partitions.procs.ledger_owner import usage_of
from tests.system.test_kill9 import write_config

ROOT = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 60.0  # seconds for an awaited log line (only reached if something hangs)
SUM_METER = "dyno.seconds"


def write_gateway_config(
    where: Path,
    *,
    owners: int,
    count: int = 256,
    shard_size: int = 16,
    slice_timeout: str = "5s",
    ping_interval: str = "200ms",
    ping_timeout: str = "2s",
    max_in_flight_events: int | None = None,
) -> Config:
    where.mkdir(parents=True, exist_ok=True)
    path = write_config(where / "config.toml", where / "s.sqlite3")
    if max_in_flight_events is not None:  # the gateway's in-flight budget ([ingest])
        text = path.read_text()
        assert "\n[ingest]\n" in text
        assert "max_in_flight_events" not in text
        path.write_text(
            text.replace(
                "\n[ingest]\n", f"\n[ingest]\nmax_in_flight_events = {max_in_flight_events}\n"
            )
        )
    with path.open("a") as file:
        file.write(
            "\n[partitions]\n"
            f"count = {count}\nshard_size = {shard_size}\nowners = {owners}\n"
            f'slice_timeout = "{slice_timeout}"\nping_interval = "{ping_interval}"\n'
            f'ping_timeout = "{ping_timeout}"\n'
        )
    return load(path)


def accounts_by_owner(config: Config, n: int) -> dict[int, list[str]]:
    """``n`` account names for each owner (by the layout)."""
    found: dict[int, list[str]] = {k: [] for k in range(config.partitions.owners)}
    i = 0
    while any(len(names) < n for names in found.values()):
        name = f"acct-{i}"
        owner = owner_of_shard(shard_of(name, config.partitions), config.partitions)
        if len(found[owner]) < n:
            found[owner].append(name)
        i += 1
    return found


async def real_total(config: Config, account: str) -> Decimal | None:
    """``account``'s total of ``dyno.seconds`` over all time, asked of its real owner."""
    partitions = config.partitions
    shard = shard_of(account, partitions)
    owner = owner_of_shard(shard, partitions)
    channel = await UnixTransport().connect(owner_socket(config, owner))
    try:
        hello = await channel.receive()
        assert isinstance(hello, Hello)
        query = f"meter={SUM_METER}&from=0&to={now_ms() + 86_400_000}&window=month"
        await channel.send(
            Query(
                1,
                shard,
                "http",
                {
                    "method": "GET",
                    "path": f"/v1/accounts/{account}/usage/summary",
                    "query": query,
                    "headers": [["authorization", f"Bearer {config.api.admin_token}"]],
                    "body": b"",
                },
            )
        )
        while True:
            answer = await channel.receive()
            if isinstance(answer, Answer) and answer.id == 1:
                break
    finally:
        await channel.aclose()
    assert answer.error is None, answer.error
    if answer.value["status"] == 404:
        return None
    assert answer.value["status"] == 200, answer.value
    (meter,) = json.loads(answer.value["body"])["meters"]
    return None if meter["total"] is None else Decimal(str(meter["total"]))


def real_owner_available() -> bool:
    """Whether meterd's own owner process (``meterd.partitions.owner``) is here."""
    return importlib.util.find_spec("meterd.partitions.owner") is not None


@dataclass
class Gateway:
    config: Config
    process: trio.Process
    real_owner: bool = False
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _new: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"ws://{self.config.ingest.listen}/v1/ingest"

    def token(self, producer: str) -> str:
        return next(p.token for p in self.config.producers if p.name == producer)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for line in done:
                text = line.decode(errors="replace")
                self.raw.append(text)
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    continue
            self._new.set()
            self._new = trio.Event()
        self._new.set()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], *, after: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """The first log line from index ``after`` on that ``match``es: (index, line)."""
        with trio.move_on_after(LINE_TIMEOUT):
            index = after
            while True:
                while index < len(self.lines):
                    if match(self.lines[index]):
                        return index, self.lines[index]
                    index += 1
                if self.process.returncode is not None:
                    raise AssertionError("the gateway exited:\n" + "\n".join(self.raw[-30:]))
                await self._new.wait()
        lines = "\n".join(line for line in self.raw if "ingest_" not in line)
        raise AssertionError(f"no such log line within {LINE_TIMEOUT} s; its log:\n{lines}")

    def event(self, name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
        def match(line: dict[str, Any]) -> bool:
            return line.get("event") == name and all(
                line.get(key) == value for key, value in fields.items()
            )

        return match

    async def owner_pids(self) -> list[int]:
        _, line = await self.wait_for(self.event("meterd_started"))
        return [int(pid) for pid in line["owners"]]

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def totals(self, accounts: Iterable[str]) -> dict[str, Decimal]:
        """Each account's exact total of ``dyno.seconds`` now: from the ledgers of stand-in
        owners, or asked of real owners (their shard's ``/usage/summary``, through the
        owner's socket as the gateway asks: a ``query`` of op ``http``)."""
        if not self.real_owner:
            found = usage_of(self.config)
            return {a: found[a][SUM_METER] for a in accounts if SUM_METER in found.get(a, {})}
        totals: dict[str, Decimal] = {}
        for account in accounts:
            total = await real_total(self.config, account)
            if total is not None:
                totals[account] = total
        return totals


@contextlib.asynccontextmanager
async def gateway(
    config: Config,
    *,
    real_owner: bool = False,
    expect_clean_stop: bool = True,
    meterd_run: bool = False,
    extra: Sequence[str] = (),
    listening: bool = True,
) -> AsyncIterator[Gateway]:
    """The gateway daemon on ``config``, listening; SIGTERM at the end (exit 0 expected
    unless the test killed it). Its owners are stand-ins (ledger_owner) unless
    ``real_owner``; ``meterd_run``: started as ``meterd run`` (real owners).
    ``listening=False``: yielded as soon as it is started (the caller waits for its
    ``listening`` line, e.g. after starting others beside it)."""
    argv = [sys.executable, "-m", "tests.partitions.procs.gateway_daemon"]
    if meterd_run:
        argv = [sys.executable, "-m", "meterd", "run", "--json-logs"]
        real_owner = True
    elif real_owner:
        argv.append("--real-owner")
    process = await trio.lowlevel.open_process(
        [*argv, "--config", str(config.path), *extra],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = Gateway(config, process, real_owner)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running._read)
            if listening:
                await running.wait_for(running.event("listening"))
            yield running
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(LINE_TIMEOUT):
                code = await process.wait()
            if expect_clean_stop and code != -signal.SIGKILL:
                assert code == 0, "\n".join(running.raw[-30:])
    finally:
        log = config.path.with_name(f"gateway-{process.pid}.log")
        log.write_text("\n".join(running.raw) + "\n")  # kept for a failure's post-mortem
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


@dataclass
class Lane:
    """A producer sending unique count events for ``accounts`` (one per event, round robin)
    until stopped; ``sent`` are the events' (account, quantity) it sent, ``acked`` counts
    the events acknowledged (accepted or duplicates), ``acked_at`` one entry per ack."""

    name: str
    accounts: list[str]
    sent: list[tuple[str, str, int]] = field(default_factory=list)
    acked: int = 0
    acks: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    unavailable: int = 0
    _acked_event: trio.Event = field(default_factory=trio.Event)
    _retried: trio.Event = field(default_factory=trio.Event)

    def result(self, result: BatchResult) -> None:
        self.acks += 1
        self.acked += result.accepted + result.duplicates
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.rejected += len(result.rejected)
        self._acked_event.set()
        self._acked_event = trio.Event()

    async def wait_acks(self, acks: int) -> None:
        with trio.fail_after(LINE_TIMEOUT):
            while self.acks < acks:
                await self._acked_event.wait()

    def retry(self, reason: str, attempt: int, delay: float) -> None:
        self.unavailable += 1
        self._retried.set()
        self._retried = trio.Event()

    async def wait_retry(self) -> None:
        """Return at the producer's next retry (a batch answered unavailable)."""
        await self._retried.wait()

    async def run(
        self, url: str, token: str, stop: trio.Event, *, limit: int | None = None
    ) -> None:
        """Send until ``stop`` is set (or ``limit`` events), then flush: every event acked."""
        async with Producer(
            url,
            token,
            max_batch=20,
            linger=0.002,
            max_pending=200,
            backoff_initial=0.02,
            backoff_max=0.3,
            max_repeated_faults=1000,
            ack_timeout=30,
            on_result=self.result,
            on_retry=self.retry,
        ) as producer:
            i = 0
            while not stop.is_set() and (limit is None or i < limit):
                account = self.accounts[i % len(self.accounts)]
                quantity = 1 + i % 7
                event_id = f"{self.name}-{i}"
                self.sent.append((account, event_id, quantity))
                await producer.send(
                    {
                        "id": event_id,
                        "account": account,
                        "meter": SUM_METER,
                        "quantity": quantity,
                        "time": now_ms(),
                        "properties": {"size": "std-1x", "app": "web"},
                    }
                )
                i += 1
            await producer.flush()
            assert producer.outstanding == 0

    def expected(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for account, _, quantity in self.sent:
            totals[account] = totals.get(account, Decimal(0)) + quantity
        return totals


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def merged(lanes: Iterable[Lane]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for lane in lanes:
        for account, total in lane.expected().items():
            totals[account] = totals.get(account, Decimal(0)) + total
    return totals


@contextlib.contextmanager
def popen_gateways(
    configs: Sequence[Config], *, real_owner: bool = False
) -> Iterator[tuple[subprocess.Popen[str], ...]]:
    """The gateway daemon on each of ``configs`` for a synchronous test (a fixture spanning
    many ``trio.run`` calls): started side by side (each one's start is mostly the
    interpreter importing meterd), each waited for until listening; at the end all sent
    SIGTERM together, each expected to exit 0."""
    started: list[tuple[subprocess.Popen[str], list[str], threading.Event, threading.Thread]] = []
    try:
        for config in configs:
            started.append(_spawn_gateway(config, real_owner))
        for process, lines, listening, _ in started:
            assert listening.wait(LINE_TIMEOUT), "".join(lines[-30:])
            assert process.poll() is None, "".join(lines[-30:])
        yield tuple(process for process, *_ in started)
        for process, *_ in started:
            process.send_signal(signal.SIGTERM)
        for process, lines, *_ in started:
            assert process.wait(timeout=LINE_TIMEOUT) == 0, "".join(lines[-30:])
    finally:
        for process, _, _, thread in started:
            process.kill()
            process.wait()
            thread.join(10)


def _spawn_gateway(
    config: Config, real_owner: bool
) -> tuple[subprocess.Popen[str], list[str], threading.Event, threading.Thread]:
    """The gateway process on ``config``, its log lines as they come (read by a thread, or
    the daemon blocks on a full pipe) and an event set once it logged ``listening``."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.partitions.procs.gateway_daemon",
            "--config",
            str(config.path),
            *(["--real-owner"] if real_owner else []),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    listening = threading.Event()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if '"listening"' in line:
                listening.set()
        listening.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return process, lines, listening, thread
