"""Corrections do not touch alerts (docs/alerts.md, "Corrections"): a void or a credit that
takes the billed usage back below a threshold neither removes the crossing nor makes a later
re-crossing in the same month a second one, and nothing but the one `alert.triggered` is sent."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import trio

from meterd.alerts import Webhook
from meterd.alerts._delivery import DeliveryService
from meterd.billing import AdjustmentKind, Billing, BillingDB, Period, PriceBook, PriceRule
from meterd.model import DAY_MS, Window

from .helpers import DYNO, METERS, NOW, T0, book, dyno, outbox, rule, running
from .receiver import Receiver

SECRET = "whsec-0123456789abcdef"
NOV = Period(2026, 11)
PRICES = PriceBook([PriceRule(DYNO.name, Decimal("0.01"), date(2026, 1, 1))], METERS)


async def _billed(billing: Billing) -> Decimal:
    """The month's billed usage of acme: voids applied, adjustments added."""
    rows = await billing.usage("acme", DYNO.name, NOV.start_ms, NOV.end_ms, Window.DAY)
    return sum((value for _start, _end, value, _group in rows), Decimal(0))


async def test_a_void_and_a_credit_neither_clear_nor_repeat_a_crossing(tmp_path: Path) -> None:
    db = tmp_path / "meterd.sqlite3"
    ten = rule("ten", "10")
    alerts = book(ten)
    crossing = ten.crossing_id("acme", "2026-11")
    receiver = Receiver(SECRET).start()
    try:
        async with running(db, alerts, idle_timeout=3600, checkpoint_interval=3600) as accounts:
            billing_db = await BillingDB(tmp_path / "billing.sqlite3").open()
            billing = Billing(accounts, billing_db, PRICES, clock=lambda: NOW)
            hooks = [Webhook("hook", receiver.url, SECRET)]
            service = DeliveryService(
                accounts.store, alerts, hooks, tmp_path / "deliveries.sqlite3"
            )
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(service.run)

                    # 1. usage crosses: one crossing, on e2, delivered
                    crossed = [dyno("acme", "e1", "4"), dyno("acme", "e2", "6.5", 1)]
                    await accounts.ingest("acme", crossed)
                    await service.wait_until(lambda: service.delivered == 1)
                    [row] = outbox(db)
                    assert (row.id, row.alert, row.event_id) == (crossing, "ten", "e2")
                    assert row.period == "2026-11"

                    # 2. corrections take the billed usage back below the threshold
                    await billing.void_event("acme", "e2", "ops", "sent twice", period=NOV)
                    day = T0 - T0 % DAY_MS
                    credit = AdjustmentKind.CREDIT
                    dims = {"size": "std-1x"}
                    await billing.adjust(
                        "acme", DYNO.name, day, Window.DAY, dims, credit, "3", "ops", "goodwill"
                    )
                    assert await _billed(billing) == Decimal("1")  # 4 - 3

                    # 3. more usage in the same month crosses again (counted and billed)
                    again = [dyno("acme", "e3", "5", 2), dyno("acme", "e4", "6", 3)]
                    await accounts.ingest("acme", again)
                    await accounts.checkpoint("acme")  # any crossing of e3/e4 is in the outbox now
                    assert await _billed(billing) == Decimal("12")  # 4 + 5 + 6 - 3

                    # still exactly one crossing for (ten, acme, 2026-11), with its first id
                    assert [(r.id, r.event_id) for r in outbox(db)] == [(crossing, "e2")]
                    assert alerts.durable_crossings == 1
                    await service.wait_until(lambda: service.delivered == 1)
                    deliveries = await service.deliveries()
                    assert [(d.id, d.status) for d in deliveries] == [(crossing, "delivered")]
                    nursery.cancel_scope.cancel()
            finally:
                await billing_db.aclose()
    finally:
        receiver.stop()
    # the receiver got the one crossing, and no other type (no alert.cleared, no second id)
    assert [(r.id, r.json["type"], r.json["value"]) for r in receiver.received] == [
        (crossing, "alert.triggered", "10.5")
    ]
    assert all(r.valid and r.status == 200 for r in receiver.received)
