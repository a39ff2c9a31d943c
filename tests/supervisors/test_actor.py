"""GenServer actors: call, cast, info, bounded mailboxes, timeouts, crashes, monitors."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import supervisors as sv


class Echo(sv.GenServer[Any, Any]):
    """Replies with its request; records casts and infos; ``"boom"`` crashes it."""

    def init(self) -> None:
        self.seen: list[Any] = []

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        if request == "boom":
            raise ValueError("boom")
        if request == "seen":
            return list(self.seen)
        return request

    def handle_cast(self, request: Any) -> None:
        if request == "boom":
            raise ValueError("cast boom")
        self.seen.append(request)

    def handle_info(self, message: Any) -> None:
        self.seen.append(("info", message))


class AsyncEcho(sv.GenServer[Any, Any]):
    async def init(self) -> None:
        self.seen: list[Any] = []

    async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        if isinstance(request, tuple) and request[0] == "sleep":
            await trio.sleep(request[1])
            return "slept"
        await trio.lowlevel.checkpoint()
        return request

    async def handle_cast(self, request: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.seen.append(request)


async def start(dyn: sv.DynamicSupervisor, factory: Any, **options: Any) -> sv.ActorRef[Any, Any]:
    ref = await dyn.start_child(sv.actor_spec(object(), factory, **options))
    assert isinstance(ref, sv.ActorRef)
    return ref


@pytest.mark.parametrize("factory", [Echo, AsyncEcho])
async def test_call_replies_and_casts_keep_order(
    dynsup: sv.DynamicSupervisor, factory: Any
) -> None:
    ref = await start(dynsup, factory)
    assert await ref.call("hello") == "hello"
    for i in range(100):
        await ref.cast(i)
    await ref.call("sync")  # handled after the casts: one sender's messages stay in order
    assert ref._actor.seen == list(range(100))  # type: ignore[attr-defined]


async def test_call_timeout_raises_and_actor_keeps_running(
    dynsup: sv.DynamicSupervisor, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await start(dynsup, AsyncEcho)
    with pytest.raises(sv.CallTimeout) as info:
        await ref.call(("sleep", 10), timeout=1)
    assert info.value.timeout == 1
    assert ref.alive
    # The late reply is dropped; the next call gets its own reply.
    assert await ref.call("after", timeout=20) == "after"


async def test_call_to_dead_actor_raises_no_such_actor_at_once(
    dynsup: sv.DynamicSupervisor,
) -> None:
    ref = await start(dynsup, Echo, restart=sv.Restart.TEMPORARY)
    await dynsup.terminate_child(ref)
    assert not ref.alive
    with trio.fail_after(1):
        with pytest.raises(sv.NoSuchActor):
            await ref.call("anyone?")


async def test_crash_fails_the_call_being_handled_and_the_queued_ones(
    dynsup: sv.DynamicSupervisor,
) -> None:
    gate = trio.Event()

    class Fragile(sv.GenServer[Any, Any]):
        async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            await gate.wait()
            raise ValueError(f"boom on {request}")

    ref = await start(dynsup, Fragile, restart=sv.Restart.TEMPORARY)
    results: dict[str, tuple[bool, str]] = {}

    async def call(request: str) -> None:
        with pytest.raises(sv.ActorExited) as info:
            await ref.call(request)
        results[request] = (info.value.delivered, info.value.exit.kind)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "queued")
        await trio.testing.wait_all_tasks_blocked()
        assert ref.mailbox_depth == 1
        gate.set()
    # "first" was being handled when it crashed; "queued" was never read.
    assert results == {"first": (True, "crash"), "queued": (False, "crash")}
    assert not ref.alive


async def test_full_mailbox_makes_cast_wait_and_try_cast_fail(
    dynsup: sv.DynamicSupervisor,
) -> None:
    gate = trio.Event()

    class Slow(sv.GenServer[Any, Any]):
        def init(self) -> None:
            self.got: list[int] = []

        async def handle_cast(self, request: int) -> None:
            await gate.wait()
            self.got.append(request)

        def handle_call(self, request: Any, caller: sv.Caller[Any]) -> list[int]:
            return self.got

    ref = await start(dynsup, Slow, mailbox_size=3)
    for i in range(4):  # one is taken by the handler, three fill the mailbox
        await ref.cast(i)
    await trio.testing.wait_all_tasks_blocked()
    assert ref.mailbox_depth == 3
    assert not ref.try_cast(99)
    sent = trio.Event()

    async def blocked_sender() -> None:
        await ref.cast(4)
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set(), "cast must wait while the mailbox is full"
        gate.set()
    assert sent.is_set()
    assert await ref.call("got") == [0, 1, 2, 3, 4]


async def test_noreply_then_reply_later(dynsup: sv.DynamicSupervisor) -> None:
    class Deferred(sv.GenServer[Any, Any]):
        def init(self) -> None:
            self.pending: list[sv.Caller[Any]] = []

        def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            if request == "wait":
                self.pending.append(caller)
                return sv.NOREPLY
            for waiting in self.pending:  # "release": answer the parked callers
                waiting.reply("released")
            self.pending.clear()
            return "done"

    ref = await start(dynsup, Deferred)
    results: list[str] = []

    async def waiter() -> None:
        results.append(await ref.call("wait"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        # the actor is not blocked by the parked calls
        assert await ref.call("release") == "done"
    assert results == ["released", "released"]


async def test_send_reaches_handle_info(dynsup: sv.DynamicSupervisor) -> None:
    ref = await start(dynsup, Echo)
    await ref.send("ping")
    assert ref.try_send("pong")
    assert await ref.call("seen") == [("info", "ping"), ("info", "pong")]


@pytest.mark.parametrize("factory", [Echo, AsyncEcho])
async def test_mail_of_every_kind_and_shape_arrives_as_sent_in_order(
    dynsup: sv.DynamicSupervisor, factory: Any
) -> None:
    """Info messages are queued bare and the other kinds wrapped: an info message shaped
    like anything the runtime might queue (tuples of kind numbers, ``None``) reaches
    ``handle_info`` unchanged, in order with casts, also after actors went idle and their
    emptied mailboxes were reused by others."""
    refs = [await start(dynsup, factory) for _ in range(3)]
    shapes: list[Any] = [(0, "x", None), (1, "y", None), (2, 3, None), (3, None), None, ()]
    for round_ in range(3):
        for ref in refs:
            for shape in shapes:
                assert ref.try_send(shape)
                await ref.cast(("cast", round_))
        await trio.testing.wait_all_tasks_blocked()  # all idle: their mailboxes recycled
    expected = [
        item
        for round_ in range(3)
        for shape in shapes
        for item in (("info", shape), ("cast", round_))
    ]
    for ref in refs:
        seen = ref._actor.seen  # type: ignore[attr-defined]
        assert seen == expected if factory is Echo else [i for i in expected if i[0] == "cast"]


class Gated(sv.GenServer[Any, Any]):
    """Blocks in the call ``"wait"`` until ``gate`` is set (its mail queues meanwhile)."""

    def init(self) -> None:
        self.gate = trio.Event()
        self.seen: list[Any] = []

    async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        if request == "wait":
            await self.gate.wait()
        return request

    def handle_cast(self, request: Any) -> None:
        self.seen.append(("cast", request))

    def handle_info(self, message: Any) -> None:
        self.seen.append(("info", message))


class Lists:
    """A ``merge`` for ``try_send``: joins a list message to a queued list (of at most
    ``limit`` items), leaves every other message alone; records what it was shown."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.shown: list[Any] = []

    def __call__(self, queued: Any, message: Any) -> bool:
        self.shown.append(queued)
        if type(queued) is list and type(message) is list and len(queued) < self.limit:
            queued += message
            return True
        return False


async def test_try_send_merges_only_into_the_newest_mail_while_it_is_an_untaken_info(
    dynsup: sv.DynamicSupervisor,
) -> None:
    ref = await start(dynsup, Gated)
    merge = Lists()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ref.call, "wait")
        await trio.testing.wait_all_tasks_blocked()  # the actor waits in the call
        assert ref.try_send(["a"], merge)  # nothing queued: queued as is
        assert merge.shown == []
        assert ref.try_send(["b"], merge)  # joins the list still waiting
        assert ref.try_send(("later",), merge)  # merge says no: queued apart
        assert ref.try_send(["c"], merge)  # the newest mail is not a list: apart
        assert merge.shown == [["a", "b"], ["a", "b"], ("later",)]
        await ref.cast("d")
        assert ref.try_send(["e"], merge)  # a cast is the newest mail: not shown to merge
        nursery.start_soon(ref.call, "queued")
        await trio.testing.wait_all_tasks_blocked()
        assert ref.try_send(["f"], merge)  # nor is a call
        assert len(merge.shown) == 3
        assert ref.mailbox_depth == 7
        ref._actor.gate.set()  # type: ignore[attr-defined]
    assert await ref.call("sync") == "sync"
    assert ref._actor.seen == [  # type: ignore[attr-defined]
        ("info", ["a", "b"]),
        ("info", ("later",)),
        ("info", ["c"]),
        ("cast", "d"),
        ("info", ["e"]),
        ("info", ["f"]),
    ]


async def test_a_full_mailbox_takes_a_merged_message_and_refuses_the_rest(
    dynsup: sv.DynamicSupervisor,
) -> None:
    ref = await start(dynsup, Gated, mailbox_size=2)
    merge = Lists(limit=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ref.call, "wait")
        await trio.testing.wait_all_tasks_blocked()
        assert ref.try_send(("x",), merge)
        assert ref.try_send([1], merge)  # full now
        assert ref.try_send([2], merge)  # merged: needs no room
        assert ref.try_send([3], merge)
        assert not ref.try_send([4], merge)  # merge says no (3 items) and there is no room
        assert not ref.try_send([5])  # no merge: refused as before
        ref._actor.gate.set()  # type: ignore[attr-defined]
    assert await ref.call("sync") == "sync"
    assert ref._actor.seen == [("info", ("x",)), ("info", [1, 2, 3])]  # type: ignore[attr-defined]


class Holding(sv.GenServer[Any, Any]):
    """Its ``handle_info`` waits for ``gate`` while it holds a message."""

    def init(self) -> None:
        self.gate = trio.Event()
        self.seen: list[Any] = []

    async def handle_info(self, message: Any) -> None:
        self.seen.append(list(message))
        await self.gate.wait()
        self.seen.append(list(message))


async def test_try_send_never_merges_into_a_message_being_handled_or_a_dead_actors(
    dynsup: sv.DynamicSupervisor,
) -> None:
    ref = await start(dynsup, Holding, restart=sv.Restart.TEMPORARY)
    merge = Lists()
    assert ref.try_send(["a"], merge)
    await trio.testing.wait_all_tasks_blocked()  # taken: its handler waits
    assert ref.try_send(["b"], merge)  # so this one is queued apart
    assert merge.shown == []
    ref._actor.gate.set()  # type: ignore[attr-defined]
    await trio.testing.wait_all_tasks_blocked()
    assert ref._actor.seen == [["a"], ["a"], ["b"], ["b"]]  # type: ignore[attr-defined]

    await dynsup.terminate_child(ref)
    assert not ref.try_send(["c"], merge)
    assert merge.shown == []


async def test_a_name_ref_merges_through_the_actor_holding_the_name(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    assert not registry.ref("nobody").try_send(["x"], Lists())  # no actor
    ref = await dynsup.start_child(sv.actor_spec("g", Gated, name=(registry, "g")))
    merge = Lists()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ref.call, "wait")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.ref("g").try_send(["a"], merge)
        assert registry.ref("g").try_send(["b"], merge)
        ref._actor.gate.set()
    assert await ref.call("sync") == "sync"
    assert ref._actor.seen == [("info", ["a", "b"])]


def test_no_sender_reads_another_actors_mailbox() -> None:
    """A queued message changes only through a merge the runtime applies (above);
    ``last_info``, which handed a sender the newest mail, is gone."""
    assert not hasattr(sv.ActorRef, "last_info")
    assert not hasattr(sv.NameRef, "last_info")


class Mixed(sv.GenServer[Any, Any]):
    """A plain ``handle_info`` (run without a coroutine) beside async callbacks; the info
    ``"boom"`` crashes it, and its async ``terminate`` awaits before recording the exit."""

    def init(self) -> None:
        self.seen: list[Any] = []
        self.exits: list[str] = []
        self.gate = trio.Event()

    async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return list(self.seen) if request == "seen" else request

    async def handle_cast(self, request: Any) -> None:
        if request == "hold":
            await self.gate.wait()
            return
        await trio.lowlevel.checkpoint()
        self.seen.append(("cast", request))

    def handle_info(self, message: Any) -> None:
        if message == "boom":
            raise ValueError("info boom")
        self.seen.append(("info", message))

    async def terminate(self, exit: sv.Exit) -> None:
        await trio.lowlevel.checkpoint()
        self.exits.append(exit.kind)


async def test_plain_handle_info_of_an_async_actor_keeps_order_with_async_mail(
    dynsup: sv.DynamicSupervisor,
) -> None:
    ref = await start(dynsup, Mixed)
    for n in range(300):  # more than a worker's throughput: the drain resumes in order
        assert ref.try_send(n)
        if n % 7 == 0:
            await ref.cast(n)
    seen = await ref.call("seen")
    expected: list[Any] = []
    for n in range(300):
        expected.append(("info", n))
        if n % 7 == 0:
            expected.append(("cast", n))
    assert seen == expected


async def test_a_plain_handle_info_that_raises_runs_the_async_terminate(
    dynsup: sv.DynamicSupervisor,
) -> None:
    """A plain ``handle_info`` beside async callbacks (as meterd's meter actor has) that
    raises: the async ``terminate`` runs, and the mail queued behind dies with the actor."""
    ref = await start(dynsup, Mixed, restart=sv.Restart.TEMPORARY)
    actor = ref._actor
    monitor = ref.monitor()
    assert ref.try_send("before")
    assert ref.try_send("boom")
    assert ref.try_send("after")  # dies in the mailbox
    assert ref.try_cast("never")  # so does this cast
    with trio.fail_after(10):  # a guard: the crash must end the actor, not hang it
        assert (await monitor.wait()).kind == "crash"
    assert actor.seen == [("info", "before")]  # type: ignore[attr-defined]
    assert actor.exits == ["crash"]  # type: ignore[attr-defined]
    assert not ref.alive


async def test_monitor_reports_the_exit_reason(dynsup: sv.DynamicSupervisor) -> None:
    ref = await start(dynsup, Echo, restart=sv.Restart.TEMPORARY)
    monitor = ref.monitor()
    await ref.cast("boom")
    exit = await monitor.wait()
    assert exit.kind == "crash"
    assert isinstance(exit.error, ValueError)
    # Monitoring an actor that is gone reports at once (OTP's noproc).
    late = ref.monitor()
    assert late.exit is not None


async def test_each_monitor_fires_once_unless_cancelled(dynsup: sv.DynamicSupervisor) -> None:
    """One monitor, several, and cancelled ones (the runtime keeps a lone monitor
    without a list): every one left is told, once, in the order made."""
    ref = await start(dynsup, Echo, restart=sv.Restart.TEMPORARY)
    told: list[tuple[str, str]] = []

    def note(tag: str) -> Any:
        return lambda monitor, exit: told.append((tag, exit.kind))

    first = ref.monitor(note("first"))
    first.cancel()  # the only one, cancelled: none left
    lone = ref.monitor(note("lone"))
    second = ref.monitor(note("second"))
    third = ref.monitor(note("third"))
    second.cancel()
    lone.cancel()
    fourth = ref.monitor(note("fourth"))
    await ref.cast("boom")
    assert (await third.wait()).kind == "crash"
    assert (await fourth.wait()).kind == "crash"
    assert told == [("third", "crash"), ("fourth", "crash")]


async def test_gen_server_monitor_delivers_down_to_handle_info(
    dynsup: sv.DynamicSupervisor,
) -> None:
    class Watcher(sv.GenServer[Any, Any]):
        def init(self) -> None:
            self.downs: list[sv.Down] = []

        def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            if request == "downs":
                return [(d.ref, d.exit.kind) for d in self.downs]
            self.monitor(request)
            return "watching"

        def handle_info(self, message: Any) -> None:
            if isinstance(message, sv.Down):
                self.downs.append(message)

    watched = await start(dynsup, Echo, restart=sv.Restart.TEMPORARY)
    watcher = await start(dynsup, Watcher)
    assert await watcher.call(watched) == "watching"
    await watched.cast("boom")
    await trio.testing.wait_all_tasks_blocked()
    assert await watcher.call("downs") == [(watched, "crash")]


async def test_stop_exits_normally_and_runs_terminate(dynsup: sv.DynamicSupervisor) -> None:
    terminated: list[sv.Exit] = []

    class Stopper(sv.GenServer[Any, Any]):
        def handle_cast(self, request: Any) -> None:
            raise sv.Stop()

        def terminate(self, exit: sv.Exit) -> None:
            terminated.append(exit)

    ref = await start(dynsup, Stopper, restart=sv.Restart.TRANSIENT)
    monitor = ref.monitor()
    await ref.cast("stop")
    assert (await monitor.wait()).kind == "normal"
    assert [e.kind for e in terminated] == ["normal"]
    await trio.testing.wait_all_tasks_blocked()  # let the supervisor handle the exit
    assert len(dynsup) == 0, "a transient child that exits normally is not restarted"


async def test_init_failure_is_a_start_error_and_leaves_no_actor(
    dynsup: sv.DynamicSupervisor,
) -> None:
    class Broken(sv.GenServer[Any, Any]):
        def init(self) -> None:
            raise RuntimeError("no database")

    registry = sv.Registry()
    with pytest.raises(sv.StartError) as info:
        await dynsup.start_child(sv.actor_spec("b", Broken, name=(registry, "b")))
    assert isinstance(info.value.reason, RuntimeError)
    assert info.value.child_id == "b"
    assert len(dynsup) == 0
    assert "b" not in registry


async def test_mail_sent_during_init_waits_for_init(dynsup: sv.DynamicSupervisor) -> None:
    release = trio.Event()
    registry = sv.Registry()

    class SlowInit(sv.GenServer[Any, Any]):
        async def init(self) -> None:
            self.ready = False
            await release.wait()
            self.ready = True

        def handle_call(self, request: Any, caller: sv.Caller[Any]) -> bool:
            return self.ready

    answers: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dynsup.start_child, sv.actor_spec("s", SlowInit, name=(registry, "s")))
        await trio.testing.wait_all_tasks_blocked()

        async def ask() -> None:
            answers.append(await registry.ref("s").call("ready?"))

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []
        release.set()
    assert answers == [True]


async def test_shutdown_gives_terminate_its_grace_then_kills(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[str] = []

    class Slow(sv.GenServer[Any, Any]):
        def __init__(self, name: str, takes: float) -> None:
            self.name = name
            self.takes = takes

        async def terminate(self, exit: sv.Exit) -> None:
            log.append(f"{self.name} terminating ({exit.kind})")
            await trio.sleep(self.takes)
            log.append(f"{self.name} terminated")

    sup = sv.Supervisor(
        [
            sv.actor_spec("quick", Slow, "quick", 1, shutdown=5),
            sv.actor_spec("stuck", Slow, "stuck", 100, shutdown=2),
        ]
    )
    await nursery.start(sup.run)
    started = trio.current_time()
    sup.stop()
    await sup.wait_stopped()
    # reverse start order; "stuck" is cut off after its 2 s grace
    assert log == [
        "stuck terminating (shutdown)",
        "quick terminating (shutdown)",
        "quick terminated",
    ]
    assert trio.current_time() - started == pytest.approx(3)


async def test_a_waiting_handler_blocks_only_its_own_actor(dynsup: sv.DynamicSupervisor) -> None:
    gate = trio.Event()

    class Waiter(sv.GenServer[Any, Any]):
        async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            if request == "wait":
                await gate.wait()
            return request

    blocked = await start(dynsup, Waiter)
    others = [await start(dynsup, Waiter) for _ in range(5)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked.call, "wait")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):  # the dispatcher hands the run queue to another worker
            assert [await other.call(i) for i, other in enumerate(others)] == list(range(5))
        gate.set()


async def test_killing_an_actor_stuck_in_a_handler_leaves_the_others_running(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    class Stuck(sv.GenServer[Any, Any]):
        async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            if request == "hang":
                await trio.sleep_forever()
            return request

        async def terminate(self, exit: sv.Exit) -> None:
            await trio.sleep_forever()  # ignores the shutdown: must be killed after its grace

    dyn = sv.DynamicSupervisor()
    await nursery.start(dyn.run)
    stuck = await dyn.start_child(sv.actor_spec("stuck", Stuck, shutdown=3))
    other = await dyn.start_child(sv.actor_spec("other", Stuck))
    monitor = stuck.monitor()
    failed: list[sv.ActorExited] = []

    async def hung_call() -> None:
        with pytest.raises(sv.ActorExited) as info:
            await stuck.call("hang", timeout=1000)
        failed.append(info.value)

    nursery.start_soon(hung_call)
    await trio.testing.wait_all_tasks_blocked()
    before = trio.current_time()
    await dyn.terminate_child(stuck)  # shutdown waits behind the hung call, then kills
    assert trio.current_time() - before == pytest.approx(3)
    assert (await monitor.wait()).kind == "killed"
    await trio.testing.wait_all_tasks_blocked()
    assert [(e.delivered, e.exit.kind) for e in failed] == [(True, "killed")]
    assert await other.call("still here") == "still here"
