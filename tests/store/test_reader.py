"""The reader: committed data while the writer is busy, stable event pages."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from meterd.model import Event
from meterd.store import (
    InvalidCursor,
    Writer,
    open_reader,
)
from tests.store.helpers import Collector, ev, faulty_writer, running, store_config

# -- reader -------------------------------------------------------------------------------


async def test_the_reader_sees_committed_data_while_the_writer_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    writer, faults = faulty_writer(path, store_config())
    reached, release = threading.Event(), threading.Event()
    async with running(writer), await open_reader(path) as reader:
        await writer.append("acme", [ev("committed")])

        def hold() -> None:  # the writer thread, inside the group transaction
            reached.set()
            release.wait(30)

        faults.before_commit = hold
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
            faults.before_commit = None
            release.set()
        await writer.barrier()
        assert pending.result().batch_id == 2
        page = await reader.events("acme", None, 0, 10**9, 10)
        assert [e.id for e in page.events] == ["committed", "uncommitted"]


async def test_events_pages_are_stable_while_new_batches_arrive(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    appended: list[Event] = []
    async with running(Writer(path, store_config())) as writer, await open_reader(path) as reader:

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
        empty = await reader.events("nobody", None, 0, 10**9, 5)
        assert (empty.events, empty.next_cursor) == ([], None)
        for bad in ("x", "1", "1.x", "-1.0", "\u0661.\u0662", "9" * 40 + ".1"):
            with pytest.raises(InvalidCursor, match="is not one this server issued"):
                await reader.events("acme", None, 0, 1, 5, bad)
        with pytest.raises(ValueError, match="limit"):
            await reader.events("acme", None, 0, 1, 0)
