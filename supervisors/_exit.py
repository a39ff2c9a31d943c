"""Exit reasons: how a child ended, in OTP's terms.

OTP distinguishes ``normal``, ``shutdown`` (and ``{shutdown, Term}``), ``killed``
and any other reason. Only the first two are *clean*: a ``transient`` child is
restarted after any other exit. Python code reports them like this:

* returning from the task, or ``raise Stop()`` in an actor -> ``normal``;
* ``raise Stop("shutdown")`` / ``Stop("shutdown", detail)``, or being
  terminated by the supervisor within its grace period -> ``shutdown``;
* being cancelled after the grace period ran out (or ``brutal_kill``) -> ``killed``;
* any other exception, or ``Stop(<other reason>)`` -> ``crash``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ExitKind = Literal["normal", "shutdown", "killed", "crash"]


class Stop(Exception):
    """Raise to end the current actor or task child with an OTP-style reason.

    ``Stop()`` is a normal exit; ``Stop("shutdown")`` a clean shutdown; any
    other reason string is abnormal, so a transient child is restarted.
    """

    def __init__(self, reason: str = "normal", detail: object = None) -> None:
        super().__init__(reason if detail is None else f"{reason}: {detail!r}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Exit:
    """Why a child or actor ended."""

    kind: ExitKind
    error: BaseException | None = None

    @property
    def clean(self) -> bool:
        """True for ``normal`` and ``shutdown``: a transient child is not restarted after them."""
        return self.kind in ("normal", "shutdown")

    @property
    def cause(self) -> BaseException | None:
        """The exception that says why: ``error`` itself, or for an exception group (a
        nursery that crashed) its first leaf, so logs and the tree name the real error
        rather than "Exceptions from Trio nursery"."""
        error = self.error
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        return error

    @property
    def error_type(self) -> str | None:
        cause = self.cause
        return type(cause).__name__ if cause is not None else None

    @property
    def message(self) -> str:
        cause = self.cause
        return str(cause) if cause is not None else self.kind

    def where(self) -> str | None:
        """``file:line in function`` of the innermost frame that raised :attr:`cause`,
        for one-line logs."""
        cause = self.cause
        if cause is None or cause.__traceback__ is None:
            return None
        tb = cause.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        # Read from the frame, not through traceback/linecache: no file access on a
        # crash path that may run thousands of times a second.
        code = tb.tb_frame.f_code
        return f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"

    def __str__(self) -> str:
        if self.error is None:
            return self.kind
        return f"{self.kind} ({self.error_type}: {self.message})"


NORMAL = Exit("normal")
SHUTDOWN = Exit("shutdown")
KILLED = Exit("killed")


def exit_from_exception(exc: BaseException) -> Exit:
    """Classify what a child raised into an :class:`Exit`."""
    if isinstance(exc, Stop):
        if exc.reason == "normal":
            return Exit("normal", exc if exc.detail is not None else None)
        if exc.reason == "shutdown":
            return Exit("shutdown", exc)
        return Exit("crash", exc)
    return Exit("crash", exc)
