"""DynamicSupervisor: children started at run time (Elixir's ``DynamicSupervisor``).

* It starts with no children; ``start_child(spec)`` adds one and returns its
  ref once it is ready. ``max_children`` bounds how many may run at once.
* Strategy is always one_for_one; restart intensity is counted across all
  children, as for any supervisor.
* A child that ends and is not restarted is removed (dynamic children keep no
  stopped specs); so is one whose start or restart returns without starting
  (OTP's ``ignore``). ``terminate_child(ref)`` stops one and removes it, also
  while it is restarting (found by the ref of its last incarnation, as OTP's
  ``simple_one_for_one`` finds ``{restarting, Pid}``): its restart loop ends.
* Children are indexed by ref and by id, so ``start_child``, ``terminate_child``
  and the lookups by id cost the same with a million children as with ten.
  (An actor's ref leads to its child record directly; other refs go through a
  dict, or, if unhashable, a walk over the children.)
* The children that are not running (a first start under way, or restarting) are
  indexed too: :meth:`DynamicSupervisor.not_running` lists them without looking at
  the others (a status filter over a million children).
* So are the children restarted at least once: :meth:`DynamicSupervisor.restarted`
  lists them without looking at the others (a sort by restarts over a million
  children, most of which never restarted).
* On shutdown all children are asked to stop at once, then each is given its
  own grace period (as ``simple_one_for_one`` and Elixir do), so many thousands
  of actors stop in one grace period, not one after another.

``start_child`` runs the child's start in the *caller's* task (it only touches
the supervisor's state in steps that cannot interleave), so starting many
actors costs no task switch; restarts still run in the supervisor's task.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterable
from typing import Any

from ._actor import ActorRef, started_for
from ._child import request_stop, wait_stopped
from ._core import Child, ChildInfo, ChildStatus, SupervisorCore
from ._errors import MaxChildrenReached, NoSuchChild, SupervisorStopping
from ._exit import Exit
from ._registry import NameRef
from ._spec import ChildSpec, check_auto_shutdown, check_child_spec


class _Index:
    """Key -> the live children under it, the first added first: O(1) add, remove, first.

    Keys are unique in the common case, which costs one dict entry per child; a key
    shared by several children holds them in an insertion-ordered dict.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[Any, Child | dict[Child, None]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def add(self, key: Any, child: Child) -> None:
        found = self._map.get(key)
        if found is None:
            self._map[key] = child
        elif isinstance(found, dict):
            found[child] = None
        elif found is not child:
            self._map[key] = {found: None, child: None}

    def remove(self, key: Any, child: Child) -> None:
        found = self._map.get(key)
        if found is child:
            del self._map[key]
        elif isinstance(found, dict):
            found.pop(child, None)
            if len(found) == 1:
                self._map[key] = next(iter(found))

    def first(self, key: Any) -> Child | None:
        found = self._map.get(key)
        if isinstance(found, dict):
            return next(iter(found))
        return found


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
        # Live children by id (operator actions and the API find an actor by id; ids
        # may repeat) and, for refs that are not actors' (an actor's leads to its
        # child directly), by the ref of their latest incarnation.
        self._by_id = _Index()
        self._by_ref = _Index()
        # Live children that may not be running: from start_child until their start
        # succeeds, and from an exit their supervisor handles until a restart succeeds.
        self._unsettled: dict[Child, None] = {}
        # Live children started again at least once (``restarts`` > 0), from the end of
        # their first restart's start; those still restarting are in ``_unsettled``.
        self._restarted: dict[Child, None] = {}

    def __len__(self) -> int:
        return len(self._live)

    def not_running(self) -> list[ChildInfo]:
        """The children that are not running now (``restarting``, or ``stopped`` while
        their first start runs), in the order they stopped running; linear in those
        only. A child whose exit this supervisor has not handled yet (the scheduler
        ticks between an incarnation's end and its notice) is not among them."""
        found: list[ChildInfo] = []
        for child in list(self._unsettled):
            if child.status is ChildStatus.RUNNING:
                del self._unsettled[child]
            else:
                found.append(ChildInfo.of(child))
        return found

    def restarted(self) -> list[ChildInfo]:
        """The live children restarted at least once (``restarts`` > 0, an operator's
        restart included), running or not; linear in those only. Every other live child
        has ``restarts == 0``."""
        found = dict.fromkeys(self._restarted)
        for child in self._unsettled:
            if child.restarts:
                found[child] = None
        return [ChildInfo.of(child) for child in found if child in self._live]

    def _reset(self) -> None:
        super()._reset()
        self._live = {}
        self._by_id = _Index()
        self._by_ref = _Index()
        self._unsettled = {}
        self._restarted = {}

    async def start_child(self, spec: ChildSpec) -> Any:
        """Start a child from ``spec`` and return its ref (for an actor, its ActorRef).

        Raises :class:`SpecError` for an invalid spec (a significant child too: a
        dynamic supervisor has no ``auto_shutdown``), :class:`StartError` if it fails
        to start, :class:`AlreadyStarted` if its registered name is taken,
        :class:`MaxChildrenReached`. A start that returns without starting
        (``ignore``) returns None and keeps nothing.
        """
        check_child_spec(spec)
        check_auto_shutdown(self.auto_shutdown, [spec])
        if self.stopping or self._nursery is None:
            raise SupervisorStopping(f"supervisor {self.name!r} is not running")
        if len(self._live) >= self.max_children:
            raise MaxChildrenReached(
                f"supervisor {self.name!r} already runs max_children={self.max_children}"
            )
        child = Child(spec)
        self._live[child] = None  # take the place before awaiting the start
        self._unsettled[child] = None
        self._by_id.add(spec.id, child)
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
        """Stop the child whose ref is ``ref`` and remove it.

        ``ref`` is what :meth:`start_child` returned (or ``which_children`` shows). A
        child being restarted is found by the ref of its last incarnation: its restart
        loop ends and it is removed. Raises :class:`NoSuchChild`.
        """
        child = self._child_of(ref)
        if child is None:
            raise NoSuchChild(f"{ref!r} is not a child of {self.name!r}")
        self._drop(child)
        child.restarting = False
        await self._terminate_child(child)
        self._release_name(child)

    def _child_of(self, ref: Any) -> Child | None:
        """The live child whose latest incarnation has ``ref``, or None."""
        if ref is None:
            return None
        if isinstance(ref, NameRef):  # the actor holding the name now
            ref = ref.registry.whereis(ref.key)
            if ref is None:
                return None
        if isinstance(ref, ActorRef):
            child = started_for(ref)  # an actor leads to its child record directly
            if isinstance(child, Child) and child in self._live and child.key == ref:
                return child
            return None
        try:
            return self._by_ref.first(ref)
        except TypeError:  # unhashable: compare with every child's
            return next((c for c in self._live if c.key == ref), None)

    # ---- SupervisorCore hooks -------------------------------------------------

    def _child_started(self, child: Child) -> None:
        self._unsettled.pop(child, None)
        if child.restarts:
            self._restarted[child] = None
        old, new = child.key, child.ref
        if old is not None and not isinstance(old, ActorRef):
            self._unindex_ref(old, child)
        child.key = new
        if new is not None and not isinstance(new, ActorRef):
            with contextlib.suppress(TypeError):  # unhashable: found by a walk (_child_of)
                self._by_ref.add(new, child)

    def _unindex_ref(self, key: Any, child: Child) -> None:
        with contextlib.suppress(TypeError):
            self._by_ref.remove(key, child)

    def _drop(self, child: Child) -> None:
        child.removed = True
        self._live.pop(child, None)
        self._unsettled.pop(child, None)
        self._restarted.pop(child, None)
        self._by_id.remove(child.spec.id, child)
        key = child.key
        if key is not None and not isinstance(key, ActorRef):
            self._unindex_ref(key, child)

    def _find_by_id(self, child_id: Hashable) -> Child:
        child = self._by_id.first(child_id)
        if child is None:
            raise NoSuchChild(f"supervisor {self.name!r} has no child {child_id!r}")
        return child

    def _children(self) -> Iterable[Child]:
        return self._live

    def _is_current(self, child: Child) -> bool:
        return child in self._live

    async def _on_child_exit(self, child: Child, exit: Exit) -> None:
        if child in self._live:
            self._unsettled[child] = None  # until a restart succeeds (or it is dropped)
        await super()._on_child_exit(child, exit)

    async def _terminate_child(self, child: Child) -> None:
        if child in self._live:  # an operator restart: stopped until started again
            self._unsettled[child] = None
        await super()._terminate_child(child)

    def _forget(self, child: Child) -> None:
        self._drop(child)
        self._release_name(child)

    async def _start_initial(self) -> None:
        return None

    async def _restart_by_strategy(self, child: Child) -> None:
        await self._start_child(child)
        if child.incarnation is None and not child.removed:
            self._forget(child)  # ``ignore``: dynamic children keep no stopped specs

    async def _terminate_all(self) -> None:
        children = list(self._live)
        self._live.clear()
        self._unsettled.clear()
        self._restarted.clear()
        self._by_id = _Index()
        self._by_ref = _Index()
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
