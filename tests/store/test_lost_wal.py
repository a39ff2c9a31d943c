"""A deleted write-ahead log, end to end: the real daemon (``python -m meterd run``) refuses a
store that lost committed batches (meterd/store/commitmark.py) instead of serving wrong
totals, and starts on one that did not.

The daemon runs with ``wal_checkpoint_interval_ms = 0`` (SQLite's own checkpoint every
1,000 pages: none in these few batches), so what is committed after the test's one explicit
checkpoint stays in the ``-wal`` file until the ``kill -9``, as under a checkpoint that lags.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from meterd.store import StoreError, StoreLostCommitsError, Writer, commitmark
from tests.procs.daemon import ROOT, running_daemon
from tests.store.helpers import ev, running, store_config
from tests.store.test_full_disk import Producer, totals, unique_per_account


def send(producer: Producer, numbers: range) -> None:
    """Stream batches ``numbers``, each acknowledged."""
    trio.run(partial(producer.stream, numbers, until_error=False))
    assert set(numbers) <= set(producer.acked)


def checkpoint(store: Path) -> None:
    """Copy what the log holds into the database file (a passive checkpoint, as the
    writer's checkpointer runs them), from another connection."""
    conn = sqlite3.connect(store)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


def test_a_store_whose_wal_was_deleted_is_refused_and_starts_once_it_is_back(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store.sqlite3"
    wal = Path(f"{store}-wal")
    with running_daemon(tmp_path, wal_checkpoint_interval_ms=0) as daemon:
        producer = Producer(daemon)
        send(producer, range(3))
        checkpoint(store)  # the first batches reach the database file...
        send(producer, range(3, 6))  # ...these stay in the log
        assert totals(daemon) == unique_per_account(6)
        daemon.kill()
    config = daemon.config_path
    assert wal.stat().st_size > 0
    held = wal.read_bytes()
    wal.unlink()

    refused = subprocess.run(
        [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
    )
    assert refused.returncode == 1, refused.stderr
    said = refused.stderr.strip().splitlines()[-1]
    mark = f"{store}{commitmark.SUFFIX}"
    assert said.startswith(
        f"meterd: cannot start: store.path: store {store} is missing committed data: its"
        " journal ends"
    )
    assert f"(recorded in {mark})" in said
    assert f"its write-ahead log {wal} was deleted" in said
    assert said.endswith(f"delete {mark}")
    assert "Traceback" not in refused.stderr

    # The refused start wrote nothing: with the log put back the daemon starts, and every
    # acknowledged event is there.
    wal.write_bytes(held)
    with running_daemon(tmp_path) as daemon:
        assert totals(daemon) == unique_per_account(6)


def test_after_a_kill_9_with_the_wal_in_place_the_daemon_starts(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite3"
    with running_daemon(tmp_path, wal_checkpoint_interval_ms=0) as daemon:
        producer = Producer(daemon)
        send(producer, range(4))
        daemon.kill()
    assert Path(f"{store}-wal").stat().st_size > 0
    assert Path(f"{store}{commitmark.SUFFIX}").read_text().startswith("meterd committed")
    with running_daemon(tmp_path) as daemon:
        assert totals(daemon) == unique_per_account(4)


async def test_the_commit_mark_follows_the_journal_and_is_checked_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    mark = Path(f"{path}{commitmark.SUFFIX}")

    def marked() -> int:
        text = mark.read_text()
        assert len(text) == len(commitmark._encode(0).decode())  # overwritten in place
        return int(text.split()[4])

    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        assert marked() == 0
        await writer.append("acme", [ev("a"), ev("b")])
        assert marked() == 1
        await writer.append("acme", [ev("a")])  # a duplicate: no batch
        assert marked() == 1
        await writer.append("globex", [ev("a", "globex")])
        assert marked() == 2

    await trio.Path(mark).write_bytes(commitmark._encode(3))  # ahead of the database
    with pytest.raises(StoreLostCommitsError, match="journal ends at batch 2 but batch 3"):
        await Writer(path, store_config()).run()  # refused before it reports ready
    await trio.Path(mark).write_text("meterd committed journal batch 9\n")
    with pytest.raises(StoreError, match=f"{mark} .* is damaged"):
        await Writer(path, store_config()).run()
    await trio.Path(mark).unlink()  # as the message says: the check starts over
    async with running(Writer(path, store_config(commit_interval=0))) as writer:
        assert marked() == 2
        assert (await writer.append("acme", [ev("c")])).batch_id == 3
    assert marked() == 3
