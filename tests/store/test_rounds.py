"""Several writers in one commit loop (meterd.store._rounds): an owner's shard files."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from meterd.store import AppendResult, CommitFailed, CommitRounds, Writer
from meterd.store import wal as wal_module
from tests.store.helpers import Collector, ev, faulty_writer, rows, store_config, until


def answered(collector: Collector) -> bool:
    return len(collector.outcomes) == 1


async def test_a_round_commits_every_file_with_operations_queued_once(tmp_path: Path) -> None:
    rounds = CommitRounds(0.002)
    writers = [
        Writer(tmp_path / f"shard-{n}.sqlite3", store_config(), rounds=rounds) for n in range(3)
    ]
    done = [Collector() for _ in writers]
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        for writer in writers:
            await nursery.start(writer.run)
        assert rounds.writers == writers
        for n, writer in enumerate(writers):  # one tick: one round for the three files
            writer.submit_batch([(f"acct-{n}", [ev(f"e{n}", f"acct-{n}")])], done[n])
        for writer, collector in zip(writers, done, strict=True):
            await until(writer, partial(answered, collector))
        assert rounds.widest == 3  # the three files in one round
        assert [writer.stats.commits for writer in writers] == [1, 1, 1]
        nursery.cancel_scope.cancel()
    assert rounds.writers == []
    for n, writer in enumerate(writers):
        assert rows(writer.path, "SELECT account FROM event_batches") == [(f"acct-{n}",)]


async def test_a_file_waits_for_the_round_under_load_and_groups_grow(tmp_path: Path) -> None:
    rounds = CommitRounds(0.0)
    slow, faults = faulty_writer(tmp_path / "slow.sqlite3", store_config(), rounds=rounds)
    fast = Writer(tmp_path / "fast.sqlite3", store_config(), rounds=rounds)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    done = Collector()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rounds.run)
            await nursery.start(slow.run)
            await nursery.start(fast.run)
            faults.before_commit = hold
            slow.submit("a", [ev("s1", "a")], done)
            fast.submit("b", [ev("f1", "b")], done)
            await trio.to_thread.run_sync(entered.wait)
            for i in range(5):  # queued while the round waits for the slow file
                fast.submit("b", [ev(f"f{i + 2}", "b")], done)
            await trio.testing.wait_all_tasks_blocked()
            # Nothing committed alone meanwhile, and the round's answers wait for its end
            # (every file of it durable).
            assert fast.stats.commits == 0
            assert done.outcomes == []
            faults.before_commit = None
            release.set()
            await until(fast, lambda: len(done.outcomes) == 7)
            assert fast.stats.commits == 2
            assert fast.stats.largest_group >= 5  # one group of them
            nursery.cancel_scope.cancel()
    finally:  # never leave the slow file's thread waiting
        faults.before_commit = None
        release.set()


async def one_round_with_a_bug(
    nursery: trio.Nursery, rounds: CommitRounds, broken: Writer, other: Writer, bug: str,
    break_it: Callable[[], None], done: Collector,
) -> None:  # fmt: skip
    """Run ``rounds`` and ``other`` in ``nursery``; run ``broken`` (``break_it()`` once it
    runs) while one operation is queued on each file: ``broken`` ends with ``bug``, and
    leaves the loop to ``other``."""
    await nursery.start(rounds.run)
    await nursery.start(other.run)

    async def run_broken() -> None:
        async with trio.open_nursery() as inner:
            await inner.start(broken.run)
            break_it()
            broken.submit("a", [ev("x1", "a")], done)
            other.submit("b", [ev("y1", "b")], done)

    with pytest.raises(BaseExceptionGroup) as raised:
        await run_broken()
    assert raised.group_contains(RuntimeError, match=bug)
    assert rounds.writers == [other]


async def test_a_group_that_raises_ends_its_writer_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    broken = Writer(tmp_path / "broken.sqlite3", store_config(), rounds=rounds)
    other = Writer(tmp_path / "other.sqlite3", store_config(), rounds=rounds)

    def boom(*_: object) -> None:
        raise RuntimeError("a bug after the commit")

    def break_it() -> None:
        monkeypatch.setattr(broken, "_committed", boom)

    async with trio.open_nursery() as nursery:
        bug = "a bug after the commit"
        await one_round_with_a_bug(nursery, rounds, broken, other, bug, break_it, Collector())
        # The broken writer left the loop; the other goes on committing.
        await other.append("b", [ev("y2", "b")])
        assert rows(other.path, "SELECT count(*) FROM event_batches") == [(2,)]
        # Restarted (as its supervisor would), it commits in the rounds again.
        monkeypatch.undo()
        await nursery.start(broken.run)
        await broken.append("a", [ev("x2", "a")])
        assert rows(broken.path, "SELECT count(*) FROM event_batches") == [(2,)]
        nursery.cancel_scope.cancel()


async def test_a_stopped_writer_commits_its_last_group_itself(tmp_path: Path) -> None:
    rounds = CommitRounds(0.0)
    writer = Writer(tmp_path / "s.sqlite3", store_config(), rounds=rounds)
    done = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(writer.run)
                writer.submit("a", [ev("z1", "a")], done)
                scope.cancel()  # stopped before the round took it
        assert rounds.writers == []
        assert len(done.outcomes) == 1
        assert rows(writer.path, "SELECT count(*) FROM event_batches") == [(1,)]
        nursery.cancel_scope.cancel()


class _Recording:
    """A write connection class that records on which thread each file began its
    transactions and committed, and can fail one kind of statement (``fail``: SQL prefix)."""

    def __init__(self) -> None:
        self.begun: dict[str, set[int]] = {}
        self.committed: dict[str, set[int]] = {}
        self.fail: tuple[str, str] | None = None  # (file, SQL prefix) whose statement fails
        self.before_commit: Any = None

    def connection_class(self, name: str) -> type[sqlite3.Connection]:
        recording = self

        class Recorded(sqlite3.Connection):
            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                if sql == "BEGIN IMMEDIATE":
                    recording.begun.setdefault(name, set()).add(threading.get_ident())
                elif sql == "COMMIT":
                    recording.committed.setdefault(name, set()).add(threading.get_ident())
                    if recording.before_commit is not None:
                        recording.before_commit(name)
                return super().execute(sql, parameters)

            def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
                if recording.fail is not None and (name, sql[: len(recording.fail[1])]) == (
                    recording.fail
                ):
                    raise sqlite3.OperationalError("disk I/O error (injected)")
                return super().executemany(sql, parameters)

        return Recorded


def _recorded_writers(
    tmp_path: Path, rounds: CommitRounds, names: list[str], recording: _Recording
) -> list[Writer]:
    return [
        Writer(
            tmp_path / f"{name}.sqlite3",
            store_config(),
            rounds=rounds,
            connection_factory=recording.connection_class(name),
        )
        for name in names
    ]


async def test_a_round_writes_every_files_statements_on_one_thread_and_commits_them_at_once(
    tmp_path: Path,
) -> None:
    rounds = CommitRounds(0.0)
    recording = _Recording()
    names = ["s0", "s1", "s2"]
    writers = _recorded_writers(tmp_path, rounds, names, recording)
    # Every file's COMMIT waits until all three are in flight: they overlap (never one
    # after the other, which would multiply a round's latency by its files).
    in_flight = threading.Barrier(3, timeout=30)
    done = [Collector() for _ in writers]
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        for writer in writers:
            await nursery.start(writer.run)
        recording.begun.clear()
        recording.committed.clear()
        recording.before_commit = lambda _name: in_flight.wait()
        for n, writer in enumerate(writers):  # one tick: one round for the three files
            writer.submit_batch([(f"acct-{n}", [ev(f"e{n}", f"acct-{n}")])], done[n])
        for writer, collector in zip(writers, done, strict=True):
            await until(writer, partial(answered, collector))
        recording.before_commit = None
        begun = set().union(*(recording.begun[name] for name in names))
        committed = set().union(*(recording.committed[name] for name in names))
        nursery.cancel_scope.cancel()  # (a stop writes each file's tail on its own)
    assert rounds.rounds == 1
    assert all(isinstance(c.outcomes[0], list) for c in done)
    # The statements of the three files on one thread, the Trio thread ...
    assert begun == {threading.get_ident()}
    # ... their commits on three threads at once.
    assert len(committed) == 3


async def test_a_commit_that_fails_in_a_round_fails_only_its_files_operations(
    tmp_path: Path,
) -> None:
    rounds = CommitRounds(0.0)
    recording = _Recording()
    ok, full = _recorded_writers(tmp_path, rounds, ["ok", "full"], recording)
    in_flight = threading.Barrier(2, timeout=30)

    def commit(name: str) -> None:
        in_flight.wait()  # both commits in flight at once, then one fails
        if name == "full":
            raise sqlite3.OperationalError("database or disk is full")

    done_ok, done_full = Collector(), Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        await nursery.start(ok.run)
        await nursery.start(full.run)
        recording.before_commit = commit
        ok.submit("a", [ev("a1", "a")], done_ok)
        full.submit("b", [ev("b1", "b")], done_full)
        await until(full, partial(answered, done_full))
        await until(ok, partial(answered, done_ok))
        recording.before_commit = None
        assert isinstance(done_ok.outcomes[0], AppendResult)
        assert isinstance(done_full.outcomes[0], CommitFailed)
        assert full.failing is not None
        assert "disk is full" in full.failing
        assert ok.failing is None
        # The failed file's writer goes on: its next round commits.
        await full.append("b", [ev("b2", "b")])
        assert _failing(full) is None
        nursery.cancel_scope.cancel()
    assert rows(ok.path, "SELECT account FROM event_batches") == [("a",)]
    assert rows(full.path, "SELECT count(*) FROM event_batches") == [(1,)]


def _failing(writer: Writer) -> str | None:
    return writer.failing


async def test_a_file_whose_statements_fail_rolls_back_alone_and_the_round_commits_the_rest(
    tmp_path: Path,
) -> None:
    rounds = CommitRounds(0.0)
    recording = _Recording()
    first, broken, last = _recorded_writers(
        tmp_path, rounds, ["first", "broken", "last"], recording
    )
    done = [Collector() for _ in range(3)]
    recording.fail = ("broken", "INSERT INTO event_batches")
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        for writer in (first, broken, last):
            await nursery.start(writer.run)
        for n, writer in enumerate((first, broken, last)):
            writer.submit(f"acct-{n}", [ev(f"e{n}", f"acct-{n}")], done[n])
        for writer, collector in zip((first, broken, last), done, strict=True):
            await until(writer, partial(answered, collector))
        assert rounds.rounds == 1
        assert rounds.widest == 3
        assert isinstance(done[0].outcomes[0], AppendResult)
        assert isinstance(done[1].outcomes[0], CommitFailed)
        assert "disk I/O error" in str(done[1].outcomes[0])
        assert isinstance(done[2].outcomes[0], AppendResult)
        assert broken.running
        assert rounds.writers == [first, broken, last]
        nursery.cancel_scope.cancel()
    assert rows(first.path, "SELECT account FROM event_batches") == [("acct-0",)]
    assert rows(broken.path, "SELECT count(*) FROM event_batches") == [(0,)]
    assert rows(last.path, "SELECT account FROM event_batches") == [("acct-2",)]


async def test_a_bug_in_one_files_statements_ends_its_writer_only_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    broken = Writer(tmp_path / "broken.sqlite3", store_config(), rounds=rounds)
    other = Writer(tmp_path / "other.sqlite3", store_config(), rounds=rounds)
    real = broken._groups.prepare

    def boom(*args: Any, **options: Any) -> Any:
        monkeypatch.setattr(broken._groups, "prepare", real)  # once
        raise RuntimeError("a bug in the statements")

    def break_it() -> None:
        monkeypatch.setattr(broken._groups, "prepare", boom)

    done = Collector()
    async with trio.open_nursery() as nursery:
        bug = "a bug in the statements"
        await one_round_with_a_bug(nursery, rounds, broken, other, bug, break_it, done)
        # The other file's group of the same round committed; the broken file's
        # operation was queued again and its stop committed it (nothing lost).
        assert rows(other.path, "SELECT count(*) FROM event_batches") == [(1,)]
        assert rows(broken.path, "SELECT count(*) FROM event_batches") == [(1,)]
        assert len(done.outcomes) == 2
        assert all(isinstance(outcome, AppendResult) for outcome in done.outcomes)
        nursery.cancel_scope.cancel()


# ---- the log checkpoints: one loop for the files of the rounds (meterd.store.wal) -------------


def _name_of(connection: sqlite3.Connection) -> str:
    return Path(connection.execute("PRAGMA database_list").fetchone()[2]).name


async def test_the_files_logs_are_checkpointed_together_in_one_thread_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    writers = [
        Writer(
            tmp_path / f"s{n}.sqlite3", store_config(wal_checkpoint_interval=0.01), rounds=rounds
        )
        for n in range(3)
    ]
    first = writers[0]
    entered, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []
    real = wal_module._checkpoint_each

    def recorded(connections: list[sqlite3.Connection]) -> list[Any]:
        names = [_name_of(connection) for connection in connections]
        calls.append(names)
        if names == ["s0.sqlite3"]:  # hold the first pass until the others committed
            entered.set()
            release.wait(30)
        return real(connections)

    monkeypatch.setattr(wal_module, "_checkpoint_each", recorded)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rounds.run)
            for writer in writers:
                await nursery.start(writer.run)
            await first.append("a", [ev("a1", "a")])
            await trio.to_thread.run_sync(entered.wait)
            for n, writer in enumerate(writers[1:], start=1):
                await writer.append(f"b{n}", [ev(f"b{n}", f"b{n}")])
            release.set()
            for writer in writers:
                assert writer.wal is not None
                assert writer.wal.shared is rounds.wal
                with trio.fail_after(10):
                    await writer.wal.settled()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    # One task and thread hop per pass for every file due, not one per file.
    assert calls == [["s0.sqlite3"], ["s1.sqlite3", "s2.sqlite3"]]
    assert (rounds.wal.passes, rounds.wal.checkpoints) == (2, 3)
    assert [w.wal.stats.checkpoints for w in writers if w.wal is not None] == [1, 1, 1]


async def test_a_failing_log_checkpoint_is_retried_alone_and_holds_no_other_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    bad, good = (
        Writer(
            tmp_path / f"{name}.sqlite3", store_config(wal_checkpoint_interval=0.01), rounds=rounds
        )
        for name in ("bad", "good")
    )
    real = wal_module._checkpoint
    failures = 3

    def failing(connection: sqlite3.Connection) -> tuple[bool, int, int]:
        nonlocal failures
        if _name_of(connection) == "bad.sqlite3" and failures:
            failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(connection)

    monkeypatch.setattr(wal_module, "_checkpoint", failing)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(rounds.run)
            await nursery.start(bad.run)
            await nursery.start(good.run)
            await bad.append("a", [ev("a1", "a")])
            await good.append("b", [ev("b1", "b")])
            assert bad.wal is not None
            assert good.wal is not None
            with trio.fail_after(10):
                await good.wal.settled()
                await bad.wal.settled()
            nursery.cancel_scope.cancel()
    assert (bad.wal.stats.failures, good.wal.stats.failures) == (3, 0)
    assert bad.stats.failed_commits == good.stats.failed_commits == 0
    failed = [line for line in logs if line["event"] == "wal_checkpoint_failed"]
    assert [line["path"] for line in failed] == [str(bad.path)]  # once per streak
    assert [line["event"] for line in logs].count("wal_checkpoint_recovered") == 1


async def test_a_writer_stopped_during_its_log_checkpoint_closes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    stopped = Writer(
        tmp_path / "s.sqlite3", store_config(wal_checkpoint_interval=0.01), rounds=rounds
    )
    other = Writer(
        tmp_path / "o.sqlite3", store_config(wal_checkpoint_interval=0.01), rounds=rounds
    )
    entered, release = threading.Event(), threading.Event()
    real = wal_module._checkpoint

    def held(connection: sqlite3.Connection) -> tuple[bool, int, int]:
        if _name_of(connection) == "s.sqlite3":
            entered.set()
            release.wait(30)
        return real(connection)

    monkeypatch.setattr(wal_module, "_checkpoint", held)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rounds.run)
            await nursery.start(other.run)
            finished = trio.Event()
            scope = trio.CancelScope()

            async def run_stopped() -> None:
                with scope:
                    async with trio.open_nursery() as inner:
                        await inner.start(stopped.run)
                        await trio.sleep_forever()
                finished.set()

            nursery.start_soon(run_stopped)
            await trio.testing.wait_all_tasks_blocked()
            await stopped.append("a", [ev("a1", "a")])
            await trio.to_thread.run_sync(entered.wait)
            scope.cancel()  # stopped while a pass checkpoints its log
            await trio.testing.wait_all_tasks_blocked()
            # Its stop waits for the pass that holds its log's connection, then closes it.
            assert not finished.is_set()
            release.set()
            with trio.fail_after(10):
                await finished.wait()
            assert stopped.wal is not None
            assert stopped.wal.stats.checkpoints == 1
            # The loop goes on for the others.
            await other.append("b", [ev("b1", "b")])
            assert other.wal is not None
            with trio.fail_after(10):
                await other.wal.settled()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert rounds.wal.checkpoints == 2
