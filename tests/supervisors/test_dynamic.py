"""DynamicSupervisor: run-time children, max_children, restarts, intensity, shutdown."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import supervisors as sv


class Worker(sv.GenServer[Any, Any]):
    def __init__(self, log: list[str] | None = None, tag: str = "") -> None:
        self.log = log if log is not None else []
        self.tag = tag

    def init(self) -> None:
        self.log.append(f"start {self.tag}")

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        return self.tag

    def handle_cast(self, request: Any) -> None:
        if request == "crash":
            raise RuntimeError(f"{self.tag} crashed")
        if request == "stop":
            raise sv.Stop()

    def terminate(self, exit: sv.Exit) -> None:
        self.log.append(f"stop {self.tag} {exit.kind}")


async def test_start_child_and_max_children(nursery: trio.Nursery) -> None:
    dyn = sv.DynamicSupervisor(max_children=2)
    await nursery.start(dyn.run)
    a = await dyn.start_child(sv.actor_spec("a", Worker, tag="a"))
    await dyn.start_child(sv.actor_spec("b", Worker, tag="b"))
    with pytest.raises(sv.MaxChildrenReached):
        await dyn.start_child(sv.actor_spec("c", Worker, tag="c"))
    assert await a.call("who") == "a"
    counts = dyn.count_children()
    assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (2, 2, 2, 0)
    await dyn.terminate_child(a)
    assert len(dyn) == 1
    await dyn.start_child(sv.actor_spec("c", Worker, tag="c"))  # room again
    with pytest.raises(sv.NoSuchChild):
        await dyn.terminate_child(a)


@pytest.mark.parametrize(
    ("restart", "message", "restarted"),
    [
        (sv.Restart.PERMANENT, "crash", True),
        (sv.Restart.PERMANENT, "stop", True),
        (sv.Restart.TRANSIENT, "crash", True),
        (sv.Restart.TRANSIENT, "stop", False),
        (sv.Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_types(
    dynsup: sv.DynamicSupervisor, restart: sv.Restart, message: str, restarted: bool
) -> None:
    log: list[str] = []
    ref = await dynsup.start_child(sv.actor_spec("w", Worker, log, "w", restart=restart))
    await ref.cast(message)
    await trio.testing.wait_all_tasks_blocked()
    info = dynsup.which_children()
    if restarted:
        assert log[-1] == "start w"
        assert log.count("start w") == 2
        assert [(i.status, i.restarts) for i in info] == [(sv.ChildStatus.RUNNING, 1)]
        assert info[0].ref != ref
        assert info[0].ref.alive
        assert info[0].history[0].kind == ("crash" if message == "crash" else "normal")
    else:
        assert info == [], "dynamic children that are not restarted are removed"


async def test_intensity_escalates_and_terminates_the_other_children(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[str] = []
    dyn = sv.DynamicSupervisor(max_restarts=2, max_seconds=10, name="accounts")
    escalated: list[sv.RestartIntensityExceeded] = []

    async def supervised(*, task_status: trio.TaskStatus[Any]) -> None:
        try:
            await dyn.run(task_status=task_status)
        except sv.RestartIntensityExceeded as error:
            escalated.append(error)

    await nursery.start(supervised)
    bystander = await dyn.start_child(sv.actor_spec("b", Worker, log, "bystander"))
    crasher = await dyn.start_child(sv.actor_spec("c", Worker, log, "crasher"))
    for _ in range(2):  # two restarts within 10 s are allowed ...
        await dyn.which_children()[1].ref.cast("crash")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
    assert dyn.status == "running"
    assert bystander.alive
    assert not crasher.alive

    await dyn.which_children()[1].ref.cast("crash")  # ... the third escalates
    await dyn.wait_stopped()
    assert not bystander.alive
    assert "stop bystander shutdown" in log
    assert dyn.status == "stopped"
    await trio.testing.wait_all_tasks_blocked()
    assert [e.child_id for e in escalated] == ["c"]


async def test_escalation_is_raised_by_run(autojump_clock: trio.testing.MockClock) -> None:
    dyn = sv.DynamicSupervisor(max_restarts=0, max_seconds=5, name="fragile")
    caught: list[sv.RestartIntensityExceeded] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(dyn.run)
            ref = await dyn.start_child(sv.actor_spec("c", Worker, tag="c"))
            await ref.cast("crash")
    except* sv.RestartIntensityExceeded as group:
        caught.extend(group.exceptions)  # type: ignore[arg-type]
    [error] = caught
    assert error.supervisor == "fragile"
    assert isinstance(error.last_exit.error, RuntimeError)


async def test_shutdown_stops_every_child_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    class SlowStop(sv.GenServer[Any, Any]):
        async def terminate(self, exit: sv.Exit) -> None:
            await trio.sleep(2)

    dyn = sv.DynamicSupervisor()
    await nursery.start(dyn.run)
    refs = [await dyn.start_child(sv.actor_spec(i, SlowStop, shutdown=5)) for i in range(50)]
    before = trio.current_time()
    dyn.stop()
    await dyn.wait_stopped()
    assert trio.current_time() - before == pytest.approx(2), "in parallel, not 50 x 2 s"
    assert not any(ref.alive for ref in refs)


async def test_start_child_after_stop_is_refused(nursery: trio.Nursery) -> None:
    dyn = sv.DynamicSupervisor()
    await nursery.start(dyn.run)
    dyn.stop()
    await dyn.wait_stopped()
    with pytest.raises(sv.SupervisorStopping):
        await dyn.start_child(sv.actor_spec("late", Worker))


async def test_children_are_found_by_id_also_when_ids_repeat(
    dynsup: sv.DynamicSupervisor,
) -> None:
    """Operator actions find a dynamic child by id (a dict, not a walk over every child).
    Ids need not be unique: when the first child of an id goes, the next is found."""
    first = await dynsup.start_child(sv.actor_spec("x", Worker, tag="1"))
    await dynsup.start_child(sv.actor_spec("x", Worker, tag="2"))
    await dynsup.start_child(sv.actor_spec("y", Worker, tag="3"))
    assert dynsup.child_status("x") is sv.ChildStatus.RUNNING
    await dynsup.terminate_child(first)
    await dynsup.kill_child("x")  # the second "x" now: it is restarted (permanent)
    [info] = [i for i in dynsup.which_children() if i.id == "x"]
    assert info.restarts == 1
    assert await info.ref.call("who") == "2"
    ref = next(i.ref for i in dynsup.which_children() if i.id == "y")
    await dynsup.terminate_child(ref)
    with pytest.raises(sv.NoSuchChild):
        dynsup.child_status("y")
    with pytest.raises(sv.NoSuchChild):
        await dynsup.kill_child("z")


class Gated(sv.GenServer[Any, Any]):
    """An actor whose ``init`` waits for its gate (a start under way), and crashes on
    ``"crash"``."""

    def __init__(self, gates: dict[str, trio.Event], tag: str) -> None:
        self.gates, self.tag = gates, tag

    async def init(self) -> None:
        gate = self.gates.get(self.tag)
        if gate is not None:
            await gate.wait()

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        return self.tag

    def handle_cast(self, request: Any) -> None:
        raise RuntimeError(f"{self.tag} crashed")


def not_running_by_walk(dyn: sv.DynamicSupervisor) -> dict[str, str]:
    return {
        str(info.id): info.status.value
        for info in dyn.iter_children()
        if info.status is not sv.ChildStatus.RUNNING
    }


async def test_not_running_lists_the_children_a_walk_finds_not_running(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """``not_running()`` (an index, not a walk) against a walk of every child: a first start
    under way (stopped), a crash waiting out its backoff (restarting), an operator restart
    whose start is under way, a restarting child terminated, and a restart done."""
    dyn = sv.DynamicSupervisor(max_restarts=100, max_seconds=1)
    await nursery.start(dyn.run)
    gates: dict[str, trio.Event] = {}
    backoff = sv.Backoff(initial=10, maximum=10, jitter=0)
    refs = {
        tag: await dyn.start_child(sv.actor_spec(tag, Gated, gates, tag, backoff=backoff))
        for tag in ("a", "b", "c", "d", "e")
    }

    def check(expected: dict[str, str]) -> None:
        assert not_running_by_walk(dyn) == expected
        assert {str(i.id): i.status.value for i in dyn.not_running()} == expected

    check({})
    gates["slow"] = trio.Event()
    nursery.start_soon(dyn.start_child, sv.actor_spec("slow", Gated, gates, "slow"))
    await trio.testing.wait_all_tasks_blocked()
    check({"slow": "stopped"})
    gates["b"] = trio.Event()  # b's next init waits
    await refs["b"].cast("crash")
    await refs["c"].cast("crash")
    await trio.testing.wait_all_tasks_blocked()
    check({"slow": "stopped", "b": "restarting", "c": "restarting"})
    await dyn.terminate_child(refs["c"])  # its restart loop ends: gone
    gates["slow"].set()
    await trio.testing.wait_all_tasks_blocked()
    check({"b": "restarting"})
    autojump_clock.jump(10)  # b's backoff is over: its start runs (and waits on its gate)
    await trio.testing.wait_all_tasks_blocked()
    assert set(not_running_by_walk(dyn)) == {"b"}
    check(not_running_by_walk(dyn))
    gates["b"].set()
    await trio.testing.wait_all_tasks_blocked()
    check({})
    gates["d"] = trio.Event()
    nursery.start_soon(dyn.stop_and_restart_child, "d")  # an operator restart
    await trio.testing.wait_all_tasks_blocked()
    check({"d": "stopped"})
    gates["d"].set()
    await trio.testing.wait_all_tasks_blocked()
    check({})
    assert len(dyn) == 5  # a, b, d, e, slow


def restarted_by_walk(dyn: sv.DynamicSupervisor) -> dict[str, int]:
    return {str(info.id): info.restarts for info in dyn.iter_children() if info.restarts}


async def test_restarted_lists_the_children_a_walk_finds_restarted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """``restarted()`` (an index, not a walk) against a walk of every child: a crash waiting
    out its backoff (restarting), a restart done, an operator restart, a restarted child
    terminated, children never restarted (not listed)."""
    dyn = sv.DynamicSupervisor(max_restarts=100, max_seconds=1)
    await nursery.start(dyn.run)
    gates: dict[str, trio.Event] = {}
    backoff = sv.Backoff(initial=10, maximum=10, jitter=0)
    refs = {
        tag: await dyn.start_child(sv.actor_spec(tag, Gated, gates, tag, backoff=backoff))
        for tag in ("a", "b", "c", "d", "e")
    }

    def check(expected: dict[str, int]) -> None:
        assert restarted_by_walk(dyn) == expected
        assert {str(i.id): i.restarts for i in dyn.restarted()} == expected

    check({})
    await refs["b"].cast("crash")
    await refs["c"].cast("crash")
    await trio.testing.wait_all_tasks_blocked()
    check({"b": 1, "c": 1})  # restarting: counted before their restart runs
    autojump_clock.jump(10)
    await trio.testing.wait_all_tasks_blocked()
    check({"b": 1, "c": 1})  # restarted and running
    await dyn.stop_and_restart_child("d")  # an operator restart
    await trio.testing.wait_all_tasks_blocked()
    check(restarted_by_walk(dyn))
    assert "d" in restarted_by_walk(dyn)
    await dyn.terminate_child(dyn.child_info("c").ref)  # gone: not listed any more
    await dyn.child_info("b").ref.cast("crash")
    await trio.testing.wait_all_tasks_blocked()
    autojump_clock.jump(10)
    await trio.testing.wait_all_tasks_blocked()
    check({"b": 2, "d": restarted_by_walk(dyn)["d"]})
    assert len(dyn) == 4
