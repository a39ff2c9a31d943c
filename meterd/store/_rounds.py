"""One commit loop for several store writers: an owner process's shard files (docs/partitions.md).

An owner process holds several shard files, each with its own :class:`~._writer.Writer`
(its connection, its queue, its housekeeping, its crash and restart). Left alone, each
writer runs its own loop and commits whenever it has something queued: a producer batch
split over 8 shards becomes 8 small transactions, each with its own wake-up, thread hop
and bookkeeping, at 8 different moments. Given a :class:`CommitRounds`, a writer does not
loop: the rounds do, one loop for all of them.

Rules:

* A **round** takes every member writer that has operations queued and writes each one's
  group (one transaction per file, :meth:`Writer._round`) concurrently, each on its own
  writer's thread (SQLite and the fsync release the GIL); the round ends when every file
  touched is durable (or failed). Each writer answers its operations as its own commit
  ends, exactly as when it loops alone: what a writer answers depends only on its file.
* Pacing is the single writer's, over the round: an idle loop starts a round at the first
  operation queued anywhere (after one Trio checkpoint, so what the same tick queues in
  other shards joins it); under load the next round starts ``commit_interval`` after the
  previous one started, or at once if that is past. So under load each file commits at
  most once per round, and its groups grow instead of multiplying.
* A writer joins when it is ready and leaves when it stops (its last group, the rest of its
  journal tail and its close stay its own, after it left). An exception raised by a
  writer's group ends that writer's task (its supervisor restarts it, and under
  ``rest_for_one`` its accounts with it), never the loop or the other writers.
* The loop runs as long as the owner: started before the writers, cancelled after them.
* The files' write-ahead-log checkpoints share one loop as well (:attr:`CommitRounds.wal`,
  a :class:`~.wal.WalCheckpoints` run by :meth:`CommitRounds.run`): a member writer's
  checkpointer joins it, so the process checkpoints its files in one thread hop per pass
  instead of one task, timer and thread hop per file.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import trio

from .wal import WalCheckpoints

__all__ = ["CommitRounds", "Member"]


class Member(Protocol):
    """What the loop needs of a writer (:class:`meterd.store.Writer` is one)."""

    @property
    def queued(self) -> bool:
        """Whether operations wait for the next group."""

    async def _round(self) -> None:
        """Write the queued group (one transaction of this file), answer its operations."""

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
        async with trio.open_nursery() as nursery:
            await nursery.start(self.wal.run)
            await self._rounds(task_status=task_status)

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
                async with trio.open_nursery() as nursery:
                    for writer in touched:
                        nursery.start_soon(_write, writer)
                loaded = bool(self._queued())
        finally:
            self.running = False


async def _write(writer: Member) -> None:
    try:
        await writer._round()
    except Exception as error:  # the writer's own failure: its task raises it
        writer._crash(error)
