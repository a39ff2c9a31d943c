"""Exceptions raised by the supervisors library.

Every error carries the facts needed to act on it as attributes (which child,
which actor, what reason), and its message says what to do where there is
something to do.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._exit import Exit


class SupervisorError(Exception):
    """Base class of every error this library raises."""


class SpecError(SupervisorError, ValueError):
    """A child spec or supervisor flag is invalid.

    ``tag`` names the rule that failed (``"duplicate_child_id"``,
    ``"invalid_restart"``, ...), as OTP's ``{invalid_..., Value}`` tuples do,
    so callers can match on it without parsing the message.
    """

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(f"{tag}: {message}")
        self.tag = tag


class StartError(SupervisorError):
    """A child failed to start; ``child_id`` names it, ``reason`` is what it raised.

    Raised by a supervisor whose initial start failed (after it has shut down
    the children it had already started) and by ``start_child``.
    """

    def __init__(self, child_id: Hashable, reason: BaseException) -> None:
        super().__init__(f"child {child_id!r} failed to start: {reason!r}")
        self.child_id = child_id
        self.reason = reason


class RestartIntensityExceeded(SupervisorError):
    """A supervisor saw more than ``max_restarts`` restarts within ``max_seconds``.

    It has terminated all its children and exits with this error; its own
    parent then treats it as a crashed child (escalation). ``last_exit`` is the
    child exit that tipped it over.
    """

    def __init__(self, supervisor: str, child_id: Hashable, last_exit: Exit) -> None:
        super().__init__(
            f"supervisor {supervisor!r} reached its maximum restart intensity; "
            f"last exit: child {child_id!r} {last_exit}"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.last_exit = last_exit


class AlreadyStarted(SupervisorError):
    """The name (or static child id) is already taken by a running child."""

    def __init__(self, name: Hashable, existing: object | None) -> None:
        super().__init__(f"{name!r} is already started")
        self.name = name
        self.existing = existing


class AlreadyPresent(SupervisorError):
    """A static supervisor already has a child with that id, not running (OTP's
    ``already_present``): ``restart_child`` starts it again, ``delete_child`` removes it."""

    def __init__(self, child_id: Hashable) -> None:
        super().__init__(
            f"child {child_id!r} is already present (not running): restart_child starts it "
            "again, or delete_child removes it first"
        )
        self.child_id = child_id


class MaxChildrenReached(SupervisorError):
    """A DynamicSupervisor refused ``start_child``: it holds ``max_children``."""


class NoSuchChild(SupervisorError, LookupError):
    """A static supervisor has no child with that id."""


class ChildNotRunning(SupervisorError):
    """The child exists (its spec is kept) but has no running incarnation."""


class ChildRestarting(SupervisorError):
    """The child is being restarted by its supervisor (OTP's ``{error, restarting}``):
    its restart failed and is being tried again, or waits for its backoff delay.

    ``restart_child`` and ``delete_child`` refuse such a child; ``terminate_child``
    ends the restart loop (the child is then stopped, or removed if dynamic or
    temporary), after which both work.
    """

    def __init__(self, child_id: Hashable, supervisor: str) -> None:
        super().__init__(
            f"child {child_id!r} of {supervisor!r} is restarting; terminate_child ends "
            "its restart loop first"
        )
        self.child_id = child_id
        self.supervisor = supervisor


class SupervisorStopping(SupervisorError):
    """The supervisor is shutting down and takes no new work."""


class NoSuchActor(SupervisorError):
    """The actor is not running (it exited, or no actor has that name).

    A call to a name whose actor is being restarted does not raise this: it
    waits for the new incarnation, within the call's timeout.
    """

    def __init__(self, target: object) -> None:
        super().__init__(f"no such actor: {target!r} is not running")
        self.target = target


class ActorExited(SupervisorError):
    """The actor exited before it replied to this call; ``exit`` says why.

    ``delivered`` is False when the actor died before it read the call, so the
    request had no effect and may safely be sent again.
    """

    def __init__(self, target: object, exit: Exit, *, delivered: bool = True) -> None:
        what = "replying" if delivered else "reading the call"
        super().__init__(f"actor {target!r} exited before {what}: {exit}")
        self.target = target
        self.exit = exit
        self.delivered = delivered


class CallTimeout(SupervisorError, TimeoutError):
    """No reply within the call's timeout. The actor keeps running; a late reply is dropped."""

    def __init__(self, target: object, timeout: float) -> None:
        super().__init__(
            f"call to {target!r} got no reply within {timeout} s "
            "(the actor is busy or stuck; raise the timeout or look at its mailbox depth)"
        )
        self.target = target
        self.timeout = timeout
