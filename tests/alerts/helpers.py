"""Shared pieces of the alert tests: meters, rules, events, reading the outbox."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterd.accounts.service import Accounts, running_accounts
from meterd.alerts import AlertRule
from meterd.alerts._outbox import OutboxRow
from meterd.alerts._runtime import AlertBook
from meterd.config import AccountsConfig, Duration, StoreConfig
from meterd.model import DAY_MS, Aggregation, Event, Meter

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",))
USERS = Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user")
PEAK = Meter("postgres.storage_bytes", Aggregation.MAX)
METERS = {m.name: m for m in (DYNO, USERS, PEAK)}
NOW = 1_796_000_000_000  # 2026-11-30 (a fixed "now": the alert book's clock)
T0 = NOW - 20 * DAY_MS  # 2026-11-10: events of 2026-11


def rule(name: str, threshold: str, meter: str = DYNO.name, **more: Any) -> AlertRule:
    return AlertRule(name=name, meter=meter, webhook="hook", threshold=Decimal(threshold), **more)


def dyno(account: str, id: str, seconds: str, minute: int = 0, size: str = "std-1x") -> Event:
    return Event(id, account, DYNO.name, Decimal(seconds), T0 + minute * 60_000, (("size", size),))


def book(*rules: AlertRule, meters: dict[str, Meter] | None = None) -> AlertBook:
    return AlertBook(rules, meters or METERS, history_ms=35 * DAY_MS, clock_ms=lambda: NOW)


@asynccontextmanager
async def running(
    path: Path,
    alerts: AlertBook,
    *,
    idle_timeout: float | None = None,
    checkpoint_interval: float | None = None,
) -> AsyncIterator[Accounts]:
    tables: dict[str, Any] = {}
    if idle_timeout is not None:
        tables["accounts"] = AccountsConfig(idle_timeout=Duration(int(idle_timeout * 1000)))
    if checkpoint_interval is not None:
        tables["store"] = StoreConfig(checkpoint_interval=Duration(int(checkpoint_interval * 1000)))
    async with running_accounts(path, METERS, alerts=alerts, **tables) as accounts:
        yield accounts


def outbox(path: Path) -> list[OutboxRow]:
    conn = sqlite3.connect(path)
    try:
        return [
            OutboxRow(*row)
            for row in conn.execute(
                "SELECT seq, id, account, alert, webhook, meter, period, event_id, batch_id,"
                " body, created_at FROM alert_outbox ORDER BY seq"
            )
        ]
    finally:
        conn.close()
