"""Running children: how each kind is launched, stopped and killed.

A supervisor sees every running child (an *incarnation*) through the same few
operations (:class:`~._protocols.Incarnation`: ask to stop within a grace period,
kill, wait for the exit), so its strategies never care what kind of child it is.
Two kinds implement them: :class:`~._actor.GenServer` actors (no task of their
own, see :mod:`._dispatch`) and :class:`TaskIncarnation`, an ``async`` function
running as a task in the supervisor's nursery (supervisors themselves run so).
Each kind has its launcher (:class:`~._protocols.Launcher`), which starts one
incarnation at a time and, for an actor with a name, registers each incarnation
in the :class:`~._registry.Registry` for the child (the name outlives it) until
the supervisor releases the child.

A task child is stopped by cancelling it. Cleanup that has to ``await`` runs
inside :func:`shutdown_shield`, which shields it from that cancellation until
the child's grace period (its spec's ``shutdown``) runs out.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Hashable
from typing import Any, Final

import trio

from ._actor import DEFAULT_MAILBOX_SIZE
from ._exit import KILLED, NORMAL, SHUTDOWN, Exit, exit_from_exception
from ._protocols import Host, Incarnation, Launcher, StartableActor
from ._registry import Registry
from ._spec import BRUTAL_KILL, INFINITY, Shutdown, TaskFn

_current_task_child: contextvars.ContextVar[TaskIncarnation] = contextvars.ContextVar(
    "supervisors_current_task_child"
)

_IGNORED: Final = object()


def shutdown_shield() -> trio.CancelScope:
    """A cancel scope for a task child's cleanup: shielded until its grace period ends.

    Use it in ``finally:`` (or ``except trio.Cancelled:``) of a task child whose
    cleanup must ``await``::

        try:
            await serve()
        finally:
            with supervisors.shutdown_shield():
                await flush()

    Outside a supervised task it shields without a deadline.
    """
    incarnation = _current_task_child.get(None)
    if incarnation is None:
        return trio.CancelScope(shield=True)
    scope = trio.CancelScope(shield=True, deadline=incarnation.grace_deadline)
    incarnation.shields.append(scope)
    return scope


class TaskIncarnation:
    """One run of an ``async`` task child in its supervisor's nursery."""

    __slots__ = (
        "_done",
        "_host",
        "_scope",
        "_started",
        "_stop_exit",
        "child",
        "grace_deadline",
        "ref",
        "shields",
        "sv_exit",
        "sv_started_at",
    )

    def __init__(self, host: Host, child: object) -> None:
        self._host = host
        self.child = child
        self._scope: trio.CancelScope | None = None
        self._started = False
        self._done = trio.Event()
        self._stop_exit = SHUTDOWN
        self.sv_exit: Exit | None = None
        self.grace_deadline = math.inf
        self.ref: Any = None
        self.shields: list[trio.CancelScope] = []
        self.sv_started_at = time.time()

    @property
    def sv_alive(self) -> bool:
        return self.sv_exit is None

    @property
    def sv_mailbox_depth(self) -> int:
        depth = getattr(self.ref, "mailbox_depth", 0)
        return depth if isinstance(depth, int) else 0

    async def run(self, fn: TaskFn, *, task_status: trio.TaskStatus[Any]) -> None:
        _current_task_child.set(self)
        exit = NORMAL

        def started(value: Any = None) -> None:
            self._started = True
            self.ref = value
            self.sv_started_at = time.time()
            task_status.started(value)

        status = _Status(started)
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await fn(task_status=status)
                except Exception as error:
                    if not self._started:
                        raise  # nursery.start() re-raises it: the start failed
                    exit = exit_from_exception(error)
        except BaseException:
            # Cancelled from outside (the supervisor's nursery is going away), or a
            # failed start: either way this incarnation is over and must say so.
            self._end(KILLED if self._started else NORMAL, notify=self._started)
            raise
        if not self._started:
            if scope.cancelled_caught:
                self._end(KILLED, notify=False)
                raise trio.TooSlowError("the child was stopped before it was ready")
            task_status.started(_IGNORED)  # returned without starting: OTP's ``ignore``
            self._end(NORMAL, notify=False)
            return
        self._end(self._stop_exit if scope.cancel_called else exit, notify=True)

    def _end(self, exit: Exit, *, notify: bool) -> None:
        if self.sv_exit is not None:
            return
        self.sv_exit = exit
        self._done.set()
        if notify:
            self._host._child_exited(self.child, self, exit)

    def _sv_request_stop(self, grace_deadline: float) -> None:
        self.grace_deadline = grace_deadline
        for shield in self.shields:  # cleanup already shielded gets the same grace
            shield.deadline = min(shield.deadline, grace_deadline)
        if self._scope is not None:
            self._scope.cancel()

    def _sv_kill(self) -> None:
        self.grace_deadline = -math.inf
        self._stop_exit = KILLED
        for shield in self.shields:
            shield.cancel()
        if self._scope is not None:
            self._scope.cancel()

    async def _sv_wait_exit(self) -> Exit:
        await self._done.wait()
        assert self.sv_exit is not None
        return self.sv_exit


class _Status:
    """The ``task_status`` a task child receives."""

    __slots__ = ("started",)

    def __init__(self, started: Any) -> None:
        self.started = started


class TaskLauncher:
    """Launches an ``async def fn(*, task_status)`` as a task child."""

    __slots__ = ("fn",)

    def __init__(self, fn: TaskFn) -> None:
        self.fn = fn

    async def launch(self, host: Host, child: object) -> Incarnation | None:
        incarnation = TaskIncarnation(host, child)
        value = await host.nursery.start(incarnation.run, self.fn)
        return None if value is _IGNORED else incarnation

    def release(self, child: object) -> None:
        """A task child holds nothing between incarnations."""

    def __repr__(self) -> str:
        return f"TaskLauncher({getattr(self.fn, '__qualname__', self.fn)!r})"


class ActorLauncher:
    """Launches a :class:`GenServer` built by ``factory(*args, **kwargs)``."""

    __slots__ = ("args", "factory", "kwargs", "mailbox_size", "registered_name")

    def __init__(
        self,
        factory: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: tuple[Registry, Hashable] | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
    ) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be >= 1, not {mailbox_size!r}")
        self.factory = factory
        self.args = args
        self.kwargs = kwargs
        self.registered_name = name
        self.mailbox_size = mailbox_size

    async def launch(self, host: Host, child: object) -> Incarnation | None:
        actor: StartableActor = (
            self.factory(*self.args, **self.kwargs) if self.kwargs else self.factory(*self.args)
        )
        actor._sv_bind(host.dispatcher, self.mailbox_size, host, child)
        name = self.registered_name
        if name is not None:
            # Before init, as gen_server registers: a racing start of the name fails here.
            # If init fails, the registry's monitor keeps the name reserved for the child.
            name[0].register(name[1], actor.ref, owner=child)
        await actor._sv_init()
        return actor

    def release(self, child: object) -> None:
        """Give up the name reserved for ``child`` (its supervisor will not start it again)."""
        name = self.registered_name
        if name is not None:
            name[0].unregister(name[1], owner=child)

    def __repr__(self) -> str:
        return f"ActorLauncher({getattr(self.factory, '__qualname__', self.factory)!r})"


def as_launcher(start: Any) -> Launcher:
    if hasattr(start, "launch"):
        return start  # type: ignore[no-any-return]
    return TaskLauncher(start)


def request_stop(incarnation: Incarnation, shutdown: Shutdown) -> float:
    """Ask a child to stop within ``shutdown``; returns the deadline (kill at once if brutal)."""
    if shutdown == BRUTAL_KILL:
        incarnation._sv_kill()
        return -math.inf
    deadline = math.inf if shutdown == INFINITY else trio.current_time() + float(shutdown)
    incarnation._sv_request_stop(deadline)
    return deadline


async def wait_stopped(incarnation: Incarnation, deadline: float) -> Exit:
    """Wait for a child asked to stop; kill it when ``deadline`` passes."""
    exit = incarnation.sv_exit
    if exit is not None:
        return exit
    with trio.move_on_at(deadline):
        return await incarnation._sv_wait_exit()
    incarnation._sv_kill()
    return await incarnation._sv_wait_exit()


async def do_terminate(incarnation: Incarnation, shutdown: Shutdown) -> Exit:
    """Stop one child as OTP's ``shutdown/2`` does: grace period, then kill."""
    if not incarnation.sv_alive:
        return await incarnation._sv_wait_exit()
    return await wait_stopped(incarnation, request_stop(incarnation, shutdown))
