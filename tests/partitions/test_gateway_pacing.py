"""Overload at the gateway: a slow owner slows the producers down (the gateway stops reading)
instead of having its slices time out (docs/partitions.md, "Pacing").

The owner is played by the test in this process, behind an in-memory transport: it answers
pings at once and commits its slices one after another at a fixed rate of events per
(virtual) second. Producers are played as ingest reads: a batch is read only once the
gateway's in-flight budget has room, and each connection keeps a window of unacknowledged
batches. Trio's mock clock jumps over every wait: nothing sleeps for real.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from meterd.config import PartitionsConfig
from meterd.ingest.server import Decided
from meterd.model import Event
from meterd.partitions import Answer, Channel, Hello, Message, Query, Slice, Slices, Verdicts
from meterd.partitions._gateway import GatewaySubmitter, OwnerLinks
from meterd.partitions._links import OwnerLink

ONE_SHARD = PartitionsConfig(count=16, shard_size=16, owners=1)  # one owner, one shard


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class _End:
    """One end of an in-memory channel (the transport's Channel protocol)."""

    def __init__(
        self, send: trio.MemorySendChannel[Message], receive: trio.MemoryReceiveChannel[Message]
    ) -> None:
        self._send, self._receive = send, receive

    @property
    def peer(self) -> str:
        return "in-memory"

    async def send(self, message: Message) -> None:
        await self._send.send(message)

    async def receive(self) -> Message:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


class SlowOwner:
    """An owner that commits ``rate`` events per second, one slice after another; its
    reader answers pings at once, as the real owner's does."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.peak_queued = 0  # events received and not answered yet, at most
        self._queued = 0
        self._nursery: trio.Nursery | None = None

    async def connect(self, address: str) -> Channel:
        assert self._nursery is not None
        to_owner_send, to_owner_receive = trio.open_memory_channel[Message](math.inf)
        to_gateway_send, to_gateway_receive = trio.open_memory_channel[Message](math.inf)
        self._nursery.start_soon(self._serve, _End(to_gateway_send, to_owner_receive))
        return _End(to_owner_send, to_gateway_receive)

    async def serve(self, address: str, handler: Any, **_: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _serve(self, channel: _End) -> None:
        await channel.send(Hello("owner-0", 4242, [0]))
        work_send, work_receive = trio.open_memory_channel[Slice | Slices](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit, channel, work_receive)
            while True:
                message = await channel.receive()
                if isinstance(message, Query):
                    await channel.send(Answer(message.id, "pong"))
                elif isinstance(message, Slice | Slices):  # a gateway sends Slices (version 3)
                    self._queued += _events_of(message)
                    self.peak_queued = max(self.peak_queued, self._queued)
                    work_send.send_nowait(message)

    async def _commit(self, channel: _End, work: trio.MemoryReceiveChannel[Slice | Slices]) -> None:
        async for piece in work:
            count = _events_of(piece)
            await trio.sleep(count / self.rate)
            self._queued -= count
            await channel.send(Verdicts(piece.batch, piece.shard, count, 0))


def _events_of(message: Slice | Slices) -> int:
    if isinstance(message, Slice):
        return len(message.events)
    return sum(len(part.events) for part in message.parts)


def events(count: int, first: int) -> list[tuple[str, list[Event]]]:
    """``count`` events of one account (so of the one shard)."""
    return [("acme", [Event(f"e{first + n}", "acme", "m", 1, 1_000 + n) for n in range(count)])]


async def produce(
    submitter: GatewaySubmitter,
    *,
    connections: int,
    batches: int,
    batch: int,
    window: int,
    outcomes: list[tuple[float, Decided | BaseException | Any]],
) -> None:
    """Each connection reads ``batches`` batches of ``batch`` events as ingest does (its
    window of unacknowledged batches, then the gateway's budget), recording each outcome
    with the (virtual) seconds from its read to its outcome."""
    budget = submitter.budget

    async def connection(number: int) -> None:
        room = trio.Semaphore(window)
        async with trio.open_nursery() as acks:
            for seq in range(batches):
                await room.acquire()
                await budget.wait_for_room()
                read_at = trio.current_time()
                budget.take(batch)
                done = trio.Event()

                def on_done(
                    outcome: Any, read_at: float = read_at, done: trio.Event = done
                ) -> None:
                    budget.give(batch)
                    outcomes.append((trio.current_time() - read_at, outcome))
                    done.set()

                submitter.submit(events(batch, (number * batches + seq) * batch), on_done, seq=seq)

                async def ack(done: trio.Event = done) -> None:
                    await done.wait()
                    room.release()

                acks.start_soon(ack)

    async with trio.open_nursery() as nursery:
        for number in range(connections):
            nursery.start_soon(connection, number)


def gateway(owner: SlowOwner, *, max_in_flight_events: int) -> tuple[GatewaySubmitter, OwnerLink]:
    link = OwnerLink(
        0,
        "owner-0",
        owner,  # its transport
        ONE_SHARD,
        slice_timeout=5.0,
        ping_interval=1.0,
        ping_timeout=5.0,
        kill=lambda pid: None,
    )
    clock: Callable[[], int] = lambda: 0  # noqa: E731
    submitter = GatewaySubmitter(
        "gw", OwnerLinks(ONE_SHARD, [link]), max_in_flight_events=max_in_flight_events, clock=clock
    )
    return submitter, link


async def test_a_slow_owner_slows_the_producers_down_instead_of_timing_out_their_slices(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An owner that commits 2,000 events/s behind a gateway whose in-flight budget is the
    default 20,000 events (10 s of that owner's work, twice slice_timeout): the gateway
    stops reading producers while the owner has about a tenth of slice_timeout of work
    queued, so every batch is acked, none waits near slice_timeout, and the owner is
    kept busy (the producers' events take no longer than the owner's work)."""
    owner = SlowOwner(rate=2_000)
    submitter, link = gateway(owner, max_in_flight_events=20_000)
    outcomes: list[tuple[float, Any]] = []
    connections, batches, batch = 4, 40, 500  # 80,000 events: 40 s of the owner's work
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await nursery.start(link.run)
        started = trio.current_time()
        await produce(
            submitter,
            connections=connections,
            batches=batches,
            batch=batch,
            window=64,
            outcomes=outcomes,
        )
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    failed = [outcome for _, outcome in outcomes if not isinstance(outcome, Decided)]
    assert failed == [], f"{len(failed)} batches failed, the first: {failed[0]}"
    assert link.timeouts == 0
    assert len(outcomes) == connections * batches
    slowest = max(waited for waited, _ in outcomes)
    assert slowest < 5.0 / 2, f"a batch waited {slowest:.2f} s for its verdicts"
    assert submitter.budget.waits > 0  # the gateway stopped reading
    assert owner.peak_queued <= 4 * 2_000 * 0.5  # never much more than the target's work
    work = connections * batches * batch / owner.rate
    assert elapsed < work * 1.1 + 1.0, f"{elapsed:.1f} s for {work:.1f} s of the owner's work"


async def test_a_fast_owner_is_not_paced_below_what_it_takes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An owner that keeps up (its work never waits) leaves the producers reading at the
    budget's pace: the pacing only bites where an owner's queue grows."""
    owner = SlowOwner(rate=1_000_000)
    submitter, link = gateway(owner, max_in_flight_events=20_000)
    outcomes: list[tuple[float, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await nursery.start(link.run)
        started = trio.current_time()
        await produce(submitter, connections=4, batches=40, batch=500, window=64, outcomes=outcomes)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert all(isinstance(outcome, Decided) for _, outcome in outcomes)
    assert elapsed < 80_000 / 1_000_000 * 1.5 + 0.01


async def test_an_owner_that_slows_down_fivefold_is_paced_again_without_time_outs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An owner at 20,000 events/s that drops to 4,000 (a disk turned slow): what was in
    flight for the old pace drains within the slice timeout, and the allowance shrinks to
    the new pace (once: only slices sent since the last shrink count for the next)."""
    owner = SlowOwner(rate=20_000)
    submitter, link = gateway(owner, max_in_flight_events=20_000)
    outcomes: list[tuple[float, Any]] = []

    async def slow_down() -> None:
        await trio.sleep(2.0)
        owner.rate = 4_000

    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await nursery.start(link.run)
        nursery.start_soon(slow_down)
        await produce(submitter, connections=4, batches=60, batch=500, window=64, outcomes=outcomes)
        nursery.cancel_scope.cancel()
    assert all(isinstance(outcome, Decided) for _, outcome in outcomes)
    assert link.timeouts == 0
    assert max(waited for waited, _ in outcomes) < 5.0 / 2
    assert link.allowance <= 4_000 * 0.5 * 1.5  # about the new pace's 0.5 s of work
