"""The daemon-wide side of alerts that meter actors see: which rules apply to an account,
how far back to load usage, and the bell the delivery service listens to."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial

import structlog
import trio

from meterd.accounts.aggregate import decode
from meterd.model import Meter
from meterd.store import Store
from meterd.store.codec import decode_dims

from ._config import AlertRule
from ._eval import AccountAlerts, SpendPricing, month_bounds, month_of
from ._outbox import crossed_ids
from ._rules import StoredRule, live_rules

log = structlog.get_logger("meterd.alerts")

__all__ = ["AlertBook", "wall_ms"]

_DAY_MS = 86_400_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class AlertBook:
    """Rules (the config's and each account's own), for the meter actors.

    ``history_ms``: how far back from now events can still be accepted (the dedupe window):
    the usage of every month from then on is loaded when an account with rules starts.
    ``webhooks``: the configured webhook names (a stored rule whose webhook is gone is not
    evaluated). The rules of each account (table ``alert_rules`` of the store) are read
    once, before the first actor starts (:meth:`ensure_loaded`), and kept here as the API
    changes them (:meth:`set_account_rules`).
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        meters: Mapping[str, Meter],
        *,
        history_ms: int,
        clock_ms: Callable[[], int] = wall_ms,
        spend_pricing: SpendPricing | None = None,
        webhooks: Collection[str] = (),
    ) -> None:
        self.rules = tuple(rules)
        self.webhooks = frozenset(webhooks)
        self.config_names = frozenset(r.name for r in self.rules)
        self.account_rules: dict[str, tuple[AlertRule, ...]] = {}
        self.loaded = False
        self._loading = trio.Lock()
        self._ready = trio.Event()
        self.meters = dict(meters)
        self.history_ms = history_ms
        self.clock_ms = clock_ms
        self.spend_pricing = spend_pricing
        self._bell = trio.Event()
        self.durable_crossings = 0  # written to the outbox by checkpoints (a counter)

    def rules_for(self, account: str) -> list[AlertRule]:
        found = [r for r in self.rules if r.applies_to(account) and r.meter in self.meters]
        own = self.account_rules.get(account)
        if own:
            found += own
        return found

    async def ensure_loaded(self, store: Store) -> None:
        """Read every account's rules from the store, once (before an actor evaluates)."""
        if self.loaded:
            return
        async with self._loading:
            if self._ready.is_set():  # another task loaded them while this one waited
                return
            stored = await store.reader.run(live_rules, "recovery")
            by_account: dict[str, list[StoredRule]] = {}
            for row in stored:
                by_account.setdefault(row.account, []).append(row)
            for account, rows in by_account.items():
                self.set_account_rules(account, rows)
            self.loaded = True
            self._ready.set()

    def set_account_rules(self, account: str, stored: Sequence[StoredRule]) -> None:
        """The live rules of ``account`` as stored now (those the daemon can evaluate: a
        rule whose meter or webhook is no longer configured, or whose name a configured
        alert took, is logged and left out)."""
        rules: list[AlertRule] = []
        for row in stored:
            why = row.inactive_because(self.meters, self.webhooks, self.config_names)
            if why is not None:
                log.warning("alert_rule_inactive", account=account, alert=row.name, reason=why)
                continue
            rules.append(row.rule())
        if rules:
            self.account_rules[account] = tuple(rules)
        else:
            self.account_rules.pop(account, None)

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
