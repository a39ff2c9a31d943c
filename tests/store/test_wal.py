"""Write-ahead-log checkpoints off the commit path (meterd.store.wal)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog
import trio

from meterd.model import Event
from meterd.store import Writer
from meterd.store import wal as wal_module
from meterd.store.wal import FALLBACK_AUTOCHECKPOINT_PAGES, WalCheckpointer
from tests.store.helpers import store_config


def ev(event_id: str, account: str = "acme") -> Event:
    return Event(event_id, account, "api", 1, 60_000, (("blob", "x" * 200),), "prod", 1)


@asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[Writer]:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        yield writer
        nursery.cancel_scope.cancel()


async def caught_up(checkpointer: WalCheckpointer) -> None:
    """Until a checkpoint that started after the last commit is done; it copied the whole
    log."""
    with trio.fail_after(10):
        await checkpointer.settled()
    assert not checkpointer.pending
    assert checkpointer.stats.copied_frames == checkpointer.stats.log_frames > 0


def journal_rows_in_the_database_file_alone(path: Path, scratch: Path) -> int:
    """The journal's rows that a copy of the database file *without its log* holds: what
    checkpoints have copied into it."""
    scratch.mkdir()
    copy = scratch / path.name
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM event_batches").fetchone()[0])
    finally:
        conn.close()


async def created(path: Path) -> Path:
    """A new store whose schema is in the database file (a stopped writer leaves no log)."""
    async with running(Writer(path, store_config())):
        pass
    return path


async def append_batches(writer: Writer, batches: int) -> None:
    for batch in range(batches):
        result = await writer.append("acme", [ev(f"e{batch}-{i}") for i in range(20)])
        assert len(result.accepted) == 20


async def test_the_checkpointer_copies_committed_pages_into_the_database_file(
    tmp_path: Path,
) -> None:
    path = await created(tmp_path / "s.sqlite3")
    async with running(Writer(path, store_config(wal_checkpoint_interval=0.01))) as writer:
        assert writer.wal is not None
        await append_batches(writer, 10)
        await caught_up(writer.wal)
        assert writer.wal.stats.failures == 0
        assert journal_rows_in_the_database_file_alone(path, tmp_path / "copy") == 10


async def test_without_the_checkpointer_small_commits_stay_in_the_log(tmp_path: Path) -> None:
    # The control for the test above: SQLite's own checkpoint waits for 1,000 pages.
    path = await created(tmp_path / "s.sqlite3")
    async with running(Writer(path, store_config(wal_checkpoint_interval=None))) as writer:
        assert writer.wal is None
        await append_batches(writer, 10)
        assert journal_rows_in_the_database_file_alone(path, tmp_path / "copy") == 0


async def test_commits_checkpoint_only_as_the_backstop(tmp_path: Path) -> None:
    async def autocheckpoint(writer: Writer) -> int:
        connection = writer._connection  # test access to the writer's connection
        assert connection is not None
        (pages,) = await trio.to_thread.run_sync(
            lambda: connection.execute("PRAGMA wal_autocheckpoint").fetchone(),
            limiter=writer._limiter,
        )
        return int(pages)

    async with running(Writer(tmp_path / "a.sqlite3", store_config())) as writer:
        assert await autocheckpoint(writer) == FALLBACK_AUTOCHECKPOINT_PAGES
    async with running(
        Writer(tmp_path / "b.sqlite3", store_config(wal_checkpoint_interval=None))
    ) as writer:
        assert await autocheckpoint(writer) == 1000  # SQLite's default


async def test_a_failing_checkpoint_is_logged_once_retried_and_fails_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = wal_module._checkpoint
    failures = 3

    def failing(connection: sqlite3.Connection) -> tuple[bool, int, int]:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(connection)

    monkeypatch.setattr(wal_module, "_checkpoint", failing)
    path = tmp_path / "s.sqlite3"
    with structlog.testing.capture_logs() as logs:
        async with running(Writer(path, store_config(wal_checkpoint_interval=0.01))) as writer:
            assert writer.wal is not None
            await append_batches(writer, 5)  # every commit succeeds meanwhile
            await caught_up(writer.wal)
            assert writer.wal.stats.failures == 3
            assert writer.stats.failed_commits == 0
            assert writer.failing is None
            assert journal_rows_in_the_database_file_alone(path, tmp_path / "copy") == 5
    failed = [line for line in logs if line["event"] == "wal_checkpoint_failed"]
    assert len(failed) == 1  # once per streak, not once per attempt
    assert failed[0]["error"] == "disk I/O error"
    assert failed[0]["log_level"] == "warning"
    assert [line["event"] for line in logs].count("wal_checkpoint_recovered") == 1


async def test_a_stopped_writer_leaves_no_log_behind(tmp_path: Path) -> None:
    # Both connections are closed at the stop; the last close checkpoints and removes
    # the log (a leaked checkpointer connection would keep it).
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config())) as writer:
        await append_batches(writer, 3)
    assert not path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM event_batches").fetchone()[0] == 3
    finally:
        conn.close()


def test_an_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval must be > 0 seconds, got 0"):
        WalCheckpointer(tmp_path / "s.sqlite3", interval=0)
