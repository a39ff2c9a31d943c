"""supervisors: Erlang/OTP supervision on Trio.

* :class:`Supervisor` — a static, ordered list of children under
  ``one_for_one``, ``one_for_all`` or ``rest_for_one``, with OTP's restart types,
  restart intensity and escalation, significant children and auto shutdown.
* :class:`DynamicSupervisor` — children started at run time, ``max_children``.
* :class:`GenServer` — actors (init / handle_call / handle_cast / handle_info /
  terminate) with bounded mailboxes, run on tasks only while they have mail.
* :class:`Registry` — unique names, removed when their actor ends (through a
  monitor) or kept for a supervisor restarting it (names outlive incarnations).
* :func:`process_spec` — an OS process as a child (OTP's ports): ready handshake,
  stop with a grace then SIGKILL, its exit status or signal as its exit reason, no orphans.
* :func:`snapshot` — a live tree as plain data; :func:`find_child` — a node by path.

Every module's doc states its rules; ``docs/supervisors.md`` explains the design
and what from OTP is left out.

This package never imports the application built on it, and its modules form no
import cycle; they reach each other's private names only through the protocols in
``_protocols`` (``tests/supervisors/test_layout.py`` checks both).
"""

from ._actor import NOREPLY, ActorRef, Caller, Down, GenServer, Merge, Monitor
from ._child import ActorLauncher, TaskLauncher, shutdown_shield
from ._core import (
    ChildCounts,
    ChildInfo,
    ChildStatus,
    RestartObserver,
    RestartRecord,
    SupervisorCore,
)
from ._dynamic import DynamicSupervisor
from ._errors import (
    ActorExited,
    AlreadyPresent,
    AlreadyStarted,
    CallTimeout,
    ChildNotRunning,
    ChildRestarting,
    MaxChildrenReached,
    NoSuchActor,
    NoSuchChild,
    RestartIntensityExceeded,
    SpecError,
    StartError,
    SupervisorError,
    SupervisorStopping,
)
from ._exit import Exit, Stop
from ._helpers import actor_spec, task_spec
from ._introspect import find_child, snapshot
from ._process import (
    READY_FD_ENV,
    ProcessExited,
    ProcessLauncher,
    ProcessRef,
    ProcessStartError,
    notify_ready,
    process_spec,
)
from ._registry import NameRef, Registry
from ._spec import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    Backoff,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
)
from ._supervisor import Supervisor

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "NOREPLY",
    "ActorExited",
    "ActorLauncher",
    "ActorRef",
    "AlreadyPresent",
    "AlreadyStarted",
    "AutoShutdown",
    "Backoff",
    "CallTimeout",
    "Caller",
    "ChildCounts",
    "ChildNotRunning",
    "ChildInfo",
    "ChildRestarting",
    "ChildSpec",
    "ChildStatus",
    "ChildType",
    "Down",
    "DynamicSupervisor",
    "Exit",
    "GenServer",
    "MaxChildrenReached",
    "Merge",
    "Monitor",
    "NameRef",
    "NoSuchActor",
    "NoSuchChild",
    "ProcessExited",
    "ProcessLauncher",
    "ProcessRef",
    "ProcessStartError",
    "READY_FD_ENV",
    "Registry",
    "Restart",
    "RestartIntensityExceeded",
    "RestartObserver",
    "RestartRecord",
    "SpecError",
    "StartError",
    "Stop",
    "Strategy",
    "Supervisor",
    "SupervisorCore",
    "SupervisorError",
    "SupervisorStopping",
    "TaskLauncher",
    "actor_spec",
    "find_child",
    "notify_ready",
    "process_spec",
    "shutdown_shield",
    "snapshot",
    "task_spec",
]
