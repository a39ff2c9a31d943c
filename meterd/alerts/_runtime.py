"""The daemon-wide side of alerts that meter actors see: which rules apply to an account,
how far back to load usage, and the bell the delivery service listens to."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import trio

from meterd.accounts.aggregate import decode
from meterd.model import Meter
from meterd.store import Store
from meterd.store.codec import decode_dims

from ._config import AlertRule
from ._eval import AccountAlerts, SpendPricing, month_bounds, month_of
from ._outbox import crossed_ids

__all__ = ["AlertBook", "wall_ms"]

_DAY_MS = 86_400_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class AlertBook:
    """Rules (config and, later, per account), for the meter actors.

    ``history_ms``: how far back from now events can still be accepted (the dedupe window):
    the usage of every month from then on is loaded when an account with rules starts.
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        meters: Mapping[str, Meter],
        *,
        history_ms: int,
        clock_ms: Callable[[], int] = wall_ms,
        spend_pricing: SpendPricing | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.meters = dict(meters)
        self.history_ms = history_ms
        self.clock_ms = clock_ms
        self.spend_pricing = spend_pricing
        self._bell = trio.Event()
        self.durable_crossings = 0  # written to the outbox by checkpoints (a counter)

    def rules_for(self, account: str) -> list[AlertRule]:
        return [r for r in self.rules if r.applies_to(account) and r.meter in self.meters]

    def horizon_ms(self) -> int:
        """Usage from this time on is loaded when an account with rules starts: the start of
        the month holding (now - the dedupe window - a day's margin); the dedupe window
        bounds the times of the events still accepted, and a month is loaded whole."""
        return month_bounds(*month_of(self.clock_ms() - self.history_ms - _DAY_MS))[0]

    async def start_account(
        self, account: str, store: Store, windows: Sequence[tuple[str, int, str, bytes]]
    ) -> AccountAlerts | None:
        """The evaluation state of ``account`` (None when no rule watches it), from the
        stored windows loaded with its watermark and the crossings already decided."""
        rules = self.rules_for(account)
        if not rules:
            return None
        crossed = await store.reader.run(partial(crossed_ids, account=account), "recovery")
        alerts = AccountAlerts(
            account,
            rules,
            self.meters,
            crossed,
            self.horizon_ms(),
            self.clock_ms,
            self.spend_pricing,
        )
        watched = alerts.watches
        for meter_name, start, dims, state in windows:
            watch = watched.get(meter_name)
            if watch is not None:
                alerts.load(meter_name, start, decode_dims(dims), decode(watch.meter, state))
        return alerts

    def ring(self, written: int) -> None:
        """Crossings were just made durable: wake the delivery service."""
        self.durable_crossings += written
        self._bell.set()

    async def wait(self) -> None:
        """Until :meth:`ring` (then re-armed)."""
        await self._bell.wait()
        self._bell = trio.Event()
