"""Spend thresholds against billing's own invoice lines (no second pricing)."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

from meterd.accounts.aggregate import State, add, new_state
from meterd.alerts import AlertRule
from meterd.alerts._eval import AccountAlerts, Dims
from meterd.alerts._spend import BookPricing
from meterd.billing import Period, PriceBook, PriceRule, QuantityRounding, RoundingMode, rate
from meterd.model import DAY_MS, MINUTE_MS, Event, Meter

from .helpers import DYNO, METERS, NOW

NOV = Period(2026, 11)
BOOK = PriceBook(
    [
        PriceRule(
            DYNO.name,
            Decimal("0.05"),
            date(2026, 1, 1),
            rounding=QuantityRounding(0, RoundingMode.CEILING),
        ),
        PriceRule(DYNO.name, Decimal("0.08"), date(2026, 11, 15), match=("size", "perf")),
        PriceRule(DYNO.name, Decimal("0.02"), date(2026, 11, 20), monthly_cap=Decimal("40")),
    ],
    METERS,
)


class Counting(BookPricing):
    calls = 0

    def amount(
        self, account: str, period: str, meter: Meter, cells: list[tuple[int, Dims, State]]
    ) -> Decimal:
        Counting.calls += 1
        return super().amount(account, period, meter, cells)


def invoice_total(events: list[Event]) -> Decimal:
    """The invoice's total for these events, from minute cells as the store keeps them."""
    cells: dict[tuple[int, tuple[str, ...]], State] = {}
    for event in events:
        key = (event.time - event.time % MINUTE_MS, (event.property("size") or "",))
        cells[key] = add(cells.get(key) or new_state(DYNO), event)
    listed = [(start, dims, state) for (start, dims), state in cells.items()]
    return rate("acme", NOV, METERS, {DYNO.name: listed}, BOOK).total


def stream(seed: int, n: int) -> list[Event]:
    rng = random.Random(seed)
    start = NOV.start_ms
    return [
        Event(
            f"e{i}",
            "acme",
            DYNO.name,
            Decimal(rng.randint(1, 400)) / 4,
            start + rng.randrange(0, 29 * DAY_MS),
            (("size", rng.choice(["std", "perf"])),),
        )
        for i in range(n)
    ]


def test_spend_crosses_on_the_event_the_invoice_says_and_rates_rarely() -> None:
    for seed in range(8):
        events = stream(seed, 300)
        limits = [Decimal("100.00"), Decimal("250.55"), Decimal("600")]
        rules = [AlertRule(f"spend-{limit}", DYNO.name, "hook", spend=limit) for limit in limits]
        Counting.calls = 0
        alerts = AccountAlerts(
            "acme", rules, METERS, (), NOW - 40 * DAY_MS, lambda: NOW, Counting(BOOK)
        )
        for batch, event in enumerate(events):
            alerts.observe(batch + 1, [event])
        decided = {c.rule.spend: (c.event_id, c.value) for c in alerts.take()}
        expected: dict[Decimal | None, tuple[str, Decimal]] = {}
        for n in range(1, len(events) + 1):
            total = invoice_total(events[:n])
            for limit in limits:
                if limit not in expected and total >= limit:
                    expected[limit] = (events[n - 1].id, total)
        assert len(expected) >= 2, seed  # the stream reaches the thresholds
        assert decided == expected, seed
        assert Counting.calls < len(events) // 6, Counting.calls  # rated only when it could cross
