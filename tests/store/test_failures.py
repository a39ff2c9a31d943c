"""Failures: a full disk, failing commits and the housekeeper's probes, unstorable events."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from meterd.store import (
    CommitFailed,
    InvalidEvents,
    Writer,
    open_database,
    open_reader,
)
from meterd.store import _housekeeping as housekeeping
from meterd.store import _writer as store_writer
from tests.store.helpers import Collector, ev, faulty_writer, running, store_config, until

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
    async with running(Writer(path, store_config())) as writer:
        await writer.append("acme", [ev("before")])
        await writer.checkpoint("acme", [("api", 0, "", b"old")], 1)
    monkeypatch.setattr(store_writer, "open_database", capped_database)
    return path


async def test_a_full_disk_fails_the_whole_group_writes_nothing_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await stored_then_capped(tmp_path / "s.sqlite3", monkeypatch)
    writer = Writer(path, store_config())
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


async def probes(writer: Writer, count: int) -> None:
    """Wait until the housekeeper has had ``count`` probes written (tried)."""
    with trio.fail_after(10):  # a safety net against a hang, not a timing assertion
        await until(writer, lambda: writer.stats.probes >= count)


class FreeSpace:
    """The housekeeper's view of the file system's free bytes, counting its looks."""

    def __init__(self) -> None:
        self.free = 0
        self.looked = trio.Event()

    def __call__(self, _path: Path) -> int:
        self.looked.set()
        self.looked = trio.Event()
        return self.free

    async def looks(self, count: int) -> None:
        with trio.fail_after(10):
            for _ in range(count):
                await self.looked.wait()


async def test_a_failing_writer_probes_while_idle_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite3"
    writer, faults = faulty_writer(path, store_config(), probe_interval=0.01)

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with structlog.testing.capture_logs() as logs:
        async with running(writer):
            faults.before_commit = broken  # every transaction fails, probes included
            with pytest.raises(CommitFailed, match="disk I/O error"):
                await writer.append("acme", [ev("a")])
            await probes(writer, 3)  # queued by the housekeeper: no operation arrives
            assert writer.failing == "OperationalError: disk I/O error"
            assert writer.stats.probes >= 3
            assert writer.stats.failed_commits == 1  # probes are not commits
            watcher = sqlite3.connect(path, isolation_level=None)
            version = watcher.execute("PRAGMA data_version").fetchone()
            faults.before_commit = None  # the fault is gone; no operation arrives
            with trio.fail_after(10):
                await until(writer, lambda: failing(writer) is None)
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
    space = FreeSpace()
    monkeypatch.setattr(housekeeping, "_free_bytes", space)
    writer = Writer(path, store_config(), probe_interval=0.01)
    async with running(writer):
        big = [ev(f"big{i}", properties=(("blob", "x" * 250),)) for i in range(100)]
        with pytest.raises(CommitFailed, match="database or disk is full"):
            await writer.append("acme", big)
        connection = writer._connection  # test access to the writer's connection
        assert connection is not None
        await trio.to_thread.run_sync(
            connection.execute, "PRAGMA max_page_count = 1073741823", limiter=writer._limiter
        )
        await space.looks(3)  # the file system says it is still full: no write is tried
        assert writer.stats.probes == 0
        assert "database or disk is full" in (writer.failing or "")
        space.free = housekeeping.PROBE_MIN_FREE_BYTES
        await probes(writer, 1)
        assert writer.stats.probes == 1
        assert writer.failing is None


async def test_an_unstorable_event_fails_only_its_own_append(tmp_path: Path) -> None:
    async with running(Writer(tmp_path / "s.sqlite3", store_config())) as writer:
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
    async with running(Writer(tmp_path / "s.sqlite3", store_config())) as writer:
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
