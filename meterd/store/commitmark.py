"""The commit mark: the last committed journal batch, recorded beside the database.

A committed transaction is durable once its pages are in the write-ahead log (``-wal``);
they reach the database file only at the next checkpoint. If the log is deleted while no
process has the database open (an operator's mistake, a copy of the database file alone),
SQLite opens the file without those commits and says nothing: acknowledged usage would be
gone and the daemon would serve wrong totals.

So the writer records, after each group that appended journal batches, the last batch id
it committed in a small file beside the database, ``<database>-committed`` (one fixed-size
``pwrite`` at offset 0, no ``fsync``: the page cache survives a ``kill -9`` of the process,
and after a power loss the file can only be older than the log, which *is* fsynced, never
ahead of it). At start, before anything is written, :meth:`CommitMark.check` compares it
with the database: a database whose journal ends before the mark has lost commits, and the
writer refuses to start (:class:`~meterd.store.errors.StoreLostCommitsError`, one sentence
naming both files and what to do).

What it does not see (docs/accounts.md "A deleted write-ahead log"): commits after the last
journal batch that appended none (checkpoints of windows, audit rows of all-duplicate
batches, passes: derived or advisory data), a mark file deleted or replaced along with the
log, and a power loss that leaves the mark behind the log (then the check is weaker, never
wrong).
"""

from __future__ import annotations

import os
import re
import sqlite3
import zlib
from pathlib import Path
from typing import Final

import structlog

from .errors import StoreError, StoreLostCommitsError

__all__ = ["SUFFIX", "CommitMark", "last_batch_id"]

log = structlog.get_logger("meterd.store")

SUFFIX: Final = "-committed"
_FORMAT: Final = "meterd committed journal batch {batch:020d} crc32 {crc:08x}\n"
_PATTERN: Final = re.compile(rb"meterd committed journal batch (\d{20}) crc32 ([0-9a-f]{8})\n")


def last_batch_id(conn: sqlite3.Connection) -> int:
    """The last journal batch id the database has given (0: none)."""
    (top,) = conn.execute(
        "SELECT max("
        " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event_batches'), 0),"
        " coalesce((SELECT max(batch_id) FROM event_batches), 0))"
    ).fetchone()
    return int(top)


def _encode(batch_id: int) -> bytes:
    digits = f"{batch_id:020d}"
    return _FORMAT.format(batch=batch_id, crc=zlib.crc32(digits.encode())).encode()


class CommitMark:
    """The commit mark of the database at ``database`` (writer thread only)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = Path(f"{database}{SUFFIX}")
        self._fd: int | None = None
        self._recorded: int | None = None
        self._failing = False

    def check(self, conn: sqlite3.Connection, version: int) -> None:
        """Refuse a database (at schema ``version``) that lost commits the mark records, then
        open the mark for writing and record what the database holds. Call before anything
        is written (``open_database``'s ``check``)."""
        stored = last_batch_id(conn) if version >= 1 else 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as error:
            raise StoreError(
                f"cannot read {self.path} (the last journal batch committed to {self.database}):"
                f" {error.strerror}; make it readable by meterd"
            ) from error
        if data:
            marked = self._decode(data)
            if marked > stored:
                raise StoreLostCommitsError(
                    f"store {self.database} is missing committed data: its journal ends at"
                    f" batch {stored} but batch {marked} was committed (recorded in"
                    f" {self.path}), so its write-ahead log {self.database}-wal was deleted or"
                    " the database was replaced by an older copy; stop meterd and put that"
                    " -wal file back beside the database, or, to serve only what the database"
                    f" holds (acknowledged usage after batch {stored} is then lost), delete"
                    f" {self.path}"
                )
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreError(
                f"cannot open {self.path} (the last journal batch committed to {self.database})"
                f" for writing: {error.strerror}; make its directory writable by meterd"
            ) from error
        self._recorded = None
        self.record(stored)

    def _decode(self, data: bytes) -> int:
        found = _PATTERN.fullmatch(data)
        if found is None or zlib.crc32(found[1]) != int(found[2], 16):
            raise StoreError(
                f"{self.path} (the last journal batch committed to {self.database}) is damaged:"
                f" {data[:80]!r}; if nothing else is wrong with the store, delete it and start"
                " again"
            )
        return int(found[1])

    def record(self, batch_id: int) -> None:
        """Record ``batch_id`` as the last committed batch (once committed). A failure to
        write is logged once (the check at the next start is then weaker) and never fails
        the commit."""
        if batch_id == self._recorded or self._fd is None:
            return
        try:
            os.pwrite(self._fd, _encode(batch_id), 0)
        except OSError as error:
            if not self._failing:
                self._failing = True
                log.warning("commit_mark_write_failed", path=str(self.path), error=str(error))
            return
        self._failing = False
        self._recorded = batch_id

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
