"""The store's schema: opening, numbered migrations, refusing newer or foreign files."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from meterd.model import Event
from meterd.store import (
    SCHEMA_VERSION,
    NotAStoreError,
    StoreError,
    StoreVersionError,
    Writer,
    open_database,
    open_reader,
    schema,
)
from meterd.store.schema import SLICES
from tests.store.helpers import FIXTURES, ev, rows, running, store_config

# -- schema and migrations --------------------------------------------------------------


def test_open_database_creates_a_durable_wal_store_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "store.sqlite3"
    conn = open_database(path)
    try:
        assert path.exists()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert {
            "event_batches",
            "dedupe",
            "dedupe_overflow",
            "windows",
            "accounts",
            "quarantine",
            "audit",
            "journal_index",
            "journal_slices",
        } <= tables
    finally:
        conn.close()
    open_database(path).close()  # reopening an up-to-date store changes nothing


def test_migrations_are_numbered_steps() -> None:
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2


async def test_a_v1_store_migrates_to_the_latest_version_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", path)
    assert rows(path, "PRAGMA user_version") == [(1,)]
    assert not rows(path, "SELECT name FROM sqlite_schema WHERE name = 'quarantine'")

    with structlog.testing.capture_logs() as logs:
        open_database(path).close()
    assert {"event": "store_migrated", "from_version": 1, "to_version": SCHEMA_VERSION} in [
        {k: v for k, v in line.items() if k in ("event", "from_version", "to_version")}
        for line in logs
    ]
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # v2: quarantine exists; v3: time bounds backfilled from the payloads, covering index.
    assert rows(path, "SELECT count(*) FROM quarantine") == [(0,)]
    assert rows(path, "SELECT batch_id, min_time, max_time FROM event_batches") == [
        (1, 60_000, 130_000),
        (2, 10_000, 10_000),
        (3, 5_000, 5_000),
    ]
    indexes = {r[0] for r in rows(path, "SELECT name FROM sqlite_schema WHERE type='index'")}
    assert "event_batches_by_account" not in indexes
    # v4: the audit trail exists, empty, with its paging index.
    assert rows(path, "SELECT count(*) FROM audit") == [(0,)]
    assert "audit_by_account" in indexes
    # v5: no by-account index on the journal (v3's is dropped); journal_index holds every
    # stored batch and every slice is indexed up to the last one.
    assert "event_batches_by_account_time" not in indexes
    assert rows(path, "SELECT account, batch_id, min_time, max_time FROM journal_index") == sorted(
        rows(path, "SELECT account, batch_id, min_time, max_time FROM event_batches")
    )
    assert rows(path, "SELECT count(*), min(upto), max(upto) FROM journal_slices") == [
        (SLICES, 3, 3)
    ]

    writer = Writer(path, store_config(commit_interval=0))
    async with running(writer), await open_reader(path) as reader:
        loaded = await reader.load_account("acme")
        assert loaded.watermark == 1
        assert loaded.windows == [("api", 60_000, "[]", b"v1-state")]  # v6: a JSON key
        assert loaded.replay == [
            (2, [Event("a3", "acme", "api", Decimal("2.5"), 10_000, (("region", "eu"),), "", 2000)])
        ]
        # The v1 dedupe rows still decide: re-sends are duplicates, changes are conflicts.
        result = await writer.append(
            "acme", [ev("a1", time=60_000), ev("a2", quantity=4, time=130_000), ev("a4")]
        )
        assert (result.duplicates, result.conflicts, result.accepted) == ([0], [1], [2])
        assert result.batch_id == 4  # after the fixture's 3 batches
        # ... and are recorded: the duplicate points at the fixture's batch holding a1.
        audit = await reader.audit("acme", 0, 10**6, limit=10)
        assert [(a.kind, a.event_id, a.code, a.batch_id) for a in audit.entries] == [
            ("duplicate", "a1", None, 1),
            ("rejected", "a2", "id_conflict", 1),
        ]
        page = await reader.events("globex", None, 0, 10**6, 10)
        assert [(e.id, e.quantity, e.producer) for e in page.events] == [("g1", 7, "p1")]
        assert await reader.known_accounts() == 2


def test_a_failing_migration_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", path)

    def broken(conn: sqlite3.Connection, meter_dimensions: Mapping[str, int]) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("SELECT no_such_column FROM event_batches")

    steps = (*schema.MIGRATIONS[:-1], schema.Migration(SCHEMA_VERSION, "broken", broken))
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    with pytest.raises(StoreError, match=f"migration to schema version {SCHEMA_VERSION}"):
        open_database(path)
    assert rows(path, "PRAGMA user_version") == [(1,)]
    names = {r[0] for r in rows(path, "SELECT name FROM sqlite_schema")}
    assert "quarantine" not in names  # step 2 ran in the same transaction: rolled back
    assert "half_done" not in names


async def test_a_newer_store_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    open_database(path).close()
    conn = sqlite3.connect(path)
    newer = SCHEMA_VERSION + 1
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    message = (
        f"database {path} is schema version {newer}, this meterd knows up to {SCHEMA_VERSION};"
        " upgrade meterd or use another store.path"
    )
    with pytest.raises(StoreVersionError) as info:
        open_database(path)
    assert str(info.value) == message
    with pytest.raises(StoreVersionError, match=f"schema version {newer}"):
        await open_reader(path)
    with pytest.raises(StoreVersionError, match="upgrade meterd"):
        await Writer(path, store_config()).run()
    assert rows(path, "PRAGMA user_version") == [(newer,)]


async def test_foreign_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(NotAStoreError, match="not a meterd store"):
        open_database(other)

    foreign = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("PRAGMA application_id = 42")
    conn.close()
    with pytest.raises(NotAStoreError, match="another application"):
        open_database(foreign)

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(NotAStoreError, match="not a SQLite database"):
        open_database(junk)

    with pytest.raises(StoreError, match="cannot open database"):
        await open_reader(tmp_path / "missing.sqlite3")

    old = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / "store_v1.sqlite3", old)
    with pytest.raises(StoreVersionError, match="start it first"):
        await open_reader(old)
