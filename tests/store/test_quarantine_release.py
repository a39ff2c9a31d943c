"""Releasing and discarding quarantined events: the store writer's operations
(``Release``, ``Discard``: meterd/store/_quarantine.py) and the accounts layer applying a
release through the one write path, with a poison event injected from outside the actor."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.accounts.service import Accounts, running_accounts
from meterd.model import HOUR_MS, Aggregation, Event, Meter, Window, canonical_quantity
from meterd.store import QuarantineDecision, QuarantineRefused, Writer
from meterd.store.journal_index import rebuild_tail
from meterd.store.reader import open_reader
from meterd.store.schema import account_bucket, dedupe_row_key
from tests.examples import examples
from tests.store.helpers import ev, inject_apply_fault, layer_options, rows, running, store_config
from tests.store.test_dedupe_retention import collide

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",))
METERS = {DYNO.name: DYNO}
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS


def dyno(account: str, id: str, seconds: str, minute: int = 0) -> Event:
    return Event(id, account, DYNO.name, Decimal(seconds), T0 + minute * 60_000, (("size", "s"),))


async def release(
    writer: Writer, account: str, ids: list[str] | None, by: str = "alice", reason: str = "fixed"
) -> QuarantineDecision:
    """``Writer.submit_release``, awaited."""
    done = trio.Event()
    got: list[Any] = []

    def report(outcome: Any) -> None:
        got.append(outcome)
        done.set()

    writer.submit_release(account, ids, by, reason, report)
    await done.wait()
    if isinstance(got[0], BaseException):
        raise got[0]
    assert isinstance(got[0], QuarantineDecision)
    return got[0]


@asynccontextmanager
async def quarantined_store(tmp_path: Path) -> AsyncIterator[tuple[Writer, Path, int]]:
    """A running writer whose account ``acme`` has batch B = [ok, bad, bad2] with ``bad``
    and ``bad2`` quarantined (as an actor's replay would): ``(writer, path, B)``."""
    path = tmp_path / "store.sqlite3"
    writer = Writer(path, store_config())
    async with running(writer):
        result = await writer.append("acme", [ev("ok"), ev("bad", quantity=5), ev("bad2")])
        batch = result.batch_id
        assert batch is not None
        await writer.quarantine("acme", batch, "bad", "ValueError: cannot apply")
        await writer.quarantine("acme", batch, "bad2", "ValueError: cannot apply")
        yield writer, path, batch


async def test_a_release_moves_the_events_back_to_the_journal_with_an_audit_row(
    tmp_path: Path,
) -> None:
    async with quarantined_store(tmp_path) as (writer, path, batch):
        decision = await release(writer, "acme", ["bad"], by="alice", reason="meter fixed")
        assert decision.action == "released"
        assert [c.event_id for c in decision.settled] == ["bad"]
        assert decision.settled[0].batch_id == batch
        assert decision.settled[0].error == "ValueError: cannot apply"
        assert [e.id for e in decision.events] == ["bad"]
        assert decision.events[0].quantity == 5
        new = decision.batch_id
        assert new is not None
        assert new > batch
        # One transaction wrote the journal batch, the audit row and took it out of quarantine.
        assert rows(path, "SELECT account, count FROM event_batches WHERE batch_id = ?", new) == [
            ("acme", 1)
        ]
        assert rows(path, "SELECT event_id FROM quarantine") == [("bad2",)]
        assert rows(
            path,
            "SELECT batch_id, event_id, action, release_batch, error, by, reason"
            " FROM quarantine_log",
        ) == [(batch, "bad", "released", new, "ValueError: cannot apply", "alice", "meter fixed")]
        # A re-send of the id is still a duplicate (its counted copy is the new batch's).
        again = await writer.append("acme", [ev("bad", quantity=5)])
        assert (again.accepted, again.duplicates) == ([], [0])
        assert rows(path, "SELECT batch_id FROM audit WHERE event_id = 'bad'") == [(new,)]
        # A (re)starting actor replays the new batch's copy, never the released one.
        async with await open_reader(path) as reader:
            loaded = await reader.load_account("acme")
            assert [(b, [e.id for e in es]) for b, es in loaded.replay] == [
                (batch, ["ok"]),
                (new, ["bad"]),
            ]
            page = await reader.events("acme", None, 0, 10**12, 100)
            assert [e.id for e in page.events] == ["ok", "bad2", "bad"]
            assert list(page.statuses) == ["counted", "quarantined", "counted"]


async def test_the_dedupe_rows_rebuilt_after_a_crash_leave_the_released_copy_out(
    tmp_path: Path,
) -> None:
    """A writer killed before a pass covered the release batch derives its tail's dedupe
    rows from the journal: the released copy has an overflow row of its batch, so no row
    claims the key for it (the key's row stays the original's)."""
    async with quarantined_store(tmp_path) as (writer, path, _batch):
        decision = await release(writer, "acme", ["bad"])
        conn = sqlite3.connect(path)
        try:
            _, new_dedupe = rebuild_tail(conn)
        finally:
            conn.close()
    key = dedupe_row_key(account_bucket("acme"), ev("bad"))
    derived = [row for rows_ in new_dedupe.values() for row in rows_ if row[0] == key]
    assert all(row[1] != decision.batch_id for row in derived)


async def test_releasing_twice_is_a_no_op_with_a_clear_answer(tmp_path: Path) -> None:
    async with quarantined_store(tmp_path) as (writer, path, _):
        first = await release(writer, "acme", None)  # every quarantined event
        assert [c.event_id for c in first.settled] == ["bad", "bad2"]
        batches = rows(path, "SELECT count(*) FROM event_batches")
        again = await release(writer, "acme", ["bad", "bad2"])
        assert again.settled == ()
        assert again.batch_id is None
        assert [(u.event_id, u.action, u.by, u.release_batch) for u in again.unchanged] == [
            ("bad", "released", "alice", first.batch_id),
            ("bad2", "released", "alice", first.batch_id),
        ]
        nothing = await release(writer, "acme", None)  # nothing left in quarantine
        assert (nothing.settled, nothing.unchanged, nothing.batch_id) == ((), (), None)
        assert rows(path, "SELECT count(*) FROM event_batches") == batches
        assert len(rows(path, "SELECT * FROM quarantine_log")) == 2


async def test_a_discard_is_audited_and_the_event_never_counts(tmp_path: Path) -> None:
    async with quarantined_store(tmp_path) as (writer, path, batch):
        decision = await writer.discard("acme", ["bad"], "bob", "test data, ticket 7")
        assert [c.event_id for c in decision.settled] == ["bad"]
        assert rows(path, "SELECT event_id FROM quarantine") == [("bad2",)]
        assert rows(path, "SELECT action, release_batch, by, reason FROM quarantine_log") == [
            ("discarded", None, "bob", "test data, ticket 7")
        ]
        again = await writer.discard("acme", ["bad"], "bob", "again")
        assert [(u.event_id, u.action) for u in again.unchanged] == [("bad", "discarded")]
        async with await open_reader(path) as reader:
            loaded = await reader.load_account("acme")
            assert [[e.id for e in es] for _, es in loaded.replay] == [["ok"]]
            page = await reader.events("acme", None, 0, 10**12, 100)
            assert list(zip([e.id for e in page.events], page.statuses, strict=True)) == [
                ("ok", "counted"),
                ("bad", "discarded"),
                ("bad2", "quarantined"),
            ]
            [entry] = await reader.quarantine_log("acme")
            assert (entry.batch_id, entry.event_id, entry.action) == (batch, "bad", "discarded")


@pytest.mark.parametrize(
    ("action", "ids", "codes"),
    [
        ("release", ["bad", "nope"], [("nope", "unknown_event")]),
        ("release", ["ok", "bad"], [("ok", "not_quarantined")]),
        ("discard", ["bad", "ok", "nope"], [("ok", "not_quarantined"), ("nope", "unknown_event")]),
    ],
)
async def test_a_refused_request_names_each_id_and_writes_nothing(
    tmp_path: Path, action: str, ids: list[str], codes: list[tuple[str, str]]
) -> None:
    async with quarantined_store(tmp_path) as (writer, path, _):
        before = rows(path, "SELECT count(*) FROM event_batches")
        attempt = (
            release(writer, "acme", ids)
            if action == "release"
            else writer.discard("acme", ids, "bob", "why")
        )
        with pytest.raises(QuarantineRefused) as refused:
            await attempt
        assert [(p[0], p[1]) for p in refused.value.problems] == codes
        for event_id, _ in codes:
            assert f"{event_id!r}" in str(refused.value)
        assert rows(path, "SELECT event_id FROM quarantine") == [("bad",), ("bad2",)]
        assert rows(path, "SELECT count(*) FROM quarantine_log") == [(0,)]
        assert rows(path, "SELECT count(*) FROM event_batches") == before


async def test_a_released_event_cannot_be_discarded_nor_a_discarded_one_released(
    tmp_path: Path,
) -> None:
    async with quarantined_store(tmp_path) as (writer, _, _):
        await release(writer, "acme", ["bad"])
        await writer.discard("acme", ["bad2"], "bob", "junk")
        with pytest.raises(QuarantineRefused, match=r"was released by alice at .* void it"):
            await writer.discard("acme", ["bad"], "bob", "junk")
        with pytest.raises(QuarantineRefused, match=r"discarded by bob at .* cannot be released"):
            await release(writer, "acme", ["bad2"])


async def test_who_and_why_are_required(tmp_path: Path) -> None:
    async with quarantined_store(tmp_path) as (writer, _, _):
        with pytest.raises(ValueError, match="reason must say who and why"):
            await writer.discard("acme", ["bad"], "bob", "  ")
        with pytest.raises(ValueError, match="by must say"):
            writer.submit_release("acme", None, "", "x", lambda _: None)
        with pytest.raises(ValueError, match="no event ids"):
            await writer.discard("acme", [], "bob", "x")


# ---- through the accounts layer: the actor applies what a release appended -----------------


@asynccontextmanager
async def accounts_running(tmp_path: Path, **options: Any) -> AsyncIterator[Accounts]:
    async with running_accounts(
        tmp_path / "meterd.sqlite3", METERS, **layer_options(**options)
    ) as accounts:
        yield accounts


async def hourly(accounts: Accounts, account: str = "acme") -> list[tuple[int, str]]:
    rows_ = await accounts.usage(account, DYNO, T0, T0 + 2 * HOUR_MS, Window.HOUR)
    return [(r.start - T0, canonical_quantity(r.value)) for r in rows_]


class Poison:
    """A fault injected from outside the actor: the ids in :attr:`ids` raise when applied."""

    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)
        self.crashes: list[str] = []

    def __call__(self, event: Event) -> None:
        if event.id in self.ids:
            self.crashes.append(event.id)
            raise ValueError(f"cannot apply {event.id}")


async def quarantine_poison(accounts: Accounts, poison: Poison) -> None:
    """``acme``: ok (1) and poison (5), then a crash on the poison and its quarantine."""
    await accounts.ingest("acme", [dyno("acme", "ok", "1")])
    await accounts.call("acme", ("status",))  # awake: the poison crashes it live
    await accounts.ingest("acme", [dyno("acme", "poison", "5")])
    await wait_for(lambda: len(poison.crashes) == 2)  # live, then on replay: parked
    assert await hourly(accounts) == [(0, "1")]
    [parked] = await accounts.store.reader.quarantined("acme")
    assert parked.event_id == "poison"


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()


async def test_a_released_event_is_counted_once_by_its_actor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = Poison("poison")
    inject_apply_fault(monkeypatch, poison)
    async with accounts_running(tmp_path) as accounts:
        await quarantine_poison(accounts, poison)
        poison.ids.clear()  # the cause is fixed (a code fix deployed, say)
        decision = await accounts.release("acme", None, "alice", "fixed in 1.4.2")
        assert [c.event_id for c in decision.settled] == ["poison"]
        assert await hourly(accounts) == [(0, "6")]
        assert await accounts.store.reader.quarantined("acme") == []
        # A restart of the actor replays from its checkpoint: nothing counts twice.
        ref = accounts.registry.whereis("acme")
        assert ref is not None
        monitor = ref.monitor()
        await ref.cast(("crash", "drill"))
        assert (await monitor.wait()).kind == "crash"
        assert await hourly(accounts) == [(0, "6")]
        again = await accounts.release("acme", ["poison"], "alice", "twice")
        assert again.settled == ()
        assert [u.event_id for u in again.unchanged] == ["poison"]
        assert await hourly(accounts) == [(0, "6")]


async def test_a_release_that_crashes_the_actor_again_goes_back_to_quarantine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = Poison("poison")
    inject_apply_fault(monkeypatch, poison)
    async with accounts_running(tmp_path) as accounts:
        await quarantine_poison(accounts, poison)
        [before] = await accounts.store.reader.quarantined("acme")
        decision = await accounts.release("acme", None, "alice", "thought it was fixed")
        await wait_for(lambda: len(poison.crashes) == 4)  # live again, then on replay
        # Back in quarantine, as the copy of the release batch: no loss, no double count.
        await wait_for(lambda: accounts.registry.whereis("acme") is not None)
        assert await hourly(accounts) == [(0, "1")]
        [parked] = await accounts.store.reader.quarantined("acme")
        assert (parked.event_id, parked.batch_id) == ("poison", decision.batch_id)
        assert parked.batch_id != before.batch_id
        assert accounts.supervisor.status == "running"
        # Fixed for real this time: released again, counted once.
        poison.ids.clear()
        await accounts.release("acme", ["poison"], "alice", "fixed now")
        assert await hourly(accounts) == [(0, "6")]
        log = await accounts.store.reader.quarantine_log("acme")
        assert [(e.batch_id, e.action) for e in log] == [
            (before.batch_id, "released"),
            (decision.batch_id, "released"),
        ]


async def test_a_hibernated_account_applies_a_release_when_woken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = Poison("poison")
    inject_apply_fault(monkeypatch, poison)
    async with accounts_running(tmp_path, idle_timeout=0.0) as accounts:
        await quarantine_poison(accounts, poison)
        ref = accounts.registry.whereis("acme")
        if ref is not None:  # at idle_timeout 0 it may have hibernated on its own already
            monitor = ref.monitor()
            accounts.sweep_once()
            assert (await monitor.wait()).kind == "normal"  # hibernated, watermark past B
        assert accounts.registry.whereis("acme") is None
        poison.ids.clear()
        await accounts.release("acme", ["poison"], "alice", "fixed")
        assert await hourly(accounts) == [(0, "6")]


async def test_a_discarded_event_never_counts_even_after_a_fix_and_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = Poison("poison")
    inject_apply_fault(monkeypatch, poison)
    async with accounts_running(tmp_path) as accounts:
        await quarantine_poison(accounts, poison)
        poison.ids.clear()  # it would apply now: a discard still keeps it out
        decision = await accounts.discard("acme", ["poison"], "bob", "test traffic")
        assert [c.event_id for c in decision.settled] == ["poison"]
        ref = accounts.registry.whereis("acme")
        assert ref is not None
        monitor = ref.monitor()
        await ref.cast(("crash", "drill"))  # the next incarnation replays from its checkpoint
        assert (await monitor.wait()).kind == "crash"
        assert await hourly(accounts) == [(0, "1")]
        assert await accounts.store.reader.quarantined("acme") == []


# ---- a store as a meter actor's replay leaves it, for tests of whole daemons ---------------


def write_quarantined_store(
    path: Path, account: str, events: list[Event], poison: set[str], error: str
) -> int:
    """Write a fresh store at ``path``: ``events`` of ``account`` committed as one journal
    batch, those of ``poison`` quarantined with ``error`` through the writer's own operation
    (what a meter actor's replay writes), nothing applied or checkpointed yet (as after a
    ``kill -9`` right after the quarantine). The batch's id."""

    async def write() -> int:
        writer = Writer(path, store_config())
        async with running(writer):
            result = await writer.append(account, events)
            assert result.batch_id is not None
            for event in events:
                if event.id in poison:
                    await writer.quarantine(account, result.batch_id, event.id, error)
            return result.batch_id

    return trio.run(write)


# ---- any sequence of quarantines, releases and discards, against a model -------------------

IDS = ("a", "b", "c", "d")
Decision: TypeAlias = tuple[str, frozenset[str]]
_decisions = st.lists(
    st.tuples(
        st.sampled_from(["quarantine", "release", "release_all", "discard"]),
        st.frozensets(st.sampled_from(IDS), min_size=1, max_size=3),
    ),
    max_size=10,
)


class Model:
    """What each id is: ``counted`` (never quarantined), ``quarantined``, ``released`` (its
    latest copy counts), ``discarded``; and whether a quarantine came after a release."""

    def __init__(self) -> None:
        self.state = dict.fromkeys(IDS, "counted")

    def apply(self, kind: str, ids: frozenset[str]) -> tuple[str, set[str]]:
        """The expected outcome: ``("refused", codes)`` or ``("done", ids settled)``."""
        if kind == "quarantine":  # an actor's replay failed on each counting copy
            settled = {i for i in ids if self.state[i] in ("counted", "released")}
            for i in settled:
                self.state[i] = "quarantined"
            return "done", settled
        wanted = "released" if kind.startswith("release") else "discarded"
        asked = set(IDS) if kind == "release_all" else set(ids)
        if kind == "release_all":
            asked = {i for i in IDS if self.state[i] == "quarantined"}
        codes = set()
        for i in asked:
            state = self.state[i]
            if state == "counted":
                codes.add("not_quarantined")
            elif state in ("released", "discarded") and state != wanted:
                codes.add("discarded" if state == "discarded" else "already_released")
        if codes:
            return "refused", codes
        settled = {i for i in asked if self.state[i] == "quarantined"}
        for i in settled:
            self.state[i] = wanted
        return "done", settled


async def _decide_all(path: Path, decisions: list[Decision], restart: bool) -> None:
    model = Model()
    writer = Writer(path, store_config())
    async with running(writer):
        first = await writer.append("acme", [ev(i, quantity=1) for i in IDS])
        assert first.batch_id is not None
        copies = dict.fromkeys(IDS, first.batch_id)  # the batch of each id's latest copy
    for kind, ids in decisions:
        if restart:
            writer = Writer(path, store_config())
        async with running(writer):
            expected, detail = model.apply(kind, ids)
            refused: QuarantineRefused | None = None
            outcome: Any = None
            try:
                if kind == "quarantine":
                    for i in sorted(detail):
                        await writer.quarantine("acme", copies[i], i, "boom")
                elif kind == "discard":
                    outcome = await writer.discard("acme", sorted(ids), "bob", "why")
                else:
                    asked = None if kind == "release_all" else sorted(ids)
                    outcome = await release(writer, "acme", asked)
            except QuarantineRefused as error:
                refused = error
            if refused is not None:
                assert expected == "refused", (kind, ids, refused)
                assert {code for _, code, _ in refused.problems} == detail
                continue
            assert expected == "done", (kind, ids, detail)
            if outcome is not None:
                assert {c.event_id for c in outcome.settled} == detail
                for event in outcome.events:
                    copies[event.id] = outcome.batch_id
            await check_against(writer, path, model)


async def check_against(writer: Writer, path: Path, model: Model) -> None:
    """Replays apply each counting id once and nothing else; the events page lists each id
    once with its status; a re-send of every id is a duplicate."""
    async with await open_reader(path) as reader:
        loaded = await reader.load_account("acme")
        applied = [e.id for _, events in loaded.replay for e in events]
        counting = {i for i, s in model.state.items() if s in ("counted", "released")}
        assert sorted(applied) == sorted(counting)
        page = await reader.events("acme", None, 0, 10**12, 100)
        shown = {e.id: s for e, s in zip(page.events, page.statuses, strict=True)}
        assert len(page.events) == len(IDS)
        want = {i: "counted" if s in ("counted", "released") else s for i, s in model.state.items()}
        assert shown == want
    again = await writer.append("acme", [ev(i, quantity=1) for i in IDS])
    assert (again.accepted, sorted(again.duplicates)) == ([], [0, 1, 2, 3])


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(decisions=_decisions, restart=st.booleans(), collisions=st.booleans())
def test_any_sequence_of_decisions_counts_each_event_once_or_never(
    tmp_path_factory: pytest.TempPathFactory,
    decisions: list[Decision],
    restart: bool,
    collisions: bool,
) -> None:
    """Quarantines (as actors' replays write them), releases (some ids, or all) and discards
    in any order, with a writer restarted between operations or not, and with every
    ``(account, id)`` sharing one dedupe key or not: each outcome is the model's, replays
    apply each counting event exactly once, and dedupe still knows every id."""
    where = tmp_path_factory.mktemp("decisions")
    with pytest.MonkeyPatch.context() as patch:
        if collisions:
            collide(patch)
        trio.run(_decide_all, where / "store.sqlite3", decisions, restart)
