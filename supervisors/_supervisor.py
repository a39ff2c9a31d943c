"""Supervisor: a static list of children under one strategy (OTP's ``supervisor``).

Children start in the order given, each waiting until the previous one is
ready (a task child calls ``task_status.started()``, an actor returns from
``init``). If one fails to start, the ones already started are shut down in
reverse order and ``run`` raises :class:`StartError` naming the child.

``start_together`` (not in OTP) names groups of consecutive children that do not
depend on one another (OS processes that each take a while to be ready): at the
supervisor's start each group is started at once, and the next child waits until
every child of the group is ready. If one of the group fails, the others are still
waited for (each within its own start timeout), then every child started is shut
down in reverse order and ``run`` raises the :class:`StartError` of the first child
(in order) that failed. Restarts by strategy start children one after another in
order, as OTP does, grouped or not.

Strategies, when a child is to be restarted:

``ONE_FOR_ONE``
    Only that child is restarted.
``ONE_FOR_ALL``
    All other children are terminated (reverse start order), then all are
    started again in order. Temporary children are terminated and removed.
``REST_FOR_ONE``
    The children started after it are terminated (reverse order), then it and
    they are started again in order. Temporary ones are removed.

A child whose restart fails is marked restarting and retried (each attempt
counts toward the restart intensity); under one_for_all / rest_for_one the
children started by a failed attempt are terminated again first, and the ones
it did not reach are stopped (not restarting) until the retry starts them.

A child whose start returns without starting (OTP's ``ignore``) is kept, stopped,
unless it is temporary: a temporary child's spec is then not saved, at start-up
or through ``start_child``.

Run time operations (OTP's ``start_child``, ``terminate_child``,
``restart_child``, ``delete_child``) are serialized with restarts through the
supervisor's own task, and answer as OTP does in every state of the child:

================  ==============  =================  ===============  ==============
child is          start_child     terminate_child    restart_child    delete_child
================  ==============  =================  ===============  ==============
running           AlreadyStarted  stopped (kept)     AlreadyStarted   AlreadyStarted
restarting        AlreadyPresent  stopped: the       ChildRestarting  ChildRestarting
                                  loop ends
stopped           AlreadyPresent  nothing to do      started          removed
absent            started         NoSuchChild        NoSuchChild      NoSuchChild
================  ==============  =================  ===============  ==============

(A temporary child is removed instead of kept stopped.) Children are kept in a
dict by id, in start order: a lookup, ``start_child``, ``terminate_child`` and
``delete_child`` cost the same with a million children as with ten.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import trio

from ._core import Child, ChildStatus, SupervisorCore
from ._errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildRestarting,
    NoSuchChild,
    SpecError,
    StartError,
)
from ._spec import (
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    Shutdown,
    Strategy,
    check_auto_shutdown,
    check_child_spec,
    check_children,
)


class Supervisor(SupervisorCore):
    """A supervisor with a fixed, ordered list of children. See the module doc."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
        name: str = "supervisor",
        start_together: Sequence[Sequence[Hashable]] = (),
    ) -> None:
        super().__init__(name, max_restarts, max_seconds)
        if not isinstance(strategy, Strategy):
            raise SpecError("invalid_strategy", f"{strategy!r} is not a Strategy")
        check_children(children)
        check_auto_shutdown(auto_shutdown, children)
        self._together = _start_groups(children, start_together)
        self.strategy = strategy
        self.strategy_name = strategy.value
        self.auto_shutdown = auto_shutdown
        self._specs = list(children)
        # id -> child, in start order (a dict keeps insertion order): O(1) lookups,
        # additions and removals, and the order the strategies and shutdown need.
        self._by_id: dict[Hashable, Child] = {spec.id: Child(spec) for spec in children}

    def _reset(self) -> None:
        super()._reset()
        self._by_id = {spec.id: Child(spec) for spec in self._specs}

    @classmethod
    def child_spec(
        cls,
        id: Hashable,
        children: Sequence[ChildSpec],
        *,
        restart: Restart = Restart.PERMANENT,
        shutdown: Shutdown | None = None,
        significant: bool = False,
        **options: Any,
    ) -> ChildSpec:
        """A spec that runs a fresh ``Supervisor(children, **options)`` as a child.

        Each restart builds a new supervisor from the same arguments.
        """
        options.setdefault("name", str(id))
        check_children(children)

        async def start(*, task_status: Any) -> None:
            await cls(children, **options).run(task_status=task_status)

        start.__qualname__ = f"Supervisor[{id!r}]"
        return ChildSpec(
            id=id,
            start=start,
            restart=restart,
            shutdown=shutdown,
            type=ChildType.SUPERVISOR,
            significant=significant,
        )

    # ---- SupervisorCore hooks ------------------------------------------------

    def _children(self) -> Iterable[Child]:
        return self._by_id.values()

    def _is_current(self, child: Child) -> bool:
        return self._by_id.get(child.spec.id) is child

    def _find_by_id(self, child_id: Hashable) -> Child:
        child = self._by_id.get(child_id)
        if child is None:
            raise NoSuchChild(f"supervisor {self.name!r} has no child {child_id!r}")
        return child

    def _remove(self, child: Child) -> None:
        self._release_name(child)
        if self._by_id.get(child.spec.id) is child:
            del self._by_id[child.spec.id]

    def _forget(self, child: Child) -> None:
        child.restarting = False
        self._release_name(child)
        if child.spec.restart is Restart.TEMPORARY:
            self._remove(child)

    async def _start_initial(self) -> None:
        await self._start_in_order(list(self._by_id.values()), together=self._together)
        for child in list(self._by_id.values()):
            if child.incarnation is None and child.spec.restart is Restart.TEMPORARY:
                self._remove(child)  # ``ignore``: a temporary child's spec is not saved

    async def _start_in_order(
        self,
        children: Sequence[Child],
        *,
        rollback: bool = True,
        together: Mapping[Hashable, int] | None = None,
    ) -> None:
        """Start ``children`` in order; those of one group of ``together`` (child id ->
        group number) at once (see the module doc).

        On a failure, the initial start terminates those it started (``rollback``);
        a restart leaves them running and retries from the failed child, as OTP does.
        """
        started: list[Child] = []
        groups = together or {}
        index = 0
        while index < len(children):
            group = groups.get(children[index].spec.id)
            end = index + 1
            while group is not None and end < len(children):
                if groups.get(children[end].spec.id) != group:
                    break
                end += 1
            batch = children[index:end]
            index = end
            try:
                if len(batch) == 1:
                    await self._start_child(batch[0])
                    started.append(batch[0])
                else:
                    await self._start_at_once(batch, started)
            except StartError:
                if rollback:
                    for done in reversed(started):
                        await self._terminate_child(done)
                raise

    async def _start_at_once(self, batch: Sequence[Child], started: list[Child]) -> None:
        """Start every child of ``batch`` at once; add those started to ``started`` (in
        order) and raise the first failure (in order) once all have ended their start."""
        failures: dict[int, Exception] = {}
        ok: set[int] = set()

        async def one(position: int, child: Child) -> None:
            try:
                await self._start_child(child)
            except Exception as error:  # raised below, as the sequential start would
                failures[position] = error
            else:
                ok.add(position)

        async with trio.open_nursery() as nursery:
            for position, child in enumerate(batch):
                nursery.start_soon(one, position, child)
        started.extend(child for position, child in enumerate(batch) if position in ok)
        if failures:
            raise failures[min(failures)]

    def _group(self, child: Child) -> list[Child]:
        """The children a restart of ``child`` concerns under one_for_all / rest_for_one."""
        children = list(self._by_id.values())
        if self.strategy is Strategy.ONE_FOR_ALL:
            return children
        return children[children.index(child) :]

    async def _restart_by_strategy(self, child: Child) -> None:
        if self.strategy is Strategy.ONE_FOR_ONE:
            await self._start_child(child)
            return
        group = self._group(child)
        for other in reversed(group):
            if other is not child and other.incarnation is not None:
                await self._terminate_child(other)
        for other in group:
            if other.spec.restart is Restart.TEMPORARY and other is not child:
                self._remove(other)
        group = self._group(child)
        for other in group:
            if other is not child and other.status is not ChildStatus.RUNNING:
                other.record_sibling_restart(child.spec.id, self.strategy_name)
                self._note_restart(other)
        # Only ``child`` is restarting; its siblings are stopped until started again. If
        # the attempt fails, the child that failed is retried (and shown restarting) and
        # those it did not reach stay stopped until that retry starts them, as in OTP.
        await self._start_in_order(group, rollback=False)

    async def _terminate_all(self) -> None:
        children = list(self._by_id.values())
        try:
            for child in reversed(children):
                await self._terminate_child(child)
                child.restarting = False
                self._release_name(child)
        finally:  # even if killed while waiting: the names must not stay reserved
            for child in children:
                self._release_name(child)

    # ---- run-time operations (OTP's supervisor API) -------------------------------

    async def start_child(self, spec: ChildSpec) -> Any:
        """Add ``spec`` at the end and start it; returns the child's ref.

        Raises :class:`SpecError` for an invalid spec, :class:`AlreadyStarted` if a
        child with that id runs, :class:`AlreadyPresent` if one is kept stopped or is
        restarting, :class:`StartError` if the start fails (nothing is saved). A start
        that returns without starting (``ignore``) returns None; the spec is then kept,
        stopped, unless the child is temporary.
        """
        check_child_spec(spec)
        check_auto_shutdown(self.auto_shutdown, [spec])

        async def operation() -> Any:
            existing = self._by_id.get(spec.id)
            if existing is not None:
                if existing.status is ChildStatus.RUNNING:
                    raise AlreadyStarted(spec.id, existing.ref)
                raise AlreadyPresent(spec.id)
            child = Child(spec)
            await self._start_child(child)
            if child.incarnation is None and spec.restart is Restart.TEMPORARY:
                return None  # ``ignore``: a temporary child's spec is not saved
            self._by_id[spec.id] = child
            return child.ref

        return await self._call_in_loop(operation)

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child (its spec stays, for ``restart_child``); temporary ones are removed.

        A restarting child's restart loop ends: it is stopped, and no further attempt
        is made. Stopping a stopped child does nothing. Raises :class:`NoSuchChild`.
        """

        async def operation() -> None:
            child = self._find_by_id(child_id)
            child.restarting = False
            await self._terminate_child(child)
            if child.spec.restart is Restart.TEMPORARY:
                self._remove(child)

        await self._call_in_loop(operation)

    async def restart_child(self, child_id: Hashable) -> Any:
        """Start a stopped child again from its spec; returns its ref (None: ``ignore``).

        Raises :class:`NoSuchChild`, :class:`AlreadyStarted` (running),
        :class:`ChildRestarting` (its supervisor is restarting it), or
        :class:`StartError` (it stays stopped; nothing is retried or counted).
        """

        async def operation() -> Any:
            child = self._find_by_id(child_id)
            self._refuse_unless_stopped(child)
            await self._start_child(child)
            return child.ref

        return await self._call_in_loop(operation)

    async def delete_child(self, child_id: Hashable) -> None:
        """Remove a stopped child's spec.

        Raises :class:`NoSuchChild`, :class:`AlreadyStarted` (running) or
        :class:`ChildRestarting`.
        """

        async def operation() -> None:
            child = self._find_by_id(child_id)
            self._refuse_unless_stopped(child)
            self._remove(child)

        await self._call_in_loop(operation)

    def _refuse_unless_stopped(self, child: Child) -> None:
        status = child.status
        if status is ChildStatus.RUNNING:
            raise AlreadyStarted(child.spec.id, child.ref)
        if status is ChildStatus.RESTARTING:
            raise ChildRestarting(child.spec.id, self.name)


def _start_groups(
    children: Sequence[ChildSpec], groups: Sequence[Sequence[Hashable]]
) -> dict[Hashable, int]:
    """``start_together`` checked: child id -> its group's number. Each group names
    children of this supervisor, consecutive in its list, none in two groups."""
    order = {spec.id: position for position, spec in enumerate(children)}
    found: dict[Hashable, int] = {}
    for number, group in enumerate(groups):
        ids = list(group)
        for child_id in ids:
            if child_id not in order:
                raise SpecError(
                    "invalid_start_together", f"start_together names no child {child_id!r}"
                )
            if child_id in found:
                raise SpecError(
                    "invalid_start_together",
                    f"start_together names child {child_id!r} in two groups (or twice)",
                )
            found[child_id] = number
        positions = sorted(order[child_id] for child_id in ids)
        if positions and positions != list(range(positions[0], positions[0] + len(ids))):
            raise SpecError(
                "invalid_start_together",
                f"start_together group {ids!r} is not consecutive in the children's order:"
                " the children between them would start before they are ready",
            )
    return found
