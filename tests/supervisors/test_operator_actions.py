"""Operator actions on a running tree: kill_child, stop_and_restart_child, find_child."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import supervisors as sv

_INCARNATIONS = itertools.count(1)


class Numbered(sv.GenServer[Any, Any]):
    """An actor whose calls answer a number unique to this incarnation (not ``id(self)``:
    a freed object's id is reused)."""

    def __init__(self) -> None:
        self.incarnation = next(_INCARNATIONS)

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        return self.incarnation


class Worker(Numbered):
    """Logs its starts and its terminate callbacks (a kill skips terminate)."""

    def __init__(self, log: list[str], tag: str) -> None:
        super().__init__()
        self.log = log
        self.tag = tag

    def init(self) -> None:
        self.log.append(f"start {self.tag}")

    def terminate(self, exit: sv.Exit) -> None:
        self.log.append(f"stop {self.tag} {exit.kind}")


def worker(tag: str, log: list[str], **options: Any) -> sv.ChildSpec:
    return sv.actor_spec(tag, Worker, log, tag, **options)


async def incarnation(sup: sv.SupervisorCore, child_id: str) -> int:
    [info] = [i for i in sup.which_children() if i.id == child_id]
    ident: int = await info.ref.call("who")
    return ident


async def test_kill_skips_terminate_restarts_and_counts_toward_intensity(
    nursery: trio.Nursery,
) -> None:
    log: list[str] = []
    sup = sv.Supervisor([worker("a", log)], max_restarts=1, max_seconds=3600, name="top")
    failed: list[BaseException] = []

    async def run(*, task_status: trio.TaskStatus[Any]) -> None:
        try:
            await sup.run(task_status=task_status)
        except sv.RestartIntensityExceeded as error:
            failed.append(error)

    await nursery.start(run)
    before = await incarnation(sup, "a")
    await sup.kill_child("a")
    assert log == ["start a", "start a"]  # no "stop a ...": killed without terminate
    assert sup.child_status("a") is sv.ChildStatus.RUNNING
    assert await incarnation(sup, "a") != before
    [info] = sup.which_children()
    assert info.restarts == 1
    assert info.history[-1].kind == "killed"
    assert sup.restart_counts == {"exit": 1}
    # A second kill within max_seconds exceeds max_restarts=1: the supervisor gives up,
    # exactly as for a second crash. The kill was done: the caller is not told otherwise.
    await sup.kill_child("a")
    assert not sup.running
    await sup.wait_stopped()
    assert len(failed) == 1
    assert log == ["start a", "start a"]


async def test_stop_and_restart_is_graceful_and_not_counted_as_a_crash(
    nursery: trio.Nursery,
) -> None:
    log: list[str] = []
    sup = sv.Supervisor([worker("a", log)], max_restarts=0, max_seconds=3600, name="top")
    await nursery.start(sup.run)
    for _ in range(3):  # max_restarts=0: any crash-like restart would stop the supervisor
        before = await incarnation(sup, "a")
        await sup.stop_and_restart_child("a")
        assert await incarnation(sup, "a") != before
    assert log == ["start a", *["stop a shutdown", "start a"] * 3]
    [info] = sup.which_children()
    assert info.restarts == 3
    assert [r.kind for r in info.history] == ["operator"] * 3
    assert sup.restart_counts == {"operator": 3}
    assert sup.status == "running"


async def test_rest_for_one_kill_restarts_the_rest_but_an_operator_restart_does_not(
    nursery: trio.Nursery,
) -> None:
    log: list[str] = []
    sup = sv.Supervisor(
        [worker("a", log), worker("b", log), worker("c", log)],
        strategy=sv.Strategy.REST_FOR_ONE,
        max_restarts=10,
        name="top",
    )
    await nursery.start(sup.run)
    log.clear()
    await sup.kill_child("b")
    assert log == ["stop c shutdown", "start b", "start c"]
    log.clear()
    await sup.stop_and_restart_child("b")
    assert log == ["stop b shutdown", "start b"]


async def test_unknown_and_stopped_children(nursery: trio.Nursery) -> None:
    log: list[str] = []
    sup = sv.Supervisor([worker("a", log, restart=sv.Restart.TRANSIENT)], name="top")
    await nursery.start(sup.run)
    with pytest.raises(sv.NoSuchChild):
        await sup.kill_child("nope")
    with pytest.raises(sv.NoSuchChild):
        await sup.stop_and_restart_child("nope")
    await sup.terminate_child("a")
    assert sup.child_status("a") is sv.ChildStatus.STOPPED
    with pytest.raises(sv.ChildNotRunning):
        await sup.kill_child("a")
    with pytest.raises(sv.ChildNotRunning):
        await sup.stop_and_restart_child("a")


async def test_dynamic_children_by_id(dynsup: sv.DynamicSupervisor) -> None:
    log: list[str] = []
    await dynsup.start_child(worker("x", log, restart=sv.Restart.TRANSIENT))
    first = await incarnation(dynsup, "x")
    await dynsup.kill_child("x")  # killed is abnormal: a transient child comes back
    second = await incarnation(dynsup, "x")
    await dynsup.stop_and_restart_child("x")
    third = await incarnation(dynsup, "x")
    assert len({first, second, third}) == 3
    assert log == ["start x", "start x", "stop x shutdown", "start x"]
    assert dynsup.restart_counts == {"exit": 1, "operator": 1}
    assert len(dynsup) == 1
    temporary = worker("t", log, restart=sv.Restart.TEMPORARY)
    await dynsup.start_child(temporary)
    await dynsup.kill_child("t")  # temporary: never restarted, removed
    with pytest.raises(sv.NoSuchChild):
        dynsup.child_status("t")


class Gated(Numbered):
    """An actor whose ``init`` and ``terminate`` wait for the test to open their gate."""

    def __init__(self, gates: dict[str, trio.Event]) -> None:
        super().__init__()
        self.gates = gates

    async def init(self) -> None:
        if "init" in self.gates:
            await self.gates["init"].wait()

    async def terminate(self, exit: sv.Exit) -> None:
        await self.gates["terminate"].wait()


async def test_a_start_under_the_name_of_a_child_being_restarted_is_already_started(
    dynsup: sv.DynamicSupervisor,
) -> None:
    """While an operator restart stops a named child and starts it again, someone starts a
    new child under the same name (as the accounts layer wakes an account): the name stays
    reserved for the child being restarted, so that start fails with AlreadyStarted, at
    either step, and there is exactly one child afterwards."""
    registry = sv.Registry()
    gates = {"terminate": trio.Event()}

    def spec() -> sv.ChildSpec:
        return sv.actor_spec("n", Gated, gates, name=(registry, "n"))

    first = await dynsup.start_child(spec())
    gates["init"] = trio.Event()  # the next incarnation's init waits
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dynsup.stop_and_restart_child, "n")
        await trio.testing.wait_all_tasks_blocked()  # it waits in terminate
        assert registry.whereis("n") is None
        with pytest.raises(sv.AlreadyStarted):
            await dynsup.start_child(spec())
        gates["terminate"].set()
        await trio.testing.wait_all_tasks_blocked()  # the new incarnation waits in init
        assert registry.restarting("n")
        with pytest.raises(sv.AlreadyStarted):
            await dynsup.start_child(spec())
        gates["init"].set()
    assert len(dynsup) == 1
    assert dynsup.child_status("n") is sv.ChildStatus.RUNNING
    second = registry.whereis("n")
    assert second is not None
    assert second != first
    assert await registry.ref("n").call("who") == await second.call("who")


async def test_find_child_by_path(nursery: trio.Nursery) -> None:
    log: list[str] = []
    inner = sv.DynamicSupervisor(name="meters")
    root = sv.Supervisor(
        [worker("w", log), sv.Supervisor.child_spec("mid", [inner.as_child("meters")])],
        name="root",
    )
    await nursery.start(root.run)
    await inner.start_child(sv.actor_spec("acct-1", Worker, log, "acct", label="acme"))
    assert sv.find_child(root, ["root", "w"]) == (root, "w")
    sup, child_id = sv.find_child(root, ["root", "mid", "meters", "acme"])
    assert (sup, child_id) == (inner, "acct-1")
    for bad in (["root"], ["other", "w"], ["root", "x"], ["root", "w", "deeper"]):
        with pytest.raises(sv.NoSuchChild):
            sv.find_child(root, bad)


class SlowToStop(Numbered):
    """A named actor whose terminate awaits (as a meter flushing to the store)."""

    async def terminate(self, exit: sv.Exit) -> None:
        await trio.sleep_forever()


async def test_killing_a_supervisor_releases_the_names_its_actors_held(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A kill cancels the killed supervisor's shutdown; its children's names must be
    released anyway, or nobody could ever start (or call) an actor under them again."""
    registry = sv.Registry()
    inner = sv.DynamicSupervisor(name="meters")
    root = sv.Supervisor([inner.as_child("meters")], max_restarts=10, name="root")
    await nursery.start(root.run)
    for key in ("acme", "globex"):
        await inner.start_child(sv.actor_spec(key, SlowToStop, name=(registry, key)))
    await root.kill_child("meters")
    assert inner.running  # restarted by root, empty
    assert len(registry) == 0
    ref = await inner.start_child(sv.actor_spec("acme", SlowToStop, name=(registry, "acme")))
    with trio.fail_after(1):
        assert await registry.ref("acme").call("who") == await ref.call("who")


async def test_a_request_in_progress_is_answered_when_its_supervisor_is_killed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """An operator restart waits for a slow graceful stop; meanwhile its supervisor is
    killed by its parent. The operator is told at once rather than left waiting."""
    inner = sv.DynamicSupervisor(name="meters")
    root = sv.Supervisor([inner.as_child("meters")], max_restarts=10, name="root")
    await nursery.start(root.run)
    await inner.start_child(sv.actor_spec("acme", SlowToStop, shutdown=100))
    answered = trio.Event()
    errors: list[BaseException] = []

    async def restart() -> None:
        try:
            await inner.stop_and_restart_child("acme")
        except sv.SupervisorStopping as error:
            errors.append(error)
        answered.set()

    nursery.start_soon(restart)
    await trio.testing.wait_all_tasks_blocked()  # the restart waits in terminate
    nursery.start_soon(root.kill_child, "meters")
    with trio.fail_after(1):  # the stop would take 100 s
        await answered.wait()
    assert len(errors) == 1


class FailsAfterFirstStart(sv.GenServer[Any, Any]):
    """Starts once; every later start fails (its resource went away meanwhile)."""

    def __init__(self, starts: list[int]) -> None:
        self.starts = starts

    def init(self) -> None:
        self.starts.append(1)
        if len(self.starts) > 1:
            raise OSError("the disk went away")


async def test_a_failed_operator_restart_leaves_the_child_stopped_and_tells_the_caller(
    nursery: trio.Nursery,
) -> None:
    """As OTP's restart_child: the start error goes to the caller, the child stays
    stopped, and the failure does not count toward the intensity (max_restarts=0)."""
    starts: list[int] = []
    spec = sv.actor_spec("a", FailsAfterFirstStart, starts)
    sup = sv.Supervisor([spec], max_restarts=0, max_seconds=3600, name="top")
    await nursery.start(sup.run)
    with pytest.raises(sv.StartError) as raised:
        await sup.stop_and_restart_child("a")
    assert isinstance(raised.value.reason, OSError)
    await trio.testing.wait_all_tasks_blocked()
    assert starts == [1, 1]  # not retried
    assert sup.child_status("a") is sv.ChildStatus.STOPPED
    assert sup.status == "running"
    assert "exit" not in sup.restart_counts


async def test_a_failed_operator_restart_removes_a_dynamic_child_and_frees_its_name(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    starts: list[int] = []
    await dynsup.start_child(sv.actor_spec("a", FailsAfterFirstStart, starts, name=(registry, "a")))
    with pytest.raises(sv.StartError):
        await dynsup.stop_and_restart_child("a")
    await trio.testing.wait_all_tasks_blocked()
    assert starts == [1, 1]
    with pytest.raises(sv.NoSuchChild):
        dynsup.child_status("a")
    assert "a" not in registry
    assert "exit" not in dynsup.restart_counts


class Flushing(Numbered):
    """A named actor whose terminate takes 3 s (a meter writing its checkpoint)."""

    def __init__(self, log: list[str], tag: str) -> None:
        super().__init__()
        self.log = log
        self.tag = tag

    def init(self) -> None:
        self.log.append(f"init {self.tag}")

    async def terminate(self, exit: sv.Exit) -> None:
        self.log.append(f"terminate {self.tag}")
        await trio.sleep(3)
        self.log.append(f"terminated {self.tag}")


async def test_no_new_actor_takes_a_name_before_the_killed_supervisors_actor_ended(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Names are released when a killed supervisor's wait is cancelled, but its actors
    still run (shielded) in its nursery until their terminate ends. No second actor for
    the same name may start meanwhile: two meters of one account would both write it.
    A start during that time is refused (the supervisor is stopping); the kill returns,
    and a new actor starts, only once the old one has ended."""
    log: list[str] = []
    registry = sv.Registry()
    inner = sv.DynamicSupervisor(name="meters")
    root = sv.Supervisor([inner.as_child("meters")], max_restarts=10, name="root")
    await nursery.start(root.run)

    def spec(tag: str) -> sv.ChildSpec:
        return sv.actor_spec("acme", Flushing, log, tag, name=(registry, "acme"))

    await inner.start_child(spec("old"))
    refused: list[BaseException] = []

    async def racer() -> None:
        await trio.sleep(1)  # during the old actor's 3 s terminate
        try:
            await inner.start_child(spec("racer"))
        except sv.SupervisorStopping as error:
            refused.append(error)
        log.append("racer done")

    nursery.start_soon(racer)
    await root.kill_child("meters")
    log.append("killed")
    await inner.start_child(spec("new"))
    assert log == [
        "init old",
        "terminate old",
        "racer done",
        "terminated old",
        "killed",
        "init new",
    ]
    assert len(refused) == 1
