"""The store's applied log position (schema v12): written in the transaction of the slice's
rows, checked against its predecessor, and the log's time used for the dedupe horizon."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterd.model import DAY_MS
from meterd.partitions._migrate import MigrationError, migrate
from meterd.store import AppendResult, CommitFailed, Fenced, LogPosition, PositionMismatch, Writer
from tests.partitions.migrate_data import write_config
from tests.store.helpers import Collector, ev, rows, running, store_config

LOG = "METERD_LOG/meterd.log.3"


def positions(path: Path) -> list[tuple[str, int]]:
    return [(str(log), int(seq)) for log, seq in rows(path, "SELECT log, seq FROM log_positions")]


async def test_the_position_commits_with_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        first, second = Collector(), Collector()
        writer.submit_batch([("acme", [ev("e1")])], first, position=LogPosition(LOG, 5, 0))
        writer.submit_batch(
            [("acme", [ev("e1"), ev("e2")])], second, position=LogPosition(LOG, 9, 5)
        )
        await writer.barrier()
        assert first.outcomes == [[AppendResult(1, [0], [], [])]]
        assert second.outcomes == [[AppendResult(2, [1], [0], [])]]
    assert positions(path) == [(LOG, 9)]


async def test_a_gap_fails_the_batch_alone_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        ok, gap, other = Collector(), Collector(), Collector()
        writer.submit_batch([("acme", [ev("e1")])], ok, position=LogPosition(LOG, 5, 0))
        # Its predecessor (7) was never applied: it must not be applied, and the log's
        # position stays at 5 for the replay.
        writer.submit_batch([("acme", [ev("e2")])], gap, position=LogPosition(LOG, 9, 7))
        writer.submit_batch([("globex", [ev("g1", "globex")])], other)  # same group
        await writer.barrier()
        [failure] = gap.outcomes
        assert isinstance(failure, PositionMismatch)
        assert (failure.stored, failure.expected, failure.seq) == (5, 7, 9)
        assert "replay the log from 6" in str(failure)
        assert other.outcomes == [[AppendResult(2, [0], [], [])]]
    assert positions(path) == [(LOG, 5)]
    assert rows(path, "SELECT account FROM event_batches ORDER BY batch_id") == [
        ("acme",),
        ("globex",),
    ]


async def test_the_log_time_raises_the_horizon_not_the_writers_clock(tmp_path: Path) -> None:
    """Replaying a log later must decide as before: the horizon comes from the slice's
    ``received_at`` (in the log), not from when the writer runs."""
    window = 2 * DAY_MS
    wall = 100 * DAY_MS  # the writer's clock: far later than the log's time
    logged = 10 * DAY_MS
    path = tmp_path / "s.sqlite3"
    writer = Writer(
        path, store_config(commit_interval=0), clock=lambda: wall, dedupe_window_ms=window
    )
    async with running(writer):
        done = Collector()
        event = ev("e1", time=logged - DAY_MS)  # within the window of the log's time
        writer.submit_batch(
            [("acme", [event])], done, position=LogPosition(LOG, 1, 0), received_at=logged
        )
        await writer.barrier()
        assert done.outcomes == [[AppendResult(1, [0], [], [])]]
        assert rows(path, "SELECT received_at FROM event_batches") == [(logged,)]


async def test_a_layout_migration_refuses_a_store_with_log_positions(tmp_path: Path) -> None:
    """A cluster node's store cannot change layout yet: the migration says so and moves
    nothing (a migrated shard would replay its log from the start)."""
    config = write_config(tmp_path, owners=0)
    path = config.store_path
    path.parent.mkdir(parents=True)
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        done = Collector()
        writer.submit_batch([("acme", [ev("e1")])], done, position=LogPosition(LOG, 1, 0))
        await writer.barrier()
    with pytest.raises(MigrationError, match="positions of a cluster node's log"):
        migrate(write_config(tmp_path, owners=2))
    assert positions(path) == [(LOG, 1)]


async def test_a_lapsed_fence_rolls_the_group_back(tmp_path: Path) -> None:
    """Fencing: the fence is asked right before the group commits; a reason rolls the whole
    group back (nothing written, the position stays), a None lets it commit."""
    path = tmp_path / "s.sqlite3"
    reason: list[str | None] = [None]
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        ok, fenced = Collector(), Collector()
        writer.submit_batch(
            [("acme", [ev("e1")])], ok, position=LogPosition(LOG, 5, 0, lambda: reason[0])
        )
        await writer.barrier()
        assert ok.outcomes == [[AppendResult(1, [0], [], [])]]
        reason[0] = "shard 3: lease not renewed in time"
        writer.submit_batch(
            [("acme", [ev("e2")])], fenced, position=LogPosition(LOG, 9, 5, lambda: reason[0])
        )
        await writer.barrier()
        [failure] = fenced.outcomes
        assert isinstance(failure, CommitFailed)
        assert isinstance(failure.__cause__, Fenced)
        assert "lease not renewed in time" in str(failure.__cause__)
    assert positions(path) == [(LOG, 5)]
    assert rows(path, "SELECT count(*) FROM event_batches") == [(1,)]
