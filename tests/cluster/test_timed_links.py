"""The cluster bench's TimedLinks sends a slice exactly as the gateway's JetStreamLinks does
(one implementation of publishing and waiting for the verdict), only timing it. A fake
connection stands for NATS: it takes every publish at once, or refuses it; the test hands
verdicts to the links' subscription. The slice timeout runs on trio's MockClock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import pytest
import trio
import trio.testing

from meterd.bench.cluster import TimedLinks
from meterd.cluster import ClusterUnavailable, JetStreamLinks
from meterd.cluster._nats import Connection
from meterd.config import PartitionsConfig
from meterd.partitions import OwnerUnavailable, Slice, Verdicts
from meterd.partitions._messages import BatchId, encode

SLICE = Slice(BatchId("gw", 1, 7), 3, "platform", 0, [])
VERDICTS = Verdicts(SLICE.batch, SLICE.shard, accepted=0, duplicates=0)


class FakeNats:
    """Takes each publish at once (``refuse``: fails it as NATS not acking would); the
    verdicts the test sends go to whoever subscribed."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.published: list[str] = []
        self.taken = trio.Event()
        self.verdicts, self._inbox = trio.open_memory_channel[tuple[str, bytes]](8)

    async def publish(self, subject: str, data: bytes, *, msg_id: str, timeout: float) -> None:
        if self.refuse:
            raise ClusterUnavailable(f"no ack for {msg_id} within {timeout:g} s")
        self.published.append(subject)
        self.taken.set()

    @asynccontextmanager
    async def subscribe(
        self, subject: str, *, capacity: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        yield self._inbox


Outcome = Verdicts | OwnerUnavailable


async def send_one(
    links_type: Callable[..., JetStreamLinks], nats: FakeNats, answer: bool
) -> tuple[JetStreamLinks, Outcome]:
    """Send SLICE through a new ``links_type`` over ``nats``; its verdict is sent once the
    log took it if ``answer``; the outcome ``done`` got."""
    links = links_type(
        cast(Connection, nats), "gw", PartitionsConfig(owners=1), slice_timeout=5.0
    )
    outcomes: list[Outcome] = []
    done = trio.Event()

    def on_done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        links.send(SLICE, on_done)
        if answer:
            await nats.taken.wait()
            await nats.verdicts.send(("verdicts", encode(VERDICTS)))
        await done.wait()
        nursery.cancel_scope.cancel()
    return links, outcomes[0]


@pytest.mark.parametrize("refuse", [False, True], ids=["no verdict", "log refuses"])
async def test_a_timed_slice_fails_as_the_gateway_says(
    autojump_clock: trio.testing.MockClock, refuse: bool
) -> None:
    _, plain = await send_one(JetStreamLinks, FakeNats(refuse), answer=False)
    timed, outcome = await send_one(TimedLinks, FakeNats(refuse), answer=False)
    assert isinstance(plain, OwnerUnavailable)
    assert isinstance(outcome, OwnerUnavailable)
    assert str(outcome) == str(plain)  # the same words (no copy that drifted)
    assert isinstance(timed, TimedLinks)
    assert len(timed.publish_ms) == (0 if refuse else 1)  # timed only once the log took it
    assert timed.verdict_ms == []


async def test_a_timed_slice_is_answered_and_both_times_are_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timed, outcome = await send_one(TimedLinks, FakeNats(), answer=True)
    assert outcome == VERDICTS
    assert isinstance(timed, TimedLinks)
    assert timed.published == 1
    assert len(timed.publish_ms) == len(timed.verdict_ms) == 1


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
