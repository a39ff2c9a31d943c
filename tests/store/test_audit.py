"""The audit trail: rows committed or rolled back with their batch, and pruned."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterd.store import (
    CommitFailed,
    InvalidCursor,
    RejectedEvent,
    Writer,
    open_database,
    open_reader,
)
from meterd.store import _group as store_group
from tests.store.helpers import Collector, ev, faulty_writer, rows, running, store_config

# -- the audit trail ----------------------------------------------------------------------

_REJECTED = RejectedEvent(
    "acme", None, "invalid_id", "id is missing", meter="api", time=61_000, properties=()
)


async def test_duplicates_conflicts_and_rejections_are_recorded_with_their_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    writer = Writer(path, store_config(commit_interval=0), clock=lambda: 5_000)
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
    writer, faults = faulty_writer(path, store_config(commit_interval=0))
    async with running(writer):
        await writer.append("acme", [ev("a1")])

        def fail() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        faults.before_commit = fail  # the transaction fails after every row was written
        done = Collector()
        writer.submit_batch(
            [("acme", [ev("a1"), ev("a2")])], done, producer="p", seq=0, rejected=[_REJECTED]
        )
        await writer.barrier()
        assert isinstance(done.outcomes[0], CommitFailed)
        assert rows(path, "SELECT count(*) FROM audit") == [(0,)]
        assert rows(path, "SELECT count(*) FROM event_batches") == [(1,)]

        faults.before_commit = None  # the re-send commits batch and audit rows together
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
    monkeypatch.setattr(store_group, "AUDIT_PRUNE_BATCH", 2)
    path = tmp_path / "s.sqlite3"
    now = [1_000]
    writer = Writer(
        path, store_config(commit_interval=0), clock=lambda: now[0], audit_retention_ms=58_000
    )

    def recorded() -> list[tuple[Any, ...]]:
        return rows(path, "SELECT event_id, received_at FROM audit ORDER BY audit_id")

    async with running(writer):
        await writer.append("acme", [ev("a"), ev("b"), ev("c")])
        await writer.append("acme", [ev("a"), ev("b"), ev("c")])  # 3 duplicates at 1_000
        now[0] = 5_000
        await writer.append("acme", [ev("a")])  # young: kept
        assert [r[0] for r in recorded()] == ["a", "b", "c", "a"]
        now[0] = 1_000 + store_group.AUDIT_PRUNE_EVERY_MS  # the next pass is due
        await writer.append("acme", [ev("d")])
        assert recorded() == [("c", 1_000), ("a", 5_000)]  # 2 a pass: a full one...
        await writer.append("acme", [ev("e")])  # ...so the next group goes on
        assert recorded() == [("a", 5_000)]
        now[0] += 1  # not due: the last pass found less than a batch
        await writer.append("acme", [ev("a")])
        assert [r[0] for r in recorded()] == ["a", "a"]


_KILL_IN_COMMIT_SCRIPT = """
import os, signal, sqlite3, sys, trio
from meterd.config import Duration, StoreConfig
from meterd.model import Event
from meterd.store import RejectedEvent, Writer

class Connection(sqlite3.Connection):  # a fault injected from outside the writer
    kill_before_commit = False

    def execute(self, sql, parameters=(), /):
        if sql == "COMMIT" and Connection.kill_before_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().execute(sql, parameters)

async def main():
    config = StoreConfig(commit_interval=Duration(0))
    writer = Writer(sys.argv[1], config, connection_factory=Connection)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.append("acme", [Event("a1", "acme", "api", 1, 60_000)])
        # Everything of the next group is written; the process dies before its COMMIT.
        Connection.kill_before_commit = True
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
