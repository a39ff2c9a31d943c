"""The producer client (meterd.client) against a real daemon on 127.0.0.1.

Most tests run the daemon's tree in-process (``meterd.app.build``, as tests/ingest/test_server.py
does) and check what it counted through ``Accounts.usage``. The restart test stops that tree
and starts a new one on the same port and store while the producer streams; the ``kill -9``
test runs ``python -m meterd run`` as a subprocess and SIGKILLs it mid-stream. Nothing waits
on the clock: tests wait for a condition (an ack, a log line, a process exit) under a
generous ``fail_after``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import structlog
import trio
import trio.testing
from trio_websocket import WebSocketRequest, serve_websocket

from meterd.app import Services
from meterd.client import (
    AuthenticationError,
    BatchResult,
    Producer,
    ProducerConnectionError,
    ProtocolError,
    Rejection,
    prepare_event,
)
from meterd.config import ApiConfig, Config, IngestConfig, Listen, StoreConfig, load
from meterd.store import CommitFailed
from tests.ingest.test_server import (
    ADMIN_TOKEN,
    METERS,
    PLATFORM_TOKEN,
    PRODUCERS,
    ROUTER_TOKEN,
    Gate,
    now_ms,
    running,
    total,
)
from tests.system.test_kill9 import free_ports, write_config

ROOT = Path(__file__).resolve().parents[2]
T0 = now_ms() - 10 * 60_000
COUNT = "router.requests"
SUM = "dyno.seconds"


def fast(url: str, token: str, **options: Any) -> Producer:
    """A producer that reconnects quickly (tests restart daemons)."""
    return Producer(url, token, backoff_initial=0.02, backoff_max=0.2, **options)


async def send_and_flush(producer: Producer, events: Iterable[dict[str, Any]]) -> None:
    async with producer:
        for item in events:
            await producer.send(item)
        await producer.flush()


def config(
    where: Path,
    *,
    port: int = 0,
    max_frame_bytes: int = 1_048_576,
    max_batch: int = 1000,
    window: int = 64,
) -> Config:
    return Config(
        path=where / "config.toml",
        ingest=IngestConfig(
            Listen("127.0.0.1", port),
            max_frame_bytes=max_frame_bytes,
            max_batch=max_batch,
            window=window,
        ),
        api=ApiConfig(Listen("127.0.0.1", 0), admin_token=ADMIN_TOKEN),
        store=StoreConfig(where / "meterd.sqlite3"),
        producers=PRODUCERS,
        meters=METERS,
    )


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with running(config(tmp_path)) as services:
        yield services


class Watch:
    """Collects a producer's results and wakes whoever waits for a condition on them."""

    def __init__(self) -> None:
        self.results: list[BatchResult] = []
        self.rejections: list[Rejection] = []
        self._event = trio.Event()

    def result(self, result: BatchResult) -> None:
        self.results.append(result)
        self._poke()

    def rejected(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)

    def _poke(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self._event.wait()


def event(
    id: str, account: str = "acme", meter: str = COUNT, quantity: Any = None, **more: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id, "account": account, "meter": meter, "time": T0}
    if quantity is not None:
        out["quantity"] = quantity
    out.update(more)
    return out


def stream(count: int, accounts: int = 5, prefix: str = "e") -> list[dict[str, Any]]:
    """``count`` events over ``accounts`` accounts, alternating the count and sum meters with
    int, decimal-string and Decimal quantities; every 10th is a repeat of an earlier one."""
    events: list[dict[str, Any]] = []
    for n in range(count):
        if n % 10 == 9:
            events.append(dict(events[n // 2]))
            continue
        account = f"acct-{n % accounts}"
        if n % 2:
            events.append(event(f"{prefix}{n}", account, COUNT, properties={"app": "web"}))
        else:
            quantity: Any = (n, f"{n}.25", Decimal(f"0.{n:04d}"))[n % 3]
            events.append(event(f"{prefix}{n}", account, SUM, quantity))
    return events


def expected(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """``(account, meter) -> total`` of the first copy of every ``(account, id)``."""
    seen: set[tuple[str, str]] = set()
    totals: dict[tuple[str, str], Decimal] = {}
    with localcontext() as exact:
        exact.prec = 100
        for item in events:
            key = (item["account"], item["id"])
            if key in seen:
                continue
            seen.add(key)
            cell = (item["account"], item["meter"])
            amount = Decimal(1) if item["meter"] == COUNT else Decimal(str(item["quantity"]))
            totals[cell] = totals.get(cell, Decimal(0)) + amount
    return {cell: _text(value) for cell, value in totals.items()}


def _text(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


async def totals(
    services: Services, cells: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    return {(account, meter): await total(services, account, meter) for account, meter in cells}


# ---- delivery ------------------------------------------------------------------------------------


async def test_events_across_accounts_are_counted_exactly_once(services: Services) -> None:
    events = stream(2000)
    async with Producer(services.ingest.url, PLATFORM_TOKEN, max_batch=100) as producer:
        ordinals = [await producer.send(item) for item in events]
        await producer.flush()
        assert producer.outstanding == 0
    assert ordinals == list(range(2000))
    want = expected(events)
    assert await totals(services, want) == want
    unique = len({(item["account"], item["id"]) for item in events})
    stats = producer.stats
    assert (stats.accepted, stats.duplicates, stats.rejected_total) == (unique, 2000 - unique, 0)
    assert stats.connections == 1
    assert stats.resent == 0
    assert services.ingest.stats.accepted == unique
    assert producer.rejections == []


async def test_batches_are_cut_by_size(services: Services) -> None:
    watch = Watch()
    async with Producer(
        services.ingest.url, PLATFORM_TOKEN, max_batch=100, linger=3600, on_result=watch.result
    ) as producer:
        for item in stream(1000, prefix="s"):
            await producer.send(item)
        await watch.until(lambda: len(watch.results) == 10)  # no flush: full batches only
        assert [result.events for result in watch.results] == [100] * 10
        assert services.ingest.stats.batches == 10
        for n in range(5):
            await producer.send(event(f"tail{n}"))
        await producer.flush()  # sends the partial batch without lingering
    assert [result.events for result in watch.results][10:] == [5]
    assert services.ingest.stats.batches == producer.stats.batches == 11


async def test_a_partial_batch_leaves_after_linger(services: Services) -> None:
    watch = Watch()
    linger = 0.2
    async with Producer(
        services.ingest.url, PLATFORM_TOKEN, linger=linger, on_result=watch.result
    ) as producer:
        start = trio.current_time()
        for n in range(5):
            await producer.send(event(f"l{n}"))
        await watch.until(lambda: len(watch.results) == 1)  # no flush: the linger sent it
        elapsed = trio.current_time() - start
    assert elapsed >= linger
    assert watch.results[0].events == 5
    assert services.ingest.stats.batches == 1


async def test_batches_fit_the_servers_max_batch_and_max_frame_bytes(tmp_path: Path) -> None:
    watch = Watch()
    async with running(config(tmp_path, max_frame_bytes=4096, max_batch=7)) as services:
        async with Producer(
            services.ingest.url,
            PLATFORM_TOKEN,
            max_batch=500,
            on_result=watch.result,
            on_rejected=watch.rejected,
        ) as producer:
            for n in range(60):
                padding = {"a": "x" * 250, "b": "y" * 250, "c": "z" * 100}
                await producer.send(event(f"f{n}", properties={"app": f"{n:03d}", **padding}))
            huge = {f"k{i}": "v" * 256 for i in range(16)}  # ~4.5 KB: fits no frame
            await producer.send(event("huge", properties=huge))
            await producer.send(event("after"))
        assert services.ingest.stats.faults == Counter()
        assert services.ingest.stats.accepted == 61
        assert await total(services, "acme") == "61"
    assert max(result.events for result in watch.results) <= 7
    assert producer.stats.batches >= 60 * 620 // 4096
    [rejection] = watch.rejections
    assert (rejection.code, rejection.id, rejection.ordinal) == ("too_large", "huge", 60)
    assert "max_frame_bytes" in rejection.message
    assert producer.stats.rejected == Counter(too_large=1)


async def test_no_more_than_window_batches_are_unacknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(config(tmp_path, window=2)) as services:
        gate = Gate(services.accounts.submit)
        monkeypatch.setattr(services.accounts, "submit", gate.submit)
        async with Producer(services.ingest.url, PLATFORM_TOKEN, max_batch=1) as producer:
            for n in range(10):
                await producer.send(event(f"w{n}", account=f"acct-{n}"))
            await gate.until(lambda: gate.waiting == 2)
            await trio.testing.wait_all_tasks_blocked()
            assert producer.stats.batches == 2
            assert producer.in_flight == 2
            assert services.ingest.stats.batches == 2
            gate.release()
            await producer.flush()
        assert producer.stats.accepted == 10
        assert services.ingest.stats.batches == 10


async def test_flush_returns_once_every_event_is_acknowledged(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(services.accounts.submit)
    monkeypatch.setattr(services.accounts, "submit", gate.submit)
    flushed = trio.Event()
    async with Producer(services.ingest.url, PLATFORM_TOKEN, linger=3600) as producer:
        for n in range(3):
            await producer.send(event(f"x{n}"))

        async def flush() -> None:
            await producer.flush()
            flushed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            await gate.until(lambda: gate.waiting == 1)  # flush sent the lingering batch
            await trio.testing.wait_all_tasks_blocked()
            assert not flushed.is_set()
            assert producer.outstanding == 3
            gate.release()
        assert producer.stats.accepted == 3
        assert producer.outstanding == 0


async def test_backpressure_does_not_wait_for_the_linger(services: Services) -> None:
    async with Producer(
        services.ingest.url, PLATFORM_TOKEN, max_batch=500, linger=3600, max_pending=10
    ) as producer:
        with trio.fail_after(30):
            for n in range(50):
                await producer.send(event(f"bp{n}"))
                assert producer.outstanding <= 10
    assert producer.stats.accepted == 50
    assert producer.stats.batches >= 5


async def test_leaving_the_block_flushes(services: Services) -> None:
    async with Producer(services.ingest.url, PLATFORM_TOKEN, linger=3600) as producer:
        await producer.send(event("z1"))
    assert producer.stats.accepted == 1
    assert await total(services, "acme") == "1"


# ---- rejections ----------------------------------------------------------------------------------


async def test_rejections_reach_the_caller_with_their_codes(services: Services) -> None:
    watch = Watch()
    async with Producer(
        services.ingest.url, PLATFORM_TOKEN, on_rejected=watch.rejected, max_batch=4
    ) as producer:
        await producer.send(event("ok", meter=SUM, quantity="2"))
        await producer.flush()
        bad = [
            event("r1", meter="no.such.meter"),
            event("r2", account="bad account"),
            event("r3", time=now_ms() + 3_600_000),
            event("ok", meter=SUM, quantity="3"),  # same id, different quantity
            event("r5", meter=SUM, quantity="-1"),
            event("fine", meter=SUM, quantity=Decimal("0.5")),
        ]
        for item in bad:
            await producer.send(item)
    by_id = {rejection.id: rejection for rejection in watch.rejections}
    assert {key: value.code for key, value in by_id.items()} == {
        "r1": "unknown_meter",
        "r2": "invalid_account",
        "r3": "time_out_of_range",
        "ok": "id_conflict",
        "r5": "invalid_quantity",
    }
    assert by_id["ok"].ordinal == 4
    assert by_id["ok"].event["quantity"] == "3"
    assert all(rejection.message for rejection in watch.rejections)
    assert producer.stats.rejected == Counter(
        unknown_meter=1, invalid_account=1, time_out_of_range=1, id_conflict=1, invalid_quantity=1
    )
    assert (producer.stats.accepted, producer.rejections) == (2, [])
    assert await total(services, "acme", SUM) == "2.5"


async def test_without_a_callback_rejections_are_kept(services: Services) -> None:
    async with Producer(services.ingest.url, ROUTER_TOKEN) as producer:
        await producer.send(event("p1", meter=SUM, quantity=1))  # not this producer's meter
        await producer.send(event("p2"))
    [rejection] = producer.rejections
    assert (rejection.code, rejection.id, rejection.ordinal) == ("not_permitted", "p1", 0)
    assert producer.stats.accepted == 1


@pytest.mark.parametrize(
    ("item", "error", "words"),
    [
        (event("a", meter=SUM, quantity=1.5), TypeError, "quantity is a float"),
        (event("a", properties={"size": 2.0}), TypeError, "properties.size is a float"),
        (event("a", time=float(T0)), TypeError, "time is a float"),
        (event("a", quantity=True), TypeError, "quantity is a boolean"),
        (event("a", quantity=[1]), TypeError, "quantity is list"),
        (event("a", quantity=Decimal("NaN")), ValueError, "finite"),
        (event("a", time=2**70), ValueError, "field 'time'"),
        (event("a", properties={(1, 2): "x"}), TypeError, "tuple as a key"),
        (event("a", properties={"k": object()}), TypeError, "field 'properties'"),
        ([("id", "a")], TypeError, "must be a dict"),
    ],
    ids=[
        "float-qty",
        "float-prop",
        "float-time",
        "bool",
        "list",
        "nan",
        "huge-int",
        "tuple-key",
        "object",
        "not-dict",
    ],
)
async def test_unsendable_events_raise_before_anything_is_queued(
    services: Services, item: Any, error: type[Exception], words: str
) -> None:
    async with Producer(services.ingest.url, PLATFORM_TOKEN) as producer:
        with pytest.raises(error, match=words.replace("(", r"\(")):
            await producer.send(item)
        assert producer.outstanding == 0
    assert producer.stats.batches == 0


def test_prepare_event_sends_decimals_as_strings_and_copies() -> None:
    properties = {"size": "std-1x"}
    source = event("d", meter=SUM, quantity=Decimal("1.50"), properties=properties)
    prepared = prepare_event(source)
    assert prepared["quantity"] == "1.50"
    properties["size"] = "changed"
    assert prepared["properties"] == {"size": "std-1x"}
    assert prepare_event(event("i", quantity=7))["quantity"] == 7
    assert prepare_event(event("s", quantity="1E-7"))["quantity"] == "1E-7"


# ---- failures and reconnects ---------------------------------------------------------------------


async def test_a_wrong_token_raises_authentication_error_without_retrying(
    services: Services,
) -> None:
    producer = fast(services.ingest.url, "wrong-token-42")
    with structlog.testing.capture_logs() as logs, pytest.raises(AuthenticationError) as raised:
        await send_and_flush(producer, [event("a1")])
    assert "401" in str(raised.value)
    assert "wrong-token-42" not in str(raised.value)
    assert "wrong-token-42" not in repr(logs)
    assert services.ingest.stats.refused == 1
    assert producer.unacknowledged() == [event("a1")]


async def test_an_unavailable_batch_is_re_sent_on_a_new_connection(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []
    submit = services.accounts.submit

    def fail_once(
        groups: list[tuple[str, list[Any]]], on_done: Callable[[Any], None], **audit: Any
    ) -> None:
        """The batch holding "boom" is not written the first time: a failed commit."""
        if not failures and any(e.id == "boom" for _, events in groups for e in events):
            failures.append("boom")
            on_done(CommitFailed("disk I/O error (injected)"))
            return
        submit(groups, on_done, **audit)

    monkeypatch.setattr(services.accounts, "submit", fail_once)
    events = [event(f"u{n}", account=f"acct-{n % 3}") for n in range(30)]
    events[17] = event("boom", account="acct-2")
    async with fast(services.ingest.url, PLATFORM_TOKEN, max_batch=5) as producer:
        for item in events:
            await producer.send(item)
    assert failures == ["boom"]
    assert producer.stats.faults == Counter(unavailable=1)
    assert producer.stats.connections == 2
    assert producer.stats.resent >= 1
    assert producer.stats.accepted + producer.stats.duplicates == 30
    want = expected(events)
    assert await totals(services, want) == want


async def test_the_daemon_restarted_mid_stream_counts_every_event_once(tmp_path: Path) -> None:
    [port] = free_ports(1)
    settings = config(tmp_path, port=port)
    events = stream(3000, prefix="r")
    watch = Watch()
    stopped = trio.Event()
    done = trio.Event()
    async with fast(
        f"ws://127.0.0.1:{port}", PLATFORM_TOKEN, max_batch=50, on_result=watch.result
    ) as producer:

        async def produce() -> None:
            for item in events[:2000]:
                await producer.send(item)
            await stopped.wait()  # the rest is sent while no daemon runs, then to the new one
            for item in events[2000:]:
                await producer.send(item)
            await producer.flush()
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with running(settings):
                await watch.until(lambda: producer.stats.acks >= 5)
            stopped.set()
            async with running(settings) as services:
                with trio.fail_after(30):
                    await done.wait()
                want = expected(events)
                assert await totals(services, want) == want
    assert producer.stats.connections >= 2
    assert producer.stats.faults["shutting_down"] >= 1
    unique = len({(item["account"], item["id"]) for item in events})
    assert producer.stats.accepted <= unique


async def test_an_unknown_error_code_is_retried_and_resent_within_the_new_limits() -> None:
    """A fake server: the first connection answers the batch with an error code the producer
    does not know; the second says hello with a smaller max_batch and acknowledges."""
    connections: list[list[dict[str, Any]]] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        received: list[dict[str, Any]] = []
        connections.append(received)
        first = len(connections) == 1
        hello = {"type": "hello", "protocol": 1, "max_frame_bytes": 1 << 20, "window": 4}
        await ws.send_message(msgpack.packb({**hello, "max_batch": 10 if first else 2}))
        while sum(len(frame["events"]) for frame in received) < 5:
            frame = msgpack.unpackb(await ws.get_message())
            received.append(frame)
            if first:
                error = {"type": "error", "code": "overloaded", "message": "later"}
                await ws.send_message(msgpack.packb(error))
                await ws.aclose(1011)
                return
            size = len(frame["events"])
            ack = {"type": "ack", "seq": frame["seq"], "accepted": size, "duplicates": 0}
            await ws.send_message(msgpack.packb({**ack, "rejected": []}))
        await ws.get_message()  # until the producer closes

    events = [event(f"k{n}") for n in range(5)]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        await send_and_flush(fast(f"ws://127.0.0.1:{server.port}", PLATFORM_TOKEN), [])
        producer = fast(f"ws://127.0.0.1:{server.port}", PLATFORM_TOKEN, linger=3600)
        await send_and_flush(producer, events)
        nursery.cancel_scope.cancel()
    first, second = connections
    assert [(frame["seq"], len(frame["events"])) for frame in first] == [(0, 5)]
    assert [(frame["seq"], len(frame["events"])) for frame in second] == [(0, 2), (1, 2), (2, 1)]
    assert [item for frame in second for item in frame["events"]] == events
    assert producer.stats.faults == Counter(overloaded=1)
    assert (producer.stats.accepted, producer.stats.batches, producer.stats.resent) == (5, 4, 3)


async def test_an_exception_in_a_callback_reaches_the_caller(services: Services) -> None:
    def explode(rejection: Rejection) -> None:
        raise RuntimeError(f"callback saw {rejection.code}")

    producer = Producer(services.ingest.url, PLATFORM_TOKEN, on_rejected=explode)
    with pytest.raises(RuntimeError, match="callback saw unknown_meter"):
        await send_and_flush(producer, [event("cb", meter="nope")])
    assert isinstance(producer.failure, RuntimeError)


async def test_a_repeated_protocol_fault_is_fatal() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        hello = {"type": "hello", "protocol": 1, "max_frame_bytes": 1 << 20}
        await ws.send_message(msgpack.packb({**hello, "max_batch": 10, "window": 4}))
        await ws.get_message()
        await ws.send_message(
            msgpack.packb({"type": "error", "code": "bad_batch", "message": "no"})
        )
        await ws.aclose(1002)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}"
        producer = fast(url, PLATFORM_TOKEN, max_repeated_faults=3)
        with pytest.raises(ProtocolError, match="'bad_batch' 3 times"):
            await send_and_flush(producer, [event("b1")])
        nursery.cancel_scope.cancel()
    assert producer.stats.faults == Counter(bad_batch=3)


async def test_nothing_listening_gives_up_after_the_limit() -> None:
    [port] = free_ports(1)
    producer = fast(f"ws://127.0.0.1:{port}/v1/ingest", PLATFORM_TOKEN, give_up_after=0.3)
    with pytest.raises(ProducerConnectionError, match=r"cannot connect to .*Connection refused"):
        await send_and_flush(producer, [event("g1")])
    assert producer.unacknowledged() == [event("g1")]


async def test_a_refused_path_is_not_retried(services: Services) -> None:
    url = services.ingest.url.replace("/v1/ingest", "/v1/other")
    with pytest.raises(ProtocolError, match="404"):
        await send_and_flush(fast(url, PLATFORM_TOKEN), [event("n1")])
    assert services.ingest.stats.refused == 1


async def test_cancelling_the_caller_leaves_the_block_quietly(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(services.accounts.submit)  # holds the batch: flush cannot finish
    monkeypatch.setattr(services.accounts, "submit", gate.submit)
    with trio.CancelScope() as scope:
        async with Producer(services.ingest.url, PLATFORM_TOKEN) as producer:
            await producer.send(event("c1"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.flush)
                await gate.until(lambda: gate.waiting == 1)
                scope.cancel()
    assert scope.cancelled_caught
    assert producer.outstanding == 1
    gate.release()


# ---- kill -9 -------------------------------------------------------------------------------------


class Daemon:
    """``python -m meterd run`` in a subprocess; its stderr is drained into ``lines``."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.lines: list[str] = []
        self.process: trio.Process | None = None
        self._changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        command = [sys.executable, "-m", "meterd", "run", "--config", str(self.config_path)]
        self.lines = []
        process = await trio.lowlevel.open_process(
            [*command, "--json-logs"],
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.process = process
        nursery.start_soon(self._drain, process)
        with trio.fail_after(30):
            while not any('"listening"' in line for line in self.lines):
                if process.returncode is not None:
                    pytest.fail(f"the daemon exited: {self.lines}")
                await self._changed.wait()

    async def _drain(self, process: trio.Process) -> None:
        assert process.stderr is not None
        pending = b""
        async for chunk in process.stderr:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            assert await self.process.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await self.process.wait() == 0, self.lines[-20:]


async def test_kill_9_mid_stream_then_restart_counts_every_event_once(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config.toml", tmp_path / "store.sqlite3")
    settings = load(config_path)
    token = next(producer.token for producer in settings.producers if producer.meters is None)
    url = f"ws://{settings.ingest.listen}/v1/ingest"
    events = stream(4000, accounts=7, prefix="k")
    watch = Watch()
    daemon = Daemon(config_path)
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)
        async with fast(url, token, max_batch=40, on_result=watch.result) as producer:

            async def produce() -> None:
                for item in events:
                    await producer.send(item)
                await producer.flush()
                done.set()

            nursery.start_soon(produce)
            await watch.until(lambda: producer.stats.acks >= 10 and producer.in_flight > 0)
            in_flight = producer.in_flight
            await daemon.kill9()  # with batches sent and not acknowledged
            assert not done.is_set()
            await daemon.start(nursery)
            with trio.fail_after(60):
                await done.wait()
        await daemon.stop()
    assert in_flight > 0
    assert producer.stats.resent >= 1
    assert producer.stats.connections >= 2
    want = expected(events)
    async with running(settings) as services:
        assert await totals(services, want) == want
    assert len(want) == 14  # 7 accounts x 2 meters
