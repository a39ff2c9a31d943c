"""Billing's CPU work never holds the Trio thread (issue 13, "rating an invoice blocks the
event loop"): while an invoice is rated, the loop still serves ingestion.

Structural checks, not timings: a price book that, half-way through each rating, asks the
Trio loop to ingest an event for another account and waits for its verdict
(``trio.from_thread.run``). That works only if the rating runs on a worker thread while the
loop is free; on the Trio thread itself it raises ``RuntimeError``. The answers' JSON is
checked the same way: built where ``trio.from_thread.run_sync`` can reach a free loop.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from meterd.accounts import service
from meterd.api import billing as routes
from meterd.api.models import AccountPath, InvoicePath, LinePath, PageQuery, UsageExplanationQuery
from meterd.api.operations import parse
from meterd.billing import (
    Billing,
    BillingDB,
    BillingGraphQL,
    Explanation,
    PriceBook,
    Slices,
    encode_json,
    loads_array,
)
from meterd.billing import _json as billing_json
from meterd.billing._service import BUSY_SWITCH_INTERVAL, InvoiceView
from meterd.model import DAY_MS, Event, Meter
from tests.accounts.test_accounts import running
from tests.billing.test_billing import BOOK, DAY, DYNO, METERS, NOV, dyno, ingest
from tests.examples import examples

LINES = 600  # distinct sizes: enough to rate in many steps; the probe is in the middle
PROBED = f"z{LINES // 2:04d}"


class ProbingBook(PriceBook):
    """:data:`BOOK`, which, when the rating reaches the line of size :data:`PROBED`, has
    the Trio loop run :attr:`probe` and waits for it."""

    def __init__(self) -> None:
        super().__init__(BOOK.rules, METERS)
        self.probe: Callable[[], Awaitable[Any]] | None = None
        self.answers: list[Any] = []

    def selector(self, meter: Meter, dims: tuple[str, ...]) -> tuple[bool, ...]:
        if meter.name == DYNO.name and dims == (PROBED,) and self.probe is not None:
            self.answers.append(trio.from_thread.run(self.probe))
        return super().selector(meter, dims)


@asynccontextmanager
async def probed_billing(tmp_path: Path) -> AsyncIterator[tuple[Billing, ProbingBook]]:
    """Billing over ``acme`` with :data:`LINES` distinct sizes in November; each rating
    ingests one event for ``bystander`` half-way (its verdicts in ``book.answers``)."""
    book = ProbingBook()
    async with running(tmp_path, meters=METERS) as accounts:
        db = BillingDB(tmp_path / "billing.sqlite3")
        try:
            b = Billing(accounts, await db.open(), book, clock=lambda: NOV.end_ms + 1)
            events = [dyno(f"e{i}", "1.5", i % 30, f"z{i:04d}") for i in range(LINES)]
            for start in range(0, LINES, 200):
                await ingest(accounts, *events[start : start + 200])
            ids = count()

            async def ingest_bystander() -> list[int]:
                event = Event(f"p{next(ids)}", "bystander", DYNO.name, 1, DAY[2], (("size", "x"),))
                return (await accounts.ingest("bystander", [event])).accepted

            book.probe = ingest_bystander
            yield b, book
        finally:
            await db.aclose()


async def test_ingestion_is_served_while_a_large_invoice_is_rated(tmp_path: Path) -> None:
    async with probed_billing(tmp_path) as (b, book):
        invoice = await b.rate("acme", NOV)
        assert book.answers == [[0]]  # the loop ingested (and acked) while rating was under way
        assert len(invoice.lines) == LINES
        assert invoice.total == Decimal("0.02") * LINES  # 1.5 s at 0.01: 0.015, half-even 0.02
        view = await b.invoice("acme", NOV)
        assert view.invoice == invoice
        assert book.answers == [[0], [0]]


async def test_closing_restating_and_explaining_rate_off_the_event_loop(tmp_path: Path) -> None:
    async with probed_billing(tmp_path) as (b, book):
        closure = await b.close_period(NOV, "ops")
        assert closure.accounts == 1  # the bystander had no usage when the closing began
        assert book.answers == [[0]]
        # a late event: the closed month's next reading rates, compares and restates
        await ingest(b.accounts, dyno("late", "100", 3, "z0001"))
        view = await b.invoice("acme", NOV)
        [restatement] = view.restatements
        assert restatement.difference == Decimal("1.00")
        explained = await b.explain("acme", NOV, 2)
        assert explained.value == Decimal("101.5")
        assert len(book.answers) == 3


class _Daemon:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    async def known_account(self, account: str) -> None:
        del account


@pytest.fixture
def json_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The invoices and explanations whose JSON was built, in order; building one on the
    Trio thread raises (``trio.from_thread`` works from worker threads only)."""
    built: list[str] = []

    def probed(name: str, to_json: Callable[..., dict[str, Any]]) -> Any:
        def wrapper(self: Any, lazy: bool = False) -> dict[str, Any]:
            trio.from_thread.run_sync(built.append, name)
            return to_json(self, lazy)

        return wrapper

    monkeypatch.setattr(InvoiceView, "to_json", probed("invoice", InvoiceView.to_json))
    monkeypatch.setattr(Explanation, "to_json", probed("explanation", Explanation.to_json))
    return built


async def test_graphql_rates_and_builds_answers_off_the_event_loop(
    tmp_path: Path, json_built: list[str]
) -> None:
    """The resolvers run on a worker thread and call the service back on Trio: neither the
    rating they cause nor the answer's JSON may be made there."""
    async with probed_billing(tmp_path) as (b, book):
        query = """query($start: Millis!) { account(id: "acme") {
          invoice(period: "2026-11") { total lines { number } }
          usageExplanation(meter: "dyno.seconds", start: $start, window: DAY, limit: 1) { value }
        } }"""
        status, result = await BillingGraphQL(b).execute(
            {"query": query, "variables": {"start": NOV.start_ms + DAY_MS}}
        )
        assert status == 200
        assert "errors" not in result, result
        invoice = result["data"]["account"]["invoice"]
        assert (len(invoice["lines"]), invoice["total"]) == (LINES, str(Decimal("0.02") * LINES))
        assert book.answers == [[0]]
        assert json_built == ["invoice", "explanation"]


async def test_the_routes_build_large_answers_off_the_event_loop(
    tmp_path: Path, json_built: list[str]
) -> None:
    """The JSON of an invoice or an explanation is built where the loop can be reached
    (a worker thread), not on the Trio thread."""
    async with probed_billing(tmp_path) as (b, _book):
        daemon: Any = _Daemon(b)
        where = {"account": "acme", "period": "2026-11"}
        response = await routes.invoice(daemon, parse(InvoicePath, where))
        assert response.status_code == 200
        assert b'"total":"12.00"' in response.body
        line = parse(LinePath, {**where, "line": "1"})
        response = await routes.line_explanation(daemon, line, parse(PageQuery, {}))
        assert response.status_code == 200
        query = {"meter": "dyno.seconds", "window": "day", "start": str(NOV.start_ms + DAY_MS)}
        response = await routes.usage_explanation(
            daemon, parse(AccountPath, {"account": "acme"}), parse(UsageExplanationQuery, query)
        )
        assert response.status_code == 200
        assert json_built == ["invoice", "explanation", "explanation"]


async def test_a_large_read_of_cells_is_decoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rating first reads the account's cells (``Accounts.states``): a large read is decoded
    on a worker thread, a small one where it is (a thread's hop costs more than it)."""
    on_trio: list[bool] = []
    decode = service.decode  # type: ignore[attr-defined]  # what states() calls

    def observed(meter: Meter, data: bytes) -> Any:
        on_trio.append(trio.lowlevel.in_trio_run())
        return decode(meter, data)

    monkeypatch.setattr(service, "decode", observed)
    monkeypatch.setattr(service, "DECODE_ON_LOOP", LINES)
    async with probed_billing(tmp_path) as (b, _book):
        cells = await b.accounts.states("acme", DYNO, NOV.start_ms, NOV.end_ms)
        assert len(cells) == LINES
        assert on_trio == [False] * LINES
        on_trio.clear()
        await b.accounts.states("acme", DYNO, NOV.start_ms, DAY[15])
        assert on_trio == [True] * (LINES // 2)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.decimals(allow_nan=False).map(str),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=60,
)


@settings(max_examples=examples(150))
@given(document=json_values, slice_=st.integers(1, 4))
def test_json_in_slices_is_what_one_dumps_gives(document: Any, slice_: int) -> None:
    """The slice-by-slice encoding is byte for byte Starlette's ``JSONResponse`` (what the
    routes answered before), and what ``json.dumps`` stored; arrays read back the same."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(billing_json, "SLICE", slice_)
        assert encode_json(document).encode() == bytes(JSONResponse(document).body)
        stored = encode_json(document, ensure_ascii=True, separators=(", ", ": "))
        assert stored == json.dumps(document)
        lazy = {"items": Slices([document, document], lambda item: [item])}
        assert encode_json(lazy) == encode_json({"items": [[document], [document]]})
        as_array = [document, document]
        for indent in (None, 0, 2):
            assert loads_array(json.dumps(as_array, indent=indent)) == as_array


@pytest.mark.parametrize("text", ["{}", "[1,]", "[1] x", "[1 2]", "", "[", "[1,2"])
def test_reading_an_array_in_slices_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (json's own errors are ValueErrors too)
        loads_array(text)


async def test_lazy_documents_encode_as_the_plain_ones(tmp_path: Path) -> None:
    async with probed_billing(tmp_path) as (b, _book):
        view = await b.invoice("acme", NOV)
        assert len(view.invoice.lines) > billing_json.SLICE
        assert encode_json(view.to_json(lazy=True)) == encode_json(view.to_json())
        explained = await b.explain("acme", NOV, 1, limit=3)
        assert encode_json(explained.to_json(lazy=True)) == encode_json(explained.to_json())


async def test_the_switch_interval_is_short_while_billing_works_and_restored_after(
    tmp_path: Path,
) -> None:
    """While a job runs on a worker thread the interpreter hands over to a waking thread
    (the Trio thread, with acks to send) within BUSY_SWITCH_INTERVAL, not the default 5 ms."""
    before = sys.getswitchinterval()
    async with probed_billing(tmp_path) as (b, _book):
        seen = await b.off_loop(sys.getswitchinterval)
        assert seen == min(before, BUSY_SWITCH_INTERVAL)
        assert sys.getswitchinterval() == before
        async with trio.open_nursery() as nursery:  # two at once: restored after the last
            for _ in range(2):
                nursery.start_soon(b.rate, "acme", NOV)
        assert sys.getswitchinterval() == before


class Tracked(tuple[Any, ...]):
    """A tuple that records where it is freed: on the Trio thread or not."""

    freed: ClassVar[list[bool]] = []

    def __del__(self) -> None:
        Tracked.freed.append(trio.lowlevel.in_trio_run())


async def test_large_answers_and_cells_are_freed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freeing a 50,000-line invoice is ~30 ms of the interpreter: the cells a rating read
    and the invoice a route answered are freed on worker threads."""
    async with probed_billing(tmp_path) as (b, _book):
        cells = Billing.cells

        async def tracked_cells(self: Billing, *args: Any) -> Any:
            return Tracked(await cells(self, *args))

        monkeypatch.setattr(Billing, "cells", tracked_cells)
        Tracked.freed = []
        await b.rate("acme", NOV)
        assert Tracked.freed == [False] * len(METERS)  # each meter's cells
        monkeypatch.setattr(Billing, "cells", cells)

        invoice = Billing.invoice

        async def tracked_invoice(self: Billing, *args: Any) -> InvoiceView:
            view = await invoice(self, *args)
            return InvoiceView(replace(view.invoice, lines=Tracked(view.invoice.lines)))

        monkeypatch.setattr(Billing, "invoice", tracked_invoice)
        Tracked.freed = []
        daemon: Any = _Daemon(b)
        where = {"account": "acme", "period": "2026-11"}
        response = await routes.invoice(daemon, parse(InvoicePath, where))
        assert response.status_code == 200
        assert Tracked.freed == [False]
        Tracked.freed = []
        explained = await b.explain("acme", NOV, 3)
        assert explained.line is not None
        assert Tracked.freed == [False]
