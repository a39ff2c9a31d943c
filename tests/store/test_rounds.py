"""Several writers in one commit loop (meterd.store._rounds): an owner's shard files."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from meterd.store import CommitRounds, Writer
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
            await until(fast, lambda: fast.stats.commits == 1)  # its part of the round is done
            for i in range(5):  # queued while the round waits for the slow file
                fast.submit("b", [ev(f"f{i + 2}", "b")], done)
            await trio.testing.wait_all_tasks_blocked()
            assert fast.stats.commits == 1  # not committed alone meanwhile
            faults.before_commit = None
            release.set()
            await until(fast, lambda: len(done.outcomes) == 7)
            assert fast.stats.commits == 2
            assert fast.stats.largest_group >= 5  # one group of them
            nursery.cancel_scope.cancel()
    finally:  # never leave the slow file's thread waiting
        faults.before_commit = None
        release.set()


async def test_a_group_that_raises_ends_its_writer_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = CommitRounds(0.0)
    broken = Writer(tmp_path / "broken.sqlite3", store_config(), rounds=rounds)
    other = Writer(tmp_path / "other.sqlite3", store_config(), rounds=rounds)

    def boom(*_: object) -> None:
        raise RuntimeError("a bug after the commit")

    done = Collector()

    async def run_broken() -> None:
        async with trio.open_nursery() as inner:
            await inner.start(broken.run)
            monkeypatch.setattr(broken, "_committed", boom)
            broken.submit("a", [ev("x1", "a")], done)
            other.submit("b", [ev("y1", "b")], done)

    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        await nursery.start(other.run)
        with pytest.raises(BaseExceptionGroup) as raised:
            await run_broken()
        assert raised.group_contains(RuntimeError, match="a bug after the commit")
        # The broken writer left the loop; the other goes on committing.
        assert rounds.writers == [other]
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
