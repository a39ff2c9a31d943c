"""The NATS connection over the bridge, against a real JetStream server: streams, publishes with
``Nats-Msg-Id``, ordered reads, cancellation, backpressure and reconnects."""

from __future__ import annotations

import re

import pytest
import structlog.testing
import trio
import trio.testing

from meterd.cluster import (
    AsyncioBridge,
    ClusterUnavailable,
    Connection,
    LogMessage,
    StreamMismatch,
    connect,
)
from tests.cluster.servers import NatsCluster, free_port, paused, until

STREAM = "USAGE"
SUBJECTS = ["usage.>"]


async def open_connection(
    bridge: AsyncioBridge, nats: NatsCluster, **options: float | int
) -> Connection:
    return await connect(bridge, nats.urls, name="test", **options)  # type: ignore[arg-type]


async def test_publish_and_read_back_one_subject_in_stream_order(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1)
    info = await conn.ensure_stream(STREAM, SUBJECTS)
    assert info.replicas == 1  # one server
    acks = []
    for i in range(30):
        subject = f"usage.p{i % 3}"
        acks.append(await conn.publish(subject, f"{subject}:{i}".encode(), msg_id=f"g1:c1:{i}"))
    assert [ack.seq for ack in acks] == list(range(1, 31))
    assert not any(ack.duplicate for ack in acks)

    async with conn.reader(STREAM, "usage.p1") as reader:
        got: list[LogMessage] = []
        while len(got) < 10:
            got += await reader.fetch(4, timeout=2)
        assert await reader.fetch(4, timeout=0.2) == []  # nothing more, nothing repeated
    assert [m.seq for m in got] == [ack.seq for ack in acks[1::3]]
    assert [m.data for m in got] == [f"usage.p1:{i}".encode() for i in range(1, 30, 3)]
    assert [m.msg_id for m in got] == [f"g1:c1:{i}" for i in range(1, 30, 3)]
    assert all(m.subject == "usage.p1" for m in got)
    assert all(isinstance(m.time_ms, int) and m.time_ms > 1_700_000_000_000 for m in got)

    # From a given stream sequence (the one after what an owner has applied):
    async with conn.reader(STREAM, "usage.p1", start_seq=got[6].seq) as reader:
        rest = await reader.fetch(100, timeout=2)
        assert [m.seq for m in rest] == [m.seq for m in got[6:]]
        assert reader.next_seq == got[-1].seq + 1
        # and what is published later, as it comes:
        later = await conn.publish("usage.p1", b"later", msg_id="g1:c1:later")
        assert [m.seq for m in await reader.fetch(100, timeout=2)] == [later.seq]


async def test_a_duplicate_publish_is_absorbed_and_reported(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS, duplicate_window=60)
    first = await conn.publish("usage.p0", b"slice", msg_id="g1:c7:s3:p0")
    other = await conn.publish("usage.p0", b"other", msg_id="g1:c7:s4:p0")
    again = await conn.publish("usage.p0", b"slice", msg_id="g1:c7:s3:p0")  # a retry
    assert not first.duplicate
    assert not other.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    info = await conn.stream_info(STREAM)
    assert info.messages == 2
    async with conn.reader(STREAM, "usage.p0") as reader:
        assert [m.data for m in await reader.fetch(10, timeout=2)] == [b"slice", b"other"]


async def test_ensure_stream_is_idempotent_and_refuses_another_configuration(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS)
    again = await conn.ensure_stream(STREAM, SUBJECTS)
    assert again.name == STREAM
    with pytest.raises(StreamMismatch, match=r"stream 'USAGE' exists with subjects \['usage.>'\]"):
        await conn.ensure_stream(STREAM, ["other.>"])


async def test_a_cancelled_publish_leaves_nothing_running_and_its_retry_is_stored_once(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1, publish_timeout=30)
    await conn.ensure_stream(STREAM, SUBJECTS)
    with paused(nats1.servers[0]):  # the server answers nothing: the publish waits for its ack
        with trio.CancelScope() as scope:

            async def cancel_when_in_flight() -> None:
                await until(lambda: bridge.in_flight == 1, timeout=10, what="the publish")
                assert conn.publishes_in_flight == 1
                assert bridge.in_flight == 1
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_in_flight)
                await conn.publish("usage.p0", b"x", msg_id="g1:c1:s1:p0")
        assert scope.cancelled_caught
        assert bridge.in_flight == 0  # the asyncio side of the publish has ended
        assert conn.publishes_in_flight == 0
    # Whether the cancelled publish was stored is unknown: its retry (same id) settles it.
    retry = await conn.publish("usage.p0", b"x", msg_id="g1:c1:s1:p0")
    assert retry.seq == 1
    assert (await conn.stream_info(STREAM)).messages == 1


async def test_publishes_waiting_for_acks_are_bounded(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1, max_in_flight_publishes=3, publish_timeout=30)
    await conn.ensure_stream(STREAM, SUBJECTS)
    acks = []

    async def publish(i: int) -> None:
        acks.append(await conn.publish("usage.p0", b"%d" % i, msg_id=f"m{i}"))

    async with trio.open_nursery() as nursery:
        with paused(nats1.servers[0]):
            for i in range(10):
                nursery.start_soon(publish, i)
            await until(lambda: bridge.in_flight == 3, timeout=10, what="3 publishes on the loop")
            await trio.testing.wait_all_tasks_blocked()
            assert conn.publishes_in_flight == 3
            assert bridge.in_flight == 3  # the other 7 wait in Trio, not in asyncio
            assert len(acks) == 0
    assert sorted(ack.seq for ack in acks) == list(range(1, 11))
    assert conn.publishes_in_flight == 0


async def test_a_slow_subscriber_holds_a_bounded_buffer_and_counts_what_it_dropped(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1)
    async with conn.subscribe("events.x", capacity=5) as sub:
        for i in range(20):
            await conn.send("events.x", b"%d" % i)
        await until(lambda: sub.buffered + sub.dropped == 20, timeout=10, what="20 deliveries")
        assert sub.buffered == 5
        assert sub.dropped == 15
        got = [await sub.get() for _ in range(5)]
    assert got == [("events.x", b"%d" % i) for i in range(5)]  # the oldest kept, in order


async def test_while_nats_is_down_calls_wait_up_to_their_timeout_then_work_again(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    server = nats1.servers[0]
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS)
    before = await conn.publish("usage.p0", b"before", msg_id="before")

    server.kill()
    await until(lambda: conn.disconnects == 1, timeout=10, what="the client to see it gone")
    assert not conn.connected
    with pytest.raises(ClusterUnavailable, match=r"msg id short.*disconnected, reconnecting"):
        await conn.publish("usage.p0", b"short", msg_id="short", timeout=0.3)

    outcome = []

    async def patient() -> None:  # waits through the restart, within its timeout
        outcome.append(await conn.publish("usage.p0", b"patient", msg_id="patient", timeout=20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(patient)
        await trio.testing.wait_all_tasks_blocked()
        server.start()
        nats1.wait_ready()
        await conn.wait_connected(timeout=20)
    assert not outcome[0].duplicate
    # The publish that failed was held by the client and sent on reconnecting: a failed
    # publish may be stored. Its retry with the same id is reported as the duplicate it is.
    retry = await conn.publish("usage.p0", b"short", msg_id="short")
    assert retry.duplicate
    # The message acked before the kill -9 survived it (fsync always); each is stored once.
    async with conn.reader(STREAM, "usage.p0") as reader:
        msgs: list[LogMessage] = []
        while len(msgs) < 3:
            msgs += await reader.fetch(10, timeout=2)
        assert await reader.fetch(10, timeout=0.2) == []
    assert [m.msg_id for m in msgs] == ["before", "short", "patient"]
    assert msgs[0].seq == before.seq
    assert retry.seq == msgs[1].seq


async def test_connecting_to_no_server_fails_clearly(bridge: AsyncioBridge) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnavailable, match=r"no NATS server at .* within 0.3 s"):
        await connect(bridge, [url], name="nobody", initial_connect_timeout=0.3)
    assert bridge.in_flight == 0


async def test_copies_of_one_id_published_at_once_get_one_stored_and_duplicate_acks(
    bridge: AsyncioBridge, nats3: NatsCluster
) -> None:
    """On R3 a copy that arrives while the first is being replicated is answered 409 ("in
    process"); the publish re-sends it until the first copy's outcome is known."""
    conn = await open_connection(bridge, nats3)
    await conn.ensure_stream(STREAM, SUBJECTS)
    acks = []

    async def publish(msg_id: str) -> None:
        acks.append(await conn.publish("usage.p0", b"same", msg_id=msg_id, timeout=10))

    async with trio.open_nursery() as nursery:
        for round_ in range(20):
            for _ in range(5):
                nursery.start_soon(publish, f"id{round_}")
    assert len(acks) == 100
    for round_ in range(20):
        mine = [ack for ack in acks if ack.msg_id == f"id{round_}"]
        assert sum(not ack.duplicate for ack in mine) == 1
        assert len({ack.seq for ack in mine}) == 1
    assert (await conn.stream_info(STREAM)).messages == 20


async def test_a_reader_whose_consumer_vanished_goes_on_from_where_it_was(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS)
    for i in range(10):
        await conn.publish("usage.p0", b"%d" % i, msg_id=f"m{i}")
    async with conn.reader(STREAM, "usage.p0") as reader:
        first = await reader.fetch(4, timeout=2)
        assert [m.seq for m in first] == [1, 2, 3, 4]
        consumer = reader._consumer
        assert consumer is not None
        js = conn._jetstream

        async def delete() -> bool:
            return await js.delete_consumer(STREAM, consumer)

        await bridge.call(delete)  # as when the server holding it dies, or it idled out
        rest: list[LogMessage] = []
        while len(rest) < 6:
            rest += await reader.fetch(4, timeout=0.5)
        assert reader.resets == 1
    assert [m.seq for m in rest] == list(range(5, 11))


async def test_a_reconnect_reported_right_after_a_disconnect_leaves_the_connection_up(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    """nats-py may report a disconnect and the reconnect in one turn of the loop, before Trio
    has seen either: the connection must end up marked connected (wait_connected returns)."""
    conn = await open_connection(bridge, nats1)

    async def drop_and_return() -> None:
        await conn._disconnected_cb()
        await conn._reconnected_cb()

    await bridge.call(drop_and_return)
    await trio.testing.wait_all_tasks_blocked()
    assert conn.disconnects == 1
    assert conn._connected.is_set()
    await conn.wait_connected(timeout=1)


async def test_a_fetch_whose_deadline_runs_out_inside_nats_py_is_an_empty_read(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    """nats-py's fetch raises a bare ``asyncio.TimeoutError`` (not its own ``TimeoutError``)
    when the deadline runs out between its no-wait probe and its long poll, which a short
    timeout on a loaded machine hits now and then: that is "nothing came", not a failure."""
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS)
    await conn.publish("usage.p0", b"one", msg_id="one")
    async with conn.reader(STREAM, "usage.p0") as reader:
        assert [m.msg_id for m in await reader.fetch(10, timeout=2)] == ["one"]
        real = reader._sub

        class RunsOut:
            async def fetch(self, batch: int, timeout: float) -> list[object]:
                raise TimeoutError  # as nats/js/client.py's _fetch_n does

        reader._sub = RunsOut()  # type: ignore[assignment]
        assert await reader.fetch(10, timeout=0.2) == []
        reader._sub = real
        await conn.publish("usage.p0", b"two", msg_id="two")
        assert [m.msg_id for m in await reader.fetch(10, timeout=2)] == ["two"]


async def test_a_send_cancelled_mid_flush_leaves_the_connection_working(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    """nats-py's read loop dies on the PONG of a flush whose task was cancelled (it sets the
    result of a cancelled future); the connection must keep answering after sends cancelled
    at any point (the node's appliers are cancelled while sending verdicts)."""
    conn = await open_connection(bridge, nats1)
    await conn.ensure_stream(STREAM, SUBJECTS)
    cancelled = 0
    for i in range(150):
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.0002 * (i % 10)
            await conn.send("other.subject", b"x")
        cancelled += scope.cancelled_caught
    assert cancelled  # some were cancelled half-way
    with trio.fail_after(10):
        ack = await conn.publish("usage.p1", b"after", msg_id="after-cancels", timeout=8)
    assert not ack.duplicate


async def test_a_stream_the_cluster_cannot_place_is_retried_then_refused_with_a_warning(
    bridge: AsyncioBridge, nats3: NatsCluster
) -> None:
    conn = await open_connection(bridge, nats3)
    with structlog.testing.capture_logs() as logs, pytest.raises(ClusterUnavailable) as refused:
        await conn.ensure_stream(STREAM, SUBJECTS, replicas=5, timeout=0.5)
    assert re.fullmatch(
        r"connection 'test': ensure stream USAGE \(R5\): not enough JetStream servers online to "
        r"place its replicas \(no suitable peers for placement[^)]*\); start the missing servers",
        str(refused.value),
    ), str(refused.value)
    waiting = [entry for entry in logs if entry["event"] == "cluster.nats.waiting"]
    assert len(waiting) == 1  # once, however many retries
    assert waiting[0]["what"] == "ensure stream USAGE (R5)"
    assert waiting[0]["log_level"] == "warning"
    assert 0 < waiting[0]["retry_for_seconds"] <= 0.5
    assert (await conn.ensure_stream(STREAM, SUBJECTS, replicas=3)).replicas == 3
