"""The meter actor: one per account, the only writer of that account's usage.

An actor only ever applies **committed** journal batches: events reach it after the store
writer made them durable (ingest -> writer -> delivery -> actor, docs/accounts.md). It
never decides duplicates (the writer does, in commit order) and never submits anything.

Lifecycle (see docs/accounts.md for the whole flow):

``init``
    Waits for a store writer barrier (a dead incarnation's in-flight writes are
    then committed), then replays the journal batches after the account's
    checkpoint watermark into memory. An event that raises while it is applied
    is **quarantined** (recorded, skipped) instead of crashing again: a poison
    event costs one restart, never a crash loop.
``["apply", batch_id, events, ...]`` (info, from the accounts layer's delivery)
    Journal batch ``batch_id`` of this account is committed: apply its events
    (unless this incarnation's start-up replay already did: ``batch_id`` is at
    or below the watermark) and give their in-flight budget back. A list: while
    it waits in the mailbox, the account's next committed batches are appended
    to it (``batch_id, events`` pairs, in commit order) instead of queued apart.
``("checkpoint",)`` (call)
    Writes the windows changed since the last checkpoint (merged with what the
    store holds) and the watermark, in one transaction.
``("status",)`` (call)
    The watermark, dirty cells and quarantined events, for operators.
``("hibernate",)`` (cast)
    When idle (nothing queued, nothing waiting for delivery): checkpoint and stop
    normally. The next event for the account starts a new actor from the store.
``("tick",)`` or ``("tick", idle)`` (cast, from the sweeper)
    Hibernate after ``idle_timeout`` (or ``idle`` seconds: the sweeper's, while more than
    ``max_awake`` actors are awake) without traffic, or checkpoint when the last
    checkpoint is ``checkpoint_interval`` old. The sweeper sends it only to actors whose
    :meth:`MeterActor.due` says one of those is due (the actor decides again on receipt).
``("crash", reason)`` (cast)
    A fault drill: raise :class:`InjectedFault`.

``handle_info`` (deliveries) is a plain ``def``: the runtime runs it without a
coroutine, which is most of the cost of a small message. What awaits (checkpoints,
hibernation) comes as calls and casts.

In memory the actor keeps only *deltas since the last checkpoint*, so a hibernated
account costs nothing and an awake one little.

The actor knows the accounts layer only through :class:`AccountsContext` (what it
reads and the few things it reports), so this module imports nothing of the service.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import structlog
import trio

import supervisors as sv
from meterd.accounts.aggregate import AccountUsage, decode, encode
from meterd.accounts.budget import EventBudget
from meterd.alerts._eval import AccountAlerts
from meterd.alerts._outbox import outbox_rows
from meterd.alerts._rules import account_rules
from meterd.alerts._runtime import AlertBook
from meterd.model import Event, Meter
from meterd.store import CommitFailed, Store
from meterd.store.codec import encode_dims

log = structlog.get_logger("meterd.accounts")

_NO_WINDOWS = 2**62
ACTOR_BYTES = 4_000  # an awake meter actor with no cells (its object, bound logger, registry)
CELL_BYTES = 300  # one minute cell of a sum meter: key tuple, value, dirty mark
MESSAGE_BYTES = 200  # one queued delivery (its events are shared with the journal batch)
DIMS_CACHE = 4096
"""Dimension values whose ``windows.dims`` text the actors remember (a checkpoint writes
about one cell per event, and an account's cells share a few dimension values: the JSON
encoding was ~1 µs a cell); the memory is forgotten when full."""
_dims_text: dict[tuple[str, ...], str] = {}  # dims -> encode_dims(dims), for every actor


class AccountsContext(Protocol):
    """What a meter actor needs of the accounts layer that runs it."""

    @property
    def store(self) -> Store: ...
    @property
    def meters(self) -> Mapping[str, Meter]: ...
    @property
    def budget(self) -> EventBudget: ...
    @property
    def crashed(self) -> set[str]:
        """Accounts whose last actor crashed and whose next one has not recovered yet."""
        ...

    @property
    def idle_timeout(self) -> float: ...
    @property
    def checkpoint_interval(self) -> float: ...
    def backlogged(self, account: str) -> bool:
        """Whether committed events of ``account`` wait to be delivered to its actor."""
        ...

    @property
    def alerts(self) -> AlertBook | None:
        """Threshold alert rules (docs/alerts.md), or None."""
        ...


class InjectedFault(RuntimeError):
    """Raised on purpose by a fault drill."""


class MeterActor(sv.GenServer[Any, Any]):
    """The usage of one account. See the module doc."""

    def __init__(self, account: str, accounts: AccountsContext) -> None:
        self.account = account
        self.accounts = accounts
        self.log = log.bind(account=account, actor=f"meter:{account}")
        self.usage = AccountUsage()
        self.watermark = 0
        self.checkpointed_watermark = 0  # the watermark the store holds for this account
        self._now = trio.lowlevel.current_clock().current_time  # trio.current_time, direct
        self.last_active = self._now()
        # A random phase, so that accounts woken together do not all checkpoint together.
        self.last_checkpoint = self.last_active - random.uniform(0, accounts.checkpoint_interval)
        self.quarantined = 0
        self.alerts: AccountAlerts | None = None  # the account's alert evaluation, if any
        self._alert_checkpoint_asked = False
        # For operators (the console): events applied by this incarnation, and events per
        # second as two one-second buckets (O(1) per delivered batch; ActorStats reads them).
        self.events_applied = 0
        self.rate_second = 0  # the whole Trio second being counted
        self.rate_count = 0  # events applied in it
        self.rate_previous = 0  # events applied in the second before it

    # ---- start: recover from the store ------------------------------------------

    async def init(self) -> None:
        # What was delivered to an earlier incarnation and not applied is replayed below.
        self.accounts.budget.forget(self.account)
        store = self.accounts.store
        await store.writer.barrier()
        # Only the journal after the watermark: the windows stay in the store (the actor
        # keeps deltas since its last checkpoint, not the account's history).
        book = self.accounts.alerts
        if book is not None:
            await book.ensure_loaded(store)  # the accounts' own rules: read once
        watched = book is not None and bool(book.rules_for(self.account))
        since = book.horizon_ms() if book is not None and watched else _NO_WINDOWS
        loaded = await store.reader.load_account(self.account, windows_since=since)
        self.watermark = self.checkpointed_watermark = loaded.watermark
        if book is not None and watched:  # the months' usage as of the watermark
            self.alerts = await book.start_account(self.account, store, loaded.windows)
        for batch_id, events in loaded.replay:
            await self._replay_batch(batch_id, events)
        if self.alerts is not None and self.alerts.pending:
            await self._checkpoint()  # crossings decided by the replay: durable now
        after_crash = self.account in self.accounts.crashed
        self.accounts.crashed.discard(self.account)  # recovered: a next failure is new
        if loaded.replay:
            # Waking (a new account, or one that hibernated) replays its journal tail as a
            # matter of course: routine, at debug. After a crash it is worth an operator's eye.
            level = self.log.info if after_crash else self.log.debug
            level("account_recovered", replayed_batches=len(loaded.replay), after_crash=after_crash)

    async def _replay_batch(self, batch_id: int, events: Sequence[Event]) -> None:
        meters = self.accounts.meters
        for event in events:
            try:
                self.usage.apply(meters[event.meter], event)
                if self.alerts is not None:
                    self.alerts.observe(batch_id, (event,))
            except Exception as error:
                crashed = self.accounts.crashed
                if self.account not in crashed:
                    # The first failure of this account: crash, like a live apply would
                    # (committed events are often first applied by this replay, when an
                    # account wakes). The next incarnation's replay parks the event.
                    crashed.add(self.account)
                    raise
                # A poison event: it failed again after a crash. Park it, do not crash again.
                self.quarantined += 1
                reason = f"{type(error).__name__}: {error}"
                self.log.exception(
                    "event_quarantined", event_id=event.id, batch=batch_id, reason=reason
                )
                await self.accounts.store.writer.quarantine(
                    self.account, batch_id, event.id, reason
                )
        self.watermark = max(self.watermark, batch_id)
        self.events_applied += len(events)  # (or quarantined: the console counts them all)

    # ---- messages -------------------------------------------------------------------

    async def handle_call(self, request: Any, caller: sv.Caller[Any]) -> Any:
        self.last_active = self._now()
        kind = request[0]
        if kind == "checkpoint":
            try:
                await self._checkpoint()
            except CommitFailed as error:  # a full disk: the caller is told, the actor lives
                self._checkpoint_failed(error)
                caller.fail(error)
                return sv.NOREPLY
            return self.watermark
        if kind == "rules":  # the account's alert rules changed (created or deleted)
            await self._reload_rules()
            return self.watermark
        if kind == "rule":  # create or delete one of its rules, then evaluate by them
            return await self._change_rule(*request[1:])
        if kind == "status":
            return {
                "account": self.account,
                "watermark": self.watermark,
                "dirty": len(self.usage.dirty()),
                "quarantined": self.quarantined,
            }
        raise ValueError(f"unknown request {kind!r}")

    async def handle_cast(self, request: Any) -> None:
        kind = request[0]
        if kind == "tick":
            await self._tick(*request[1:])
        elif kind == "alerts":  # crossings were decided: make them durable now
            self._alert_checkpoint_asked = False
            try:
                await self._checkpoint()
            except CommitFailed as error:
                self._checkpoint_failed(error)
        elif kind == "hibernate":
            await self._hibernate()
        elif kind == "crash":  # a fault drill: operators and tests crash an actor
            raise InjectedFault(f"account {self.account}: {request[1]}")
        else:
            raise ValueError(f"unknown cast {kind!r}")

    def handle_info(self, message: Any) -> None:
        # A plain def (the runtime calls it without a coroutine): every delivery comes
        # through here. What has to wait (checkpoints, hibernation) comes as calls and casts.
        if message[0] == "apply":  # one or more batches, in commit order (see the module doc)
            for index in range(1, len(message), 2):
                self._apply_batch(message[index], message[index + 1])

    async def terminate(self, exit: sv.Exit) -> None:
        self.accounts.budget.forget(self.account)  # its mailbox dies with it
        if exit.kind == "crash":
            self.accounts.crashed.add(self.account)  # a replay failure now means poison
        if exit.kind == "shutdown" and self.usage.has_dirty():
            # A clean stop writes what it holds, so the next start replays nothing.
            # (Within the child's shutdown grace; the journal covers it if cut short.)
            try:
                await self._checkpoint()
            except Exception as error:
                self.log.warning("checkpoint_on_stop_failed", error=repr(error))

    async def _change_rule(
        self, name: str, by: str, rule: tuple[str, str, str | None, str | None, str] | None
    ) -> bool:
        """Write the change (the store writer's ``AlertRuleWrite``) and reload the rules
        before any other message: an event committed after the change is applied after it,
        so it is evaluated against the rules as changed; one committed before is not (its
        batch is at most the rule's ``armed_after``)."""
        store = self.accounts.store
        written = await store.writer.alert_rule(self.account, name, by, rule)
        book = self.accounts.alerts
        if written and book is not None:
            stored = await store.reader.run(partial(account_rules, account=self.account))
            book.set_account_rules(self.account, stored)
            await self._reload_rules()
        return written

    async def _reload_rules(self) -> None:
        """Evaluate the account's rules as the book has them now, from the next event on.

        A checkpoint first (crossings already decided become durable, and the store's
        windows hold every event applied, up to the watermark); then the months' usage is
        read back from the store, as a start does, so a new rule compares the next event
        with the whole month's usage so far. A checkpoint that fails (a full disk) raises
        to the caller, and the rules stay as they were until the next try or start."""
        book = self.accounts.alerts
        await self._checkpoint()
        if book is None or not book.rules_for(self.account):
            self.alerts = None
            return
        store = self.accounts.store
        loaded = await store.reader.load_account(self.account, windows_since=book.horizon_ms())
        # load_account's journal tail past the watermark is on its way to this mailbox.
        self.alerts = await book.start_account(self.account, store, loaded.windows)

    # ---- deliveries --------------------------------------------------------------------

    def _apply_batch(self, batch_id: int, events: list[Event]) -> None:
        """Apply committed journal batch ``batch_id`` (see the module doc)."""
        try:
            if batch_id > self.watermark:
                self.last_active = now = self._now()
                second = int(now)
                if second != self.rate_second:
                    gap = second - self.rate_second
                    self.rate_previous = self.rate_count if gap == 1 else 0
                    self.rate_second, self.rate_count = second, 0
                self.rate_count += len(events)
                self.events_applied += len(events)
                self.usage.apply_events(self.accounts.meters, events)
                self.watermark = batch_id
                alerts = self.alerts
                if alerts is not None:
                    alerts.observe(batch_id, events)
                    if alerts.pending and not self._alert_checkpoint_asked:
                        # A checkpoint writes the outbox rows with the windows; the
                        # sweeper's next tick does it if the mailbox is full now.
                        self._alert_checkpoint_asked = self.ref.try_cast(("alerts",))
        finally:
            self.accounts.budget.give_for(self.account, len(events))

    # ---- introspection (the console) -----------------------------------------------------

    def events_per_second(self, now: float) -> int:
        """Events applied in the last whole second before ``now`` (Trio time)."""
        gap = int(now) - self.rate_second
        if gap == 0:
            return self.rate_previous
        return self.rate_count if gap == 1 else 0

    def cells(self) -> int:
        """Minute cells held in memory (deltas since the last checkpoint)."""
        return self.usage.cell_count()

    def memory_estimate(self) -> int:
        """Bytes this actor holds, estimated: :data:`ACTOR_BYTES` plus :data:`CELL_BYTES`
        per minute cell and :data:`MESSAGE_BYTES` per queued message (measured with
        tracemalloc, tests/console/test_actor_stats.py; not counted object by object)."""
        return ACTOR_BYTES + CELL_BYTES * self.cells() + MESSAGE_BYTES * self.sv_mailbox_depth

    # ---- checkpoints and hibernation -------------------------------------------------------

    async def _checkpoint(self) -> None:
        """Merge the deltas into the stored windows and write them with the watermark."""
        dirty = self.usage.has_dirty()
        crossings = self.alerts.take() if self.alerts is not None else []
        if not dirty and self.watermark == self.checkpointed_watermark and not crossings:
            return  # the store already holds everything (e.g. a second usage query)
        # The deltas go to the writer, which merges them into the stored windows in the
        # checkpoint's own transaction (no read on another connection and thread first).
        rows: list[tuple[str, int, str, bytes]] = []
        for meter_name, start, dims, delta in self.usage.dirty_states():
            text = _dims_text.get(dims)
            if text is None:
                if len(_dims_text) >= DIMS_CACHE:
                    _dims_text.clear()
                text = _dims_text[dims] = encode_dims(dims)
            rows.append((meter_name, start, text, encode(delta)))
        watermark = self.watermark
        try:
            # The crossings go in the same transaction as the windows and the watermark
            # that decided them: the watermark never passes a crossing not in the outbox.
            await self.accounts.store.writer.checkpoint(
                self.account,
                rows,
                watermark,
                merge=self._merge_stored,
                rows={"alert_outbox": outbox_rows(crossings)} if crossings else None,
            )
        except BaseException:
            if crossings and self.alerts is not None:
                self.alerts.give_back(crossings)
            raise
        if crossings:
            book = self.accounts.alerts
            if book is not None:
                book.ring(len(crossings))
            self.log.info(
                "alerts_crossed",
                crossings=[(c.rule.name, c.period, c.id) for c in crossings],
                watermark=watermark,
            )
        self.checkpointed_watermark = watermark
        self.usage.clear()
        self.last_checkpoint = trio.current_time()

    def _merge_stored(self, meter_name: str, stored: bytes, delta: bytes) -> bytes:
        """A stored window's state with a delta added (runs on the store writer's thread:
        pure, touches nothing of the actor's)."""
        meter = self.accounts.meters[meter_name]
        return encode(decode(meter, stored).merged(decode(meter, delta)))

    def _checkpoint_failed(self, error: CommitFailed) -> None:
        """The store could not commit a checkpoint (a full disk, an I/O error): nothing of it
        was written and the deltas stay in memory, so the actor goes on and tries again
        after ``checkpoint_interval``. Crashing instead would lose nothing (the journal holds
        every committed event) but, the disk being full for every account at once, the
        restarts would exhaust the ``meters`` supervisor's intensity and escalate."""
        self.last_checkpoint = trio.current_time()
        self.log.warning("checkpoint_failed", error=str(error))

    def due(self, now: float, idle_timeout: float | None = None) -> str | None:
        """What a tick at ``now`` would do: ``"hibernate"`` (no traffic for ``idle_timeout``,
        by default the accounts layer's), ``"checkpoint"`` (pending alert crossings, or
        dirty cells and the last checkpoint ``checkpoint_interval`` old), or None.

        Pure and cheap (a few attribute reads): the sweeper asks it of every awake actor,
        between the actor's messages, and casts a tick only to those it names due."""
        if idle_timeout is None:
            idle_timeout = self.accounts.idle_timeout
        if now - self.last_active >= idle_timeout:
            return "hibernate"
        if (self.alerts is not None and self.alerts.pending) or (
            now - self.last_checkpoint >= self.accounts.checkpoint_interval
            and self.usage.has_dirty()
        ):
            return "checkpoint"
        return None

    async def _tick(self, idle_timeout: float | None = None) -> None:
        """``idle_timeout``: the sweeper's, shorter while too many actors are awake. Acts
        as :meth:`due` says, decided again now (the actor may have changed since the
        sweeper asked)."""
        action = self.due(trio.current_time(), idle_timeout)
        if action == "hibernate":
            await self._hibernate()
        elif action == "checkpoint":
            try:
                await self._checkpoint()
            except CommitFailed as error:
                self._checkpoint_failed(error)

    async def _hibernate(self) -> None:
        if self.sv_mailbox_depth or self.accounts.backlogged(self.account):
            return  # not idle after all; the sweeper will ask again
        try:
            await self._checkpoint()
        except CommitFailed as error:
            self._checkpoint_failed(error)
            self.last_active = trio.current_time()  # stay awake; try again after idle_timeout
            return
        self.log.debug("account_hibernated")
        raise sv.Stop()
