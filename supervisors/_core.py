"""What static and dynamic supervisors share: the control loop, restarts, shutdown.

A supervisor runs as one task (``run``) that owns a nursery. Its children run
in that nursery: task children as tasks, actors on the dispatcher's workers
(see :mod:`._dispatch`). Everything that changes the set of children happens in
the supervisor's own task, one thing at a time, as in OTP where the supervisor
is a process handling one message at a time: a child's exit is *posted* to the
supervisor (:meth:`_child_exited`) and handled by its control loop.

Rules (OTP's ``supervisor``):

* When a child exits and its restart type says so (``permanent``: always;
  ``transient``: after an abnormal exit; ``temporary``: never), the supervisor
  records a restart (:mod:`._intensity`). More than ``max_restarts`` within
  ``max_seconds`` and it terminates all its children and exits with
  :class:`RestartIntensityExceeded` (escalation to its parent).
* Otherwise it applies its strategy. If restarting fails, that counts as
  another restart and is tried again, until it works or the intensity is
  exceeded. Each new attempt is queued as an event (OTP's
  ``try_again_restart``), so requests are handled between attempts, a stop
  request before any further one, and ``terminate_child`` ends the loop: an
  attempt is made only while the child is still *restarting*.
* A child that is not restarted is removed (temporary, or dynamic children) or
  kept stopped (a static transient child after a clean exit). If it was
  *significant*, ``auto_shutdown`` may stop the supervisor normally.
* Shutdown terminates children in reverse start order (dynamic supervisors: all
  at once), each within its own ``shutdown`` grace.

Operator actions (beyond OTP's API, for fault drills and maintenance), by child id:

* :meth:`SupervisorCore.kill_child` kills a running child as ``exit(Pid, kill)``
  does: no ``terminate``, no grace. Its exit is ``killed`` (abnormal), so the
  supervisor handles it exactly like a crash: its restart type decides, the
  restart counts toward the intensity, and the strategy applies (siblings too
  under one_for_all / rest_for_one).
* :meth:`SupervisorCore.stop_and_restart_child` stops a running child
  gracefully (``shutdown``, within its grace, so its cleanup runs) and starts it
  again from its spec. Only that child is restarted (as OTP's
  ``terminate_child`` followed by ``restart_child``, whatever the strategy); the
  restart is recorded in its history as ``operator`` and does not count toward
  the intensity. If the new start fails, the child is left stopped (a dynamic
  one is removed) and the caller gets the :class:`StartError`, as from OTP's
  ``restart_child``.

Both run in the control loop and return once the supervisor has dealt with the
child (restarted it, or scheduled a restart with backoff). Requests queued when
a supervisor ends, or being handled when it is cancelled, fail with
:class:`SupervisorStopping` instead of hanging.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import outcome
import trio

from ._child import TaskLauncher, as_launcher, do_terminate, shutdown_shield
from ._dispatch import Dispatcher
from ._errors import (
    AlreadyStarted,
    ChildNotRunning,
    NoSuchChild,
    RestartIntensityExceeded,
    StartError,
    SupervisorStopping,
)
from ._exit import Exit, exit_from_exception
from ._intensity import RestartIntensity
from ._log import logger
from ._protocols import Incarnation, Launcher
from ._spec import AutoShutdown, ChildSpec, ChildType, Restart, Shutdown, check_intensity

HISTORY_SIZE: Final = 10


@dataclass(frozen=True, slots=True)
class RestartRecord:
    """One entry of a child's restart history."""

    at: float  # wall-clock seconds
    kind: str
    error_type: str | None
    message: str


RestartObserver = Callable[[str, RestartRecord], None]
"""Told of each restart record as it is made: ``(the child's path, the record)``; must not
raise or block (it runs in the supervisor's control loop)."""


class ChildStatus(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class Child:
    """A supervisor's record of one child: its spec and current incarnation."""

    __slots__ = (
        "backoff_attempts",
        "history",
        "incarnation",
        "key",
        "launcher",
        "removed",
        "restarting",
        "restarts",
        "spec",
        "up_since",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.launcher: Launcher = as_launcher(spec.start)
        self.incarnation: Incarnation | None = None
        self.restarts = 0
        # True from the exit that is to be restarted until a start succeeds, the child
        # is terminated, or it is given up: OTP's ``{restarting, Pid}``. A pending retry
        # or backoff restart happens only while it is still True.
        self.restarting = False
        # The ref of its latest incarnation, kept while it is restarting (dynamic
        # supervisors find a child by it, as OTP's by ``{restarting, OldPid}``).
        self.key: Any = None
        # Set when a dynamic supervisor has removed it: a start still under way for it
        # must then not attach the new incarnation (it is terminated at once).
        self.removed = False
        self.backoff_attempts = 0
        self.up_since = 0.0  # Trio time of the current incarnation's start
        self.history: deque[RestartRecord] | None = None

    @property
    def status(self) -> ChildStatus:
        if self.incarnation is not None and self.incarnation.sv_alive:
            return ChildStatus.RUNNING
        return ChildStatus.RESTARTING if self.restarting else ChildStatus.STOPPED

    @property
    def ref(self) -> Any:
        """The running child's handle: an ActorRef, a supervisor, or what a task started with."""
        incarnation = self.incarnation
        if incarnation is None or not incarnation.sv_alive:
            return None
        ref = getattr(incarnation, "ref", None)
        return ref

    def record_restart(self, exit: Exit) -> None:
        """This child ended with ``exit`` and is being restarted."""
        self._add_record(RestartRecord(time.time(), exit.kind, exit.error_type, exit.message))

    def record_sibling_restart(self, cause: Hashable, strategy: str) -> None:
        """This child is restarted because a sibling ended (one_for_all, rest_for_one)."""
        self._add_record(
            RestartRecord(time.time(), "sibling", None, f"{strategy}: {cause!r} ended")
        )

    def _add_record(self, record: RestartRecord) -> None:
        self.restarts += 1
        if self.history is None:
            self.history = deque(maxlen=HISTORY_SIZE)
        self.history.append(record)


class _AutoShutdown(Exception):
    """Internal: a significant child's exit stops the supervisor normally."""


class SupervisorCore:
    """The machinery shared by :class:`Supervisor` and :class:`DynamicSupervisor`."""

    strategy_name: str = "one_for_one"

    def __init__(self, name: str, max_restarts: int, max_seconds: float) -> None:
        check_intensity(max_restarts, max_seconds)
        self.name = name
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._nursery: trio.Nursery | None = None
        self._dispatcher: Dispatcher | None = None
        self._events: deque[tuple[Any, ...]] = deque()
        self._parked: trio.lowlevel.Task | None = None
        self._stop_requested = False
        self.stopping = False
        self.started_at: float | None = None
        self._finished = trio.Event()
        self._running = False
        self._log = logger.bind(supervisor=name)
        # Restarts this supervisor made, by cause ("exit": a child ended and was
        # restarted, counted toward the intensity; "operator": stop_and_restart_child).
        # Kept across runs of the same object, for metrics.
        self.restart_counts: Counter[str] = Counter()
        # Told of each restart record (e.g. to keep them across runs of the program); set
        # on a supervisor, it is passed to the supervisors started under it, with their path.
        self.on_restart: RestartObserver | None = None
        self.path = name  # node names from the root, joined by "/" (set by the parent)

    # ---- Host protocol (used by launchers) --------------------------------------

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        return self._nursery

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        return self._dispatcher

    def _child_exited(self, child: Child, incarnation: Incarnation, exit: Exit) -> None:
        """Called (synchronously) by a child's incarnation when it ends."""
        self._post(("exit", child, incarnation, exit))

    # ---- lifecycle ------------------------------------------------------------

    def _shutting_down(self) -> bool:
        return self.stopping

    @property
    def running(self) -> bool:
        return self._nursery is not None and not self.stopping

    @property
    def status(self) -> str:
        if self._nursery is None or self._finished.is_set():
            return "stopped"
        return "running"

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the supervisor: start its children, supervise them, shut them down.

        Use it as a task: ``sup = await nursery.start(supervisor.run)``. It
        returns after :meth:`stop` (or an auto shutdown) once every child has
        ended; it raises :class:`StartError` if an initial child fails to start
        and :class:`RestartIntensityExceeded` when it gives up. Cancelling it
        shuts its children down first (within :func:`shutdown_shield`).
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._running = True
        self._reset()
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as watcher:
                # A cancellation from outside must not reach the children directly
                # (they would all die at once, in no order): it becomes a stop(), and
                # the children are shut down in reverse order within the grace period
                # that shutdown_shield() gives this supervisor.
                watcher.start_soon(self._stop_when_cancelled)
                with shutdown_shield():
                    error = await self._supervise(task_status)
                watcher.cancel_scope.cancel()
        finally:
            self._running = False
            self._finished.set()
        if error is not None:
            raise error

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.stop()

    async def _supervise(self, task_status: trio.TaskStatus[Any]) -> BaseException | None:
        error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._dispatcher = Dispatcher(nursery)
            self.started_at = time.time()
            try:
                await self._start_initial()
                task_status.started(self)
                self._log.debug("supervisor_started", strategy=self.strategy_name)
                await self._control_loop()
            except (StartError, RestartIntensityExceeded) as caught:
                error = caught
            finally:
                self.stopping = True
                self._fail_requests()
                try:
                    await self._terminate_all()
                finally:
                    # Also when that wait is cancelled (this supervisor was killed): its
                    # children's names are released there, and nothing may outlive it.
                    self._dispatcher.close()
                    nursery.cancel_scope.cancel()
        return error

    def _fail_requests(self) -> None:
        """Requests the control loop will never handle: their callers must not wait forever."""
        stopping = self._stopped_error()
        for event in self._events:
            if event[0] == "request":
                event[2](outcome.Error(stopping))
        self._events.clear()

    def _stopped_error(self) -> SupervisorStopping:
        return SupervisorStopping(f"supervisor {self.name!r} stopped")

    def _reset(self) -> None:
        """Fresh state for a new run: a restarted supervisor starts over, as in OTP."""
        self._intensity = RestartIntensity(self.max_restarts, self.max_seconds)
        self._events.clear()
        self._stop_requested = False
        self.stopping = False
        if self._finished.is_set():
            self._finished = trio.Event()

    def as_child(
        self,
        id: Hashable | None = None,
        *,
        restart: Restart = Restart.PERMANENT,
        shutdown: Shutdown | None = None,
        significant: bool = False,
    ) -> ChildSpec:
        """A spec that runs *this* supervisor as a child of another.

        Each restart runs it again from a fresh state (no children for a dynamic
        supervisor, its specs for a static one), so the object can be kept and
        used by the application across restarts.
        """
        return ChildSpec(
            id=self.name if id is None else id,
            start=TaskLauncher(self.run),
            restart=restart,
            shutdown=shutdown,
            type=ChildType.SUPERVISOR,
            significant=significant,
            label=self.name,
        )

    def stop(self) -> None:
        """Ask the supervisor to shut its children down and return from :meth:`run`."""
        self._stop_requested = True
        self._wake()

    async def wait_stopped(self) -> None:
        await self._finished.wait()

    # ---- the control loop ---------------------------------------------------------

    def _post(self, event: tuple[Any, ...]) -> None:
        self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        task, self._parked = self._parked, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _control_loop(self) -> None:
        events = self._events
        while True:
            # A stop request is looked at before each event, not only once the queue is
            # empty: a restart that keeps failing queues its next attempt each time
            # (OTP's try_again_restart, which hands control back for this reason,
            # OTP-9549), so the queue may never empty.
            while events and not self._stop_requested:
                event = events.popleft()
                try:
                    await self._handle(event)
                except _AutoShutdown:
                    self._log.info("auto_shutdown")
                    return
            if self._stop_requested:
                return
            self._parked = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._parked = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "exit":
            _, child, incarnation, exit = event
            if child.incarnation is not incarnation:
                return  # stale: this incarnation was already terminated or replaced
            child.incarnation = None
            await self._on_child_exit(child, exit)
        elif kind == "retry":
            # Tried again only while still restarting (OTP: only a child whose pid is
            # still ``{restarting, _}``): terminate_child meanwhile ends the loop.
            _, child, exit = event
            if self._is_current(child) and child.incarnation is None and child.restarting:
                await self._restart(child, exit)
        elif kind == "restart_due":
            # Only the restart it was scheduled for: not one ended by terminate_child,
            # nor a later one (each restart adds to ``restarts``).
            _, child, scheduled_for = event
            if self._is_current(child) and child.restarting and child.restarts == scheduled_for:
                await self._do_restart(child)
        elif kind == "request":
            _, operation, reply = event
            result: outcome.Outcome[Any]
            try:
                result = outcome.Value(await operation())
            except _AutoShutdown:
                reply(outcome.Error(self._stopped_error()))
                raise
            except Exception as error:
                result = outcome.Error(error)
            except BaseException:
                # Cancelled meanwhile (this supervisor is being killed): its caller must
                # not wait forever for a reply that will never come.
                reply(outcome.Error(self._stopped_error()))
                raise
            reply(result)

    async def _on_child_exit(self, child: Child, exit: Exit) -> None:
        restart = _should_restart(child.spec.restart, exit)
        self._log_exit(child, exit, restart)
        if not restart:
            self._forget(child)
            self._maybe_auto_shutdown(child)
            return
        await self._restart(child, exit)

    async def _restart(self, child: Child, exit: Exit) -> None:
        """Restart ``child`` after ``exit`` (or a failed restart attempt): OTP's ``restart/2``."""
        spec = child.spec
        child.record_restart(exit)
        self._note_restart(child)
        self.restart_counts["exit"] += 1
        if not self._intensity.add_restart(trio.current_time()):
            self._log.error(
                "supervisor_giving_up",
                child=spec.name,
                reason=str(exit),
                max_restarts=self.max_restarts,
                max_seconds=self.max_seconds,
            )
            raise RestartIntensityExceeded(self.name, spec.id, exit)
        child.restarting = True
        backoff = spec.backoff
        if backoff is not None:
            if trio.current_time() - child.up_since >= backoff.stable_after:
                child.backoff_attempts = 0  # it had been stable: start the delays over
            child.backoff_attempts += 1
            delay = backoff.delay(child.backoff_attempts)
            self.nursery.start_soon(self._restart_after, child, delay, child.restarts)
            return
        await self._do_restart(child)

    async def _restart_after(self, child: Child, delay: float, scheduled_for: int) -> None:
        await trio.sleep(delay)
        self._post(("restart_due", child, scheduled_for))

    async def _do_restart(self, child: Child) -> None:
        """Apply the strategy; a failed start is retried as a new restart."""
        try:
            await self._restart_by_strategy(child)
        except StartError as error:
            failed: Child = getattr(error, "sv_child", child)
            failed.restarting = True
            self._log.warning(
                "child_restart_failed", child=failed.spec.name, reason=repr(error.reason)
            )
            self._post(("retry", failed, exit_from_exception(error.reason)))

    async def _start_child(self, child: Child) -> None:
        """Launch one incarnation; raises StartError (naming the child) if it fails."""
        if self.stopping:
            raise SupervisorStopping(f"supervisor {self.name!r} is shutting down")
        try:
            incarnation = await child.launcher.launch(self, child)
        except AlreadyStarted:
            raise  # OTP's {error, {already_started, Pid}}: not a failure of the child
        except Exception as reason:
            error = StartError(child.spec.id, reason)
            error.sv_child = child  # type: ignore[attr-defined]
            raise error from reason
        if incarnation is not None and child.removed:
            # A dynamic child terminated while this start was under way: it is gone.
            await do_terminate(incarnation, child.spec.shutdown_grace)
            return
        child.incarnation = incarnation
        child.restarting = False
        child.up_since = trio.current_time()
        if incarnation is not None:
            if self.on_restart is not None and isinstance(child.ref, SupervisorCore):
                _pass_observer(child.ref, f"{self.path}/{child.spec.name}", self.on_restart)
            self._child_started(child)
            if not incarnation.sv_alive:
                # It ended before its start returned here (a task child that fails right
                # after ``task_status.started()``): its exit, posted before it was
                # attached, may have been dropped as stale. Post it again; whichever of
                # the two comes second is the stale one.
                self._post(("exit", child, incarnation, incarnation.sv_exit))
        if incarnation is not None and self._shutting_down():
            # The supervisor began shutting down while this child was starting.
            await do_terminate(incarnation, child.spec.shutdown_grace)

    async def _terminate_child(self, child: Child) -> None:
        incarnation, child.incarnation = child.incarnation, None
        if incarnation is not None:
            await do_terminate(incarnation, child.spec.shutdown_grace)

    def _note_restart(self, child: Child) -> None:
        """Tell :attr:`on_restart` of ``child``'s newest restart record."""
        observer = self.on_restart
        if observer is not None and child.history:
            observer(f"{self.path}/{child.spec.name}", child.history[-1])

    def _child_started(self, child: Child) -> None:
        """A new incarnation of ``child`` is up (dynamic supervisors index it by ref)."""

    def _release_name(self, child: Child) -> None:
        """``child`` will not be started again: its launcher gives up its registered name."""
        child.launcher.release(child)

    def _log_exit(self, child: Child, exit: Exit, restart: bool) -> None:
        if exit.clean:
            self._log.debug("child_exited", child=child.spec.name, reason=exit.kind)
            return
        self._log.warning(
            "child_crashed",
            child=child.spec.name,
            reason=exit.kind,
            error=exit.error_type,
            message=exit.message,
            where=exit.where(),
            restarts=child.restarts + (1 if restart else 0),
            restart=restart,
        )

    def _maybe_auto_shutdown(self, child: Child) -> None:
        if not child.spec.significant:
            return
        mode = self.auto_shutdown
        if mode is AutoShutdown.ANY_SIGNIFICANT:
            raise _AutoShutdown()
        if mode is AutoShutdown.ALL_SIGNIFICANT and not any(
            c.spec.significant and c.status is not ChildStatus.STOPPED for c in self._children()
        ):
            raise _AutoShutdown()

    # ---- operator actions (see the module doc) ----------------------------------------

    def _find_by_id(self, child_id: Hashable) -> Child:
        for child in self._children():
            if child.spec.id == child_id:
                return child
        raise NoSuchChild(f"supervisor {self.name!r} has no child {child_id!r}")

    def _running_child(self, child_id: Hashable) -> tuple[Child, Incarnation]:
        child = self._find_by_id(child_id)
        incarnation = child.incarnation
        if incarnation is None or not incarnation.sv_alive:
            raise ChildNotRunning(f"child {child_id!r} of {self.name!r} is not running")
        return child, incarnation

    def would_give_up(self) -> bool:
        """Whether one more restart now would exceed the intensity: a child crashing (or
        killed) now would make this supervisor give up and escalate to its parent."""
        return self._intensity.would_exceed(trio.current_time())

    def child_status(self, child_id: Hashable) -> ChildStatus:
        """The status of child ``child_id``; a dynamic child that ended is gone (NoSuchChild)."""
        return self._find_by_id(child_id).status

    async def kill_child(self, child_id: Hashable) -> None:
        """Kill a running child abruptly; it is handled like a crash (see the module doc).

        Raises :class:`NoSuchChild`, :class:`ChildNotRunning`, or
        :class:`SupervisorStopping` if it could not kill it. A kill that makes the
        supervisor give up (intensity exceeded) was done all the same: it returns, and
        the supervisor is then stopping (``running`` is False).
        """

        async def kill() -> None:
            _, incarnation = self._running_child(child_id)
            incarnation._sv_kill()
            await incarnation._sv_wait_exit()  # its exit is now queued to this loop

        await self._call_in_loop(kill)
        with contextlib.suppress(SupervisorStopping):  # the kill made it give up: done
            await self._call_in_loop(_nothing)  # returns once the exit was handled

    async def stop_and_restart_child(self, child_id: Hashable) -> None:
        """Stop a running child gracefully and start it again (see the module doc).

        Raises :class:`NoSuchChild`, :class:`ChildNotRunning`, :class:`SupervisorStopping`,
        or :class:`StartError` if the new start fails: as OTP's ``restart_child``, the
        child is then left stopped (a dynamic one is removed), the failure does not
        count toward the intensity, and the caller decides. A registered name stays
        reserved for the child throughout, so a start of another child under it
        meanwhile fails with :class:`AlreadyStarted`.
        """

        async def restart() -> None:
            child, _ = self._running_child(child_id)
            await self._terminate_child(child)
            child._add_record(RestartRecord(time.time(), "operator", None, "operator restart"))
            self._note_restart(child)
            self.restart_counts["operator"] += 1
            try:
                # Its name (if any) stayed reserved for it while it was stopped, so no
                # other start could take it meanwhile: this start cannot be AlreadyStarted.
                await self._start_child(child)
            except StartError:
                self._forget(child)
                raise

        await self._call_in_loop(restart)

    async def _call_in_loop(self, operation: Callable[[], Any]) -> Any:
        """Run ``operation`` in the control loop, after what is queued, and return its result."""
        if self.stopping or self._nursery is None:
            raise SupervisorStopping(f"supervisor {self.name!r} is not running")
        done = trio.Event()
        box: list[outcome.Outcome[Any]] = []

        def reply(result: outcome.Outcome[Any]) -> None:
            box.append(result)
            done.set()

        self._post(("request", operation, reply))
        await done.wait()
        return box[0].unwrap()

    # ---- what subclasses provide ------------------------------------------------------

    auto_shutdown: AutoShutdown = AutoShutdown.NEVER

    def _children(self) -> Iterable[Child]:
        raise NotImplementedError

    def _is_current(self, child: Child) -> bool:
        raise NotImplementedError

    def _forget(self, child: Child) -> None:
        """A child ended and is not restarted: remove it or keep it stopped."""
        raise NotImplementedError

    async def _start_initial(self) -> None:
        raise NotImplementedError

    async def _restart_by_strategy(self, child: Child) -> None:
        raise NotImplementedError

    async def _terminate_all(self) -> None:
        raise NotImplementedError

    # ---- introspection --------------------------------------------------------------------

    def which_children(self) -> list[ChildInfo]:
        """OTP's ``which_children``: id, handle, type and status of every child."""
        return [ChildInfo.of(child) for child in self._children()]

    def child_info(self, child_id: Hashable) -> ChildInfo:
        """One child as :meth:`which_children` shows it; :class:`NoSuchChild` if none
        (a dynamic supervisor finds it by id without walking its children)."""
        return ChildInfo.of(self._find_by_id(child_id))

    def iter_children(self, start: int = 0, stop: int | None = None) -> Iterator[ChildInfo]:
        """:meth:`which_children` one child at a time, in the same order, for walking a
        big supervisor without building the whole list (:func:`snapshot` lists the first
        few); ``start``/``stop``: only those positions (the others are skipped without
        being looked at: one page of a million children). Do not await between two items:
        the children may change meanwhile."""
        children = self._children()
        if start or stop is not None:
            children = itertools.islice(children, start, stop)
        for child in children:
            yield ChildInfo.of(child)

    def count_children(self) -> ChildCounts:
        """OTP's ``count_children``."""
        specs = active = supervisors = workers = 0
        for child in self._children():
            specs += 1
            if child.status is ChildStatus.RUNNING:
                active += 1
            if child.spec.type is ChildType.SUPERVISOR:
                supervisors += 1
            else:
                workers += 1
        return ChildCounts(specs, active, supervisors, workers)


def _pass_observer(sup: SupervisorCore, path: str, observer: RestartObserver) -> None:
    """Give a supervisor just started (and the supervisors it started meanwhile, which were
    started before it had one) its path and the restart observer."""
    sup.path, sup.on_restart = path, observer
    for info in sup.iter_children():
        if isinstance(info.ref, SupervisorCore):
            _pass_observer(info.ref, f"{path}/{info.name}", observer)


async def _nothing() -> None:
    return None


def _should_restart(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return not exit.clean
    return False


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child as :meth:`SupervisorCore.which_children` sees it."""

    id: Hashable
    ref: Any  # the running child's handle (an ActorRef, a supervisor, ...), else None
    type: ChildType
    status: ChildStatus
    restarts: int
    history: tuple[RestartRecord, ...]
    name: str = ""  # its spec's name (label, or the id as text): what paths and snapshots show
    started_at: float | None = None  # wall-clock seconds its running incarnation started
    mailbox: int = 0  # messages queued for its running incarnation

    @classmethod
    def of(cls, child: Child) -> ChildInfo:
        incarnation = child.incarnation
        running = incarnation is not None and incarnation.sv_alive
        return cls(
            child.spec.id,
            child.ref,
            child.spec.type,
            child.status,
            child.restarts,
            tuple(child.history or ()),
            child.spec.name,
            incarnation.sv_started_at if running and incarnation is not None else None,
            incarnation.sv_mailbox_depth if running and incarnation is not None else 0,
        )


@dataclass(frozen=True, slots=True)
class ChildCounts:
    specs: int
    active: int
    supervisors: int
    workers: int
