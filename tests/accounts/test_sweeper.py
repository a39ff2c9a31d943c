"""The sweeper ticks exactly the actors due to checkpoint or hibernate (docs/accounts.md).

Property (hypothesis, on a MockClock that only moves when the test moves it): for awake
actors in random states (time since their last event, since their last checkpoint, with or
without dirty cells, under ``max_awake`` pressure or not), one sweep makes every actor whose
last event is ``idle_timeout`` old (``pressure_idle`` under pressure) hibernate, every other
one with dirty cells and a checkpoint ``checkpoint_interval`` old checkpoint, and leaves the
rest as they were; and only those due are sent a tick at all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import supervisors as sv
from meterd.accounts.actor import MeterActor
from meterd.accounts.service import next_step
from meterd.schema import Duration
from tests.accounts.test_accounts import dyno, running
from tests.examples import examples

# Long enough that the sweeper's own period (idle_timeout / 4, its first one starting with
# no actor awake) never ticks anyone while a test runs: only sweep_once does.
IDLE = 4000.0  # idle_timeout, seconds
INTERVAL = 1000.0  # checkpoint_interval
PRESSURE_IDLE = 300.0
NEVER = 1e9  # a call's timeout: on the test's clock any would pass while SQLite commits


@st.composite
def actor_states(draw: st.DrawFn) -> tuple[float, float, bool]:
    """(seconds since its last event, seconds since its last checkpoint, dirty)."""
    # Around each threshold, and on it (a tick at exactly the age acts).
    idle = draw(st.sampled_from([0.0, 1.0, PRESSURE_IDLE, 2000.0, IDLE - 0.5, IDLE, IDLE + 1]))
    since_checkpoint = draw(st.sampled_from([0.0, 5.0, INTERVAL - 0.5, INTERVAL, 2500.0]))
    return idle, since_checkpoint, draw(st.booleans())


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states=st.lists(actor_states(), min_size=1, max_size=6), pressure=st.booleans())
def test_one_sweep_acts_on_exactly_the_due_actors(
    states: list[tuple[float, float, bool]], pressure: bool
) -> None:
    ticks: list[str] = []
    cast = MeterActor.handle_cast

    async def counting(self: MeterActor, request: Any) -> None:
        if request[0] == "tick":
            ticks.append(self.account)
        await cast(self, request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MeterActor, "handle_cast", counting)
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(_sweep_once, Path(tmp), states, pressure, ticks, clock=_clock())


def _clock() -> trio.testing.MockClock:
    # Time never moves: the states are set and the sweep decides at one instant, and the
    # sweeper's own steps (every 50 ms of this clock) never run behind the test's back.
    # (With autojump, every wait on a SQLite thread jumped the clock to the next step: tens
    # of thousands of steps, seconds of clock, and actors checkpointed by the background
    # sweeper before the test looked at them.)
    return trio.testing.MockClock()


async def _sweep_once(
    tmp: Path, states: list[tuple[float, float, bool]], pressure: bool, ticks: list[str]
) -> None:
    names = [f"acct-{index}" for index in range(len(states))]
    async with running(
        tmp,
        idle_timeout=IDLE,
        checkpoint_interval=INTERVAL,
        pressure_idle=PRESSURE_IDLE,
        max_awake=len(names) if pressure else 1000,
        commit_interval=Duration(0),
    ) as accounts:
        for name, (_, _, dirty) in zip(names, states, strict=True):
            await accounts.ensure_started(name)
            if dirty:
                await accounts.ingest(name, [dyno(name, "e1", "2")])
        refs: dict[str, sv.ActorRef[Any, Any]] = {}
        for name, (idle, since_checkpoint, dirty) in zip(names, states, strict=True):
            ref = accounts.registry.whereis(name)
            assert ref is not None
            # Its delivery applied (a call is handled after what is queued before it).
            status = await ref.call(("status",), timeout=NEVER)
            assert (status["dirty"] > 0) == dirty
            actor = ref.actor
            assert isinstance(actor, MeterActor)
            now = trio.current_time()
            actor.last_active = now - idle
            actor.last_checkpoint = now - since_checkpoint
            refs[name] = ref
        hibernate_after = PRESSURE_IDLE if pressure else IDLE
        expected = {}
        for name, (idle, since_checkpoint, dirty) in zip(names, states, strict=True):
            if idle >= hibernate_after:
                expected[name] = "hibernate"
            elif dirty and since_checkpoint >= INTERVAL:
                expected[name] = "checkpoint"
        monitors = {name: refs[name].monitor() for name in names}
        checkpointed_at = trio.current_time()
        accounts.sweep_once()
        for name, (_, since_checkpoint, dirty) in zip(names, states, strict=True):
            ref, actor = refs[name], refs[name].actor
            assert isinstance(actor, MeterActor)
            if expected.get(name) == "hibernate":
                assert (await monitors[name].wait()).kind == "normal"
                continue
            status = await ref.call(("status",), timeout=NEVER)  # after its tick, if any
            assert ref.alive, name
            if expected.get(name) == "checkpoint":
                assert status["dirty"] == 0, name
                assert actor.last_checkpoint >= checkpointed_at, name
            else:
                assert (status["dirty"] > 0) == dirty, name
                assert actor.last_checkpoint == checkpointed_at - since_checkpoint, name
        assert sorted(ticks) == sorted(expected), "ticks only for the due actors"


def test_the_sweepers_step_on_multiples_of_their_step() -> None:
    assert next_step(0.0, 0.05) == pytest.approx(0.05)
    assert next_step(0.12, 0.05) == pytest.approx(0.15)
    for now in (0.15, 3 * 0.05, 7.5, 1e6 + 0.05):
        after = next_step(now, 0.05)
        assert now < after <= now + 0.05 + 1e-9
