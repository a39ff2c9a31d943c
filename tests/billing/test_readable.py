"""Explanations a billing-support person reads (issue 18 item 3): price rules by name, units,
the cap's arithmetic in words, the event that set a max, events in time order, a summary of
every line first; restatements that name their dimensions and their cause (the late events
by id, a price book change)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

from meterd.billing import (
    Billing,
    BillingDB,
    Period,
    PriceBook,
    PriceRule,
    render_explanation,
    render_invoice,
)
from meterd.billing._metrics import BillingCollector
from meterd.billing._render import render_summary
from meterd.model import DAY_MS, HOUR_MS, Aggregation, Event, Meter
from tests.accounts.test_accounts import running

NOV = Period(2026, 11)
DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",), unit="dyno-seconds")
PEAK = Meter("postgres.storage_bytes", Aggregation.MAX, ("database",), unit="bytes")
METERS = {m.name: m for m in (DYNO, PEAK)}
CAPPED = PriceRule(
    DYNO.name, Decimal("0.01"), date(2026, 1, 1), daily_cap=Decimal(86400), name="standard dynos"
)
STORAGE = PriceRule(PEAK.name, Decimal("0.001"), date(2026, 1, 1), name="storage, peak")


def day(n: int) -> int:
    return NOV.start_ms + n * DAY_MS


def dyno(id: str, seconds: int, at: int, received: int = 0) -> Event:
    return Event(id, "acme", DYNO.name, seconds, at, (("size", "std"),), received_at=received)


def restated(b: Billing) -> dict[str, float]:
    """``meterd_billing_restatements_total`` as /metrics would read it, the zeros left out."""
    [family] = BillingCollector(b).collect()
    return {s.labels["cause"]: s.value for s in family.samples if s.value}


@asynccontextmanager
async def billing(tmp_path: Path, *rules: PriceRule) -> AsyncIterator[Billing]:
    async with running(tmp_path, meters=METERS) as accounts:
        db = BillingDB(tmp_path / "billing.sqlite3")
        try:
            book = PriceBook(rules or (CAPPED, STORAGE), METERS)
            yield Billing(accounts, await db.open(), book, clock=lambda: NOV.end_ms + 1)
        finally:
            await db.aclose()


async def test_a_capped_line_says_its_cap_in_words_with_units_and_rule_name(
    tmp_path: Path,
) -> None:
    async with billing(tmp_path) as b:
        # 30 days of 100,000 s: over the month's cap of 86,400 s a day.
        events = [dyno(f"d{n}", 100_000, day(29 - n) + HOUR_MS) for n in range(30)]
        await b.accounts.ingest("acme", events)
        explained = (await b.explain("acme", NOV, 1, limit=5)).to_json()
        assert explained["unit"] == "dyno-seconds"
        assert explained["cap"] == {
            "cap": "2592000",
            "daily": "86400",
            "days": 30,
            "capped": True,
            "used_before": "0",
        }
        text = render_explanation(explained, currency="USD").splitlines()
        assert text[2] == "  usage 3000000 dyno-seconds"
        assert text[3] == (
            "  billed 2592000 dyno-seconds: capped, at most 86400 dyno-seconds a day x 30 days"
            " = 2592000 dyno-seconds"
        )
        assert text[4] == ("  2592000 x 0.01 per unit = 25920.00 USD, priced by standard dynos")
        shown = [row.split()[2] for row in text if row.startswith("  2026-11-") and " d" in row]
        assert shown == ["d4", "d3", "d2", "d1", "d0"]  # the page in time order, not as received
        invoice = (await b.invoice("acme", NOV)).to_json()
        summary = render_summary(invoice, [explained])
        assert (
            "1. dyno.seconds size=std, from 2026-11-01: 3000000 dyno-seconds used, billed 2592000"
            " (capped: at most 86400 dyno-seconds a day x 30 days = 2592000 dyno-seconds)"
            " x 0.01 = 25920.00 USD (standard dynos)"
        ) in summary


async def test_a_max_line_names_the_event_that_set_the_peak(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        db = (("database", "main"),)
        await b.accounts.ingest(
            "acme",
            [
                Event("p-low", "acme", PEAK.name, 700, day(3), db),
                Event("p-peak", "acme", PEAK.name, 900, day(2), db),
                Event("p-late", "acme", PEAK.name, 900, day(9), db),
            ],
        )
        explained = (await b.explain("acme", NOV, 1)).to_json()
        assert explained["decided_by"]["id"] == "p-peak"  # the first at the peak
        assert explained["cap"] is None
        assert explained["currency"] == "USD"
        text = render_explanation(explained)  # the currency comes with the explanation
        assert "  900 x 0.001 per unit = 0.90 USD, priced by storage, peak" in text
        assert "  the peak was set by event p-peak: 900 bytes at 2026-11-03 00:00:00.000" in text
        assert "priced by storage, peak" in text


async def test_a_restatement_names_the_late_events_and_the_dimensions(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await b.accounts.ingest("acme", [dyno("on-time", 100, day(1), received=day(1))])
        await b.close_period(NOV, by="ops")
        late = [dyno(f"late-{n}", 10, day(5), received=NOV.end_ms + 100) for n in range(12)]
        await b.accounts.ingest("acme", late)
        [restatement] = await b.restatements("acme", NOV)
        [cause] = restatement.causes
        assert cause.startswith("12 late events received after the figures were fixed")
        assert cause.endswith(": " + ", ".join(f"late-{n}" for n in range(10)) + " and 2 more")
        assert restated(b) == {"late_events": 1}
        text = render_invoice((await b.invoice("acme", NOV)).to_json())
        assert (
            "    dyno.seconds size=std from 2026-11-01: usage 100 -> 220, quantity 100 -> 220,"
            " amount 1 -> 2.2 (1.20 USD)"
        ) in text.splitlines()


async def test_a_restatement_names_a_price_book_change(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await b.accounts.ingest("acme", [dyno("one", 100, day(1), received=day(1))])
        await b.close_period(NOV, by="ops")
        cheaper = PriceRule(DYNO.name, Decimal("0.005"), date(2026, 11, 1), name="november offer")
        b.book = PriceBook((CAPPED, cheaper, STORAGE), METERS)
        [restatement] = await b.restatements("acme", NOV)
        assert restatement.causes == (
            "the price book changed: dyno.seconds size=std from 2026-11-01 is priced by"
            " november offer at 0.005 (was standard dynos at 0.01)",
        )
        assert restated(b) == {"price_book": 1}
