"""Checkpoints of the store's write-ahead log, off the commit path.

In WAL mode each COMMIT appends the transaction's pages to the ``-wal`` file and fsyncs it;
a *checkpoint* later copies those pages into the database file and fsyncs that. By default
SQLite runs the checkpoint inside whichever COMMIT takes the log past 1,000 pages: with
``synchronous=FULL`` that commit then also waits for ~4 MiB of copying and a second fsync,
and so does the ack of every batch in its group. (Measured at 18,000 events/s: such a COMMIT
took 33 ms against ~2 ms, and its acks came at 76-79 ms against a p50 of 16 ms.)

:class:`WalCheckpointer` runs checkpoints on a connection and thread of its own instead:

* After a group commits, the writer calls :meth:`WalCheckpointer.committed`. The
  checkpointer then runs one ``PRAGMA wal_checkpoint(PASSIVE)``, at most once per
  ``interval``: it copies what was committed, never waits for a lock and never blocks
  the writer (commits go on appending meanwhile).
* SQLite rewinds the log to its start at the first write after a checkpoint that copied
  every frame. Under back-to-back commits that moment may not come: the writer's own
  automatic checkpoint, raised to :data:`FALLBACK_AUTOCHECKPOINT_PAGES`, is the bound on
  the log's size. It then finds most pages already copied and has little left to do.
* A failed checkpoint (an I/O error, a full disk while the database file must grow) is
  logged once per streak as ``wal_checkpoint_failed``, then retried at a doubling delay
  (from ``interval`` up to :data:`MAX_RETRY_DELAY`). A checkpoint only copies committed
  pages, so a failed one loses nothing and never fails a commit.
* When stopped (cancelled), its connection closes first; the writer's, closed last,
  checkpoints what is left, as SQLite does at the last close.

Durability is unchanged: a commit is durable once its frames are fsynced in the log,
whether or not a checkpoint has copied them yet. A ``kill -9`` mid-checkpoint is recovered
by SQLite at the next open (a checkpoint writes only pages the log still holds).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import structlog
import trio

__all__ = ["FALLBACK_AUTOCHECKPOINT_PAGES", "MAX_RETRY_DELAY", "WalCheckpointer", "WalStats"]

log = structlog.get_logger("meterd.store.wal")

FALLBACK_AUTOCHECKPOINT_PAGES = 4096
"""The writer connection's ``wal_autocheckpoint`` while a checkpointer runs (16 MiB of
4 KiB pages): the log's bound when the checkpointer cannot keep up or keeps failing."""

MAX_RETRY_DELAY = 5.0
"""Seconds: the longest wait before retrying after failed checkpoints."""


@dataclass(slots=True)
class WalStats:
    """Counters since the :class:`WalCheckpointer` was created."""

    checkpoints: int = 0  # checkpoints that copied every frame the log had when they ran
    failures: int = 0  # checkpoints that raised
    log_frames: int = 0  # frames in the log at the last complete checkpoint
    copied_frames: int = 0  # frames it copied (all of them: it was complete)


class WalCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on the store at ``path`` after commits, at
    most once per ``interval`` seconds, on its own connection (see the module doc).

    ``run`` is its task: it opens the connection (the database must exist, in WAL mode),
    reports ready through ``task_status``, and checkpoints until cancelled.
    """

    def __init__(self, path: Path | str, *, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.path = Path(path)
        self.interval = interval
        self.stats = WalStats()
        self._dirty = trio.Event()
        self._copying = False
        self._settled = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def pending(self) -> bool:
        """Whether frames committed so far may still be uncopied (a checkpoint is due or
        running)."""
        return self._dirty.is_set() or self._copying

    async def settled(self) -> None:
        """Wait until every frame committed so far has been through a checkpoint (while
        :meth:`run` runs; a failing checkpointer settles once it recovers)."""
        while self.pending:
            await self._settled.park()

    def committed(self) -> None:
        """Called from the Trio thread after a group committed: the log has new frames."""
        self._dirty.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            connection = await trio.to_thread.run_sync(_open, self.path, limiter=self._limiter)
        except sqlite3.Error as error:
            # Not worth stopping the writer for: its own checkpoint (the backstop) does the
            # copying, inside the commits, as SQLite does by default.
            log.exception("wal_checkpointer_not_started", path=str(self.path), error=str(error))
            task_status.started()
            return
        try:
            task_status.started()
            await self._checkpoint_after_commits(connection)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(connection.close, limiter=self._limiter)

    async def _checkpoint_after_commits(self, connection: sqlite3.Connection) -> NoReturn:
        failing = False
        delay = self.interval
        while True:
            await self._dirty.wait()
            # Commits from here on set it again: they are the next checkpoint's work.
            self._dirty = trio.Event()
            self._copying = True
            try:
                busy, log_frames, copied = await trio.to_thread.run_sync(
                    _checkpoint, connection, limiter=self._limiter
                )
            except sqlite3.Error as error:
                self.stats.failures += 1
                if not failing:
                    log.warning("wal_checkpoint_failed", path=str(self.path), error=str(error))
                failing = True
                self._dirty.set()  # what it should have copied is still there
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            except BaseException:  # cancelled: the frames are not known to be copied
                self._dirty.set()
                raise
            finally:
                self._copying = False
            if failing:
                log.info("wal_checkpoint_recovered", path=str(self.path))
            failing, delay = False, self.interval
            if busy or copied < log_frames:
                # Another checkpoint held the lock, or a reader kept frames: not done yet.
                self._dirty.set()
            else:
                self.stats.checkpoints += 1
                self.stats.log_frames, self.stats.copied_frames = log_frames, copied
                if not self._dirty.is_set():
                    self._settled.unpark_all()
            await trio.sleep(self.interval)


def _open(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(
        f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
    )
    # The checkpoint fsyncs the database file before the log may be rewound over what it
    # copied: FULL, as on the writer's connection.
    connection.execute("PRAGMA synchronous = FULL")
    return connection


def _checkpoint(connection: sqlite3.Connection) -> tuple[bool, int, int]:
    """One passive checkpoint: (whether it could not run, frames in the log, frames copied
    to the database)."""
    busy, log_frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy), int(log_frames), int(copied)
