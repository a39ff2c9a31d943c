"""Supervisor: a static list of children under one strategy (OTP's ``supervisor``).

Children start in the order given, each waiting until the previous one is
ready (a task child calls ``task_status.started()``, an actor returns from
``init``). If one fails to start, the ones already started are shut down in
reverse order and ``run`` raises :class:`StartError` naming the child.

Strategies, when a child is to be restarted:

``ONE_FOR_ONE``
    Only that child is restarted.
``ONE_FOR_ALL``
    All other children are terminated (reverse start order), then all are
    started again in order. Temporary children are terminated and removed.
``REST_FOR_ONE``
    The children started after it are terminated (reverse order), then it and
    they are started again in order. Temporary ones are removed.

A child whose restart fails is retried (each attempt counts toward the
restart intensity); under one_for_all / rest_for_one the children started by a
failed attempt are terminated again first.

Run time operations (OTP's ``start_child``, ``terminate_child``,
``restart_child``, ``delete_child``) are serialized with restarts through the
supervisor's own task.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from ._core import Child, ChildStatus, SupervisorCore
from ._errors import AlreadyStarted, SpecError, StartError
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
    ) -> None:
        super().__init__(name, max_restarts, max_seconds)
        if not isinstance(strategy, Strategy):
            raise SpecError("invalid_strategy", f"{strategy!r} is not a Strategy")
        check_children(children)
        check_auto_shutdown(auto_shutdown, children)
        self.strategy = strategy
        self.strategy_name = strategy.value
        self.auto_shutdown = auto_shutdown
        self._specs = list(children)
        self._list: list[Child] = [Child(spec) for spec in children]

    def _reset(self) -> None:
        super()._reset()
        self._list = [Child(spec) for spec in self._specs]

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
        return self._list

    def _is_current(self, child: Child) -> bool:
        return child in self._list

    def _forget(self, child: Child) -> None:
        child.restarting = False
        self._release_name(child)
        if child.spec.restart is Restart.TEMPORARY:
            self._list.remove(child)

    async def _start_initial(self) -> None:
        await self._start_in_order(self._list)

    async def _start_in_order(self, children: Sequence[Child], *, rollback: bool = True) -> None:
        """Start ``children`` in order.

        On a failure, the initial start terminates those it started (``rollback``);
        a restart leaves them running and retries from the failed child, as OTP does.
        """
        started: list[Child] = []
        for child in children:
            try:
                await self._start_child(child)
            except StartError:
                if rollback:
                    for done in reversed(started):
                        await self._terminate_child(done)
                raise
            started.append(child)

    async def _restart_by_strategy(self, child: Child) -> None:
        if self.strategy is Strategy.ONE_FOR_ONE:
            await self._start_child(child)
            return
        index = self._list.index(child)
        group = self._list if self.strategy is Strategy.ONE_FOR_ALL else self._list[index:]
        for other in reversed(group):
            if other is not child and other.incarnation is not None:
                await self._terminate_child(other)
        for other in [c for c in group if c.spec.restart is Restart.TEMPORARY and c is not child]:
            self._release_name(other)
            self._list.remove(other)
        group = self._list if self.strategy is Strategy.ONE_FOR_ALL else self._list[index:]
        for other in group:
            other.restarting = True
            if other is not child and other.status is not ChildStatus.RUNNING:
                other.record_sibling_restart(child.spec.id, self.strategy_name)
        await self._start_in_order(group, rollback=False)

    async def _terminate_all(self) -> None:
        try:
            for child in reversed(self._list):
                await self._terminate_child(child)
                child.restarting = False
                self._release_name(child)
        finally:  # even if killed while waiting: the names must not stay reserved
            for child in self._list:
                self._release_name(child)

    # ---- run-time operations (OTP's supervisor API) -------------------------------

    async def start_child(self, spec: ChildSpec) -> Any:
        """Add ``spec`` at the end and start it; returns the child's ref."""
        check_child_spec(spec)
        check_auto_shutdown(self.auto_shutdown, [spec])

        async def operation() -> Any:
            for existing in self._list:
                if existing.spec.id == spec.id:
                    raise AlreadyStarted(spec.id, existing.ref)
            child = Child(spec)
            await self._start_child(child)
            self._list.append(child)
            return child.ref

        return await self._call_in_loop(operation)

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child (its spec stays, for ``restart_child``); temporary ones are removed."""

        async def operation() -> None:
            child = self._find_by_id(child_id)
            await self._terminate_child(child)
            child.restarting = False
            if child.spec.restart is Restart.TEMPORARY:
                self._release_name(child)
                self._list.remove(child)

        await self._call_in_loop(operation)

    async def restart_child(self, child_id: Hashable) -> Any:
        """Start a stopped child again from its spec; returns its ref."""

        async def operation() -> Any:
            child = self._find_by_id(child_id)
            if child.status is ChildStatus.RUNNING:
                raise AlreadyStarted(child_id, child.ref)
            await self._start_child(child)
            return child.ref

        return await self._call_in_loop(operation)

    async def delete_child(self, child_id: Hashable) -> None:
        """Remove a stopped child's spec."""

        async def operation() -> None:
            child = self._find_by_id(child_id)
            if child.status is ChildStatus.RUNNING:
                raise AlreadyStarted(child_id, child.ref)
            self._release_name(child)
            self._list.remove(child)

        await self._call_in_loop(operation)
