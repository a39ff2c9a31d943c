"""Properties of billing over a real store, for random data (hypothesis):

* an invoice's total is the sum over its lines of (the explained *counted* events + the
  line's adjustments) x the unit price, each line rounded to the cent, and a ``max`` line is
  the greatest counted event;
* a closed period's figures never change without a restatement: after any sequence of late
  events, adjustments and voids, the closed total plus the restatements' differences is the
  current total, and every change of the total left one.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.billing import AdjustmentKind, Billing, InvoiceLine, round_amount
from meterd.model import HOUR_MS, Event, Window
from tests.billing.test_billing import BOOK, DAY, DYNO, NOV, PEAK, all_events
from tests.billing.test_billing import billing as billing_at
from tests.examples import examples

SETTINGS = settings(
    max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

event_specs = st.lists(
    st.tuples(
        st.sampled_from(["dyno", "peak"]),
        st.integers(0, 29),  # day
        st.integers(0, 3),  # hour: several events may share a window
        st.sampled_from(["std", "perf"]),
        st.decimals("0", "500", places=2),
    ),
    min_size=1,
    max_size=25,
)
adjustment_specs = st.lists(
    st.tuples(
        st.integers(0, 29),
        st.sampled_from(["std", "perf"]),
        st.booleans(),
        st.decimals("0.01", "100", places=2),
    ),
    max_size=4,
)


def make_events(specs: list[tuple[str, int, int, str, Decimal]], prefix: str = "e") -> list[Event]:
    out = []
    for i, (kind, day, hour, size, q) in enumerate(specs):
        time = DAY[day] + hour * HOUR_MS + i  # distinct times keep `max` ties out of the way
        if kind == "dyno":
            out.append(Event(f"{prefix}{i}", "acme", DYNO.name, q, time, (("size", size),)))
        else:
            out.append(Event(f"{prefix}{i}", "acme", PEAK.name, int(q), time))
    return out


@asynccontextmanager
async def fresh_billing() -> AsyncIterator[Billing]:
    with tempfile.TemporaryDirectory() as tmp:
        async with billing_at(Path(tmp), BOOK) as b:
            yield b


async def expected_amount(b: Billing, line: InvoiceLine) -> Decimal:
    explained = await all_events(b, "acme", line.number)
    counted = [e.event for e in explained.events if e.status == "counted"]
    adjusted = sum((a.signed for a in explained.adjustments), Decimal(0))
    if line.meter == PEAK.name:
        quantity = Decimal(max(e.quantity for e in counted))
    else:
        quantity = sum((Decimal(e.quantity) for e in counted), Decimal(0))
    assert line.usage == quantity
    return round_amount((quantity + adjusted) * line.unit_price, 2)


@SETTINGS
@given(
    specs=event_specs, adjustments=adjustment_specs, voids=st.sets(st.integers(0, 24), max_size=5)
)
async def test_invoice_total_is_explained_events_times_prices_plus_adjustments(
    specs: list[tuple[str, int, int, str, Decimal]],
    adjustments: list[tuple[int, str, bool, Decimal]],
    voids: set[int],
) -> None:
    async with fresh_billing() as b:
        events = make_events(specs)
        await b.accounts.ingest("acme", events)
        for day, size, credit, quantity in adjustments:
            kind = AdjustmentKind.CREDIT if credit else AdjustmentKind.DEBIT
            await b.adjust(
                "acme", DYNO.name, DAY[day], Window.DAY, {"size": size}, kind, quantity, "p", "r"
            )
        for index in sorted(voids):
            if index < len(events):
                await b.void_event("acme", events[index].id, "p", "r")
        invoice = (await b.invoice("acme", NOV)).invoice
        total = Decimal(0)
        for line in invoice.lines:
            amount = await expected_amount(b, line)
            assert line.amount == amount
            total += amount
        assert invoice.total == total
        voided = {events[i].id for i in voids if i < len(events)}
        if all(e.id in voided for e in events if e.meter == PEAK.name):
            assert PEAK.name not in {line.meter for line in invoice.lines}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("late"), event_specs),
        st.tuples(st.just("adjust"), adjustment_specs),
        st.tuples(st.just("void"), st.integers(0, 30)),
        st.tuples(st.just("nothing"), st.none()),
    ),
    max_size=5,
)


@SETTINGS
@given(specs=event_specs, ops=operations)
async def test_a_closed_period_never_changes_without_a_restatement(
    specs: list[tuple[str, int, int, str, Decimal]], ops: list[tuple[str, object]]
) -> None:
    async with fresh_billing() as b:
        events = make_events(specs)
        await b.accounts.ingest("acme", events)
        await b.close_period(NOV, by="ops")
        closed = await b.invoice("acme", NOV)
        closed_total = closed.invoice.total
        assert closed.closed_total == closed_total
        previous, count = closed_total, 0
        for step, (op, arg) in enumerate(ops):
            if op == "late":
                late = make_events(arg, prefix=f"late{step}-")  # type: ignore[arg-type]
                await b.accounts.ingest("acme", late)
                events += late
            elif op == "adjust":
                for day, size, credit, quantity in arg:  # type: ignore[attr-defined]
                    kind = AdjustmentKind.CREDIT if credit else AdjustmentKind.DEBIT
                    await b.adjust(
                        "acme",
                        DYNO.name,
                        DAY[day],
                        Window.DAY,
                        {"size": size},
                        kind,
                        quantity,
                        "p",
                        "r",
                    )
            elif op == "void" and isinstance(arg, int) and arg < len(events):
                voided = [v.event_id for v in await b.db.voids("acme")]
                if events[arg].id not in voided:
                    await b.void_event("acme", events[arg].id, "p", "r")
            view = await b.invoice("acme", NOV)
            assert view.closed_total == closed_total  # the closing figures themselves never move
            restated = sum((r.difference for r in view.restatements), Decimal(0))
            assert view.closed_total + restated == view.invoice.total
            if view.invoice.total != previous:
                assert len(view.restatements) > count  # a change always left a restatement
            assert (await b.rate("acme", NOV)).lines == view.invoice.lines
            previous, count = view.invoice.total, len(view.restatements)
