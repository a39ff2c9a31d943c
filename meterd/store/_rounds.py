"""One commit loop for several store writers: an owner process's shard files (docs/partitions.md).

An owner process holds several shard files, each with its own :class:`~._writer.Writer`
(its connection, its queue, its housekeeping, its crash and restart). Left alone, each
writer runs its own loop and commits whenever it has something queued: a producer batch
split over 8 shards becomes 8 small transactions, each with its own wake-up, thread hop
and bookkeeping, at 8 different moments. Given a :class:`CommitRounds`, a writer does not
loop: the rounds do, one loop for all of them.

Rules:

* A **round** takes every member writer that has operations queued and writes each one's
  group (one transaction per file): every file's statements, one file after the other,
  **on the Trio thread** (the Python and SQLite work that holds the GIL: done by the thread
  that holds it anyway, so no thread waits for it per statement, as one thread per file
  did, or a round's thread doing them all would, behind a busy Trio thread), each file's
  ``COMMIT`` handed to one of the loop's warm commit threads (:data:`COMMIT_THREADS` at
  most) as soon as its statements are written: a ``COMMIT`` releases the GIL once, for its
  fsync, so the fsyncs overlap each other and the next files' statements. The round ends
  when every file touched is durable (or failed): one wake-up of the Trio thread, by the
  last commit. Then each writer answers its operations exactly as when it loops alone:
  what a writer answers depends only on its file. A round's writers answer once every
  file of the round is durable (a producer batch's slices are answered together anyway).
* Failures stay per file: a file whose statements fail is rolled back (its operations
  fail, :class:`~._group.GroupFailed`) while the others go on to their commits; a commit
  that fails (a full disk, an I/O error, a fence) rolls back that file alone.
* Pacing is the single writer's, over the round: an idle loop starts a round at the first
  operation queued anywhere (after one Trio checkpoint, so what the same tick queues in
  other shards joins it); under load the next round starts ``commit_interval`` after the
  previous one started, or at once if that is past. So under load each file commits at
  most once per round, and its groups grow instead of multiplying.
* A writer joins when it is ready and leaves when it stops (its last group, the rest of its
  journal tail and its close stay its own, after it left; a round holds each member's group
  lock while it writes that member's group). An exception raised by a writer's group (a
  bug, not a failed transaction) ends that writer's task (its supervisor restarts it, and under
  ``rest_for_one`` its accounts with it), never the loop or the other writers.
* The loop runs as long as the owner: started before the writers, cancelled after them.
* The files' write-ahead-log checkpoints share one loop as well (:attr:`CommitRounds.wal`,
  a :class:`~.wal.WalCheckpoints` run by :meth:`CommitRounds.run`): a member writer's
  checkpointer joins it, so the process checkpoints its files in one thread hop per pass
  instead of one task, timer and thread hop per file.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ._group import Committed, GroupFailed, GroupTransactions, Prepared
from .wal import WalCheckpoints

if TYPE_CHECKING:
    from ._ops import Operation

__all__ = ["COMMIT_THREADS", "CommitRounds", "Member", "RoundJob"]

COMMIT_THREADS: Final = 15
"""Warm threads of a loop for its files' concurrent ``COMMIT`` statements (the round's own thread
commits one more): an owner holds 16 shard files at most."""


@dataclass(frozen=True, slots=True)
class RoundJob:
    """One member's group in a round: what the round writes (``groups`` on
    ``connection``) and what the member answers afterwards (``queued``: its operations
    and their replies, opaque to the loop)."""

    groups: GroupTransactions
    connection: sqlite3.Connection
    group: Sequence[Operation]
    queued: Any
    barriers_only: bool


@dataclass(frozen=True, slots=True)
class _Raised:
    """A member's group raised (a bug, not a failed transaction): its writer crashes
    (``None``: not written, the round was interrupted; queued again)."""

    error: Exception | None


class Member(Protocol):
    """What the loop needs of a writer (:class:`meterd.store.Writer` is one)."""

    @property
    def queued(self) -> bool:
        """Whether operations wait for the next group."""

    def _round_take(self) -> RoundJob | None:
        """Take the queued group for a round (``None``: nothing to write now)."""

    def _round_done(
        self, job: RoundJob, written: Committed | GroupFailed | None, took: float
    ) -> None:
        """Answer the group's operations: ``written`` (``None``: barriers only), ``took``
        seconds from the round's first statement to its last commit."""

    def _round_undo(self, job: RoundJob) -> None:
        """The round did not write the group (interrupted): it is queued again."""

    def _crash(self, error: BaseException) -> None:
        """``_round`` raised ``error``: the writer's own task is to raise it."""


class CommitRounds:
    """The commit loop shared by the writers given it (see the module doc).

    ``commit_interval``: seconds (Trio clock), under load, between the starts of two rounds.
    """

    def __init__(self, commit_interval: float) -> None:
        if commit_interval < 0:
            raise ValueError(f"commit_interval must be >= 0 seconds, got {commit_interval}")
        self.commit_interval = commit_interval
        self._writers: list[Member] = []
        self._wake = trio.Event()
        self.rounds = 0  # rounds started (counters for tests and figures)
        self.files = 0  # files written, summed over the rounds
        self.widest = 0  # the most files one round wrote
        self.running = False
        # The member writers' WAL checkpointers' loop, run beside the rounds.
        self.wal = WalCheckpoints()
        self._commits: ThreadPoolExecutor | None = None  # while run() runs

    @property
    def writers(self) -> list[Member]:
        return list(self._writers)

    def join(self, writer: Member) -> None:
        if writer not in self._writers:
            self._writers.append(writer)
        self._wake.set()

    def leave(self, writer: Member) -> None:
        if writer in self._writers:
            self._writers.remove(writer)

    def poke(self) -> None:
        """An operation was queued in a member writer."""
        self._wake.set()

    def _queued(self) -> list[Member]:
        return [writer for writer in self._writers if writer.queued]

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Write rounds (and checkpoint the members' logs) until cancelled."""
        self._commits = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="meterd-commit")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.wal.run)
                await self._rounds(task_status=task_status)
        finally:
            commits, self._commits = self._commits, None
            commits.shutdown(wait=False)  # idle: every round's commits were waited for

    async def _rounds(self, *, task_status: trio.TaskStatus[Any]) -> None:
        self.running = True
        task_status.started()
        loaded = False
        last_start = -math.inf
        try:
            while True:
                if not self._queued():
                    self._wake = trio.Event()
                    if not self._queued():
                        await self._wake.wait()
                    await trio.lowlevel.checkpoint()  # what this tick queues joins the round
                elif loaded:
                    start_at = last_start + self.commit_interval
                    if trio.current_time() < start_at:
                        await trio.sleep_until(start_at)
                    else:
                        await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.checkpoint()
                touched = self._queued()
                if not touched:
                    loaded = False
                    continue
                last_start = trio.current_time()
                self.rounds += 1
                self.files += len(touched)
                self.widest = max(self.widest, len(touched))
                await self._round(touched)
                loaded = bool(self._queued())
        finally:
            self.running = False

    async def _round(self, touched: list[Member]) -> None:
        """One round: every touched file's statements on this (the Trio) thread, their
        commits on the commit threads, then each writer answers its own (see the module
        doc)."""
        taken: list[tuple[Member, RoundJob]] = []
        for writer in touched:
            job = writer._round_take()
            if job is not None:
                taken.append((writer, job))
        if not taken:
            return
        commits = self._commits
        assert commits is not None
        handed = time.perf_counter()
        outcomes: list[Committed | GroupFailed | _Raised | None] = [None] * len(taken)
        in_flight: list[tuple[int, RoundJob, Prepared, Future[GroupFailed | None]]] = []
        interrupted: BaseException | None = None
        try:
            for index, (_, job) in enumerate(taken):
                if interrupted is not None:  # (KeyboardInterrupt): not written, queued again
                    outcomes[index] = _Raised(None)
                    continue
                if job.barriers_only:
                    continue
                try:
                    ready = job.groups.prepare(job.connection, job.group)
                except Exception as error:  # a bug in this file's group: the others go on
                    _abandon(job, error)
                    outcomes[index] = _Raised(error)
                    continue
                except BaseException as error:
                    _abandon(job, Exception(str(error)))
                    interrupted, outcomes[index] = error, _Raised(None)
                    continue
                if isinstance(ready, GroupFailed):
                    outcomes[index] = ready
                    continue
                # Its COMMIT (the fsync) on a commit thread, while this one goes on.
                in_flight.append((index, job, ready, _commit_on(commits, job, ready)))
        finally:
            # Every commit handed on is waited for, whatever happens here: a cancel waits
            # for the round's end (a commit in flight cannot be taken back).
            with trio.CancelScope(shield=True):
                await _all_done([future for *_, future in in_flight])
        took = time.perf_counter() - handed
        for index, job, ready, future in in_flight:
            failed = future.result()
            if failed is not None:
                outcomes[index] = failed
                continue
            try:
                outcomes[index] = job.groups.committed(ready)
            except Exception as error:  # committed, but its bookkeeping raised (a bug)
                outcomes[index] = _Raised(error)
        for (writer, job), outcome in zip(taken, outcomes, strict=True):
            if isinstance(outcome, _Raised):
                # As a group that raises on its writer's own thread: queued again (its
                # writer's stop writes it), and the writer's task raises the error.
                writer._round_undo(job)
                if outcome.error is not None:
                    writer._crash(outcome.error)
                continue
            try:
                writer._round_done(job, outcome, took)
            except Exception as error:  # the writer's own failure: its task raises it
                writer._crash(error)
        if interrupted is not None:
            raise interrupted


async def _all_done(futures: Sequence[Future[Any]]) -> None:
    """Wait until every one of ``futures`` is done: one wake-up of the Trio thread, by the
    commit thread that finishes last."""
    if not futures:
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    left = [len(futures)]
    lock = threading.Lock()

    def finished(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = not left[0]
        if last:
            token.run_sync_soon(done.set)

    for future in futures:
        future.add_done_callback(finished)
    await done.wait()


def _commit_on(
    commits: ThreadPoolExecutor, job: RoundJob, ready: Prepared
) -> Future[GroupFailed | None]:
    """``job``'s ``COMMIT`` on a commit thread (here, if the pool takes no more work)."""
    try:
        return commits.submit(job.groups.commit, job.connection, ready)
    except RuntimeError:  # shut down: never while a round runs, but never lose a commit
        done: Future[GroupFailed | None] = Future()
        done.set_result(job.groups.commit(job.connection, ready))
        return done


def _abandon(job: RoundJob, error: Exception) -> None:
    if job.connection.in_transaction:
        try:
            job.connection.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:
            error.add_note(f"and the ROLLBACK failed: {rollback_error}")
