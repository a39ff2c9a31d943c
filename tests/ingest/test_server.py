"""The producer endpoint over real sockets (protocol.md §2).

Every test runs the daemon's real tree (``meterd.app.build``) on a temporary store, listening
on 127.0.0.1 (port 0), and talks to it with a raw trio-websocket client. Where a test needs
batches to stay in flight it wraps ``Accounts.submit`` in a :class:`Gate`; "the server did
not do X" is checked after ``wait_all_tasks_blocked`` (everything that could run has run),
never after a sleep.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket,
)

import supervisors as sv
from meterd import __version__
from meterd.accounts.aggregate import EXACT
from meterd.accounts.budget import EventBudget
from meterd.app import Services, build
from meterd.config import (
    ApiConfig,
    Config,
    Duration,
    IngestConfig,
    Listen,
    Producer,
    StoreConfig,
    Tls,
)
from meterd.ingest.protocol import FAULT_CLOSE_CODES
from meterd.ingest.validate import REJECTION_CODES
from meterd.model import DAY_MS, MINUTE_MS, Aggregation, Event, Meter, Window, canonical_quantity
from meterd.store import _writer as store_writer
from meterd.store import schema
from tests.examples import examples
from tests.store.helpers import Faults, inject_apply_fault

ROUTER_TOKEN = "router-token-0123456789"
PLATFORM_TOKEN = "platform-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
METERS = (
    Meter("router.requests", Aggregation.COUNT, ("app",)),
    Meter("dyno.seconds", Aggregation.SUM, ("size",)),
    Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user"),
)
PRODUCERS = (
    Producer("router", ROUTER_TOKEN, frozenset({"router.requests"})),
    Producer("platform", PLATFORM_TOKEN),
)
MAX_FRAME = 4096
MAX_BATCH = 40
WINDOW = 4


def make_config(
    where: Path,
    *,
    window: int = WINDOW,
    host: str = "127.0.0.1",
    tls: Tls | None = None,
    max_in_flight_events: int = 20_000,
    keepalive: tuple[float, float] = (30.0, 30.0),
) -> Config:
    return Config(
        path=where / "config.toml",
        ingest=IngestConfig(
            Listen(host, 0),
            tls_cert=tls.cert if tls else None,
            tls_key=tls.key if tls else None,
            max_frame_bytes=MAX_FRAME,
            max_batch=MAX_BATCH,
            window=window,
            max_in_flight_events=max_in_flight_events,
            keepalive_interval=Duration(round(keepalive[0] * 1000)),
            keepalive_timeout=Duration(round(keepalive[1] * 1000)),
        ),
        api=ApiConfig(Listen("127.0.0.1", 0), admin_token=ADMIN_TOKEN),
        store=StoreConfig(where / "meterd.sqlite3"),
        producers=PRODUCERS,
        meters=METERS,
    )


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Services]:
    services = build(config)
    try:
        with trio.fail_after(30):  # a safety net against a hang, not a timing assertion
            async with trio.open_nursery() as nursery:
                await nursery.start(services.root.run)
                yield services
                services.root.stop()
    finally:
        await services.store.aclose()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with running(make_config(tmp_path)) as services:
        yield services


def now_ms() -> int:
    return time.time_ns() // 1_000_000


T0 = now_ms() - 10 * MINUTE_MS  # one time for every event: a re-sent event is identical


def ev(id: Any, account: Any = "acme", meter: Any = "router.requests", **fields: Any) -> Any:
    event: dict[str, Any] = {"id": id, "account": account, "meter": meter}
    event["time"] = fields.pop("time", T0)
    event.update(fields)
    return event


def auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


@dataclass
class Client:
    """A producer speaking the protocol by hand over a raw trio-websocket connection."""

    ws: WebSocketConnection
    hello: dict[str, Any]
    received: list[dict[str, Any]] = field(default_factory=list)
    _progress: trio.Event = field(default_factory=trio.Event)

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(msgpack.packb(frame))

    async def batch(self, seq: int, events: list[Any]) -> None:
        await self.send({"type": "batch", "seq": seq, "events": events})

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = msgpack.unpackb(await self.ws.get_message(), raw=False)
        return frame

    async def ack(self, seq: int) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == "ack", frame
        assert frame["seq"] == seq, frame
        return frame

    async def error(self, code: str) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == "error", frame
        assert frame["code"] == code, frame
        assert isinstance(frame["message"], str)
        assert set(frame) == {"type", "code", "message"}
        return frame

    async def close_code(self) -> int:
        with pytest.raises(ConnectionClosed) as closed:
            await self.ws.get_message()
        assert closed.value.reason is not None
        return closed.value.reason.code

    async def collect(self) -> None:
        """Append every frame received to ``received`` until the connection closes."""
        try:
            while True:
                self.received.append(await self.recv())
                self._progress.set()
                self._progress = trio.Event()
        except ConnectionClosed:
            self._progress.set()

    async def wait_for(self, count: int) -> None:
        """Wait until ``collect`` has received ``count`` frames (or the connection closed)."""
        while len(self.received) < count and self.ws.closed is None:
            await self._progress.wait()


@asynccontextmanager
async def connect(
    services: Services, token: str = PLATFORM_TOKEN, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Client]:
    async with open_websocket(
        "127.0.0.1",
        services.ingest.port,
        "/v1/ingest",
        use_ssl=ssl_context or False,
        extra_headers=auth(token),
    ) as ws:
        hello: dict[str, Any] = msgpack.unpackb(await ws.get_message(), raw=False)
        yield Client(ws, hello)


async def total(services: Services, account: str, meter: str = "router.requests") -> str:
    """The account's usage of ``meter`` over the last days, through ``Accounts.usage``."""
    now = now_ms()
    rows = await services.accounts.usage(
        account, services.accounts.meters[meter], now - 40 * DAY_MS, now + DAY_MS, Window.DAY
    )
    value: Decimal | int = 0
    for row in rows:
        value = EXACT.add(value, row.value)  # the default context would round
    return canonical_quantity(value)


class Gate:
    """Stands in for ``Accounts.submit``: records each batch and holds back the report of
    its commit until released. The batch itself reaches the store writer at once, in the
    order it was read, so holding a report changes when a batch is acknowledged, never
    what its verdicts are."""

    def __init__(
        self,
        real: Callable[..., None],
        *,
        hold: int = 10**9,
    ) -> None:
        self.real = real
        self.hold = hold  # how many batches (the first ones) have their report held
        self.calls: list[tuple[str, list[str]]] = []  # (account, ids) of each group
        self.batches = 0
        self.waiting = 0  # batches held: submitted, not reported
        self.returned = 0  # batches reported (durable, verdicts known)
        self.released = trio.Event()
        self._held: list[tuple[Callable[[Any], None], Any]] = []
        self._progress = trio.Event()

    def submit(
        self,
        groups: list[tuple[str, list[Event]]],
        on_done: Callable[[Any], None],
        **audit: Any,
    ) -> None:
        self.calls.extend((account, [event.id for event in events]) for account, events in groups)
        self.batches += 1
        held = self.batches <= self.hold
        if held:
            self.waiting += 1
            self._tick()

        def report(outcome: Any) -> None:
            if held and not self.released.is_set():
                self._held.append((on_done, outcome))
            else:
                self._report(on_done, outcome, held)

        self.real(groups, report, **audit)

    def _report(self, on_done: Callable[[Any], None], outcome: Any, held: bool) -> None:
        if held:
            self.waiting -= 1
        on_done(outcome)
        self.returned += 1
        self._tick()

    def release(self) -> None:
        self.released.set()
        held, self._held = self._held, []
        for on_done, outcome in held:
            self._report(on_done, outcome, True)

    def _tick(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._progress.wait()


async def until_given_back(budget: EventBudget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait until ``budget`` has every event back (``used == 0``): woken by each give,
    never by a timer (``running``'s fail_after bounds a hang)."""
    progress = [trio.Event()]

    def ticking(name: str) -> None:
        real = getattr(budget, name)

        def call(*args: Any) -> None:
            real(*args)
            progress[0].set()
            progress[0] = trio.Event()

        monkeypatch.setattr(budget, name, call)

    ticking("give")  # (forget() gives through it)
    ticking("give_for")
    while budget.used:
        await progress[0].wait()


@pytest.fixture
def gate(services: Services, monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate(services.accounts.submit)
    monkeypatch.setattr(services.accounts, "submit", gate.submit)
    return gate


# ---- handshake and hello ----------------------------------------------------------------------


async def test_hello_is_the_first_frame(services: Services) -> None:
    async with connect(services) as client:
        assert client.hello == {
            "type": "hello",
            "protocol": 1,
            "server": f"meterd/{__version__}",
            "max_frame_bytes": MAX_FRAME,
            "max_batch": MAX_BATCH,
            "window": WINDOW,
        }


@pytest.mark.parametrize(
    "headers",
    [
        [],
        auth("not-a-token"),
        auth(ADMIN_TOKEN),  # the admin token is no producer's
        [(b"Authorization", f"Basic {PLATFORM_TOKEN}".encode())],
        [(b"Authorization", b"Bearer")],
        auth(PLATFORM_TOKEN) + auth(ROUTER_TOKEN),  # ambiguous
    ],
    ids=["missing", "wrong", "admin", "not-bearer", "empty", "two-headers"],
)
async def test_a_missing_or_wrong_token_is_refused_with_401(
    services: Services, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket(
            "127.0.0.1", services.ingest.port, "/v1/ingest", use_ssl=False, extra_headers=headers
        ):
            pytest.fail("the websocket opened")
    assert rejected.value.status_code == 401
    assert rejected.value.body is not None
    assert json.loads(rejected.value.body)["error"]["code"] == "unauthorized"
    assert services.ingest.stats.connections == 0
    assert services.ingest.stats.refused == 1
    assert services.ingest.stats.batches == 0


async def test_another_path_is_404(services: Services) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket(
            "127.0.0.1",
            services.ingest.port,
            "/v1/other",
            use_ssl=False,
            extra_headers=auth(PLATFORM_TOKEN),
        ):
            pytest.fail("the websocket opened")
    assert rejected.value.status_code == 404


async def test_the_token_never_reaches_the_logs(services: Services) -> None:
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(ConnectionRejected):
            async with open_websocket(
                "127.0.0.1",
                services.ingest.port,
                "/v1/ingest",
                use_ssl=False,
                extra_headers=auth("secret-guess-123"),
            ):
                pass
        async with connect(services) as client:
            await client.batch(1, [ev("t1")])
            await client.ack(1)
    text = repr(logs)
    assert "secret-guess-123" not in text
    assert PLATFORM_TOKEN not in text
    assert any(line.get("producer") == "platform" for line in logs)


# ---- batches and acks ---------------------------------------------------------------------------


async def test_batches_are_acknowledged_and_counted_end_to_end(services: Services) -> None:
    async with connect(services) as client:
        await client.batch(1, [ev(f"r{i}", account="acme") for i in range(5)])
        await client.batch(
            2,
            [ev(f"g{i}", account="globex.io") for i in range(3)]
            + [
                ev("d1", meter="dyno.seconds", quantity="1.5", properties={"size": "std-1x"}),
                ev("d2", meter="dyno.seconds", quantity="2.25"),
                ev("d3", meter="dyno.seconds", quantity=3),
                ev("d4", meter="dyno.seconds", quantity="0.000000000000000000000000000001"),
            ],
        )
        await client.batch(7, [ev("r0", account="acme"), ev("r5", account="acme")])
        assert await client.ack(1) == {
            "type": "ack",
            "seq": 1,
            "accepted": 5,
            "duplicates": 0,
            "rejected": [],
        }
        assert (await client.ack(2))["accepted"] == 7
        third = await client.ack(7)
        assert (third["accepted"], third["duplicates"]) == (1, 1)
    assert await total(services, "acme") == "6"
    assert await total(services, "globex.io") == "3"
    assert await total(services, "acme", "dyno.seconds") == "6.750000000000000000000000000001"
    stats = services.ingest.stats
    assert (stats.batches, stats.acks, stats.accepted, stats.duplicates) == (3, 3, 13, 1)


async def test_duplicates_and_id_conflicts_on_any_connection(services: Services) -> None:
    async with connect(services) as first:
        await first.batch(
            1,
            [
                ev("a", meter="dyno.seconds", quantity="1"),
                ev("b", meter="dyno.seconds", quantity="2"),
                ev("c"),
            ],
        )
        await first.ack(1)
    async with connect(services) as second:
        await second.batch(
            5,
            [
                ev("a", meter="dyno.seconds", quantity="1.00"),  # the same amount: a duplicate
                ev("b", meter="dyno.seconds", quantity="3"),  # different: a conflict
                ev("c", quantity=99),  # count meters ignore the quantity: a duplicate
                ev("e", meter="dyno.seconds", quantity="4"),
            ],
        )
        ack = await second.ack(5)
    assert (ack["accepted"], ack["duplicates"]) == (1, 2)
    [conflict] = ack["rejected"]
    assert conflict["index"] == 1
    assert conflict["id"] == "b"
    assert conflict["code"] == "id_conflict"
    assert "different" in conflict["message"]
    assert await total(services, "acme", "dyno.seconds") == "7"
    assert await total(services, "acme") == "1"


def _rejection_rows(now: int) -> list[tuple[Any, str, str]]:
    """(event, code, a fragment of the message) for every §2.3 code but not_permitted and
    id_conflict (tested apart), several causes each."""
    dyno = "dyno.seconds"

    def without(key: str, **fields: Any) -> Any:
        event = ev("x", meter=dyno, quantity="1", **fields)
        del event[key]
        return event

    return [
        (without("id"), "invalid_id", "id is missing"),
        (ev(7), "invalid_id", "not an integer (7)"),
        (ev(""), "invalid_id", "empty"),
        (ev("i" * 201), "invalid_id", "201 characters"),
        (without("account"), "invalid_account", "account is missing"),
        (ev("a1", account="acme corp"), "invalid_account", "contains ' '"),
        (ev("a2", account="a" * 129), "invalid_account", "129 characters"),
        (ev("a3", account=["acme"]), "invalid_account", "not an array"),
        (without("meter"), "unknown_meter", "meter is missing"),
        (ev("m1", meter="dyno.secs"), "unknown_meter", "did you mean 'dyno.seconds'"),
        (ev("m2", meter=3), "unknown_meter", "not an integer"),
        (ev("q1", meter=dyno, quantity=1.5), "invalid_quantity", "float"),
        (ev("q2", meter=dyno, quantity="abc"), "invalid_quantity", "not a decimal"),
        (ev("q3", meter=dyno, quantity="-1"), "invalid_quantity", ">= 0"),
        (ev("q4", meter=dyno, quantity=-1), "invalid_quantity", ">= 0"),
        (ev("q5", meter=dyno, quantity="NaN"), "invalid_quantity", "not a finite"),
        (ev("q6", meter=dyno, quantity="Infinity"), "invalid_quantity", "not a finite"),
        (ev("q7", meter=dyno, quantity="1" * 41), "invalid_quantity", "41 digits"),
        (ev("q8", meter=dyno, quantity="1" * 65), "invalid_quantity", "65 characters"),
        (ev("q9", meter=dyno), "invalid_quantity", "quantity is missing"),
        (ev("q10", meter=dyno, quantity=True), "invalid_quantity", "boolean"),
        (ev("q11", meter=dyno, quantity="1 000"), "invalid_quantity", "not a decimal"),
        (ev("t1", time="2026-11-25T00:00:00Z"), "invalid_time", "not a string"),
        (ev("t2", time=float(now)), "invalid_time", "float"),
        (without("time"), "invalid_time", "time is missing"),
        (ev("t3", time=now + 10 * MINUTE_MS), "time_out_of_range", "in the future"),
        (ev("t4", time=now - 36 * DAY_MS), "time_out_of_range", "older than late_window"),
        (ev("t5", time=now // 1000), "time_out_of_range", "looks like seconds"),
        (ev("p1", properties=["a"]), "invalid_properties", "map of string to string"),
        (
            ev("p2", properties={f"k{i}": "v" for i in range(17)}),
            "invalid_properties",
            "17 entries",
        ),
        (ev("p3", properties={"k": 1}), "invalid_properties", "must be a string"),
        (ev("p4", properties={"k" * 65: "v"}), "invalid_properties", "65 characters"),
        (ev("p5", properties={"k": "v" * 257}), "invalid_properties", "257 characters"),
        (ev("p6", properties={1: "v"}), "invalid_properties", "keys must be strings"),
        (["not", "a", "map"], "invalid_event", "must be a map"),
        ("event", "invalid_event", "must be a map"),
        (ev("e1", qty=1), "invalid_event", "did you mean 'quantity'"),
        ({**ev("e2"), 1: "x"}, "invalid_event", "keys are strings"),
    ]


async def test_every_rejection_code_names_the_field_and_why(services: Services) -> None:
    now = now_ms()
    rows = _rejection_rows(now)
    good = [ev("ok1"), ev("ok2", meter="dyno.seconds", quantity="2.5")]
    events = [good[0], *(row[0] for row in rows), good[1]]
    assert len(events) <= MAX_BATCH
    async with connect(services) as client:
        await client.batch(1, events)
        ack = await client.ack(1)
    assert ack["accepted"] == 2
    assert ack["duplicates"] == 0
    assert [r["index"] for r in ack["rejected"]] == list(range(1, len(rows) + 1))
    for rejection, (event, code, fragment) in zip(ack["rejected"], rows, strict=True):
        assert set(rejection) == {"index", "id", "code", "message"}
        assert rejection["code"] == code, (event, rejection)
        assert fragment in rejection["message"], (event, rejection)
        event_id = event.get("id") if isinstance(event, dict) else None
        valid_id = isinstance(event_id, str) and 1 <= len(event_id) <= 200
        assert rejection["id"] == (event_id if valid_id else None), rejection
    codes = {rejection["code"] for rejection in ack["rejected"]}
    assert codes == set(REJECTION_CODES) - {"not_permitted", "id_conflict"}
    assert await total(services, "acme") == "1"  # a rejected event changes nothing
    assert await total(services, "acme", "dyno.seconds") == "2.5"


async def test_a_producer_may_write_only_its_meters(services: Services) -> None:
    async with connect(services, ROUTER_TOKEN) as client:
        await client.batch(
            1, [ev("n1", meter="dyno.seconds", quantity="1"), ev("n2", meter="router.requests")]
        )
        ack = await client.ack(1)
    assert ack["accepted"] == 1
    [rejection] = ack["rejected"]
    assert (rejection["index"], rejection["id"], rejection["code"]) == (0, "n1", "not_permitted")
    assert "'router' may not write meter 'dyno.seconds'" in rejection["message"]


async def test_the_time_window_ends_are_included(services: Services) -> None:
    now = now_ms()
    services.ingest.clock = lambda: now
    late = services.ingest.config.late_window.ms
    async with connect(services) as client:
        await client.batch(
            1,
            [
                ev("oldest", time=now - late),
                ev("too-old", time=now - late - 1),
                ev("newest", time=now + 5 * MINUTE_MS),
                ev("too-new", time=now + 5 * MINUTE_MS + 1),
            ],
        )
        ack = await client.ack(1)
    assert ack["accepted"] == 2
    assert [(r["id"], r["code"]) for r in ack["rejected"]] == [
        ("too-old", "time_out_of_range"),
        ("too-new", "time_out_of_range"),
    ]


# ---- connection faults (§2.4) -------------------------------------------------------------------


def _batch(seq: Any = 2, events: Any = None, **extra: Any) -> bytes:
    frame = {"type": "batch", "seq": seq, "events": [ev("f")] if events is None else events}
    frame.update(extra)
    data: bytes = msgpack.packb(frame)
    return data


FAULTS: list[tuple[str, str, bytes | str]] = [
    ("frame_too_large", "zeros", b"\x00" * (MAX_FRAME + 1)),
    ("frame_too_large", "batch", _batch(events=[ev("big", properties={"k": "v" * 250})] * 20)),
    ("malformed_frame", "text-frame", "{'type': 'batch'}"),
    ("malformed_frame", "not-msgpack", b"\xc1"),
    ("malformed_frame", "truncated", _batch()[:-3]),
    ("malformed_frame", "trailing-bytes", _batch() + b"\x00"),
    ("malformed_frame", "an-array", msgpack.packb([{"type": "batch"}])),
    ("malformed_frame", "a-string", msgpack.packb("batch")),
    ("malformed_frame", "bad-utf8", b"\x81\xa4type\xa2\xff\xfe"),
    ("unknown_type", "no-type", msgpack.packb({"seq": 2, "events": [ev("f")]})),
    ("unknown_type", "ack", msgpack.packb({"type": "ack", "seq": 2})),
    ("unknown_type", "unknown", msgpack.packb({"type": "batches", "seq": 2})),
    ("unknown_type", "int-type", msgpack.packb({"type": 1})),
    ("bad_batch", "same-seq", _batch(seq=1)),
    ("bad_batch", "lower-seq", _batch(seq=0)),
    ("bad_batch", "negative-seq", _batch(seq=-1)),
    ("bad_batch", "text-seq", _batch(seq="2")),
    ("bad_batch", "float-seq", _batch(seq=2.0)),
    ("bad_batch", "no-seq", msgpack.packb({"type": "batch", "events": [ev("f")]})),
    ("bad_batch", "events-not-a-list", _batch(events={"id": "f"})),
    ("bad_batch", "no-events", msgpack.packb({"type": "batch", "seq": 2})),
    ("bad_batch", "empty", _batch(events=[])),
    ("bad_batch", "over-max-batch", _batch(events=[ev(f"f{i}") for i in range(MAX_BATCH + 1)])),
]


@pytest.mark.parametrize(
    ("code", "frame"), [(c, f) for c, _, f in FAULTS], ids=[n for _, n, _ in FAULTS]
)
async def test_a_connection_fault_sends_error_then_closes(
    services: Services, code: str, frame: bytes | str
) -> None:
    if code == "frame_too_large":
        assert len(frame) > MAX_FRAME
    async with connect(services) as client:
        await client.batch(1, [ev("before")])
        await client.ws.send_message(frame)  # before the ack of seq 1 came back
        await client.ack(1)  # what was read before the fault is acknowledged first
        error = await client.error(code)
        assert await client.close_code() == FAULT_CLOSE_CODES[code]
    assert error["message"]
    assert services.ingest.stats.faults[code] == 1
    assert await total(services, "acme") == "1"  # acknowledged before the error: counted
    async with connect(services) as again:  # the server is fine
        await again.batch(1, [ev("after")])
        await again.ack(1)


async def test_a_frame_of_exactly_max_frame_bytes_passes(services: Services) -> None:
    """The limit is inclusive; one byte more is frame_too_large (extra batch keys are ignored)."""
    event = ev("fits")
    filler = MAX_FRAME - len(_batch(seq=1, events=[event], pad=""))
    filler -= len(_batch(seq=1, events=[event], pad="p" * filler)) - MAX_FRAME  # str header
    frame = _batch(seq=1, events=[event], pad="p" * filler)
    assert len(frame) == MAX_FRAME
    async with connect(services) as client:
        await client.ws.send_message(frame)
        await client.ack(1)
        await client.ws.send_message(_batch(seq=2, events=[ev("fits")], pad="p" * (filler + 1)))
        await client.error("frame_too_large")
        assert await client.close_code() == 1009


# ---- pipelining, order, backpressure ---------------------------------------------------------


async def test_acks_come_in_seq_order_when_batches_finish_out_of_order(
    services: Services, gate: Gate
) -> None:
    gate.hold = 1  # the first call (batch 1's) waits; the others go through
    async with connect(services) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.collect)
        await client.batch(1, [ev("s1", account="slow")])
        await client.batch(2, [ev("f1", account="fast")])
        await client.batch(3, [ev("f2", account="faster")])
        await gate.until(lambda: gate.returned == 2)  # batches 2 and 3 are durable
        await trio.testing.wait_all_tasks_blocked()
        assert client.received == []  # ... but not acknowledged before batch 1
        gate.release()
        await gate.until(lambda: gate.returned == 3)
        await client.wait_for(3)
        assert [frame["seq"] for frame in client.received] == [1, 2, 3]
        await client.ws.aclose()


async def test_the_server_stops_reading_when_window_batches_are_unacknowledged(
    services: Services, gate: Gate
) -> None:
    async with connect(services) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.collect)
        for seq in range(1, WINDOW + 4):
            await client.batch(seq, [ev(f"w{seq}", account=f"acct{seq}")])
        await gate.until(lambda: gate.waiting == WINDOW)
        await trio.testing.wait_all_tasks_blocked()
        assert len(gate.calls) == WINDOW  # the frames after the window were not read
        assert services.ingest.stats.batches == WINDOW
        assert client.received == []
        gate.release()
        await client.wait_for(WINDOW + 3)
        assert [frame["seq"] for frame in client.received] == list(range(1, WINDOW + 4))
        assert services.ingest.stats.batches == WINDOW + 3
        await client.ws.aclose()


async def test_a_spent_in_flight_budget_stops_reading_on_every_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon-wide budget (3 events here) counts events read and not yet applied:
    once it is spent no connection is read, whatever its window; acks free it."""
    async with running(make_config(tmp_path, max_in_flight_events=3)) as services:
        gate = Gate(services.accounts.submit)
        monkeypatch.setattr(services.accounts, "submit", gate.submit)
        async with (
            connect(services) as one,
            connect(services) as two,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(one.collect)
            nursery.start_soon(two.collect)
            for seq in (1, 2, 3):
                await one.batch(seq, [ev(f"a{seq}"), ev(f"b{seq}", account="globex.io")])
                await two.batch(seq, [ev(f"c{seq}"), ev(f"d{seq}", account="initech")])
            await gate.until(lambda: gate.waiting >= 2)
            await trio.testing.wait_all_tasks_blocked()
            # A batch is admitted whole while fewer than 3 events are in flight: 2, then
            # 2 more (4), and perhaps one more taken by the other connection before it
            # saw the budget spent; then nothing is read, on either connection.
            budget = services.accounts.budget
            assert budget.full
            assert services.ingest.stats.batches in (2, 3)
            assert budget.used >= 2 * services.ingest.stats.batches  # (+ delivered, unapplied)
            assert budget.waits >= 1
            gate.release()
            await one.wait_for(3)
            await two.wait_for(3)
            await one.ws.aclose()
            await two.ws.aclose()
        assert [frame["accepted"] for frame in one.received + two.received] == [2] * 6
        assert services.ingest.stats.batches == 6
        assert await total(services, "acme") == "6"
        # An ack is sent at commit, before the actors apply: wait until the other two
        # accounts' actors applied the last batches, which is what frees their share of the
        # budget. (Not wait_all_tasks_blocked: an actor that wakes replays the journal in a
        # thread, and a task waiting for a thread counts as blocked.)
        await until_given_back(services.accounts.budget, monkeypatch)
        assert services.accounts.budget.used == 0


async def test_a_batch_is_one_durable_operation_grouped_by_account(
    services: Services, gate: Gate
) -> None:
    accounts = ["acme", "globex.io", "user:42@initech"]
    events = [ev(f"e{i}", account=accounts[i % 3]) for i in range(9)]
    async with connect(services) as client:
        await client.batch(1, events)
        await gate.until(lambda: gate.waiting == 1)  # one submission for the whole batch
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(gate.calls) == [
            ("acme", ["e0", "e3", "e6"]),
            ("globex.io", ["e1", "e4", "e7"]),
            ("user:42@initech", ["e2", "e5", "e8"]),
        ]
        assert gate.batches == 1
        gate.release()
        ack = await client.ack(1)
    assert ack["accepted"] == 9
    assert services.store.writer.stats.batches == 1  # one writer operation, all accounts
    for account in accounts:
        assert await total(services, account) == "3"


async def test_the_first_sent_copy_of_an_id_wins_on_a_connection(
    services: Services, gate: Gate
) -> None:
    gate.hold = 1
    async with connect(services) as client, trio.open_nursery() as nursery:
        nursery.start_soon(client.collect)
        await client.batch(1, [ev("x", meter="dyno.seconds", quantity="1")])
        await client.batch(
            2,
            [
                ev("x", meter="dyno.seconds", quantity="2"),
                ev("y", meter="dyno.seconds", quantity="10"),
            ],
        )
        await client.batch(3, [ev("z", account="other", meter="dyno.seconds", quantity="5")])
        # Batches 2 and 3 are decided while batch 1's outcome is still held back: the
        # writer took the batches in the order they were sent.
        await gate.until(lambda: gate.returned == 2)
        await trio.testing.wait_all_tasks_blocked()
        assert client.received == []  # nothing acknowledged before batch 1
        gate.release()
        await client.wait_for(3)
        await client.ws.aclose()
    first, second, third = client.received
    assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]
    assert first["accepted"] == 1
    assert second["accepted"] == 1
    assert [(r["index"], r["id"], r["code"]) for r in second["rejected"]] == [
        (0, "x", "id_conflict")
    ]
    assert third["accepted"] == 1
    assert await total(services, "acme", "dyno.seconds") == "11"


# ---- failures and shutdown -------------------------------------------------------------------


async def test_an_actor_crash_after_the_commit_loses_nothing_and_counts_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack means durable; the actor applies committed events after it. An actor that
    crashes while applying them is restarted and replays them from the journal."""
    crashed: list[str] = []

    def crash_once(event: Event) -> None:
        if event.id == "boom" and not crashed:
            crashed.append(event.id)
            raise RuntimeError("injected")

    inject_apply_fault(monkeypatch, crash_once)
    retry = [ev("boom"), ev("fine", account="globex.io")]
    async with connect(services) as client:
        await client.batch(1, [ev("ok")])
        await client.ack(1)
        await client.batch(2, retry)
        ack = await client.ack(2)  # durable before the actor crashed applying it
        assert (ack["accepted"], ack["duplicates"]) == (2, 0)
        await client.batch(3, retry)  # a producer re-sending it anyway
        again = await client.ack(3)
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert crashed == ["boom"]
    assert await total(services, "acme") == "2"
    assert await total(services, "globex.io") == "1"
    assert _restarts(services, "ingest") == 0


async def test_a_failed_commit_is_unavailable_and_nothing_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []

    def fail_once() -> None:
        if not failures:
            failures.append("commit")
            raise sqlite3.OperationalError("disk I/O error (injected)")

    # The fault is injected from outside: the daemon's writer opens a faulty connection.
    faults = Faults()
    opened = schema.open_database
    monkeypatch.setattr(
        store_writer,
        "open_database",
        lambda *args, **options: opened(*args, **{**options, "factory": faults.connection_class()}),
    )
    async with running(make_config(tmp_path)) as services:
        async with connect(services) as client:
            await client.batch(1, [ev("ok")])
            await client.ack(1)
            faults.before_commit = fail_once
            retry = [ev("lost"), ev("fine", account="globex.io")]
            await client.batch(2, retry)
            error = await client.error("unavailable")
            assert await client.close_code() == 1011
        assert "seq 2" in error["message"]
        assert "re-send" in error["message"]
        assert "disk I/O error" in error["message"]
        assert failures == ["commit"]
        assert services.accounts.budget.used == 0  # the failed batch gave its budget back
        async with connect(services) as client:  # the producer re-sends on a new connection
            await client.batch(1, retry)
            ack = await client.ack(1)
        assert (ack["accepted"], ack["duplicates"]) == (2, 0)  # nothing of it was written before
        assert await total(services, "acme") == "2"
        assert await total(services, "globex.io") == "1"
        assert _restarts(services, "ingest") == 0


async def test_a_failure_preparing_an_ack_ends_the_batch_unavailable_not_hung(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack is built in the writer's commit callback: a bug there must still end the
    batch (``unavailable``), give its budget back and leave the server serving."""
    import meterd.ingest.server as server_module

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("injected ack bug")

    monkeypatch.setattr(server_module, "ack_frame", broken)
    async with connect(services) as client:
        await client.batch(1, [ev("a1")])
        error = await client.error("unavailable")
        assert await client.close_code() == 1011
    assert "injected ack bug" in error["message"]
    assert services.accounts.budget.used == 0
    monkeypatch.undo()
    async with connect(services) as client:  # re-sent: it was durable, so a duplicate
        await client.batch(1, [ev("a1")])
        ack = await client.ack(1)
    assert (ack["accepted"], ack["duplicates"]) == (0, 1)
    assert await total(services, "acme") == "1"


async def test_shutdown_acknowledges_what_was_read_then_closes(
    services: Services, gate: Gate
) -> None:
    async with connect(services) as client:
        await client.batch(1, [ev("s1")])
        await client.batch(2, [ev("s2", account="globex.io")])
        await gate.until(lambda: gate.waiting == 2)
        services.root.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert services.ingest.stopping
        with pytest.raises(HandshakeError):  # no longer accepting
            async with connect(services):
                pass
        gate.release()
        await client.ack(1)
        await client.ack(2)
        await client.error("shutting_down")
        assert await client.close_code() == 1001
    assert services.ingest.stats.accepted == 2


def _restarts(services: Services, name: str) -> int:
    tree = sv.snapshot(services.root)
    [node] = [child for child in tree["children"] if child["name"] == name]
    restarts: int = node["restarts"]
    return restarts


# ---- TLS and listening -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(where / "key.pem"),
            "-out",
            str(where / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return Tls(where / "cert.pem", where / "key.pem")


async def test_tls_serves_wss_only(tmp_path: Path, certificate: Tls) -> None:
    async with running(make_config(tmp_path, tls=certificate)) as services:
        assert services.ingest.url.startswith("wss://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(certificate.cert))
        async with connect(services, ssl_context=trusted) as client:
            assert client.hello["type"] == "hello"
            await client.batch(1, [ev("tls")])
            await client.ack(1)
        # A plaintext upgrade request to the TLS port: refused, the socket closed. (A
        # trio-websocket client would wait for its connect timeout: it is told nothing.)
        stream = await trio.open_tcp_stream("127.0.0.1", services.ingest.port)
        await stream.send_all(
            b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            + b"Authorization: Bearer "
            + PLATFORM_TOKEN.encode()
            + b"\r\n\r\n"
        )
        answer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some():
                answer += chunk
        await stream.aclose()
        assert b"HTTP/1.1" not in answer
        assert await total(services, "acme") == "1"


async def test_a_plaintext_non_loopback_listener_warns(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running(make_config(tmp_path, host="0.0.0.0")):
            pass
    [warning] = [line for line in logs if line["event"] == "ingest_plaintext"]
    assert warning["log_level"] == "warning"


# ---- garbage never hurts ------------------------------------------------------------------------


@dataclass
class Threaded:
    """The daemon running in its own thread (its own Trio run) for the hypothesis test."""

    services: Services
    token: trio.lowlevel.TrioToken
    sent: list[int] = field(default_factory=lambda: [0])  # bystander events acknowledged


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Threaded]:
    services = build(make_config(tmp_path_factory.mktemp("garbage"), window=2))
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(services.root.run)
                box["token"] = trio.lowlevel.current_trio_token()
                started.set()
        finally:
            await services.store.aclose()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as error:
            box["error"] = error
            started.set()

    thread = threading.Thread(target=run, name="meterd-under-test", daemon=True)
    thread.start()
    assert started.wait(30), "the daemon did not start"
    assert "error" not in box, box.get("error")
    yield Threaded(services, box["token"])
    trio.from_thread.run_sync(services.root.stop, trio_token=box["token"])
    thread.join(30)
    assert "error" not in box, box.get("error")


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=20,
)
_accounts = st.text(alphabet="abc.:_-", min_size=1, max_size=8) | _values.filter(
    lambda value: not (isinstance(value, str) and "@" in value)
)  # the bystander's account has an '@': garbage never touches it
_garbage_events = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=6) | _values,
        "account": _accounts,
        "meter": st.sampled_from([m.name for m in METERS]) | _values,
        "quantity": st.integers(-2, 2**64 - 1) | st.decimals(allow_nan=True).map(str) | _values,
        "time": st.just("now") | _values,
        "properties": st.dictionaries(st.text(max_size=3), st.text(max_size=3)) | _values,
        "extra": _values,
    },
)
_likely_events = st.fixed_dictionaries(  # mostly valid: the accounts layer sees them
    {
        "id": st.text(min_size=1, max_size=4),
        "account": st.text(alphabet="abc", min_size=1, max_size=2),
        "meter": st.sampled_from([m.name for m in METERS]),
        "time": st.just("now"),
    },
    optional={
        "quantity": st.integers(0, 10**6) | st.decimals(0, 10**6, places=3).map(str) | _values,
        "properties": st.dictionaries(st.sampled_from(["user", "size"]), st.text(max_size=3)),
    },
)
_events = _likely_events | _garbage_events | _values
_batches = st.fixed_dictionaries(
    {"type": st.just("batch")},
    optional={
        "seq": st.integers(-2, 12) | _values,
        "events": st.lists(_events, min_size=0, max_size=MAX_BATCH + 2) | _values,
        "more": _values,
    },
)
_good_batches = st.fixed_dictionaries(  # a well-formed envelope, whatever the events hold
    {
        "type": st.just("batch"),
        "seq": st.integers(0, 12),
        "events": st.lists(_events, min_size=1, max_size=MAX_BATCH),
    }
)


def _now_times(value: Any, now: int) -> Any:
    if isinstance(value, dict):
        return {
            k: (now if v == "now" and k == "time" else _now_times(v, now)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_now_times(v, now) for v in value]
    return value


def _packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value)
    return data


_garbage_frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=16),
    _values.map(_packed),
    st.dictionaries(st.text(max_size=6), _values, max_size=4).map(_packed),
    st.builds(lambda kind: _packed({"type": kind}), _values | st.sampled_from(["ack", "hello"])),
    _batches.map(lambda batch: _now_times(batch, now_ms())).map(_packed),
    st.integers(1, 5000).map(lambda depth: b"\x91" * depth + b"\xc0"),
    st.integers(1, 3000).map(lambda depth: b"\x81\xa1k" * depth + b"\xc0"),
    st.sampled_from([b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]),
    st.integers(MAX_FRAME + 1, MAX_FRAME + 100).map(lambda size: b"\x80" * size),
)
_frames = (  # half of the frames are well-formed batches, so that sessions get past the first
    _good_batches.map(lambda batch: _now_times(batch, now_ms())).map(_packed) | _garbage_frames
)


def _unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def _expected_fault(frame: bytes | str, last_seq: int) -> tuple[str | None, int]:
    """Protocol.md §2.4 restated: the fault this frame causes (or None) and the seq after it."""
    if isinstance(frame, str):
        return "malformed_frame", last_seq
    if len(frame) > MAX_FRAME:
        return "frame_too_large", last_seq
    try:
        value = _unpack(frame)
    except Exception:
        return "malformed_frame", last_seq
    if not isinstance(value, dict):
        return "malformed_frame", last_seq
    if value.get("type") != "batch":
        return "unknown_type", last_seq
    seq, events = value.get("seq"), value.get("events")
    if type(seq) is not int or seq <= last_seq or seq < 0:
        return "bad_batch", last_seq
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        return "bad_batch", last_seq
    return None, seq


async def _garbage_session(threaded: Threaded, frames: list[bytes | str], example: int) -> None:
    port = threaded.services.ingest.port
    expected_acks: list[tuple[int, int]] = []  # (seq, number of events)
    fault: str | None = None
    last_seq = -1
    for frame in frames:
        fault, last_seq_after = _expected_fault(frame, last_seq)
        if fault is not None:
            break
        assert isinstance(frame, bytes)
        expected_acks.append((last_seq_after, len(_unpack(frame)["events"])))
        last_seq = last_seq_after

    async def garbage() -> None:
        async with open_websocket(
            "127.0.0.1", port, "/v1/ingest", use_ssl=False, extra_headers=auth(PLATFORM_TOKEN)
        ) as ws:
            client = Client(ws, msgpack.unpackb(await ws.get_message()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.collect)
                for frame in frames:
                    try:
                        await ws.send_message(frame)
                    except ConnectionClosed:
                        break
                if fault is None:
                    await client.wait_for(len(expected_acks))
                    await ws.aclose()
            received = client.received
            acks, rest = received[: len(expected_acks)], received[len(expected_acks) :]
            for ack, (seq, size) in zip(acks, expected_acks, strict=True):
                assert (ack["type"], ack["seq"]) == ("ack", seq), ack
                assert ack["accepted"] + ack["duplicates"] + len(ack["rejected"]) == size
                indexes = [rejection["index"] for rejection in ack["rejected"]]
                assert indexes == sorted(set(indexes))
                assert all(0 <= index < size for index in indexes)
                assert {r["code"] for r in ack["rejected"]} <= set(REJECTION_CODES)
            if fault is None:
                assert rest == []
            else:
                [error] = rest
                assert (error["type"], error["code"]) == ("error", fault), error
                assert ws.closed is not None
                assert ws.closed.code == FAULT_CLOSE_CODES[fault]

    async def bystander() -> None:
        async with open_websocket(
            "127.0.0.1", port, "/v1/ingest", use_ssl=False, extra_headers=auth(ROUTER_TOKEN)
        ) as ws:
            client = Client(ws, msgpack.unpackb(await ws.get_message()))
            ids = [f"by{example}-{i}" for i in range(3)]
            await client.batch(1, [ev(id, account="by@stander") for id in ids])
            ack = await client.ack(1)
            assert (ack["accepted"], ack["duplicates"], ack["rejected"]) == (3, 0, [])
            threaded.sent[0] += 3

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage)
            nursery.start_soon(bystander)


_example_counter = [0]


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(_frames, min_size=1, max_size=4))
def test_garbage_never_crashes_the_server_nor_disturbs_others(
    threaded: Threaded, frames: list[bytes | str]
) -> None:
    _example_counter[0] += 1
    trio.run(_garbage_session, threaded, frames, _example_counter[0])
    stats = threaded.services.ingest.stats
    assert stats.failed == 0


def test_after_the_garbage_the_bystander_counts_are_exact(threaded: Threaded) -> None:
    async def check() -> str:
        return await total(threaded.services, "by@stander")

    counted = trio.from_thread.run(check, trio_token=threaded.token)
    assert counted == str(threaded.sent[0])
    assert (
        trio.from_thread.run_sync(_restarts, threaded.services, "ingest", trio_token=threaded.token)
        == 0
    )
    assert threaded.services.ingest.stats.failed == 0
