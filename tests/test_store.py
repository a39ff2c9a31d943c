"""The store: schema and migrations, exact dedupe, group commit, failures, reader, codec."""

from __future__ import annotations

import decimal
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import supervisors as sv
from meterd.model import Event, canonical_quantity
from meterd.store import (
    SCHEMA_VERSION,
    AppendResult,
    CommitFailed,
    InvalidCursor,
    InvalidEvents,
    NotAStoreError,
    RejectedEvent,
    Store,
    StoreError,
    StoreVersionError,
    Writer,
    codec,
    open_database,
    open_reader,
    schema,
)
from meterd.store import writer as writer_module
from meterd.store.journal_index import catch_up
from meterd.store.schema import SLICES

FIXTURES = Path(__file__).parent / "fixtures"


def ev(
    event_id: str,
    account: str = "acme",
    *,
    meter: str = "api",
    quantity: int | Decimal = 1,
    time: int = 60_000,
    properties: tuple[tuple[str, str], ...] = (),
) -> Event:
    return Event(event_id, account, meter, quantity, time, properties, "prod", 1)


@asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[Writer]:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(writer.run)
        assert started is writer
        yield writer
        nursery.cancel_scope.cancel()


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class Collector:
    """An ``on_done`` that records what it was given."""

    def __init__(self) -> None:
        self.outcomes: list[AppendResult | list[AppendResult] | BaseException] = []

    def __call__(self, outcome: AppendResult | list[AppendResult] | BaseException) -> None:
        self.outcomes.append(outcome)

    def result(self, index: int = 0) -> AppendResult:
        outcome = self.outcomes[index]
        assert isinstance(outcome, AppendResult), outcome
        return outcome


# -- schema and migrations --------------------------------------------------------------


def test_open_database_creates_a_durable_wal_store_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "store.sqlite3"
    conn = open_database(path)
    try:
        assert path.exists()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert {
            "event_batches",
            "dedupe",
            "dedupe_overflow",
            "windows",
            "accounts",
            "quarantine",
            "audit",
            "journal_index",
            "journal_slices",
        } <= tables
    finally:
        conn.close()
    open_database(path).close()  # reopening an up-to-date store changes nothing


def test_migrations_are_numbered_steps() -> None:
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2


async def test_a_v1_store_migrates_to_the_latest_version_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", path)
    assert rows(path, "PRAGMA user_version") == [(1,)]
    assert not rows(path, "SELECT name FROM sqlite_schema WHERE name = 'quarantine'")

    with structlog.testing.capture_logs() as logs:
        open_database(path).close()
    assert {"event": "store_migrated", "from_version": 1, "to_version": SCHEMA_VERSION} in [
        {k: v for k, v in line.items() if k in ("event", "from_version", "to_version")}
        for line in logs
    ]
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # v2: quarantine exists; v3: time bounds backfilled from the payloads, covering index.
    assert rows(path, "SELECT count(*) FROM quarantine") == [(0,)]
    assert rows(path, "SELECT batch_id, min_time, max_time FROM event_batches") == [
        (1, 60_000, 130_000),
        (2, 10_000, 10_000),
        (3, 5_000, 5_000),
    ]
    indexes = {r[0] for r in rows(path, "SELECT name FROM sqlite_schema WHERE type='index'")}
    assert "event_batches_by_account" not in indexes
    # v4: the audit trail exists, empty, with its paging index.
    assert rows(path, "SELECT count(*) FROM audit") == [(0,)]
    assert "audit_by_account" in indexes
    # v5: no by-account index on the journal (v3's is dropped); journal_index holds every
    # stored batch and every slice is indexed up to the last one.
    assert "event_batches_by_account_time" not in indexes
    assert rows(path, "SELECT account, batch_id, min_time, max_time FROM journal_index") == sorted(
        rows(path, "SELECT account, batch_id, min_time, max_time FROM event_batches")
    )
    assert rows(path, "SELECT count(*), min(upto), max(upto) FROM journal_slices") == [
        (SLICES, 3, 3)
    ]

    writer = Writer(path, commit_interval=0)
    async with running(writer), await open_reader(path) as reader:
        loaded = await reader.load_account("acme")
        assert loaded.watermark == 1
        assert loaded.windows == [("api", 60_000, "[]", b"v1-state")]  # v6: a JSON key
        assert loaded.replay == [
            (2, [Event("a3", "acme", "api", Decimal("2.5"), 10_000, (("region", "eu"),), "", 2000)])
        ]
        # The v1 dedupe rows still decide: re-sends are duplicates, changes are conflicts.
        result = await writer.append(
            "acme", [ev("a1", time=60_000), ev("a2", quantity=4, time=130_000), ev("a4")]
        )
        assert (result.duplicates, result.conflicts, result.accepted) == ([0], [1], [2])
        assert result.batch_id == 4  # after the fixture's 3 batches
        # ... and are recorded: the duplicate points at the fixture's batch holding a1.
        audit = await reader.audit("acme", 0, 10**6, limit=10)
        assert [(a.kind, a.event_id, a.code, a.batch_id) for a in audit.entries] == [
            ("duplicate", "a1", None, 1),
            ("rejected", "a2", "id_conflict", 1),
        ]
        page = await reader.events("globex", None, 0, 10**6, 10)
        assert [(e.id, e.quantity, e.producer) for e in page.events] == [("g1", 7, "p1")]
        assert await reader.known_accounts() == 2


def test_a_failing_migration_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", path)

    def broken(conn: sqlite3.Connection, meter_dimensions: Mapping[str, int]) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("SELECT no_such_column FROM event_batches")

    steps = (*schema.MIGRATIONS[:-1], schema.Migration(SCHEMA_VERSION, "broken", broken))
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    with pytest.raises(StoreError, match=f"migration to schema version {SCHEMA_VERSION}"):
        open_database(path)
    assert rows(path, "PRAGMA user_version") == [(1,)]
    names = {r[0] for r in rows(path, "SELECT name FROM sqlite_schema")}
    assert "quarantine" not in names  # step 2 ran in the same transaction: rolled back
    assert "half_done" not in names


async def test_a_newer_store_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    open_database(path).close()
    conn = sqlite3.connect(path)
    newer = SCHEMA_VERSION + 1
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    message = (
        f"database {path} is schema version {newer}, this meterd knows up to {SCHEMA_VERSION};"
        " upgrade meterd or use another store.path"
    )
    with pytest.raises(StoreVersionError) as info:
        open_database(path)
    assert str(info.value) == message
    with pytest.raises(StoreVersionError, match=f"schema version {newer}"):
        await open_reader(path)
    with pytest.raises(StoreVersionError, match="upgrade meterd"):
        await Writer(path).run()
    assert rows(path, "PRAGMA user_version") == [(newer,)]


async def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(NotAStoreError, match="not a meterd store"):
        open_database(other)

    foreign = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("PRAGMA application_id = 42")
    conn.close()
    with pytest.raises(NotAStoreError, match="another application"):
        open_database(foreign)

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(NotAStoreError, match="not a SQLite database"):
        open_database(junk)

    with pytest.raises(StoreError, match="cannot open database"):
        await open_reader(tmp_path / "missing.sqlite3")

    old = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", old)
    with pytest.raises(StoreVersionError, match="start it first"):
        await open_reader(old)


# -- dedupe -------------------------------------------------------------------------------


async def test_dedupe_across_groups_and_id_conflicts(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", commit_interval=0)
    async with running(writer):
        first = await writer.append("acme", [ev("e1"), ev("e2", quantity=Decimal("1.50"))])
        assert first == AppendResult(1, [0, 1], [], [])
        again = await writer.append(
            "acme",
            [
                ev("e1"),
                ev("e2", quantity=Decimal("1.5")),  # the same value: a genuine re-send
                ev("e1", time=120_000),  # same id, other time: conflict
                ev("e3"),
            ],
        )
        assert again == AppendResult(2, [3], [0, 1], [2])
        # The same id in another account is another event.
        other = await writer.append("globex", [ev("e1", "globex")])
        assert other.accepted == [0]
        # A conflict replaced nothing: the original is still what counts.
        assert (await writer.append("acme", [ev("e1")])).duplicates == [0]
        assert (await writer.append("acme", [ev("e1", time=120_000)])).conflicts == [0]
        assert writer.stats.events_accepted == 4
    assert rows(writer.path, "SELECT count(*) FROM dedupe") == [(4,)]


async def test_dedupe_within_one_call_and_within_one_group(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", commit_interval=0)
    async with running(writer):
        one_call = await writer.append(
            "acme", [ev("x"), ev("x"), ev("x", quantity=2), ev("y"), ev("x", quantity=2)]
        )
        assert one_call == AppendResult(1, [0, 3], [1], [2, 4])

        a, b, c = Collector(), Collector(), Collector()
        writer.submit("acme", [ev("z1"), ev("z2")], a)
        writer.submit("acme", [ev("z2"), ev("z1", quantity=9), ev("z3")], b)
        writer.submit("acme", [ev("z3"), ev("x")], c)
        commits = writer.stats.commits
        await writer.barrier()
        assert writer.stats.commits == commits + 1  # one group
        assert a.result() == AppendResult(2, [0, 1], [], [])
        assert b.result() == AppendResult(3, [2], [0], [1])
        assert c.result() == AppendResult(None, [], [0, 1], [])
        payload = rows(writer.path, "SELECT payload FROM event_batches WHERE batch_id = 3")
        assert [e.id for e in codec.decode_batch(payload[0][0], "acme")] == ["z3"]


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path)) as writer:
        assert (await writer.append("acme", [ev("r1"), ev("r2")])).accepted == [0, 1]
    async with running(Writer(path)) as writer:
        result = await writer.append("acme", [ev("r1"), ev("r2", quantity=5), ev("r3")])
        assert result == AppendResult(2, [2], [0], [1])


def _dedupe_row_keys_by_method(buckets: Mapping[str, int], events: Iterable[Event]) -> list[int]:
    """The writer's batch keys through ``Event.dedupe_key()`` (which tests patch to make
    keys collide; the real ``schema.dedupe_row_keys`` computes it inline)."""
    return [schema.dedupe_row_key(buckets[event.account], event) for event in events]


async def test_dedupe_is_exact_when_every_key_collides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every (account, id) gets the same 63-bit dedupe row key.
    monkeypatch.setattr(Event, "dedupe_key", lambda self: 12345)
    monkeypatch.setattr(schema, "account_bucket", lambda account: 0)
    monkeypatch.setattr(schema, "dedupe_row_keys", _dedupe_row_keys_by_method)
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, commit_interval=0)) as writer:
        first = await writer.append("acme", [ev("k1"), ev("k2"), ev("k2"), ev("k3", quantity=3)])
        assert first == AppendResult(1, [0, 1, 3], [2], [])
        other = await writer.append("globex", [ev("k1", "globex", quantity=8)])
        assert other.accepted == [0]  # same id, other account: not a conflict
        grouped = Collector(), Collector()
        writer.submit("acme", [ev("k4"), ev("k1")], grouped[0])
        writer.submit("acme", [ev("k4"), ev("k5"), ev("k3", quantity=4)], grouped[1])
        await writer.barrier()
        assert grouped[0].result() == AppendResult(3, [0], [1], [])
        assert grouped[1].result() == AppendResult(4, [1], [0], [2])
    assert rows(path, "SELECT key FROM dedupe") == [(12345,)]
    assert rows(path, "SELECT count(*) FROM dedupe_overflow") == [(5,)]  # all but acme k1
    async with running(Writer(path, commit_interval=0)) as writer:
        again = await writer.append(
            "acme",
            [ev("k1"), ev("k2", quantity=2), ev("k3", quantity=3), ev("k5"), ev("k6")],
        )
        assert again == AppendResult(5, [4], [0, 2, 3], [1])
        assert (await writer.append("globex", [ev("k1", "globex", quantity=8)])).duplicates == [0]
        assert (await writer.append("globex", [ev("k1", "globex")])).conflicts == [0]


_ACCOUNTS = ("acme", "globex", "initech")
_batch_groups = st.lists(
    st.lists(
        st.tuples(st.sampled_from(_ACCOUNTS), st.sampled_from("abcde"), st.integers(1, 2)),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=6,
)


def _grouped(batch: list[tuple[str, str, int]]) -> list[tuple[str, list[Event]]]:
    groups: dict[str, list[Event]] = {}
    for account, event_id, quantity in batch:
        groups.setdefault(account, []).append(ev(event_id, account, quantity=quantity))
    return list(groups.items())


async def _verdicts_and_rows(
    path: Path, batches: list[list[tuple[str, list[Event]]]], one_operation: bool
) -> tuple[list[AppendResult], list[tuple[Any, ...]]]:
    collected: list[Collector] = []
    async with running(Writer(path, commit_interval=0)) as writer:
        for index, groups in enumerate(batches):
            if one_operation:
                whole = Collector()
                writer.submit_batch(groups, whole)
                collected.append(whole)
            else:
                for account, events in groups:
                    collected.append(Collector())
                    writer.submit(account, events, collected[-1])
            if index % 2:
                await writer.barrier()  # some batches in one group, some in their own
        await writer.barrier()
    results: list[AppendResult] = []
    for collector in collected:
        [outcome] = collector.outcomes
        if isinstance(outcome, list):
            results.extend(outcome)
        else:
            assert isinstance(outcome, AppendResult), outcome
            results.append(outcome)
    stored = rows(
        path,
        "SELECT b.batch_id, b.account, b.count, b.payload FROM event_batches b ORDER BY batch_id",
    ) + rows(path, "SELECT 'overflow', account, event_id, fingerprint FROM dedupe_overflow")
    stored += rows(path, "SELECT 'audit', account, event_id, kind, code, batch_id FROM audit")
    return results, sorted(stored, key=repr)


@settings(max_examples=40, deadline=None)
@given(batches=_batch_groups, collide=st.booleans())
def test_a_batch_operation_decides_exactly_like_one_append_per_account(
    tmp_path_factory: pytest.TempPathFactory, batches: list[Any], collide: bool
) -> None:
    """``submit_batch`` (one operation, one lookup, deferred inserts) gives the verdicts and
    the stored rows of one ``submit`` per group, in the same order: with real keys, and
    when every (account, id) shares one dedupe key (collisions across the accounts of one
    batch go to the overflow table)."""
    grouped = [_grouped(batch) for batch in batches]
    where = tmp_path_factory.mktemp("batch")
    with pytest.MonkeyPatch.context() as patch:
        if collide:
            patch.setattr(Event, "dedupe_key", lambda self: 777)
            patch.setattr(schema, "account_bucket", lambda account: 0)
            patch.setattr(schema, "dedupe_row_keys", _dedupe_row_keys_by_method)
        one = trio.run(_verdicts_and_rows, where / "one.sqlite3", grouped, True)
        each = trio.run(_verdicts_and_rows, where / "each.sqlite3", grouped, False)
    assert one == each
    # The audit trail holds exactly the verdicts' duplicates and conflicts, each pointing
    # at the journal batch that holds the counted copy of its (account, id).
    results, stored = one
    flat = [group for groups in grouped for group in groups]
    wanted = sorted(
        (account, events[index].id, kind)
        for (account, events), result in zip(flat, results, strict=True)
        for kind, indexes in (("duplicate", result.duplicates), ("rejected", result.conflicts))
        for index in indexes
    )
    audit = [row[1:] for row in stored if row[0] == "audit"]
    assert sorted((account, event_id, kind) for account, event_id, kind, *_ in audit) == wanted
    holding = {
        (row[0], row[1]): set(codec.batch_event_ids(row[3]))
        for row in stored
        if isinstance(row[0], int)
    }
    for account, event_id, kind, code, batch_id in audit:
        assert code == (None if kind == "duplicate" else "id_conflict")
        assert event_id in holding[(batch_id, account)]


async def test_the_writers_account_shortcuts_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "ACCOUNT_CACHE", 2)
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, commit_interval=0)) as writer:
        for attempt in range(3):
            for n in range(5):
                account = f"acct{n}"
                result = await writer.append(account, [ev(f"e{attempt}", account)])
                assert result.accepted == [0]
            assert len(writer._buckets) <= 3
            assert len(writer._known_accounts) <= 3
        again = await writer.append("acct0", [ev("e0", "acct0"), ev("e9", "acct0")])
        assert again.duplicates == [0]  # dedupe does not depend on the shortcuts
    assert rows(path, "SELECT count(*) FROM accounts") == [(5,)]


async def test_a_batch_operation_checks_its_groups(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="of account 'globex', submitted for account 'acme'"):
        writer.submit_batch([("acme", [ev("a"), ev("b", "globex")])], Collector())
    with pytest.raises(ValueError, match="account 'acme' has two groups"):
        writer.submit_batch([("acme", [ev("a")]), ("acme", [ev("b")])], Collector())
    assert writer.pending == 0


def _group_error(groups: list[tuple[str, list[Event]]]) -> str | None:
    """The reference check of ``submit_batch``: the first problem, group by group."""
    seen: set[str] = set()
    for account, events in groups:
        if account in seen:
            return f"account {account!r} has two groups in one batch"
        seen.add(account)
        for index, event in enumerate(events):
            if event.account != account:
                return (
                    f"event {index} (id {event.id!r}) is of account {event.account!r},"
                    f" submitted for account {account!r}"
                )
    return None


_accounts = st.sampled_from(["acme", "globex", "initech"])


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            _accounts,
            st.lists(st.builds(ev, st.sampled_from(["a", "b", "c"]), _accounts), max_size=3),
        ),
        max_size=4,
    )
)
def test_a_batch_operation_checks_its_groups_like_the_reference(
    groups: list[tuple[str, list[Event]]],
) -> None:
    """``submit_batch``'s whole-batch check refuses exactly what the group-by-group check
    refuses, with its message, and queues nothing then; otherwise it queues the groups as
    given."""
    writer = Writer("never-opened.sqlite3")
    want = _group_error(groups)
    if want is None:
        writer.submit_batch(groups, Collector())
        [op] = writer._queue
        assert isinstance(op, writer_module._BatchAppend)
        assert op.groups == tuple((account, tuple(events)) for account, events in groups)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            writer.submit_batch(groups, Collector())
        assert writer.pending == 0


def test_dedupe_row_keys_are_63_bits_and_grouped_by_account() -> None:
    keys = {
        account: [
            schema.dedupe_row_key(schema.account_bucket(account), ev(f"{i}", account))
            for i in range(50)
        ]
        for account in ("acme", "globex")
    }
    for account_keys in keys.values():
        assert all(0 <= key < 2**63 for key in account_keys)
        assert len({key >> 40 for key in account_keys}) == 1  # neighbours in the B-tree
        assert len(set(account_keys)) == 50
    assert keys["acme"][0] >> 40 != keys["globex"][0] >> 40


async def test_submit_refuses_events_of_another_account(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="of account 'globex', submitted for account 'acme'"):
        writer.submit("acme", [ev("a"), ev("b", "globex")], Collector())
    assert writer.pending == 0


# -- group commit, backpressure, lifecycle -------------------------------------------------


async def test_submits_queued_before_the_writer_runs_commit_in_one_transaction(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path / "s.sqlite3")
    done = Collector()
    for i in range(100):
        writer.submit(f"acct-{i % 7}", [ev(f"e{i}", f"acct-{i % 7}")], done)
    assert writer.pending == 100
    assert done.outcomes == []
    async with running(writer):
        await writer.barrier()
        assert writer.stats.commits == 1
        assert writer.stats.largest_group >= 100  # (the barrier may join it or follow it)
        assert [done.result(i).batch_id for i in range(100)] == list(range(1, 101))
        # While running: synchronous submits of one task join one group as well.
        for i in range(100, 150):
            writer.submit("acme", [ev(f"e{i}")], done)
        await writer.barrier()
        assert writer.stats.commits == 2
    assert rows(writer.path, "SELECT count(*), sum(count) FROM event_batches") == [(150, 150)]


async def test_commit_interval_paces_groups_under_load_only(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    writer = Writer(tmp_path / "s.sqlite3", commit_interval=10.0)
    async with running(writer):
        t0 = trio.current_time()
        await writer.append("acme", [ev("p1")])  # idle: committed at once
        await writer.append("acme", [ev("p2")])  # idle again: at once too
        assert trio.current_time() - t0 < 10.0
        assert writer.stats.commits == 2

        # Load: operations arrive while a group is being written.
        reached, release = threading.Event(), threading.Event()

        def hold() -> None:
            reached.set()
            release.wait(30)

        writer._before_commit = hold
        first, later = Collector(), Collector()
        writer.submit("acme", [ev("p3")], first)
        await trio.to_thread.run_sync(reached.wait, 30)
        writer._before_commit = None
        t1 = trio.current_time()
        writer.submit("acme", [ev("p4")], later)
        writer.submit("acme", [ev("p5")], later)
        release.set()
        await writer.barrier()
        assert trio.current_time() - t1 >= 9.0  # waited for the interval (virtual clock)
        assert writer.stats.commits == 4  # p3 alone, then p4 and p5 together
        assert [later.result(i).batch_id for i in (0, 1)] == [4, 5]


async def test_backpressure_bounds_the_async_operations(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", max_pending=3)
    done = Collector()
    for i in range(5):  # submit may exceed the bound
        writer.submit("acme", [ev(f"s{i}")], done)
    results: list[AppendResult] = []

    async def append() -> None:
        results.append(await writer.append("acme", [ev("waits")]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.pending == 5  # the append is parked, not queued
        async with running(writer):
            await writer.barrier()
            with trio.fail_after(5):
                while not results:
                    await writer.barrier()
    assert len(done.outcomes) == 5
    assert results[0].accepted == [0]
    assert results[0].batch_id == 6


async def test_store_bundles_a_supervised_writer_and_a_reader(tmp_path: Path) -> None:
    store = Store.at(tmp_path / "new" / "s.sqlite3", commit_interval=0)
    sup = sv.Supervisor([store.writer_spec()], name="store")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        result = await store.writer.append("acme", [ev("s1")])
        assert (await store.reader.load_account("acme")).replay == [(result.batch_id, [ev("s1")])]
        sup.stop()
        await sup.wait_stopped()
    await store.aclose()


async def test_stopping_commits_what_is_queued(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3")
    done = Collector()
    sup = sv.Supervisor([sv.task_spec("store-writer", writer.run)], name="store")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        states = [writer.running]
        writer.submit("acme", [ev("last-1")], done)
        writer.submit("acme", [ev("last-2")], done)
        sup.stop()
        await sup.wait_stopped()
    states.append(writer.running)
    assert states == [True, False]
    assert len(done.outcomes) == 2
    assert all(isinstance(o, AppendResult) and o.accepted == [0] for o in done.outcomes)
    # The same object runs again (a supervised restart).
    async with running(writer):
        assert (await writer.append("acme", [ev("last-1")])).duplicates == [0]


async def test_a_raising_on_done_does_not_stop_the_writer(tmp_path: Path) -> None:
    def explode(outcome: AppendResult | BaseException) -> None:
        raise RuntimeError("callback bug")

    async with running(Writer(tmp_path / "s.sqlite3")) as writer:
        with structlog.testing.capture_logs() as logs:
            writer.submit("acme", [ev("cb")], explode)
            await writer.barrier()
        assert [line["event"] for line in logs] == ["store_on_done_raised"]
        assert (await writer.append("acme", [ev("cb")])).duplicates == [0]


_KILL_SCRIPT = """
import sys, trio
from meterd.logs import configure
from meterd.model import Event
from meterd.store import Writer

configure(json=True)  # logs to stderr; stdout carries only the acks

async def main():
    writer = Writer(sys.argv[1], commit_interval=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for n in range(1_000_000):
            events = [Event(f"k{n}-{i}", "acme", "api", 1, 60_000) for i in range(20)]
            result = await writer.append("acme", events)
            assert result.accepted == list(range(20))
            print(n, flush=True)  # the ack: sent only after COMMIT

trio.run(main)
"""


def test_acknowledged_appends_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    acked = -1
    try:
        for line in process.stdout:
            acked = int(line)
            if acked == 200:
                break
    finally:
        process.send_signal(signal.SIGKILL)  # mid-stream: the writer is in a transaction
        process.wait()
    assert acked == 200
    conn = open_database(path)  # recovers the WAL
    try:
        # What a new writer does first: the dedupe rows of the tail no pass wrote yet are
        # derived again from the journal.
        catch_up(conn)
        ids = set()
        for (payload,) in conn.execute("SELECT payload FROM event_batches"):
            ids.update(codec.batch_event_ids(payload))
        keys = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
    finally:
        conn.close()
    assert {f"k{n}-{i}" for n in range(acked + 1) for i in range(20)} <= ids
    assert keys == len(ids)  # journal and dedupe index committed together


# -- the audit trail ----------------------------------------------------------------------

_REJECTED = RejectedEvent(
    "acme", None, "invalid_id", "id is missing", meter="api", time=61_000, properties=()
)


async def test_duplicates_conflicts_and_rejections_are_recorded_with_their_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, commit_interval=0, clock=lambda: 5_000)
    async with running(writer), await open_reader(path) as reader:
        first = await writer.append("acme", [ev("d1", properties=(("region", "eu"),)), ev("d2")])
        assert first.batch_id == 1
        done = Collector()
        writer.submit_batch(
            [
                ("acme", [ev("d1", properties=(("region", "eu"),)), ev("d2", quantity=7)]),
                ("globex", [ev("g1", "globex"), ev("g1", "globex")]),
            ],
            done,
            producer="p1",
            seq=3,
            rejected=[
                _REJECTED,
                RejectedEvent("acme", "bad", "invalid_time", "time is missing", meter="api"),
            ],
        )
        await writer.barrier()
        acme, globex = done.outcomes[0]  # type: ignore[misc]
        assert (acme.batch_id, acme.duplicates, acme.conflicts) == (None, [0], [1])
        assert (globex.batch_id, globex.accepted, globex.duplicates) == (2, [0], [1])

        page = await reader.audit("acme", 0, 10**6, limit=10)
        assert page.next_cursor is None
        assert [
            (a.kind, a.event_id, a.code, a.meter, a.time, a.properties, a.seq, a.batch_id)
            for a in page.entries
        ] == [
            ("rejected", "bad", "invalid_time", "api", None, None, 3, None),  # placed at 5_000
            ("duplicate", "d1", None, "api", 60_000, (("region", "eu"),), 3, 1),
            ("rejected", "d2", "id_conflict", "api", 60_000, (), 3, 1),
            ("rejected", None, "invalid_id", "api", 61_000, (), 3, None),
        ]
        assert {(a.producer, a.received_at) for a in page.entries} == {("p1", 5_000)}
        assert "already counted for account 'acme'" in (page.entries[2].message or "")
        # A duplicate within one call points at the batch that counted the first copy.
        [own] = (await reader.audit("globex", 0, 10**6, limit=10)).entries
        assert (own.kind, own.event_id, own.batch_id) == ("duplicate", "g1", 2)

        # Paging: by place then as recorded, never repeating or skipping.
        seen: list[str | None] = []
        cursor = None
        while True:
            page = await reader.audit("acme", 0, 10**6, limit=1, cursor=cursor)
            seen.extend(a.event_id for a in page.entries)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ["bad", "d1", "d2", None]
        # The range is on the place; a meter leaves out other meters.
        assert [
            a.event_id for a in (await reader.audit("acme", 60_000, 61_000, limit=9)).entries
        ] == [
            "d1",
            "d2",
        ]
        assert (await reader.audit("acme", 0, 10**6, "other", limit=9)).entries == []
        with pytest.raises(InvalidCursor):
            await reader.audit("acme", 0, 10, limit=1, cursor="x")
        assert await reader.accounts() == ["acme", "globex"]
        # A batch of new events writes no audit row.
        await writer.append("acme", [ev("d9")])
    assert rows(path, "SELECT count(*) FROM audit") == [(5,)]


async def test_audit_rows_commit_or_roll_back_with_their_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, commit_interval=0)
    async with running(writer):
        await writer.append("acme", [ev("a1")])

        def fail() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        writer._before_commit = fail  # the transaction fails after every row was written
        done = Collector()
        writer.submit_batch(
            [("acme", [ev("a1"), ev("a2")])], done, producer="p", seq=0, rejected=[_REJECTED]
        )
        await writer.barrier()
        assert isinstance(done.outcomes[0], CommitFailed)
        assert rows(path, "SELECT count(*) FROM audit") == [(0,)]
        assert rows(path, "SELECT count(*) FROM event_batches") == [(1,)]

        writer._before_commit = None  # the re-send commits batch and audit rows together
        writer.submit_batch(
            [("acme", [ev("a1"), ev("a2")])], done, producer="p", seq=0, rejected=[_REJECTED]
        )
        await writer.barrier()
        assert rows(path, "SELECT count(*) FROM event_batches") == [(2,)]
        assert rows(path, "SELECT kind, event_id FROM audit ORDER BY audit_id") == [
            ("duplicate", "a1"),
            ("rejected", None),
        ]


async def test_audit_rows_older_than_the_retention_are_pruned_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "AUDIT_PRUNE_BATCH", 2)
    path = tmp_path / "s.sqlite3"
    now = [1_000]
    writer = Writer(path, commit_interval=0, clock=lambda: now[0], audit_retention_ms=58_000)

    def recorded() -> list[tuple[Any, ...]]:
        return rows(path, "SELECT event_id, received_at FROM audit ORDER BY audit_id")

    async with running(writer):
        await writer.append("acme", [ev("a"), ev("b"), ev("c")])
        await writer.append("acme", [ev("a"), ev("b"), ev("c")])  # 3 duplicates at 1_000
        now[0] = 5_000
        await writer.append("acme", [ev("a")])  # young: kept
        assert [r[0] for r in recorded()] == ["a", "b", "c", "a"]
        now[0] = 1_000 + writer_module.AUDIT_PRUNE_EVERY_MS  # the next pass is due
        await writer.append("acme", [ev("d")])
        assert recorded() == [("c", 1_000), ("a", 5_000)]  # 2 a pass: a full one...
        await writer.append("acme", [ev("e")])  # ...so the next group goes on
        assert recorded() == [("a", 5_000)]
        now[0] += 1  # not due: the last pass found less than a batch
        await writer.append("acme", [ev("a")])
        assert [r[0] for r in recorded()] == ["a", "a"]


_KILL_IN_COMMIT_SCRIPT = """
import os, signal, sys, trio
from meterd.model import Event
from meterd.store import RejectedEvent, Writer

async def main():
    writer = Writer(sys.argv[1], commit_interval=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.append("acme", [Event("a1", "acme", "api", 1, 60_000)])
        # Everything of the next group is written; the process dies before its COMMIT.
        writer._before_commit = lambda: os.kill(os.getpid(), signal.SIGKILL)
        rejected = [RejectedEvent("acme", None, "invalid_id", "id is missing")]
        events = [Event(i, "acme", "api", 1, 60_000) for i in ("a1", "a2")]
        writer.submit_batch([("acme", events)], print, rejected=rejected)
        await writer.barrier()

trio.run(main)
"""


def test_a_kill_9_before_commit_leaves_neither_the_batch_nor_its_audit_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_IN_COMMIT_SCRIPT, str(path)], capture_output=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    conn = open_database(path)  # recovers the WAL
    try:
        batches = conn.execute("SELECT count(*) FROM event_batches").fetchone()[0]
        audit = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    finally:
        conn.close()
    assert (batches, audit) == (1, 0)


# -- failures -----------------------------------------------------------------------------


def capped_database(db: Path, **options: Any) -> sqlite3.Connection:
    """``open_database`` with the file capped at the pages it has: the next write that needs
    a new page finds the database full (SQLITE_FULL, as on a full disk)."""
    conn = open_database(db, **options)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    return conn


async def stored_then_capped(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store holding one batch and one checkpoint of ``acme``, which writers opened from
    now on find capped at the pages it has (the real thing: the next write that needs a new
    page finds the database full)."""
    async with running(Writer(path)) as writer:
        await writer.append("acme", [ev("before")])
        await writer.checkpoint("acme", [("api", 0, "", b"old")], 1)
    monkeypatch.setattr(writer_module, "open_database", capped_database)
    return path


async def test_a_full_disk_fails_the_whole_group_writes_nothing_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await stored_then_capped(tmp_path / "s.sqlite3", monkeypatch)
    writer = Writer(path)
    big = [ev(f"big{i}", properties=(("blob", "x" * 250),)) for i in range(100)]
    appends = Collector()
    writer.submit("acme", big, appends)
    writer.submit("globex", [ev("g", "globex")], appends)
    failures: list[BaseException] = []

    async def expect_failure(operation: Callable[[], Any]) -> None:
        try:
            await operation()
        except CommitFailed as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            expect_failure, lambda: writer.checkpoint("acme", [("api", 0, "", b"new")], 2)
        )
        nursery.start_soon(expect_failure, lambda: writer.quarantine("acme", 1, "before", "x"))
        await trio.testing.wait_all_tasks_blocked()
        assert writer.pending == 4  # all queued before the writer runs: one group
        with structlog.testing.capture_logs() as logs:
            async with running(writer):
                await writer.barrier()
                assert writer.stats.failed_commits == 1
                assert writer.stats.commits == 0
                assert "database or disk is full" in (writer.failing or "")  # for /healthz
                # Nothing of the group was written.
                async with await open_reader(path) as reader:
                    loaded = await reader.load_account("acme")
                    assert loaded.watermark == 1
                    assert loaded.windows == [("api", 0, "", b"old")]
                    assert await reader.quarantined() == []
                    assert await reader.known_accounts() == 1
                # The disk has room again: the writer serves the same events as new.
                connection = writer._connection  # test access to the writer's connection
                assert connection is not None
                await trio.to_thread.run_sync(
                    connection.execute, "PRAGMA max_page_count = 1073741823"
                )
                again = await writer.append("acme", big)
                assert writer.failing is None
                assert again.accepted == list(range(100))
                assert again.batch_id == 2
                assert (await writer.append("globex", [ev("g", "globex")])).accepted == [0]
    assert len(failures) == 2
    assert len(appends.outcomes) == 2
    for failure in [*failures, *appends.outcomes]:
        assert isinstance(failure, CommitFailed)
        assert "nothing of it was written: database or disk is full" in str(failure)
        assert isinstance(failure.__cause__, sqlite3.OperationalError)
    failed = [line for line in logs if line["event"] == "store_commit_failed"]
    assert len(failed) == 1
    assert failed[0]["operations"] in (4, 5)  # the 4 operations (and maybe the barrier)
    assert failed[0]["log_level"] == "error"
    assert failed[0]["disk_full"] is True
    assert failed[0]["path"] == str(path)


def failing(writer: Writer) -> str | None:
    return writer.failing  # read anew (not narrowed by an earlier assertion)


async def next_probe(writer: Writer) -> None:
    probed = trio.Event()
    writer.on_probe = probed.set
    with trio.fail_after(10):
        await probed.wait()


async def test_a_failing_writer_probes_while_idle_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, probe_interval=0.01)

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with structlog.testing.capture_logs() as logs:
        async with running(writer):
            writer._before_commit = broken  # every transaction fails, probes included
            with pytest.raises(CommitFailed, match="disk I/O error"):
                await writer.append("acme", [ev("a")])
            for _ in range(3):
                await next_probe(writer)
            assert writer.failing == "OperationalError: disk I/O error"
            assert writer.stats.probes >= 3
            assert writer.stats.failed_commits == 1  # probes are not commits
            watcher = sqlite3.connect(path, isolation_level=None)
            version = watcher.execute("PRAGMA data_version").fetchone()
            writer._before_commit = None  # the fault is gone; no operation arrives
            with trio.fail_after(10):
                while failing(writer) is not None:
                    await next_probe(writer)
            assert writer.stats.commits == 0
            # The probe really wrote (a commit of unchanged bytes writes and syncs nothing),
            # and left the data as it was.
            assert watcher.execute("PRAGMA data_version").fetchone() != version
            assert watcher.execute(
                "SELECT upto FROM journal_slices WHERE slice = 0"
            ).fetchone() == (0,)
            watcher.close()
            assert (await writer.append("acme", [ev("a")])).accepted == [0]
    events = [line["event"] for line in logs]
    assert events.count("store_commit_failed") == 1  # not once per probe
    recovered = [line for line in logs if line["event"] == "store_commit_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["was"] == "OperationalError: disk I/O error"


async def test_after_a_full_disk_probes_wait_for_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await stored_then_capped(tmp_path / "s.sqlite3", monkeypatch)
    free = 0
    monkeypatch.setattr(writer_module, "_free_bytes", lambda _path: free)
    writer = Writer(path, probe_interval=0.01)
    async with running(writer):
        big = [ev(f"big{i}", properties=(("blob", "x" * 250),)) for i in range(100)]
        with pytest.raises(CommitFailed, match="database or disk is full"):
            await writer.append("acme", big)
        connection = writer._connection  # test access to the writer's connection
        assert connection is not None
        await trio.to_thread.run_sync(
            connection.execute, "PRAGMA max_page_count = 1073741823", limiter=writer._limiter
        )
        for _ in range(3):  # the file system says it is still full: no write is tried
            await next_probe(writer)
        assert writer.stats.probes == 0
        assert "database or disk is full" in (writer.failing or "")
        free = writer_module.PROBE_MIN_FREE_BYTES
        await next_probe(writer)
        assert writer.stats.probes == 1
        assert writer.failing is None


async def test_an_unstorable_event_fails_only_its_own_append(tmp_path: Path) -> None:
    async with running(Writer(tmp_path / "s.sqlite3")) as writer:
        good, bad = Collector(), Collector()
        writer.submit("acme", [ev("ok")], good)
        writer.submit("acme", [ev("f", quantity=1.5)], bad)  # type: ignore[arg-type]
        await writer.barrier()
        assert good.result().accepted == [0]
        assert isinstance(bad.outcomes[0], InvalidEvents)
        assert "quantity must be an int or a Decimal, got float" in str(bad.outcomes[0])
        with pytest.raises(InvalidEvents):
            await writer.append("acme", [ev("nan", quantity=Decimal("NaN"))])
        assert writer.stats.failed_commits == 0


async def test_an_unstorable_event_fails_only_its_own_batch_operation(tmp_path: Path) -> None:
    """A producer batch is encoded when it is submitted (before its group transaction):
    one that cannot be stored fails alone, in order, and the batches around it commit."""
    async with running(Writer(tmp_path / "s.sqlite3")) as writer:
        before, bad, after = Collector(), Collector(), Collector()
        writer.submit_batch([("acme", [ev("b1")])], before)
        writer.submit_batch(
            [("globex", [ev("ok", "globex")]), ("acme", [ev("f", quantity=1.5)])],  # type: ignore[arg-type]
            bad,
        )
        writer.submit_batch([("acme", [ev("b2")]), ("globex", [ev("ok", "globex")])], after)
        await writer.barrier()
        [failure] = bad.outcomes
        assert isinstance(failure, InvalidEvents)
        assert "event 0 (id 'f')" in str(failure)
        assert "quantity must be an int or a Decimal, got float" in str(failure)
        [first] = before.outcomes
        assert isinstance(first, list)
        assert first[0].accepted == [0]
        [second] = after.outcomes
        assert isinstance(second, list)
        # globex's "ok" was not stored with the failed batch: it is new here.
        assert [(r.accepted, r.duplicates) for r in second] == [([0], []), ([0], [])]
        assert writer.stats.failed_commits == 0


# -- checkpoints, recovery, quarantine -----------------------------------------------------


async def test_a_checkpoint_merges_its_deltas_into_the_stored_windows(tmp_path: Path) -> None:
    """``merge``: a stored window becomes merge(stored, delta), read and written in the
    checkpoint's transaction; a new window is stored as given; other accounts' windows at
    the same key are not touched."""
    path = tmp_path / "s.sqlite3"
    calls: list[tuple[str, bytes, bytes]] = []

    def concat(meter: str, stored: bytes, delta: bytes) -> bytes:
        calls.append((meter, stored, delta))
        return stored + b"+" + delta

    async with running(Writer(path)) as writer, await open_reader(path) as reader:
        await writer.checkpoint("acme", [("api", 0, "", b"a"), ("api", 60_000, "eu", b"b")], 1)
        await writer.checkpoint(
            "acme", [("api", 0, "", b"c"), ("api", 120_000, "", b"d")], 2, merge=concat
        )
        await writer.checkpoint("globex", [("api", 0, "", b"g")], 7, merge=concat)
        acme = await reader.load_account("acme")
        assert acme.watermark == 2
        assert sorted(acme.windows) == [
            ("api", 0, "", b"a+c"),
            ("api", 60_000, "eu", b"b"),
            ("api", 120_000, "", b"d"),
        ]
        assert calls == [("api", b"a", b"c")]
        globex = await reader.load_account("globex")
        assert (globex.watermark, globex.windows) == (7, [("api", 0, "", b"g")])


async def test_a_failing_merge_fails_its_checkpoint_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"

    def corrupt(meter: str, stored: bytes, delta: bytes) -> bytes:
        raise ValueError(f"window state of {meter} cannot be decoded")

    async with running(Writer(path)) as writer, await open_reader(path) as reader:
        await writer.checkpoint("acme", [("api", 0, "", b"a")], 1)
        commits = writer.stats.commits

        async def failing() -> None:
            with pytest.raises(ValueError, match="cannot be decoded"):
                await writer.checkpoint(
                    "acme", [("api", 60_000, "", b"new"), ("api", 0, "", b"x")], 2, merge=corrupt
                )

        async with trio.open_nursery() as nursery:  # queued in one tick: one group
            nursery.start_soon(failing)
            nursery.start_soon(
                partial(writer.checkpoint, merge=corrupt), "globex", [("api", 0, "", b"g")], 5
            )
        assert writer.stats.commits == commits + 1
        assert writer.stats.failed_commits == 0
        acme = await reader.load_account("acme")
        assert (acme.watermark, acme.windows) == (1, [("api", 0, "", b"a")])  # none of it
        globex = await reader.load_account("globex")
        assert (globex.watermark, globex.windows) == (5, [("api", 0, "", b"g")])


async def test_checkpoint_and_load_account_replay_exactly_after_the_watermark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path)) as writer, await open_reader(path) as reader:
        assert await reader.load_account("acme") == (0, [], [])
        b1 = await writer.append("acme", [ev("1"), ev("2")])
        await writer.append("globex", [ev("g", "globex")])
        b3 = await writer.append("acme", [ev("3", time=180_000)])
        b4 = await writer.append("acme", [ev("4", quantity=Decimal("0.25"))])
        assert (b1.batch_id, b3.batch_id, b4.batch_id) == (1, 3, 4)

        loaded = await reader.load_account("acme")
        assert [batch_id for batch_id, _ in loaded.replay] == [1, 3, 4]

        await writer.checkpoint(
            "acme", [("api", 60_000, "", b"s1"), ("api", 180_000, "eu", b"s3")], 3
        )
        loaded = await reader.load_account("acme")
        assert loaded.watermark == 3
        assert loaded.windows == [("api", 60_000, "", b"s1"), ("api", 180_000, "eu", b"s3")]
        assert loaded.replay == [(4, [ev("4", quantity=Decimal("0.25"))])]

        # A later checkpoint upserts its windows and moves the watermark with them.
        await writer.checkpoint("acme", [("api", 60_000, "", b"s1+4")], 4)
        loaded = await reader.load_account("acme", windows_since=100_000)
        assert (loaded.watermark, loaded.replay) == (4, [])
        assert loaded.windows == [("api", 180_000, "eu", b"s3")]
        assert await reader.windows("acme", "api", 0, 180_000) == [(60_000, "", b"s1+4")]
        assert await reader.windows("acme", "api", 60_001, 10**9) == [(180_000, "eu", b"s3")]
        assert await reader.windows("acme", "other", 0, 10**9) == []
        assert (await reader.load_account("globex")).replay[0][0] == 2
        assert await reader.known_accounts() == 2


async def test_quarantined_events_are_listed_and_left_out_of_replay(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, clock=lambda: 777)) as writer, await open_reader(path) as r:
        batch = await writer.append("acme", [ev("ok"), ev("poison"), ev("ok2")])
        assert batch.batch_id == 1
        await writer.quarantine("acme", 1, "poison", "ZeroDivisionError: boom")
        await writer.quarantine("acme", 1, "poison", "ZeroDivisionError: boom again")
        await writer.quarantine("globex", 9, "x", "other")
        listed = await r.quarantined("acme")
        assert [(q.batch_id, q.event_id, q.error, q.at) for q in listed] == [
            (1, "poison", "ZeroDivisionError: boom again", 777)
        ]
        assert len(await r.quarantined()) == 2
        assert await r.quarantined_count() == 2  # counted by SQLite, for /metrics
        watermark, windows, replay = await r.load_account("acme")  # a 3-tuple
        assert (watermark, windows, replay) == (0, [], [(1, [ev("ok"), ev("ok2")])])


# -- reader -------------------------------------------------------------------------------


async def test_the_reader_sees_committed_data_while_the_writer_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path)
    reached, release = threading.Event(), threading.Event()
    async with running(writer), await open_reader(path) as reader:
        await writer.append("acme", [ev("committed")])

        def hold() -> None:  # the writer thread, inside the group transaction
            reached.set()
            release.wait(30)

        writer._before_commit = hold
        pending = Collector()
        writer.submit("acme", [ev("uncommitted")], pending)
        try:
            await trio.to_thread.run_sync(reached.wait, 30)
            with trio.fail_after(5):
                page = await reader.events("acme", None, 0, 10**9, 10)
                loaded = await reader.load_account("acme")
            assert [e.id for e in page.events] == ["committed"]
            assert [b for b, _ in loaded.replay] == [1]
            assert pending.outcomes == []
        finally:
            writer._before_commit = None
            release.set()
        await writer.barrier()
        assert pending.result().batch_id == 2
        page = await reader.events("acme", None, 0, 10**9, 10)
        assert [e.id for e in page.events] == ["committed", "uncommitted"]


async def test_events_pages_are_stable_while_new_batches_arrive(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    appended: list[Event] = []
    async with running(Writer(path)) as writer, await open_reader(path) as reader:

        async def add(round_: int, size: int) -> None:
            events = [
                ev(f"r{round_}-{i}", meter="api" if i % 3 else "jobs", time=(round_ * 7 + i) * 1000)
                for i in range(size)
            ]
            await writer.append("acme", events)
            await writer.append("globex", [ev(f"noise{round_}", "globex")])
            appended.extend(events)

        for round_ in range(10):
            await add(round_, 5)
        seen: list[Event] = []
        cursor: str | None = None
        round_ = 10
        while True:
            page = await reader.events("acme", None, 0, 10**9, 7, cursor)
            seen.extend(page.events)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            if round_ < 16:  # ingestion goes on between pages
                await add(round_, 4)
                round_ += 1
        assert len({e.id for e in seen}) == len(seen)  # nothing twice
        assert seen == appended  # nothing skipped, journal order

        # Filters: meter and [from, to) on event time, across pages, same as a brute force.
        want = [e for e in appended if e.meter == "jobs" and 10_000 <= e.time < 60_000]
        got: list[Event] = []
        cursor = None
        while True:
            page = await reader.events("acme", "jobs", 10_000, 60_000, 2, cursor)
            assert len(page.events) <= 2
            got.extend(page.events)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert got == want
        assert (await reader.events("nobody", None, 0, 10**9, 5)) == ([], None)
        for bad in ("x", "1", "1.x", "-1.0", "\u0661.\u0662", "9" * 40 + ".1"):
            with pytest.raises(InvalidCursor, match="is not one this server issued"):
                await reader.events("acme", None, 0, 1, 5, bad)
        with pytest.raises(ValueError, match="limit"):
            await reader.events("acme", None, 0, 1, 0)


# -- codec --------------------------------------------------------------------------------

_text = st.text(min_size=0, max_size=20)
_quantities = st.one_of(
    st.integers(min_value=0, max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(abs),
)
_events = st.builds(
    Event,
    id=st.text(min_size=1, max_size=50),
    account=st.just("acct"),
    meter=_text,
    quantity=_quantities,
    time=st.integers(min_value=-(2**62), max_value=2**62),
    properties=st.dictionaries(_text, _text, max_size=5).map(lambda d: tuple(sorted(d.items()))),
    producer=_text,
    received_at=st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(_events, max_size=8))
def test_codec_round_trips_exactly(events: list[Event]) -> None:
    payload = codec.encode_batch(events)
    decoded = codec.decode_batch(payload, "acct")
    assert decoded == events
    # In an exact context, whatever context the model's canonical_quantity relies on.
    with decimal.localcontext(decimal.Context(prec=1000)):
        for before, after in zip(events, decoded, strict=True):
            assert type(after.quantity) is type(before.quantity)
            assert after.fingerprint() == before.fingerprint()
    assert codec.encode_batch(decoded) == payload  # canonical: one encoding per value
    assert codec.batch_event_ids(payload) == [e.id for e in events]


@settings(max_examples=300, deadline=None)
@given(event=_events)
def test_the_writers_row_and_fingerprint_are_the_events(event: Event) -> None:
    """The writer canonicalizes a quantity once for both the row and the fingerprint; the
    fingerprint is part of the file format (dedupe rows), so it must be the event's own."""
    row, fingerprint = codec.event_row_and_fingerprint(event)
    assert row == codec.event_row(event)
    assert fingerprint == event.fingerprint()


# Computed by the code before the writer's batch encoding (main at e153b9f): payloads,
# fingerprints and dedupe keys are the file format, so existing databases must read back
# and dedupe against new events byte for byte.
_PINNED_EVENTS = [
    Event(
        "ev-1", "acct-00042", "dyno.seconds", Decimal("12.340"), 1_764_000_000_123,
        (("app", "app-3"), ("size", "std-1x")), "prod-a", 1_764_000_001_000,
    ),
    Event("ev-2", "acct-00042", "api.calls", 7, 1_764_000_000_000, (), "prod-a", 1_764_000_001_000),
    Event(
        "ev-\u00e9", "acct-00042", "dyno.seconds", Decimal("-0.000"), -5, (("k", "v\x1fw"),),
        "", 0,
    ),
    Event("big", "acct-00042", "bytes", 2**70, 0, (), "p", 1),
    Event("tiny", "acct-00042", "m", Decimal("1E-9"), 1, (), "p", 1),
    Event("exp", "acct-00042", "m", Decimal("25E+3"), 1, (), "p", 1),
]  # fmt: skip
_PINNED_PAYLOAD = bytes.fromhex(
    "9697a465762d31ac64796e6f2e7365636f6e6473a531322e3334cf0000019ab697e87b82a3617070a561"
    "70702d33a473697a65a67374642d3178a670726f642d61cf0000019ab697ebe897a465762d32a9617069"
    "2e63616c6c7307cf0000019ab697e80080a670726f642d61cf0000019ab697ebe897a565762dc3a9ac64"
    "796e6f2e7365636f6e6473a130fb81a16ba3761f77a00097a3626967a56279746573c716013131383035"
    "39313632303731373431313330333432340080a1700197a474696e79a16dab302e303030303030303031"
    "0180a1700197a3657870a16da532353030300180a17001"
)
_PINNED_BUCKET = 1595988406716858368
_PINNED_FINGERPRINTS = [
    7874279323538004777, 837176367054285263, 2381469792914871566,
    4412510135373989636, 2439201710981775368, 8007854286911018567,
]  # fmt: skip
_PINNED_KEYS = [
    1595988970220224064, 1595988746520946348, 1595988550815057645,
    1595988642559890600, 1595989313327156081, 1595989136201725116,
]  # fmt: skip


def test_the_file_format_is_pinned() -> None:
    """Payload bytes, fingerprints and dedupe keys as the code before the batch encoding
    wrote them, through every path the writer and the store use."""
    events = _PINNED_EVENTS
    assert codec.encode_batch(events) == _PINNED_PAYLOAD
    packed, fingerprints = codec.encode_rows(events)
    assert codec.pack_batch(packed) == _PINNED_PAYLOAD
    assert fingerprints == _PINNED_FINGERPRINTS
    assert [event.fingerprint() for event in events] == _PINNED_FINGERPRINTS
    assert schema.account_bucket("acct-00042") == _PINNED_BUCKET
    buckets = {"acct-00042": _PINNED_BUCKET}
    assert schema.dedupe_row_keys(buckets, events) == _PINNED_KEYS
    assert [schema.dedupe_row_key(_PINNED_BUCKET, event) for event in events] == _PINNED_KEYS
    assert codec.decode_batch(_PINNED_PAYLOAD, "acct-00042") == events  # Decimals by value


async def test_the_writer_stores_the_pinned_format(tmp_path: Path) -> None:
    """What the writer commits for one-event and several-event groups: the pinned payload
    (split by group), fingerprints and keys."""
    path = tmp_path / "s.sqlite3"
    events = _PINNED_EVENTS
    async with running(Writer(path)) as writer:
        done = Collector()
        writer.submit_batch([("acct-00042", events[:1])], done)
        await writer.barrier()
        writer.submit_batch([("acct-00042", events[1:])], done)
        await writer.barrier()
    assert [type(outcome) for outcome in done.outcomes] == [list, list]
    [(first,), (rest,)] = rows(path, "SELECT payload FROM event_batches ORDER BY batch_id")
    assert first == codec.pack_batch([codec.encode_event(events[0])])
    assert b"\x96" + first[1:] + rest[1:] == _PINNED_PAYLOAD
    stored = rows(path, "SELECT key, batch_id, fingerprint FROM dedupe ORDER BY fingerprint")
    want = sorted(
        zip(_PINNED_KEYS, [1, 2, 2, 2, 2, 2], _PINNED_FINGERPRINTS, strict=True),
        key=lambda row: row[2],
    )
    assert stored == want


_any_quantities = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.decimals(min_value=-1, max_value=1, places=9),
    st.sampled_from([Decimal("-0"), Decimal("0E-9"), Decimal("-0.000"), Decimal("1E+3")]),
    st.floats(allow_nan=False),  # refused: usage is exact
    st.booleans(),  # refused: not an int quantity
)
_any_events = st.builds(
    Event,
    id=st.text(min_size=1, max_size=20),
    account=st.sampled_from(["acct", "other"]),
    meter=_text,
    quantity=_any_quantities,
    time=st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.just(True)),
    properties=st.one_of(  # sorted unique keys (valid), or any keys (maybe twice: refused)
        st.dictionaries(_text, _text, max_size=4).map(lambda d: tuple(sorted(d.items()))),
        st.lists(st.tuples(st.sampled_from("abc"), _text), max_size=3).map(tuple),
    ),
    producer=_text,
    received_at=st.integers(min_value=0, max_value=2**62),
)


def _row_and_fingerprint(event: Event) -> tuple[bytes, int] | type[Exception]:
    """The reference: the per-event encoding the writer used before ``encode_rows``."""
    try:
        return codec.pack_rows([codec.event_row(event)])[1:], event.fingerprint()
    except (TypeError, ValueError, ArithmeticError) as exc:
        return type(exc)


@settings(max_examples=500, deadline=None)
@given(events=st.lists(_any_events, max_size=6))
def test_batch_encoding_agrees_with_the_per_event_encoding(events: list[Event]) -> None:
    """``encode_rows`` (the writer's hot path) gives each event's packed row and fingerprint
    exactly, and refuses exactly what the per-event functions refuse."""
    want = [_row_and_fingerprint(event) for event in events]
    for event, expected in zip(events, want, strict=True):
        if isinstance(expected, tuple):
            packed, fingerprints = codec.encode_rows([event])
            assert (packed[0], fingerprints[0]) == expected
        else:
            with pytest.raises((TypeError, ValueError, ArithmeticError)):
                codec.encode_rows([event])
    if all(isinstance(expected, tuple) for expected in want):
        packed, fingerprints = codec.encode_rows(events)
        assert list(zip(packed, fingerprints, strict=True)) == want
    else:
        with pytest.raises((TypeError, ValueError, ArithmeticError)):
            codec.encode_rows(events)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_any_events, max_size=6))
def test_batch_dedupe_keys_agree_with_the_events(events: list[Event]) -> None:
    buckets = {account: schema.account_bucket(account) for account in ("acct", "other")}
    assert schema.dedupe_row_keys(buckets, events) == [
        schema.dedupe_row_key(buckets[event.account], event) for event in events
    ]


@settings(max_examples=300, deadline=None)
@given(
    quantity=st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=None),
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.integers(-(10**40), 10**40),
    )
)
def test_codec_quantities_are_the_models_canonical_text(quantity: int | Decimal) -> None:
    encoded = codec.encode_quantity(quantity)
    decoded = codec.decode_quantity(encoded)
    assert decoded == quantity
    assert type(decoded) is type(quantity)
    with decimal.localcontext(decimal.Context(prec=1000)):  # the model's text, computed exactly
        if isinstance(quantity, Decimal):
            assert encoded == canonical_quantity(quantity)
        assert canonical_quantity(decoded) == canonical_quantity(quantity)


def test_codec_quantities() -> None:
    assert codec.encode_quantity(Decimal("1.50")) == "1.5"
    assert codec.encode_quantity(Decimal("1E+3")) == "1000"
    assert codec.encode_quantity(Decimal("0.1234567890123456789012345678901234567")) == (
        "0.1234567890123456789012345678901234567"  # more digits than the default context
    )
    assert codec.decode_quantity(codec.encode_quantity(2**70)) == 2**70
    with pytest.raises(TypeError, match="got float"):
        codec.encode_quantity(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode_quantity(True)
    with pytest.raises(ValueError, match="not finite"):
        codec.encode_quantity(Decimal("Infinity"))
    with pytest.raises(StoreError, match="batch 9: payload is not msgpack"):
        codec.decode_batch(b"\xc1", "a", where="batch 9")
