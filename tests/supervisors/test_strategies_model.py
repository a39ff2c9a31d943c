"""Static supervisors against a pure-Python model of OTP's ``supervisor`` rules.

Every child is a task child whose incarnations obey commands (crash, return,
``Stop()``, ``Stop("shutdown")``) and write ``start`` / ``stop`` entries to a shared
log. The property tests drive a real :class:`supervisors.Supervisor` over
``trio.testing.MockClock(autojump_threshold=0)`` one step at a time and, after
every step, compare the *whole* log (so the order of terminations and starts),
the clock, ``which_children()`` / ``count_children()`` and how ``run`` ended with
what the model predicts. The model follows ``supervisor.erl``:

* ``permanent`` children are always restarted, ``transient`` ones only after an
  abnormal exit, ``temporary`` ones never (and a sibling's failure that takes a
  temporary child down removes it);
* before a restart, ``add_restart`` keeps the restarts R with
  ``R >= Now - Period``, adds ``Now``, and terminates the supervisor when more
  than ``MaxR`` remain: all remaining children are terminated in reverse start
  order and ``run`` raises ``RestartIntensityExceeded``;
* ``one_for_one`` restarts the child; ``one_for_all`` terminates all the others
  in reverse start order and then starts all of them (including stopped transient
  children) in order; ``rest_for_one`` does the same with the children after it;
* shutdown terminates the children in reverse start order.

The deterministic tests below cover shutdown (hooks, grace, ``brutal_kill``),
start failures, spec validation, significant children, escalation through a
nested supervisor and restart backoff. No test sleeps on the real clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import pytest
import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st

import supervisors as sv
from tests.examples import examples

# ---------------------------------------------------------------------------
# Commanded task children
# ---------------------------------------------------------------------------

Command: TypeAlias = Literal["crash", "return", "stop_normal", "shutdown"]
COMMANDS: tuple[Command, ...] = ("crash", "return", "stop_normal", "shutdown")

#: How OTP classifies each command's exit (see ``supervisors._exit``).
EXIT_KIND: dict[str, str] = {
    "crash": "crash",
    "return": "normal",
    "stop_normal": "normal",
    "shutdown": "shutdown",
}

#: (event, child id, incarnation number, detail). ``detail`` of a ``stop`` is the
#: command the incarnation obeyed, or ``"terminated"`` when its supervisor stopped it.
Entry: TypeAlias = tuple[str, str, int, str]


class Boom(Exception):
    """What a commanded child raises to crash."""


@dataclass
class Life:
    """One incarnation of a commanded child."""

    cid: str
    gen: int
    command: Command | None = None
    wake: trio.Event = field(default_factory=trio.Event)
    how: str = "terminated"  # how it ended: the command it obeyed, or "terminated"

    def terminated(self) -> bool:
        """Stopped by its supervisor rather than by a command (a call: no type narrowing)."""
        return self.how == "terminated"


def _obey(cid: str, command: Command) -> None:
    if command == "crash":
        raise Boom(f"{cid} crashed")
    if command == "stop_normal":
        raise sv.Stop()
    if command == "shutdown":
        raise sv.Stop("shutdown")
    # "return": the task simply returns.


class Harness:
    """Builds commanded task children and keeps the shared log."""

    def __init__(self) -> None:
        self.log: list[Entry] = []
        self.stamps: list[float] = []  # trio time of each log entry
        self.lives: dict[str, Life] = {}
        self.gens: dict[str, int] = {}
        self._started: dict[tuple[str, int], trio.Event] = {}
        #: The next ``n`` starts of a child fail (at once), whoever starts it.
        self.fail_next: dict[str, int] = {}

    def record(self, entry: Entry) -> None:
        self.log.append(entry)
        self.stamps.append(trio.current_time())

    def stamped(self) -> list[tuple[Entry, float]]:
        return list(zip(self.log, self.stamps, strict=True))

    def started_event(self, cid: str, gen: int) -> trio.Event:
        return self._started.setdefault((cid, gen), trio.Event())

    def task(
        self,
        cid: str,
        *,
        cleanup: float | None = None,
        fail_start: bool = False,
        fail_from: int | None = None,
    ) -> Callable[..., Awaitable[None]]:
        """An ``async def (*, task_status)`` for child ``cid``.

        ``cleanup``: when terminated, a shutdown hook that awaits this many
        seconds inside ``shutdown_shield()`` and logs ``hook`` done/cancelled.
        ``fail_start``: raise before calling ``task_status.started``; ``fail_from``:
        do so from that incarnation number on.
        """

        async def body(*, task_status: Any) -> None:
            gen = self.gens[cid] = self.gens.get(cid, 0) + 1
            failing = self.fail_next.get(cid, 0) > 0
            if failing:
                self.fail_next[cid] -= 1
            if failing or fail_start or (fail_from is not None and gen >= fail_from):
                self.record(("start_failed", cid, gen, ""))
                raise Boom(f"{cid} cannot start")
            life = Life(cid, gen)
            self.lives[cid] = life
            self.record(("start", cid, gen, ""))
            self.started_event(cid, gen).set()
            task_status.started((cid, gen))
            try:
                await life.wake.wait()
                assert life.command is not None
                life.how = life.command
                _obey(cid, life.command)
            finally:
                self.record(("stop", cid, gen, life.how))
                if life.terminated() and cleanup is not None:
                    done = False
                    with sv.shutdown_shield():
                        await trio.sleep(cleanup)
                        done = True
                    self.record(("hook", cid, gen, "done" if done else "cancelled"))

        body.__qualname__ = f"child[{cid}]"
        return body

    async def command(self, cid: str, command: Command) -> None:
        """Tell the running incarnation of ``cid`` what to do; wait until all settled."""
        life = self.lives[cid]
        assert life.command is None, f"{cid}#{life.gen} already obeyed {life.command}"
        life.command = command
        life.wake.set()
        await trio.testing.wait_all_tasks_blocked()


@dataclass
class Ended:
    """How a supervisor's ``run`` (started by :func:`running`) ended."""

    done: bool = False
    error: BaseException | None = None

    def finished(self) -> bool:
        """``done``, read through a call so that type checkers do not narrow it."""
        return self.done


async def supervise(
    sup: sv.Supervisor,
    ended: Ended,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await sup.run(task_status=task_status)
    except sv.SupervisorError as error:
        ended.error = error
    finally:
        ended.done = True


#: Mocked seconds after which a supervisor that has not stopped is declared hung.
WATCHDOG = 3600.0


def task_incarnations(sup: sv.Supervisor) -> list[Any]:
    """The running task incarnations under ``sup``, recursively.

    Private state, read only so that a test hit by a hang in the library can be
    rescued (see :func:`rescue`) and fail instead of hanging forever.
    """
    found: list[Any] = []
    for child in sup._children():
        incarnation: Any = child.incarnation
        if incarnation is None:
            continue
        found.append(incarnation)
        if isinstance(incarnation.ref, sv.Supervisor):
            found.extend(task_incarnations(incarnation.ref))
    return found


def rescue(incarnations: Sequence[Any]) -> None:
    """Mark task incarnations whose end was never recorded as killed, unblocking their waiters.

    Private state again (``_done``, and the exit attribute under its current or
    former name); used only to turn a hang of the library into a test failure.
    """
    for incarnation in incarnations:
        name = "sv_exit" if hasattr(incarnation, "sv_exit") else "exit"
        if getattr(incarnation, name) is None:
            setattr(incarnation, name, sv.Exit("killed"))
            incarnation._done.set()


async def stop_and_wait(sup: sv.Supervisor) -> None:
    """``sup.stop()`` and wait for ``run`` to end; fail (not hang) if it never does."""
    with trio.CancelScope(shield=True):
        stuck = task_incarnations(sup)
        sup.stop()
        with trio.move_on_after(WATCHDOG):
            await sup.wait_stopped()
            return
        rescue(stuck)
        await sup.wait_stopped()
    raise AssertionError(f"supervisor {sup.name!r} did not stop within {WATCHDOG} s")


@asynccontextmanager
async def running(sup: sv.Supervisor) -> AsyncIterator[Ended]:
    """Run ``sup`` for the body; on leaving (even by an error), stop it and wait for it.

    Leaving by an error never cancels the supervisor's task: the supervisor is
    stopped with ``stop()``, so a failing test reports its failure.
    """
    ended = Ended()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, sup, ended)
        try:
            yield ended
        finally:
            await stop_and_wait(sup)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def run_mocked(fn: Callable[[], Awaitable[None]]) -> None:
    """``trio.run(fn)`` on an autojumping MockClock, unwrapping a lone failure."""
    try:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass
class ModelChild:
    cid: str
    restart: sv.Restart
    gen: int = 0  # number of incarnations started so far
    running: bool = False
    restarts: int = 0


class OtpModel:
    """OTP's static supervisor, reduced to what the log and introspection show."""

    def __init__(
        self,
        strategy: sv.Strategy,
        children: Sequence[tuple[str, sv.Restart]],
        max_restarts: int,
        max_seconds: float,
    ) -> None:
        self.strategy = strategy
        self.children = [ModelChild(cid, restart) for cid, restart in children]
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.restart_times: list[float] = []  # newest first, as in supervisor.erl
        self.now = 0.0
        self.log: list[Entry] = []
        self.escalated: tuple[str, str] | None = None  # (child id, exit kind)
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.escalated is None and not self.stopped

    def find(self, cid: str) -> ModelChild | None:
        return next((c for c in self.children if c.cid == cid), None)

    def _start(self, child: ModelChild) -> None:
        child.gen += 1
        child.running = True
        self.log.append(("start", child.cid, child.gen, ""))

    def _terminate(self, child: ModelChild) -> None:
        child.running = False
        self.log.append(("stop", child.cid, child.gen, "terminated"))

    def _terminate_all(self) -> None:
        for child in reversed(self.children):
            if child.running:
                self._terminate(child)

    def _add_restart(self) -> bool:
        threshold = self.now - self.max_seconds
        kept = [r for r in self.restart_times if r >= threshold]
        self.restart_times = [self.now, *kept]
        return len(self.restart_times) <= self.max_restarts

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def exit(self, cid: str, command: Command) -> None:
        child = self.find(cid)
        assert child is not None
        assert child.running
        child.running = False
        self.log.append(("stop", cid, child.gen, command))
        kind = EXIT_KIND[command]
        restart = child.restart is sv.Restart.PERMANENT or (
            child.restart is sv.Restart.TRANSIENT and kind == "crash"
        )
        if not restart:
            if child.restart is sv.Restart.TEMPORARY:
                self.children.remove(child)
            return
        child.restarts += 1
        if not self._add_restart():
            self.escalated = (cid, kind)
            self._terminate_all()
            return
        if self.strategy is sv.Strategy.ONE_FOR_ONE:
            self._start(child)
            return
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.running:
                self._terminate(other)
        doomed = [o for o in group if o is not child and o.restart is sv.Restart.TEMPORARY]
        self.children = [c for c in self.children if c not in doomed]
        for other in self._group(child):
            if other is not child:
                other.restarts += 1  # restarted with it: shown in its restart count
            self._start(other)

    def _group(self, child: ModelChild) -> list[ModelChild]:
        if self.strategy is sv.Strategy.ONE_FOR_ALL:
            return list(self.children)
        return self.children[self.children.index(child) :]

    def stop(self) -> None:
        self._terminate_all()
        self.stopped = True

    def which_children(self) -> list[tuple[str, Any, sv.ChildStatus, int]]:
        return [
            (
                c.cid,
                (c.cid, c.gen) if c.running else None,
                sv.ChildStatus.RUNNING if c.running else sv.ChildStatus.STOPPED,
                c.restarts,
            )
            for c in self.children
        ]

    def count_children(self) -> sv.ChildCounts:
        n = len(self.children)
        return sv.ChildCounts(n, sum(c.running for c in self.children), 0, n)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitStep:
    child: int
    command: Command


@dataclass(frozen=True)
class Advance:
    seconds: float


Step: TypeAlias = ExitStep | Advance


@dataclass(frozen=True)
class Scenario:
    restarts: tuple[sv.Restart, ...]
    max_restarts: int
    max_seconds: int
    steps: tuple[Step, ...]

    @property
    def ids(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.restarts))]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(min_value=1, max_value=5))
    restarts = draw(st.lists(st.sampled_from(list(sv.Restart)), min_size=n, max_size=n))
    max_restarts = draw(st.integers(min_value=0, max_value=4))
    max_seconds = draw(st.integers(min_value=1, max_value=10))
    exits = st.builds(
        ExitStep, st.integers(min_value=0, max_value=n - 1), st.sampled_from(COMMANDS)
    )
    # Dyadic durations only: exact on the mocked clock and in the model.
    advances = st.builds(
        Advance,
        st.one_of(st.integers(min_value=1, max_value=11).map(float), st.sampled_from([0.5])),
    )
    length = draw(st.integers(min_value=0, max_value=30))
    steps = draw(st.lists(st.one_of(exits, exits, advances), min_size=length, max_size=length))
    return Scenario(tuple(restarts), max_restarts, max_seconds, tuple(steps))


def _observed(sup: sv.Supervisor) -> list[tuple[str, Any, sv.ChildStatus, int]]:
    return [(str(i.id), i.ref, i.status, i.restarts) for i in sup.which_children()]


def check_scenario(strategy: sv.Strategy, scenario: Scenario) -> OtpModel:
    harness = Harness()
    model = OtpModel(
        strategy,
        list(zip(scenario.ids, scenario.restarts, strict=True)),
        scenario.max_restarts,
        scenario.max_seconds,
    )
    specs = [
        sv.task_spec(cid, harness.task(cid), restart=restart)
        for cid, restart in zip(scenario.ids, scenario.restarts, strict=True)
    ]
    sup = sv.Supervisor(
        specs,
        strategy=strategy,
        max_restarts=scenario.max_restarts,
        max_seconds=scenario.max_seconds,
        name="model",
    )

    def check(where: str, ended: Ended) -> None:
        assert harness.log == model.log, where
        assert trio.current_time() == model.now, where
        if model.alive:
            assert not ended.finished(), where
            assert _observed(sup) == model.which_children(), where
            assert sup.count_children() == model.count_children(), where
        else:
            assert ended.done, where
            assert sup.count_children().active == 0, where
            if model.escalated is not None:
                error = ended.error
                assert isinstance(error, sv.RestartIntensityExceeded), (where, error)
                assert error.supervisor == "model"
                assert (error.child_id, error.last_exit.kind) == model.escalated, where
            else:
                assert ended.error is None, (where, ended.error)

    async def main() -> None:
        model.now = trio.current_time()
        async with running(sup) as ended:
            model.start()
            await trio.testing.wait_all_tasks_blocked()
            check("after start", ended)
            for number, step in enumerate(scenario.steps):
                where = f"after step {number}: {step}"
                if isinstance(step, Advance):
                    await trio.sleep(step.seconds)
                    await trio.testing.wait_all_tasks_blocked()
                    model.advance(step.seconds)
                else:
                    cid = scenario.ids[step.child]
                    child = model.find(cid)
                    if child is None or not child.running:
                        continue  # removed or stopped: nothing to command
                    assert harness.lives[cid].gen == child.gen, where
                    await harness.command(cid, step.command)
                    model.exit(cid, step.command)
                check(where, ended)
                if not model.alive:
                    break
            if model.alive:
                model.stop()
            # leaving `running` stops the supervisor (a no-op if it already ended)
        check("after stop", ended)

    run_mocked(main)
    return model


def note_coverage(model: OtpModel) -> None:
    """Hypothesis statistics (``--hypothesis-show-statistics``): what the examples reached."""
    event("escalated" if model.escalated else "stopped")
    event(f"restarts in window at the end: {len(model.restart_times)}")
    event(f"children left: {len(model.children)}")


MODEL_SETTINGS = settings(max_examples=examples(400), deadline=None)


@MODEL_SETTINGS
@given(scenario=scenarios())
def test_one_for_one_matches_otp_model(scenario: Scenario) -> None:
    note_coverage(check_scenario(sv.Strategy.ONE_FOR_ONE, scenario))


@MODEL_SETTINGS
@given(scenario=scenarios())
def test_one_for_all_matches_otp_model(scenario: Scenario) -> None:
    note_coverage(check_scenario(sv.Strategy.ONE_FOR_ALL, scenario))


@MODEL_SETTINGS
@given(scenario=scenarios())
def test_rest_for_one_matches_otp_model(scenario: Scenario) -> None:
    note_coverage(check_scenario(sv.Strategy.REST_FOR_ONE, scenario))


# ---------------------------------------------------------------------------
# Child administration and failing restarts against the model
# ---------------------------------------------------------------------------

AdminOp: TypeAlias = Literal["start_child", "terminate_child", "restart_child", "delete_child"]
ADMIN_OPS: tuple[AdminOp, ...] = ("start_child", "terminate_child", "restart_child", "delete_child")

#: What an admin call answered: ("ok", its value) or ("error", the exception's class).
Answer: TypeAlias = tuple[str, Any]


class AdminModel(OtpModel):
    """:class:`OtpModel` plus OTP's child admin calls and failing starts.

    A start can fail (the harness's ``fail_next``, at once): a failed restart makes
    the child restarting and OTP's ``try_again_restart`` restarts it again, one more
    restart toward the intensity each time, by the strategy (under one_for_all or
    rest_for_one the children started by the failed attempt are terminated again;
    those it did not reach stay stopped until then). Failures are instantaneous, so
    every restart loop is over (the child runs, or the supervisor gave up) before the
    next step, and no step meets a restarting child (test_supervisor_suite.py covers
    that state with slow failures).

    Admin calls (supervisor.erl's ``handle_call``): ``terminate_child`` stops a child
    and keeps its spec (removes a temporary one); ``restart_child`` starts a stopped
    one (a failure leaves it stopped and counts nothing); ``delete_child`` removes a
    stopped one; ``start_child`` adds one at the end, unless its id is present
    (running: ``already_started``, else ``already_present``), and saves nothing when
    the start fails.
    """

    def __init__(
        self,
        strategy: sv.Strategy,
        children: Sequence[tuple[str, sv.Restart]],
        max_restarts: int,
        max_seconds: float,
    ) -> None:
        super().__init__(strategy, children, max_restarts, max_seconds)
        self.restart_of = dict(children)
        self.gens = {cid: 0 for cid, _ in children}  # start attempts per id, ever
        self.fails_left: dict[str, int] = {}

    def _attempt(self, child: ModelChild) -> bool:
        """One start attempt; False if it fails."""
        self.gens[child.cid] += 1
        child.gen = self.gens[child.cid]
        if self.fails_left.get(child.cid, 0) > 0:
            self.fails_left[child.cid] -= 1
            self.log.append(("start_failed", child.cid, child.gen, ""))
            return False
        child.running = True
        self.log.append(("start", child.cid, child.gen, ""))
        return True

    def _start(self, child: ModelChild) -> None:
        assert self._attempt(child)

    def fail_next(self, cid: str, count: int) -> None:
        self.fails_left[cid] = count

    def exit(self, cid: str, command: Command) -> None:
        child = self.find(cid)
        assert child is not None
        assert child.running
        child.running = False
        self.log.append(("stop", cid, child.gen, command))
        kind = EXIT_KIND[command]
        restart = child.restart is sv.Restart.PERMANENT or (
            child.restart is sv.Restart.TRANSIENT and kind == "crash"
        )
        if not restart:
            if child.restart is sv.Restart.TEMPORARY:
                self.children.remove(child)
            return
        self._restart_loop(child, kind)

    def _restart_loop(self, child: ModelChild, kind: str) -> None:
        pending: list[tuple[ModelChild, str]] = [(child, kind)]
        while pending:
            target, why = pending.pop(0)
            target.restarts += 1
            if not self._add_restart():
                self.escalated = (target.cid, why)
                self._terminate_all()
                return
            failed = self._by_strategy(target)
            if failed is not None:
                pending.append((failed, "crash"))  # try_again_restart

    def _by_strategy(self, child: ModelChild) -> ModelChild | None:
        """Restart ``child`` by the strategy; the child whose start failed, if one did."""
        if self.strategy is sv.Strategy.ONE_FOR_ONE:
            return None if self._attempt(child) else child
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.running:
                self._terminate(other)
        doomed = [o for o in group if o is not child and o.restart is sv.Restart.TEMPORARY]
        self.children = [c for c in self.children if c not in doomed]
        group = self._group(child)
        for other in group:
            if other is not child:
                other.restarts += 1
        for other in group:
            if not self._attempt(other):
                return other
        return None

    def admin(self, op: AdminOp, cid: str) -> Answer:
        child = self.find(cid)
        if op == "start_child":
            if child is not None:
                return ("error", sv.AlreadyStarted if child.running else sv.AlreadyPresent)
            new = ModelChild(cid, self.restart_of[cid])
            if not self._attempt(new):
                return ("error", sv.StartError)
            self.children.append(new)
            return ("ok", (cid, new.gen))
        if child is None:
            return ("error", sv.NoSuchChild)
        if op == "terminate_child":
            if child.running:
                self._terminate(child)
            if child.restart is sv.Restart.TEMPORARY:
                self.children.remove(child)
            return ("ok", None)
        if child.running:
            return ("error", sv.AlreadyStarted)
        if op == "delete_child":
            self.children.remove(child)
            return ("ok", None)
        if not self._attempt(child):  # restart_child
            return ("error", sv.StartError)
        return ("ok", (cid, child.gen))


@dataclass(frozen=True)
class AdminStep:
    op: AdminOp
    child: int


@dataclass(frozen=True)
class FailNext:
    child: int
    count: int


@dataclass(frozen=True)
class AdminScenario:
    restarts: tuple[sv.Restart, ...]
    max_restarts: int
    max_seconds: int
    steps: tuple[Step | AdminStep | FailNext, ...]

    @property
    def ids(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.restarts))]


@st.composite
def admin_scenarios(draw: st.DrawFn) -> AdminScenario:
    n = draw(st.integers(min_value=1, max_value=4))
    restarts = draw(st.lists(st.sampled_from(list(sv.Restart)), min_size=n, max_size=n))
    max_restarts = draw(st.integers(min_value=0, max_value=4))
    max_seconds = draw(st.integers(min_value=1, max_value=10))
    child = st.integers(min_value=0, max_value=n - 1)
    exits = st.builds(ExitStep, child, st.sampled_from(COMMANDS))
    advances = st.builds(Advance, st.integers(min_value=1, max_value=11).map(float))
    admins = st.builds(AdminStep, st.sampled_from(ADMIN_OPS), child)
    failures = st.builds(FailNext, child, st.integers(min_value=1, max_value=3))
    length = draw(st.integers(min_value=0, max_value=30))
    steps = draw(
        st.lists(
            st.one_of(exits, advances, admins, admins, failures),
            min_size=length,
            max_size=length,
        )
    )
    return AdminScenario(tuple(restarts), max_restarts, max_seconds, tuple(steps))


def check_admin_scenario(strategy: sv.Strategy, scenario: AdminScenario) -> AdminModel:
    harness = Harness()
    pairs = list(zip(scenario.ids, scenario.restarts, strict=True))
    model = AdminModel(strategy, pairs, scenario.max_restarts, scenario.max_seconds)
    specs = {cid: sv.task_spec(cid, harness.task(cid), restart=restart) for cid, restart in pairs}
    sup = sv.Supervisor(
        list(specs.values()),
        strategy=strategy,
        max_restarts=scenario.max_restarts,
        max_seconds=scenario.max_seconds,
        name="model",
    )

    async def call(step: AdminStep) -> Answer:
        cid = scenario.ids[step.child]
        try:
            if step.op == "start_child":
                value = await sup.start_child(specs[cid])
            else:
                value = await getattr(sup, step.op)(cid)
        except sv.SupervisorError as error:
            return ("error", type(error))
        return ("ok", value)

    def check(where: str, ended: Ended) -> None:
        assert harness.log == model.log, where
        if model.alive:
            assert not ended.finished(), where
            assert _observed(sup) == model.which_children(), where
            assert sup.count_children() == model.count_children(), where
        else:
            assert ended.done, where
            error = ended.error
            assert isinstance(error, sv.RestartIntensityExceeded), (where, error)
            assert (error.child_id, error.last_exit.kind) == model.escalated, where

    async def main() -> None:
        model.now = trio.current_time()
        async with running(sup) as ended:
            model.start()
            await trio.testing.wait_all_tasks_blocked()
            check("after start", ended)
            for number, step in enumerate(scenario.steps):
                where = f"after step {number}: {step}"
                if isinstance(step, Advance):
                    await trio.sleep(step.seconds)
                    await trio.testing.wait_all_tasks_blocked()
                    model.advance(step.seconds)
                elif isinstance(step, FailNext):
                    cid = scenario.ids[step.child]
                    harness.fail_next[cid] = step.count
                    model.fail_next(cid, step.count)
                elif isinstance(step, AdminStep):
                    answer = await call(step)
                    await trio.testing.wait_all_tasks_blocked()
                    expected = model.admin(step.op, scenario.ids[step.child])
                    assert answer == expected, where
                else:
                    cid = scenario.ids[step.child]
                    child = model.find(cid)
                    if child is None or not child.running:
                        continue
                    await harness.command(cid, step.command)
                    model.exit(cid, step.command)
                check(where, ended)
                if not model.alive:
                    break
            if model.alive:
                model.stop()
        assert harness.log == model.log, "after stop"
        assert ended.finished()
        if model.escalated is None:
            assert ended.error is None, ended.error

    run_mocked(main)
    return model


@MODEL_SETTINGS
@given(strategy=st.sampled_from(list(sv.Strategy)), scenario=admin_scenarios())
def test_child_admin_and_failing_restarts_match_otp_model(
    strategy: sv.Strategy, scenario: AdminScenario
) -> None:
    model = check_admin_scenario(strategy, scenario)
    event("escalated" if model.escalated else "stopped")
    event(f"start attempts that failed: {sum(e[0] == 'start_failed' for e in model.log)}")


# A few hand-written scenarios, readable on their own and always run.

P, T, TMP = sv.Restart.PERMANENT, sv.Restart.TRANSIENT, sv.Restart.TEMPORARY


@pytest.mark.parametrize(
    ("strategy", "scenario", "escalates"),
    [
        pytest.param(
            sv.Strategy.ONE_FOR_ALL,
            Scenario((P, TMP, T, P), 3, 5, (ExitStep(2, "crash"),)),
            False,
            id="one_for_all-removes-temporary",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ALL,
            Scenario((P, T, P), 3, 5, (ExitStep(1, "return"), ExitStep(2, "crash"))),
            False,
            id="one_for_all-restarts-stopped-transient",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ALL,
            Scenario((P, P, P), 2, 5, (ExitStep(0, "crash"), ExitStep(1, "crash"))),
            False,
            id="one_for_all-intensity-counts-the-event-once",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ALL,
            Scenario((P, P, P), 1, 5, (ExitStep(0, "crash"), ExitStep(1, "crash"))),
            True,
            id="one_for_all-escalates-in-reverse",
        ),
        pytest.param(
            sv.Strategy.REST_FOR_ONE,
            Scenario((P, P, TMP, P), 3, 5, (ExitStep(1, "crash"),)),
            False,
            id="rest_for_one-after-only",
        ),
        pytest.param(
            sv.Strategy.REST_FOR_ONE,
            Scenario((T, P, T), 3, 5, (ExitStep(2, "stop_normal"), ExitStep(1, "crash"))),
            False,
            id="rest_for_one-restarts-stopped-transient-after",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ONE,
            Scenario(
                (P, T),
                2,
                5,
                (
                    ExitStep(0, "crash"),
                    Advance(5.0),
                    ExitStep(0, "crash"),
                    ExitStep(1, "shutdown"),
                    ExitStep(0, "stop_normal"),
                ),
            ),
            True,
            id="one_for_one-window-inclusive-escalates",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ONE,
            Scenario((P, P), 2, 5, (ExitStep(0, "crash"), Advance(5.5), ExitStep(1, "crash"))),
            False,
            id="one_for_one-window-slides",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ONE,
            Scenario((P,), 0, 1, (ExitStep(0, "return"),)),
            True,
            id="max_restarts-zero",
        ),
        pytest.param(
            sv.Strategy.ONE_FOR_ONE,
            Scenario((TMP, T), 0, 1, (ExitStep(0, "crash"), ExitStep(1, "shutdown"))),
            False,
            id="no-restart-no-intensity",
        ),
    ],
)
def test_hand_written_scenarios(strategy: sv.Strategy, scenario: Scenario, escalates: bool) -> None:
    model = check_scenario(strategy, scenario)
    assert (model.escalated is not None) is escalates


def test_one_for_all_log_is_what_otp_does() -> None:
    """The model's prediction spelled out once, so the model itself is checked."""
    model = OtpModel(sv.Strategy.ONE_FOR_ALL, [("a", P), ("b", TMP), ("c", T), ("d", P)], 3, 5)
    model.start()
    model.exit("c", "crash")
    assert model.log[4:] == [
        ("stop", "c", 1, "crash"),
        ("stop", "d", 1, "terminated"),
        ("stop", "b", 1, "terminated"),
        ("stop", "a", 1, "terminated"),
        ("start", "a", 2, ""),
        ("start", "c", 2, ""),
        ("start", "d", 2, ""),
    ]


# ---------------------------------------------------------------------------
# Shutdown
# ---------------------------------------------------------------------------


async def test_shutdown_in_reverse_start_order_runs_each_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [sv.task_spec(cid, harness.task(cid, cleanup=1.0), shutdown=5.0) for cid in "abc"]
    )
    async with running(sup):
        sup.stop()
    assert harness.stamped() == [
        (("start", "a", 1, ""), 0.0),
        (("start", "b", 1, ""), 0.0),
        (("start", "c", 1, ""), 0.0),
        (("stop", "c", 1, "terminated"), 0.0),
        (("hook", "c", 1, "done"), 1.0),
        (("stop", "b", 1, "terminated"), 1.0),
        (("hook", "b", 1, "done"), 2.0),
        (("stop", "a", 1, "terminated"), 2.0),
        (("hook", "a", 1, "done"), 3.0),
    ]
    assert sup.count_children() == sv.ChildCounts(3, 0, 0, 3)


async def test_child_exceeding_its_grace_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("a", harness.task("a", cleanup=1.0), shutdown=5.0),
            sv.task_spec("b", harness.task("b", cleanup=10.0), shutdown=2.0),
            sv.task_spec("c", harness.task("c", cleanup=1.0), shutdown=5.0),
        ]
    )
    async with running(sup):
        sup.stop()
    assert harness.stamped()[3:] == [
        (("stop", "c", 1, "terminated"), 0.0),
        (("hook", "c", 1, "done"), 1.0),
        (("stop", "b", 1, "terminated"), 1.0),
        (("hook", "b", 1, "cancelled"), 3.0),  # its 2 s grace ran out
        (("stop", "a", 1, "terminated"), 3.0),
        (("hook", "a", 1, "done"), 4.0),
    ]


async def test_infinity_shutdown_waits_for_the_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [sv.task_spec("a", harness.task("a", cleanup=1000.0), shutdown=sv.INFINITY)]
    )
    async with running(sup):
        sup.stop()
    assert harness.stamped()[-1] == (("hook", "a", 1, "done"), 1000.0)


async def test_default_worker_grace_is_five_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor([sv.task_spec("a", harness.task("a", cleanup=60.0))])
    async with running(sup):
        sup.stop()
    assert harness.stamped()[-1] == (("hook", "a", 1, "cancelled"), 5.0)


async def test_brutal_kill_cancels_at_once(autojump_clock: trio.testing.MockClock) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("a", harness.task("a", cleanup=1.0)),
            sv.task_spec("b", harness.task("b", cleanup=1.0), shutdown=sv.BRUTAL_KILL),
        ]
    )
    async with running(sup):
        sup.stop()
    assert harness.stamped()[2:] == [
        (("stop", "b", 1, "terminated"), 0.0),
        (("hook", "b", 1, "cancelled"), 0.0),  # no grace at all
        (("stop", "a", 1, "terminated"), 0.0),
        (("hook", "a", 1, "done"), 1.0),
    ]


async def test_cancelling_run_shuts_children_down_in_reverse_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``run``'s doc: cancelling it shuts its children down first."""
    harness = Harness()
    sup = sv.Supervisor([sv.task_spec(cid, harness.task(cid, cleanup=1.0)) for cid in "ab"])
    scope = trio.CancelScope()
    returned = trio.Event()

    async def host(*, task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            await sup.run(task_status=task_status)
        returned.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(host)
        stuck = task_incarnations(sup)
        scope.cancel()
        with trio.move_on_after(WATCHDOG):
            await returned.wait()
        hung = not returned.is_set()
        if hung:
            rescue(stuck)  # only so that the test can end and report
    assert not hung, f"run() did not return within {WATCHDOG} s of being cancelled"
    assert harness.stamped()[2:] == [
        (("stop", "b", 1, "terminated"), 0.0),
        (("hook", "b", 1, "done"), 1.0),
        (("stop", "a", 1, "terminated"), 1.0),
        (("hook", "a", 1, "done"), 2.0),
    ]


async def test_stopping_a_parent_shuts_down_a_nested_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child supervisor is terminated by cancelling its run: the same hang, one level down."""
    harness = Harness()
    inner = sv.Supervisor.child_spec(
        "inner", [sv.task_spec(cid, harness.task(cid)) for cid in ("w", "v")]
    )
    parent = sv.Supervisor([sv.task_spec("x", harness.task("x")), inner], name="parent")
    async with running(parent) as ended:
        assert parent.count_children() == sv.ChildCounts(2, 2, 1, 1)
    assert ended.error is None
    assert harness.log[3:] == [
        ("stop", "v", 1, "terminated"),
        ("stop", "w", 1, "terminated"),
        ("stop", "x", 1, "terminated"),
    ]


# ---------------------------------------------------------------------------
# Start failures and spec validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("failing", range(5))
async def test_start_failure_shuts_down_the_started_ones_in_reverse(
    failing: int, autojump_clock: trio.testing.MockClock
) -> None:
    harness = Harness()
    ids = [f"c{i}" for i in range(5)]
    sup = sv.Supervisor(
        [
            sv.task_spec(cid, harness.task(cid, fail_start=(i == failing)))
            for i, cid in enumerate(ids)
        ]
    )
    with pytest.raises(sv.StartError) as info:
        await sup.run()
    assert info.value.child_id == ids[failing]
    assert isinstance(info.value.reason, Boom)
    assert repr(ids[failing]) in str(info.value)
    started = ids[:failing]
    assert harness.log == [
        *[("start", cid, 1, "") for cid in started],
        ("start_failed", ids[failing], 1, ""),
        *[("stop", cid, 1, "terminated") for cid in reversed(started)],
    ]
    assert sup.count_children().active == 0


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
async def test_failed_restarts_are_retried_and_count_toward_intensity(
    max_restarts: int, autojump_clock: trio.testing.MockClock
) -> None:
    """OTP's try_again_restart: each failed restart attempt is one more restart."""
    harness = Harness()
    sup = sv.Supervisor(
        [sv.task_spec("a", harness.task("a", fail_from=2)), sv.task_spec("b", harness.task("b"))],
        max_restarts=max_restarts,
        max_seconds=5,
    )
    async with running(sup) as ended:
        await harness.command("a", "crash")
    assert isinstance(ended.error, sv.RestartIntensityExceeded)
    assert ended.error.child_id == "a"
    # restarts 1..max_restarts are allowed and each start attempt fails;
    # the next one exceeds the intensity
    assert harness.log[2:] == [
        ("stop", "a", 1, "crash"),
        *[("start_failed", "a", gen, "") for gen in range(2, max_restarts + 2)],
        ("stop", "b", 1, "terminated"),
    ]
    assert trio.current_time() == 0.0


async def test_one_for_all_failed_restart_terminates_the_restarted_ones_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("a", harness.task("a")),
            sv.task_spec("b", harness.task("b")),
            sv.task_spec("c", harness.task("c", fail_from=2)),
        ],
        strategy=sv.Strategy.ONE_FOR_ALL,
        max_restarts=2,
        max_seconds=5,
    )
    async with running(sup) as ended:
        await harness.command("a", "crash")
    assert isinstance(ended.error, sv.RestartIntensityExceeded)
    assert ended.error.child_id == "c"
    assert harness.log[3:] == [
        ("stop", "a", 1, "crash"),  # restart 1
        ("stop", "c", 1, "terminated"),
        ("stop", "b", 1, "terminated"),
        ("start", "a", 2, ""),
        ("start", "b", 2, ""),
        ("start_failed", "c", 2, ""),  # restart 2: try again, for c
        ("stop", "b", 2, "terminated"),
        ("stop", "a", 2, "terminated"),
        ("start", "a", 3, ""),
        ("start", "b", 3, ""),
        ("start_failed", "c", 3, ""),  # restart 3 > 2: give up
        ("stop", "b", 3, "terminated"),
        ("stop", "a", 3, "terminated"),
    ]


def test_duplicate_child_ids_are_refused() -> None:
    async def noop(*, task_status: Any) -> None:
        task_status.started()

    specs = [sv.task_spec("a", noop), sv.task_spec("b", noop), sv.task_spec("a", noop)]
    with pytest.raises(sv.SpecError) as info:
        sv.Supervisor(specs)
    assert info.value.tag == "duplicate_child_id"
    with pytest.raises(sv.SpecError) as nested:
        sv.Supervisor.child_spec("inner", specs)
    assert nested.value.tag == "duplicate_child_id"


def test_significant_rules_are_checked() -> None:
    async def noop(*, task_status: Any) -> None:
        task_status.started()

    with pytest.raises(sv.SpecError) as permanent:
        sv.task_spec("a", noop, significant=True)
    assert permanent.value.tag == "invalid_significant"
    with pytest.raises(sv.SpecError) as never:
        sv.Supervisor([sv.task_spec("a", noop, restart=T, significant=True)])
    assert never.value.tag == "bad_combination"


# ---------------------------------------------------------------------------
# Significant children and auto shutdown
# ---------------------------------------------------------------------------


async def test_any_significant_stops_on_first_clean_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("w", harness.task("w")),
            sv.task_spec("s1", harness.task("s1"), restart=T, significant=True),
            sv.task_spec("s2", harness.task("s2"), restart=T, significant=True),
        ],
        auto_shutdown=sv.AutoShutdown.ANY_SIGNIFICANT,
    )
    async with running(sup) as ended:
        await harness.command("s1", "crash")  # abnormal: restarted, no auto shutdown
        assert not ended.finished()
        assert harness.log[-1] == ("start", "s1", 2, "")
        await harness.command("s1", "return")
    assert ended.finished()
    assert ended.error is None
    assert harness.log[3:] == [
        ("stop", "s1", 1, "crash"),
        ("start", "s1", 2, ""),
        ("stop", "s1", 2, "return"),
        ("stop", "s2", 1, "terminated"),
        ("stop", "w", 1, "terminated"),
    ]


async def test_any_significant_temporary_child_stops_on_any_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("w", harness.task("w")),
            sv.task_spec("t", harness.task("t"), restart=TMP, significant=True),
        ],
        auto_shutdown=sv.AutoShutdown.ANY_SIGNIFICANT,
    )
    async with running(sup) as ended:
        await harness.command("t", "crash")
    assert ended.error is None
    assert harness.log[2:] == [("stop", "t", 1, "crash"), ("stop", "w", 1, "terminated")]


async def test_all_significant_stops_when_the_last_one_exits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("w", harness.task("w")),
            sv.task_spec("s1", harness.task("s1"), restart=T, significant=True),
            sv.task_spec("s2", harness.task("s2"), restart=TMP, significant=True),
        ],
        auto_shutdown=sv.AutoShutdown.ALL_SIGNIFICANT,
    )
    async with running(sup) as ended:
        await harness.command("s1", "shutdown")
        assert not ended.finished()  # s2 is still running
        assert [(i.id, i.status) for i in sup.which_children()] == [
            ("w", sv.ChildStatus.RUNNING),
            ("s1", sv.ChildStatus.STOPPED),
            ("s2", sv.ChildStatus.RUNNING),
        ]
        await harness.command("s2", "return")
    assert ended.finished()
    assert ended.error is None
    assert harness.log[3:] == [
        ("stop", "s1", 1, "shutdown"),
        ("stop", "s2", 1, "return"),
        ("stop", "w", 1, "terminated"),
    ]


async def test_significant_child_taken_down_by_a_sibling_does_not_auto_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    sup = sv.Supervisor(
        [
            sv.task_spec("t", harness.task("t"), restart=TMP, significant=True),
            sv.task_spec("p", harness.task("p")),
        ],
        strategy=sv.Strategy.ONE_FOR_ALL,
        auto_shutdown=sv.AutoShutdown.ANY_SIGNIFICANT,
    )
    async with running(sup) as ended:
        await harness.command("p", "crash")
        assert not ended.finished()
        assert [i.id for i in sup.which_children()] == ["p"]
        sup.stop()
    assert harness.log[2:] == [
        ("stop", "p", 1, "crash"),
        ("stop", "t", 1, "terminated"),
        ("start", "p", 2, ""),
        ("stop", "p", 2, "terminated"),
    ]


# ---------------------------------------------------------------------------
# Escalation through a nested supervisor
# ---------------------------------------------------------------------------


async def test_escalation_restarts_the_child_supervisor_then_reaches_the_top(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    inner = sv.Supervisor.child_spec(
        "inner",
        [sv.task_spec("w", harness.task("w")), sv.task_spec("v", harness.task("v"))],
        max_restarts=0,
        max_seconds=5,
    )
    parent = sv.Supervisor(
        [inner, sv.task_spec("x", harness.task("x"))],
        max_restarts=1,
        max_seconds=5,
        name="parent",
    )
    async with running(parent) as ended:
        first = parent.which_children()[0]
        assert first.type is sv.ChildType.SUPERVISOR
        assert isinstance(first.ref, sv.Supervisor)
        assert parent.count_children() == sv.ChildCounts(2, 2, 1, 1)

        await harness.command("w", "crash")  # inner gives up; parent restarts it
        assert not ended.finished()
        assert harness.log[3:] == [
            ("stop", "w", 1, "crash"),
            ("stop", "v", 1, "terminated"),
            ("start", "w", 2, ""),
            ("start", "v", 2, ""),
        ]
        second = parent.which_children()[0]
        assert second.status is sv.ChildStatus.RUNNING
        assert second.restarts == 1
        assert second.history[-1].kind == "crash"
        assert second.history[-1].error_type == "RestartIntensityExceeded"
        assert isinstance(second.ref, sv.Supervisor)
        assert second.ref is not first.ref
        assert first.ref.status == "stopped"

        await harness.command("v", "crash")  # again: now the parent gives up too
    assert isinstance(ended.error, sv.RestartIntensityExceeded)
    assert ended.error.supervisor == "parent"
    assert ended.error.child_id == "inner"
    assert isinstance(ended.error.last_exit.error, sv.RestartIntensityExceeded)
    assert harness.log[7:] == [
        ("stop", "v", 2, "crash"),
        ("stop", "w", 2, "terminated"),
        ("stop", "x", 1, "terminated"),
    ]


# ---------------------------------------------------------------------------
# Restart backoff
# ---------------------------------------------------------------------------


async def test_backoff_delays_restarts_by_the_mocked_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = Harness()
    backoff = sv.Backoff(initial=2.0, maximum=8.0, multiplier=2.0, jitter=0.0)
    sup = sv.Supervisor(
        [
            sv.task_spec("a", harness.task("a"), backoff=backoff),
            sv.task_spec("b", harness.task("b")),
        ],
        max_restarts=10,
        max_seconds=60,
    )

    def status() -> list[tuple[Any, sv.ChildStatus]]:
        return [(i.id, i.status) for i in sup.which_children()]

    async with running(sup):
        await harness.command("a", "crash")  # t=0: first delay, 2 s
        assert status() == [("a", sv.ChildStatus.RESTARTING), ("b", sv.ChildStatus.RUNNING)]
        assert sup.count_children() == sv.ChildCounts(2, 1, 0, 2)
        assert trio.current_time() == 0.0
        await harness.started_event("a", 2).wait()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 2.0

        await harness.command("a", "crash")  # up 0 s < 8 s: doubled, 4 s
        await harness.started_event("a", 3).wait()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 6.0

        await trio.sleep(8.0)  # stable for `maximum` seconds: delays start over
        await harness.command("a", "crash")
        await harness.started_event("a", 4).wait()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 16.0
        assert status() == [("a", sv.ChildStatus.RUNNING), ("b", sv.ChildStatus.RUNNING)]
        sup.stop()
    starts = [(entry, at) for entry, at in harness.stamped() if entry[:2] == ("start", "a")]
    assert starts == [
        (("start", "a", 1, ""), 0.0),
        (("start", "a", 2, ""), 2.0),
        (("start", "a", 3, ""), 6.0),
        (("start", "a", 4, ""), 16.0),
    ]
    assert ("stop", "b", 1, "terminated") in harness.log  # b was never restarted
    assert harness.gens["b"] == 1


async def test_backoff_delay_caps_at_maximum(autojump_clock: trio.testing.MockClock) -> None:
    harness = Harness()
    backoff = sv.Backoff(initial=1.0, maximum=3.0, multiplier=10.0, jitter=0.0, reset_after=100.0)
    sup = sv.Supervisor(
        [sv.task_spec("a", harness.task("a"), backoff=backoff)],
        max_restarts=10,
        max_seconds=1,
    )
    async with running(sup):
        times = []
        for gen in range(2, 5):
            await harness.command("a", "crash")
            before = trio.current_time()
            await harness.started_event("a", gen).wait()
            await trio.testing.wait_all_tasks_blocked()
            times.append(trio.current_time() - before)
        sup.stop()
    assert times == [1.0, 3.0, 3.0]
