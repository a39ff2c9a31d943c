"""The accounts layer: meter actors under a DynamicSupervisor, found by account id.

``Accounts`` is what the ingest layer and the API talk to:

* :meth:`Accounts.submit` is the one write path: a whole producer batch,
  grouped by account, is made durable by the store writer in **one** operation;
  once it is committed its verdicts are reported and each account's accepted
  events are *delivered* to the account's actor (a message, no reply), which
  applies them to its windows (several batches in one message while the actor has not
  taken the previous one). Delivery is off the acknowledgement path: an
  acknowledged event is durable, and the actor catches up from the journal if
  it is not running (see docs/accounts.md, "Recovery"). Actors are found (or
  started) through the Registry: two deliveries racing to wake the same account
  get one actor.
* :meth:`Accounts.write` and :meth:`Accounts.ingest` await :meth:`submit`'s report
  (tests and tools: the same path, awaited).
* The *sweeper*, a task child beside the actors' supervisor, asks actors to
  checkpoint every ``checkpoint_interval`` and to hibernate after
  ``idle_timeout`` without traffic, so only awake accounts cost memory. It
  looks at the actors a slice at a time, spread over its period, so checkpoints
  do not all land on the writer at once, and ticks only those due
  (:meth:`MeterActor.due <meterd.accounts.actor.MeterActor.due>`).
* :attr:`Accounts.budget` (:class:`EventBudget`) counts the events in flight
  daemon-wide, from ingest's read until the actor applied them; ingest stops
  reading while it is spent.

Supervision: ``accounts`` (one_for_one) = [``meters`` DynamicSupervisor,
``sweeper`` task, ``deliverer`` task (wakes accounts whose actor is not running,
and delivers to actors whose mailbox was full)]. A crashing actor is restarted alone (transient: a
hibernation is a normal exit and is not restarted); its restarts count toward
the ``meters`` supervisor's intensity.

Wake-ups (an account's events committed while it has no actor) are started by at most
:data:`MAX_WAKING` tasks at once, in the order asked; the others wait as a name in a queue.
A burst of new accounts (every one a wake-up) therefore never holds more than that many
actors starting (each with its task, its state and a read queued on the store), and the
reader lane they queue on is their own (:mod:`meterd.store.reader`). And at most
``max_awake`` actors are awake: with that many, wake-ups wait, and the sweeper's ticks ask
actors idle for ``pressure_idle`` (1 s) to hibernate, not ``idle_timeout``; so a burst of
200,000 new accounts never has 200,000 actors awake for five minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeAlias

import structlog
import trio

import supervisors as sv
from meterd.accounts.actor import AccountsContext, MeterActor
from meterd.accounts.aggregate import State, UsageRow, decode, rollup
from meterd.accounts.budget import EventBudget
from meterd.alerts._rules import account_rules
from meterd.alerts._runtime import AlertBook
from meterd.config import AccountsConfig, Duration, IngestConfig, StoreConfig
from meterd.model import Event, Meter, Window
from meterd.store import (
    AppendResult,
    LogPosition,
    QuarantineDecision,
    RejectedEvent,
    Store,
    WindowRow,
)
from meterd.store.codec import decode_dims

log = structlog.get_logger("meterd.accounts")

SWEEP_STEP: Final = 0.05  # seconds between two slices of the sweeper's ticks
CALL_TIMEOUT: Final = 30.0
"""Seconds :meth:`Accounts.call` waits for an actor's reply (not a configuration key)."""
MAX_WAKING: Final = 16
"""Wake-ups in flight at once (an actor starting: a writer barrier, then one read on the
reader's ``recovery`` lane, 2 threads). More only wait longer for a thread, each holding an
actor and a task meanwhile: the issue's burst of 200,000 new accounts held them all."""
PRESSURE_IDLE: Final = 1.0
"""Seconds without traffic after which an actor hibernates while ``max_awake`` are awake."""
COALESCE_LIMIT: Final = 1 + 2 * 16
"""A delivery joins the one waiting in its actor's mailbox (``["apply", id, events, id,
events...]``) while that holds fewer than 16 batches: one ``handle_info`` stays short."""

DEFAULT_STORE: Final = StoreConfig()
DEFAULT_ACCOUNTS: Final = AccountsConfig()
DEFAULT_IN_FLIGHT_EVENTS: Final[int] = next(
    f.default for f in dataclasses.fields(IngestConfig) if f.name == "max_in_flight_events"
)  # type: ignore[assignment]
"""The config model's defaults, for :func:`running_accounts` (tests and tools)."""

BatchDone: TypeAlias = Callable[["list[AppendResult] | BaseException"], None]
"""What :meth:`Accounts.submit` reports: the writer's verdicts (one
:class:`~meterd.store.AppendResult` per group), or why nothing was written."""


class Accounts:
    """Per-account meter actors and how to reach them.

    ``config`` is the ``[accounts]`` table (:class:`meterd.config.AccountsConfig`: each
    key's default, unit and meaning declared once there); ``checkpoint_interval`` is
    ``[store] checkpoint_interval`` and ``max_in_flight_events`` ``[ingest]
    max_in_flight_events`` (the daemon passes its config's, :mod:`meterd.app`).
    """

    def __init__(
        self,
        store: Store,
        meters: Mapping[str, Meter],
        config: AccountsConfig,
        *,
        checkpoint_interval: Duration,
        max_in_flight_events: int,
        call_timeout: float = CALL_TIMEOUT,
        pressure_idle: float = PRESSURE_IDLE,
        alerts: AlertBook | None = None,
    ) -> None:
        max_awake = config.max_awake
        if max_awake < 1:
            raise ValueError(f"max_awake must be >= 1, got {max_awake}")
        self.store = store
        self.meters = dict(meters)
        self.alerts = alerts  # threshold alert rules (docs/alerts.md)
        self.idle_timeout = config.idle_timeout.seconds
        self.checkpoint_interval = checkpoint_interval.seconds
        self.mailbox_size = config.mailbox_size
        self.call_timeout = call_timeout
        self.registry = sv.Registry("accounts")
        self.supervisor = sv.DynamicSupervisor(
            name="meters",
            max_restarts=config.max_restarts,
            max_seconds=config.max_seconds.seconds,
        )
        self.budget = EventBudget(max_in_flight_events)
        # Messages waiting for room in a full mailbox, per account, in commit order:
        # (message, events it holds budget for, the one actor it is for or None for any).
        self._overflow: dict[str, deque[tuple[Any, int, sv.ActorRef[Any, Any] | None]]] = {}
        self._drained: dict[str, trio.Event] = {}
        self._waking: set[str] = set()
        # Accounts whose last actor crashed and whose next one has not recovered yet: an
        # event failing in that one's replay is quarantined (docs/accounts.md).
        self.crashed: set[str] = set()
        self._jobs_in, self._jobs_out = trio.open_memory_channel[tuple[str, str]](math.inf)
        # Accounts to wake, in order (names only: see MAX_WAKING).
        self._wakes_in, self._wakes_out = trio.open_memory_channel[str](math.inf)
        self.waking_now = 0  # wake-ups started and not finished
        self.max_awake = max_awake
        self.pressure_idle = pressure_idle
        self._awake_room = trio.lowlevel.ParkingLot()  # wake-ups waiting: max_awake awake
        self.wake_waits = 0  # times a wake-up waited for an actor to hibernate
        self.wakes = 0  # accounts woken because their events were committed (counters)
        self.overflows = 0  # deliveries that found a full mailbox
        self.coalesced = 0  # deliveries added to one still waiting in the actor's mailbox
        self.ticks = 0  # ticks the sweeper cast (to actors due to checkpoint or hibernate)
        # Accounts someone follows (the API's live usage): set at its next committed batch.
        self._changed: dict[str, trio.Event] = {}

    def child_specs(self) -> list[sv.ChildSpec]:
        """The children to run under the application's ``accounts`` supervisor."""
        return [
            self.supervisor.as_child("meters"),
            sv.task_spec("sweeper", self._sweep),
            sv.task_spec("deliverer", self._deliverer),
        ]

    def supervisor_spec(self) -> sv.ChildSpec:
        return sv.Supervisor.child_spec("accounts", self.child_specs())

    # ---- reaching an account's actor ------------------------------------------------------

    def _spec(self, account: str) -> sv.ChildSpec:
        context: AccountsContext = self  # what the actor sees of this layer (checked here)
        return sv.actor_spec(
            account,
            MeterActor,
            account,
            context,
            name=(self.registry, account),
            restart=sv.Restart.TRANSIENT,
            mailbox_size=self.mailbox_size,
            label=account,
        )

    async def ensure_started(self, account: str) -> None:
        """Start the account's actor unless one is running (or starting)."""
        if account in self.registry:
            return
        with contextlib.suppress(sv.AlreadyStarted):  # someone else woke it first: fine
            await self.supervisor.start_child(self._spec(account))

    async def call(self, account: str, request: Any, timeout: float | None = None) -> Any:
        """Call the account's actor, waking it if it is hibernated."""
        ref = self.registry.ref(account)
        for _attempt in range(5):
            await self.ensure_started(account)
            try:
                return await ref.call(request, timeout=timeout or self.call_timeout)
            except sv.NoSuchActor:
                continue  # it hibernated between the lookup and the call: wake it again
        raise sv.NoSuchActor(account)

    async def write(
        self,
        groups: Sequence[tuple[str, list[Event]]],
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
    ) -> list[AppendResult]:
        """:meth:`submit`, awaited: the writer's verdicts once the batch is durable and its
        accepted events are delivered; raises what the writer raised if nothing was
        written (:class:`~meterd.store.CommitFailed`, say)."""
        done = trio.Event()
        outcomes: list[list[AppendResult] | BaseException] = []

        def report(outcome: list[AppendResult] | BaseException) -> None:
            outcomes.append(outcome)
            done.set()

        self.submit(groups, report, producer=producer, seq=seq, rejected=rejected)
        await done.wait()
        [outcome] = outcomes
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def ingest(self, account: str, events: Sequence[Event]) -> AppendResult:
        """Count ``events`` (all of ``account``) through :meth:`write`; its verdicts."""
        [result] = await self.write([(account, list(events))])
        return result

    def submit(
        self,
        groups: Sequence[tuple[str, list[Event]]],
        on_done: BatchDone,
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
        positions: Sequence[list[int]] | None = None,
        log_position: LogPosition | None = None,
        received_at: int | None = None,
    ) -> None:
        """Make a producer batch durable, then deliver it to the account actors; never blocks.

        ``groups`` are ``(account, events)`` with each account once. ``on_done`` is called
        after the store writer's commit with one :class:`~meterd.store.AppendResult` per
        group (``accepted``, ``duplicates``, ``conflicts``, ``too_late``: indexes into that
        group's events), or with the exception if nothing of the batch was written.
        Duplicates and ``id_conflict`` are decided by the writer, in commit order, so the
        first submitted copy of an id decides. The accepted events of each account are
        delivered to its actor (which applies them) before ``on_done`` is called.

        ``producer``, ``seq`` and ``rejected`` (the batch's rejected events that name an
        account) go to the store's audit trail, in the batch's transaction
        (:meth:`~meterd.store.Writer.submit_batch`). ``positions`` (each group's events'
        positions in the producer's batch) is for the gateway's submitter; not needed here.
        ``log_position`` and ``received_at`` (cluster mode: the slice's place in its log and
        the time the log gave it) go to the writer with the batch (docs/cluster.md).
        """

        self.store.writer.submit_batch(
            groups,
            partial(self._committed, groups, on_done),
            producer=producer,
            seq=seq,
            rejected=rejected,
            position=log_position,
            received_at=received_at,
        )

    async def release(
        self, account: str, event_ids: Sequence[str] | None, by: str, reason: str
    ) -> QuarantineDecision:
        """Re-apply quarantined events of ``account`` (``event_ids``; ``None``: all) after
        their cause was fixed, through the one write path: the store writer moves them from
        quarantine back to the journal as a new batch, audited with ``by`` and ``reason``
        (:mod:`meterd.store._quarantine`), and that batch is delivered to the account's
        actor in commit order, like any committed batch. An event that crashes the actor
        again is quarantined again by its next incarnation (as the new batch's copy).

        Raises :class:`~meterd.store.QuarantineRefused` (nothing written) for an id that
        is not in quarantine nor released already; ids released already are
        ``unchanged`` in the answer."""
        done = trio.Event()
        outcomes: list[QuarantineDecision | BaseException] = []

        def report(outcome: QuarantineDecision | BaseException) -> None:
            # Run in commit order (the writer's reply), before any later batch of the
            # account is delivered: the actor must see the new batch in journal order.
            if isinstance(outcome, QuarantineDecision) and outcome.batch_id is not None:
                events = list(outcome.events)
                result = AppendResult(outcome.batch_id, list(range(len(events))), [], [])
                self.deliver([(account, events)], [result])
            outcomes.append(outcome)
            done.set()

        self.store.writer.submit_release(account, event_ids, by, reason, report)
        await done.wait()
        [outcome] = outcomes
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome.settled:
            log.info(
                "quarantine_released",
                account=account,
                events=[copy.event_id for copy in outcome.settled],
                batch=outcome.batch_id,
                by=by,
            )
        return outcome

    async def discard(
        self, account: str, event_ids: Sequence[str], by: str, reason: str
    ) -> QuarantineDecision:
        """Discard quarantined events ``event_ids`` of ``account`` for good: audited with
        ``by`` and ``reason``, they never count (:meth:`meterd.store.Writer.discard`)."""
        outcome = await self.store.writer.discard(account, event_ids, by, reason)
        if outcome.settled:
            log.info(
                "quarantine_discarded",
                account=account,
                events=[copy.event_id for copy in outcome.settled],
                by=by,
            )
        return outcome

    def _committed(
        self,
        groups: Sequence[tuple[str, list[Event]]],
        on_done: BatchDone,
        outcome: list[AppendResult] | BaseException,
    ) -> None:
        """The writer's outcome of a batch, run in commit order: deliver its accepted
        events (so each actor gets its account's batches in commit order), then report."""
        if not isinstance(outcome, BaseException):
            self.deliver(groups, outcome)
        on_done(outcome)

    def deliver(
        self, groups: Sequence[tuple[str, list[Event]]], results: Sequence[AppendResult]
    ) -> None:
        """Hand each account's accepted events of a committed batch to its actor
        (:meth:`_deliver`; its common case written out here: one share per account of the
        batch, ~490 a batch at 10,000 accounts, so this loop runs about once per event)."""
        overflow = self._overflow
        whereis = self.registry.whereis
        take_for = self.budget.take_for
        join = self._join
        changed = self._changed
        for (account, events), result in zip(groups, results, strict=True):
            batch_id = result.batch_id
            if batch_id is None:
                continue
            if changed and account in changed:
                changed.pop(account).set()
            accepted = result.accepted
            if len(accepted) != len(events):
                events = [events[i] for i in accepted]
            if not overflow or account not in overflow:
                ref = whereis(account)
                if ref is not None and ref.try_send(["apply", batch_id, events], join):
                    take_for(account, len(events))
                    continue
            self._deliver(account, batch_id, events)

    def next_change(self, account: str) -> trio.Event:
        """Set once a batch of ``account``'s events is next committed (and on its way to
        its actor, so a usage query after it counts them): for live usage."""
        found = self._changed.get(account)
        if found is None:
            found = self._changed[account] = trio.Event()
        return found

    def _join(self, queued: Any, message: list[Any]) -> bool:
        """The merge of a delivery (``try_send``'s): while the actor has not taken the
        delivery last in its mailbox (another batch of this writer group, or it lags),
        add this one's batches to it, up to ``COALESCE_LIMIT``; the actor applies them
        in order, as if they had come one after the other."""
        # A list is a delivery: the actor's only list messages (see meterd.accounts.actor).
        if type(queued) is list and len(queued) + len(message) - 1 <= COALESCE_LIMIT:
            queued += message[1:]
            self.coalesced += 1
            return True
        return False

    def _deliver(self, account: str, batch_id: int, events: list[Event]) -> None:
        """Hand committed journal batch ``batch_id`` of ``account`` to its actor.

        Its budget is counted for the account while the batch waits for (or in) the
        actor, and given back when the actor applied it or stopped (docs/accounts.md)."""
        message = ["apply", batch_id, events]
        overflow = self._overflow.get(account)
        if overflow is not None:  # keep the commit order behind what waits already
            overflow.append((message, len(events), None))
            self.budget.take_for(account, len(events))
            return
        ref = self.registry.whereis(account)
        if ref is None:
            # No live actor: the batch is in the journal, after the account's watermark,
            # and the next incarnation replays it. Wake one, so that it does soon.
            self._wake(account)
            return
        if ref.try_send(message):
            self.budget.take_for(account, len(events))
            return
        self.overflows += 1
        self._overflow[account] = deque([(message, len(events), None)])
        self._drained[account] = trio.Event()
        self.budget.take_for(account, len(events))
        self._jobs_in.send_nowait(("pump", account))

    def _wake(self, account: str) -> None:
        if account not in self._waking:
            self._waking.add(account)
            self._wakes_in.send_nowait(account)

    def live_actors(self) -> int:
        """Meter actors running now (awake accounts)."""
        return len(self.supervisor)

    @property
    def waking_queued(self) -> int:
        """Accounts waiting for a wake-up to start (beyond the :data:`MAX_WAKING` running)."""
        return len(self._waking) - self.waking_now

    def backlogged(self, account: str) -> bool:
        """Whether committed events of ``account`` wait to be delivered to its actor."""
        return account in self._overflow

    async def _deliverer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_WAKING):
                nursery.start_soon(self._waker)
            task_status.started()
            async for _kind, account in self._jobs_out:
                nursery.start_soon(self._pump, account)

    async def _waker(self) -> None:
        async for account in self._wakes_out:
            if len(self.supervisor) >= self.max_awake:
                self.wake_waits += 1
                while len(self.supervisor) >= self.max_awake:
                    await self._awake_room.park()  # the sweeper unparks (_tick)
            self.waking_now += 1
            try:
                await self._wake_account(account)
            finally:
                self.waking_now -= 1

    async def _wake_account(self, account: str) -> None:
        try:
            self.wakes += 1
            await self.ensure_started(account)
        except Exception as error:  # it stays asleep: the journal keeps its events
            log.warning("account_wake_failed", account=account, error=repr(error))
        finally:
            self._waking.discard(account)

    async def _pump(self, account: str) -> None:
        """Deliver ``account``'s overflow in order, waiting for room in the mailbox."""
        overflow = self._overflow[account]
        try:
            while overflow:
                ref = self.registry.whereis(account)
                if ref is None:
                    break  # stopped: its successor replays the rest from the journal
                message, _, target = overflow[0]
                if target is None or target is ref:
                    await ref.send(message)  # dropped if it dies meanwhile
                overflow.popleft()
        finally:
            del self._overflow[account]
            self._drained.pop(account).set()
            if overflow:
                self.budget.give_for(account, sum(events for _, events, _ in overflow))
                self._wake(account)

    async def change_rule(
        self,
        account: str,
        name: str,
        by: str,
        rule: tuple[str, str, str | None, str | None, str] | None,
    ) -> bool:
        """Create (``rule``) or delete (None) alert rule ``name`` of ``account`` (the store
        writer's ``AlertRuleWrite``) and have it evaluated from the next event on; whether it
        was written (False: the name is taken, or there is no such rule).

        An awake account's actor makes the change itself, so no event is applied between
        the write and its reload (an event committed after the rule is evaluated against
        it, exactly). A sleeping account is written here and reads the rules when it
        wakes."""
        ref = self.registry.whereis(account)
        if ref is not None:
            try:
                return bool(await ref.call(("rule", name, by, rule), timeout=self.call_timeout))
            except (sv.NoSuchActor, sv.ActorExited):
                pass  # it stopped before reading the call: asleep now
        written = await self.store.writer.alert_rule(account, name, by, rule)
        if written:
            await self.reload_rules(account)  # an actor started meanwhile reloads
        return written

    async def reload_rules(self, account: str) -> None:
        """``account``'s alert rules changed in the store (created or deleted through the
        API): the alert book takes them as stored now and, if the account's actor is awake,
        it reloads them before this returns (a sleeping one reads the book when it wakes),
        so its next event is evaluated against them (docs/alerts.md)."""
        book = self.alerts
        if book is None:
            return
        stored = await self.store.reader.run(partial(account_rules, account=account), "default")
        book.set_account_rules(account, stored)
        ref = self.registry.whereis(account)
        if ref is not None:
            # It stopped (hibernated, crashed) before reading the call: the next incarnation
            # reads the book when it starts.
            with contextlib.suppress(sv.NoSuchActor, sv.ActorExited):
                await ref.call(("rules",), timeout=self.call_timeout)

    async def checkpoint(self, account: str) -> None:
        """Make the stored windows of ``account`` complete: everything durable is in them.

        Wakes the account if it sleeps: after a crash (of the actor or of the whole
        process) the journal may hold batches past the last checkpoint, which only
        the actor's recovery folds into the windows.
        """
        drained = self._drained.get(account)
        if drained is not None:  # committed events still on their way to the actor
            await drained.wait()
        await self.call(account, ("checkpoint",))

    async def states(
        self, account: str, meter: Meter, from_ms: int, to_ms: int
    ) -> list[tuple[int, tuple[str, ...], State]]:
        """The stored minute cells ``(start, dims, state)`` of one account and meter with
        ``from_ms <= start < to_ms``, by start, once the store is complete for the account.

        The account's actor first writes its in-memory deltas (waking it if needed, see
        :meth:`checkpoint`), so the store holds everything acknowledged; the cells are then
        read on the reader's connection (ingestion is not stalled).
        """
        await self.checkpoint(account)
        stored = await self.store.reader.windows(account, meter.name, from_ms, to_ms)
        if len(stored) < DECODE_ON_LOOP:
            return _decoded(meter, stored)
        # ~5 µs a cell: 50,000 cells (an invoice with that many lines) would hold the Trio
        # thread, where ingestion and /healthz run, for a quarter of a second.
        return await trio.to_thread.run_sync(_decoded, meter, stored)

    async def usage(
        self,
        account: str,
        meter: Meter,
        from_ms: int,
        to_ms: int,
        window: Window,
        group_by: str | None = None,
    ) -> list[UsageRow]:
        """Usage rows of one account and meter (protocol.md §3), exact: the cells of
        :meth:`states` rolled up (:func:`~meterd.accounts.aggregate.rollup`)."""
        states = await self.states(account, meter, window.align(from_ms), window.align(to_ms))
        return rollup(meter, states, from_ms, to_ms, window, group_by)

    # ---- the sweeper -------------------------------------------------------------------------

    async def _sweep(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        period = max(0.05, min(self.idle_timeout, self.checkpoint_interval) / 4)
        slices = max(1, round(period / SWEEP_STEP))
        step = period / slices
        while True:
            # Each actor is looked at once per period, a slice of them every SWEEP_STEP, and
            # ticked if due: due checkpoints reach the reader and the writer a few at a time
            # (10,000 awake accounts checkpointing every 30 s: ~17 every 50 ms), never
            # thousands at once. The steps fall on multiples of ``step`` on the Trio clock,
            # so the sweepers of a process's cells (an owner's shards) step together and
            # their checkpoints share the writers' commit rounds (meterd.store._rounds).
            accounts = list(self.registry.keys())
            size = -(-len(accounts) // slices)
            for index in range(slices):
                await trio.sleep_until(next_step(trio.current_time(), step))
                self._tick(accounts[index * size : (index + 1) * size])

    def sweep_once(self) -> None:
        """Tick every awake actor that is due to checkpoint or hibernate (:meth:`_tick`)."""
        self._tick(list(self.registry.keys()))

    def _tick(self, accounts: list[Any]) -> None:
        """Tick those of ``accounts`` whose actor is due to hibernate or checkpoint
        (:meth:`MeterActor.due`, read between its messages): the others would do nothing
        with a tick, and at 5,000 awake accounts a tick for each was ~670 casts a second
        per cell for ~170 that act (docs/accounts.md, "Checkpoints and hibernation")."""
        live = len(self.supervisor)
        idle: float | None
        if live < self.max_awake:
            message: tuple[Any, ...] = ("tick",)
            idle = None
            if self._awake_room:
                self._awake_room.unpark_all()
        else:  # too many awake: the idle ones hibernate sooner (see the module doc)
            message = ("tick", self.pressure_idle)
            idle = self.pressure_idle
        now = trio.current_time()
        whereis = self.registry.whereis
        for account in accounts:
            ref = whereis(account)
            if ref is None:
                continue
            actor = ref.actor
            if isinstance(actor, MeterActor) and actor.due(now, idle) is None:
                continue  # nothing due: no message
            self.ticks += 1
            ref.try_cast(message)  # a full mailbox means busy: skip it this round


def next_step(now: float, step: float) -> float:
    """The first multiple of ``step`` after ``now`` (the sweeper's next step)."""
    at = (math.floor(now / step) + 1) * step
    return at if at > now else at + step  # (float rounding at an exact multiple)


DECODE_ON_LOOP: Final = 1000
"""Cells :meth:`Accounts.states` decodes on the Trio thread; more are decoded on a worker
thread (pure work: bytes in, fresh states out)."""


def _decoded(meter: Meter, stored: list[WindowRow]) -> list[tuple[int, tuple[str, ...], State]]:
    """The stored window rows of ``meter`` as ``(start, dims, state)`` cells; ``stored`` is
    emptied, so its rows are freed on the thread this runs on."""
    cells = [(row.start, decode_dims(row.dims), decode(meter, row.state)) for row in stored]
    stored.clear()
    return cells


@contextlib.asynccontextmanager
async def running_accounts(
    path: Path | str,
    meters: Mapping[str, Meter],
    *,
    store: StoreConfig = DEFAULT_STORE,
    accounts: AccountsConfig = DEFAULT_ACCOUNTS,
    max_in_flight_events: int = DEFAULT_IN_FLIGHT_EVENTS,
    **options: Any,
) -> AsyncIterator[Accounts]:
    """:class:`Accounts` on the store at ``path``, with the config tables given (the config
    model's defaults otherwise; ``options``: :class:`Accounts`' others), running with the
    store's writer under one ``rest_for_one`` root until the block ends: for tests and tools
    (the daemon builds its whole tree in :mod:`meterd.app`)."""
    dimensions = {m.name: len(m.dimensions) for m in meters.values()}
    layer = Store.at(path, store, meter_dimensions=dimensions)
    service = Accounts(
        layer,
        meters,
        accounts,
        checkpoint_interval=store.checkpoint_interval,
        max_in_flight_events=max_in_flight_events,
        **options,
    )
    root = sv.Supervisor(
        [layer.writer_spec(), service.supervisor_spec()],
        strategy=sv.Strategy.REST_FOR_ONE,
        name="root",
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            yield service
            root.stop()
    finally:
        await layer.aclose()
