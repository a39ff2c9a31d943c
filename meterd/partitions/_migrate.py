"""Moving the accounts' data from the layout on disk to the one the config asks (offline).

``meterd migrate partitions --config PATH [--dry-run]`` (docs/partitions.md, "Changing the
layout"). Two layouts exist (:mod:`meterd.partitions._layout`):

* **single**: ``[partitions] owners = 0``: every account in ``[store] path``, the billing
  database (``[billing] path``) and ``deliveries.sqlite3`` beside the store;
* **shards**: ``owners >= 1``: shard ``s`` of ``config.partitions.shards`` has its own store,
  billing and deliveries files (:func:`~meterd.partitions.shard_files`), each holding only
  the accounts with ``shard_of(account) == s``; each shard's store records its layout
  (``partitions_count``, ``partitions_shard_size``, ``partitions_shard``) in ``store_meta``.

The migration moves single -> shards, shards -> single and shards of one count/shard size ->
another. It runs while no daemon runs: the daemon holds a shared lock on
``<store path>.lock`` (:func:`layout_lock`) for its life, the migration an exclusive one, so
each refuses while the other runs. Steps, each safe to interrupt (``kill -9``, a power loss):

1. **prepare**: each source store is opened by the writer's own code (its schema migrated,
   its commit mark checked) and its journal index caught up (what the writer does at every
   start), so the dedupe and journal-index rows of every batch are in the file; billing and
   deliveries files are opened (migrated) too;
2. **plan**: ``<store path>.migration`` (JSON, written to a temporary name, fsynced,
   renamed) names the sources, the targets and the name each source is moved aside to;
3. **build**: each target is written under ``<final name>.migrating``, closed (SQLite
   checkpoints and removes its log) and fsynced, with a fresh commit mark;
4. the plan is marked ``built``;
5. **place**: the targets are renamed into place (a source that sits at a target's name is
   moved aside first), then every source file (and its ``-committed`` mark) is renamed aside
   to ``<name>.pre-partitions`` (``.pre-partitions-2``, ... if taken), never deleted; the
   directories are fsynced and the plan removed.

A rerun after a crash before step 4 starts over (its ``.migrating`` files are removed); after
it, it finishes step 5 (each rename is done once: a source already aside, a target already in
place are skipped). The daemon refuses to start while a plan exists.

Ids: with one source (single -> shards, the common case) every row keeps its ids (a shard
holds a subset; each file's ``AUTOINCREMENT`` goes on from the largest id it holds). With
several sources (shards -> single, re-partition) the ids of the tables that have one are
given again, 1, 2, ... in one order that keeps each source's order (merged by time), and
every column that refers to them follows (``batch_id`` everywhere, the deliveries' outbox
``seq``); billing's ``seen`` marks (the last correction ids when figures were fixed) are
lowered to the last new id before any correction they had not seen. Consequences: events
cursors and the ids of adjustments, voids and restatements an operator noted before a merge
name other rows after it (restatement causes keep their recorded text).

Where each table goes (from :data:`TABLES`, the declaration the code follows):

"""

from __future__ import annotations

import heapq
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

import structlog

from meterd.config import AutoOwners, Config
from meterd.store import journal_index, schema
from meterd.store.commitmark import SUFFIX as MARK_SUFFIX
from meterd.store.commitmark import CommitMark, last_batch_id

from ._layout import shard_files, shard_of, shards_directory

__all__ = [
    "ASIDE",
    "TABLES",
    "FileSet",
    "Layout",
    "LayoutMismatch",
    "MigrationError",
    "Plan",
    "Table",
    "check_layout",
    "create_shards",
    "expected_layout",
    "found_layout",
    "layout_lock",
    "migrate",
    "plan_migration",
    "record_layout",
    "tables_doc",
    "undeclared_tables",
]

log = structlog.get_logger("meterd.partitions")

ASIDE: Final = ".pre-partitions"
BUILDING: Final = ".migrating"
META_COUNT: Final = "partitions_count"
META_SHARD_SIZE: Final = "partitions_shard_size"
META_SHARD: Final = "partitions_shard"
LAYOUT_META: Final = (META_COUNT, META_SHARD_SIZE, META_SHARD)
_SHARD_FILE: Final = re.compile(r"shard-(\d{3,})\.sqlite3")

Database = Literal["store", "billing", "deliveries"]
Placement = Literal["account", "every", "rebuilt"]


class MigrationError(Exception):
    """The migration cannot run or go on; ``str()`` says which file, why and what to do."""


class LayoutMismatch(MigrationError):
    """The files on disk are not in the layout the config asks (the daemon's start refuses)."""


@dataclass(frozen=True, slots=True)
class Table:
    """Where one table's rows go (see the module doc).

    ``placement``: ``account``: each row to the target of its account (``account``: the SQL
    expression over the row ``t`` and the attached source ``src`` that gives it); ``every``:
    each row to every target (``merge``: on several sources, ``first``: the first source's
    row of a key, ``max``: the largest value of a name); ``rebuilt``: derived, written by the
    migration (``why``). ``renumber``: the id column given again when merging several
    sources, in the order of ``order``; ``refs``: columns holding another table's ids;
    ``marks``: columns holding "up to this journal batch" of the row's account (given the new
    id of the account's last batch at or before it)."""

    database: Database
    name: str
    placement: Placement
    why: str
    account: str | None = None  # "t.account", "batch" (its batch_id's) or an SQL expression
    renumber: str | None = None
    order: str | None = None
    refs: tuple[tuple[str, str], ...] = ()
    merge: Literal["first", "max"] = "first"
    marks: tuple[str, ...] = ()


_RESTART_ACCOUNT: Final = "meterd_path_account(t.path)"
_BY_BATCH: Final = "batch"  # the account of the row's journal batch (its batch_id)
# (event_batches too: its rows are then found by rowid, not by reading the whole journal)

TABLES: Final[tuple[Table, ...]] = (
    Table("store", "event_batches", "account", "the journal", _BY_BATCH, "batch_id",
          "received_at"),
    Table("store", "journal_index", "account", "the journal's index, caught up first",
          "t.account", refs=(("batch_id", "event_batches"),)),
    Table("store", "journal_slices", "rebuilt",
          "every slice indexed up to the file's last batch: the sources are caught up"),
    Table("store", "dedupe", "account", "the account of the batch the row points at",
          _BY_BATCH,
          refs=(("batch_id", "event_batches"),)),
    Table("store", "dedupe_overflow", "account", "", "t.account",
          refs=(("batch_id", "event_batches"),)),
    Table("store", "windows", "account", "checkpointed aggregates", "t.account"),
    Table("store", "accounts", "account", "watermarks", "t.account", marks=("watermark",)),
    Table("store", "quarantine", "account", "", "t.account",
          refs=(("batch_id", "event_batches"),)),
    Table("store", "audit", "account", "duplicates and rejections", "t.account", "audit_id",
          "received_at", refs=(("batch_id", "event_batches"),)),
    Table("store", "restarts", "account",
          "a meter actor's (`root/accounts/meters/ACCOUNT`); every other node's history to"
          " the first file", _RESTART_ACCOUNT, "restart_id", "at"),
    Table("store", "store_meta", "every",
          "the dedupe horizon, the largest of the sources'; the layout rows are written new",
          merge="max"),
    Table("store", "alert_outbox", "account", "", "t.account", "seq", "created_at",
          refs=(("batch_id", "event_batches"),)),
    Table("store", "quarantine_log", "account", "releases and discards", "t.account",
          "entry_id", "at", refs=(("batch_id", "event_batches"),
                                  ("release_batch", "event_batches"))),
    Table("store", "alert_rules", "account", "rules of one account", "t.account", "rule_id",
          "created_at", marks=("armed_after",)),
    Table("store", "log_positions", "rebuilt",
          "cluster mode's applied log positions: none is kept, and a store holding one is"
          " refused (a cluster node's shards cannot change layout yet)"),
    Table("billing", "adjustments", "account", "", "t.account", "id", "made_at"),
    Table("billing", "voids", "account", "", "t.account", "id", "made_at"),
    Table("billing", "closures", "every", "a closed month is closed for every account,"
          " its `seen` lowered when merging"),
    Table("billing", "closed_invoices", "account", "", "t.account"),
    Table("billing", "restatements", "account", "", "t.account", "id", "made_at"),
    Table("billing", "log_corrections", "rebuilt",
          "cluster mode's log sequences of corrections: none is kept (like"
          " `log_positions`)"),
    Table("deliveries", "deliveries", "account", "", "t.account",
          refs=(("seq", "alert_outbox"),)),
    Table("deliveries", "cursor", "rebuilt",
          "the last outbox row copied, no further than any source had copied"),
    Table("deliveries", "delivered_elsewhere", "rebuilt",
          "cluster mode's ids delivered by a shard's previous owner: none is kept (like"
          " `log_positions`)"),
)  # fmt: skip


def tables_doc() -> str:
    """Where each table goes, one line per table of :data:`TABLES` (Markdown; the module
    doc ends with it, and docs/partitions.md holds it between its markers)."""
    lines = []
    for table in TABLES:
        where = {
            "account": "to its account's file",
            "every": "to every file",
            "rebuilt": "rebuilt",
        }[table.placement]
        notes = [table.why] if table.why else []
        if table.renumber:
            notes.append(f"`{table.renumber}` given again when merging")
        notes += [f"`{c}` follows `{t}`" for c, t in table.refs]
        notes += [f"`{c}` follows the account's journal batches" for c in table.marks]
        extra = f": {'; '.join(notes)}" if notes else ""
        lines.append(f"* `{table.database}.{table.name}` {where}{extra}")
    return "\n".join(lines) + "\n"


__doc__ = (__doc__ or "") + tables_doc()


# -- layouts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileSet:
    """The three files of one place: the single layout's (``shard`` None) or one shard's."""

    shard: int | None
    store: Path
    billing: Path
    deliveries: Path

    def all(self) -> tuple[Path, Path, Path]:
        return (self.store, self.billing, self.deliveries)


@dataclass(frozen=True, slots=True)
class Layout:
    """A layout: ``single`` (count/shard_size 0), ``shards`` or ``empty`` (nothing stored)."""

    kind: Literal["single", "shards", "empty"]
    files: tuple[FileSet, ...]
    count: int = 0
    shard_size: int = 0

    def describe(self) -> str:
        if self.kind == "shards":
            where = self.files[0].store.parent if self.files else "?"
            return (
                f"{len(self.files)} shard files in {where}/ (partitions count {self.count},"
                f" shard_size {self.shard_size})"
            )
        if self.kind == "single":
            return f"the single-file store {self.files[0].store}"
        return "no stored data"

    def same(self, other: Layout) -> bool:
        if self.kind != other.kind:
            return False
        return self.kind != "shards" or (self.count, self.shard_size) == (
            other.count,
            other.shard_size,
        )


def single_files(config: Config) -> FileSet:
    """The files of the single layout (``owners = 0``)."""
    store = config.store_path
    return FileSet(None, store, config.billing_path, store.with_name("deliveries.sqlite3"))


def expected_layout(config: Config) -> Layout:
    """The layout ``config`` asks for."""
    parts = config.partitions
    if parts.owners == 0:
        return Layout("single", (single_files(config),))
    files = []
    for s in range(parts.shards):
        f = shard_files(config, s)
        files.append(FileSet(s, f.store, f.billing, f.deliveries))
    return Layout("shards", tuple(files), parts.count, parts.shard_size)


def plan_path(config: Config) -> Path:
    """The plan of a migration under way (its presence: unfinished)."""
    return Path(f"{config.store_path}.migration")


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)


def _has_rows(path: Path, tables: Sequence[str], *, strict: bool = True) -> bool:
    """Whether the SQLite file at ``path`` holds a row in any of ``tables`` that it has
    (a file that cannot be read: an error if ``strict``, else False, and whoever opens it
    next says what is wrong with it)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        with closing(_ro(path)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
            return any(
                conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() is not None
                for t in tables
                if t in names
            )
    except sqlite3.Error as exc:
        if not strict:
            return False
        raise MigrationError(f"cannot read {path}: {exc}; is it a meterd database?") from exc


def _data_tables(database: Database) -> list[str]:
    return [t.name for t in TABLES if t.database == database and t.placement == "account"]


def _shard_meta(path: Path) -> dict[str, int]:
    try:
        with closing(_ro(path)) as conn:
            rows = conn.execute(
                "SELECT name, value FROM store_meta WHERE name IN (?, ?, ?)", LAYOUT_META
            ).fetchall()
    except sqlite3.Error as exc:
        raise MigrationError(
            f"cannot read the layout of shard file {path}: {exc}; it is not a shard store"
            " written by meterd migrate: move it out of the shards directory"
        ) from exc
    return {str(name): int(value) for name, value in rows}


def found_layout(config: Config, *, strict: bool = True) -> Layout:
    """The layout of the files on disk (``empty`` when nothing is stored).

    Raises :class:`MigrationError` for files that are in no layout (shard files of
    different layouts, or both a single store with data and shard files). ``strict=False``
    (the daemon's start): a single store or billing file that cannot be read counts as
    holding no data here, so the store's own opening reports what is wrong with it."""
    directory = shards_directory(config)
    shards: list[tuple[int, Path]] = []
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            matched = _SHARD_FILE.fullmatch(entry.name)
            if matched:
                shards.append((int(matched[1]), entry))
    single = single_files(config)
    single_data = _has_rows(single.store, _data_tables("store"), strict=strict) or _has_rows(
        single.billing, _data_tables("billing"), strict=strict
    )
    if shards:
        layouts = set()
        for number, path in shards:
            meta = _shard_meta(path)
            if not meta:
                continue  # a store created by an owner that did not record_layout()
            if set(meta) != set(LAYOUT_META) or meta[META_SHARD] != number:
                raise MigrationError(
                    f"shard file {path} records the layout {meta} in store_meta, not one of"
                    f" shard {number}: it was moved or renamed by hand; put back the files"
                    f" meterd wrote in {directory}"
                )
            layouts.add((meta[META_COUNT], meta[META_SHARD_SIZE]))
        if not layouts:
            parts = config.partitions
            if len(shards) != parts.shards:
                raise MigrationError(
                    f"the {len(shards)} shard files in {directory} record no layout, and"
                    f" [partitions] asks for {parts.shards} shards: set [partitions] back to"
                    " the count and shard_size they were written with"
                )
            log.warning(
                "shard_layout_unrecorded",
                directory=str(directory),
                assumed=f"count {parts.count}, shard_size {parts.shard_size}",
            )
            layouts.add((parts.count, parts.shard_size))
        if len(layouts) > 1:
            raise MigrationError(
                f"the shard files in {directory} are of different layouts"
                f" ({sorted(layouts)}: partitions count, shard_size): keep one layout's"
                " files there"
            )
        ((count, size),) = layouts
        wanted = count // size
        numbers = [n for n, _ in shards]
        if numbers != list(range(wanted)):
            raise MigrationError(
                f"the shard files in {directory} are incomplete: found shards {numbers}, a"
                f" layout of count {count} and shard_size {size} has 0..{wanted - 1};"
                " restore the missing files from a backup"
            )
        if single_data:
            raise MigrationError(
                f"both the single-file store {single.store} with data and shard files in"
                f" {directory} exist; move aside the one that is not current"
            )
        files = []
        for number, path in shards:
            stem = path.with_suffix("")
            files.append(
                FileSet(
                    number,
                    path,
                    stem.with_name(stem.name + ".billing.sqlite3"),
                    stem.with_name(stem.name + ".deliveries.sqlite3"),
                )
            )
        return Layout("shards", tuple(files), count, size)
    if single_data:
        return Layout("single", (single,))
    return Layout("empty", ())


def record_layout(conn: sqlite3.Connection, config: Config, shard: int) -> None:
    """Record in a shard's store (``conn``: its writer's connection, outside a transaction)
    the layout it belongs to, as :func:`migrate` does for the files it writes: whoever
    creates a shard's store calls it, so a later change of ``count`` or ``shard_size`` is
    refused at start instead of reading accounts from the wrong files."""
    parts = config.partitions
    conn.execute("BEGIN IMMEDIATE")
    try:
        schema.write_meta(conn, META_COUNT, parts.count)
        schema.write_meta(conn, META_SHARD_SIZE, parts.shard_size)
        schema.write_meta(conn, META_SHARD, shard)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def create_shards(config: Config) -> list[int]:
    """Create the store of every shard ``config`` asks for that has none yet, its layout
    recorded (:func:`record_layout`), before the owners start: an owner then always opens a
    store that says which layout it belongs to. The shards created, in order."""
    created: list[int] = []
    dimensions = {meter.name: len(meter.dimensions) for meter in config.meters}
    for shard in range(config.partitions.shards):
        path = shard_files(config, shard).store
        if path.exists():
            continue
        conn = schema.open_database(path, meter_dimensions=dimensions)
        try:
            record_layout(conn, config, shard)
        finally:
            conn.close()
        created.append(shard)
    return created


def check_layout(config: Config) -> None:
    """Raise :class:`LayoutMismatch` (one sentence: the files found, the exact command) when
    the files on disk are not in the layout ``config`` asks; a fresh directory passes."""
    command = f"meterd migrate partitions --config {config.path}"
    if plan_path(config).exists():
        raise LayoutMismatch(
            f"a layout migration is unfinished ({plan_path(config)} exists): run `{command}`"
            " to finish it before starting meterd"
        )
    try:
        found = found_layout(config, strict=False)
    except LayoutMismatch:
        raise
    except MigrationError as error:
        raise LayoutMismatch(str(error)) from None
    wanted = expected_layout(config)
    if found.kind == "empty" or found.same(wanted):
        return
    parts = config.partitions
    owners = (
        f'"auto" ({parts.owners} on this host)'
        if isinstance(parts.owners, AutoOwners)
        else str(parts.owners)
    )
    asks = (
        f"[partitions] owners = {owners}, count = {parts.count}, shard_size ="
        f" {parts.shard_size} asks for {wanted.describe()}"
        if wanted.kind == "shards"
        else f"[partitions] owners = 0 asks for {wanted.describe()}"
    )
    raise LayoutMismatch(
        f"found {found.describe()} but {asks}: run `{command}` (with meterd stopped) to move"
        " the data, or set [partitions] back"
    )


# -- the lock -----------------------------------------------------------------------------


def lock_path(config: Config) -> Path:
    return Path(f"{config.store_path}.lock")


@contextmanager
def layout_lock(config: Config, *, exclusive: bool) -> Iterator[None]:
    """Hold ``<store path>.lock``: shared (a daemon: several may), or exclusive (the
    migration). Raises :class:`MigrationError` at once if the other kind is held."""
    import fcntl

    path = lock_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = "a meterd daemon" if exclusive else "meterd migrate partitions"
            raise MigrationError(
                f"{who} is using the store {config.store_path} (it holds {path}):"
                + (" stop it first" if exclusive else " wait for it to finish")
            ) from None
        yield
    finally:
        os.close(fd)


# -- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a migration does: sources -> targets, and where each source file goes aside."""

    found: Layout
    wanted: Layout
    aside: dict[str, str]  # source file -> its name aside

    def targets(self) -> list[Path]:
        return [p for f in self.wanted.files for p in f.all()]

    def to_json(self) -> bytes:
        def files(layout: Layout) -> list[dict[str, object]]:
            return [{"shard": f.shard, "files": [str(p) for p in f.all()]} for f in layout.files]

        doc = {
            "found": {"kind": self.found.kind, "count": self.found.count,
                      "shard_size": self.found.shard_size, "files": files(self.found)},
            "wanted": {"kind": self.wanted.kind, "count": self.wanted.count,
                       "shard_size": self.wanted.shard_size, "files": files(self.wanted)},
            "aside": self.aside,
            "state": "planned",
        }  # fmt: skip
        return json.dumps(doc, indent=1).encode()

    @staticmethod
    def from_json(data: bytes) -> tuple[Plan, str]:
        doc = json.loads(data)

        def layout(d: dict[str, object]) -> Layout:
            sets = []
            for entry in d["files"]:  # type: ignore[attr-defined]
                store, billing, deliveries = (Path(p) for p in entry["files"])
                sets.append(FileSet(entry["shard"], store, billing, deliveries))
            return Layout(d["kind"], tuple(sets), int(d["count"]), int(d["shard_size"]))  # type: ignore[arg-type, call-overload]

        plan = Plan(layout(doc["found"]), layout(doc["wanted"]), dict(doc["aside"]))
        return plan, str(doc["state"])


def _aside_name(path: Path) -> Path:
    candidate = Path(f"{path}{ASIDE}")
    n = 2
    while candidate.exists() or Path(f"{candidate}{MARK_SUFFIX}").exists():
        candidate = Path(f"{path}{ASIDE}-{n}")
        n += 1
    return candidate


def plan_migration(config: Config) -> Plan | None:
    """The migration ``config`` needs (None: the files are already in its layout, or none)."""
    found = found_layout(config)
    wanted = expected_layout(config)
    if found.kind == "empty" or found.same(wanted):
        return None
    aside = {str(p): str(_aside_name(p)) for f in found.files for p in f.all()}
    return Plan(found, wanted, aside)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# -- building the targets -----------------------------------------------------------------


def _building(path: Path) -> Path:
    return Path(f"{path}{BUILDING}")


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", MARK_SUFFIX):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def undeclared_tables(files: FileSet) -> dict[str, list[str]]:
    """The tables of ``files`` that :data:`TABLES` does not place, by database (SQLite's
    own excepted)."""
    out: dict[str, list[str]] = {}
    for database in ("store", "billing", "deliveries"):
        path: Path = getattr(files, database)
        if not path.exists():
            continue
        declared = {t.name for t in TABLES if t.database == database}
        with closing(_ro(path)) as conn:
            names = [
                str(name)
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
                if name not in declared
            ]
        if names:
            out[database] = names
    return out


def _prepare_sources(found: Layout, config: Config) -> None:
    """Bring every source to the latest schemas, its journal index caught up."""
    from meterd.alerts._delivered import SCHEMA as DELIVERIES_SCHEMA
    from meterd.billing._db import _open as open_billing

    for files in found.files:
        if files.store.exists():
            mark = CommitMark(files.store)
            conn = schema.open_database(
                files.store,
                meter_dimensions={m.name: len(m.dimensions) for m in config.meters},
                check=mark.check,
            )
            try:
                journal_index.catch_up(conn)
                mark.record(last_batch_id(conn))
            finally:
                conn.close()
                mark.close()
        if files.billing.exists():
            open_billing(files.billing).close()
        if files.deliveries.exists():
            with closing(sqlite3.connect(files.deliveries, isolation_level=None)) as conn:
                for statement in DELIVERIES_SCHEMA:
                    conn.execute(statement)
        if files.store.exists():
            with closing(_ro(files.store)) as conn:
                (positions,) = conn.execute("SELECT count(*) FROM log_positions").fetchone()
            if positions:
                raise MigrationError(
                    f"{files.store}: it holds the positions of a cluster node's log"
                    " (docs/cluster.md); a cluster node's shards cannot change layout yet:"
                    " keep the current [partitions]; nothing was moved"
                )
        unknown = undeclared_tables(files)
        if unknown:
            raise MigrationError(
                f"{files.store.parent}: tables {unknown} are not known to this meterd's"
                " migration (a newer meterd wrote them?): upgrade meterd; nothing was moved"
            )


class _Ids:
    """A scratch SQLite file attached to each target's connection as ``ids``: the target
    of each account (``targets``) and of each journal batch (``batches``), computed once,
    and, when several sources are merged, old -> new ids per renumbered table."""

    def __init__(self, path: Path, sources: Sequence[FileSet], place: Callable[[str], int]) -> None:
        self.path = path
        _remove_sqlite(path)
        self.merging = len(sources) > 1
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            self._targets(conn, sources, place)
            for table in TABLES:
                if table.renumber is None or not self.merging:
                    continue
                conn.execute(
                    f"CREATE TABLE {table.name} (src INTEGER, old INTEGER, new INTEGER,"
                    " PRIMARY KEY (src, old)) WITHOUT ROWID"
                )
                streams = [self._ids(files, table, number) for number, files in enumerate(sources)]
                merged = heapq.merge(*streams, key=lambda r: r[0])
                conn.executemany(
                    f"INSERT INTO {table.name} (src, old, new) VALUES (?, ?, ?)",
                    ((src, old, new) for new, (_, src, old) in enumerate(merged, start=1)),
                )
            conn.execute("COMMIT")

    @staticmethod
    def _targets(
        conn: sqlite3.Connection, sources: Sequence[FileSet], place: Callable[[str], int]
    ) -> None:
        conn.execute(
            "CREATE TABLE targets (target INTEGER, account TEXT, PRIMARY KEY (target, account))"
            " WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE batches (src INTEGER, target INTEGER, batch_id INTEGER,"
            " PRIMARY KEY (src, target, batch_id)) WITHOUT ROWID"
        )
        known: dict[str, int] = {}
        for number, files in enumerate(sources):
            for table in TABLES:
                path: Path = getattr(files, table.database)
                by_account = table.account == "t.account" or table.name == "event_batches"
                if not by_account or not path.exists():
                    continue
                with closing(_ro(path)) as src:
                    for (account,) in src.execute(f"SELECT DISTINCT account FROM {table.name}"):
                        if account not in known:
                            known[account] = place(account)
                    if table.name == "event_batches":
                        conn.executemany(
                            "INSERT INTO batches (src, target, batch_id) VALUES (?, ?, ?)",
                            (
                                (number, known[account], batch_id)
                                for batch_id, account in src.execute(
                                    "SELECT batch_id, account FROM event_batches"
                                )
                            ),
                        )
        conn.executemany(
            "INSERT INTO targets (target, account) VALUES (?, ?)",
            sorted((target, account) for account, target in known.items()),
        )

    @staticmethod
    def _ids(files: FileSet, table: Table, number: int) -> Iterator[tuple[int, int, int]]:
        path = getattr(files, table.database)
        if not path.exists():
            return
        with closing(_ro(path)) as conn:
            if (
                conn.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (table.name,)).fetchone()
                is None
            ):
                return
            rows = conn.execute(
                f"SELECT coalesce({table.order}, 0), {table.renumber} FROM {table.name}"
                f" ORDER BY {table.renumber}"
            )
            for order, old in rows:
                yield int(order), number, int(old)

    def close(self) -> None:
        _remove_sqlite(self.path)


@dataclass(slots=True)
class _Build:
    """The state of building one target."""

    target: FileSet
    index: int
    sources: tuple[FileSet, ...]
    place: Callable[[str | None], int | None]
    ids: _Ids
    first: bool  # receives the rows with no account (other tree nodes' restarts)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA main.table_info("{table}")')]


def _select(table: Table, columns: Sequence[str], ids: _Ids) -> str:
    """The SELECT list copying ``table``'s row ``t`` from source ``?1`` (ids mapped)."""
    refs = dict(table.refs)
    out = []
    for column in columns:
        if ids.merging and column == table.renumber:
            out.append(f"(SELECT new FROM ids.{table.name} WHERE src = ?1 AND old = t.{column})")
        elif ids.merging and column in table.marks:
            out.append(
                f"(SELECT coalesce(max(m.new), 0) FROM ids.event_batches m"
                f" JOIN src.event_batches b ON b.batch_id = m.old"
                f" WHERE m.src = ?1 AND b.account = t.account AND m.old <= t.{column})"
            )
        elif ids.merging and column in refs:
            out.append(f"(SELECT new FROM ids.{refs[column]} WHERE src = ?1 AND old = t.{column})")
        else:
            out.append(f"t.{column}")
    return ", ".join(out)


def _copy_account_table(conn: sqlite3.Connection, build: _Build, table: Table, src: int) -> None:
    columns = _columns(conn, table.name)
    names = ", ".join(columns)
    if table.account == "t.account":
        where = "t.account IN (SELECT account FROM ids.targets WHERE target = ?2)"
    elif table.account == _BY_BATCH:
        where = "t.batch_id IN (SELECT batch_id FROM ids.batches WHERE src = ?1 AND target = ?2)"
    else:
        where = f"meterd_target({table.account}) = ?2"
    if table.name == "restarts":
        where = f"coalesce(meterd_target({table.account}), ?3) = ?2"
    sql = (
        f"INSERT INTO main.{table.name} ({names}) SELECT {_select(table, columns, build.ids)}"
        f" FROM src.{table.name} t WHERE {where}"
    )
    if table.renumber is not None:
        sql += f" ORDER BY t.{table.renumber}"
    args: tuple[int, ...] = (src, build.index)
    if table.name == "restarts":
        args = (src, build.index, 0 if build.first else -1)
    try:
        conn.execute(sql, args)
    except sqlite3.IntegrityError as exc:
        source: Path = getattr(build.sources[src], table.database)
        raise MigrationError(
            f"{table.database} table {table.name}: a row of {source} collides with another"
            f" file's in {getattr(build.target, table.database)} ({exc}), so they cannot"
            " share one file; nothing was moved (the files are as they were): keep the"
            " current [partitions] layout and report this"
        ) from exc


def _tables(database: Database) -> list[Table]:
    return [t for t in TABLES if t.database == database]


def _attach(conn: sqlite3.Connection, path: Path) -> bool:
    if not path.exists():
        return False
    conn.execute("ATTACH DATABASE ? AS src", (f"file:{quote(str(path))}?mode=rw",))
    return True


def _build_store(build: _Build, path: Path, layout: Layout) -> None:
    conn = schema.open_database(path)
    try:
        _functions(conn, build)
        conn.execute("ATTACH DATABASE ? AS ids", (str(build.ids.path),))
        meta: dict[str, int] = {}
        for number, source in enumerate(build.sources):
            if not _attach(conn, source.store):
                continue
            conn.execute("BEGIN IMMEDIATE")
            for table in _tables("store"):
                if table.placement == "account":
                    _copy_account_table(conn, build, table, number)
            for name, value in conn.execute("SELECT name, value FROM src.store_meta"):
                if name not in LAYOUT_META:
                    meta[name] = max(meta.get(name, value), value)
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE src")
        conn.execute("BEGIN IMMEDIATE")
        for name, value in meta.items():
            schema.write_meta(conn, name, value)
        if layout.kind == "shards":
            assert build.target.shard is not None
            schema.write_meta(conn, META_COUNT, layout.count)
            schema.write_meta(conn, META_SHARD_SIZE, layout.shard_size)
            schema.write_meta(conn, META_SHARD, build.target.shard)
        top = last_batch_id(conn)
        conn.execute("UPDATE journal_slices SET upto = ?", (top,))
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE ids")
        mark = CommitMark(path)
        mark.check(conn, schema.SCHEMA_VERSION)
        mark.close()
    finally:
        conn.close()


def _functions(conn: sqlite3.Connection, build: _Build) -> None:
    conn.create_function("meterd_target", 1, build.place, deterministic=True)

    def path_account(path: str | None) -> str | None:
        prefix = "root/accounts/meters/"
        if path is None or not path.startswith(prefix):
            return None
        return path[len(prefix) :]

    conn.create_function("meterd_path_account", 1, path_account, deterministic=True)


def _lowered_seen(
    build: _Build, conn: sqlite3.Connection, seen_of: Sequence[str | None]
) -> str | None:
    """Billing's ``seen`` (``[last adjustment id, last void id]``) in the merged ids: the
    last new id before the first correction one of the sources had not seen (``seen_of``:
    each source's value, None: not recorded)."""
    if not build.ids.merging:
        return next((s for s in seen_of if s is not None), None)
    if all(s is None for s in seen_of):
        return None
    result = []
    for position, table in enumerate(("adjustments", "voids")):
        bound = None
        for src, raw in enumerate(seen_of):
            old = 0 if raw is None else int(json.loads(raw)[position])
            row = conn.execute(
                f"SELECT min(new) FROM ids.{table} WHERE src = ? AND old > ?", (src, old)
            ).fetchone()
            if row[0] is not None:
                bound = row[0] - 1 if bound is None else min(bound, row[0] - 1)
        if bound is None:
            (bound,) = conn.execute(f"SELECT coalesce(max(new), 0) FROM ids.{table}").fetchone()
        result.append(int(bound))
    return json.dumps(result)


def _build_billing(build: _Build, path: Path) -> None:
    from meterd.billing._db import _open as open_billing

    conn = open_billing(path)
    try:
        _functions(conn, build)
        conn.execute("ATTACH DATABASE ? AS ids", (str(build.ids.path),))
        closures: dict[str, tuple[tuple[object, ...], list[str | None]]] = {}
        restatement_seen: dict[int, str | None] = {}
        for number, source in enumerate(build.sources):
            if not _attach(conn, source.billing):
                continue
            conn.execute("BEGIN IMMEDIATE")
            for table in _tables("billing"):
                if table.placement == "account" and table.name != "restatements":
                    _copy_account_table(conn, build, table, number)
            conn.execute("COMMIT")
            columns = _columns(conn, "closures")
            for row in conn.execute(f"SELECT {', '.join(columns)} FROM src.closures"):
                record = dict(zip(columns, row, strict=True))
                period = str(record["period"])
                _, seen_of = closures.setdefault(period, (row, [None] * len(build.sources)))
                seen = record.get("seen")
                seen_of[number] = None if seen is None else str(seen)
            conn.execute("DETACH DATABASE src")
        # Restatements after the other tables: their `seen` needs every source's ids.
        columns = _columns(conn, "restatements")
        for number, source in enumerate(build.sources):
            if not _attach(conn, source.billing):
                continue
            conn.execute("BEGIN IMMEDIATE")
            table = next(t for t in TABLES if t.name == "restatements")
            rows = conn.execute(
                f"SELECT {_select(table, columns, build.ids)} FROM src.restatements t"
                " WHERE t.account IN (SELECT account FROM ids.targets WHERE target = ?2)"
                " ORDER BY t.id",
                (number, build.index),
            ).fetchall()
            seen_at = columns.index("seen")
            fixed = []
            for row in rows:
                values = list(row)
                seens: list[str | None] = [None] * len(build.sources)
                seens[number] = values[seen_at]
                values[seen_at] = (
                    _lowered_seen(build, conn, seens) if values[seen_at] is not None else None
                )
                fixed.append(values)
                restatement_seen[int(values[0])] = values[seen_at]
            conn.executemany(
                f"INSERT INTO restatements ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})",
                fixed,
            )
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE src")
        columns = _columns(conn, "closures")
        seen_at = columns.index("seen")
        conn.execute("BEGIN IMMEDIATE")
        for row, seens in closures.values():
            values = list(row)
            values[seen_at] = _lowered_seen(build, conn, seens)
            conn.execute(
                f"INSERT INTO closures ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})",
                values,
            )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE ids")
    finally:
        conn.close()


def _build_deliveries(build: _Build, path: Path, store: Path) -> None:
    from meterd.alerts._delivered import SCHEMA as DELIVERIES_SCHEMA

    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rwc", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for statement in DELIVERIES_SCHEMA:
            conn.execute(statement)
        _functions(conn, build)
        conn.execute("ATTACH DATABASE ? AS ids", (str(build.ids.path),))
        cursors: list[int | None] = []
        for number, source in enumerate(build.sources):
            if not _attach(conn, source.deliveries):
                cursors.append(None)
                continue
            conn.execute("BEGIN IMMEDIATE")
            for table in _tables("deliveries"):
                if table.placement == "account":
                    _copy_account_table(conn, build, table, number)
            conn.execute("COMMIT")
            row = conn.execute("SELECT seq FROM src.cursor").fetchone()
            cursors.append(None if row is None else int(row[0]))
            conn.execute("DETACH DATABASE src")
        cursor = _cursor(build, conn, store, cursors)
        conn.execute("INSERT INTO cursor (one, seq) VALUES (1, ?)", (cursor,))
    finally:
        conn.close()


def _cursor(
    build: _Build, conn: sqlite3.Connection, store: Path, cursors: Sequence[int | None]
) -> int:
    """The deliveries' cursor in the target: its last outbox row (new seq) such that every
    row up to it had been copied by its source (a row copied twice is ignored by its id)."""
    conn.execute("ATTACH DATABASE ? AS tgt", (str(store),))
    try:
        seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM tgt.alert_outbox ORDER BY seq")]
        if not build.ids.merging:
            done = cursors[0] or 0
            return max([s for s in seqs if s <= done], default=0)
        cursor = 0
        for seq in seqs:
            src, old = conn.execute(
                "SELECT src, old FROM ids.alert_outbox WHERE new = ?", (seq,)
            ).fetchone()
            if old > (cursors[src] or 0):
                break
            cursor = seq
        return cursor
    finally:
        conn.execute("DETACH DATABASE tgt")


def _fsync_file(path: Path) -> None:
    if path.exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build_targets(plan: Plan, config: Config, fail: Callable[[str], None]) -> None:
    sources = plan.found.files
    wanted = plan.wanted
    parts = config.partitions

    def target_of(account: str) -> int:
        return shard_of(account, parts) if wanted.kind == "shards" else 0

    def place(account: str | None) -> int | None:
        return None if account is None else target_of(account)

    ids = _Ids(Path(f"{config.store_path}.migration-ids"), sources, target_of)
    try:
        for index, target in enumerate(wanted.files):
            build = _Build(target, index, sources, place, ids, index == 0)
            for path in target.all():
                _remove_sqlite(_building(path))
            target.store.parent.mkdir(parents=True, exist_ok=True)
            target.billing.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            try:
                _build_store(build, _building(target.store), wanted)
                fail(f"store {index}")
                _build_billing(build, _building(target.billing))
                _build_deliveries(build, _building(target.deliveries), _building(target.store))
            except (sqlite3.Error, OSError) as exc:  # a full disk, most likely
                raise MigrationError(
                    f"cannot write the new files of {target.store.name} in"
                    f" {target.store.parent}: {exc}; nothing was moved and the new files are"
                    " removed: make room (the new files take about as much as the old ones)"
                    " and run the command again"
                ) from exc
            for path in target.all():
                _fsync_file(_building(path))
                _fsync_file(Path(f"{_building(path)}{MARK_SUFFIX}"))
            _fsync_dir(target.store.parent)
            log.info(
                "migrate_target_built",
                target=str(target.store),
                seconds=round(time.monotonic() - started, 3),
            )
            fail(f"target {index}")
    finally:
        ids.close()


# -- placing them -------------------------------------------------------------------------


def _rename(src: Path, dst: Path) -> None:
    """``src`` and its companions to ``dst``: the database file last (a rerun after a crash
    in between sees it where it was and moves it)."""
    for suffix in (MARK_SUFFIX, "-wal", "-shm", ""):
        a, b = Path(f"{src}{suffix}"), Path(f"{dst}{suffix}")
        if a.exists():
            os.replace(a, b)


def _place(plan: Plan, fail: Callable[[str], None]) -> None:
    sources = set(plan.aside)
    for n, path in enumerate(plan.targets()):
        building = _building(path)
        if not building.exists():
            continue  # placed before a crash
        if str(path) in sources and path.exists():
            _rename(path, Path(plan.aside[str(path)]))
        elif path.exists():
            # An old file in the way, not a source (an earlier layout's leftover): aside too.
            _rename(path, _aside_name(path))
        _rename(building, path)
        _fsync_dir(path.parent)
        fail(f"placed {n}")
    for n, (source, aside) in enumerate(plan.aside.items()):
        src = Path(source)
        if src in set(plan.targets()):
            continue  # moved aside when its successor was placed
        if src.exists() or Path(f"{src}{MARK_SUFFIX}").exists():
            _rename(src, Path(aside))
            _fsync_dir(src.parent)
        fail(f"aside {n}")


# -- the whole -----------------------------------------------------------------------------


def _check_room(plan: Plan) -> None:
    """Refuse at once when the new files cannot fit beside the old ones (they take about
    as much: the same rows, fresh pages)."""
    need = sum(
        Path(f"{p}{suffix}").stat().st_size
        for f in plan.found.files
        for p in f.all()
        for suffix in ("", "-wal")
        if Path(f"{p}{suffix}").exists()
    )
    where = plan.wanted.files[0].store.parent
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < need:
        raise MigrationError(
            f"{where} has {free / 2**20:,.0f} MiB free and the new files need about"
            f" {need / 2**20:,.0f} MiB (the size of the old ones): make room and run the"
            " command again; nothing was moved"
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`migrate` did (or, dry, would do)."""

    plan: Plan | None
    resumed: bool
    seconds: float

    def lines(self, dry: bool) -> list[str]:
        if self.plan is None:
            return ["the files are already in the layout the config asks; nothing to do"]
        p = self.plan
        if dry and self.resumed:
            return [
                f"a migration of {p.found.describe()} to {p.wanted.describe()} is unfinished:"
                " run the command without --dry-run to finish it"
            ]
        verb = "would move" if dry else ("finished moving" if self.resumed else "moved")
        out = [f"{verb} {p.found.describe()} to {p.wanted.describe()}"]
        out += [f"  write {t}" for t in p.targets()]
        out += [f"  aside {s} -> {a}" for s, a in p.aside.items() if Path(s).exists() or not dry]
        if not dry:
            out.append(f"in {self.seconds:.1f} s; the old files are kept aside (*{ASIDE})")
        return out


def _no_fail(step: str) -> None:
    return None


def migrate(
    config: Config, *, dry_run: bool = False, fail: Callable[[str], None] = _no_fail
) -> Outcome:
    """Move the stored data to ``config``'s layout (see the module doc); ``fail(step)`` is
    called after each step (tests inject crashes there)."""
    started = time.monotonic()
    with layout_lock(config, exclusive=True):
        plan_file = plan_path(config)
        if plan_file.exists():
            plan, state = Plan.from_json(plan_file.read_bytes())
            if dry_run:
                return Outcome(plan, True, 0.0)
            if state == "built":
                log.info("migrate_resumed", step="place", plan=str(plan_file))
                _place(plan, fail)
                plan_file.unlink()
                _fsync_dir(plan_file.parent)
                if plan_migration(config) is None:
                    return Outcome(plan, True, time.monotonic() - started)
                # The config changed since: go on to the layout it asks now.
            else:
                log.info("migrate_restarted", plan=str(plan_file))
                for path in plan.targets():
                    _remove_sqlite(_building(path))
                plan_file.unlink()
        planned = plan_migration(config)
        if planned is None or dry_run:
            return Outcome(planned, False, 0.0)
        _check_room(planned)
        log.info(
            "migrate_started", found=planned.found.describe(), wanted=planned.wanted.describe()
        )
        _prepare_sources(planned.found, config)
        fail("prepared")
        _write_atomically(plan_file, planned.to_json())
        fail("planned")
        try:
            _build_targets(planned, config, fail)
        except MigrationError:  # refused, not interrupted: leave no trace of the attempt
            for path in planned.targets():
                _remove_sqlite(_building(path))
            plan_file.unlink()
            _fsync_dir(plan_file.parent)
            raise
        doc = json.loads(planned.to_json())
        doc["state"] = "built"
        _write_atomically(plan_file, json.dumps(doc, indent=1).encode())
        fail("built")
        _place(planned, fail)
        plan_file.unlink()
        _fsync_dir(plan_file.parent)
        seconds = time.monotonic() - started
        log.info("migrate_finished", wanted=planned.wanted.describe(), seconds=round(seconds, 3))
        return Outcome(planned, False, seconds)
