"""The gateway's link to one owner, against owners played by the test (in this process, on
a real Unix socket, Trio's mock clock jumping over every timeout: nothing waits for real).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from meterd.config import PartitionsConfig
from meterd.partitions import (
    Answer,
    BatchId,
    Channel,
    ChannelClosed,
    Hello,
    OwnerUnavailable,
    Part,
    Query,
    Slice,
    SliceEvent,
    Slices,
    Unavailable,
    UnixTransport,
    Verdicts,
)
from meterd.partitions._links import OwnerLink

LAYOUT = PartitionsConfig(count=256, shard_size=16, owners=2)  # owner 0: shards 0, 2, ...
SHARDS = list(range(0, 16, 2))


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Seen(list[Any]):
    """A list whose length can be waited for."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = trio.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        self._grew.set()
        self._grew = trio.Event()

    async def reach(self, length: int) -> None:
        with trio.fail_after(60):  # virtual seconds: only reached if the link misbehaves
            while len(self) < length:
                await self._grew.wait()


def a_slice(seq: int, shard: int = 2) -> Slice:
    return Slice(BatchId("gw", seq, seq), shard, "p", 0, [SliceEvent(0, "e", "a", "m", 1, 0)])


def link_for(address: str, kills: list[Any], **timeouts: float) -> OwnerLink:
    return OwnerLink(
        0,
        address,
        UnixTransport(),
        LAYOUT,
        slice_timeout=timeouts.get("slice_timeout", 5.0),
        ping_interval=timeouts.get("ping_interval", 1.0),
        ping_timeout=timeouts.get("ping_timeout", 5.0),
        kill=kills.append,
    )


async def serving(
    nursery: trio.Nursery, address: str, handler: Callable[[Channel], Awaitable[None]]
) -> None:
    await nursery.start(UnixTransport().serve, address, handler)


async def test_an_owner_that_accepts_but_says_no_hello_is_killed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    address = str(tmp_path / "o.sock")
    kills = Seen()

    async def mute(channel: Channel) -> None:
        await trio.sleep_forever()

    link = link_for(address, kills, ping_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, mute)
        nursery.start_soon(link.run)
        await kills.reach(1)
        nursery.cancel_scope.cancel()
    assert kills[0] is None  # whichever process is the owner now
    assert link.kills >= 1


async def test_slices_time_out_and_an_owner_that_does_not_answer_pings_is_killed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    address = str(tmp_path / "o.sock")
    kills = Seen()

    async def hung(channel: Channel) -> None:  # says hello, then reads and answers nothing
        await channel.send(Hello("owner-0", 4242, SHARDS))
        await trio.sleep_forever()

    link = link_for(address, kills, slice_timeout=0.7, ping_interval=0.5, ping_timeout=3.0)
    outcomes = Seen()
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, hung)
        await nursery.start(link.run)  # started: connected, hello read
        assert link.pid == 4242
        started = trio.current_time()
        link.send(a_slice(1), outcomes.append)
        await outcomes.reach(1)
        # before the unanswered ping (sent at 0.5) makes it unresponsive at 1.5
        assert trio.current_time() - started == pytest.approx(0.7, abs=0.11)
        (timed_out,) = outcomes
        assert isinstance(timed_out, OwnerUnavailable)
        assert "slice_timeout" in timed_out.reason
        await kills.reach(1)
        assert kills == [4242]  # the pid of its hello
        nursery.cancel_scope.cancel()


async def test_an_owner_silent_past_two_ping_intervals_fails_its_slices_until_it_answers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An owner that leaves a ping unanswered for twice ping_interval (stopped, hung) is
    unresponsive: its pending slices fail then, not at slice_timeout, and new ones fail as
    they are sent (their batches give the gateway's in-flight budget back); once it
    answers again its slices are sent and answered as before, and it was never killed."""
    address = str(tmp_path / "o.sock")
    kills = Seen()
    awake = trio.Event()

    async def owner(channel: Channel) -> None:  # silent until woken, then answers all
        await channel.send(Hello("owner-0", 4242, SHARDS))
        while True:
            message = await channel.receive()
            await awake.wait()
            if isinstance(message, Query):
                await channel.send(Answer(message.id, "pong"))
            elif isinstance(message, Slice):
                await channel.send(Verdicts(message.batch, message.shard, 1, 0))

    link = link_for(address, kills, slice_timeout=60.0, ping_interval=0.5, ping_timeout=30.0)
    outcomes = Seen()
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, owner)
        await nursery.start(link.run)
        started = trio.current_time()
        link.send(a_slice(1), outcomes.append)
        await outcomes.reach(1)
        # the first ping goes at 0.5, unanswered by 1.5: far before slice_timeout (60 s)
        assert trio.current_time() - started == pytest.approx(1.5, abs=0.11)
        assert isinstance(outcomes[0], OwnerUnavailable)
        assert "has not answered a ping" in outcomes[0].reason
        assert link.unresponsive_since is not None
        assert link.pending == 0
        link.send(a_slice(2), outcomes.append)  # fails as it is sent
        assert len(outcomes) == 2
        assert isinstance(outcomes[1], OwnerUnavailable)
        awake.set()  # it answers the ping: responsive again
        while link.unresponsive:  # noqa: ASYNC110 (its pong crosses a real socket)
            await trio.sleep(0.01)
        link.send(a_slice(3), outcomes.append)
        await outcomes.reach(3)
        assert outcomes[2] == Verdicts(BatchId("gw", 3, 3), 2, 1, 0)
        assert kills == []
        assert link.stalls == 1
        nursery.cancel_scope.cancel()


async def test_pending_slices_fail_when_the_channel_ends_and_the_link_reconnects(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    address = str(tmp_path / "o.sock")
    kills = Seen()
    incarnations = Seen()

    async def owner(channel: Channel) -> None:
        incarnations.append(len(incarnations) + 1)
        number = incarnations[-1]
        await channel.send(Hello("owner-0", 1000 + number, SHARDS))
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                return
            if isinstance(message, Query):
                await channel.send(Answer(message.id, "pong"))
            elif isinstance(message, Slice):
                if number == 1:
                    return  # dies with the slice in flight: the channel closes
                await channel.send(Verdicts(message.batch, message.shard, 1, 0))

    link = link_for(address, kills)
    outcomes = Seen()
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, owner)
        await nursery.start(link.run)
        link.send(a_slice(1), outcomes.append)
        await outcomes.reach(1)
        assert isinstance(outcomes[0], OwnerUnavailable)
        assert await link.wait_connected() == 1002  # the next incarnation
        link.send(a_slice(1), outcomes.append)  # the producer's re-send
        await outcomes.reach(2)
        assert outcomes[1] == Verdicts(BatchId("gw", 1, 1), 2, 1, 0)
        assert link.connections == 2
        assert kills == []
        nursery.cancel_scope.cancel()


async def test_a_slice_sent_while_not_connected_fails_at_once(tmp_path: Path) -> None:
    link = link_for(str(tmp_path / "nobody.sock"), [])
    outcomes = Seen()
    link.send(a_slice(1), outcomes.append)
    (failed,) = outcomes
    assert isinstance(failed, OwnerUnavailable)
    assert "not connected" in failed.reason


async def test_a_hello_with_other_shards_is_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    address = str(tmp_path / "o.sock")
    said = Seen()

    async def wrong(channel: Channel) -> None:
        said.append(1)
        await channel.send(Hello("owner-0", os.getpid(), [1, 3]))
        await trio.sleep_forever()

    link = link_for(address, [])
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, wrong)
        nursery.start_soon(link.run)
        await said.reach(3)  # refused, and tried again
        assert not link.connected
        nursery.cancel_scope.cancel()


async def test_an_owners_slices_count_every_parts_events_in_flight(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    address = str(tmp_path / "o.sock")

    async def silent(channel: Channel) -> None:  # says hello, then answers nothing
        await channel.send(Hello("owner-0", 4242, SHARDS))
        await trio.sleep_forever()

    link = link_for(address, [], slice_timeout=0.7, ping_interval=10.0, ping_timeout=30.0)
    event = SliceEvent(0, "e", "a", "m", 1, 0)
    message = Slices(BatchId("gw", 1, 1), 0, "p", 0, [Part(0, [event] * 2), Part(2, [event] * 3)])
    outcomes = Seen()
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, silent)
        await nursery.start(link.run)
        link.send(message, outcomes.append)
        assert link.in_flight == 5  # the owner's allowance counts the parts' events
        await outcomes.reach(1)  # timed out: its events are given back
        assert isinstance(outcomes[0], OwnerUnavailable)
        assert link.in_flight == 0
        nursery.cancel_scope.cancel()


async def test_a_version_2_owner_is_refused_at_the_hello(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Version 3 sends an owner one `slices` message per batch, which a version 2 owner
    # cannot read: the two refuse each other before any slice is sent.
    address = str(tmp_path / "o.sock")
    said = Seen()

    async def older(channel: Channel) -> None:
        said.append(1)
        await channel.send(Hello("owner-0", os.getpid(), SHARDS, version=2))
        await trio.sleep_forever()

    link = link_for(address, [])
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await serving(nursery, address, older)
            nursery.start_soon(link.run)
            await said.reach(2)  # refused, and tried again
            assert not link.connected
            nursery.cancel_scope.cancel()
    refused = [line for line in logs if line["event"] == "owner_link_refused"]
    assert refused
    assert "owner speaks message version 2, the gateway 3" in str(refused[0])


async def test_a_connection_reset_before_the_hello_is_retried_not_a_crash(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A stopped owner's socket still queues the link's connection; killed, it resets it
    (ECONNRESET, trio's BrokenResourceError): the link must retry, not crash (a crash
    whose restart waited for that owner held the supervisor: found by the hang test)."""
    address = str(tmp_path / "o.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(address)
    listener.listen(8)  # never accepted: the link's connection waits in the backlog
    link = link_for(address, [], ping_timeout=30.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await trio.testing.wait_all_tasks_blocked()  # connected, waiting for a hello
        listener.close()  # the owner dies: the queued connection is reset
        os.unlink(address)
        await trio.testing.wait_all_tasks_blocked()

        async def owner(channel: Channel) -> None:
            await channel.send(Hello("owner-0", 7, SHARDS))
            await trio.sleep_forever()

        await serving(nursery, address, owner)  # its successor
        with trio.fail_after(60):
            assert await link.wait_connected() == 7
        nursery.cancel_scope.cancel()


async def test_a_restarted_link_starts_at_once_while_its_owner_is_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Its supervisor waits for a child's start: a link whose start waited for its owner
    would keep the supervisor from restarting that owner."""
    address = str(tmp_path / "o.sock")

    async def owner(channel: Channel) -> None:
        await channel.send(Hello("owner-0", 7, SHARDS))
        await trio.sleep_forever()

    link = link_for(address, [], ping_timeout=5.0)
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def run_once(*, task_status: trio.TaskStatus[Any]) -> None:
            with first:
                await link.run(task_status=task_status)

        async with trio.open_nursery() as owners:
            await serving(owners, address, owner)
            await nursery.start(run_once)  # first start: waits for the hello
            assert link.connected
            owners.cancel_scope.cancel()  # the owner is gone
        first.cancel()  # and the link's task ended (a crash, say)
        started = trio.current_time()
        with trio.fail_after(60):  # virtual seconds
            await nursery.start(link.run)  # restarted: at once, not connected
        assert trio.current_time() == started
        assert link.pid is None  # not connected
        nursery.cancel_scope.cancel()


async def test_a_first_start_without_an_owner_gives_up_waiting_after_ping_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    link = link_for(str(tmp_path / "nobody.sock"), [], ping_timeout=5.0)
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        with trio.fail_after(60):  # virtual seconds
            await nursery.start(link.run)
        assert trio.current_time() - started == pytest.approx(5.0)
        assert not link.connected
        nursery.cancel_scope.cancel()


async def test_each_slices_round_trip_is_observed_from_its_send_to_its_verdicts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The gateway's meterd_gateway_slice_seconds{link}: what an owner's answer cost the
    # batch, queue and socket included; a slice answered unavailable is not a round trip.
    address = str(tmp_path / "o.sock")

    async def slow(channel: Channel) -> None:  # verdicts 0.25 s after each slice, then no
        await channel.send(Hello("owner-0", 4242, SHARDS))
        while True:
            message = await channel.receive()
            if isinstance(message, Slice):
                await trio.sleep(0.25 if message.batch.seq == 1 else 0.5)
                if message.batch.seq == 3:
                    await channel.send(Unavailable(message.batch, message.shard, "full disk"))
                else:
                    await channel.send(Verdicts(message.batch, message.shard, 1, 0))

    link = link_for(address, [], ping_interval=100.0, ping_timeout=300.0)
    observed: list[float] = []
    link.on_round_trip = observed.append
    outcomes = Seen()
    async with trio.open_nursery() as nursery:
        await serving(nursery, address, slow)
        await nursery.start(link.run)
        for seq in (1, 2, 3):
            link.send(a_slice(seq), outcomes.append)
        await outcomes.reach(3)
        nursery.cancel_scope.cancel()
    # The second waited behind the first in the owner: 0.25 + 0.5 s from its send.
    assert observed == pytest.approx([0.25, 0.75])
    assert isinstance(outcomes[2], OwnerUnavailable)
