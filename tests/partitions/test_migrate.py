"""``meterd migrate partitions`` (meterd/partitions/_migrate.py): single store -> shards,
shards -> single, re-partition; crashes at every step; the daemon's refusal at start."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from meterd.alerts._delivered import SCHEMA as DELIVERIES_SCHEMA
from meterd.billing._db import _open as BillingDB_open
from meterd.config import Config
from meterd.partitions import shard_of
from meterd.partitions._migrate import (
    ASIDE,
    TABLES,
    LayoutMismatch,
    MigrationError,
    check_layout,
    create_shards,
    expected_layout,
    found_layout,
    layout_lock,
    migrate,
    record_layout,
    tables_doc,
    undeclared_tables,
)
from meterd.startup import StartupFailed, hold_store
from meterd.store import schema
from tests.partitions.migrate_data import (
    SMALL,
    accounts_in,
    accounts_of,
    contents,
    copy_of,
    populated_template,
    references_hold,
    usage,
    write_config,
)

N = 30


def _exists(path: Path | str) -> bool:
    return Path(path).exists()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return populated_template(tmp_path_factory.mktemp("template"), N)


@pytest.fixture
def single(template: Path, tmp_path: Path) -> Config:
    return copy_of(template, tmp_path / "data")


@pytest.fixture(scope="module")
def split_reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    """What a migration of the template to 4 shards, never interrupted, gives."""
    config = copy_of(template, tmp_path_factory.mktemp("reference"), 2, SMALL)
    migrate(config)
    return contents(config, with_ids=True)


def with_owners(config: Config, owners: int, count: int = 256, shard_size: int = 16) -> Config:
    return write_config(config.path.parent, owners, count, shard_size)


async def test_single_to_shards_puts_each_account_in_its_shard_only(single: Config) -> None:
    before = contents(single, with_ids=True)
    usage_before = await usage(single, single.store_path, accounts_of(N))
    sharded = with_owners(single, 2)
    outcome = migrate(sharded)
    assert outcome.plan is not None
    layout = found_layout(sharded)
    assert layout.kind == "shards"
    assert len(layout.files) == 16
    # Nothing lost, nothing doubled, ids kept (one source).
    assert contents(sharded, with_ids=True) == before
    seen: set[str] = set()
    for files in layout.files:
        mine = accounts_in(files.store)
        assert all(shard_of(a, sharded.partitions) == files.shard for a in mine)
        assert not mine & seen
        seen |= mine
        references_hold(files.store)
        meta = dict(sqlite3.connect(files.store).execute("SELECT name, value FROM store_meta"))
        assert meta["partitions_shard"] == files.shard
        assert (meta["partitions_count"], meta["partitions_shard_size"]) == (256, 16)
    assert seen == set(accounts_of(N))
    # Usage per account, read back from the account's shard by the accounts layer.
    usage_after: dict[str, object] = {}
    for files in layout.files:
        held = sorted(accounts_in(files.store))
        usage_after |= await usage(sharded, files.store, held)
    assert usage_after == usage_before
    # The old files are aside, never deleted; the config's layout starts.
    assert _exists(f"{single.store_path}{ASIDE}")
    assert _exists(f"{single.billing_path}{ASIDE}")
    assert not _exists(single.store_path)
    check_layout(sharded)
    assert migrate(sharded).plan is None  # a rerun has nothing to do


async def test_round_trip_single_shards_single_is_equal(single: Config) -> None:
    before = contents(single)
    usage_before = await usage(single, single.store_path, accounts_of(N))
    migrate(with_owners(single, 3, 48, 16))  # 3 shards
    back = with_owners(single, 0)
    migrate(back)
    assert found_layout(back).kind == "single"
    assert contents(back) == before
    references_hold(back.store_path)
    assert await usage(back, back.store_path, accounts_of(N)) == usage_before


async def test_repartition_moves_accounts_between_shard_layouts(single: Config) -> None:
    before = contents(single)
    usage_before = await usage(single, single.store_path, accounts_of(N))
    migrate(with_owners(single, 1, *SMALL))  # 4 shards
    other = with_owners(single, 1, 16, 8)  # 2 shards, accounts moved
    migrate(other)
    layout = found_layout(other)
    assert (layout.count, layout.shard_size, len(layout.files)) == (16, 8, 2)
    assert contents(other) == before
    usage_after: dict[str, object] = {}
    for files in layout.files:
        held = sorted(accounts_in(files.store))
        assert all(shard_of(a, other.partitions) == files.shard for a in held)
        references_hold(files.store)
        usage_after |= await usage(other, files.store, held)
    assert usage_after == usage_before


STEPS = ["prepared", "planned", "store 0", "target 2", "built", "placed 0", "placed 7",
         "aside 0", "aside 2"]  # fmt: skip


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_then_a_rerun_gives_the_same_result(
    single: Config, split_reference: object, step: str
) -> None:
    expected = split_reference
    sharded = with_owners(single, 2, *SMALL)

    def fail(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        migrate(sharded, fail=fail)
    with pytest.raises(LayoutMismatch, match="meterd migrate partitions --config"):
        check_layout(sharded)  # the daemon refuses until the migration is finished
    migrate(sharded)
    check_layout(sharded)
    assert contents(sharded, with_ids=True) == expected
    leftovers = [p.name for p in sharded.store_path.parent.rglob("*") if "migrat" in p.name]
    assert leftovers == []


async def test_the_daemon_refuses_a_layout_that_does_not_match(single: Config) -> None:
    command = f"meterd migrate partitions --config {single.path}"
    with pytest.raises(LayoutMismatch) as refused:
        check_layout(with_owners(single, 2))
    assert str(refused.value) == (
        f"found the single-file store {single.store_path} but [partitions] owners = 2,"
        f" count = 256, shard_size = 16 asks for 16 shard files in"
        f" {single.store_path.with_suffix('.shards')}/ (partitions count 256, shard_size 16):"
        f" run `{command}` (with meterd stopped) to move the data, or set [partitions] back"
    )
    migrate(with_owners(single, 2))
    with pytest.raises(LayoutMismatch, match=r"found 16 shard files .* owners = 0 asks for the"
                       r" single-file store"):  # fmt: skip
        check_layout(with_owners(single, 0))
    with pytest.raises(LayoutMismatch, match=r"partitions count 256, shard_size 16\) but .*"
                       r" count = 128, shard_size = 16 asks for 8 shard files"):  # fmt: skip
        check_layout(with_owners(single, 2, 128, 16))


def test_a_fresh_directory_just_starts(tmp_path: Path) -> None:
    for owners in (0, 2):
        config = write_config(tmp_path, owners)
        check_layout(config)
        assert migrate(config).plan is None


async def test_migrate_refuses_while_a_daemon_holds_the_store(single: Config) -> None:
    sharded = with_owners(single, 2)
    with (
        layout_lock(single, exclusive=False),
        pytest.raises(MigrationError, match=r"a meterd daemon is using the store .*: stop"),
    ):
        migrate(sharded)
    assert found_layout(sharded).kind == "single"  # untouched


def _databases(directory: Path) -> list[str]:
    """The files of ``directory`` but SQLite's companions (a read may create them) and
    the lock."""
    return sorted(
        p.name for p in directory.rglob("*") if not p.name.endswith(("-wal", "-shm", ".lock"))
    )


async def test_dry_run_changes_nothing(single: Config) -> None:
    before = _databases(single.store_path.parent)
    outcome = migrate(with_owners(single, 2), dry_run=True)
    assert outcome.plan is not None
    assert len(outcome.plan.targets()) == 48
    assert _databases(single.store_path.parent) == before


def test_the_docs_list_where_each_table_goes_as_declared() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "partitions.md").read_text()
    start, end = "<!-- migrate-tables -->\n", "<!-- /migrate-tables -->"
    listed = text[text.index(start) + len(start) : text.index(end)]
    assert listed == tables_doc(), (
        "docs/partitions.md is out of date: put meterd.partitions._migrate.tables_doc()"
        " between its migrate-tables markers"
    )


def test_every_table_of_the_schemas_is_declared(tmp_path: Path) -> None:
    """A table added to a schema one day must say where it goes (the migration refuses a
    table it does not know)."""
    config = write_config(tmp_path, owners=0)
    for files in expected_layout(config).files:
        assert undeclared_tables(files) == {}
        schema.open_database(files.store).close()
        BillingDB_open(files.billing).close()
        conn = sqlite3.connect(files.deliveries)
        for statement in DELIVERIES_SCHEMA:
            conn.execute(statement)
        conn.close()
        assert undeclared_tables(files) == {}
        with sqlite3.connect(files.store) as conn:
            conn.execute("CREATE TABLE novel (x)")
        assert undeclared_tables(files) == {"store": ["novel"]}
    assert {t.database for t in TABLES} == {"store", "billing", "deliveries"}


def test_rows_that_cannot_share_a_file_stop_a_merge_before_anything_moves(
    single: Config,
) -> None:
    """Two shards holding the same ``dedupe`` key (63 bits of different accounts: never
    seen, but a merge must not lose one) refuse the merge and leave the shards in use."""
    sharded = with_owners(single, 2, *SMALL)
    migrate(sharded)
    shards = found_layout(sharded).files
    with sqlite3.connect(shards[1].store) as conn:
        (key, batch, fingerprint, time_s) = conn.execute(
            "SELECT key, batch_id, fingerprint, time_s FROM dedupe LIMIT 1"
        ).fetchone()
    with sqlite3.connect(shards[0].store) as conn:
        (batch,) = conn.execute("SELECT max(batch_id) FROM event_batches").fetchone()
        conn.execute("INSERT INTO dedupe VALUES (?, ?, ?, ?)", (key, batch, fingerprint, time_s))
    before = contents(sharded, with_ids=True)
    back = with_owners(single, 0)
    with pytest.raises(MigrationError, match=r"store table dedupe: a row of .* collides"):
        migrate(back)
    assert contents(sharded, with_ids=True) == before
    assert [p.name for p in single.store_path.parent.rglob("*migrat*")] == []
    check_layout(sharded)  # the shards still start


def test_the_daemon_refuses_to_start_while_a_migration_runs(single: Config) -> None:
    with (
        layout_lock(single, exclusive=True),
        pytest.raises(
            StartupFailed,
            match=r"^store.path .*: meterd migrate partitions is using the store .*: wait for"
            r" it to finish$",
        ),
        hold_store(single),
    ):
        pass
    with hold_store(single), hold_store(single):  # daemons share it
        pass


@pytest.mark.parametrize("step", ["planned", "built", "placed 0", "placed 4", "aside 8"])
def test_a_crash_while_repartitioning_onto_the_same_names_then_a_rerun(
    single: Config, tmp_path: Path, step: str
) -> None:
    """4 shards -> 2: the new shard-000 and shard-001 files take the names of old ones,
    which go aside first; a crash between any two renames is finished by a rerun."""
    migrate(with_owners(single, 1, *SMALL))
    reference = tmp_path / "reference"
    shutil.copytree(single.store_path.parent, reference / "var")
    expected_config = write_config(reference, 1, 16, 8)
    migrate(expected_config)
    expected = contents(expected_config, with_ids=True)

    two = with_owners(single, 1, 16, 8)

    def fail(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        migrate(two, fail=fail)
    migrate(two)
    check_layout(two)
    assert contents(two, with_ids=True) == expected
    kept = sorted(p.name for p in two.store_path.with_suffix(".shards").glob(f"*{ASIDE}"))
    assert "shard-000.sqlite3.pre-partitions" in kept
    assert len([n for n in kept if n.endswith(".sqlite3" + ASIDE)]) == 12  # 4 x 3 files


def test_shard_stores_an_owner_created_are_taken_for_the_configs_layout(tmp_path: Path) -> None:
    """Shard files without a recorded layout (created by an owner process) pass the start
    when their number matches; record_layout() makes a change of count visible."""
    config = write_config(tmp_path, 2, *SMALL)
    for files in expected_layout(config).files:
        schema.open_database(files.store).close()
    check_layout(config)  # 4 files, 4 shards asked
    with pytest.raises(LayoutMismatch, match=r"the 4 shard files in .* record no layout, and"
                       r" \[partitions\] asks for 2 shards"):  # fmt: skip
        check_layout(with_owners(config, 2, 32, 16))
    for files in expected_layout(config).files:
        conn = schema.open_database(files.store)
        record_layout(conn, config, files.shard or 0)
        conn.close()
    with pytest.raises(LayoutMismatch, match=r"found 4 shard files .* \(partitions count 64,"
                       r" shard_size 16\) but .* count = 128, shard_size = 32 asks"):  # fmt: skip
        check_layout(with_owners(config, 2, 128, 32))  # 4 shards too: seen by the record


def test_no_room_for_the_new_files_is_refused_before_anything_is_written(
    single: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "meterd.partitions._migrate.shutil.disk_usage",
        lambda path: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 1000),
    )
    with pytest.raises(MigrationError, match=r"has 0 MiB free and the new files need about"):
        migrate(with_owners(single, 2, *SMALL))
    assert found_layout(single).kind == "single"
    assert [p.name for p in single.store_path.parent.rglob("*migrat*")] == []


def test_a_write_that_fails_removes_the_new_files_and_the_plan(
    single: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr("meterd.partitions._migrate._build_billing", full)
    before = contents(single, with_ids=True)
    with pytest.raises(MigrationError, match=r"database or disk is full; nothing was moved"):
        migrate(with_owners(single, 2, *SMALL))
    assert [p.name for p in single.store_path.parent.rglob("*migrat*")] == []
    check_layout(single)
    assert contents(single, with_ids=True) == before


def test_a_rerun_after_the_config_changed_finishes_then_goes_where_it_asks_now(
    single: Config,
) -> None:
    before = contents(single)

    def fail(at: str) -> None:
        if at == "placed 1":
            raise Crash(at)

    with pytest.raises(Crash):
        migrate(with_owners(single, 2, *SMALL), fail=fail)
    back = with_owners(single, 0)  # the operator changed their mind
    outcome = migrate(back)
    assert outcome.plan is not None
    assert outcome.plan.wanted.kind == "single"
    check_layout(back)
    assert contents(back) == before


def test_the_data_has_rows_in_every_table_the_migration_moves(single: Config) -> None:
    """The tests above move real rows of every table (a table left empty here would be
    moved untested)."""
    rows = contents(single)
    empty = [name for name, counter in rows.items() if not counter]
    # dedupe_overflow holds the rare (account, id) whose 63-bit key another pair holds:
    # none in a test-sized store; its rows move by their account like the others.
    assert empty == ["store.dedupe_overflow"]


def test_restart_history_goes_with_its_account_and_the_rest_to_shard_0(single: Config) -> None:
    sharded = with_owners(single, 2)
    migrate(sharded)
    for files in found_layout(sharded).files:
        with sqlite3.connect(files.store) as conn:
            paths = [p for (p,) in conn.execute("SELECT path FROM restarts")]
        for path in paths:
            if path.startswith("root/accounts/meters/"):
                account = path.removeprefix("root/accounts/meters/")
                assert shard_of(account, sharded.partitions) == files.shard
            else:
                assert files.shard == 0


def test_create_shards_makes_every_missing_store_with_its_layout(tmp_path: Path) -> None:
    """The gateway creates the shard stores before the owners start, each recording its
    layout, so a later change of count that keeps the number of shards is refused."""
    config = write_config(tmp_path, 2, *SMALL)
    assert create_shards(config) == [0, 1, 2, 3]
    assert create_shards(config) == []  # there already: left alone
    check_layout(config)
    with pytest.raises(LayoutMismatch, match=r"\(partitions count 64, shard_size 16\) but"):
        check_layout(with_owners(config, 2, 128, 32))  # 4 shards too: seen by the record
