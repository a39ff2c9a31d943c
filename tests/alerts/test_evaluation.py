"""Crossings decided in the actor, in counting order, durable with the checkpoint, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from meterd.accounts.service import Accounts

from .helpers import book, dyno, outbox, rule, running


async def _settled(accounts: Accounts, account: str) -> None:
    await accounts.checkpoint(account)


async def test_the_event_that_crosses_is_recorded_once_with_its_checkpoint(
    tmp_path: Path,
) -> None:
    db = tmp_path / "meterd.sqlite3"
    alerts = book(rule("half", "5"), rule("full", "10"), rule("never", "1000"))
    async with running(db, alerts) as accounts:
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1", i) for i in range(4)])
        await accounts.ingest("acme", [dyno("acme", "e4", "1.5", 4), dyno("acme", "e5", "1")])
        await _settled(accounts, "acme")
        rows = outbox(db)
        assert [(r.alert, r.event_id, r.period) for r in rows] == [("half", "e4", "2026-11")]
        body = json.loads(rows[0].body)
        assert body == {
            "id": rows[0].id,
            "type": "alert.triggered",
            "alert": "half",
            "account": "acme",
            "meter": "dyno.seconds",
            "period": "2026-11",
            "threshold": "5",
            "spend": None,
            "value": "5.5",
            "crossed_at": dyno("acme", "e4", "1", 4).time,
            "created_at": body["created_at"],
        }
        # duplicates never cross again; the next rule crosses on its own event
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1", i) for i in range(6)])
        await accounts.ingest("acme", [dyno("acme", "e6", "3.5", 9), dyno("acme", "e7", "9")])
        await _settled(accounts, "acme")
        assert [(r.alert, r.event_id) for r in outbox(db)] == [("half", "e4"), ("full", "e6")]
        assert alerts.durable_crossings == 2


async def test_a_crash_before_the_checkpoint_decides_the_same_crossing_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "meterd.sqlite3"
    ten = rule("ten", "10")
    alerts = book(ten)
    async with running(db, alerts) as accounts:
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1", i) for i in range(9)])
        await _settled(accounts, "acme")  # 9 in the windows
        first = accounts.registry.whereis("acme")
        assert first is not None
        monitor = first.monitor()
        writer = accounts.store.writer
        real = writer.checkpoint
        lost: list[object] = []

        async def dies(*args: Any, **kwargs: Any) -> None:
            outbox = (kwargs.get("rows") or {}).get("alert_outbox")
            if outbox and not lost:  # the process dies before this commits
                lost.extend(outbox)
                raise RuntimeError("power cut")
            await real(*args, **kwargs)

        writer.checkpoint = dies  # type: ignore[method-assign]
        await accounts.ingest("acme", [dyno("acme", "e9", "2", 9)])
        assert (await monitor.wait()).kind == "crash"
        assert outbox(db) == []
        await _settled(accounts, "acme")  # the next actor replays e9 and decides it again
        rows = outbox(db)
        assert [(r.id, r.alert, r.event_id) for r in rows] == [
            (ten.crossing_id("acme", "2026-11"), "ten", "e9")
        ]
        assert len(lost) == 1
        # hibernation and a wake decide nothing new
        awake = accounts.registry.whereis("acme")
        assert awake is not None
        gone = awake.monitor()
        await awake.cast(("hibernate",))
        await gone.wait()
        await accounts.ingest("acme", [dyno("acme", "e10", "5", 10)])
        await _settled(accounts, "acme")
        assert [r.id for r in outbox(db)] == [rows[0].id]


async def test_other_accounts_and_months_are_their_own_periods(tmp_path: Path) -> None:
    db = tmp_path / "meterd.sqlite3"
    alerts = book(rule("ten", "10"), rule("acme-only", "1", accounts=frozenset({"acme"})))
    async with running(db, alerts) as accounts:
        await accounts.ingest("acme", [dyno("acme", "a", "10")])
        await accounts.ingest("beta", [dyno("beta", "b", "9.999")])
        # December
        await accounts.ingest("acme", [dyno("acme", "d", "10", 60 * 24 * 25)])
        for account in ("acme", "beta"):
            await _settled(accounts, account)
        got = sorted((r.account, r.alert, r.period) for r in outbox(db))
        assert got == [
            ("acme", "acme-only", "2026-11"),
            ("acme", "acme-only", "2026-12"),
            ("acme", "ten", "2026-11"),
            ("acme", "ten", "2026-12"),
        ]
        await trio.lowlevel.checkpoint()


async def test_a_wake_loads_the_whole_month_not_only_the_dedupe_window(tmp_path: Path) -> None:
    """Regression: a wake loaded the windows from (now - dedupe window), not from the start
    of that month, so usage early in the month was missing and the crossing came late."""
    db = tmp_path / "meterd.sqlite3"
    alerts = book(rule("ten", "10"))
    early = -28 * 24 * 60  # minutes: 2026-10-13, before the dedupe window (from 10-25)
    async with running(db, alerts) as accounts:
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1", early + i) for i in range(9)])
        await _settled(accounts, "acme")  # its actor is awake (a wake is not immediate)
        actor = accounts.registry.whereis("acme")
        assert actor is not None
        gone = actor.monitor()
        await actor.cast(("hibernate",))
        await gone.wait()
        await accounts.ingest("acme", [dyno("acme", "e9", "1", early + 9)])
        await _settled(accounts, "acme")
        assert [(r.alert, r.event_id, r.period) for r in outbox(db)] == [("ten", "e9", "2026-10")]
