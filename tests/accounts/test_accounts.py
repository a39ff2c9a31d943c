"""The accounts layer over a real store: exact usage, crashes, poison events, hibernation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from meterd.accounts.service import Accounts, running_accounts
from meterd.model import HOUR_MS, Aggregation, Event, Meter, Window, canonical_quantity
from meterd.store import Store
from tests.store.helpers import inject_apply_fault, layer_options, store_config

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",))
USERS = Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user")
PEAK = Meter("postgres.storage_bytes", Aggregation.MAX)
METERS = {m.name: m for m in (DYNO, USERS, PEAK)}
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS


def dyno(account: str, id: str, seconds: str, minute: int = 0, size: str = "std-1x") -> Event:
    return Event(id, account, DYNO.name, Decimal(seconds), T0 + minute * 60_000, (("size", size),))


@asynccontextmanager
async def running(
    tmp_path: Path, *, meters: dict[str, Meter] | None = None, **options: Any
) -> AsyncIterator[Accounts]:
    async with running_accounts(
        tmp_path / "meterd.sqlite3", meters or METERS, **layer_options(**options)
    ) as accounts:
        yield accounts


async def hourly(accounts: Accounts, account: str, group_by: str | None = None) -> list[Any]:
    rows = await accounts.usage(account, DYNO, T0, T0 + 2 * HOUR_MS, Window.HOUR, group_by)
    return [(r.start - T0, canonical_quantity(r.value), r.group) for r in rows]


async def test_counts_exactly_with_duplicates_and_conflicts(tmp_path: Path) -> None:
    async with running(tmp_path) as accounts:
        verdict = await accounts.ingest(
            "acme", [dyno("acme", "e1", "1.5"), dyno("acme", "e2", "2.25", 5, "perf-l")]
        )
        assert (verdict.accepted, verdict.duplicates, verdict.conflicts) == ([0, 1], [], [])
        again = await accounts.ingest(
            "acme",
            [dyno("acme", "e1", "1.5"), dyno("acme", "e2", "9"), dyno("acme", "e3", "0.25")],
        )
        assert (again.accepted, again.duplicates, again.conflicts) == ([2], [0], [1])
        assert await hourly(accounts, "acme") == [(0, "4", None)]
        assert await hourly(accounts, "acme", "size") == [
            (0, "2.25", {"size": "perf-l"}),
            (0, "1.75", {"size": "std-1x"}),
        ]
        assert await hourly(accounts, "other") == []


async def test_a_crashed_actor_restarts_from_the_store_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as accounts:
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1") for i in range(10)])
        await accounts.checkpoint("acme")  # part in the windows, part only in the journal
        await accounts.ingest("acme", [dyno("acme", f"f{i}", "1") for i in range(5)])
        first = accounts.registry.whereis("acme")
        assert first is not None
        monitor = first.monitor()
        await first.cast(("crash", "drill"))
        assert (await monitor.wait()).kind == "crash"
        # re-sending everything is safe: all duplicates now
        verdict = await accounts.ingest(
            "acme", [dyno("acme", f"e{i}", "1") for i in range(10)] + [dyno("acme", "g", "1")]
        )
        assert len(verdict.duplicates) == 10
        assert verdict.accepted == [10]
        assert await hourly(accounts, "acme") == [(0, "16", None)]
        assert accounts.registry.whereis("acme") not in (None, first)


async def test_a_poison_event_costs_one_restart_and_is_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes: list[str] = []

    def poison(event: Event) -> None:
        if event.id == "poison":
            crashes.append(event.id)
            raise ValueError("cannot apply this event")

    inject_apply_fault(monkeypatch, poison)
    async with running(tmp_path, max_restarts=1, max_seconds=60) as accounts:
        await accounts.ingest("bystander", [dyno("bystander", "b1", "7")])
        # The batch is durable (acknowledged) before its delivery crashes the actor...
        verdict = await accounts.ingest(
            "acme", [dyno("acme", "ok", "1"), dyno("acme", "poison", "5")]
        )
        assert verdict.accepted == [0, 1]
        # ...so the restarted actor replays it, quarantines the poison event, and counts
        # the rest once.
        verdict = await accounts.ingest("acme", [dyno("acme", "ok", "1"), dyno("acme", "p2", "2")])
        assert verdict.duplicates == [0]
        assert await hourly(accounts, "acme") == [(0, "3", None)]
        assert await hourly(accounts, "bystander") == [(0, "7", None)]
        assert crashes == ["poison", "poison"]  # once live, once on replay: then parked
        [parked] = await accounts.store.reader.quarantined("acme")
        assert parked.event_id == "poison"
        assert "cannot apply" in parked.error
        assert accounts.supervisor.status == "running"  # no escalation


async def test_idle_accounts_hibernate_and_wake_from_the_store(tmp_path: Path) -> None:
    async with running(tmp_path, idle_timeout=0.0) as accounts:
        for account in ("a", "b", "c"):
            await accounts.ingest(account, [dyno(account, "e1", "2"), dyno(account, "e2", "3")])
            await accounts.ensure_started(account)  # its delivery wakes it, maybe not yet
        assert len(accounts.supervisor) == 3
        refs = [accounts.registry.whereis(a) for a in "abc"]
        monitors = [ref.monitor() for ref in refs if ref is not None]
        assert len(monitors) == 3
        accounts.sweep_once()
        with trio.fail_after(5):
            exits = [await monitor.wait() for monitor in monitors]
        assert [exit.kind for exit in exits] == ["normal"] * 3  # hibernated, not crashed
        await trio.testing.wait_all_tasks_blocked()
        assert len(accounts.registry) == 0
        assert len(accounts.supervisor) == 0
        verdict = await accounts.ingest("a", [dyno("a", "e1", "2"), dyno("a", "e3", "1")])
        assert (verdict.accepted, verdict.duplicates) == ([1], [0])  # dedupe survived
        assert await hourly(accounts, "a") == [(0, "6", None)]
        assert await hourly(accounts, "b") == [(0, "5", None)]


async def test_racing_wakeups_of_one_account_make_one_actor(tmp_path: Path) -> None:
    async with running(tmp_path) as accounts:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(accounts.ingest, "acme", [dyno("acme", f"e{i}", "1")])
                nursery.start_soon(accounts.ensure_started, "acme")
        assert accounts.supervisor.count_children().active == 1
        assert await hourly(accounts, "acme") == [(0, "20", None)]


async def test_a_clean_stop_checkpoints_so_the_next_start_replays_nothing(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as accounts:
        await accounts.ingest("acme", [dyno("acme", f"e{i}", "1") for i in range(3)])
    store = Store.at(tmp_path / "meterd.sqlite3", store_config())
    try:
        loaded = await store.reader.load_account("acme")
        assert loaded.replay == []  # everything is in the checkpointed windows
        assert len(loaded.windows) == 1
        assert loaded.watermark > 0
    finally:
        await store.aclose()


# ---- the batch path: Accounts.submit, delivery, the in-flight budget ---------------------------


class Reports:
    """An ``on_done`` for :meth:`Accounts.submit` that records what it was given."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.done = trio.Event()

    def __call__(self, outcome: Any) -> None:
        self.outcomes.append(outcome)
        self.done.set()


class Busying(Reports):
    """Reports, and casts a ``tick`` to ``account``'s actor once the batch is delivered:
    the next delivery then finds a cast, not a delivery, last in the mailbox, so it is
    queued apart (or overflows) instead of joining the waiting one. With the intervals
    long, a tick changes nothing."""

    def __init__(self, accounts: Accounts, account: str) -> None:
        super().__init__()
        self.accounts = accounts
        self.account = account

    def __call__(self, outcome: Any) -> None:
        super().__call__(outcome)
        ref = self.accounts.registry.whereis(self.account)
        if ref is not None:
            ref.try_cast(("tick",))


QUIET: dict[str, Any] = {"checkpoint_interval": 3600.0, "idle_timeout": 3600.0}


async def submit(accounts: Accounts, groups: list[tuple[str, list[Event]]]) -> list[Any]:
    report = Reports()
    accounts.submit(groups, report)
    await report.done.wait()
    [outcome] = report.outcomes
    assert isinstance(outcome, list), outcome
    return [(v.accepted, v.duplicates, v.conflicts) for v in outcome]


async def settled(accounts: Accounts) -> None:
    """Everything delivered is applied: the budget is all back (a leak fails here)."""
    with trio.fail_after(10):
        while accounts.budget.used:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()


async def awake(accounts: Accounts, account: str = "acme") -> None:
    """One event (``warm``, 1 s) for ``account``, then its actor running with it applied
    (a delivery wakes a sleeping account's actor, but not before the write returns)."""
    await accounts.ingest(account, [dyno(account, "warm", "1")])
    # A call is handled once the actor's init (its replay) is done, whoever started it:
    # ensure_started returns at once if a wake-up is starting it already.
    await accounts.call(account, ("status",))
    await settled(accounts)


async def test_a_batch_is_decided_by_the_writer_and_applied_by_each_actor(tmp_path: Path) -> None:
    async with running(tmp_path) as accounts:
        first = await submit(
            accounts,
            [
                ("acme", [dyno("acme", "e1", "1.5"), dyno("acme", "e2", "2")]),
                ("globex", [dyno("globex", "e1", "7")]),
            ],
        )
        assert first == [([0, 1], [], []), ([0], [], [])]
        again = await submit(
            accounts,
            [
                (
                    "acme",
                    [dyno("acme", "e1", "1.5"), dyno("acme", "e2", "9"), dyno("acme", "e3", "1")],
                )
            ],
        )
        assert again == [([2], [0], [1])]
        await settled(accounts)
        assert await hourly(accounts, "acme") == [(0, "4.5", None)]
        assert await hourly(accounts, "globex") == [(0, "7", None)]
        assert accounts.wakes == 2  # no actor ran: the commit woke them, they replayed
        assert accounts.budget.used == 0


async def test_an_actor_that_dies_with_deliveries_in_its_mailbox_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three committed batches are delivered at once; the actor crashes on the first
    (a poison event), so the other two die in its mailbox. The next incarnation replays
    all three from the journal (parking the poison event), and the budget they held is
    given back."""
    crashes: list[str] = []

    def poison(event: Event) -> None:
        if event.id == "poison":
            crashes.append(event.id)
            raise ValueError("cannot apply this event")

    inject_apply_fault(monkeypatch, poison)
    async with running(tmp_path) as accounts:
        await awake(accounts)
        reports = [Reports() for _ in range(3)]
        accounts.submit(
            [("acme", [dyno("acme", "a", "1"), dyno("acme", "poison", "5")])], reports[0]
        )
        accounts.submit([("acme", [dyno("acme", "b", "10")])], reports[1])
        accounts.submit([("acme", [dyno("acme", "c", "100")])], reports[2])
        for report in reports:
            await report.done.wait()
        await settled(accounts)
        assert await hourly(accounts, "acme") == [(0, "112", None)]
        assert crashes == ["poison", "poison"]  # live, then on replay: parked
        [parked] = await accounts.store.reader.quarantined("acme")
        assert parked.event_id == "poison"
        assert accounts.budget.used == 0


async def test_a_full_mailbox_delays_delivery_in_order_and_counts_exactly(tmp_path: Path) -> None:
    async with running(tmp_path, mailbox_size=2, **QUIET) as accounts:
        await awake(accounts)
        reports = [Busying(accounts, "acme") for _ in range(12)]
        for n, report in enumerate(reports):
            accounts.submit([("acme", [dyno("acme", f"e{n}", "1")])], report)
        for report in reports:
            await report.done.wait()
        assert accounts.overflows >= 1  # the mailbox of 2 was full: delivered later
        assert await hourly(accounts, "acme") == [(0, "13", None)]
        await settled(accounts)
        assert accounts.budget.used == 0
        assert not accounts.backlogged("acme")


async def test_awaited_and_unawaited_writes_keep_commit_order_behind_a_full_mailbox(
    tmp_path: Path,
) -> None:
    """Deliveries of ``Accounts.ingest`` (awaited) and ``Accounts.submit`` batches of one
    account reach its actor in commit order even while its mailbox is full (an overtaking
    later batch would make the actor skip an earlier one as already applied)."""
    async with running(tmp_path, mailbox_size=2, **QUIET) as accounts:
        await awake(accounts)
        reports = [Busying(accounts, "acme") for _ in range(40)]
        async with trio.open_nursery() as nursery:
            for n, report in enumerate(reports):
                accounts.submit([("acme", [dyno("acme", f"s{n}", "1")])], report)
                nursery.start_soon(accounts.ingest, "acme", [dyno("acme", f"c{n}", "10")])
        for report in reports:
            await report.done.wait()
        assert accounts.overflows >= 1
        assert await hourly(accounts, "acme") == [(0, "441", None)]  # 1 + 40 x 1 + 40 x 10
        await settled(accounts)
        assert not accounts.backlogged("acme")


async def test_a_waiting_delivery_takes_at_most_16_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coalescing is bounded (``COALESCE_LIMIT``): 40 batches of one account committed
    together reach its actor as 3 messages (16 + 16 + 8), all applied, in order."""
    applied: list[str] = []
    inject_apply_fault(monkeypatch, lambda event: applied.append(event.id))
    async with running(tmp_path) as accounts:
        await awake(accounts)
        applied.clear()  # the warm-up event
        reports = [Reports() for _ in range(40)]
        for n, report in enumerate(reports):  # queued before the writer wakes: one group
            accounts.submit([("acme", [dyno("acme", f"a{n}", "1")])], report)
        for report in reports:
            await report.done.wait()
        assert accounts.coalesced == 40 - 3
        await settled(accounts)
        assert await hourly(accounts, "acme") == [(0, "41", None)]
        assert applied == [f"a{n}" for n in range(40)]


async def test_batches_committed_together_reach_a_waiting_actor_as_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of one writer group for the same account are added to the delivery still
    waiting in its actor's mailbox (in commit order) instead of queued apart; a message
    queued behind it (a completion of ``Accounts.ingest``) is never overtaken."""
    applied: list[str] = []
    inject_apply_fault(monkeypatch, lambda event: applied.append(event.id))  # the order
    async with running(tmp_path) as accounts:
        await awake(accounts)
        await accounts.ingest("globex", [dyno("globex", "warm", "1")])
        applied.clear()
        reports = [Reports() for _ in range(4)]
        for n, report in enumerate(reports):  # queued before the writer wakes: one group
            accounts.submit(
                [
                    ("acme", [dyno("acme", f"a{n}", "10")]),
                    ("globex", [dyno("globex", f"g{n}", "2")]),
                ],
                report,
            )
        for report in reports:
            await report.done.wait()
        assert accounts.coalesced == 6  # 3 of each account's 4 batches joined the first
        await settled(accounts)
        assert await hourly(accounts, "acme") == [(0, "41", None)]
        assert await hourly(accounts, "globex") == [(0, "9", None)]
        assert [i for i in applied if i[0] == "a"] == ["a0", "a1", "a2", "a3"]
        applied.clear()

        # A completion queued between two deliveries: the later one is not added to the
        # earlier message, which would apply it before the completion's batch.
        first, second = Reports(), Reports()
        accounts.submit([("acme", [dyno("acme", "b1", "100")])], first)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accounts.ingest, "acme", [dyno("acme", "c1", "1000")])
            await trio.testing.wait_all_tasks_blocked()  # its writer submission is queued
            accounts.submit([("acme", [dyno("acme", "b2", "10000")])], second)
        await second.done.wait()
        await settled(accounts)
        assert await hourly(accounts, "acme") == [(0, "11141", None)]
        assert applied == ["b1", "c1", "b2"]  # commit order
        assert accounts.budget.used == 0


def test_the_apply_path_has_no_test_hook() -> None:
    """Faults are injected from outside (``inject_apply_fault``): the actor applies every
    delivery through ``AccountUsage.apply_events`` alone, with no hook to branch on."""
    from meterd.accounts import actor

    assert not hasattr(actor, "no_fault")
    assert "fault_hook" not in dir(actor.AccountsContext)
    assert "fault_hook" not in Accounts.__init__.__code__.co_names
