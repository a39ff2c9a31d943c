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

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import structlog
import trio

__all__ = [
    "FALLBACK_AUTOCHECKPOINT_PAGES",
    "MAX_RETRY_DELAY",
    "WalCheckpointer",
    "WalCheckpoints",
    "WalStats",
]

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
    reports ready through ``task_status``, and checkpoints until cancelled. Given
    ``shared`` (a :class:`WalCheckpoints`: the process's other store files), it does not
    loop: the shared loop checkpoints it with the others, one thread hop for all of them.
    """

    def __init__(
        self, path: Path | str, *, interval: float, shared: WalCheckpoints | None = None
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.path = Path(path)
        self.interval = interval
        self.shared = shared
        self.stats = WalStats()
        self._dirty = trio.Event()
        self._copying = False
        self._settled = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(1)
        self._failing = False
        self._delay = interval
        self._next_at = -math.inf  # (Trio clock) no checkpoint before this
        self._connection: sqlite3.Connection | None = None

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
        if self.shared is not None:
            self.shared.poke()

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
            if self.shared is None:
                await self._checkpoint_after_commits(connection)
            else:
                self._connection = connection
                self.shared.join(self)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if self.shared is not None:
                    self._connection = None
                    await self.shared.leave(self)  # once no pass uses the connection
                await trio.to_thread.run_sync(connection.close, limiter=self._limiter)

    async def _checkpoint_after_commits(self, connection: sqlite3.Connection) -> NoReturn:
        while True:
            await self._dirty.wait()
            self._begin()
            try:
                outcome: tuple[bool, int, int] | sqlite3.Error = await trio.to_thread.run_sync(
                    _checkpoint, connection, limiter=self._limiter
                )
            except sqlite3.Error as error:
                outcome = error
            except BaseException:  # cancelled: the frames are not known to be copied
                self._copying = False
                self._dirty.set()
                raise
            await trio.sleep(self._finish(outcome))

    # -- one checkpoint, before and after (its own loop's or the shared one's) --------------

    @property
    def _due(self) -> bool:
        return self._dirty.is_set() and trio.current_time() >= self._next_at

    def _begin(self) -> None:
        # Commits from here on set it again: they are the next checkpoint's work.
        self._dirty = trio.Event()
        self._copying = True

    def _finish(self, outcome: tuple[bool, int, int] | sqlite3.Error) -> float:
        """Account for one checkpoint's ``outcome``; the seconds until the next may run."""
        self._copying = False
        if isinstance(outcome, sqlite3.Error):
            self.stats.failures += 1
            if not self._failing:
                log.warning("wal_checkpoint_failed", path=str(self.path), error=str(outcome))
            self._failing = True
            self._dirty.set()  # what it should have copied is still there
            wait = self._delay
            self._delay = min(self._delay * 2, MAX_RETRY_DELAY)
        else:
            if self._failing:
                log.info("wal_checkpoint_recovered", path=str(self.path))
            self._failing, self._delay, wait = False, self.interval, self.interval
            busy, log_frames, copied = outcome
            if busy or copied < log_frames:
                # Another checkpoint held the lock, or a reader kept frames: not done yet.
                self._dirty.set()
            else:
                self.stats.checkpoints += 1
                self.stats.log_frames, self.stats.copied_frames = log_frames, copied
                if not self._dirty.is_set():
                    self._settled.unpark_all()
        self._next_at = trio.current_time() + wait
        return wait


class WalCheckpoints:
    """One checkpoint loop for the checkpointers (:class:`WalCheckpointer`) of a process's
    store files
    (an owner process's shards, given them through its :class:`~._rounds.CommitRounds`).

    Each file keeps its own connection, interval, retries and counters, exactly as when it
    loops alone; what is shared is the loop: a **pass** takes every file whose checkpoint is
    due (committed frames, its interval or retry delay over) and checkpoints them one after
    the other in **one** worker-thread call, instead of a task, a timer and a thread hop per
    file. The checkpoints stay off the commit path (their own connections; a passive
    checkpoint never waits for a lock). ``run`` is its task, started before the writers
    and cancelled after them.
    """

    def __init__(self) -> None:
        self._members: list[WalCheckpointer] = []
        self._wake = trio.Event()
        self._in_pass: list[WalCheckpointer] = []
        self._pass_done = trio.Event()
        self._pass_done.set()
        self.passes = 0  # thread calls made (counters for tests and figures)
        self.checkpoints = 0  # checkpoints run in them

    def join(self, member: WalCheckpointer) -> None:
        if member not in self._members:
            self._members.append(member)
        self._wake.set()

    async def leave(self, member: WalCheckpointer) -> None:
        """``member`` takes no part in passes from now on; returns once no pass uses its
        connection (it may then close it)."""
        if member in self._members:
            self._members.remove(member)
        while member in self._in_pass:
            await self._pass_done.wait()

    def poke(self) -> None:
        """A member has new frames."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            due = [m for m in self._members if m._due and m._connection is not None]
            if not due:
                waits = [m._next_at for m in self._members if m._dirty.is_set()]
                self._wake = trio.Event()
                with trio.move_on_at(min(waits, default=math.inf)):
                    await self._wake.wait()
                continue
            connections = []
            for member in due:
                assert member._connection is not None
                connections.append(member._connection)
                member._begin()
            self._in_pass, self._pass_done = due, trio.Event()
            try:
                outcomes = await trio.to_thread.run_sync(_checkpoint_each, connections)
            except BaseException:
                for member in due:  # the frames are not known to be copied
                    member._copying = False
                    member._dirty.set()
                raise
            finally:
                self._in_pass = []
                self._pass_done.set()
            self.passes += 1
            self.checkpoints += len(due)
            for member, outcome in zip(due, outcomes, strict=True):
                member._finish(outcome)


def _open(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(
        f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
    )
    # The checkpoint fsyncs the database file before the log may be rewound over what it
    # copied: FULL, as on the writer's connection.
    connection.execute("PRAGMA synchronous = FULL")
    return connection


def _checkpoint_each(
    connections: list[sqlite3.Connection],
) -> list[tuple[bool, int, int] | sqlite3.Error]:
    """:func:`_checkpoint` of each connection in turn (one worker-thread call for a pass of
    :class:`WalCheckpoints`); a failing one is its error, the others go on."""
    outcomes: list[tuple[bool, int, int] | sqlite3.Error] = []
    for connection in connections:
        try:
            outcomes.append(_checkpoint(connection))
        except sqlite3.Error as error:
            outcomes.append(error)
    return outcomes


def _checkpoint(connection: sqlite3.Connection) -> tuple[bool, int, int]:
    """One passive checkpoint: (whether it could not run, frames in the log, frames copied
    to the database)."""
    busy, log_frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy), int(log_frames), int(copied)
