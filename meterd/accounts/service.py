"""The accounts layer: meter actors under a DynamicSupervisor, found by account id.

``Accounts`` is what the ingest layer and the API talk to:

* :meth:`Accounts.ingest` finds (or starts) the account's actor through the
  Registry and calls it with the account's share of a batch. Two producers
  racing to wake the same account get one actor (the Registry guarantees it).
* The *sweeper*, a task child beside the actors' supervisor, asks actors to
  checkpoint every ``checkpoint_interval`` and to hibernate after
  ``idle_timeout`` without traffic, so only awake accounts cost memory.

Supervision: ``accounts`` (one_for_one) = [``meters`` DynamicSupervisor,
``sweeper`` task]. A crashing actor is restarted alone (transient: a
hibernation is a normal exit and is not restarted); its restarts count toward
the ``meters`` supervisor's intensity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
import trio

import supervisors as sv
from meterd.accounts.actor import MeterActor, Verdict, decode_dims
from meterd.accounts.aggregate import State, UsageRow, decode, rollup
from meterd.model import Event, Meter, Window
from meterd.store import Store

log = structlog.get_logger("meterd.accounts")


def _no_fault(event: Event) -> None:
    """Production fault hook: nothing. Tests replace it to inject crashes."""


class Accounts:
    """Per-account meter actors and how to reach them."""

    def __init__(
        self,
        store: Store,
        meters: Mapping[str, Meter],
        *,
        idle_timeout: float = 300.0,
        checkpoint_interval: float = 30.0,
        mailbox_size: int = 1024,
        max_restarts: int = 50,
        max_seconds: float = 10.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.meters = dict(meters)
        self.idle_timeout = idle_timeout
        self.checkpoint_interval = checkpoint_interval
        self.mailbox_size = mailbox_size
        self.call_timeout = call_timeout
        self.registry = sv.Registry("accounts")
        self.supervisor = sv.DynamicSupervisor(
            name="meters", max_restarts=max_restarts, max_seconds=max_seconds
        )
        self.fault_hook: Callable[[Event], None] = _no_fault

    def child_specs(self) -> list[sv.ChildSpec]:
        """The children to run under the application's ``accounts`` supervisor."""
        return [
            self.supervisor.as_child("meters"),
            sv.task_spec("sweeper", self._sweep),
        ]

    def supervisor_spec(self) -> sv.ChildSpec:
        return sv.Supervisor.child_spec("accounts", self.child_specs())

    # ---- reaching an account's actor ------------------------------------------------------

    def _spec(self, account: str) -> sv.ChildSpec:
        return sv.actor_spec(
            account,
            MeterActor,
            account,
            self,
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

    async def ingest(self, account: str, events: Sequence[Event]) -> Verdict:
        """Count ``events`` (all of ``account``): returns once the accepted ones are durable."""
        verdict: Verdict = await self.call(account, ("ingest", list(events)))
        return verdict

    async def checkpoint(self, account: str) -> None:
        """Make the stored windows of ``account`` complete: everything durable is in them.

        Wakes the account if it sleeps: after a crash (of the actor or of the whole
        process) the journal may hold batches past the last checkpoint, which only
        the actor's recovery folds into the windows.
        """
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
        return [
            (row.start, decode_dims(row.dims, len(meter.dimensions)), decode(meter, row.state))
            for row in stored
        ]

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
        while True:
            await trio.sleep(period)
            self.sweep_once()

    def sweep_once(self) -> None:
        """Tick every awake actor: each decides to checkpoint or hibernate itself."""
        for account in list(self.registry.keys()):
            ref = self.registry.whereis(account)
            if ref is not None:
                ref.try_send(("tick",))  # a full mailbox means busy: skip it this round
