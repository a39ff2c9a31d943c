"""Snapshots of a shard's store in a JetStream object store (docs/cluster.md "Snapshots").

A snapshot is a consistent copy of a shard's store file, made with SQLite's online backup
API (:meth:`sqlite3.Connection.backup`, all pages in one step: one read transaction, so the
copy is one committed state even while the writer commits), converted to a single file
(``journal_mode=DELETE``) and uploaded to the object store :data:`SNAPSHOTS` under the
shard's name (``shard-007``). Its headers say:

* ``Meterd-Log-Seq``: S, the last sequence of the shard's log the copy has applied (read
  from the copy itself, so it is exact);
* ``Meterd-Log-Covered``: C >= S, a sequence up to which the copy has every slice of the
  shard (no slice of the shard lies in S+1..C). A new owner needs the log from S+1, but
  only slices of its own subject: the stream may have dropped sequences up to C without
  losing anything the shard needs (the truncation check is per shard);
* ``Meterd-Epoch`` and ``Meterd-Node``: the tenure that made it.

With the store goes the shard's **billing database** (its corrections, closings and
restatements), as a second object ``shard-007.billing`` with the same headers. Both describe
one position S: the billing copy is made *after* the store copy and uploaded *before* it, so
it is never older than the store beside it (a correction is committed to billing before the
store's position passes it, see :mod:`._corrections`); corrections it holds beyond S are
found there on replay (by their sequence) and applied once.

And the shard's **alert deliveries database**, as ``shard-007.deliveries`` (copied after the
store, uploaded before it; the same headers and ``Meterd-Delivered``, how many crossing ids
it knows delivered). A new owner learns from it only *which crossings were delivered*
(:func:`meterd.alerts.import_delivered`: ids merged into its own deliveries database, never
the copy's cursor or outbox ``seq``, which are numbered per node), so it does not send them
again. Deliveries change without the log moving: when the store is not newer than the
stored snapshot but the deliveries copy knows another number of delivered ids, only the
deliveries object is uploaded again. A shard with no deliveries database uploads none, and
a snapshot without one restores as before (every crossing re-decided is sent again).
When a restore replaces the local store, the local deliveries database, which followed the
old store's outbox, keeps only the ids it knows delivered
(:func:`meterd.alerts.rebase_deliveries`): its cursor and rows are let go, so the delivery
service follows the new store's outbox from its start and skips nothing.

One object per shard (and file): a new snapshot replaces the previous one (the object store writes
the new chunks, then the new meta, and only then purges the old chunks, so a failed upload
leaves the previous snapshot whole). A snapshot with a lower S than the one stored is not
uploaded. Any snapshot is a valid starting point: decisions are a function of the log, so
the state after S is the same whoever applied it.

:meth:`Snapshots.restore` puts the latest snapshot in place of a shard's local store file
when that file is older (its position below S), after checking the download (SQLite's
``quick_check`` and its position equal to S).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats.js.errors
import structlog
import trio
from nats.js import api
from nats.js.object_store import ObjectStore

from meterd.alerts import delivered_count, import_delivered, rebase_deliveries
from meterd.partitions._layout import shard_name

from ._log import STREAM, log_name, log_subject
from ._nats import ClusterUnavailable, Connection

__all__ = [
    "SNAPSHOTS",
    "Restored",
    "SnapshotInfo",
    "SnapshotInvalid",
    "Snapshots",
    "billing_object",
    "copy_store",
    "deliveries_object",
    "store_position",
]

log = structlog.get_logger("meterd.cluster.snapshot")

SNAPSHOTS: Final = "meterd-snapshots"
SEQ: Final = "Meterd-Log-Seq"
COVERED: Final = "Meterd-Log-Covered"
EPOCH: Final = "Meterd-Epoch"
NODE: Final = "Meterd-Node"
DELIVERED: Final = "Meterd-Delivered"  # the deliveries object's: ids it knows delivered
TIMEOUT: Final = 60.0  # seconds for one upload or download


def billing_object(shard: int) -> str:
    """The name of the object holding the snapshot of ``shard``'s billing database."""
    return f"{shard_name(shard)}.billing"


def deliveries_object(shard: int) -> str:
    """The name of the object holding the snapshot of ``shard``'s deliveries database."""
    return f"{shard_name(shard)}.deliveries"


class SnapshotInvalid(Exception):
    """A downloaded snapshot is not the store its headers describe."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    shard: int
    seq: int  # the last log sequence the copy applied (S)
    covered: int  # no slice of the shard in seq+1..covered (C >= S)
    epoch: int
    node: str
    size: int


@dataclass(frozen=True, slots=True)
class Restored:
    """What a new owner starts from: its store's ``position`` (replay from position + 1),
    ``covered`` (the log is complete for the shard up to there) and the snapshot restored
    (None: the local file was at least as recent)."""

    position: int
    covered: int
    snapshot: SnapshotInfo | None = None
    seconds: float = 0.0
    delivered: int = 0  # crossing ids newly known delivered (from the snapshot's deliveries)


def store_position(path: Path, shard: int) -> int:
    """The log position of shard ``shard`` committed in the store at ``path`` (0: none, or no
    file). Read-only; blocking (run it in a thread)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT seq FROM log_positions WHERE log = ?", (log_name(shard),)
        ).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return 0
        raise
    finally:
        conn.close()
    return 0 if row is None else int(row[0])


def copy_store(source: Path, target: Path, shard: int) -> int:
    """A consistent copy of the store ``source`` (live, WAL) into the single file ``target``
    by SQLite's online backup API; returns the copy's log position of shard ``shard``.
    Blocking (run it in a thread)."""
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: every page in one step, one read transaction
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            row = dst.execute(
                "SELECT seq FROM log_positions WHERE log = ?", (log_name(shard),)
            ).fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    return 0 if row is None else int(row[0])


def copy_database(source: Path, target: Path) -> None:
    """A consistent single-file copy of the SQLite database ``source`` (the billing
    database) into ``target``, as :func:`copy_store` does. Blocking (run it in a thread)."""
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _check_database(path: Path) -> None:
    """Raise SnapshotInvalid unless ``path`` passes SQLite's quick_check."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise SnapshotInvalid(f"not a readable SQLite database: {error}") from None
    if check is None or check[0] != "ok":
        raise SnapshotInvalid(f"SQLite's quick_check says {check!r}")


def _check_copy(path: Path, shard: int, seq: int) -> None:
    """Raise SnapshotInvalid unless ``path`` is a sound store at position ``seq``."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
        position = store_position(path, shard)
    except sqlite3.Error as error:
        raise SnapshotInvalid(f"not a readable SQLite store: {error}") from None
    if check is None or check[0] != "ok":
        raise SnapshotInvalid(f"SQLite's quick_check says {check!r}")
    if position != seq:
        raise SnapshotInvalid(f"its log position is {position}, its headers say {seq}")


def _header(info: api.ObjectInfo, name: str) -> str | None:
    value = (info.headers or {}).get(name)
    if isinstance(value, list):  # written by another client: a list of values
        value = value[0] if value else None
    return None if value is None else str(value)


def _info(shard: int, info: api.ObjectInfo) -> SnapshotInfo:
    headers = info.headers or {}

    def number(name: str) -> int:
        value = headers.get(name)
        if isinstance(value, list):  # written by another client: a list of values
            value = value[0] if value else None
        try:
            return int(str(value))
        except ValueError:
            raise SnapshotInvalid(
                f"snapshot {info.name}: header {name} is {value!r}, not a sequence"
            ) from None

    seq = number(SEQ)
    return SnapshotInfo(
        shard=shard,
        seq=seq,
        covered=max(seq, number(COVERED)),
        epoch=number(EPOCH),
        node=str(headers.get(NODE, "")),
        size=int(info.size or 0),
    )


class Snapshots:
    """The snapshot bucket (see the module doc). Make it with :meth:`open`."""

    def __init__(self, connection: Connection, store: ObjectStore, node: str) -> None:
        self.connection = connection
        self.node = node
        self._store = store
        self.uploads = 0
        self.restores = 0

    @classmethod
    async def open(
        cls,
        connection: Connection,
        node: str,
        *,
        replicas: int | None = None,
        timeout: float = 10.0,
    ) -> Snapshots:
        """The bucket :data:`SNAPSHOTS`, made if missing (file storage; 3 replicas when the
        client knows at least 3 servers, else 1)."""
        if replicas is None:
            replicas = 3 if connection.known_servers >= 3 else 1
        js = connection._jetstream

        async def ensure() -> ObjectStore:
            try:
                return await js.object_store(SNAPSHOTS)
            except nats.js.errors.BucketNotFoundError:
                return await js.create_object_store(
                    SNAPSHOTS,
                    api.ObjectStoreConfig(
                        description="meterd: the latest snapshot of each shard's store",
                        storage=api.StorageType.FILE,
                        replicas=replicas,
                    ),
                )

        store = await connection._retry_placement(
            f"open object store {SNAPSHOTS} (R{replicas})", ensure, timeout
        )
        log.info("cluster.snapshot.bucket", bucket=SNAPSHOTS, replicas=replicas)
        return cls(connection, store, node)

    async def latest(self, shard: int) -> SnapshotInfo | None:
        """The stored snapshot of ``shard`` (None: none yet)."""
        found = await self._object_info(shard_name(shard))
        return None if found is None else _info(shard, found)

    async def _object_info(self, name: str) -> api.ObjectInfo | None:
        """The stored object ``name``'s info (None: no such object)."""
        store = self._store

        async def get() -> api.ObjectInfo | None:
            try:
                return await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return None

        found: api.ObjectInfo | None = await self.connection._run(
            f"read snapshot {SNAPSHOTS}/{name}", get
        )
        return found

    async def take(
        self,
        shard: int,
        store_path: Path,
        *,
        epoch: int,
        billing_path: Path | None = None,
        deliveries_path: Path | None = None,
    ) -> SnapshotInfo | None:
        """Copy the store of ``shard`` at ``store_path`` (and its billing database at
        ``billing_path`` and deliveries database at ``deliveries_path``, after it) and
        upload them (see the module doc); None when the stored snapshot is already as recent
        (its deliveries object may still be replaced). Raises ClusterUnavailable (NATS),
        sqlite3.Error or OSError (the copy)."""
        started = time.monotonic()
        # C: read the stream's last sequence L, then the shard's last slice M; once the copy
        # has applied M, no slice of the shard can lie in S+1..L.
        last = (await self.connection.stream_info(STREAM)).last_seq
        newest = await self._last_slice(shard)
        copy, seq, size = await trio.to_thread.run_sync(_copy_beside, store_path, shard)
        billing: Path | None = None
        deliveries: Path | None = None
        delivered: int | None = None  # None: no deliveries database
        try:
            if billing_path is not None:
                billing = await trio.to_thread.run_sync(
                    _copy_database_beside, store_path, shard, billing_path, ".bill"
                )
            if deliveries_path is not None:
                deliveries = await trio.to_thread.run_sync(
                    _copy_database_beside, store_path, shard, deliveries_path, ".deliv"
                )
                if deliveries is not None:
                    delivered = await trio.to_thread.run_sync(delivered_count, deliveries)
            covered = max(seq, last) if seq >= newest else seq
            stored = await self.latest(shard)
            headers = {SEQ: str(seq), COVERED: str(covered), EPOCH: str(epoch), NODE: self.node}
            if stored is not None and (
                stored.seq > seq or (stored.seq == seq and stored.covered >= covered)
            ):
                if deliveries is not None and delivered is not None and stored.seq == seq:
                    await self._deliveries_again(shard, deliveries, delivered, stored, epoch)
                return None
            if deliveries is not None:  # before the store: never older than the store
                await self._upload(
                    shard,
                    deliveries,
                    {**headers, DELIVERED: str(delivered)},
                    deliveries_object(shard),
                )
            if billing is not None:  # first: never older than the store beside it
                await self._upload(shard, billing, headers, billing_object(shard))
            await self._upload(shard, copy, headers)
        finally:
            await trio.to_thread.run_sync(_remove, copy)
            if billing is not None:
                await trio.to_thread.run_sync(_remove, billing)
            if deliveries is not None:
                await trio.to_thread.run_sync(_remove, deliveries)
        self.uploads += 1
        info = SnapshotInfo(shard, seq, covered, epoch, self.node, size)
        log.info(
            "cluster.snapshot.taken",
            shard=shard,
            seq=seq,
            covered=covered,
            epoch=epoch,
            bytes=size,
            delivered=delivered,  # crossing ids its deliveries copy knows delivered
            seconds=round(time.monotonic() - started, 3),
        )
        return info

    async def _deliveries_again(
        self, shard: int, copy: Path, delivered: int, stored: SnapshotInfo, epoch: int
    ) -> None:
        """The store is as recent as the stored snapshot (position ``stored.seq``) but
        crossings may have been delivered since: upload the deliveries ``copy`` alone when
        the stored one knows another number of delivered ids (or is missing)."""
        name = deliveries_object(shard)
        found = await self._object_info(name)
        if found is not None and _header(found, DELIVERED) == str(delivered):
            return
        headers = {
            SEQ: str(stored.seq),
            COVERED: str(stored.covered),
            EPOCH: str(epoch),
            NODE: self.node,
            DELIVERED: str(delivered),
        }
        await self._upload(shard, copy, headers, name)
        log.info(
            "cluster.snapshot.deliveries_taken",
            shard=shard,
            seq=stored.seq,
            delivered=delivered,
            epoch=epoch,
        )

    async def _last_slice(self, shard: int) -> int:
        js = self.connection._jetstream
        subject = log_subject(shard)

        async def get() -> int:
            try:
                message = await js.get_last_msg(STREAM, subject)
            except nats.js.errors.NotFoundError:
                return 0
            return int(message.seq or 0)

        return await self.connection._run(f"last slice of {subject}", get)

    async def _upload(
        self, shard: int, copy: Path, headers: dict[str, str], name: str | None = None
    ) -> None:
        store = self._store
        name = name or shard_name(shard)

        async def put() -> None:
            with copy.open("rb") as file:
                await store.put(name, file, meta=api.ObjectMeta(name=name, headers=headers))

        with trio.fail_after(TIMEOUT):
            await self.connection._run(f"upload snapshot {SNAPSHOTS}/{name}", put)

    async def restore(
        self,
        shard: int,
        store_path: Path,
        billing_path: Path | None = None,
        deliveries_path: Path | None = None,
    ) -> Restored:
        """Make ``store_path`` (and ``billing_path``) at least as recent as the latest
        snapshot of ``shard``, and merge into ``deliveries_path`` the crossing ids its
        deliveries copy knows delivered (see the module doc). NATS unavailable, or a bad
        snapshot: the local files are kept (and the log replayed from the store's position),
        with a warning or an error."""
        local = await trio.to_thread.run_sync(store_position, store_path, shard)
        try:
            info = await self.latest(shard)
        except (ClusterUnavailable, SnapshotInvalid) as error:
            log.warning(
                "cluster.snapshot.unreadable",
                shard=shard,
                error=str(error),
                hint="the shard is rebuilt from its local store's position and the log",
            )
            return Restored(local, local)
        if info is None:
            return Restored(local, local)
        if info.seq <= local:  # the local store is kept, and learns what the snapshot's
            # deliveries know (another node may have delivered crossings since this one held it)
            delivered = 0
            if deliveries_path is not None:
                delivered = await self._restore_deliveries(
                    shard, info, store_path, deliveries_path, replacing=False
                )
            return Restored(local, max(local, info.covered), delivered=delivered)
        started = time.monotonic()
        delivered = rebased = 0
        download = await trio.to_thread.run_sync(_temp_beside, store_path, shard, ".restore")
        bill: Path | None = None
        try:
            await self._download(shard, download)
            await trio.to_thread.run_sync(_check_copy, download, shard, info.seq)
            if billing_path is not None:
                bill = await trio.to_thread.run_sync(_temp_beside, store_path, shard, ".rbill")
                if await self._download(shard, bill, billing_object(shard)):
                    await trio.to_thread.run_sync(_check_database, bill)
                    await trio.to_thread.run_sync(_replace, bill, billing_path)
                else:
                    log.warning(
                        "cluster.snapshot.no_billing",
                        shard=shard,
                        seq=info.seq,
                        hint="the snapshot was made without the shard's billing database (an"
                        " older meterd): the local one is kept; corrections not in it and"
                        " not in the log after the snapshot are missing",
                    )
            if deliveries_path is not None:
                # The local deliveries database followed the store about to be replaced: its
                # cursor and seqs number that store's outbox, so only its ids are kept.
                rebased = await trio.to_thread.run_sync(rebase_deliveries, deliveries_path)
                delivered = await self._restore_deliveries(shard, info, store_path, deliveries_path)
            await trio.to_thread.run_sync(_replace, download, store_path)
        except (
            ClusterUnavailable,
            SnapshotInvalid,
            trio.TooSlowError,
            OSError,
            sqlite3.Error,  # the local deliveries database could not be rebased: keep it all
        ) as error:
            log.error(  # noqa: TRY400 (the error is in the line; no traceback wanted)
                "cluster.snapshot.restore_failed",
                shard=shard,
                seq=info.seq,
                local=local,
                error=str(error) or type(error).__name__,
                hint="the shard is rebuilt from its local store's position and the log instead"
                " (slower); a snapshot that fails its check is replaced by the next one",
            )
            return Restored(local, local)
        finally:
            await trio.to_thread.run_sync(_remove, download)
            if bill is not None:
                await trio.to_thread.run_sync(_remove, bill)
        self.restores += 1
        seconds = time.monotonic() - started
        log.info(
            "cluster.snapshot.restored",
            shard=shard,
            seq=info.seq,
            covered=info.covered,
            epoch=info.epoch,
            made_by=info.node,
            local=local,
            bytes=info.size,
            delivered=delivered,
            deliveries_let_go=rebased,
            seconds=round(seconds, 3),
        )
        return Restored(info.seq, info.covered, info, seconds, delivered)

    async def _restore_deliveries(
        self,
        shard: int,
        info: SnapshotInfo,
        store_path: Path,
        deliveries_path: Path,
        *,
        replacing: bool = True,
    ) -> int:
        """Merge the ids the snapshot's deliveries copy knows delivered into the local
        deliveries database (:func:`meterd.alerts.import_delivered`); how many were new. No
        copy, or one that cannot be used: 0 (logged), the restore goes on (those crossings
        are sent again: the receiver dedupes them by id)."""
        copy = await trio.to_thread.run_sync(_temp_beside, store_path, shard, ".rdeliv")
        try:
            if not await self._download(shard, copy, deliveries_object(shard)):
                if not replacing:  # the local store and its deliveries stay: nothing lost
                    return 0
                log.info(
                    "cluster.snapshot.no_deliveries",
                    shard=shard,
                    seq=info.seq,
                    hint="the snapshot was made without the shard's deliveries database (an"
                    " older meterd, or no alert yet): crossings it had delivered are sent"
                    " again (the receiver dedupes them by Meterd-Event-Id)",
                )
                return 0
            await trio.to_thread.run_sync(_check_database, copy)
            return await trio.to_thread.run_sync(import_delivered, deliveries_path, copy)
        except (
            ClusterUnavailable,
            SnapshotInvalid,
            trio.TooSlowError,
            OSError,
            sqlite3.Error,
        ) as error:
            log.warning(
                "cluster.snapshot.deliveries_unusable",
                shard=shard,
                seq=info.seq,
                error=str(error) or type(error).__name__,
                hint="crossings the previous owner delivered are sent again (the receiver"
                " dedupes them by Meterd-Event-Id)",
            )
            return 0
        finally:
            await trio.to_thread.run_sync(_remove, copy)

    async def _download(self, shard: int, target: Path, name: str | None = None) -> bool:
        """Download the object ``name`` (default: the store's) into ``target``; False when
        there is no such object."""
        store = self._store
        name = name or shard_name(shard)

        async def get() -> bool:
            with target.open("wb") as file:
                try:
                    await store.get(name, writeinto=file)
                except nats.js.errors.ObjectNotFoundError:
                    return False
                file.flush()
                os.fsync(file.fileno())
            return True

        with trio.fail_after(TIMEOUT):
            return await self.connection._run(f"download snapshot {SNAPSHOTS}/{name}", get)


def _temp_beside(store_path: Path, shard: int, suffix: str) -> Path:
    """A new empty file's name in the store's directory (same file system: renamed in)."""
    handle, name = tempfile.mkstemp(
        prefix=f".{shard_name(shard)}.", suffix=suffix, dir=store_path.parent
    )
    os.close(handle)
    return Path(name)


def _copy_beside(store_path: Path, shard: int) -> tuple[Path, int, int]:
    """:func:`copy_store` into a new file beside the store: (its path, position, size)."""
    copy = _temp_beside(store_path, shard, ".snapshot")
    try:
        copy.unlink()  # the backup makes its own file
        seq = copy_store(store_path, copy, shard)
        return copy, seq, copy.stat().st_size
    except BaseException:
        _remove(copy)
        raise


def _copy_database_beside(store_path: Path, shard: int, database: Path, suffix: str) -> Path | None:
    """:func:`copy_database` of ``database`` (billing, deliveries) into a new file beside the
    store (None: there is no such database yet)."""
    if not database.exists():
        return None
    copy = _temp_beside(store_path, shard, suffix)
    try:
        copy.unlink()
        copy_database(database, copy)
    except BaseException:
        _remove(copy)
        raise
    return copy


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _replace(download: Path, store_path: Path) -> None:
    """Put ``download`` in place of the store (no connection to it is open): its WAL and
    shared-memory files go first, so SQLite cannot apply an old WAL to the new file."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{store_path}{suffix}").unlink()
    os.replace(download, store_path)
    folder = os.open(store_path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
