"""The writer's housekeeper: periodic work, queued as operations while the writer is idle.

Rules:

* It is a task of its own, run by :meth:`Writer.run <meterd.store.Writer.run>` beside the
  server loop (in the writer's nursery: if it crashes, the writer task crashes and its
  supervisor restarts both). It never touches the connection: like a gen_server's timer
  messages, it only queues :mod:`meterd.store._ops` housekeeping operations with
  :meth:`Writer.perform <meterd.store.Writer.perform>` and waits for each to be done.
* It acts only once the writer has been idle (nothing queued, nothing being written) for
  the delay of the first rule that applies; any operation queued meanwhile restarts the
  wait. In order:

  1. commits fail (:attr:`Writer.failing`): a :class:`~meterd.store._ops.Probe` every
     ``probe_interval``, so the writer (and ``/healthz``, which load balancers read)
     recovers by itself once commits succeed, not only at the next producer's batch;
     after a full disk, only once :data:`PROBE_MIN_FREE_BYTES` are free (a one-page write
     can fit in log space already allocated while a batch still cannot);
  2. passes failed and rows wait in the tail: an :class:`~meterd.store._ops.IndexPass`
     after :data:`~meterd.store._group.PASS_RETRY_MS`;
  3. the tail holds :data:`IDLE_PASS_MIN_BATCHES` batches (after a burst): an
     ``IndexPass`` after :data:`IDLE_PASS_AFTER`, so the next load does not pay for it;
  4. a dedupe sweep is under way or due: a :class:`~meterd.store._ops.SweepSlice` every
     ``SWEEP_EVERY_MS`` (:mod:`meterd.store.retention`).

* Timers are Trio's clock (``trio.testing.MockClock`` drives them in tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Protocol

import trio

from . import retention
from ._group import PASS_RETRY_MS
from ._ops import Housekeeping, IndexPass, Probe, SweepSlice
from .journal_index import JournalTail


class IdleWriter(Protocol):
    """What the housekeeper reads of the writer it serves (:class:`~meterd.store.Writer`)
    and the one thing it does to it: :meth:`perform`."""

    path: Path
    probe_interval: float
    failing: str | None
    disk_full: bool
    pass_failing: str | None

    @property
    def journal_tail(self) -> JournalTail: ...
    @property
    def pending(self) -> int: ...
    @property
    def sweep_due(self) -> bool: ...
    def next_change(self) -> trio.Event: ...
    async def perform(self, op: Housekeeping) -> None: ...


__all__ = ["IDLE_PASS_AFTER", "IDLE_PASS_MIN_BATCHES", "PROBE_MIN_FREE_BYTES", "Housekeeper"]

IDLE_PASS_MIN_BATCHES: Final = 20_000  # a tail this large is written early when idle
IDLE_PASS_AFTER: Final = 0.05  # seconds without any operation before an idle pass
PROBE_MIN_FREE_BYTES: Final = 1 << 20
"""After a full disk, no probe is written before the store's file system has this free."""


class Housekeeper:
    """Queues the writer's periodic work (see the module doc)."""

    def __init__(self, writer: IdleWriter) -> None:
        self.writer = writer

    def due(self) -> tuple[float, Housekeeping] | None:
        """After how long an idle writer gets which operation (``None``: nothing to do)."""
        writer = self.writer
        tail = writer.journal_tail.size
        if writer.failing is not None:
            return writer.probe_interval, Probe()
        if writer.pass_failing is not None and tail:
            return PASS_RETRY_MS / 1000, IndexPass()
        if tail >= IDLE_PASS_MIN_BATCHES:
            return IDLE_PASS_AFTER, IndexPass()
        if writer.sweep_due:
            return retention.SWEEP_EVERY_MS / 1000, SweepSlice()
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        writer = self.writer
        task_status.started()
        while True:
            change = writer.next_change()
            due = None if writer.pending else self.due()
            if due is None:
                await change.wait()  # busy, or nothing to do: until a group ends
                continue
            delay, op = due
            with trio.move_on_after(delay):
                await change.wait()
            if change.is_set():
                continue  # an operation came: the writer was not idle that long
            still_full = writer.disk_full and _free_bytes(writer.path) < PROBE_MIN_FREE_BYTES
            if isinstance(op, Probe) and still_full:
                continue  # no room yet: look again after another interval
            await writer.perform(op)


def _free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``path``."""
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize
