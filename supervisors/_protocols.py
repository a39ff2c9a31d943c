"""The contracts between the library's parts, in one place.

A supervisor never looks inside what it runs, and what it runs never looks inside
its supervisor: each side uses the other only through the protocols below. Their
members that start with ``_sv_`` (or ``_child_exited``) sit on classes users
subclass or hold (:class:`~._actor.GenServer`, the supervisors), and are kept out
of those public namespaces by the prefix; they are still an interface, declared
here, and no module uses another's private name that is not declared in a
protocol (``tests/supervisors/test_layout.py`` checks both, and that the import
graph has no cycle).

The dispatcher's own contract (what it runs) is :class:`~._dispatch.Runnable`.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from ._dispatch import Dispatcher
from ._exit import Exit


class ExitObserver(Protocol):
    """Who is told when an actor or task child ends: its supervisor."""

    def _child_exited(self, child: Any, incarnation: Any, exit: Exit) -> None: ...


class Incarnation(Protocol):
    """What a supervisor needs of a running child (an actor, or a task child).

    ``_sv_request_stop(deadline)`` asks it to stop, giving it until ``deadline``
    (Trio time) to clean up; ``_sv_kill()`` stops it now; ``_sv_wait_exit()`` waits
    until it has ended and returns its :class:`~._exit.Exit`.
    """

    @property
    def sv_alive(self) -> bool: ...
    @property
    def sv_started_at(self) -> float: ...
    @property
    def sv_mailbox_depth(self) -> int: ...
    @property
    def sv_exit(self) -> Exit | None: ...
    def _sv_request_stop(self, grace_deadline: float) -> None: ...
    def _sv_kill(self) -> None: ...
    async def _sv_wait_exit(self) -> Exit: ...


class StartableActor(Incarnation, Protocol):
    """What :class:`~._child.ActorLauncher` needs of the actor it builds (a GenServer):
    bind it to its supervisor's dispatcher, then run its ``init``."""

    @property
    def ref(self) -> Any: ...
    def _sv_bind(
        self, dispatcher: Dispatcher, capacity: int, owner: ExitObserver, child: object
    ) -> None: ...
    async def _sv_init(self) -> None: ...


class Host(ExitObserver, Protocol):
    """What a launcher needs of the supervisor it starts a child under."""

    @property
    def nursery(self) -> trio.Nursery: ...
    @property
    def dispatcher(self) -> Dispatcher: ...


class Launcher(Protocol):
    """Starts the incarnations of one child (a child spec's ``start``).

    ``launch`` starts one; ``None`` means OTP's ``ignore`` (nothing started).
    ``release`` is called once the supervisor will not start ``child`` again (it is
    removed, not restarted, or its supervisor stopped): what the launcher holds for
    the child between incarnations (a registered name) is given up.
    """

    async def launch(self, host: Host, child: object) -> Incarnation | None: ...
    def release(self, child: object) -> None: ...
