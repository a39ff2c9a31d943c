"""Crossings of ``min`` and ``latest`` meters as docs/alerts.md defines them: ``min`` (the
month's minimum, which only goes down) crosses only on the month's first counted event;
``latest`` (the quantity of the month's latest event, by time then id) crosses on the event
that becomes the latest with a quantity at or above the threshold, and a late event that
is not the latest changes nothing. One crossing per (rule, account, month) whatever the
value does next; a hibernation in between decides nothing again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from meterd.accounts.service import Accounts, running_accounts
from meterd.alerts import AlertRule
from meterd.model import Aggregation, Event, Meter

from .helpers import NOW, T0, book, outbox

LOW = Meter("disk.free_min", Aggregation.MIN)
SEATS = Meter("seats.latest", Aggregation.LATEST)
METERS = {m.name: m for m in (LOW, SEATS)}


def on(meter: Meter, name: str, threshold: str) -> AlertRule:
    return AlertRule(name=name, meter=meter.name, webhook="hook", threshold=Decimal(threshold))


def event(meter: Meter, account: str, id: str, quantity: int, minute: int) -> Event:
    return Event(id, account, meter.name, quantity, T0 + minute * 60_000)


@asynccontextmanager
async def accounts_with(path: Path, *rules: AlertRule) -> AsyncIterator[Accounts]:
    alerts = book(*rules, meters=METERS)
    async with running_accounts(path, METERS, alerts=alerts) as accounts:
        yield accounts


async def send(accounts: Accounts, *events: Event) -> None:
    for e in events:  # one journal batch each: counting order is this order
        await accounts.ingest(e.account, [e])
    await accounts.checkpoint(events[0].account)


def crossed(path: Path) -> list[tuple[str, str, str]]:
    return [(r.account, r.alert, r.event_id) for r in outbox(path)]


async def test_min_crosses_only_on_the_months_first_event(tmp_path: Path) -> None:
    db = tmp_path / "meterd.sqlite3"
    async with accounts_with(db, on(LOW, "low-3", "3")) as accounts:
        # a: the first event is at or above 3: it crosses, whatever comes next
        await send(accounts, event(LOW, "a", "a1", 5, 10), event(LOW, "a", "a2", 1, 11))
        # b: the first event is below 3; a later higher one cannot raise the minimum
        await send(accounts, event(LOW, "b", "b1", 2, 10), event(LOW, "b", "b2", 10, 11))
        # c: a late event (earlier time) is counted when it arrives, like any other:
        # the first counted event decides, not the earliest time
        await send(accounts, event(LOW, "c", "c1", 4, 20), event(LOW, "c", "c2", 9, 5))
        assert crossed(db) == [("a", "low-3", "a1"), ("c", "low-3", "c1")]
        body = outbox(db)[0].body
        assert b'"value":"5"' in body


async def test_latest_crosses_on_the_event_that_becomes_the_latest(tmp_path: Path) -> None:
    db = tmp_path / "meterd.sqlite3"
    async with accounts_with(db, on(SEATS, "seats-4", "4")) as accounts:
        # a: 1 then 5 (later): the 5 becomes the latest and crosses
        await send(accounts, event(SEATS, "a", "a1", 1, 10), event(SEATS, "a", "a2", 5, 11))
        # b: a late 100 (earlier time) is not the latest: nothing; then a later 4 crosses
        await send(
            accounts,
            event(SEATS, "b", "b1", 1, 20),
            event(SEATS, "b", "b2", 100, 10),
            event(SEATS, "b", "b3", 4, 30),
        )
        # c: at the same time the greater id is the latest
        await send(accounts, event(SEATS, "c", "c2", 1, 10), event(SEATS, "c", "c3", 9, 10))
        await send(accounts, event(SEATS, "d", "d9", 1, 10), event(SEATS, "d", "d1", 9, 10))
        assert crossed(db) == [
            ("a", "seats-4", "a2"),
            ("b", "seats-4", "b3"),
            ("c", "seats-4", "c3"),
        ]


async def test_latest_falling_and_rising_again_is_one_crossing(tmp_path: Path) -> None:
    db = tmp_path / "meterd.sqlite3"
    rule = on(SEATS, "seats-4", "4")
    async with accounts_with(db, rule) as accounts:
        await send(accounts, event(SEATS, "a", "a1", 6, 10), event(SEATS, "a", "a2", 1, 11))
    async with accounts_with(db, rule) as accounts:  # a new actor: the month reloaded
        await send(accounts, event(SEATS, "a", "a3", 8, 12))
        assert crossed(db) == [("a", "seats-4", "a1")]
    assert NOW > T0
