"""Gateway <-> owner messages and the Unix-socket transport (``meterd.partitions``)."""

from __future__ import annotations

import os
import stat
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.partitions import (
    SCHEMA_VERSION,
    Answer,
    BatchId,
    Channel,
    ChannelClosed,
    FrameError,
    Hello,
    Message,
    Part,
    Query,
    Rejection,
    Slice,
    SliceEvent,
    Slices,
    StreamChannel,
    TreeRequest,
    TreeSnapshot,
    Unavailable,
    UnixTransport,
    Verdicts,
    decode,
    encode,
    wire_quantity,
)
from tests.examples import examples

WATCHDOG = 10

quantities = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.decimals(min_value=0, allow_nan=False, allow_infinity=False, places=6),
)
events = st.builds(
    SliceEvent,
    index=st.integers(0, 10_000),
    id=st.text(min_size=1, max_size=200),
    account=st.text(min_size=1, max_size=128),
    meter=st.text(min_size=1, max_size=40),
    quantity=quantities,
    time=st.integers(0, 2**53),
    properties=st.dictionaries(st.text(max_size=64), st.text(max_size=256), max_size=16).map(
        lambda found: tuple(sorted(found.items()))
    ),
)
batches = st.builds(BatchId, st.text(max_size=20), st.integers(0, 2**32), st.integers(0, 2**62))
rejections = st.builds(
    Rejection,
    index=st.integers(0, 10_000),
    id=st.none() | st.text(max_size=200),
    code=st.sampled_from(["id_conflict", "time_out_of_range", "invalid_quantity"]),
    message=st.text(max_size=200),
)


def slice_of(*evs: SliceEvent, seq: int = 1, shard: int = 3) -> Slice:
    return Slice(BatchId("gw-1", 7, seq), shard, "billing", 1_764_900_000_000, list(evs))


def event(index: int, quantity: int | Decimal = 1) -> SliceEvent:
    return SliceEvent(index, f"ev-{index}", "acme", "dyno.seconds", quantity, 1_764_900_000_000)


# ---- the schema -------------------------------------------------------------------------------


@given(batches, st.integers(0, 65_535), st.lists(events, max_size=20), st.lists(rejections))
@settings(max_examples=examples(100))
def test_a_slice_comes_back_as_it_was_sent(
    batch: BatchId, shard: int, evs: list[SliceEvent], rejected: list[Rejection]
) -> None:
    sent = Slice(batch, shard, "billing", 1_764_900_000_000, evs, rejected)
    assert decode(encode(sent)) == sent


@given(
    batches,
    st.lists(
        st.builds(
            Part, st.integers(0, 65_535), st.lists(events, max_size=10), st.lists(rejections)
        ),
        min_size=1,
        max_size=8,
    ),
)
@settings(max_examples=examples(100))
def test_an_owners_slices_of_a_batch_come_back_as_they_were_sent(
    batch: BatchId, parts: list[Part]
) -> None:
    sent = Slices(batch, parts[0].shard, "billing", 1_764_900_000_000, parts)
    assert decode(encode(sent)) == sent


def test_the_message_version_is_3_since_an_owner_gets_one_message_per_batch() -> None:
    assert SCHEMA_VERSION == 3
    assert Hello("owner-1", 1, [0]).version == 3


@given(batches, st.integers(0, 500), st.integers(0, 500), st.lists(rejections))
def test_verdicts_come_back_as_they_were_sent(
    batch: BatchId, accepted: int, duplicates: int, conflicts: list[Rejection]
) -> None:
    sent = Verdicts(batch, 3, accepted, duplicates, conflicts, [])
    assert decode(encode(sent)) == sent


@pytest.mark.parametrize(
    "message",
    [
        Hello("owner-1", 4711, [0, 1, 2]),
        Unavailable(BatchId("gw", 1, 2), 5, "disk full"),
        Query(9, 5, "usage", {"account": "acme", "from": 0, "to": 10}),
        Answer(9, {"total": "12.5"}),
        Answer(9, error="no such meter 'x'"),
        TreeRequest(3),
        TreeSnapshot(3, "owner-1", 4711, {"name": "owner-1", "children": []}),
    ],
)
def test_each_message_type_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


def carried(quantity: int | Decimal) -> int | Decimal:
    """``quantity`` after a trip through a slice."""
    message = decode(encode(slice_of(event(0, quantity))))
    assert isinstance(message, Slice)
    return message.events[0].quantity


def test_decimals_travel_exactly_and_big_ints_as_decimals() -> None:
    assert carried(Decimal("0.000001")) == Decimal("0.000001")
    assert carried(wire_quantity(2**70)) == 2**70
    assert wire_quantity(5) == 5
    assert type(wire_quantity(5)) is int


def test_a_message_of_the_wrong_shape_is_refused_naming_the_field() -> None:
    data = msgspec.msgpack.encode({"t": "slice", "batch": ["gw", 1, 2], "shard": "three"})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.shard"):
        decode(data)
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'nope'"):
        decode(msgspec.msgpack.encode({"t": "nope"}))


def test_events_are_arrays_on_the_wire() -> None:
    """Each event is a msgpack array (its field order is the format), not a map with keys."""
    raw = msgspec.msgpack.decode(encode(slice_of(event(0))))
    assert raw["t"] == "slice"
    assert raw["events"] == [[0, "ev-0", "acme", "dyno.seconds", 1, 1_764_900_000_000, []]]


# ---- the Unix-socket transport ----------------------------------------------------------------


async def owner(channel: Channel) -> None:
    """A stand-in owner: says hello, then answers each slice with its verdicts."""
    await channel.send(Hello("owner-1", os.getpid(), [3]))
    while True:
        try:
            message = await channel.receive()
        except ChannelClosed:
            return
        if isinstance(message, Slice):
            await channel.send(Verdicts(message.batch, message.shard, len(message.events), 0))
        elif isinstance(message, Query):
            await channel.send(Answer(message.id, {"op": message.op}))


async def test_a_gateway_and_an_owner_talk_over_a_unix_socket(tmp_path: Path) -> None:
    transport = UnixTransport()
    address = str(tmp_path / "owner-1.sock")
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            await talk(nursery, transport, address)
            nursery.cancel_scope.cancel()


async def talk(nursery: trio.Nursery, transport: UnixTransport, address: str) -> None:
    """Hello, 50 slices sent from 50 tasks at once (each answered), a query."""
    await nursery.start(transport.serve, address, owner)
    assert stat.S_IMODE(os.stat(address).st_mode) == 0o600
    channel = await transport.connect(address)
    hello = await channel.receive()
    assert hello == Hello("owner-1", os.getpid(), [3])
    sent = [slice_of(event(0), event(1), seq=seq) for seq in range(50)]

    async def send_all() -> None:  # from several tasks at once: frames stay whole
        async with trio.open_nursery() as senders:
            for message in sent:
                senders.start_soon(channel.send, message)

    nursery.start_soon(send_all)
    got = [await channel.receive() for _ in sent]
    assert sorted(v.batch.seq for v in got if isinstance(v, Verdicts)) == list(range(50))
    assert all(isinstance(v, Verdicts) and v.accepted == 2 for v in got)
    await channel.send(Query(1, 3, "usage"))
    assert await channel.receive() == Answer(1, {"op": "usage"})
    await channel.aclose()


async def test_serving_replaces_a_stale_socket_and_removes_it_when_done(tmp_path: Path) -> None:
    address = tmp_path / "owner.sock"
    stale = trio.socket.socket(trio.socket.AF_UNIX)
    await stale.bind(str(address))
    stale.close()  # as an owner killed -9 leaves it
    with trio.fail_after(WATCHDOG):
        async with trio.open_nursery() as nursery:
            await nursery.start(UnixTransport().serve, str(address), owner)
            channel = await UnixTransport().connect(str(address))
            assert isinstance(await channel.receive(), Hello)
            await channel.aclose()
            nursery.cancel_scope.cancel()
    assert not address.exists()


async def test_serving_over_a_file_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    address = tmp_path / "owner.sock"
    address.write_text("not a socket")
    with pytest.raises(FileExistsError, match="is not a socket"):
        await UnixTransport().serve(str(address), owner)


async def test_connecting_to_no_owner_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match=r"cannot connect to the owner at .*is it running"):
        await UnixTransport().connect(str(tmp_path / "none.sock"))


async def pair(max_frame: int = 1024) -> tuple[StreamChannel, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return StreamChannel(trio.SocketStream(left), "peer", max_frame=max_frame), trio.SocketStream(
        right
    )


async def test_a_close_between_frames_ends_the_channel() -> None:
    channel, peer = await pair()
    await peer.aclose()
    with pytest.raises(ChannelClosed, match="peer closed the channel"):
        await channel.receive()


async def test_a_frame_cut_short_is_an_error() -> None:
    channel, peer = await pair()
    await peer.send_all((100).to_bytes(4, "big") + b"abc")
    await peer.aclose()
    with pytest.raises(FrameError, match="closed 3 bytes into a frame"):
        await channel.receive()


async def test_a_frame_over_max_frame_is_refused_and_the_channel_closed() -> None:
    channel, peer = await pair(max_frame=1024)
    await peer.send_all((2048).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="2,048 bytes is over the max_frame of 1,024"):
        await channel.receive()
    with pytest.raises(ChannelClosed):
        await channel.receive()


async def test_a_frame_that_is_not_a_message_is_refused() -> None:
    channel, peer = await pair()
    body = msgspec.msgpack.encode({"t": "slice"})
    await peer.send_all(len(body).to_bytes(4, "big") + body)
    with pytest.raises(FrameError, match="is not a message: Object missing required field"):
        await channel.receive()


async def test_a_message_over_max_frame_is_not_sent() -> None:
    channel, _ = await pair(max_frame=100)
    with pytest.raises(FrameError, match="split it"):
        await channel.send(slice_of(*[event(i) for i in range(10)]))


async def test_a_send_on_a_channel_closed_on_this_side_is_channel_closed() -> None:
    """A frame error closes the channel while another task may be sending on it (a link's
    writer, its pinger): that send ends as ``ChannelClosed``, never as Trio's
    ``ClosedResourceError``, so a caller handles a closed channel one way."""
    channel, peer = await pair(max_frame=1 << 26)
    big = slice_of(*[event(i) for i in range(50_000)])  # more than the socket buffers hold
    async with trio.open_nursery() as nursery:
        sent = trio.Event()
        outcome: list[BaseException] = []

        async def sending() -> None:
            sent.set()
            try:
                await channel.send(big)  # blocks: the peer does not read
            except BaseException as error:
                outcome.append(error)

        nursery.start_soon(sending)
        await sent.wait()
        await trio.testing.wait_all_tasks_blocked()
        await channel.aclose()
    assert [type(error) for error in outcome] == [ChannelClosed]
    with pytest.raises(ChannelClosed, match="is closed"):
        await channel.send(slice_of(event(1)))
    await peer.aclose()
