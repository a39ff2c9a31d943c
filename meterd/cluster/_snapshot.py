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

One object per shard: a new snapshot replaces the previous one (the object store writes
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

from meterd.partitions._layout import shard_name

from ._log import STREAM, log_name, log_subject
from ._nats import ClusterUnavailable, Connection

__all__ = [
    "SNAPSHOTS",
    "Restored",
    "SnapshotInfo",
    "SnapshotInvalid",
    "Snapshots",
    "copy_store",
    "store_position",
]

log = structlog.get_logger("meterd.cluster.snapshot")

SNAPSHOTS: Final = "meterd-snapshots"
SEQ: Final = "Meterd-Log-Seq"
COVERED: Final = "Meterd-Log-Covered"
EPOCH: Final = "Meterd-Epoch"
NODE: Final = "Meterd-Node"
TIMEOUT: Final = 60.0  # seconds for one upload or download


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
        store = self._store
        name = shard_name(shard)

        async def get() -> api.ObjectInfo | None:
            try:
                return await store.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                return None

        found = await self.connection._run(f"read snapshot {SNAPSHOTS}/{name}", get)
        return None if found is None else _info(shard, found)

    async def take(self, shard: int, store_path: Path, *, epoch: int) -> SnapshotInfo | None:
        """Copy the store of ``shard`` at ``store_path`` and upload it (see the module doc);
        None when the stored snapshot is already as recent. Raises ClusterUnavailable
        (NATS), sqlite3.Error or OSError (the copy)."""
        started = time.monotonic()
        # C: read the stream's last sequence L, then the shard's last slice M; once the copy
        # has applied M, no slice of the shard can lie in S+1..L.
        last = (await self.connection.stream_info(STREAM)).last_seq
        newest = await self._last_slice(shard)
        copy, seq, size = await trio.to_thread.run_sync(_copy_beside, store_path, shard)
        try:
            covered = max(seq, last) if seq >= newest else seq
            stored = await self.latest(shard)
            if stored is not None and (
                stored.seq > seq or (stored.seq == seq and stored.covered >= covered)
            ):
                return None
            headers = {SEQ: str(seq), COVERED: str(covered), EPOCH: str(epoch), NODE: self.node}
            await self._upload(shard, copy, headers)
        finally:
            await trio.to_thread.run_sync(_remove, copy)
        self.uploads += 1
        info = SnapshotInfo(shard, seq, covered, epoch, self.node, size)
        log.info(
            "cluster.snapshot.taken",
            shard=shard,
            seq=seq,
            covered=covered,
            epoch=epoch,
            bytes=size,
            seconds=round(time.monotonic() - started, 3),
        )
        return info

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

    async def _upload(self, shard: int, copy: Path, headers: dict[str, str]) -> None:
        store = self._store
        name = shard_name(shard)

        async def put() -> None:
            with copy.open("rb") as file:
                await store.put(name, file, meta=api.ObjectMeta(name=name, headers=headers))

        with trio.fail_after(TIMEOUT):
            await self.connection._run(f"upload snapshot {SNAPSHOTS}/{name}", put)

    async def restore(self, shard: int, store_path: Path) -> Restored:
        """Make ``store_path`` at least as recent as the latest snapshot of ``shard`` (see
        the module doc). NATS unavailable, or a bad snapshot: the local file is kept (and the
        log replayed from its position), with a warning or an error."""
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
        if info.seq <= local:
            return Restored(local, max(local, info.covered))
        started = time.monotonic()
        download = await trio.to_thread.run_sync(_temp_beside, store_path, shard, ".restore")
        try:
            await self._download(shard, download)
            await trio.to_thread.run_sync(_check_copy, download, shard, info.seq)
            await trio.to_thread.run_sync(_replace, download, store_path)
        except (ClusterUnavailable, SnapshotInvalid, trio.TooSlowError, OSError) as error:
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
            seconds=round(seconds, 3),
        )
        return Restored(info.seq, info.covered, info, seconds)

    async def _download(self, shard: int, target: Path) -> None:
        store = self._store
        name = shard_name(shard)

        async def get() -> None:
            with target.open("wb") as file:
                await store.get(name, writeinto=file)
                file.flush()
                os.fsync(file.fileno())

        with trio.fail_after(TIMEOUT):
            await self.connection._run(f"download snapshot {SNAPSHOTS}/{name}", get)


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
