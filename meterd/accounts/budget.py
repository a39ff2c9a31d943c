"""The daemon-wide in-flight budget, counted in events.

An event holds budget from the moment ingest reads its batch until its account's actor has
applied it: while it waits for the store writer's commit, and after the commit while it
waits in the actor's mailbox. Ingest stops reading from every connection while the budget
is spent (:meth:`EventBudget.wait_for_room`), so an overload slows producers down (TCP
backpressure) instead of growing queues, memory and latency without bound. A batch is
admitted whole once there is room, so ``limit`` may be exceeded by at most one batch per
connection.

Events delivered to an actor are counted per account, so that what an actor incarnation
loses in its mailbox when it dies (the next one replays it from the journal) is given back
(:meth:`EventBudget.forget`) instead of leaking.
"""

from __future__ import annotations

import trio

__all__ = ["EventBudget"]


class EventBudget:
    """At most ``limit`` events in flight in the daemon (see the module doc)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight budget must be >= 1 event, got {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0  # times a reader found the budget spent and waited
        self._by_account: dict[str, int] = {}
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def take(self, events: int) -> None:
        """Count ``events`` read (before they are committed)."""
        self.used += events
        if self.used > self.peak:
            self.peak = self.used

    def give(self, events: int) -> None:
        """Give back what :meth:`take` counted."""
        self.used -= events
        if self._lot and self.used < self.limit:
            self._lot.unpark_all()

    def take_for(self, account: str, events: int) -> None:
        """Count ``events`` delivered to ``account``'s actor, not applied yet."""
        by_account = self._by_account
        by_account[account] = by_account.get(account, 0) + events
        used = self.used = self.used + events  # take(), written out: once per delivery
        if used > self.peak:
            self.peak = used

    def give_for(self, account: str, events: int) -> None:
        """``account``'s actor applied (or skipped) ``events`` delivered to it."""
        by_account = self._by_account
        held = by_account.get(account, 0)
        if events >= held:
            by_account.pop(account, None)
            events = held
        else:
            by_account[account] = held - events
        used = self.used = self.used - events  # give(), written out: once per delivery
        if self._lot and used < self.limit:
            self._lot.unpark_all()

    def forget(self, account: str) -> None:
        """``account``'s actor stopped: what was delivered to it will never be applied."""
        self.give(self._by_account.pop(account, 0))

    def delivered(self, account: str) -> int:
        """Events delivered to ``account``'s actor and not applied yet."""
        return self._by_account.get(account, 0)

    async def wait_for_room(self) -> None:
        """Return once fewer than ``limit`` events are in flight."""
        if self.used < self.limit:
            return
        self.waits += 1
        while self.used >= self.limit:
            await self._lot.park()
