"""The dispatcher: runs actors on Trio tasks only while they have mail.

A Trio task parked on its own memory channel costs ~4.7 KB and every message a
task switch, so "one task per actor" can neither keep a million idle actors
cheap nor dispatch fast. Instead (as Akka and Orleans dispatchers do) an actor
is a plain object with a mailbox, and each supervisor owns a dispatcher: a run
queue of actors that have mail, served by an elastic pool of worker tasks in
the supervisor's nursery.

* Mail for an idle actor puts it on the run queue. If no worker is awake, one
  is woken (a parked one, or a new one is spawned).
* An awake worker takes actors from the queue one after the other, without a
  task switch between them, and handles up to ``throughput`` messages of each
  before putting it back at the end of the queue (fairness between actors).
  After ``throughput`` messages in all it checkpoints, so a busy dispatcher
  cannot starve the rest of the program.
* An actor never runs on two workers at once. When an ``async`` handler really
  suspends (it awaits something that is not ready), its worker stops serving
  the queue and, if actors are waiting, another worker is woken: a handler that
  waits blocks only its own actor. The worker rejoins when the handler is done.
* When the queue is empty a worker parks; at most ``max_idle`` stay parked.

Because workers live in the supervisor's nursery, the supervisor still owns its
actors' execution: cancelling the supervisor cancels them.

What the dispatcher needs of an actor is :class:`Runnable`; it imports nothing
else of the package.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, Final, Protocol

import trio


class Kinds(Protocol):
    """What the dispatcher reads of an actor class's callbacks."""

    @property
    def any_async(self) -> bool:
        """Whether any message callback is an ``async def`` (its drain may wait)."""
        ...


class Runnable(Protocol):
    """What a dispatcher runs: an actor (a :class:`~._actor.GenServer`) that has mail.

    Its members are private names of the actor, kept out of the namespace of the
    classes users write; this is the only place that uses them from outside.
    """

    @property
    def _sv_kinds(self) -> Kinds: ...
    def _sv_drain_sync(self, budget: int) -> int:
        """Handle up to ``budget`` messages without awaiting; returns how many."""
        ...

    async def _sv_drain_async(
        self, budget: int, dispatcher: Dispatcher, worker: WorkerState
    ) -> int:
        """Handle up to ``budget`` messages, telling ``dispatcher`` when a handler waits."""
        ...


class WorkerState:
    """One worker: whether it counts as serving the run queue, and its cancel scope.

    Killing an actor whose async handler is waiting cancels the scope of the
    worker running it (a worker runs one actor at a time, and only a waiting
    handler can be interrupted); the worker then continues in a fresh scope.
    """

    __slots__ = ("awake", "killed", "scope")

    def __init__(self) -> None:
        self.awake = True
        self.killed = False
        self.scope = trio.CancelScope()


FREE_MAILBOXES: Final = 1024
"""Empty mailboxes a dispatcher keeps for reuse (a deque of one block is ~600 bytes)."""


class Dispatcher:
    """A run queue of actors with mail and the worker tasks that serve it."""

    __slots__ = (
        "_awake",
        "_free",
        "_idle",
        "_nursery",
        "_runq",
        "closed",
        "max_idle",
        "throughput",
    )

    def __init__(self, nursery: trio.Nursery, *, max_idle: int = 32, throughput: int = 256) -> None:
        self._nursery = nursery
        self._runq: deque[Runnable] = deque()
        self._idle: list[trio.lowlevel.Task] = []
        self._awake = 0  # workers serving the queue (not parked, not blocked in a handler)
        self.max_idle = max_idle
        self.throughput = throughput
        self.closed = False
        self._free: list[deque[Any]] = []

    def mailbox(self) -> deque[Any]:
        """An empty mailbox for an actor that gets mail while it has none.

        Idle actors hold no mailbox (a million of them stay cheap), so a busy actor
        would allocate one per burst of mail; reusing emptied ones instead spares the
        allocation and, above all, the garbage collector's work on short-lived objects."""
        free = self._free
        return free.pop() if free else deque()

    def recycle(self, mailbox: deque[Any]) -> None:
        """Keep ``mailbox``, emptied by an actor going idle, for :meth:`mailbox`."""
        if len(self._free) < FREE_MAILBOXES:
            self._free.append(mailbox)

    def activate(self, actor: Runnable) -> None:
        """Queue ``actor`` (which has mail and is marked scheduled) to run."""
        self._runq.append(actor)
        if self._awake == 0:
            self._wake_one()

    def _wake_one(self) -> None:
        self._awake += 1
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop())
        else:
            self._nursery.start_soon(self._worker)

    def suspending(self, worker: WorkerState) -> None:
        """The handler running on ``worker`` is about to wait: hand the queue on."""
        if worker.awake:
            worker.awake = False
            self._awake -= 1
            if self._runq and self._awake == 0 and not self.closed:
                self._wake_one()

    async def _worker(self) -> None:
        runq = self._runq
        idle = self._idle
        worker = WorkerState()
        budget = self.throughput
        while True:
            while runq:
                if runq[0]._sv_kinds.any_async:
                    # A cancel scope only around async actors: only a waiting handler can
                    # be killed, and entering a scope costs as much as a small handler.
                    with trio.CancelScope() as worker.scope:
                        while runq and runq[0]._sv_kinds.any_async:
                            actor = runq.popleft()
                            handled = await actor._sv_drain_async(budget, self, worker)
                            if not worker.awake:  # its handler waited; serve the queue again
                                worker.awake = True
                                self._awake += 1
                            if worker.killed:  # leave the cancelled scope at once
                                worker.killed = False
                                break
                            budget -= handled
                            if budget <= 0:
                                budget = self.throughput
                                await trio.lowlevel.checkpoint()
                else:
                    handled = runq.popleft()._sv_drain_sync(budget)
                    budget -= handled
                    if budget <= 0:
                        budget = self.throughput
                        await trio.lowlevel.checkpoint()
            self._awake -= 1
            if self.closed or len(idle) >= self.max_idle:
                return
            task = trio.lowlevel.current_task()
            idle.append(task)

            def abort(_: Any, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                idle.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            budget = self.throughput

    def requeue(self, actor: Runnable) -> None:
        """Put an actor that still has mail back at the end of the queue."""
        self._runq.append(actor)

    def close(self) -> None:
        """Stop parking workers (the supervisor is going away)."""
        self.closed = True


@types.coroutine
def drive(
    coro: Coroutine[Any, Any, Any], dispatcher: Dispatcher, worker: WorkerState
) -> Generator[Any, Any, Any]:
    """Await ``coro``, telling the dispatcher if it really suspends.

    Equivalent to ``await coro``; the first time the coroutine yields to Trio
    (it is about to wait), :meth:`Dispatcher.suspending` lets another worker
    take over the run queue.
    """
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return done.value
    dispatcher.suspending(worker)
    while True:
        try:
            sent = yield trap
        except BaseException as error:
            try:
                trap = coro.throw(error)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as done:
                return done.value
