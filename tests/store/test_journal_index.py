"""The journal index filled in passes (meterd/store/journal_index.py): the tail in memory,
the passes, the catch-up at start, and readers that see every batch at every moment."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.model import Event
from meterd.store import Reader, Store, Writer, journal_index, open_reader
from meterd.store import _group as store_group
from meterd.store import _housekeeping as housekeeping
from meterd.store import _writer as store_writer
from meterd.store.journal_index import MAX_SLICES_PER_GROUP, JournalTail
from meterd.store.schema import SLICES, slice_of
from tests.examples import examples
from tests.store.helpers import faulty_writer, rows, running, store_config, until

ACCOUNTS = ("acme", "globex", "initech", "umbrella", "hooli")


class Clock:
    """Wall-clock milliseconds the test moves by hand (the writer's ``clock``)."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def event(event_id: str, account: str, time: int = 60_000) -> Event:
    return Event(event_id, account, "api", 1, time, (), "prod", 1)


def stored_batches(path: Path, account: str) -> list[int]:
    """The truth: every journal batch of ``account``, read without any index."""
    return [
        b for (b,) in rows(path, "SELECT batch_id FROM event_batches WHERE account = ?", account)
    ]


# -- the slice function and the in-memory tail ----------------------------------------------


def test_the_slice_of_an_account_is_pinned() -> None:
    # Part of the file format (journal_slices.upto is per slice): it must never change.
    assert [slice_of(a) for a in ACCOUNTS] == [zlib.crc32(a.encode()) % 256 for a in ACCOUNTS]
    assert (slice_of("acme"), slice_of("ünïcode")) == (62, 170)
    assert SLICES == 256


def test_the_tail_passes_the_slices_in_turn_once_per_cycle() -> None:
    tail = JournalTail(cycle_ms=2560)  # a slice every 10 ms
    assert tail.due(10**9) == []  # the clock starts with the first committed group
    tail.committed([("acme", 1, 5, 6)], {}, [], now_ms=0)
    assert tail.entries("acme") == [(1, 5, 6)]
    assert tail.size == 1
    assert tail.due(9) == []
    assert tail.due(35) == [0, 1, 2]
    k = slice_of("acme")
    tail.committed([("acme", 2, 7, 7)], {}, list(range(k + 1)), now_ms=10 * (k + 1))
    assert tail.entries("acme") == []  # its slice was passed, with the group's new batch
    assert tail.size == 0
    assert tail.next_slice == k + 1
    assert tail.due(10 * (k + 1) + 10) == [k + 1]
    assert len(tail.due(10**9)) == MAX_SLICES_PER_GROUP  # a long idle time: a share a group


def test_an_index_cycle_under_a_millisecond_is_refused() -> None:
    with pytest.raises(ValueError, match="index cycle"):
        JournalTail(cycle_ms=0)


# -- the writer's passes ----------------------------------------------------------------------


async def test_appends_wait_in_the_tail_until_their_slice_is_passed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer = Writer(path, store_config(commit_interval=0, index_cycle=1.0), clock=clock)
    async with running(writer):
        for n, account in enumerate(ACCOUNTS):
            await writer.append(account, [event(f"e{n}", account)])
        assert writer.journal_tail.size == len(ACCOUNTS)
        assert rows(path, "SELECT count(*) FROM journal_index") == [(0,)]
        assert writer.journal_tail.entries("globex") == [(2, 60_000, 60_000)]

        clock.now += 1_000  # a whole cycle: every slice is due, but a group passes 16 at most
        await writer.append("acme", [event("late", "acme", time=90_000)])
        assert rows(path, "SELECT count(*) FROM journal_slices WHERE upto = 6") == [
            (MAX_SLICES_PER_GROUP,)
        ]
        for n in range(SLICES // MAX_SLICES_PER_GROUP - 1):  # the next groups pass the rest
            await writer.append("acme", [event(f"later{n}", "acme", time=90_000)])
        assert rows(path, "SELECT min(upto) FROM journal_slices") >= [(6,)]
        indexed = rows(path, "SELECT account, batch_id, min_time, max_time FROM journal_index")
        assert set(indexed) >= {(a, b, 60_000, 60_000) for b, a in enumerate(ACCOUNTS, start=1)}
        assert writer.journal_tail.size < SLICES // MAX_SLICES_PER_GROUP  # the latest only


async def test_a_group_passes_only_the_slices_whose_turn_came(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer = Writer(
        path, store_config(commit_interval=0, index_cycle=2.56), clock=clock
    )  # 10 ms a slice
    async with running(writer):
        await writer.append("acme", [event("a", "acme")])  # starts the passes' clock
        clock.now += 30
        await writer.append("acme", [event("b", "acme")])
        upto = dict(rows(path, "SELECT slice, upto FROM journal_slices"))
        assert [k for k, value in upto.items() if value == 2] == [0, 1, 2]
        assert writer.journal_tail.next_slice == 3


async def test_a_failed_group_changes_neither_the_index_nor_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer, faults = faulty_writer(
        path, store_config(commit_interval=0, index_cycle=1.0), clock=clock
    )
    async with running(writer):
        await writer.append("acme", [event("a", "acme")])
        clock.now += 1_000

        def fail() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        faults.before_commit = fail
        with pytest.raises(Exception, match="disk I/O error"):
            await writer.append("globex", [event("b", "globex")])
        faults.before_commit = None
        assert writer.journal_tail.entries("acme") == [(1, 60_000, 60_000)]
        assert writer.journal_tail.entries("globex") == []
        assert rows(path, "SELECT count(*) FROM journal_index") == [(0,)]
        await writer.append("globex", [event("b", "globex")])  # the first 16 slices
        for n in range(SLICES // MAX_SLICES_PER_GROUP - 1):  # the others, 16 a group
            await writer.barrier()
            await writer.quarantine("nobody", 1, f"x{n}", "a group with no batch")
        assert writer.journal_tail.size == 0
        assert sorted(rows(path, "SELECT account, batch_id FROM journal_index")) == [
            ("acme", 1),
            ("globex", 2),
        ]


async def test_a_failing_pass_never_fails_the_appends_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass that raises (a bug, a corrupt index page): the group commits without it, the
    # rows stay in the tail (dedupe and readers still see them), passes resume later.
    broken = True
    attempts: list[list[int]] = []

    def pass_slices(conn: sqlite3.Connection, tail: JournalTail, slices: Any, *args: Any) -> None:
        if slices:
            attempts.append(list(slices))
        if broken and slices:
            conn.execute("INSERT INTO journal_index VALUES ('x', 1, 0, 0)")  # rolled back
            raise sqlite3.IntegrityError("UNIQUE constraint failed: dedupe.key")
        journal_index.pass_slices(conn, tail, slices, *args)

    monkeypatch.setattr(store_group, "pass_slices", pass_slices)
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer = Writer(path, store_config(commit_interval=0, index_cycle=1.0), clock=clock)
    with structlog.testing.capture_logs() as logs:
        async with running(writer):
            await writer.append("acme", [event("a", "acme")])  # starts the passes' clock
            clock.now += 1_000
            result = await writer.append("globex", [event("b", "globex")])  # its pass fails
            assert result.accepted == [0]
            assert len(attempts) == 1
            assert writer.stats.failed_passes == 1
            why = "IntegrityError: UNIQUE constraint failed: dedupe.key"
            assert (writer.failing, writer.pass_failing) == (None, why)  # commits do not fail
            assert rows(path, "SELECT count(*) FROM journal_index") == [(0,)]
            assert writer.journal_tail.size == 2
            # Dedupe and readers read the tail meanwhile.
            again = await writer.append("acme", [event("a", "acme"), event("c", "acme")])
            assert (again.accepted, again.duplicates) == ([1], [0])
            for reader in (Reader(path, tail=writer.journal_tail.entries), await open_reader(path)):
                try:
                    loaded = await reader.load_account("acme")
                    assert [b for b, _ in loaded.replay] == [1, 3]
                finally:
                    await reader.aclose()

            clock.now += store_group.PASS_RETRY_MS - 1  # no pass tried meanwhile
            await writer.append("acme", [event("d", "acme")])
            assert len(attempts) == 1

            broken = False
            clock.now += 1
            await writer.append("acme", [event("e", "acme")])
            assert len(attempts) == 2
            assert (writer.failing, writer.pass_failing) == (None, None)
            for n in range(SLICES // MAX_SLICES_PER_GROUP):  # every slice's turn again
                await writer.quarantine("nobody", 1, f"x{n}", "a group with no batch")
            assert writer.journal_tail.size == 0
            assert sorted(rows(path, "SELECT account, batch_id FROM journal_index")) == [
                ("acme", 1),
                ("acme", 3),
                ("acme", 4),
                ("acme", 5),
                ("globex", 2),
            ]
    failed = [line for line in logs if line["event"] == "journal_index_pass_failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert failed[0]["retry_after_ms"] == store_group.PASS_RETRY_MS
    assert [line["event"] for line in logs].count("journal_index_pass_recovered") == 1


async def test_an_idle_writer_tries_failing_passes_again_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    broken = True

    def pass_slices(conn: sqlite3.Connection, tail: JournalTail, slices: Any, *args: Any) -> None:
        if broken and slices:
            raise RuntimeError("a bug in the pass")
        journal_index.pass_slices(conn, tail, slices, *args)

    monkeypatch.setattr(store_group, "pass_slices", pass_slices)
    clock = Clock()
    writer = Writer(
        tmp_path / "s.sqlite3", store_config(commit_interval=0, index_cycle=1.0), clock=clock
    )
    with structlog.testing.capture_logs() as logs:
        async with running(writer):
            await writer.append("acme", [event("a", "acme")])
            clock.now += 1_000
            await writer.append("globex", [event("b", "globex")])  # its pass fails
            assert (writer.failing, writer.pass_failing) == (
                None,
                "RuntimeError: a bug in the pass",
            )
            broken = False
            clock.now += store_group.PASS_RETRY_MS
            # No operation: the housekeeper queues a pass again after a pause.
            await until(writer, lambda: writer.stats.idle_passes == 1)
            assert trio.current_time() >= store_group.PASS_RETRY_MS / 1000
            assert (writer.failing, writer.pass_failing) == (None, None)
            assert writer.stats.idle_passes == 1
            assert writer.stats.commits == 2  # the appends only
    assert [line["event"] for line in logs].count("journal_index_pass_recovered") == 1


def crash_on_stop(writer: Writer) -> None:
    """Stopping ``writer`` then leaves what kill -9 leaves: no final pass, the tail unwritten
    (tests/system/test_kill9.py and tests/store/ kill real processes)."""

    async def no_final_pass() -> None:
        pass

    writer._pass_everything = no_final_pass  # type: ignore[method-assign]


async def leave_a_tail(path: Path) -> None:
    """Six batches of three accounts in a store a crashed writer left without their index
    and dedupe rows."""
    crashed = Writer(path, store_config(commit_interval=0, index_cycle=3600.0))
    crash_on_stop(crashed)
    async with running(crashed):
        for n in range(6):
            await crashed.append(ACCOUNTS[n % 3], [event(f"e{n}", ACCOUNTS[n % 3])])


async def check_recovered(store: Store) -> None:
    """The store decides and reads as if no row of :func:`leave_a_tail` had been lost."""
    loaded = await store.reader.load_account("acme")
    assert [batch_id for batch_id, _ in loaded.replay] == [1, 4]
    again = await store.writer.append(
        "acme", [event("e0", "acme"), event("e3", "acme", time=1), event("e9", "acme")]
    )
    assert (again.duplicates, again.conflicts, again.accepted) == ([0], [1], [2])


async def test_a_stopped_writer_leaves_nothing_to_catch_up(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, store_config(commit_interval=0, index_cycle=3600.0))
    async with running(writer):
        for n in range(6):
            await writer.append(ACCOUNTS[n % 3], [event(f"e{n}", ACCOUNTS[n % 3])])
        assert writer.journal_tail.size == 6
        assert rows(path, "SELECT count(*) FROM dedupe") == [(0,)]
    assert writer.journal_tail.size == 0
    assert rows(path, "SELECT count(*) FROM journal_index") == [(6,)]
    assert rows(path, "SELECT count(*) FROM dedupe") == [(6,)]
    assert rows(path, "SELECT min(upto), max(upto) FROM journal_slices") == [(6, 6)]


async def test_a_new_writer_indexes_the_tail_a_crash_left_before_anyone_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    await leave_a_tail(path)
    # The old writer's memory is gone; the file has a tail no pass wrote.
    assert rows(path, "SELECT count(*) FROM journal_index") == [(0,)]
    assert rows(path, "SELECT count(*) FROM dedupe") == [(0,)]
    store = Store.at(path, store_config(commit_interval=0))
    with structlog.testing.capture_logs() as logs:
        async with running(store.writer):
            assert {"event": "journal_index_caught_up", "batches": 6} in [
                {k: v for k, v in line.items() if k in ("event", "batches")} for line in logs
            ]
            assert store.writer.journal_tail.size == 0
            assert rows(path, "SELECT count(*) FROM dedupe") == [(6,)]
            # The dedupe rows derived from the journal decide as the lost ones would have.
            await check_recovered(store)
    await store.aclose()
    # The stop's final pass wrote the batch appended after the catch-up too.
    assert rows(path, "SELECT min(upto), max(upto) FROM journal_slices") == [(7, 7)]


# -- readers see every batch, whatever was passed ---------------------------------------------

Step = tuple[str, int]
# ("append", account index): a new event; ("resend", n) / ("conflict", n): the n-th event
# sent so far again, as it was / with another time; ("tick", ms): the clock moves;
# ("restart", 0) / ("crash", 0): a new writer after a stop / after a crash (no final pass).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, len(ACCOUNTS) - 1)),
        st.tuples(st.sampled_from(["resend", "conflict"]), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.integers(1, 1_500)),
        st.tuples(st.sampled_from(["restart", "crash"]), st.just(0)),
    ),
    min_size=1,
    max_size=30,
)


async def check_readers(path: Path, writer: Writer, sql_reader: Reader) -> None:
    memory_reader = Reader(path, tail=writer.journal_tail.entries)
    try:
        for account in ACCOUNTS:
            truth = stored_batches(path, account)
            for reader in (memory_reader, sql_reader):
                loaded = await reader.load_account(account)
                assert [b for b, _ in loaded.replay] == truth, (account, reader is sql_reader)
                paged: list[str] = []
                cursor = None
                while True:  # pages of 2 events: a cursor across the index and the tail
                    page = await reader.events(account, None, 0, 10**9, 2, cursor)
                    paged.extend(e.id for e in page.events)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                assert paged == [e.id for _, events in loaded.replay for e in events]
    finally:
        await memory_reader.aclose()


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
def test_readers_see_every_batch_whatever_was_passed(tmp_path: Path, steps: list[Step]) -> None:
    path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.sqlite3"
    clock = Clock()

    async def main() -> None:
        numbers = iter(range(10**6))
        writer = Writer(path, store_config(commit_interval=0, index_cycle=1.0), clock=clock)
        sql_reader: Reader | None = None
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run_writer(w: Writer, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await w.run(task_status=task_status)

            await nursery.start(run_writer, writer)
            sql_reader = await open_reader(path)
            sent: list[Event] = []
            for kind, value in steps:
                if kind == "append":
                    account = ACCOUNTS[value]
                    n = next(numbers)
                    sent.append(event(f"e{n}", account, time=1000 * n))
                    assert (await writer.append(account, [sent[-1]])).accepted == [0]
                elif kind in ("resend", "conflict") and sent:
                    e = sent[value % len(sent)]
                    if kind == "conflict":
                        e = event(e.id, e.account, time=e.time + 1)
                    verdict = await writer.append(e.account, [e])
                    want = ([0], []) if kind == "resend" else ([], [0])
                    assert (verdict.duplicates, verdict.conflicts) == want, (kind, e)
                elif kind == "tick":
                    clock.now += value
                elif kind in ("restart", "crash"):  # a new writer: its memory starts empty
                    if kind == "crash":
                        crash_on_stop(writer)
                    scope.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    scope = trio.CancelScope()
                    writer = Writer(
                        path, store_config(commit_interval=0, index_cycle=1.0), clock=clock
                    )
                    await nursery.start(run_writer, writer)
                await check_readers(path, writer, sql_reader)
            scope.cancel()
        assert sql_reader is not None
        await sql_reader.aclose()

    trio.run(main)


async def test_an_idle_writer_writes_a_large_tail_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst the tail is written while nothing waits for a commit (groups of passes
    only, not counted as commits), instead of by the groups of the next load."""
    monkeypatch.setattr(housekeeping, "IDLE_PASS_MIN_BATCHES", 3)
    monkeypatch.setattr(housekeeping, "IDLE_PASS_AFTER", 0.001)
    path = tmp_path / "s.sqlite3"
    clock = Clock()  # never moves: no slice is ever due by the clock
    writer = Writer(path, store_config(commit_interval=0, index_cycle=3600.0), clock=clock)
    async with running(writer):
        for n in range(6):
            await writer.append(ACCOUNTS[n % 5], [event(f"e{n}", ACCOUNTS[n % 5])])
        commits = writer.stats.commits
        with trio.fail_after(30):  # a safety net against a hang, not a timing assertion
            await until(writer, lambda: writer.journal_tail.size < 3)
        assert writer.stats.idle_passes >= 1
        assert writer.stats.commits == commits
        written = rows(path, "SELECT count(*) FROM journal_index")[0][0]
        assert written >= 6 - 2
        assert written + writer.journal_tail.size == 6


async def test_a_writer_starts_on_a_full_disk_holding_the_tail_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash left a tail, and the start's catch-up cannot write (here: made to fail as a
    full disk does): the writer starts anyway, holding the same rows in memory, and its
    verdicts and readers are those of a caught-up store; the passes write the rows later."""
    path = tmp_path / "s.sqlite3"
    await leave_a_tail(path)

    def full(conn: sqlite3.Connection) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_writer, "catch_up", full)
    clock = Clock()
    writer = Writer(path, store_config(commit_interval=0, index_cycle=1.0), clock=clock)
    store = Store(writer, Reader(path, tail=writer.journal_tail.entries))
    with structlog.testing.capture_logs() as logs:
        async with running(store.writer):
            assert {"event": "journal_index_catch_up_failed", "held": 6} in [
                {k: v for k, v in line.items() if k in ("event", "held")} for line in logs
            ]
            assert store.writer.journal_tail.size == 6
            await check_recovered(store)
            clock.now += 1_000  # the passes write what the catch-up could not
            for n in range(SLICES // MAX_SLICES_PER_GROUP):
                await store.writer.append("acme", [event(f"x{n}", "acme")])
    await store.aclose()
    assert rows(path, "SELECT count(*) FROM dedupe") == [(7 + SLICES // MAX_SLICES_PER_GROUP,)]
    assert rows(path, "SELECT count(*) FROM journal_index") == [
        (7 + SLICES // MAX_SLICES_PER_GROUP,)
    ]


async def test_events_page_through_a_tail_longer_than_a_read_chunk(tmp_path: Path) -> None:
    """An account with more tail batches than the reader takes a chunk at a time (64), some
    of them indexed: pages of every size give every event once, in journal order."""
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    writer = Writer(
        path, store_config(commit_interval=0, index_cycle=2.56), clock=clock
    )  # 10 ms a slice
    async with running(writer), await open_reader(path) as sql_reader:
        for n in range(150):
            if n == 40:  # the first 40 reach the index; the rest stay in the tail
                clock.now += 2_560
                for _ in range(SLICES // MAX_SLICES_PER_GROUP):
                    await writer.append("globex", [event(f"g{_}-{n}", "globex")])
            await writer.append("acme", [event(f"a{n}", "acme", time=1000 + n)])
        assert len(writer.journal_tail.entries("acme")) == 110
        memory_reader = Reader(path, tail=writer.journal_tail.entries)
        try:
            for reader in (memory_reader, sql_reader):
                for limit in (1, 7, 64, 65, 200):
                    seen: list[str] = []
                    cursor = None
                    while True:
                        page = await reader.events("acme", None, 0, 10**9, limit, cursor)
                        seen.extend(e.id for e in page.events)
                        if page.next_cursor is None:
                            break
                        cursor = page.next_cursor
                    assert seen == [f"a{n}" for n in range(150)], (limit, reader is sql_reader)
        finally:
            await memory_reader.aclose()
