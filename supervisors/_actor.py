"""Actors with OTP's GenServer behaviour: init, call, cast, info, terminate.

Subclass :class:`GenServer` and override the callbacks you need; each may be a
plain ``def`` or an ``async def``:

``init()``
    Runs before the actor takes any message, in the task that starts it. If
    it raises, the start fails (``StartError``) and no actor exists.
``handle_call(request, caller)``
    Returns the reply. Return :data:`NOREPLY` to answer later with
    ``caller.reply(value)`` (OTP's ``{noreply, State}`` + ``gen_server:reply/2``),
    e.g. once a write is durable, without blocking the mailbox meanwhile.
``handle_cast(request)`` / ``handle_info(message)``
    Fire-and-forget messages; ``info`` carries monitors' :class:`Down` notices
    and ``ref.send`` messages.
``terminate(exit)``
    Runs when the actor stops (shutdown, ``Stop``, or a crash), within the grace
    period of its child spec's ``shutdown``; it is not run after a kill. One that
    outlasts the grace period is cancelled, and the actor's exit is ``killed``.

Rules:

* A handler that raises crashes the actor: the call being handled gets
  :class:`ActorExited`, and so does every call still queued; its supervisor
  decides what happens next. ``raise Stop()`` ends it normally.
* Mailboxes are **bounded** (OTP's are not): when full, ``cast``/``send``/``call``
  wait for room (backpressure); ``try_cast``/``try_send`` return False instead.
  Notices from the runtime (monitors, shutdown) are never refused.
* ``call(request, timeout=5)`` raises :class:`CallTimeout` after ``timeout``
  seconds; the actor keeps running and a late reply is dropped. A call to an
  actor that is not running raises :class:`NoSuchActor` at once, never hangs.
* Messages from one sender are handled in the order sent.
* **Mergeable messages** (not in OTP): ``try_send(message, merge=fn)`` folds a
  message into the newest mail instead of queuing it, when that mail is an info
  message the actor has not started handling: ``fn(queued, message)`` changes
  ``queued`` in place and returns True, or returns False (then ``message`` is
  queued as usual). The runtime calls ``fn`` only then, synchronously, so no
  handler can see ``queued`` half-changed, and nothing queued after ``queued``
  is overtaken. ``fn`` must only fold messages of a protocol the actor defines
  as mergeable (the actor handles ``queued`` as if the two had come one after
  the other), must not block, and may be called with mail from other senders,
  which it must leave alone (return False). A merged message needs no room: a
  full mailbox still takes it.
"""

from __future__ import annotations

import enum
import inspect
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import outcome
import trio

from ._dispatch import Dispatcher, WorkerState, drive
from ._errors import ActorExited, CallTimeout, NoSuchActor
from ._exit import KILLED, SHUTDOWN, Exit, exit_from_exception
from ._log import logger
from ._protocols import ExitObserver

Req = TypeVar("Req")
Rep = TypeVar("Rep")


class _NoReply(enum.Enum):
    NOREPLY = "noreply"


#: Return from ``handle_call`` to reply later through ``caller.reply``.
NOREPLY: Final = _NoReply.NOREPLY

# Mailbox entry kinds. An info message is queued as itself; the others as an ``_Entry``.
_CALL: Final = 0
_CAST: Final = 1
_INFO: Final = 2
_STOP: Final = 3


class _Entry:
    """A queued call, cast or stop request (an info message is queued bare: most mail is
    info, and a wrapper per message would be one more object to allocate and collect)."""

    __slots__ = ("caller", "kind", "payload")

    def __init__(self, kind: int, payload: Any, caller: Caller[Any] | None) -> None:
        self.kind = kind
        self.payload = payload
        self.caller = caller


# Actor states.
_IDLE: Final = 0  # no mail, no task
_SCHEDULED: Final = 1  # has mail, handed to the dispatcher
_RUNNING: Final = 2  # a worker is draining its mailbox
_DEAD: Final = 3
_STARTING: Final = 4  # init is running; mail queues until it returns

DEFAULT_MAILBOX_SIZE: Final = 1024


class Caller(Generic[Rep]):
    """The waiting side of one call: reply to it (once) with :meth:`reply`."""

    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task: trio.lowlevel.Task | None = task

    @property
    def waiting(self) -> bool:
        """False once replied to, or once the caller gave up (timeout, cancel)."""
        return self.task is not None

    def reply(self, value: Rep) -> None:
        """Send the reply. Later replies, and replies to a caller that gave up, are dropped."""
        self._resolve(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Make the call raise ``error`` in the caller."""
        self._resolve(outcome.Error(error))

    def _resolve(self, result: outcome.Outcome[Any]) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task, result)


class Down:
    """A monitor's notice (OTP's ``'DOWN'`` message): the actor ``ref`` ended with ``exit``."""

    __slots__ = ("exit", "monitor", "ref")

    def __init__(self, monitor: Monitor, ref: ActorRef[Any, Any], exit: Exit) -> None:
        self.monitor = monitor
        self.ref = ref
        self.exit = exit

    def __repr__(self) -> str:
        return f"Down({self.ref!r}, {self.exit})"


class Monitor:
    """Tells, with the exit reason, when an actor ends.

    ``await monitor.wait()`` returns the :class:`Exit`; an actor that was not
    running when monitored reports ``Exit('noproc')``-like ``shutdown`` with a
    :class:`NoSuchActor` error, as OTP's ``noproc``.
    """

    __slots__ = ("_event", "_target", "callback", "exit")

    def __init__(
        self, target: GenServer[Any, Any], callback: Callable[[Monitor, Exit], None] | None
    ) -> None:
        self._target: GenServer[Any, Any] | None = target
        self._event: trio.Event | None = None
        self.callback = callback
        self.exit: Exit | None = None

    def _fire(self, exit: Exit) -> None:
        if self.exit is not None:
            return
        self.exit = exit
        self._target = None
        if self._event is not None:
            self._event.set()
        if self.callback is not None:
            self.callback(self, exit)

    async def wait(self) -> Exit:
        if self.exit is None:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        assert self.exit is not None
        return self.exit

    def cancel(self) -> None:
        """Stop monitoring (OTP's ``demonitor``); no notice is delivered afterwards."""
        target, self._target = self._target, None
        if target is not None:
            monitors = target._monitors
            if monitors is self:
                target._monitors = None
            elif isinstance(monitors, list) and self in monitors:
                monitors.remove(self)
        self.exit = self.exit or Exit("shutdown")


class _Kinds:
    """Per-class cache: which callbacks are coroutine functions."""

    __slots__ = ("any_async", "call", "cast", "info", "init", "terminate")

    def __init__(self, cls: type) -> None:
        self.init = inspect.iscoroutinefunction(cls.init)  # type: ignore[attr-defined]
        self.call = inspect.iscoroutinefunction(cls.handle_call)  # type: ignore[attr-defined]
        self.cast = inspect.iscoroutinefunction(cls.handle_cast)  # type: ignore[attr-defined]
        self.info = inspect.iscoroutinefunction(cls.handle_info)  # type: ignore[attr-defined]
        self.terminate = inspect.iscoroutinefunction(cls.terminate)  # type: ignore[attr-defined]
        self.any_async = self.call or self.cast or self.info or self.terminate


class GenServer(Generic[Req, Rep]):
    """Base class of actors. See the module doc for the callbacks and rules.

    Attribute names starting with ``sv_`` or ``_sv_`` belong to the runtime;
    everything else on ``self`` is the actor's own state.
    """

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_capacity",
        "_child",
        "_dispatcher",
        "_exit",
        "_exit_event",
        "_grace_deadline",
        "_mailbox",
        "_monitors",
        "_owner",
        "_ref",
        "_scope",
        "_senders",
        "_started_at",
        "_state",
    )

    _sv_kinds: _Kinds

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._sv_kinds = _Kinds(cls)

    # ---- callbacks -------------------------------------------------------

    def init(self) -> Any:
        """Prepare the actor's state. Override (sync or async)."""

    def handle_call(self, request: Req, caller: Caller[Rep]) -> Any:
        """Answer a call. The default raises: an actor must say which calls it serves."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {request!r}")

    def handle_cast(self, request: Req) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle casts: {request!r}")

    def handle_info(self, message: Any) -> Any:
        """Other messages; the default ignores them (as gen_server logs and drops them)."""

    def terminate(self, exit: Exit) -> Any:
        """Clean up when stopping. Override (sync or async)."""

    # ---- runtime -----------------------------------------------------------

    def _sv_bind(
        self, dispatcher: Dispatcher, capacity: int, owner: ExitObserver, child: object
    ) -> None:
        self._dispatcher = dispatcher
        self._capacity = capacity
        self._owner = owner
        self._child = child
        self._mailbox: deque[Any] | None = None  # info messages and _Entry objects
        self._senders: deque[trio.lowlevel.Task] | None = None
        # None, one Monitor, or a list of them: most monitored actors have one (their
        # registry's), and a list for it would be one more object per named actor.
        self._monitors: Monitor | list[Monitor] | None = None
        self._exit: Exit | None = None
        self._exit_event: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._grace_deadline = float("inf")
        self._ref: ActorRef[Req, Rep] | None = None
        self._state = _STARTING
        self._started_at = time.time()

    async def _sv_init(self) -> None:
        """Run ``init``; mail that arrives meanwhile waits. On failure the actor is dead."""
        try:
            if self._sv_kinds.init:
                await self.init()
            else:
                self.init()
        except BaseException as error:
            owner = self._owner
            self._owner = None  # type: ignore[assignment]  # a failed start is no exit to handle
            self._sv_finish_now(exit_from_exception(error), None)
            self._owner = owner
            raise
        if self._mailbox:
            self._state = _SCHEDULED
            self._dispatcher.activate(self)
        else:
            self._state = _IDLE

    @property
    def ref(self) -> ActorRef[Req, Rep]:
        """A handle to this actor (like a pid)."""
        ref = self._ref
        if ref is None:
            ref = self._ref = ActorRef(self)
        return ref

    @property
    def sv_alive(self) -> bool:
        return self._state != _DEAD

    @property
    def sv_ready(self) -> bool:
        """Alive and past ``init``."""
        return self._state != _DEAD and self._state != _STARTING

    @property
    def sv_mailbox_depth(self) -> int:
        mailbox = self._mailbox
        return len(mailbox) if mailbox is not None else 0

    @property
    def sv_status(self) -> str:
        return "stopped" if self._state == _DEAD else "running"

    @property
    def sv_started_at(self) -> float:
        """Wall-clock seconds when this incarnation started."""
        return self._started_at

    @property
    def sv_exit(self) -> Exit | None:
        return self._exit

    def post_self(self, message: Any) -> None:
        """Deliver ``message`` to this actor's own ``handle_info``, never blocking.

        For completions of work the actor started (a write it submitted, a timer),
        which must not be lost to a full mailbox; like a monitor's notice it
        ignores the bound, so use it only for replies to the actor's own requests.
        Dropped if the actor has stopped.
        """
        self._sv_system(_INFO, message)

    def monitor(self, target: ActorRef[Any, Any]) -> Monitor:
        """Monitor ``target``; a :class:`Down` notice arrives in ``handle_info``."""
        me = self
        return target.monitor(lambda mon, exit: me._sv_system(_INFO, Down(mon, target, exit)))

    def _sv_system(self, kind: int, payload: Any) -> None:
        """Enqueue a runtime notice, ignoring the bound (like OTP system messages)."""
        if self._state != _DEAD:
            self._sv_enqueue(kind, payload, None)

    def _sv_enqueue(self, kind: int, payload: Any, caller: Caller[Any] | None) -> None:
        mailbox = self._mailbox
        if mailbox is None:
            mailbox = self._mailbox = self._dispatcher.mailbox()
        mailbox.append(payload if kind == _INFO else _Entry(kind, payload, caller))
        if self._state == _IDLE:
            self._state = _SCHEDULED
            self._dispatcher.activate(self)

    def _sv_full(self) -> bool:
        mailbox = self._mailbox
        return mailbox is not None and len(mailbox) >= self._capacity

    async def _sv_wait_for_room(self) -> None:
        """Park until the mailbox has room or the actor dies (the caller re-checks)."""
        senders = self._senders
        if senders is None:
            senders = self._senders = deque()
        task = trio.lowlevel.current_task()
        senders.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            senders.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _sv_wake_sender(self) -> None:
        senders = self._senders
        if senders:
            trio.lowlevel.reschedule(senders.popleft())

    # Two drain loops on purpose: the sync one is a plain function (no coroutine, no
    # cancel scope, nothing can interleave), which is most of the dispatch speed for
    # actors whose callbacks are all ``def``; the async one drives handlers through
    # ``drive`` so a real suspension hands the run queue to another worker.
    def _sv_drain_sync(self, budget: int) -> int:
        """Handle up to ``budget`` queued messages of an actor whose callbacks are all
        plain functions: no await, so nothing can interleave. Returns how many."""
        if self._state == _DEAD:
            return 0
        self._state = _RUNNING
        mailbox = self._mailbox
        assert mailbox is not None
        exit: Exit | None = None
        caller: Caller[Any] | None = None
        handled = 0
        try:
            while mailbox and handled < budget:
                payload = mailbox.popleft()
                if type(payload) is _Entry:
                    kind, caller, payload = payload.kind, payload.caller, payload.payload
                else:
                    kind = _INFO
                handled += 1
                if self._senders:
                    self._sv_wake_sender()
                if kind == _CALL:
                    assert caller is not None
                    reply = self.handle_call(payload, caller)
                    if reply is not NOREPLY:
                        caller.reply(reply)
                elif kind == _CAST:
                    self.handle_cast(payload)
                elif kind == _INFO:
                    self.handle_info(payload)
                else:  # _STOP: a shutdown request from the supervisor
                    exit = payload
                    break
                caller = None
        except Exception as error:
            exit = exit_from_exception(error)
        if exit is not None:
            self._state = _DEAD
            if caller is not None:
                caller.fail(ActorExited(self.ref, exit))
            try:
                self.terminate(exit)
            except Exception as error:
                _log_terminate_failure(self, error)
            self._sv_finish_now(exit, None)
        elif self._state == _RUNNING:
            self._sv_after_drain()
        return handled

    def _sv_after_drain(self) -> None:
        mailbox = self._mailbox
        if mailbox:
            self._state = _SCHEDULED
            self._dispatcher.requeue(self)
        else:
            self._state = _IDLE
            self._mailbox = None  # an idle actor holds no mailbox (the dispatcher may reuse it)
            if mailbox is not None:
                self._dispatcher.recycle(mailbox)

    async def _sv_drain_async(
        self, budget: int, dispatcher: Dispatcher, worker: WorkerState
    ) -> int:
        """Handle up to ``budget`` queued messages of an actor with async callbacks."""
        if self._state == _DEAD:
            return 0
        self._state = _RUNNING
        self._scope = worker.scope  # what a kill cancels while a handler waits
        kinds = self._sv_kinds
        mailbox = self._mailbox
        assert mailbox is not None
        exit: Exit | None = None
        caller: Caller[Any] | None = None
        handled = 0
        try:
            while mailbox and handled < budget:
                payload = mailbox.popleft()
                if type(payload) is _Entry:
                    kind, caller, payload = payload.kind, payload.caller, payload.payload
                else:
                    kind = _INFO
                handled += 1
                if self._senders:
                    self._sv_wake_sender()
                if kind == _CALL:
                    assert caller is not None
                    reply = self.handle_call(payload, caller)
                    if kinds.call:
                        reply = await drive(reply, dispatcher, worker)
                    if reply is not NOREPLY:
                        caller.reply(reply)
                elif kind == _CAST:
                    if kinds.cast:
                        await drive(self.handle_cast(payload), dispatcher, worker)
                    else:
                        self.handle_cast(payload)
                elif kind == _INFO:
                    if kinds.info:
                        await drive(self.handle_info(payload), dispatcher, worker)
                    else:
                        self.handle_info(payload)
                else:  # _STOP: a shutdown request from the supervisor
                    exit = payload
                    break
                caller = None
        except trio.Cancelled:
            self._scope = None
            if not worker.scope.cancel_called:
                # Cancelled from outside (the supervisor's nursery is going away).
                self._sv_finish_now(KILLED, caller)
                raise
            worker.killed = True  # the worker leaves its cancelled scope next
            self._sv_finish_now(KILLED, caller)
            return handled
        except Exception as error:
            exit = exit_from_exception(error)
        self._scope = None
        if exit is None:
            if self._state == _RUNNING:
                self._sv_after_drain()
        else:
            dispatcher.suspending(worker)  # terminate may wait: do not hold up the queue
            await self._sv_stop(exit, caller)
        return handled

    async def _sv_stop(self, exit: Exit, caller: Caller[Any] | None) -> None:
        """Run ``terminate`` within the grace period, then finish."""
        self._state = _DEAD
        if caller is not None:
            caller.fail(ActorExited(self.ref, exit))
        with trio.CancelScope(shield=True, deadline=self._grace_deadline) as scope:
            self._scope = scope
            try:
                if self._sv_kinds.terminate:
                    await self.terminate(exit)
                else:
                    self.terminate(exit)
            except Exception as error:
                _log_terminate_failure(self, error)
        self._scope = None
        if scope.cancel_called:
            # ``terminate`` outlasted the grace period (or was killed): the actor was
            # killed, as OTP reports a process killed after its shutdown timeout. The
            # error it ended with, if any, stays on the exit for the log.
            exit = Exit("killed", exit.error)
        self._sv_finish_now(exit, None)

    def _sv_finish_now(self, exit: Exit, caller: Caller[Any] | None) -> None:
        """Mark dead, fail queued calls, release senders, tell monitors and the owner."""
        if self._exit is not None:
            return
        self._state = _DEAD
        self._exit = exit
        if caller is not None:
            caller.fail(ActorExited(self.ref, exit))
        mailbox, self._mailbox = self._mailbox, None
        if mailbox:
            for queued in mailbox:
                if type(queued) is _Entry and queued.caller is not None:
                    queued.caller.fail(ActorExited(self.ref, exit, delivered=False))
        senders, self._senders = self._senders, None
        if senders:
            for task in senders:
                trio.lowlevel.reschedule(task)
        monitors, self._monitors = self._monitors, None
        if isinstance(monitors, list):
            for monitor in monitors:
                monitor._fire(exit)
        elif monitors is not None:
            monitors._fire(exit)
        if self._exit_event is not None:
            self._exit_event.set()
        if self._owner is not None:
            self._owner._child_exited(self._child, self, exit)

    # ---- used by supervisors -------------------------------------------------

    def _sv_request_stop(self, grace_deadline: float) -> None:
        """Ask the actor to stop after the mail already queued (OTP's exit(Pid, shutdown))."""
        self._grace_deadline = grace_deadline
        if self._state == _IDLE and not self._sv_kinds.terminate:
            # Nothing queued and nothing to await: stop right here, without a worker,
            # so that stopping many idle actors does not wake a task for each.
            self._state = _DEAD
            try:
                self.terminate(SHUTDOWN)
            except Exception as error:
                _log_terminate_failure(self, error)
            self._sv_finish_now(SHUTDOWN, None)
            return
        self._sv_system(_STOP, SHUTDOWN)

    def _sv_kill(self) -> None:
        """Stop now, without ``terminate`` (OTP's exit(Pid, kill))."""
        if self._state == _DEAD:
            if self._exit is None and self._scope is not None:
                self._scope.cancel()  # still running terminate: cut it short
            return
        if self._state == _RUNNING and self._scope is not None:
            self._scope.cancel()
        else:
            self._sv_finish_now(KILLED, None)

    async def _sv_wait_exit(self) -> Exit:
        if self._exit is None:
            if self._exit_event is None:
                self._exit_event = trio.Event()
            await self._exit_event.wait()
        assert self._exit is not None
        return self._exit

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sv_status}>"


_YIELD_EVERY: Final = 128
_puts_since_yield = 0


async def _cooperate() -> None:
    """Yield to the scheduler every ``_YIELD_EVERY`` sends that did not have to wait.

    A send into a mailbox with room needs no task switch, and making every one a
    checkpoint would cost a switch per message. But a producer looping over
    many actors' mailboxes would then never yield and starve the program, so
    every 128th such send is a checkpoint (amortized: well under 0.1 µs a send).
    """
    global _puts_since_yield
    _puts_since_yield += 1
    if _puts_since_yield >= _YIELD_EVERY:
        _puts_since_yield = 0
        # Not a cancel point: the message is already in the mailbox, and a cancelled
        # send must mean "not sent".
        await trio.lowlevel.cancel_shielded_checkpoint()


def _log_terminate_failure(actor: GenServer[Any, Any], error: Exception) -> None:
    # A failing terminate must not hide why the actor stopped: log it and go on.
    logger.warning(
        "terminate_failed",
        actor=type(actor).__name__,
        error=type(error).__name__,
        message=str(error),
    )


Merge = Callable[[Any, Any], bool]
"""``merge(queued, message)`` of :meth:`ActorRef.try_send`: fold ``message`` into the
queued info message ``queued`` (in place) and return True, or return False to queue it."""


class ActorRef(Generic[Req, Rep]):
    """A handle to one actor incarnation (like an Erlang pid).

    Once that incarnation has ended the ref stays dead; to reach whatever
    currently runs under a name, use :meth:`Registry.ref` (a :class:`NameRef`).
    """

    __slots__ = ("_actor",)

    def __init__(self, actor: GenServer[Req, Rep]) -> None:
        self._actor = actor

    @property
    def alive(self) -> bool:
        return self._actor._state != _DEAD

    @property
    def ready(self) -> bool:
        """Alive and past ``init`` (mail sent while ``init`` runs waits for it)."""
        state = self._actor._state
        return state != _DEAD and state != _STARTING

    @property
    def mailbox_depth(self) -> int:
        return self._actor.sv_mailbox_depth

    @property
    def actor(self) -> GenServer[Req, Rep]:
        """The actor object itself, for introspection (as OTP's ``sys:get_state``): read
        its state from the actor's own task or between its messages; never call it."""
        return self._actor

    async def call(self, request: Req, timeout: float = 5.0) -> Rep:
        """Send ``request`` and wait for the reply (see the module doc)."""
        actor = self._actor
        if actor._state == _DEAD:
            raise NoSuchActor(self)
        reply: Rep = await _call(actor, request, trio.current_time() + timeout, self, timeout)
        return reply

    async def cast(self, request: Req) -> None:
        """Send ``request`` without waiting for it to be handled; waits while the mailbox is full.

        A cast to an actor that is not running is dropped, as in OTP.
        """
        await self._put(_CAST, request)

    async def send(self, message: Any) -> None:
        """Deliver ``message`` to ``handle_info`` (Erlang's ``!``), with backpressure."""
        await self._put(_INFO, message)

    def try_cast(self, request: Req) -> bool:
        """Cast without waiting; False (nothing sent) if the mailbox is full or no actor."""
        return self._try_put(_CAST, request)

    def try_send(self, message: Any, merge: Merge | None = None) -> bool:
        """:meth:`send` without waiting; False (nothing sent) if the mailbox is full or no actor.

        With ``merge``, ``message`` may be folded into the newest mail instead of
        queued (a *mergeable* message, see the module doc): if that mail is an info
        message the actor has not taken yet, ``merge(queued, message)`` is called
        first, and when it returns True the message counts as delivered (nothing
        else is queued, and a full mailbox does not refuse it).
        """
        # _try_put written out for info messages: this is the path of every delivery of a
        # busy sender, and the calls were most of its cost.
        actor = self._actor
        state = actor._state
        if state == _DEAD:
            return False
        mailbox = actor._mailbox
        if mailbox is None:
            mailbox = actor._mailbox = actor._dispatcher.mailbox()
        else:
            if merge is not None and mailbox:
                last = mailbox[-1]
                if type(last) is not _Entry and merge(last, message):
                    return True
            if len(mailbox) >= actor._capacity:
                return False
        mailbox.append(message)
        if state == _IDLE:
            actor._state = _SCHEDULED
            actor._dispatcher.activate(actor)
        return True

    def _try_put(self, kind: int, payload: Any) -> bool:
        # ``_sv_full`` and ``_sv_enqueue`` written out (see try_send).
        actor = self._actor
        state = actor._state
        if state == _DEAD:
            return False
        mailbox = actor._mailbox
        if mailbox is None:
            mailbox = actor._mailbox = actor._dispatcher.mailbox()
        elif len(mailbox) >= actor._capacity:
            return False
        mailbox.append(payload if kind == _INFO else _Entry(kind, payload, None))
        if state == _IDLE:
            actor._state = _SCHEDULED
            actor._dispatcher.activate(actor)
        return True

    async def _put(self, kind: int, payload: Any) -> None:
        actor = self._actor
        while actor._state != _DEAD:
            if not actor._sv_full():
                actor._sv_enqueue(kind, payload, None)
                await _cooperate()
                return
            await actor._sv_wait_for_room()

    def monitor(self, callback: Callable[[Monitor, Exit], None] | None = None) -> Monitor:
        """Be told when this actor ends: ``await monitor.wait()`` or ``callback(monitor, exit)``.

        ``callback`` runs synchronously as the actor ends (before its supervisor is
        told), so it must not block; an actor that has already ended is reported at once.
        """
        actor = self._actor
        monitor = Monitor(actor, callback)
        if actor._exit is not None or actor._state == _DEAD:
            monitor._fire(actor._exit or Exit("shutdown", NoSuchActor(self)))
        else:
            monitors = actor._monitors
            if monitors is None:
                actor._monitors = monitor
            elif isinstance(monitors, list):
                monitors.append(monitor)
            else:
                actor._monitors = [monitors, monitor]
        return monitor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._actor is self._actor

    def __hash__(self) -> int:
        return id(self._actor)

    def __repr__(self) -> str:
        return f"<ActorRef {type(self._actor).__name__} at {id(self._actor):#x}>"


def started_for(ref: ActorRef[Any, Any]) -> object | None:
    """The ``child`` the incarnation behind ``ref`` was started for (what its supervisor
    gave the launcher), or None if it was not started by a supervisor."""
    return getattr(ref._actor, "_child", None)


async def _call(
    actor: GenServer[Any, Any], request: Any, deadline: float, target: object, timeout: float
) -> Any:
    caller: Caller[Any] = Caller(trio.lowlevel.current_task())
    with trio.CancelScope(deadline=deadline) as scope:
        while actor._sv_full():
            await actor._sv_wait_for_room()
            if actor._state == _DEAD:
                raise NoSuchActor(target)
        actor._sv_enqueue(_CALL, request, caller)

        def abort(_: Any) -> trio.lowlevel.Abort:
            caller.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)
    assert scope.cancelled_caught
    raise CallTimeout(target, timeout)
