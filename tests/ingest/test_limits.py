"""What one producer can make the ingest server hold: the bytes of its acks (per connection
and daemon-wide) and its number of connections (meterd/ingest/server.py, ``acks held`` and
``connections per producer``; docs/ingest.md).

The byte bounds are checked on the server's own accounting (``_Connection.ack_held``,
:class:`~meterd.ingest.server.AckBytes`), over lockstep streams whose sends block until the
peer reads, like a full socket buffer towards a producer that does not read; whether the
accounting covers every ack is a property of :func:`~meterd.ingest.server.ack_bound`,
checked with hypothesis against :func:`~meterd.ingest.protocol.ack_frame`. "Nothing more is
read" is checked after ``wait_all_tasks_blocked`` on a clock that does not move."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import structlog
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket
from wsproto.events import BytesMessage, CloseConnection

from meterd.accounts.budget import EventBudget
from meterd.config import Config
from meterd.ingest import IngestServer
from meterd.ingest.protocol import ACK_FLOOR_BYTES, ack_frame
from meterd.ingest.server import _Slot, ack_bound
from meterd.ingest.validate import REJECTION_CODES, Rejection
from meterd.model import Event
from meterd.store import AppendResult, conflict_message
from tests.examples import examples
from tests.ingest.test_keepalive import AcceptAll, RawProducer, connected
from tests.ingest.test_server import (
    PLATFORM_TOKEN,
    ROUTER_TOKEN,
    auth,
    connect,
    ev,
    make_config,
    running,
)

FRAME = 65_536
PER_CONNECTION = 128 * 1024
EVENTS = 150  # per batch: ~48 KB frames whose acks are ~60 KB (every event rejected)


def limits_config(tmp_path: Path, **ingest: Any) -> Config:
    config = make_config(tmp_path, window=64)
    settings = {
        "max_frame_bytes": FRAME,
        "max_batch": 1000,
        "max_ack_bytes_per_connection": PER_CONNECTION,
        **ingest,
    }
    return dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, **settings))


def rejected_batch(seq: int) -> list[Any]:
    """``EVENTS`` events with 200-character ids and an invalid account: all rejected by
    validation, each rejection carrying its id and a message (the issue's 345 KB ack from a
    307 KB frame, smaller)."""
    return [ev(f"{seq:06d}-{n:04d}-" + "x" * 189, account="not an account!") for n in range(EVENTS)]


class HeldAccounts:
    """The part of :class:`meterd.accounts.Accounts` the ingest server uses: batches with
    events for an account are accepted when the test says (``commit_all``)."""

    def __init__(self) -> None:
        self.budget = EventBudget(1_000_000)
        self.held: list[tuple[Callable[[Any], None], list[AppendResult]]] = []

    def submit(self, groups: Any, on_done: Any, **audit: Any) -> None:
        results = [AppendResult(1, list(range(len(events))), [], []) for _, events in groups]
        self.held.append((on_done, results))

    def commit_all(self) -> None:
        held, self.held = self.held, []
        for on_done, results in held:
            on_done(results)


class Silent:
    """A producer over a lockstep stream that reads nothing after ``hello`` until told to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.producer = RawProducer(stream)

    async def open(self) -> dict[str, Any]:
        producer = self.producer
        await producer.open()
        while not producer.frames:  # the upgrade response, then the first frame
            producer.ws.receive_data(bytes(await producer.stream.receive_some()))
            for event in producer.ws.events():
                if isinstance(event, BytesMessage):
                    producer.frames.append(msgpack.unpackb(event.data))
                elif isinstance(event, CloseConnection):
                    producer.closed = event
        return producer.frames[0]

    async def send(self, batches: int, make: Callable[[int], list[Any]] = rejected_batch) -> None:
        for seq in range(1, batches + 1):
            await self.producer.send_batch(seq, make(seq))


@asynccontextmanager
async def silent(server: IngestServer) -> AsyncIterator[tuple[Silent, trio.Nursery]]:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    client = Silent(client_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle_stream, server_end)
        hello = await client.open()
        assert hello["type"] == "hello"
        yield client, nursery


def only_connection(server: IngestServer) -> Any:
    (connection,) = server._connections
    return connection


async def test_a_producer_that_never_reads_acks_cannot_make_the_server_hold_more(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Before the bound, the server read all 30 batches (``window`` is 64) and held their
    prepared acks, ~1.8 MB for a connection that takes none."""
    server = IngestServer(limits_config(tmp_path), HeldAccounts())
    async with silent(server) as (client, nursery):
        nursery.start_soon(client.send, 30)
        await trio.testing.wait_all_tasks_blocked()
        connection = only_connection(server)
        largest = max(FRAME, ACK_FLOOR_BYTES) + 1000 * 60  # one batch admitted whole
        assert server.stats.batches < 30  # it stopped reading...
        assert server.stats.ack_waits >= 1  # ...because of the acks it holds
        assert 0 < connection.ack_held <= PER_CONNECTION + largest
        assert connection.ack_held >= PER_CONNECTION  # (not the window: it holds 64)
        assert server.ack_bytes.used == connection.ack_held
        read_while_silent = server.stats.batches

        # It reads again as the producer takes its acks, and every ack comes.
        acks: list[dict[str, Any]] = []

        async def read_acks() -> None:
            producer = client.producer
            while len(acks) < 30:
                producer.ws.receive_data(bytes(await producer.stream.receive_some()))
                for event in producer.ws.events():
                    if isinstance(event, BytesMessage):
                        acks.append(msgpack.unpackb(event.data))

        await read_acks()
        assert [ack["seq"] for ack in acks] == list(range(1, 31))
        assert all(len(ack["rejected"]) == EVENTS for ack in acks)
        assert read_while_silent < server.stats.batches == 30
        await trio.testing.wait_all_tasks_blocked()
        assert connection.ack_held == server.ack_bytes.used == 0
        nursery.cancel_scope.cancel()


async def test_acks_held_daemon_wide_are_bounded_across_connections(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Three silent producers, each within its own limit: the daemon-wide one stops them."""
    total = 200 * 1024
    config = limits_config(tmp_path, max_ack_bytes=total, max_ack_bytes_per_connection=1 << 30)
    server = IngestServer(config, HeldAccounts())
    async with (
        silent(server) as (one, nursery),
        silent(server) as (two, _),
        silent(server) as (three, _),
    ):
        for client in (one, two, three):
            nursery.start_soon(client.send, 20)
        await trio.testing.wait_all_tasks_blocked()
        largest = max(FRAME, ACK_FLOOR_BYTES) + 1000 * 60
        assert server.stats.batches < 3 * 20
        assert server.ack_bytes.waits >= 1
        assert total <= server.ack_bytes.used <= total + 3 * largest  # one batch each
        assert server.ack_bytes.used == sum(c.ack_held for c in server._connections)
        assert server.stats.ack_waits == 0  # no connection was stopped by its own limit
        nursery.cancel_scope.cancel()
    assert server.ack_bytes.used == 0  # gone with their connections


async def test_producers_that_take_their_acks_are_read_while_others_fill_the_budget(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Two silent producers spend the daemon-wide budget; a third that reads its acks holds
    less than its share, so it is still read and acknowledged (before the shares, no
    connection was read at all: the silent ones held every other producer back)."""
    total = 200 * 1024
    config = limits_config(tmp_path, max_ack_bytes=total, max_ack_bytes_per_connection=1 << 30)
    server = IngestServer(config, AcceptAll())
    async with silent(server) as (one, nursery), silent(server) as (two, _):
        for client in (one, two):
            nursery.start_soon(client.send, 20)
        await trio.testing.wait_all_tasks_blocked()
        assert server.ack_bytes.used >= total  # spent by the two
        async with connected(server, answer_pings=True) as (polite, _):
            for seq in range(1, 6):
                await polite.send_batch(seq, [ev(f"p{seq}", meter="dyno.seconds", quantity=1)])
            await trio.testing.wait_all_tasks_blocked()
            assert [frame["type"] for frame in polite.frames] == ["hello"] + ["ack"] * 5
            assert [frame["accepted"] for frame in polite.frames[1:]] == [1] * 5
            assert server.ack_bytes.used >= total  # the silent ones are still held back
            nursery.cancel_scope.cancel()


async def test_a_batch_receives_its_outcome_as_a_value_and_the_ack_task_builds_its_ack(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """One direction: the connection submits the batch with its slot as the receiver of the
    outcome; the outcome is stored (and the budget given back) without calling back into
    the connection, and the ack task builds and sends the acks in ``seq`` order."""
    accounts = HeldAccounts()
    server = IngestServer(limits_config(tmp_path), accounts)

    def valid(seq: int) -> list[Any]:
        return [ev(f"v{seq}-{n}", meter="dyno.seconds", quantity=1) for n in range(5)]

    async with silent(server) as (client, nursery):
        await client.send(2, valid)
        await trio.testing.wait_all_tasks_blocked()
        assert accounts.budget.used == 10
        [(first, results1), (second, results2)] = accounts.held
        slot1, slot2 = first.__self__, second.__self__  # type: ignore[attr-defined]
        assert (type(slot1), slot1.seq, slot2.seq) == (_Slot, 1, 2)
        second(results2)  # committed out of order: a value, nothing built yet
        assert (slot2.outcome, slot2.ack, accounts.budget.used) == (results2, None, 5)
        await trio.testing.wait_all_tasks_blocked()
        assert slot2.ack is None  # the ack task waits for seq 1 first
        first(results1)
        await trio.testing.wait_all_tasks_blocked()
        assert slot1.ack is not None  # built, and being sent to a peer that does not read
        assert slot2.ack is None  # built only once ack 1 is sent: in seq order
        assert accounts.budget.used == 0
        nursery.cancel_scope.cancel()


async def test_acks_of_a_connection_that_ended_are_no_longer_counted(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Batches still in flight when their connection ends: their acks are never prepared,
    and the bytes counted for them are given back (nothing leaks)."""
    accounts = HeldAccounts()
    server = IngestServer(limits_config(tmp_path), accounts)

    def valid(seq: int) -> list[Any]:
        return [ev(f"v{seq}-{n}", meter="dyno.seconds", quantity=1) for n in range(5)]

    async with silent(server) as (client, nursery):
        await client.send(3, valid)
        await trio.testing.wait_all_tasks_blocked()
        assert len(accounts.held) == 3
        assert server.ack_bytes.used > 0
        await client.producer.stream.aclose()  # gone, with its batches in flight
        await trio.testing.wait_all_tasks_blocked()
        assert server.connection_count == 0
        assert server.ack_bytes.used == 0
        accounts.commit_all()  # the commits come after the connection ended
        assert server.ack_bytes.used == 0
        nursery.cancel_scope.cancel()


async def test_the_connection_over_a_producers_limit_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = dataclasses.replace(
        config, ingest=dataclasses.replace(config.ingest, max_connections_per_producer=2)
    )
    async with running(config) as services:
        with structlog.testing.capture_logs() as logs:
            async with connect(services) as one, connect(services) as two:
                async with open_websocket(
                    "127.0.0.1",
                    services.ingest.port,
                    "/v1/ingest",
                    use_ssl=False,
                    extra_headers=auth(PLATFORM_TOKEN),
                ) as third:
                    frame = msgpack.unpackb(await third.get_message())
                    with pytest.raises(ConnectionClosed) as closed:
                        await third.get_message()
                assert frame["type"] == "error"
                assert frame["code"] == "too_many_connections"
                assert "max_connections_per_producer" in frame["message"]
                assert "'platform'" in frame["message"]
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1008
                # Another producer is not limited by this one's connections...
                async with connect(services, ROUTER_TOKEN) as router:
                    assert router.hello["type"] == "hello"
                # ...and the two open ones work.
                await one.batch(1, [ev("c1")])
                await one.ack(1)
                await two.batch(1, [ev("c2")])
                await two.ack(1)
                await two.ws.aclose()
            # Once one is closed, a new one is welcome.
            async with connect(services) as again:
                assert again.hello["type"] == "hello"
        refused = [e for e in logs if e["event"] == "ingest_refused"]
        assert len(refused) == 1
        assert refused[0]["producer"] == "platform"
        assert refused[0]["limit"] == 2
        assert services.ingest.stats.faults["too_many_connections"] == 1
        assert services.ingest._by_producer == {}


# ---- the bound covers every ack ------------------------------------------------------------

ids = st.text(min_size=1, max_size=200)
account_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-",
    min_size=1,
    max_size=128,
)


@settings(max_examples=examples(500), deadline=None)
@given(
    rejected=st.lists(
        st.tuples(st.none() | ids, st.sampled_from(REJECTION_CODES), st.text(max_size=400)),
        max_size=40,
    ),
    valid=st.lists(st.tuples(account_names, ids), max_size=40),
    conflicts=st.data(),
    ack_cap=st.sampled_from([1024, ACK_FLOOR_BYTES]),
)
def test_the_bound_counted_for_a_batch_covers_its_ack(
    rejected: list[tuple[str | None, str, str]],
    valid: list[tuple[str, str]],
    conflicts: st.DataObject,
    ack_cap: int,
) -> None:
    size = len(rejected) + len(valid)
    if not size:
        return
    rejections = [
        Rejection(i, id_, code, message) for i, (id_, code, message) in enumerate(rejected)
    ]
    groups: dict[str, tuple[list[int], list[Event]]] = {}
    for position, (account, event_id) in enumerate(valid, start=len(rejected)):
        positions, events = groups.setdefault(account, ([], []))
        positions.append(position)
        events.append(Event(event_id, account, "m", Decimal(1), 0))
    frame = msgpack.packb(
        {
            "type": "batch",
            "seq": 1,
            "events": [{"id": id_ or 5, "account": "!"} for id_, _, _ in rejected]
            + [{"id": id_, "account": account} for account, id_ in valid],
        }
    )
    bound = ack_bound(len(frame), size, list(rejections), groups, ack_cap)
    # The writer may answer any valid event with an id_conflict.
    for account, (positions, events) in groups.items():
        for position, event in zip(positions, events, strict=True):
            if conflicts.draw(st.booleans()):
                rejections.append(
                    Rejection(
                        position, event.id, "id_conflict", conflict_message(account, event.id)
                    )
                )
    wire = [r.to_wire() for r in sorted(rejections, key=lambda r: r.index)]
    ack = ack_frame(2**62, size, size, wire, ack_cap)
    assert len(ack) <= bound
