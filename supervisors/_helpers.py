"""Short constructors for the common child specs."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ._actor import DEFAULT_MAILBOX_SIZE
from ._child import ActorLauncher, TaskLauncher
from ._registry import Registry
from ._spec import Backoff, ChildSpec, ChildType, Restart, Shutdown, TaskFn


def actor_spec(
    id: Hashable,
    factory: Any,
    *args: Any,
    name: tuple[Registry, Hashable] | None = None,
    mailbox_size: int = DEFAULT_MAILBOX_SIZE,
    restart: Restart = Restart.PERMANENT,
    shutdown: Shutdown | None = None,
    significant: bool = False,
    backoff: Backoff | None = None,
    label: str | None = None,
    **kwargs: Any,
) -> ChildSpec:
    """A worker child that runs the :class:`GenServer` built by ``factory(*args, **kwargs)``.

    ``name=(registry, key)`` registers each incarnation under ``key``.
    """
    return ChildSpec(
        id=id,
        start=ActorLauncher(factory, args, kwargs or None, name=name, mailbox_size=mailbox_size),
        restart=restart,
        shutdown=shutdown,
        type=ChildType.WORKER,
        significant=significant,
        backoff=backoff,
        label=label,
    )


def task_spec(
    id: Hashable,
    fn: TaskFn,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown: Shutdown | None = None,
    type: ChildType = ChildType.WORKER,
    significant: bool = False,
    backoff: Backoff | None = None,
    label: str | None = None,
) -> ChildSpec:
    """A child that runs ``await fn(task_status=...)`` as a task in the supervisor's nursery."""
    return ChildSpec(
        id=id,
        start=TaskLauncher(fn),
        restart=restart,
        shutdown=shutdown,
        type=type,
        significant=significant,
        backoff=backoff,
        label=label,
    )
