"""DynamicSupervisor: children started at run time (Elixir's ``DynamicSupervisor``).

* It starts with no children; ``start_child(spec)`` adds one and returns its
  ref once it is ready. ``max_children`` bounds how many may run at once.
* Strategy is always one_for_one; restart intensity is counted across all
  children, as for any supervisor.
* A child that ends and is not restarted is removed (dynamic children keep no
  stopped specs). ``terminate_child(ref)`` stops one and removes it.
* On shutdown all children are asked to stop at once, then each is given its
  own grace period (as ``simple_one_for_one`` and Elixir do), so many thousands
  of actors stop in one grace period, not one after another.

``start_child`` runs the child's start in the *caller's* task (it only touches
the supervisor's state in steps that cannot interleave), so starting many
actors costs no task switch; restarts still run in the supervisor's task.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

from ._child import request_stop, wait_stopped
from ._core import Child, SupervisorCore
from ._errors import MaxChildrenReached, NoSuchChild, SupervisorStopping
from ._spec import ChildSpec, check_child_spec


class DynamicSupervisor(SupervisorCore):
    """One-for-one supervision of children started at run time."""

    def __init__(
        self,
        *,
        max_children: float = math.inf,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str = "dynamic_supervisor",
    ) -> None:
        super().__init__(name, max_restarts, max_seconds)
        if not (max_children >= 0):
            raise ValueError(f"max_children must be >= 0, not {max_children!r}")
        self.max_children = max_children
        self._live: dict[Child, None] = {}  # insertion-ordered set
        # The first live child of each id: operator actions and the API find an actor by
        # id without walking every child. Ids may repeat (rarely): see _find_by_id.
        self._by_id: dict[Hashable, Child] = {}

    def __len__(self) -> int:
        return len(self._live)

    def _reset(self) -> None:
        super()._reset()
        self._live = {}
        self._by_id = {}

    async def start_child(self, spec: ChildSpec) -> Any:
        """Start a child from ``spec`` and return its ref (for an actor, its ActorRef).

        Raises :class:`StartError` if it fails to start, :class:`AlreadyStarted`
        if its registered name is taken, :class:`MaxChildrenReached`.
        """
        if self.stopping or self._nursery is None:
            raise SupervisorStopping(f"supervisor {self.name!r} is not running")
        if len(self._live) >= self.max_children:
            raise MaxChildrenReached(
                f"supervisor {self.name!r} already runs max_children={self.max_children}"
            )
        check_child_spec(spec)
        child = Child(spec)
        self._live[child] = None  # take the place before awaiting the start
        self._by_id.setdefault(spec.id, child)
        try:
            await self._start_child(child)
        except BaseException:
            self._drop(child)
            self._release_name(child)
            raise
        if child.incarnation is None:  # ``ignore``
            self._drop(child)
            return None
        return child.ref

    async def terminate_child(self, ref: Any) -> None:
        """Stop the child whose ref is ``ref`` and remove it."""
        for child in list(self._live):
            if child.ref == ref and ref is not None:
                self._drop(child)
                await self._terminate_child(child)
                self._release_name(child)
                return
        raise NoSuchChild(f"{ref!r} is not a child of {self.name!r}")

    # ---- SupervisorCore hooks -------------------------------------------------

    def _drop(self, child: Child) -> None:
        self._live.pop(child, None)
        if self._by_id.get(child.spec.id) is child:
            del self._by_id[child.spec.id]

    def _find_by_id(self, child_id: Hashable) -> Child:
        child = self._by_id.get(child_id)
        if child is not None:
            return child
        if len(self._by_id) < len(self._live):  # some ids repeat: another may have it
            return super()._find_by_id(child_id)
        raise NoSuchChild(f"supervisor {self.name!r} has no child {child_id!r}")

    def _children(self) -> Iterable[Child]:
        return self._live

    def _is_current(self, child: Child) -> bool:
        return child in self._live

    def _forget(self, child: Child) -> None:
        self._drop(child)
        self._release_name(child)

    async def _start_initial(self) -> None:
        return None

    async def _restart_by_strategy(self, child: Child) -> None:
        await self._start_child(child)

    async def _terminate_all(self) -> None:
        children = list(self._live)
        self._live.clear()
        self._by_id.clear()
        stopping = []
        try:
            for child in children:  # ask all at once ...
                incarnation, child.incarnation = child.incarnation, None
                child.restarting = False
                if incarnation is not None and incarnation.sv_alive:
                    deadline = request_stop(incarnation, child.spec.shutdown_grace)
                    stopping.append((incarnation, deadline))
            for incarnation, deadline in stopping:  # ... then give each its grace period
                await wait_stopped(incarnation, deadline)
        finally:  # even if killed while waiting: the names must not stay reserved
            for child in children:
                self._release_name(child)
