"""Idempotency keys of corrections (docs/billing.md "Retrying a correction"): the billing
database's schema v4 (migrated from v3 in place), a retry answered with the first record, a
different request under a key refused naming the field, and the property that any
interleaving of retries of keyed corrections records what sending each once records."""

from __future__ import annotations

import sqlite3
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.billing import (
    AdjustmentKind,
    AdjustmentRequest,
    Billing,
    BillingDB,
    Conflict,
    InvalidRequest,
)
from meterd.billing._db import MIGRATIONS, SCHEMA_VERSION
from meterd.billing._errors import Unavailable
from meterd.model import Window
from tests.billing.test_billing import DAY, DYNO, NOV, billing, dyno, ingest


async def credit(
    b: Billing, key: str | None, quantity: str = "30", day: int = 1, reason: str = "goodwill"
) -> Any:
    return await b.adjust(
        "acme",
        DYNO.name,
        DAY[day],
        Window.DAY,
        {"size": "std"},
        AdjustmentKind.CREDIT,
        quantity,
        "alice",
        reason,
        key=key,
    )


async def test_a_version_3_database_migrates_in_place_and_keeps_its_corrections(
    tmp_path: Path,
) -> None:
    path = tmp_path / "billing.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:3]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(
        "INSERT INTO adjustments (account, meter, start, end_ms, dims, kind, quantity,"
        " made_by, made_at, reason) VALUES ('acme', 'dyno.seconds', 0, 60000, '[\"std\"]',"
        " 'credit', '5', 'alice', 1, 'old')"
    )
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    db = await BillingDB(path).open()
    try:
        [old] = await db.adjustments("acme", 0, 1)
        assert (old.id, old.key, old.reason) == (1, None, "old")
        wanted = AdjustmentRequest(
            "acme", DYNO.name, 0, 60_000, ("std",), AdjustmentKind.CREDIT, Decimal(5),
            "alice", "old", key="k",
        )  # fmt: skip
        new = await db.add_adjustment(wanted, 2)
        assert (new.id, new.key, new.replayed) == (2, "k", False)
        again = await db.add_adjustment(wanted, 3)
        assert (again.id, again.at, again.replayed) == (2, 2, True)
        assert [a.id for a in await db.adjustments("acme", 0, 1)] == [1, 2]
    finally:
        await db.aclose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE adjustments SET idempotency_key = 'other'")
    finally:
        conn.close()


async def test_a_retry_records_nothing_and_answers_the_first_record(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1), dyno("b", "10", 2))
        first, _ = await credit(b, "ticket-1")
        again, _ = await credit(b, "ticket-1", "30.00")  # the same quantity
        assert again == first
        assert again.replayed
        assert not first.replayed
        void, _ = await b.void_event("acme", "b", "bob", "twice", key="void-b")
        void_again, _ = await b.void_event("acme", "b", "bob", "twice", key="void-b")
        assert void_again == void
        assert void_again.replayed
        assert len(await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms)) == 1
        assert len(await b.db.voids("acme")) == 1
        assert (await b.invoice("acme", NOV)).invoice.total == Decimal("0.70")


async def test_retries_at_the_same_time_record_once(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        answers: list[Any] = []

        async def send() -> None:
            answers.append((await credit(b, "k"))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(send)
        assert len({a.id for a in answers}) == 1
        assert sorted(a.replayed for a in answers) == [False, True, True, True, True]
        assert len(await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms)) == 1


async def test_a_closed_months_retry_answers_the_restatement_it_caused(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        await b.close_period(NOV, by="ops")
        _first, restated = await credit(b, "k")
        again, restated_again = await credit(b, "k")
        assert restated is not None
        assert restated_again == restated
        assert again.replayed
        assert len(await b.restatements("acme", NOV)) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": "31"}, "quantity"),
        ({"day": 2}, "start"),
        ({"reason": "other"}, "reason"),
    ],
)
async def test_another_request_under_a_key_is_a_conflict_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    async with billing(tmp_path) as b:
        await ingest(b.accounts, dyno("a", "100", 1))
        await credit(b, "k")
        with pytest.raises(Conflict) as caught:
            await credit(b, "k", **change)
        assert (caught.value.code, caught.value.parameter) == ("idempotency_conflict", field)
        assert "'k'" in str(caught.value)
        assert "adjustment #1" in str(caught.value)
        with pytest.raises(Conflict, match="differs in 'operation'"):
            await b.void_event("acme", "a", "alice", "goodwill", key="k")
        assert len(await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms)) == 1


async def test_a_fence_that_lapsed_by_the_commit_writes_nothing(tmp_path: Path) -> None:
    # cluster mode: the shard's lease is asked inside the transaction, right before COMMIT
    asked: list[str] = []

    def lapsed() -> str:
        asked.append("fence")
        return "shard 3: lease lost"

    wanted = AdjustmentRequest(
        "acme", DYNO.name, DAY[1], DAY[2], ("std",), AdjustmentKind.CREDIT, Decimal(5),
        "alice", "why", key="k",
    )  # fmt: skip
    async with billing(tmp_path) as b:
        with pytest.raises(Unavailable, match="lease lost") as caught:
            await b.record_adjustment(wanted, 0, log_seq=7, fence=lapsed)
        assert caught.value.code == "fenced"
        assert asked == ["fence"]
        assert await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms) == []
        assert await b.db.logged_correction(7) is None
        assert await b.db.keyed("acme", "k") is None
        held, _ = await b.record_adjustment(wanted, 0, log_seq=7, fence=lambda: None)
        assert await b.db.logged_correction(7) == held


async def test_a_key_must_be_printable_and_at_most_200_characters(tmp_path: Path) -> None:
    async with billing(tmp_path) as b:
        for bad in ("", " k", "k ", "k\n", "x" * 201, "ключ"):
            with pytest.raises(InvalidRequest) as caught:
                await credit(b, bad)
            assert caught.value.parameter == "Idempotency-Key"
        await credit(b, "x" * 200)
        await credit(b, "a key with spaces inside")


# ---- the property ----------------------------------------------------------------------------

# A set of keyed corrections: credits of distinct days and quantities, and voids of events.
_CORRECTIONS = [("adjust", day, str(day * 3)) for day in range(1, 5)] + [
    ("void", 0, event) for event in ("e1", "e2", "e3")
]


async def _record(folder: Path, sends: list[int]) -> tuple[Any, ...]:
    """Send the corrections of ``_CORRECTIONS`` numbered by ``sends`` in that order, each
    under its own key; the audit (every record but its server time) and the invoice."""
    async with billing(folder) as b:
        await ingest(
            b.accounts,
            *(dyno(f"e{n}", str(n * 10), n) for n in range(1, 4)),
            dyno("e0", "1000", 0),
        )
        for number in sends:
            kind, day, what = _CORRECTIONS[number]
            if kind == "adjust":
                record, _ = await credit(b, f"key-{number}", what, day)
            else:
                record, _ = await b.void_event("acme", what, "bob", "twice", key=f"key-{number}")
            assert record.key == f"key-{number}"
        adjustments = await b.db.adjustments("acme", NOV.start_ms, NOV.end_ms)
        voids = await b.db.voids("acme")
        invoice = (await b.invoice("acme", NOV)).invoice
    return (
        [(a.id, a.start, a.quantity, a.key) for a in adjustments],
        [(v.id, v.event_id, v.key) for v in voids],
        invoice.total,
        [(line.quantity, line.amount) for line in invoice.lines],
    )


_sends = st.lists(st.integers(0, len(_CORRECTIONS) - 1), min_size=1, max_size=3 * len(_CORRECTIONS))


def _check(sends: list[int]) -> None:
    once = list(dict.fromkeys(sends))  # each sent once, in the order of its first send
    with tempfile.TemporaryDirectory() as tmp:
        retried = trio.run(_record, Path(tmp) / "retried", sends)
        single = trio.run(_record, Path(tmp) / "once", once)
    assert retried == single


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sends=_sends)
def test_any_interleaving_of_retries_records_what_sending_each_once_records(
    sends: list[int],
) -> None:
    _check(sends)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sends=_sends)
def test_any_interleaving_of_retries_records_what_sending_each_once_records_long(
    sends: list[int],
) -> None:
    _check(sends)
