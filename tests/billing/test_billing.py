"""``meterd.billing.Billing`` over a real store and accounts layer: invoices, corrections,
closing and restatements, explanations down to the events."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meterd.accounts.service import Accounts
from meterd.billing import (
    Adjustment,
    AdjustmentKind,
    AdjustmentRequest,
    Billing,
    BillingDB,
    Conflict,
    Explanation,
    InvalidRequest,
    InvoiceLine,
    LineChange,
    NotFound,
    Period,
    PriceBook,
    PriceRule,
    Restatement,
    VoidRequest,
    render_explanation,
    render_invoice,
)
from meterd.model import DAY_MS, HOUR_MS, Aggregation, Event, Meter, Window
from tests.accounts.test_accounts import running, submit

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",))
PEAK = Meter("postgres.storage_bytes", Aggregation.MAX)
USERS = Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user")
METERS = {m.name: m for m in (DYNO, PEAK, USERS)}
NOV = Period(2026, 11)
DAY = [NOV.start_ms + d * DAY_MS for d in range(30)]
BOOK = PriceBook(
    [
        PriceRule(DYNO.name, Decimal("0.01"), date(2026, 1, 1)),
        PriceRule(PEAK.name, Decimal("0.001"), date(2026, 1, 1)),
        PriceRule(USERS.name, Decimal("0.5"), date(2026, 1, 1)),
    ],
    METERS,
)


def dyno(id: str, seconds: str, day: int = 0, size: str = "std", account: str = "acme") -> Event:
    return Event(id, account, DYNO.name, Decimal(seconds), DAY[day] + HOUR_MS, (("size", size),))


def peak(id: str, size: int, day: int = 0) -> Event:
    return Event(id, "acme", PEAK.name, size, DAY[day])


@asynccontextmanager
async def billing(tmp_path: Path, book: PriceBook = BOOK) -> AsyncIterator[Billing]:
    async with running(tmp_path, meters=METERS) as accounts:
        db = BillingDB(tmp_path / "billing.sqlite3")
        try:
            yield Billing(accounts, await db.open(), book, clock=lambda: NOV.end_ms + 1)
        finally:
            await db.aclose()


async def all_events(b: Billing, account: str, line: int) -> Explanation:
    """The explanation of a line with every event page merged (pages of 2)."""
    first = await b.explain(account, NOV, line, limit=2)
    events = list(first.events)
    cursor = first.next_cursor
    while cursor is not None:
        page = await b.explain(account, NOV, line, cursor=cursor, limit=2)
        assert len(page.events) <= 2
        events.extend(page.events)
        cursor = page.next_cursor
    return Explanation(
        first.account,
        first.meter,
        first.start,
        first.end,
        first.filter,
        first.value,
        first.windows,
        tuple(events),
        None,
        first.adjustments,
        first.voids,
        first.line,
    )


async def adjust(
    b: Billing, day: int, quantity: str, by: str, reason: str, credit: bool = True
) -> tuple[Adjustment, Restatement | None]:
    """A credit (or debit) of ``quantity`` dyno-seconds of size std on day ``day``."""
    kind = AdjustmentKind.CREDIT if credit else AdjustmentKind.DEBIT
    return await b.adjust(
        "acme", DYNO.name, DAY[day], Window.DAY, {"size": "std"}, kind, quantity, by, reason
    )


async def ingest(accounts: Accounts, *events: Event) -> None:
    verdict = await accounts.ingest(events[0].account, list(events))
    assert len(verdict.accepted) == len(events)


async def test_invoice_and_explanation_down_to_the_events(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(
            b.accounts,
            dyno("a", "100", 1),
            dyno("b", "50.5", 1),
            dyno("c", "10", 3, "perf"),
            dyno("d", "7", 9),
            dyno("e", "3", 29),
        )
        view = await b.invoice("acme", NOV)
        assert view.status == "open"
        lines = [(dict(ln.dims)["size"], ln.quantity, ln.amount) for ln in view.invoice.lines]
        assert lines == [
            ("perf", Decimal(10), Decimal("0.10")),
            ("std", Decimal("160.5"), Decimal("1.60")),
        ]
        assert view.invoice.total == Decimal("1.70")
        explained = await all_events(b, "acme", 2)
        assert [e.event.id for e in explained.events] == ["a", "b", "d", "e"]  # journal order
        assert {e.status for e in explained.events} == {"counted"}
        assert [(w.start, w.value) for w in explained.windows] == [
            (DAY[1], Decimal("150.5")),
            (DAY[9], Decimal(7)),
            (DAY[29], Decimal(3)),
        ]
        assert explained.events[2].window == DAY[9]
        assert explained.notes == ()
        with pytest.raises(NotFound, match="no line 3"):
            await b.explain("acme", NOV, 3)


async def test_explanations_list_the_duplicates_and_conflicts_in_their_windows(
    tmp_path: Path,
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("c", "10", 3, "perf"), dyno("d", "7", 9))
        # The producers' path (Accounts.submit: the writer decides, and records).
        verdicts = await submit(
            b.accounts,
            [("acme", [dyno("a", "100", 1), dyno("d", "8", 9), dyno("c", "10", 3, "perf")])],
        )
        assert verdicts == [([], [0, 2], [1])]
        std = await b.explain("acme", NOV, 2, limit=1)  # one entry per page
        assert [(e.entry.kind, e.entry.event_id, e.window) for e in std.audit] == [
            ("duplicate", "a", DAY[1])
        ]
        assert std.audit[0].entry.batch_id == 1  # the batch that counted "a"
        assert std.audit_next_cursor is not None
        rest = await b.explain("acme", NOV, 2, limit=1, audit_cursor=std.audit_next_cursor)
        [conflict] = rest.audit
        assert (conflict.entry.code, conflict.entry.event_id, conflict.window) == (
            "id_conflict",
            "d",
            DAY[9],
        )
        assert rest.audit_next_cursor is None
        # The perf line's filter keeps its own duplicate only; the figures are unchanged.
        perf = await b.explain("acme", NOV, 1)
        assert [(e.entry.kind, e.entry.event_id) for e in perf.audit] == [("duplicate", "c")]
        assert perf.value == Decimal(10)
        doc = std.to_json()
        assert doc["audit"][0]["properties"] == {"size": "std"}
        assert "duplicate (counted in batch 1)" in render_explanation(doc)
        # A usage figure of the day lists what touched it.
        day = await b.explain_usage("acme", DYNO.name, DAY[9], Window.DAY)
        assert [e.entry.event_id for e in day.audit] == ["d"]
        with pytest.raises(InvalidRequest, match="audit_cursor"):
            await b.explain("acme", NOV, 2, audit_cursor="nonsense")


async def test_a_void_really_removes_a_maximum_and_shows_everywhere(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        # two readings in the same minute window: voiding the max must fall back to the other
        await ingest(b.accounts, peak("p1", 500, 2), peak("p2", 9000, 2), peak("p3", 700, 5))
        assert (await b.invoice("acme", NOV)).invoice.lines[0].quantity == 9000
        void, restatement = await b.void_event("acme", "p2", by="ops", reason="bad reading")
        assert restatement is None  # the period is open
        [line] = (await b.invoice("acme", NOV)).invoice.lines
        assert (line.quantity, line.amount) == (Decimal(700), Decimal("0.70"))
        rows = await b.usage("acme", PEAK.name, DAY[0], DAY[10], Window.DAY)
        assert [(s, v) for s, _e, v, _g in rows] == [(DAY[2], Decimal(500)), (DAY[5], Decimal(700))]
        explained = await b.explain("acme", NOV, 1)
        assert {e.event.id: e.status for e in explained.events} == {
            "p1": "counted",
            "p2": "voided",
            "p3": "counted",
        }
        assert explained.voids == (void,)
        assert explained.events[1].void == void.id
        # the event is still in the journal: nothing was edited or deleted
        page = await b.accounts.store.reader.events("acme", None, DAY[0], DAY[29], 10)
        assert [e.id for e in page.events] == ["p1", "p2", "p3"]
        with pytest.raises(Conflict, match="already void"):
            await b.void_event("acme", "p2", by="ops", reason="again")
        with pytest.raises(NotFound, match="no event 'nope'"):
            await b.void_event("acme", "nope", by="ops", reason="x")


async def test_unique_count_is_distinct_over_the_month_and_voids_recount(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        events = [
            Event(f"u{d}{u}", "acme", USERS.name, 1, DAY[d], (("user", u),))
            for d in (1, 2, 3)
            for u in "ab"
        ]
        await ingest(
            b.accounts, *events, Event("solo", "acme", USERS.name, 1, DAY[4], (("user", "c"),))
        )
        assert (await b.invoice("acme", NOV)).invoice.lines[0].quantity == 3  # not 7
        await b.void_event("acme", "solo", by="ops", reason="test user")
        assert (await b.invoice("acme", NOV)).invoice.lines[0].quantity == 2
        await b.void_event("acme", "u1a", by="ops", reason="x")  # 'a' still active on days 2, 3
        assert (await b.invoice("acme", NOV)).invoice.lines[0].quantity == 2


async def test_adjustments_show_in_usage_invoice_and_explanation(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        credit, _ = await adjust(b, 1, "40", "alice", "outage on the 2nd")
        debit, _ = await adjust(b, 4, "5.5", "bob", "missed usage", credit=False)
        rows = await b.usage("acme", DYNO.name, DAY[0], DAY[10], Window.DAY, "size")
        assert [(s, v, g) for s, _e, v, g in rows] == [
            (DAY[1], Decimal(60), {"size": "std"}),
            (DAY[4], Decimal("5.5"), {"size": "std"}),
        ]
        [line] = (await b.invoice("acme", NOV)).invoice.lines
        assert (line.usage, line.adjusted, line.quantity, line.amount) == (
            Decimal(100),
            Decimal("-34.5"),
            Decimal("65.5"),
            Decimal("0.66"),
        )
        assert line.adjustments == (credit.id, debit.id)
        explained = await b.explain("acme", NOV, 1)
        assert [a.by for a in explained.adjustments] == ["alice", "bob"]
        usage = await b.explain_usage("acme", DYNO.name, DAY[1], Window.DAY, {"size": "std"})
        assert usage.value == Decimal(60)
        assert [a.id for a in usage.adjustments] == [credit.id]
        assert [e.event.id for e in usage.events] == ["a"]
        assert [(w.start, w.value) for w in usage.windows] == [(DAY[1] + HOUR_MS, Decimal(100))]


@pytest.mark.parametrize(
    ("meter", "options", "message"),
    [
        (PEAK.name, {}, "only sum and count meters"),
        ("nope", {}, "not configured"),
        (DYNO.name, {"quantity": "-1"}, "quantity: must be"),
        (DYNO.name, {"quantity": "NaN"}, "quantity: must be a decimal"),
        (DYNO.name, {"quantity": "1e999999"}, "quantity: must be a decimal"),
        (DYNO.name, {"quantity": "0"}, "quantity: must be greater than 0"),
        (DYNO.name, {"quantity": "x"}, "quantity: must be a decimal"),
        (DYNO.name, {"start": DAY[1] + 1}, "start: .* not aligned"),
        (DYNO.name, {"dimensions": {"region": "eu"}}, "dimensions: 'region'"),
        (DYNO.name, {"by": " "}, "by: must be"),
        (DYNO.name, {"reason": ""}, "reason: must be"),
    ],
)
async def test_bad_adjustments_are_refused_with_the_field_named(
    tmp_path: Path, meter: str, options: dict[str, object], message: str
) -> None:
    args: dict[str, Any] = {
        "start": DAY[1],
        "dimensions": {},
        "quantity": "1",
        "by": "ops",
        "reason": "why",
    } | options
    async with billing(tmp_path) as b:
        with pytest.raises((InvalidRequest, NotFound), match=message):
            await b.adjust(
                "acme",
                meter,
                args["start"],
                Window.DAY,
                args["dimensions"],
                AdjustmentKind.CREDIT,
                args["quantity"],
                args["by"],
                args["reason"],
            )


async def test_a_closed_period_changes_only_through_restatements(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        await ingest(b.accounts, dyno("b", "100", 2, account="beta"))
        b.clock = lambda: NOV.end_ms - 1
        with pytest.raises(Conflict, match="not over"):
            await b.close_period(NOV, by="ops")
        b.clock = lambda: NOV.end_ms + 1
        closure = await b.close_period(NOV, by="ops")
        assert closure.accounts == 2
        with pytest.raises(Conflict, match="already closed"):
            await b.close_period(NOV, by="ops")
        view = await b.invoice("acme", NOV)
        assert (view.status, view.closed_total, view.restatements) == ("closed", Decimal(1), ())
        # a late event for the closed month: visible as a restatement, not a silent change
        await ingest(b.accounts, dyno("late", "50", 20))
        [late] = await b.restatements("acme", NOV)
        assert (late.old_total, late.new_total, late.difference) == (
            Decimal(1),
            Decimal("1.50"),
            Decimal("0.50"),
        )
        [change] = late.changes
        assert (change.old.quantity, change.new.quantity) == (100, 150)  # type: ignore[union-attr]
        assert change.why == ("usage 100 -> 150", "quantity 100 -> 150", "amount 1 -> 1.5")
        assert "late events" in late.causes[0]
        assert await b.restatements("acme", NOV) == [late]  # asking again restates nothing
        # a correction of a closed month is restated at once, naming the correction
        adjustment, restated = await adjust(b, 1, "30", "alice", "goodwill")
        assert restated is not None
        assert restated.causes == (adjustment.describe(),)
        assert restated.difference == Decimal("-0.30")
        _void, voided = await b.void_event("acme", "late", by="bob", reason="duplicate meter")
        assert voided is not None
        assert "void" in voided.causes[0]
        view = await b.invoice("acme", NOV)
        assert view.closed_total == Decimal(1)  # the closing figures are still those
        assert (
            view.closed_total + sum(r.difference for r in view.restatements) == view.invoice.total
        )
        assert view.invoice.total == Decimal("0.70")
        # the other account never changed
        beta = await b.invoice("beta", NOV)
        assert (beta.closed_total, beta.invoice.total) == (Decimal(1), Decimal(1))
        assert beta.restatements == ()


async def test_billing_records_are_append_only(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "1", 1))
        await b.adjust(
            "acme", DYNO.name, DAY[1], Window.DAY, {}, AdjustmentKind.DEBIT, "1", "ops", "why"
        )
        await b.void_event("acme", "a", "ops", "why")
        await b.close_period(NOV, by="ops")
    conn = sqlite3.connect(tmp_path / "billing.sqlite3")
    try:
        for sql in (
            "UPDATE adjustments SET quantity = '100'",
            "DELETE FROM adjustments",
            "DELETE FROM voids",
            "UPDATE closed_invoices SET total = '0'",
            "DELETE FROM closures",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


async def test_the_billing_database_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    from meterd.billing import BillingError

    with pytest.raises(BillingError, match="not a meterd billing database"):
        await BillingDB(path).open()


async def test_json_shapes_carry_decimals_as_strings(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100.25", 1))
        credit, _ = await adjust(b, 1, "0.25", "alice", "goodwill")
        await b.close_period(NOV, by="ops")
        await ingest(b.accounts, dyno("late", "1", 2))
        view = json.loads(json.dumps((await b.invoice("acme", NOV)).to_json()))
        assert view["status"] == "closed"
        assert view["closed"] == {"by": "ops", "at": NOV.end_ms + 1, "total": "1.00"}
        assert view["total"] == "1.01"
        [line] = view["lines"]
        assert line["quantity"] == "101"
        assert line["dimensions"] == {"size": "std"}
        assert line["adjustments"] == [credit.id]
        [restatement] = view["restatements"]
        assert (restatement["old_total"], restatement["difference"]) == ("1.00", "0.01")
        assert restatement["changes"][0]["old"]["usage"] == "100.25"
        explained = json.loads(json.dumps((await b.explain("acme", NOV, 1)).to_json()))
        assert [e["quantity"] for e in explained["events"]] == ["100.25", "1"]
        assert explained["adjustments"][0]["dimensions"] == {"size": "std"}
        assert explained["adjustments"][0]["quantity"] == "0.25"
        assert explained["value"] == "101"


async def test_an_explanation_renders_readably(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("b", "7", 1), dyno("c", "3", 4))
        await adjust(b, 1, "40", "alice", "outage on the 2nd")
        await b.void_event("acme", "b", "bob", "sent twice under two ids")
        doc = (await b.explain("acme", NOV, 1, limit=2)).to_json()
        text = render_explanation(doc, currency="USD")
        lines = text.splitlines()
        assert lines[0] == "acme: invoice line 1: dyno.seconds"
        assert lines[1].startswith("  size=std, 2026-11-01 00:00:00.000 to 2026-12-01")
        assert lines[2:5] == [
            "  usage 103 dyno.seconds, corrections -40 (adjustments below)",
            "  billed 63 dyno.seconds",
            "  63 x 0.01 per unit = 0.63 USD, priced by prices[0] (dyno.seconds from 2026-01-01)",
        ]
        assert "  2026-11-02 00:00:00.000  100" in lines
        assert any(" b " in ln and "voided (void #1)" in ln for ln in lines)
        assert f"  more: --cursor {doc['next_cursor']}" in lines
        assert any(
            ln.startswith("  #1 credit 40 on 2026-11-02") and "by alice" in ln for ln in lines
        )
        assert any(ln.startswith("  #1 event b (7 at 2026-11-02 01:00:00.000)") for ln in lines)
        assert lines[-2:] == ["duplicates and rejected events (0 on this page):", "  (none)"]


async def test_an_invoice_renders_with_its_closing_and_restatements(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("c", "10", 3, "perf"))
        await b.close_period(NOV, by="ops")
        await ingest(b.accounts, dyno("late", "50", 20))
        text = render_invoice((await b.invoice("acme", NOV)).to_json())
        lines = text.splitlines()
        assert lines[0] == "acme: invoice 2026-11 (closed), USD"
        assert lines[1].split() == [
            "#",
            "meter",
            "dimensions",
            "from",
            "quantity",
            "unit",
            "price",
            "amount",
        ]
        assert lines[2].split() == [
            "1",
            "dyno.seconds",
            "size=perf",
            "2026-11-01",
            "10",
            "0.01",
            "0.10",
        ]
        assert lines[3].split() == [
            "2",
            "dyno.seconds",
            "size=std",
            "2026-11-01",
            "150",
            "0.01",
            "1.50",
        ]
        assert "  total 1.60 USD" in lines
        assert "  closed by ops at 2026-12-01 00:00:00.001, total then 1.10" in lines
        assert "  restatement #1 at 2026-12-01 00:00:00.001: 1.10 -> 1.60 (0.50)" in lines
        assert any(ln.startswith("    cause: usage changed") for ln in lines)
        why = "usage 100 -> 150, quantity 100 -> 150, amount 1 -> 1.5"
        assert f"    dyno.seconds size=std from 2026-11-01: {why} (0.50 USD)" in lines


def test_loading_the_config_does_not_load_the_billing_service_or_graphql() -> None:
    import subprocess
    import sys

    code = (
        "import sys, meterd.config, meterd.billing; "
        "heavy = [m for m in ('ariadne', 'graphql', 'meterd.billing._service', 'trio')"
        " if m in sys.modules]; "
        "assert not heavy, heavy; "
        "meterd.billing.Billing; "  # the lazy name still resolves
        "assert 'meterd.billing._service' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_wide_corrections_stay_exact_in_usage_and_restatements(tmp_path: Path) -> None:
    tiny = "0.000000000000000000000000000001"  # 30 places: allowed by the input check
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        await adjust(b, 1, "1", "bob", "missed", credit=False)
        await adjust(b, 1, tiny, "bob", "tiny")
        rows = await b.usage("acme", DYNO.name, DAY[0], DAY[10], Window.DAY)
        assert [v for _s, _e, v, _g in rows] == [Decimal("100.999999999999999999999999999999")]
        wide = InvoiceLine(
            1, "m", (), 0, 1, Decimal(0), Decimal(0), Decimal(0), Decimal(1),
            Decimal("1" + "0" * 30 + ".01"), "r",
        )  # fmt: skip
        change = LineChange(wide.key, None, wide, ("new line",))
        assert change.difference == Decimal("1" + "0" * 30 + ".01")


async def test_a_change_of_unpriced_usage_in_a_closed_period_is_restated(tmp_path: Path) -> None:
    only_dyno = PriceBook([PriceRule(DYNO.name, Decimal("0.01"), date(2026, 1, 1))], METERS)
    async with billing(tmp_path, only_dyno) as b:
        await ingest(b.accounts, dyno("a", "100", 1), peak("p", 5, 2))
        await b.close_period(NOV, by="ops")
        assert await b.restatements("acme", NOV) == []
        await ingest(b.accounts, peak("late", 9, 3))  # a larger maximum: unpriced, not billed
        [restated] = await b.restatements("acme", NOV)
        assert restated.changes == ()
        assert restated.old_total == restated.new_total == Decimal(1)
        assert "late events" in restated.causes[0]
        assert restated.causes[1:] == (f"unpriced usage {PEAK.name} from {NOV.start_ms}: 5 -> 9",)
        assert [u.usage for u in restated.unpriced] == [Decimal(9)]
        assert await b.restatements("acme", NOV) == [restated]  # the new figures hold
        # a void of the larger maximum restates again, naming the void
        void, again = await b.void_event("acme", "late", by="bob", reason="bad reading")
        assert again is not None
        assert again.causes == (
            void.describe(),
            f"unpriced usage {PEAK.name} from {NOV.start_ms}: 9 -> 5",
        )


async def test_a_version_1_database_migrates_and_its_restatements_keep_the_closed_unpriced(
    tmp_path: Path,
) -> None:
    from meterd.billing._db import MIGRATIONS

    path = tmp_path / "billing.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    unpriced = [{"meter": PEAK.name, "dimensions": {}, "start": 0, "end": 1, "usage": "5"}]
    conn.execute(
        "INSERT INTO closed_invoices VALUES ('2026-11', 'acme', '1', '[]', ?)",
        (json.dumps(unpriced),),
    )
    conn.execute(
        "INSERT INTO restatements (period, account, made_at, causes, old_total, new_total,"
        " changes, lines) VALUES ('2026-11', 'acme', 0, '[]', '1', '2', '[]', '[]')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    db = await BillingDB(path).open()
    try:
        figures = await db.figures(NOV, "acme")
        assert figures.total == Decimal(2)
        assert [u.usage for u in figures.unpriced] == [Decimal(5)]
        [old] = await db.restatements("acme", NOV)
        assert old.unpriced == ()
        await db.add_adjustment(
            AdjustmentRequest(
                "acme", DYNO.name, DAY[1], DAY[2], ("std",), AdjustmentKind.CREDIT,
                Decimal(1), "alice", "why",
            ),
            0,
        )  # fmt: skip
        assert await db.corrections_since_fixed(NOV, "acme") == []  # v1 recorded no mark
    finally:
        await db.aclose()


async def test_a_crash_between_a_correction_and_its_restatement_keeps_the_cause(
    tmp_path: Path,
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("b", "10", 2))
        await b.close_period(NOV, by="ops")
        # what adjust() and void_event() commit first; the crash comes before the restatement
        credit = await b.db.add_adjustment(
            AdjustmentRequest(
                "acme", DYNO.name, DAY[1], DAY[2], ("std",), AdjustmentKind.CREDIT,
                Decimal(30), "alice", "goodwill",
            ),
            NOV.end_ms + 2,
        )  # fmt: skip
        void = await b.db.add_void(
            VoidRequest(
                "acme", "b", DYNO.name, DAY[2] + HOUR_MS, ("std",), "10", "bob", "duplicate"
            ),
            NOV.end_ms + 3,
        )  # fmt: skip
    # the restart: a new service on the same files
    async with billing(tmp_path) as b:
        [restated] = await b.restatements("acme", NOV)
        assert restated.causes == (credit.describe(), void.describe())
        assert restated.new_total == Decimal("0.70")
        # named once: a later late event is restated with the generic cause
        await ingest(b.accounts, dyno("late", "100", 3))
        [_, late] = await b.restatements("acme", NOV)
        assert late.causes == (
            "usage changed after the figures were fixed: late events, or a price book or"
            " meter configuration change",
        )
