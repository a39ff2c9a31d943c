"""The writer as a server of typed operations: housekeeping queued as operations (by a test
or by the housekeeper on Trio timers), and no modes or test hooks on the writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from meterd.store import IndexPass, Probe, SweepSlice, Writer
from meterd.store._group import TABLES
from tests.store.helpers import ev, faulty_writer, rows, running, store_config, until


class Clock:
    """Wall-clock milliseconds that never move (no pass is due by the clock)."""

    def __call__(self) -> int:
        return 1_000_000


async def test_a_queued_index_pass_writes_the_tail_ahead_of_its_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, store_config(commit_interval=0, index_cycle=3600.0), clock=Clock())
    async with running(writer):
        for n in range(3):
            await writer.append(f"acct{n}", [ev(f"e{n}", f"acct{n}")])
        assert writer.journal_tail.size == 3
        commits = writer.stats.commits
        while writer.journal_tail.size:
            await writer.perform(IndexPass())
        assert rows(path, "SELECT count(*) FROM journal_index") == [(3,)]
        assert writer.stats.commits == commits  # housekeeping is not a commit
        assert writer.stats.idle_passes >= 1
        assert writer.stats.operations == 3


async def test_a_queued_probe_writes_one_row_and_changes_no_data(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        await writer.append("acme", [ev("a")])
        watcher = sqlite3.connect(path, isolation_level=None)
        try:
            version = watcher.execute("PRAGMA data_version").fetchone()
            await writer.perform(Probe())
            assert watcher.execute("PRAGMA data_version").fetchone() != version  # it wrote
            assert watcher.execute(
                "SELECT upto FROM journal_slices WHERE slice = 0"
            ).fetchone() == (0,)
        finally:
            watcher.close()
        assert (writer.stats.probes, writer.stats.commits) == (1, 1)


async def test_the_housekeeper_probes_every_interval_of_idle_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """While commits fail, one probe per ``probe_interval`` of idleness (Trio's clock), and
    an operation restarts the wait."""
    writer, faults = faulty_writer(tmp_path / "s.sqlite3", store_config(), probe_interval=10.0)

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with running(writer):
        faults.before_commit = broken
        t0 = trio.current_time()
        done = trio.Event()

        def failed(outcome: object) -> None:
            done.set()

        writer.submit("acme", [ev("a")], failed)
        await done.wait()
        assert writer.failing is not None
        await until(writer, lambda: writer.stats.probes == 2)
        assert 20.0 <= trio.current_time() - t0 < 30.0
        t1 = trio.current_time()
        await writer.barrier()  # barriers alone write nothing and restart the wait
        await until(writer, lambda: writer.stats.probes == 3)
        assert 10.0 <= trio.current_time() - t1 < 20.0
        faults.before_commit = None
        await until(writer, lambda: writer.failing is None)
        assert writer.stats.commits == 0


async def test_a_sweep_slice_is_an_operation_too(tmp_path: Path) -> None:
    """A SweepSlice group with no sweep due writes nothing of its own (and fails nothing)."""
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        await writer.perform(SweepSlice())
        assert (writer.stats.commits, writer.stats.idle_passes) == (0, 1)
        assert writer.failing is None


async def test_a_checkpoint_writes_its_other_rows_in_its_transaction(tmp_path: Path) -> None:
    """The shape a checkpoint extends by: rows per table (``TABLES``), in its transaction."""
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        await writer.append("acme", [ev("a")])
        quarantined = (("acme", 1, "a", "poison", 5),)
        await writer.checkpoint("acme", [("api", 0, "", b"s")], 1, rows={"quarantine": quarantined})
        with pytest.raises(ValueError, match="no statement for table 'outbox'"):
            await writer.checkpoint("acme", [], 1, rows={"outbox": [(1,)]})
    assert "quarantine" in TABLES
    assert rows(path, "SELECT account, batch_id, event_id, error, at FROM quarantine") == [
        ("acme", 1, "a", "poison", 5)
    ]
    assert rows(path, "SELECT watermark FROM accounts WHERE account = 'acme'") == [(1,)]


def test_the_writer_has_no_modes_and_no_test_hooks(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config())
    for name in ("_probe", "_idle_pass", "_disk_full", "_before_commit", "on_idle_pass"):
        assert not hasattr(writer, name), name
    assert not hasattr(writer, "on_probe")
