"""Keepalive: a silent producer is pinged; one that stops answering is dropped, one that
answers stays (meterd/ingest/server.py, ``keepalive``). Driven over an in-memory stream with
a hand-rolled wsproto client, on a mock clock: no real waiting. The accounts layer is a
stand-in that accepts every event at once (the daemon's start-up uses threads, which a
mock clock would race); the server under test is the real one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import structlog
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
)

from meterd.accounts.budget import EventBudget
from meterd.ingest import IngestServer
from meterd.store import AppendResult
from tests.ingest.test_server import PLATFORM_TOKEN, ev, make_config

INTERVAL, TIMEOUT = 1.0, 1.0


class AcceptAll:
    """The part of :class:`meterd.accounts.Accounts` the ingest server uses: every event
    accepted, at once."""

    def __init__(self) -> None:
        self.budget = EventBudget(1000)
        self.accepted = 0

    def submit(self, groups: Any, on_done: Any, **audit: Any) -> None:
        results = []
        for _account, events in groups:
            self.accepted += len(events)
            results.append(AppendResult(1, list(range(len(events))), [], []))
        on_done(results)


def serve(tmp_path: Path) -> tuple[IngestServer, AcceptAll]:
    accounts = AcceptAll()
    config = make_config(tmp_path, keepalive=(INTERVAL, TIMEOUT))
    return IngestServer(config, accounts), accounts


class RawProducer:
    """A websocket client that answers pings only when told to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = True
        self.pings = 0
        self.frames: list[dict[str, Any]] = []
        self.closed: CloseConnection | None = None
        self.accepted = trio.Event()
        self.got_frame = trio.Event()

    async def open(self) -> None:
        request = Request(
            host="meterd",
            target="/v1/ingest",
            extra_headers=[(b"authorization", f"Bearer {PLATFORM_TOKEN}".encode())],
        )
        await self.stream.send_all(self.ws.send(request))

    async def send_batch(self, seq: int, events: list[Any]) -> None:
        frame = msgpack.packb({"type": "batch", "seq": seq, "events": events})
        await self.stream.send_all(self.ws.send(BytesMessage(frame)))

    async def read(self) -> None:
        """Handle what the server sends until it closes."""
        while self.closed is None:
            data = await self.stream.receive_some()
            if not data:
                return
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.accepted.set()
                elif isinstance(event, BytesMessage):
                    self.frames.append(msgpack.unpackb(event.data))
                    self.got_frame.set()
                    self.got_frame = trio.Event()
                elif isinstance(event, Ping):
                    self.pings += 1
                    if self.answer_pings:
                        await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.closed = event


@asynccontextmanager
async def connected(
    server: IngestServer, *, answer_pings: bool
) -> AsyncIterator[tuple[RawProducer, trio.Nursery]]:
    """A :class:`RawProducer` connected to ``server`` over memory streams (past the
    handshake); the block ends once the server's handler and the producer's reader did."""
    client_end, server_end = trio.testing.memory_stream_pair()
    producer = RawProducer(client_end)
    producer.answer_pings = answer_pings
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle_stream, server_end)
        nursery.start_soon(producer.read)
        await producer.open()
        await producer.accepted.wait()
        yield producer, nursery


async def test_a_producer_that_stops_answering_pings_is_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server, accounts = serve(tmp_path)
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):  # virtual seconds
        async with connected(server, answer_pings=False) as (producer, _):
            await producer.send_batch(1, [ev("k1")])
            started = trio.current_time()
            # The handler returns on its own: the block ends only once it has.
    assert producer.frames[0]["type"] == "hello"
    assert producer.frames[1]["type"] == "ack"  # what was read is still acknowledged
    assert accounts.accepted == 1
    assert producer.pings == 1
    assert producer.closed is not None
    assert producer.closed.code == 1011
    # Silent for INTERVAL, then TIMEOUT for the pong, then at most TIMEOUT for the close.
    assert INTERVAL + TIMEOUT <= trio.current_time() - started <= INTERVAL + 2 * TIMEOUT + 0.1
    gone = [entry for entry in logs if entry["event"] == "ingest_peer_unresponsive"]
    assert len(gone) == 1
    assert gone[0]["unacknowledged"] == 0
    assert server.connection_count == 0


async def test_a_silent_producer_that_answers_pings_stays_connected(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server, _ = serve(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with connected(server, answer_pings=True) as (producer, nursery):
            await trio.sleep(10 * INTERVAL)  # virtual time: silent for ten intervals
            assert producer.closed is None
            assert producer.pings >= 5
            await producer.send_batch(1, [ev("s1")])
            while len(producer.frames) < 2:
                await producer.got_frame.wait()
            assert producer.frames[1]["type"] == "ack"
            assert producer.frames[1]["accepted"] == 1
            assert server.connection_count == 1
            nursery.cancel_scope.cancel()
    assert not [entry for entry in logs if entry["event"] == "ingest_peer_unresponsive"]


async def test_a_producer_that_stops_reading_its_acks_is_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A lockstep stream: the server's send blocks until the producer reads, and this one
    reads nothing after ``hello``."""
    server, accounts = serve(tmp_path)
    client_end, server_end = trio.testing.lockstep_stream_pair()
    producer = RawProducer(client_end)
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):  # virtual seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._handle_stream, server_end)
            await producer.open()
            while not producer.frames:  # the upgrade response, then hello
                producer.ws.receive_data(bytes(await client_end.receive_some()))
                for event in producer.ws.events():
                    if isinstance(event, BytesMessage):
                        producer.frames.append(msgpack.unpackb(event.data))
            await producer.send_batch(1, [ev("r1")])
            started = trio.current_time()
    assert producer.frames[0]["type"] == "hello"
    assert accounts.accepted == 1  # the batch was read and made durable, the ack not taken
    stuck = [entry for entry in logs if entry["event"] == "ingest_peer_not_reading"]
    assert len(stuck) == 1
    assert stuck[0]["seq"] == 1
    assert stuck[0]["unacknowledged"] == 1
    assert server.connection_count == 0
    # The ack waited INTERVAL + TIMEOUT; closing waits at most CLOSE_TIMEOUT more.
    assert INTERVAL + TIMEOUT <= trio.current_time() - started <= INTERVAL + TIMEOUT + 5.1


async def test_a_producer_slowly_sending_a_large_frame_is_not_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A pong cannot overtake a frame being sent: while a frame's bytes keep arriving the
    peer is alive, however long the frame takes (here 5 s against 1 s + 1 s)."""
    server, accounts = serve(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with connected(server, answer_pings=False) as (producer, nursery):
            frame = msgpack.packb(
                {"type": "batch", "seq": 1, "events": [ev(f"k{i}") for i in range(30)]}
            )
            data = producer.ws.send(BytesMessage(frame))
            chunk = -(-len(data) // 10)
            for start in range(0, len(data), chunk):  # 10 parts, one every 0.5 s
                await producer.stream.send_all(data[start : start + chunk])
                await trio.sleep(0.5)
            while len(producer.frames) < 2:
                await producer.got_frame.wait()
            assert producer.frames[1]["type"] == "ack"
            assert producer.frames[1]["accepted"] == 30
            assert producer.pings >= 2  # it was pinged while the frame trickled in
            assert producer.closed is None
            nursery.cancel_scope.cancel()
    assert accounts.accepted == 30
    assert not [entry for entry in logs if entry["event"] == "ingest_peer_unresponsive"]
