"""The Trio ↔ asyncio bridge on its own (no NATS): round trips, exceptions, cancellation, close,
and the bounded inbox."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.cluster import AsyncioBridge, BridgeClosed, open_bridge
from meterd.cluster._bridge import Inbox, InboxClosed
from tests.examples import examples


class Boom(Exception):
    """A project-specific exception type, to see it cross unchanged."""

    def __init__(self, detail: str, code: int) -> None:
        super().__init__(detail)
        self.code = code


async def test_a_call_runs_in_the_loop_thread_and_returns_its_value(bridge: AsyncioBridge) -> None:
    async def where() -> tuple[str, bool]:
        await asyncio.sleep(0)
        return threading.current_thread().name, asyncio.get_running_loop().is_running()

    name, running = await bridge.call(where)
    assert name == "test-bridge"
    assert running
    assert threading.current_thread().name != name


async def test_many_concurrent_calls_each_get_their_own_result(bridge: AsyncioBridge) -> None:
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        async def square() -> int:
            await asyncio.sleep(0)
            return i * i

        results[i] = await bridge.call(square)

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert results == {i: i * i for i in range(200)}
    assert bridge.in_flight == 0


@pytest.mark.parametrize(
    "error",
    [Boom("bucket 'x' is full", 7), KeyError("k"), TimeoutError("slow"), ValueError("bad")],
)
async def test_exceptions_cross_with_their_type_and_object(
    bridge: AsyncioBridge, error: Exception
) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    with pytest.raises(type(error)) as caught:
        await bridge.call(fail)
    assert caught.value is error
    if isinstance(caught.value, Boom):
        assert caught.value.code == 7


async def test_a_cancelled_caller_cancels_the_asyncio_task_and_waits_for_its_end(
    bridge: AsyncioBridge,
) -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    seen: list[str] = []

    async def forever() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0.05)  # a clean-up that takes a while (closing a socket, say)
            seen.append("cleaned up")
            raise

    with trio.CancelScope() as scope:

        async def cancel_once_started() -> None:
            await started.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_once_started)
            await bridge.call(forever)
    assert scope.cancelled_caught
    # By the time the cancelled call returned, the asyncio side had finished its clean-up.
    assert seen == ["cancelled", "cleaned up"]
    assert bridge.in_flight == 0

    async def tasks_on_loop() -> int:
        return len(asyncio.all_tasks())

    assert await bridge.call(tasks_on_loop) == 1  # only the task counting


async def test_closing_stops_the_loop_thread_and_fails_calls_clearly() -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    hook_ran: list[bool] = []
    outcome: list[BaseException] = []

    async with open_bridge(name="closing") as bridge:
        thread = bridge._thread
        assert thread is not None
        assert thread.is_alive()

        async def hook() -> None:
            hook_ran.append(True)

        bridge.add_shutdown_hook(hook)

        async def forever() -> None:
            token.run_sync_soon(started.set)
            await asyncio.Event().wait()

        async def waiting_caller() -> None:
            try:
                await bridge.call(forever)
            except BridgeClosed as error:
                outcome.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_caller)
            await started.wait()
            await bridge.aclose()  # while a call waits on the loop
    assert hook_ran == [True]
    assert len(outcome) == 1
    assert "cancelled" in str(outcome[0])
    assert not thread.is_alive()

    async def anything() -> None:
        return None

    with pytest.raises(BridgeClosed, match="not running"):
        await bridge.call(anything)
    await bridge.aclose()  # idempotent


async def test_a_cancelled_caller_still_waits_only_cancel_grace_for_a_stubborn_task() -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    release = threading.Event()

    async with open_bridge(name="stubborn", cancel_grace=0.2) as bridge:

        async def stubborn() -> None:
            token.run_sync_soon(started.set)
            while not release.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    continue  # ignores cancellation until released

        with trio.CancelScope() as scope:

            async def cancel_once_started() -> None:
                await started.wait()
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_once_started)
                await bridge.call(stubborn)
        assert scope.cancelled_caught
        release.set()


# -- the inbox: loop thread → Trio, bounded, newest dropped ---------------------------------


async def test_the_inbox_keeps_order_drops_the_newest_when_full_and_closes(
    bridge: AsyncioBridge,
) -> None:
    inbox: Inbox[int] = Inbox(3, trio.lowlevel.current_trio_token(), name="t")

    async def produce() -> list[bool]:
        return [inbox.put(i) for i in range(5)]

    assert await bridge.call(produce) == [True, True, True, False, False]
    assert inbox.dropped == 2
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]

    async def produce_more_then_close() -> None:
        inbox.put(10)
        inbox.close()

    await bridge.call(produce_more_then_close)
    assert await inbox.get() == 10
    with pytest.raises(InboxClosed):
        await inbox.get()


async def test_a_waiting_inbox_reader_is_woken_from_the_loop_thread(bridge: AsyncioBridge) -> None:
    inbox: Inbox[str] = Inbox(8, trio.lowlevel.current_trio_token(), name="t")
    got: list[str] = []

    async def read() -> None:
        got.append(await inbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()

        async def produce() -> None:
            inbox.put("hello")

        await bridge.call(produce)
    assert got == ["hello"]


@settings(max_examples=examples(60), deadline=None)
@given(
    capacity=st.integers(1, 8),
    steps=st.lists(st.one_of(st.just("get"), st.integers(0, 1000)), max_size=60),
)
def test_inbox_model(capacity: int, steps: list[str | int]) -> None:
    """Against a model: puts beyond capacity are dropped and counted; gets come in put order."""

    async def run() -> None:
        inbox: Inbox[int] = Inbox(capacity, trio.lowlevel.current_trio_token())
        model: list[int] = []
        dropped = 0
        for step in steps:
            if step == "get":
                if model:
                    assert await inbox.get() == model.pop(0)
            else:
                assert isinstance(step, int)
                accepted = inbox.put(step)
                assert accepted == (len(model) < capacity)
                if accepted:
                    model.append(step)
                else:
                    dropped += 1
            assert len(inbox) == len(model)
        assert inbox.dropped == dropped

    trio.run(run)
