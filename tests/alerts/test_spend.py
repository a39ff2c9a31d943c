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


def test_a_rule_made_later_crosses_only_on_events_committed_after_it() -> None:
    """``armed_after``: a spend (or usage) rule of one account made after batch ``k``
    crosses on the first event of a later batch at which the invoice (or the usage) is at
    or above its limit; a rule made earlier on a smaller limit is not held back by it."""
    events = stream(3, 300)
    k = 120
    early = AlertRule("early", DYNO.name, "hook", spend=Decimal("100.00"))
    late = AlertRule("late", DYNO.name, "hook", spend=Decimal("100.00"), armed_after=k)
    late_usage = AlertRule("usage", DYNO.name, "hook", threshold=Decimal(1), armed_after=k)
    alerts = AccountAlerts(
        "acme",
        [early, late, late_usage],
        METERS,
        (),
        NOW - 40 * DAY_MS,
        lambda: NOW,
        BookPricing(BOOK),
    )
    for batch, event in enumerate(events):
        alerts.observe(batch + 1, [event])
    decided = {c.rule.name: c.event_id for c in alerts.take()}
    totals = [invoice_total(events[: n + 1]) for n in range(len(events))]
    first_early = next(n for n, t in enumerate(totals) if t >= Decimal("100.00"))
    assert first_early + 1 <= k  # the early rule crosses before the late one exists
    assert decided == {
        "early": events[first_early].id,
        "late": events[k].id,  # batch k + 1: the first after it, already above
        "usage": events[k].id,
    }
