"""Registry: unique names, races, names that outlive incarnations."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import supervisors as sv
from tests.examples import examples


class Named(sv.GenServer[Any, Any]):
    def __init__(self, tag: int = 0, init_delay: float = 0) -> None:
        self.tag = tag
        self.init_delay = init_delay

    async def init(self) -> None:
        if self.init_delay:
            await trio.sleep(self.init_delay)

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        if request == "boom":
            raise ValueError("boom")
        return self.tag


@settings(max_examples=examples(40), deadline=None)
@given(delays=st.lists(st.sampled_from([0, 0, 0.5, 1, 2]), min_size=2, max_size=8))
def test_racing_starts_of_one_name_leave_exactly_one_actor(delays: list[float]) -> None:
    async def main() -> None:
        registry = sv.Registry()
        dyn = sv.DynamicSupervisor(name="accounts")
        outcomes: list[Any] = []

        async def start(tag: int, delay: float) -> None:
            await trio.sleep(delay / 10)  # racers arrive at different moments
            try:
                outcomes.append(
                    await dyn.start_child(
                        sv.actor_spec(tag, Named, tag, delay, name=(registry, "acct-1"))
                    )
                )
            except sv.AlreadyStarted as error:
                outcomes.append(error)

        async with trio.open_nursery() as nursery:
            await nursery.start(dyn.run)
            async with trio.open_nursery() as racers:
                for tag, delay in enumerate(delays):
                    racers.start_soon(start, tag, delay)
            winners = [o for o in outcomes if isinstance(o, sv.ActorRef)]
            losers = [o for o in outcomes if isinstance(o, sv.AlreadyStarted)]
            assert len(winners) == 1
            assert len(losers) == len(delays) - 1
            assert dyn.count_children().active == 1
            assert all(loser.existing in (None, winners[0]) for loser in losers)
            assert registry.whereis("acct-1") == winners[0]
            dyn.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_name_is_released_when_a_temporary_actor_ends(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    ref = await dynsup.start_child(
        sv.actor_spec("a", Named, name=(registry, "a"), restart=sv.Restart.TEMPORARY)
    )
    assert registry.whereis("a") == ref
    with pytest.raises(sv.ActorExited):
        await ref.call("boom")
    await trio.testing.wait_all_tasks_blocked()
    assert "a" not in registry
    with pytest.raises(sv.NoSuchActor):
        await registry.ref("a").call("anyone?")
    # and the name can be taken again
    again = await dynsup.start_child(sv.actor_spec("a2", Named, 7, name=(registry, "a")))
    assert await registry.ref("a").call("tag") == 7
    assert again == registry.whereis("a")


async def test_call_by_name_waits_for_the_restarting_incarnation(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = sv.Registry()
    # Each incarnation takes 3 s to init, so the restart takes a while.
    sup = sv.Supervisor(
        [sv.actor_spec("acct", Named, 1, 3, name=(registry, "acct"))], max_restarts=5
    )
    await nursery.start(sup.run)
    name = registry.ref("acct")
    first = registry.whereis("acct")
    with pytest.raises(sv.ActorExited):
        await name.call("boom")
    await trio.testing.wait_all_tasks_blocked()
    assert registry.restarting("acct")
    before = trio.current_time()
    assert await name.call("tag", timeout=10) == 1  # waited, did not fail
    assert trio.current_time() - before == pytest.approx(3)
    assert registry.whereis("acct") not in (None, first)


async def test_call_by_name_times_out_if_the_restart_takes_too_long(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = sv.Registry()
    sup = sv.Supervisor([sv.actor_spec("acct", Named, 1, 30, name=(registry, "acct"))])
    await nursery.start(sup.run)
    with pytest.raises(sv.ActorExited):
        await registry.ref("acct").call("boom")
    with pytest.raises(sv.CallTimeout):
        await registry.ref("acct").call("tag", timeout=5)


async def test_undelivered_calls_by_name_go_to_the_next_incarnation(
    nursery: trio.Nursery,
) -> None:
    registry = sv.Registry()
    gate = trio.Event()
    incarnations: list[int] = []

    class Crashy(sv.GenServer[Any, Any]):
        def init(self) -> None:
            incarnations.append(1)
            self.number = len(incarnations)

        async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
            if request == "boom":
                await gate.wait()
                raise ValueError("boom")
            return self.number

    sup = sv.Supervisor([sv.actor_spec("c", Crashy, name=(registry, "c"))])
    await nursery.start(sup.run)
    name = registry.ref("c")
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await name.call("which"))

    async def crash() -> None:
        with pytest.raises(sv.ActorExited):
            await name.call("boom")

    async with trio.open_nursery() as callers:
        callers.start_soon(crash)
        await trio.testing.wait_all_tasks_blocked()
        callers.start_soon(ask)  # queued behind the crash, never read by incarnation 1
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert answers == [2]


async def test_names_are_released_when_the_supervisor_stops(nursery: trio.Nursery) -> None:
    registry = sv.Registry()
    sup = sv.Supervisor([sv.actor_spec("a", Named, name=(registry, "a"))])
    await nursery.start(sup.run)
    assert registry.whereis("a") is not None
    sup.stop()
    await sup.wait_stopped()
    assert len(registry) == 0


# ---- the registry on its own: cleanup through monitors, owners -------------------------


class Lingering(sv.GenServer[Any, Any]):
    """Its ``terminate`` waits for ``gate``: it has ended (to the world) but is not gone."""

    def init(self) -> None:
        self.gate = trio.Event()

    def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        return request

    async def terminate(self, exit: sv.Exit) -> None:
        await self.gate.wait()


async def test_a_key_goes_when_its_actor_ends_with_nobody_telling_the_registry(
    dynsup: sv.DynamicSupervisor,
) -> None:
    """An actor registered by hand (its supervisor knows nothing of the name): the
    registry's own monitor removes the key when it ends, as Elixir's does on exit."""
    registry = sv.Registry()
    ref = await dynsup.start_child(sv.actor_spec("a", Named, 5, restart=sv.Restart.TEMPORARY))
    registry.register("k", ref)
    assert registry.whereis("k") == ref
    assert await registry.ref("k").call("tag") == 5
    with pytest.raises(sv.ActorExited):
        await ref.call("boom")
    assert "k" not in registry  # at once: in the monitor's notice, before any checkpoint
    assert registry.whereis("k") is None
    with pytest.raises(sv.NoSuchActor):
        await registry.ref("k").call("tag")
    other = await dynsup.start_child(sv.actor_spec("b", Named, 6))
    registry.register("k", other)  # free again
    assert await registry.ref("k").call("tag") == 6


async def test_an_ended_actor_is_never_looked_up_even_before_its_notice(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    ref = await dynsup.start_child(sv.actor_spec("a", Lingering))
    registry.register("k", ref)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dynsup.terminate_child, ref)
        await trio.testing.wait_all_tasks_blocked()  # its terminate waits
        assert not ref.alive
        assert "k" in registry  # the monitor has not fired yet ...
        assert registry.whereis("k") is None  # ... but a lookup says no actor
        assert not registry.ref("k").alive
        ref._actor.gate.set()
    assert "k" not in registry


async def test_a_key_registered_for_an_owner_waits_for_the_owners_next_actor(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    owner = object()
    first = await dynsup.start_child(sv.actor_spec("a", Named, 1, restart=sv.Restart.TEMPORARY))
    registry.register("k", first, owner=owner)
    with pytest.raises(sv.ActorExited):
        await first.call("boom")
    assert "k" in registry
    assert registry.restarting("k")
    assert registry.whereis("k") is None
    second = await dynsup.start_child(sv.actor_spec("b", Named, 2))
    with pytest.raises(sv.AlreadyStarted):
        registry.register("k", second)  # not the owner
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        waiting = trio.Event()

        async def ask() -> None:
            waiting.set()
            answers.append(await registry.ref("k").call("tag"))

        nursery.start_soon(ask)
        await waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # the call waits for the key's next actor
        registry.register("k", second, owner=owner)
    assert answers == [2]
    third = await dynsup.start_child(sv.actor_spec("c", Named, 3))
    with pytest.raises(sv.AlreadyStarted) as taken:
        registry.register("k", third, owner=owner)  # a live actor holds it
    assert taken.value.existing == second


async def test_giving_a_key_up_fails_the_calls_waiting_for_it(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    owner = object()
    ref = await dynsup.start_child(sv.actor_spec("a", Named, 1, restart=sv.Restart.TEMPORARY))
    registry.register("k", ref, owner=owner)
    with pytest.raises(sv.ActorExited):
        await ref.call("boom")
    failures: list[BaseException] = []

    async def ask() -> None:
        try:
            await registry.ref("k").call("tag")
        except sv.NoSuchActor as error:
            failures.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        registry.unregister("k")  # not its owner: left alone
        assert "k" in registry
        registry.unregister("k", owner)
    assert len(failures) == 1
    assert "k" not in registry


async def test_an_unregistered_actor_runs_on_and_its_end_no_longer_touches_the_key(
    dynsup: sv.DynamicSupervisor,
) -> None:
    registry = sv.Registry()
    first = await dynsup.start_child(sv.actor_spec("a", Named, 1, restart=sv.Restart.TEMPORARY))
    registry.register("k", first)
    registry.unregister("k")
    assert "k" not in registry
    assert first.alive
    second = await dynsup.start_child(sv.actor_spec("b", Named, 2))
    registry.register("k", second)
    with pytest.raises(sv.ActorExited):
        await first.call("boom")
    assert registry.whereis("k") == second  # the first one's end is not the key's


async def test_an_ended_actor_cannot_be_registered(dynsup: sv.DynamicSupervisor) -> None:
    registry = sv.Registry()
    ref = await dynsup.start_child(sv.actor_spec("a", Named, 1, restart=sv.Restart.TEMPORARY))
    with pytest.raises(sv.ActorExited):
        await ref.call("boom")
    with pytest.raises(sv.NoSuchActor):
        registry.register("k", ref)
    assert "k" not in registry
