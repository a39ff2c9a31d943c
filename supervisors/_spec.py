"""Child specifications and supervisor flags, with OTP's validation rules.

A :class:`ChildSpec` says how to start a child and what to do when it ends:

``restart``
    ``PERMANENT`` (always restarted), ``TRANSIENT`` (restarted only after an
    abnormal exit, see :mod:`._exit`), ``TEMPORARY`` (never restarted, not even
    when a sibling's failure takes it down under ``one_for_all`` or
    ``rest_for_one``; it is then simply removed).
``shutdown``
    Seconds of grace the child gets to run its terminate hook when its
    supervisor stops it, after which it is cancelled; ``BRUTAL_KILL`` cancels at
    once; ``INFINITY`` waits for as long as it takes (the default for
    supervisors, as in OTP; workers default to 5 s).
``type``
    ``WORKER`` or ``SUPERVISOR`` (for introspection and ``count_children``).
``significant``
    With the supervisor's ``auto_shutdown``, a significant child's exit can
    stop its supervisor (OTP 24+). Only transient or temporary children may be
    significant.
``backoff``
    Beyond OTP: an optional, capped exponential delay with jitter before
    restarting this child. Off (``None``) by default, which restarts at once.

Specs are validated when they are built; the checks fail with a
:class:`~._errors.SpecError` whose ``tag`` names the rule.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from ._errors import SpecError

if TYPE_CHECKING:
    from ._protocols import Launcher


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ChildType(enum.Enum):
    WORKER = "worker"
    SUPERVISOR = "supervisor"


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class AutoShutdown(enum.Enum):
    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


BRUTAL_KILL: Final = "brutal_kill"
INFINITY: Final = "infinity"
Shutdown: TypeAlias = float | Literal["brutal_kill", "infinity"]

#: An async function run as a task child. It receives ``task_status`` and says
#: it is ready with ``task_status.started(value)``; ``value`` becomes its ref.
TaskFn: TypeAlias = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential restart delay with jitter (not in OTP; off unless given).

    The n-th consecutive restart of a child waits
    ``min(maximum, initial * multiplier ** (n - 1))``, scaled by a random factor
    in ``[1 - jitter, 1 + jitter]``. The count resets once the child has stayed
    up for ``reset_after`` seconds (default: ``maximum``).
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float | None = None

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial and self.multiplier >= 1):
            raise SpecError(
                "invalid_backoff", f"need 0 <= initial <= maximum and multiplier >= 1: {self!r}"
            )
        if not 0 <= self.jitter < 1:
            raise SpecError("invalid_backoff", f"jitter must be in [0, 1): {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return base

    @property
    def stable_after(self) -> float:
        return self.maximum if self.reset_after is None else self.reset_after


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and what to do when it ends. See the module doc."""

    id: Hashable
    start: Launcher | TaskFn
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown | None = None
    type: ChildType = ChildType.WORKER
    significant: bool = False
    backoff: Backoff | None = None
    #: Free-form label shown in introspection (e.g. an account id); defaults to ``str(id)``.
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_child_spec(self)

    @property
    def shutdown_grace(self) -> Shutdown:
        """The effective shutdown: OTP's defaults are 5 s for workers, infinity for supervisors."""
        if self.shutdown is not None:
            return self.shutdown
        return INFINITY if self.type is ChildType.SUPERVISOR else 5.0

    @property
    def name(self) -> str:
        return self.label if self.label is not None else str(self.id)


def check_child_spec(spec: ChildSpec) -> None:
    """Validate one spec, as ``supervisor:check_childspec/1`` does."""
    if not isinstance(spec, ChildSpec):
        raise SpecError(
            "invalid_child_spec",
            f"not a ChildSpec: {spec!r} (build one with ChildSpec, actor_spec or task_spec)",
        )
    try:
        hash(spec.id)
    except TypeError:
        raise SpecError("invalid_child_id", f"child id must be hashable: {spec.id!r}") from None
    if not callable(spec.start) and not hasattr(spec.start, "launch"):
        raise SpecError("invalid_start", f"child {spec.id!r}: start must be an async callable")
    if not isinstance(spec.restart, Restart):
        raise SpecError("invalid_restart", f"child {spec.id!r}: {spec.restart!r} is not a Restart")
    if not isinstance(spec.type, ChildType):
        raise SpecError("invalid_child_type", f"child {spec.id!r}: {spec.type!r}")
    check_shutdown(spec.id, spec.shutdown)
    if spec.significant and spec.restart is Restart.PERMANENT:
        raise SpecError(
            "invalid_significant",
            f"child {spec.id!r}: a permanent child cannot be significant "
            "(make it transient or temporary)",
        )


def check_shutdown(child_id: Hashable, shutdown: object) -> None:
    if shutdown is None or shutdown in (BRUTAL_KILL, INFINITY):
        return
    if (
        isinstance(shutdown, bool)
        or not isinstance(shutdown, int | float)
        or not math.isfinite(shutdown)
        or shutdown < 0
    ):
        raise SpecError(
            "invalid_shutdown",
            f"child {child_id!r}: shutdown must be seconds >= 0, 'brutal_kill' or 'infinity', "
            f"not {shutdown!r}",
        )


def check_children(specs: Sequence[ChildSpec]) -> None:
    """Refuse duplicate child ids, as ``supervisor:check_startspec/1`` does."""
    seen: set[Hashable] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise SpecError("invalid_child_spec", f"not a ChildSpec: {spec!r}")
        if spec.id in seen:
            raise SpecError("duplicate_child_id", f"two children have the id {spec.id!r}")
        seen.add(spec.id)


def check_intensity(max_restarts: int, max_seconds: float) -> None:
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise SpecError("invalid_intensity", f"max_restarts must be an int >= 0: {max_restarts!r}")
    if (
        isinstance(max_seconds, bool)
        or not isinstance(max_seconds, int | float)
        or not math.isfinite(max_seconds)
        or not max_seconds > 0
    ):
        raise SpecError(
            "invalid_period", f"max_seconds must be a finite number > 0: {max_seconds!r}"
        )


def check_auto_shutdown(auto_shutdown: AutoShutdown, specs: Sequence[ChildSpec]) -> None:
    if not isinstance(auto_shutdown, AutoShutdown):
        raise SpecError("invalid_auto_shutdown", f"{auto_shutdown!r} is not an AutoShutdown")
    if auto_shutdown is AutoShutdown.NEVER:
        for spec in specs:
            if spec.significant:
                raise SpecError(
                    "bad_combination",
                    f"child {spec.id!r} is significant but auto_shutdown is 'never'",
                )
