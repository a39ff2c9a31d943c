"""Group commit: pacing, backpressure, lifecycle, durability across kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import structlog
import trio
import trio.testing

import supervisors as sv
from meterd.store import (
    AppendResult,
    Store,
    Writer,
    codec,
    open_database,
)
from meterd.store.journal_index import catch_up
from tests.store.helpers import Collector, ev, faulty_writer, rows, running, store_config

# -- group commit, backpressure, lifecycle -------------------------------------------------


async def test_submits_queued_before_the_writer_runs_commit_in_one_transaction(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config())
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
    writer, faults = faulty_writer(tmp_path / "s.sqlite3", store_config(commit_interval=10.0))
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

        faults.before_commit = hold
        first, later = Collector(), Collector()
        writer.submit("acme", [ev("p3")], first)
        await trio.to_thread.run_sync(reached.wait, 30)
        faults.before_commit = None
        t1 = trio.current_time()
        writer.submit("acme", [ev("p4")], later)
        writer.submit("acme", [ev("p5")], later)
        release.set()
        await writer.barrier()
        assert trio.current_time() - t1 >= 9.0  # waited for the interval (virtual clock)
        assert writer.stats.commits == 4  # p3 alone, then p4 and p5 together
        assert [later.result(i).batch_id for i in (0, 1)] == [4, 5]


async def test_backpressure_bounds_the_async_operations(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config(), max_pending=3)
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
    store = Store.at(tmp_path / "new" / "s.sqlite3", store_config(commit_interval=0))
    sup = sv.Supervisor([store.writer_spec()], name="store")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        result = await store.writer.append("acme", [ev("s1")])
        assert (await store.reader.load_account("acme")).replay == [(result.batch_id, [ev("s1")])]
        sup.stop()
        await sup.wait_stopped()
    await store.aclose()


async def test_stopping_commits_what_is_queued(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "s.sqlite3", store_config())
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

    async with running(Writer(tmp_path / "s.sqlite3", store_config())) as writer:
        with structlog.testing.capture_logs() as logs:
            writer.submit("acme", [ev("cb")], explode)
            await writer.barrier()
        assert [line["event"] for line in logs] == ["store_on_done_raised"]
        assert (await writer.append("acme", [ev("cb")])).duplicates == [0]


_KILL_SCRIPT = """
import sys, trio
from meterd.config import Duration, StoreConfig
from meterd.logs import configure
from meterd.model import Event
from meterd.store import Writer

configure(json=True)  # logs to stderr; stdout carries only the acks

async def main():
    writer = Writer(sys.argv[1], StoreConfig(commit_interval=Duration(0)))
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
