"""The dispatcher: runs actors on Trio tasks only while they have mail.

A Trio task parked on its own memory channel costs ~4.7 KB and every message a
task switch, so "one task per actor" can neither keep a million idle actors
cheap nor dispatch fast. Instead (as Akka and Orleans dispatchers do) an actor
is a plain object with a mailbox, and each supervisor owns a dispatcher with an
elastic pool of worker tasks in the supervisor's nursery:

* When mail arrives for an idle actor, the actor is handed to a parked worker
  (one ``reschedule``), or a new worker is spawned if none is parked.
* A worker serves one actor at a time and drains its whole mailbox, so an actor
  never runs on two tasks at once and a handler that awaits blocks only its own
  actor. Every ``throughput`` messages it checkpoints, so a busy actor cannot
  starve the rest of the program.
* When the mailbox is empty the worker parks again; at most ``max_idle`` workers
  stay parked, the rest exit.

Because workers live in the supervisor's nursery, the supervisor still owns its
actors' execution: cancelling the supervisor cancels them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import outcome
import trio

if TYPE_CHECKING:
    from ._actor import GenServer


class Dispatcher:
    """An elastic pool of worker tasks that run actors with mail."""

    __slots__ = ("_idle", "_nursery", "closed", "max_idle", "throughput")

    def __init__(self, nursery: trio.Nursery, *, max_idle: int = 32, throughput: int = 256) -> None:
        self._nursery = nursery
        self._idle: list[trio.lowlevel.Task] = []
        self.max_idle = max_idle
        self.throughput = throughput
        self.closed = False

    def activate(self, actor: GenServer[Any, Any]) -> None:
        """Run ``actor`` (which has mail and is marked scheduled) on a worker."""
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(actor))
        else:
            self._nursery.start_soon(self._worker, actor)

    async def _worker(self, actor: GenServer[Any, Any]) -> None:
        idle = self._idle
        while True:
            await actor._sv_drain(self.throughput)
            if self.closed or len(idle) >= self.max_idle:
                return
            task = trio.lowlevel.current_task()
            idle.append(task)

            def abort(_: Any, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                idle.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            actor = await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """Stop parking workers (the supervisor is going away)."""
        self.closed = True
