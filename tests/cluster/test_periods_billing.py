"""Billing's side of the cluster's closed periods (``Billing.shared_periods``), without NATS:
a month closed in the shared place is closed in every billing database; one that had not
recorded it fixes its figures at its first read; a shared place that cannot answer makes
the read 503, never a month silently open."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.billing import Conflict, Period
from meterd.billing._errors import Unavailable
from tests.billing.test_billing import NOV, adjust, billing, dyno, ingest


@dataclass(frozen=True)
class Closing:
    by: str
    at: int


class Shared:
    """A stand-in for the KV bucket (meterd.cluster._periods.ClosedPeriods)."""

    def __init__(self) -> None:
        self.closed_months: dict[Period, Closing] = {}
        self.down = False
        self.reads = 0

    async def closed(self, period: Period) -> Closing | None:
        self.reads += 1
        if self.down:
            raise ConnectionError("NATS did not answer")
        return self.closed_months.get(period)


async def test_a_month_closed_elsewhere_is_fixed_here_at_its_first_read(tmp_path: Path) -> None:
    shared = Shared()
    async with billing(tmp_path) as b:
        b.shared_periods = shared
        await ingest(b.accounts, dyno("a", "100", 1))
        assert (await b.invoice("acme", NOV)).status == "open"
        shared.closed_months[NOV] = Closing("alice", NOV.end_ms + 5)  # closed on another node
        view = await b.invoice("acme", NOV)
        assert view.status == "closed"
        assert view.closure is not None
        assert (view.closure.by, view.closure.at) == ("alice", NOV.end_ms + 5)
        assert view.closed_total == Decimal(1)
        # a correction of that month is a restatement, as on one node
        _, restatement = await adjust(b, 2, "100", "carol", "goodwill")
        assert restatement is not None
        assert restatement.new_total == Decimal(0)
        # the fan-out of the close that decided it answers with the same closing
        closure = await b.close_period(NOV, by="alice")
        assert (closure.by, closure.at) == ("alice", NOV.end_ms + 5)


async def test_the_shards_close_with_the_shared_by_and_at(tmp_path: Path) -> None:
    shared = Shared()
    async with billing(tmp_path) as b:
        b.shared_periods = shared
        await ingest(b.accounts, dyno("a", "100", 1))
        shared.closed_months[NOV] = Closing("alice", 42)
        closure = await b.close_period(NOV, by="alice")
        assert (closure.by, closure.at, closure.accounts) == ("alice", 42, 1)
        other = Period(2026, 10)
        shared.closed_months[other] = Closing("bob", 7)
        await b.close_period(other, by="bob")
        with pytest.raises(Conflict, match="already closed"):  # not the shared closing
            await b.db.close(other, "mallory", 8, [])


async def test_a_shared_place_that_cannot_answer_is_a_503_not_an_open_month(
    tmp_path: Path,
) -> None:
    shared = Shared()
    async with billing(tmp_path) as b:
        b.shared_periods = shared
        await ingest(b.accounts, dyno("a", "100", 1))
        shared.down = True
        with pytest.raises(Unavailable, match="cannot be read from the cluster") as raised:
            await b.invoice("acme", NOV)
        assert raised.value.status == 503
        with pytest.raises(Unavailable):  # refused before anything is written
            await adjust(b, 2, "1", "carol", "goodwill")
        with pytest.raises(Unavailable):
            await b.void_event("acme", "a", "carol", "wrong")
        shared.down = False
        assert await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms) == []
        assert await b.db.voids("acme", NOV.start_ms, NOV.end_ms) == []
        assert (await b.invoice("acme", NOV)).status == "open"


async def test_without_a_shared_place_nothing_changes(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        assert b.shared_periods is None
        await ingest(b.accounts, dyno("a", "100", 1))
        closure = await b.close_period(NOV, by="ops")
        assert (closure.by, closure.at) == ("ops", NOV.end_ms + 1)
