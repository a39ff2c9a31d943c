"""The store writer: a small server of typed operations, committing them in groups.

Rules:

* One task owns the write connection. Operations (:mod:`meterd.store._ops`) are queued
  from the Trio thread; the server loop takes **everything queued** as one group, has
  :class:`~meterd.store._group.GroupTransactions` write it in **one** SQLite transaction on
  the writer's thread (``trio.to_thread.run_sync`` with a limiter of 1), and only then
  answers each operation, in queue order. While a group is being written the next one
  accumulates, so under load one fsync covers many operations.
* Pacing: an idle writer starts a group at the first operation (after one Trio checkpoint,
  so what the same scheduling tick queues joins it): at light load an append costs one
  transaction. When operations arrived while a group was being written (load), the next
  group starts ``commit_interval`` seconds (Trio clock) after the previous one started, or
  at once if that is past: under load groups grow instead of multiplying.
* Rounds: given a :class:`~meterd.store._rounds.CommitRounds` (an owner process's shard
  files), the writer does not loop: it joins that shared loop once ready, whose rounds
  commit every member file with operations queued together (one transaction each: their
  statements on the Trio thread one file after the other, their ``COMMIT`` statements
  concurrently) under the same pacing, and answer once every file of the round is durable;
  it leaves at its stop and writes its last group itself. A group that raises in a round
  ends this writer's task.
* Failure: a group that fails (``database or disk is full``, an I/O error) is rolled back,
  **every** client operation of it fails with :class:`CommitFailed` (``__cause__``: the
  sqlite3 error), one ``store_commit_failed`` line is logged, and the loop goes on:
  :attr:`Writer.failing` says why until a group commits again (``/healthz`` reports it).
  An ``append`` whose events cannot be encoded fails alone with :class:`InvalidEvents`.
* After a COMMIT, before any operation is answered, :attr:`Writer.journal_tail` gets the
  group's new batches and dedupe rows (whoever learns of a batch can find it through a
  reader), the WAL checkpointer is told (:mod:`meterd.store.wal`), and the commit mark has
  the last batch (:mod:`meterd.store.commitmark`).
* Housekeeping is not the loop's business: the housekeeper task
  (:mod:`meterd.store._housekeeping`), run beside it, queues :class:`Probe`,
  :class:`IndexPass` and :class:`SweepSlice` operations on timers while the writer is idle.
  Tests queue those operations too (:meth:`Writer.perform`), and inject faults through the
  connection class they pass in (``connection_factory``); the writer has no test hooks.
* Backpressure: :meth:`append`, :meth:`checkpoint`, :meth:`quarantine` and
  :meth:`discard` wait while ``max_pending`` operations are queued or being written;
  :meth:`submit`, :meth:`submit_batch` and :meth:`submit_release` never wait (their callers
  are bounded by their own budgets, or are an operator's requests).
* Lifecycle: ``run`` opens and migrates the database (refusing one that lost commits),
  writes the journal-index rows of whatever tail the file has, starts the WAL checkpointer
  and the housekeeper, reports ready with ``task_status.started(writer)``, serves until
  cancelled, then (under :func:`supervisors.shutdown_shield`) commits what is still queued,
  writes the whole tail and closes the connection. The same writer may be ``run`` again (a
  supervised restart); operations queued while it is not running wait for the next run.
  Cancelling an ``await append(...)`` does not withdraw the operation.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Final, TypeAlias

import structlog
import trio

import supervisors as sv
from meterd.config import StoreConfig
from meterd.model import Event

from ._appends import check_groups, encode_batch
from ._group import (
    ACCOUNT_CACHE,
    PASS_RETRY_MS,
    TABLES,
    Committed,
    GroupFailed,
    GroupTransactions,
)
from ._housekeeping import Housekeeper
from ._ops import (
    AlertRuleWrite,
    Append,
    AppendResult,
    Barrier,
    BatchAppend,
    Checkpoint,
    ClientOperation,
    Discard,
    Housekeeping,
    IndexPass,
    LogPosition,
    Operation,
    Probe,
    Quarantine,
    QuarantineDecision,
    RejectedEvent,
    Release,
    SweepSlice,
    WindowMerge,
    WindowWrite,
)
from ._rounds import CommitRounds, RoundJob
from .commitmark import CommitMark
from .errors import CommitFailed
from .journal_index import JournalTail, catch_up, pass_everything, rebuild_tail
from .schema import MeterDimensions, open_database
from .wal import FALLBACK_AUTOCHECKPOINT_PAGES, WalCheckpointer

__all__ = [
    "MAX_PENDING",
    "PROBE_INTERVAL",
    "BatchDoneCallback",
    "DoneCallback",
    "Writer",
    "WriterStats",
]

log = structlog.get_logger("meterd.store")

DoneCallback: TypeAlias = Callable[[AppendResult | BaseException], None]
BatchDoneCallback: TypeAlias = Callable[["list[AppendResult] | BaseException"], None]
"""Called with one :class:`AppendResult` per group of :meth:`Writer.submit_batch`, in order."""
_Reply: TypeAlias = Callable[[Any], None]

MAX_PENDING: Final = 10_000
"""Operations queued or being written before :meth:`Writer.append` (and the other awaited
operations) wait: the backpressure bound (not a configuration key)."""
PROBE_INTERVAL: Final = 1.0
"""Seconds between two probes of an idle writer whose commits fail (the housekeeper's)."""


@dataclass(slots=True)
class WriterStats:
    """Counters since the :class:`Writer` was created (instrumentation for tests and metrics)."""

    commits: int = 0
    failed_commits: int = 0
    operations: int = 0
    largest_group: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_conflict: int = 0
    events_too_late: int = 0  # older than the dedupe horizon (meterd.store.retention)
    dedupe_rows_swept: int = 0  # forgotten dedupe rows deleted
    batches: int = 0  # submit_batch operations (one per producer batch)
    idle_passes: int = 0  # groups of housekeeping only (passes, sweeps): not in ``commits``
    failed_passes: int = 0  # passes that failed (their groups committed without them)
    probes: int = 0  # groups of one probe write, while commits fail (not in ``commits``)


@dataclass(slots=True)
class _Waiter:
    """Turns a reply into an awaitable (for the async operations)."""

    event: trio.Event = field(default_factory=trio.Event)
    outcome: Any = None

    def __call__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.event.set()

    async def wait(self) -> Any:
        await self.event.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Writer:
    """The store writer for the database at ``path``. See the module doc.

    ``config`` is the ``[store]`` table (:class:`meterd.config.StoreConfig`, where each
    key's default, unit and meaning are declared once): ``commit_interval``, under load the
    least time (Trio clock) between the starts of two group transactions; ``index_cycle``,
    between two passes of the journal index over the same accounts
    (:mod:`meterd.store.journal_index`); ``wal_checkpoint_interval``, between log
    checkpoints off the commit path (0: SQLite's own, :mod:`meterd.store.wal`). Its
    ``path`` is not read: ``path`` is the database (the daemon's, resolved).

    ``max_pending``: the backpressure bound of the async operations. ``clock``: wall-clock
    milliseconds for ``received_at`` / ``updated_at`` / ``at`` columns.
    ``audit_retention_ms``: audit rows older than this (by ``received_at``) are pruned
    (``None``: kept; the daemon passes ``dedupe_window``). ``dedupe_window_ms``: how long
    the dedupe index remembers an event, by its time (:mod:`meterd.store.retention`;
    ``None``: the horizon never moves). ``probe_interval``: seconds between two probes of
    an idle writer whose commits fail. ``meter_dimensions``: each configured meter's number
    of dimensions (migration of an older store, :mod:`meterd.store.schema`).
    ``connection_factory``: the :class:`sqlite3.Connection` class of the write connection
    (a test passes one that injects faults).
    """

    def __init__(
        self,
        path: Path | str,
        config: StoreConfig,
        *,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], int] = _wall_ms,
        audit_retention_ms: int | None = None,
        dedupe_window_ms: int | None = None,
        probe_interval: float = PROBE_INTERVAL,
        meter_dimensions: MeterDimensions | None = None,
        connection_factory: type[sqlite3.Connection] = sqlite3.Connection,
        rounds: CommitRounds | None = None,
    ) -> None:
        commit_interval = config.commit_interval.seconds
        index_cycle = config.index_cycle.seconds
        wal_checkpoint_interval = config.wal_checkpoint_interval.seconds or None
        if commit_interval < 0:
            raise ValueError(f"commit_interval must be >= 0 seconds, got {commit_interval}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if dedupe_window_ms is not None and dedupe_window_ms < 1:
            raise ValueError(f"dedupe_window_ms must be >= 1, got {dedupe_window_ms}")
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.max_pending = max_pending
        self.probe_interval = probe_interval
        self.meter_dimensions = dict(meter_dimensions or {})
        self.connection_factory = connection_factory
        self.audit_retention_ms = audit_retention_ms
        self.dedupe_window_ms = dedupe_window_ms
        self.stats = WriterStats()
        self._clock = clock
        # The last committed journal batch, beside the database (checked at open).
        self.commit_mark = CommitMark(self.path)
        self.journal_tail = JournalTail(max(1, round(index_cycle * 1000)))
        self._groups = GroupTransactions(
            str(self.path),
            clock,
            self.journal_tail,
            self.commit_mark,
            audit_retention_ms=audit_retention_ms,
            dedupe_window_ms=dedupe_window_ms,
        )
        # Checkpoints of the log, off the commit path (None: SQLite's, inside a COMMIT).
        self.wal = (
            None
            if wal_checkpoint_interval is None
            else WalCheckpointer(
                self.path,
                interval=wal_checkpoint_interval,
                # With rounds, one loop checkpoints every file of the process.
                shared=None if rounds is None else rounds.wal,
            )
        )
        self.housekeeper = Housekeeper(self)
        # With rounds, the shared loop commits this writer's groups (meterd.store._rounds).
        self.rounds = rounds
        self._in_rounds = False
        self._group_lock = trio.Lock()  # one group at a time (the loop's or the last one)
        self._crashed: trio.Event | None = None
        self._crash_error: BaseException | None = None
        self._queue: list[tuple[Operation, _Reply]] = []
        self._in_flight = 0
        self._wake: trio.Event | None = None
        self._watch: trio.Event | None = None  # set at the next change (next_change)
        self._room = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(1)
        self._connection: sqlite3.Connection | None = None
        self._running = False
        self._last_start = -float("inf")
        self._submit_buckets: dict[str, int] = {}  # account_bucket cache, Trio thread
        # Why the last group failed, until a group commits again (for health checks), and
        # whether that was a full disk (the housekeeper's probes wait for free space).
        self.failing: str | None = None
        self.disk_full = False
        # Why the last pass failed, until one is written again (its groups committed).
        self.pass_failing: str | None = None
        # Metrics hook: seconds each checkpoint took, from its call until it was committed.
        self.on_checkpoint: Callable[[float], None] | None = None
        # Metrics hook: seconds each committed group of client operations took, from its
        # write handed to the thread to its commit (the console's commit-latency chart; in
        # commit rounds, from the round's first statement until every file of it is durable).
        self.on_commit: Callable[[float], None] | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def queued(self) -> bool:
        """Whether operations wait for the next group."""
        return bool(self._queue)

    @property
    def pending(self) -> int:
        """Operations queued or being written."""
        return len(self._queue) + self._in_flight

    @property
    def horizon(self) -> int | None:
        """The dedupe horizon as committed (ms; :mod:`meterd.store.retention`)."""
        return self._groups.horizon

    @property
    def sweep_due(self) -> bool:
        """Whether a dedupe sweep is under way or due (the housekeeper's)."""
        return self._groups.sweep_due

    def next_change(self) -> trio.Event:
        """An event set at the next change: an operation queued, or a group finished."""
        if self._watch is None:
            self._watch = trio.Event()
        return self._watch

    def _changed(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.set()

    # -- the task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Writer] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, report ready with ``task_status.started(self)``, serve."""
        if self._running:
            raise RuntimeError(f"store writer for {self.path} is already running")
        self._running = True
        try:
            self._connection = await trio.to_thread.run_sync(self._open, limiter=self._limiter)
            try:
                # Whatever tail the file has (a crash or a stop leaves one) is indexed before
                # anyone reads: the in-memory tail then starts empty and complete.
                await self._catch_up()
                async with trio.open_nursery() as nursery:
                    if self.wal is not None:
                        await nursery.start(self.wal.run)
                    await nursery.start(self.housekeeper.run)
                    task_status.started(self)
                    if self.rounds is None:
                        await self._serve()
                    else:
                        await self._serve_in_rounds(self.rounds)
            finally:
                with sv.shutdown_shield():
                    async with self._group_lock:  # after a group the rounds have in flight
                        try:
                            # One last group: what was queued when the writer was stopped.
                            # What replies queue meanwhile waits for a next run.
                            if self._queue:
                                await self._commit_group()
                            await self._pass_everything()
                        finally:
                            connection, self._connection = self._connection, None
                            await trio.to_thread.run_sync(connection.close, limiter=self._limiter)
                            self.commit_mark.close()
        finally:
            self._running = False

    def _open(self) -> sqlite3.Connection:
        # Before anything is written (a migration too): a database that lost commits is
        # refused (meterd.store.commitmark).
        try:
            connection = open_database(
                self.path,
                meter_dimensions=self.meter_dimensions,
                check=self.commit_mark.check,
                factory=self.connection_factory,
            )
        except BaseException:
            self.commit_mark.close()
            raise
        self._groups.opened(connection)
        if self.wal is not None:
            # The checkpointer copies the log; the commits' own checkpoint is the backstop
            # that bounds it (see meterd.store.wal).
            connection.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT_PAGES}")
        return connection

    async def _catch_up(self) -> None:
        """Write the rows of the tail the file has; if that cannot be written (a full disk),
        hold them in memory instead, derived the same way, for the passes to write later:
        the writer starts either way (a full disk fails commits, not the writer)."""
        connection = self._connection
        assert connection is not None
        try:
            indexed = await trio.to_thread.run_sync(catch_up, connection, limiter=self._limiter)
        except Exception as error:  # a full disk, or a pass that fails
            new, new_dedupe = await trio.to_thread.run_sync(
                rebuild_tail, connection, limiter=self._limiter
            )
            self.journal_tail.clear()
            self.journal_tail.committed(new, new_dedupe, (), self._clock())
            log.warning(
                "journal_index_catch_up_failed",
                path=str(self.path),
                error=str(error),
                held=len(new),
            )
            return
        self.journal_tail.clear()
        if indexed:
            log.info("journal_index_caught_up", path=str(self.path), batches=indexed)

    async def _pass_everything(self) -> None:
        """Write the whole tail (at a stop: the file is left with nothing to catch up)."""
        tail = self.journal_tail
        if not tail.size:
            return
        connection = self._connection
        assert connection is not None
        try:
            await trio.to_thread.run_sync(pass_everything, connection, tail, limiter=self._limiter)
        except Exception as error:  # the next start catches up instead
            log.warning("journal_index_pass_failed", path=str(self.path), error=str(error))
            return
        tail.clear()

    async def _serve(self) -> None:
        loaded = False
        while True:
            if not self._queue:
                # Idle: the first operation starts a group at once (after one checkpoint,
                # so that what the same scheduling tick submits joins it).
                self._wake = trio.Event()
                await self._wake.wait()
                self._wake = None
                await trio.lowlevel.checkpoint()
            elif loaded:
                # Load: operations arrived while the previous group was being written.
                start_at = self._last_start + self.commit_interval
                if trio.current_time() < start_at:
                    await trio.sleep_until(start_at)
                else:
                    await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint()  # queued by replies, or before run
            loaded = await self._commit_group()

    async def _serve_in_rounds(self, rounds: CommitRounds) -> None:
        """Serve through the shared loop (meterd.store._rounds) until cancelled, or until
        one of this writer's groups raised there (raised here: the writer's task ends)."""
        crashed = self._crashed = trio.Event()
        self._crash_error = None
        self._in_rounds = True
        rounds.join(self)
        try:
            await crashed.wait()
            error = self._crash_error
            assert error is not None
            raise error
        finally:
            self._in_rounds = False
            rounds.leave(self)
            self._crashed = None

    def _round_take(self) -> RoundJob | None:
        """The commit loop takes this writer's queued group for its round (Trio thread):
        the group lock is held until :meth:`_round_done` or :meth:`_round_undo`. ``None``
        if it left, has nothing queued, or writes its last group itself (a stop)."""
        if not (self._in_rounds and self._queue and self._connection is not None):
            return None
        try:
            self._group_lock.acquire_nowait()
        except trio.WouldBlock:
            return None
        queued, group = self._take_group()
        barriers_only = all(isinstance(op, Barrier) for op in group)
        return RoundJob(self._groups, self._connection, group, queued, barriers_only)

    def _round_undo(self, job: RoundJob) -> None:
        """The round did not write ``job`` (interrupted, or its statements raised): nothing
        of it was committed, so its operations go back to the front of the queue."""
        try:
            self._queue[:0] = job.queued
            self._in_flight = 0
            self._room.unpark_all()
        finally:
            self._group_lock.release()

    def _round_done(
        self, job: RoundJob, written: Committed | GroupFailed | None, took: float
    ) -> None:
        """The round wrote ``job`` (``written``; ``None``: barriers only): answer its
        operations, as :meth:`_commit_group` does for a group of this writer's own."""
        try:
            self._in_flight = 0
            self._room.unpark_all()
            self._settle_group(job.queued, job.group, written, took)
        finally:
            self._group_lock.release()

    def _crash(self, error: BaseException) -> None:
        """A group of this writer raised in the shared loop: the writer's task raises it."""
        crashed = self._crashed
        if crashed is None:
            log.error("store_round_failed_after_stop", path=str(self.path), error=str(error))
            return
        if self._crash_error is None:
            self._crash_error = error
        crashed.set()

    def _take_group(self) -> tuple[list[tuple[Operation, _Reply]], list[Operation]]:
        queued, self._queue = self._queue, []
        group = [op for op, _ in queued]
        self._in_flight = len(group)
        self._last_start = trio.current_time()
        return queued, group

    async def _commit_group(self) -> bool:
        """Write the queued operations as one group; whether more arrived meanwhile."""
        queued, group = self._take_group()
        barriers_only = all(isinstance(op, Barrier) for op in group)
        took = 0.0
        try:
            if barriers_only:
                written: Committed | GroupFailed | None = None
            else:
                connection = self._connection
                assert connection is not None
                handed = time.perf_counter()
                written = await trio.to_thread.run_sync(
                    partial(self._groups.write, connection, group), limiter=self._limiter
                )
                took = time.perf_counter() - handed
        except BaseException:
            # Cancelled before the thread ran (or the thread died): nothing was committed,
            # so the group goes back to the front of the queue for the next attempt.
            self._queue[:0] = queued
            raise
        finally:
            self._in_flight = 0
            self._room.unpark_all()
        return self._settle_group(queued, group, written, took)

    def _settle_group(
        self,
        queued: list[tuple[Operation, _Reply]],
        group: Sequence[Operation],
        written: Committed | GroupFailed | None,
        took: float,
    ) -> bool:
        """Answer a written group's operations (Trio thread); whether more are queued."""
        clients = [op for op in group if not isinstance(op, _HOUSEKEEPING)]
        probe = any(isinstance(op, Probe) for op in group)
        stats = self.stats
        stats.operations += len(clients)
        stats.largest_group = max(stats.largest_group, len(clients))
        if probe:
            stats.probes += 1
        if isinstance(written, Committed):
            self._committed(written, bool(clients), probe)
            if clients and self.on_commit is not None:
                self.on_commit(took)
        elif isinstance(written, GroupFailed):
            self._failed(written, queued, len(clients), probe)
            self._changed()
            return bool(self._queue)
        outcomes = [None] * len(group) if written is None else written.outcomes
        for (op, reply), outcome in zip(queued, outcomes, strict=True):
            if isinstance(outcome, AppendResult):
                results: list[AppendResult] = [outcome]
            elif isinstance(outcome, list):
                results = outcome
                stats.batches += 1
            else:
                results = []
            if results:
                stats.events_accepted += sum(map(len, map(_accepted_of, results)))
                stats.events_duplicate += sum(map(len, map(_duplicates_of, results)))
                stats.events_conflict += sum(map(len, map(_conflicts_of, results)))
                stats.events_too_late += sum(map(len, map(_too_late_of, results)))
            _resolve(op, reply, outcome)
        self._changed()
        return bool(self._queue)

    def _committed(self, written: Committed, clients: bool, probe: bool) -> None:
        """A group committed: what the Trio side learns before any operation is answered
        (whoever learns of a batch, an ack, a delivery, a wake-up, can find it)."""
        self.journal_tail.committed(
            written.new_batches, written.new_dedupe, written.passed, written.now
        )
        if self.wal is not None:
            self.wal.committed()
        if clients:
            self.stats.commits += 1
        elif not probe:
            self.stats.idle_passes += 1
        self.stats.dedupe_rows_swept += written.swept
        if self.failing is not None:
            log.info("store_commit_recovered", path=str(self.path), was=self.failing)
            self.failing = None
            self.disk_full = False
        error = written.pass_error
        if error is not None:
            self.stats.failed_passes += 1
            if self.pass_failing is None:
                log.error(
                    "journal_index_pass_failed",
                    path=str(self.path),
                    error=f"{type(error).__name__}: {error}",
                    held=self.journal_tail.size,
                    retry_after_ms=PASS_RETRY_MS,
                )
            self.pass_failing = f"{type(error).__name__}: {error}"
        elif written.passed and self.pass_failing is not None:
            self.pass_failing = None
            log.info("journal_index_pass_recovered", path=str(self.path))

    def _failed(
        self,
        written: GroupFailed,
        queued: list[tuple[Operation, _Reply]],
        clients: int,
        probe: bool,
    ) -> None:
        """A group rolled back: every client operation of it fails (a probe alone that
        fails again is not logged again: the writer is failing already)."""
        cause = written.error
        self.failing = f"{type(cause).__name__}: {cause}"
        self.disk_full = written.disk_full
        if probe and not clients:
            for op, reply in queued:
                _resolve(op, reply, None)
            return
        self.stats.failed_commits += 1
        log.error(
            "store_commit_failed",
            path=str(self.path),
            operations=clients,
            error=self.failing,
            disk_full=self.disk_full,
        )
        for op, reply in queued:
            if isinstance(op, Barrier | Probe | IndexPass | SweepSlice):
                _resolve(op, reply, None)  # settled: nothing before it is still in flight
            else:
                failure = CommitFailed(
                    f"store {self.path}: the transaction of {clients} operations failed"
                    f" and was rolled back, nothing of it was written: {cause}"
                )
                failure.__cause__ = cause
                _resolve(op, reply, failure)

    # -- operations (Trio thread) -----------------------------------------------------

    def _enqueue(self, op: Operation, reply: _Reply) -> None:
        self._queue.append((op, reply))
        if self._wake is not None:
            self._wake.set()
        if self._in_rounds:
            assert self.rounds is not None
            self.rounds.poke()
        if self._watch is not None:
            self._changed()

    async def _wait_for_room(self) -> None:
        while self.pending >= self.max_pending:
            await self._room.park()

    async def _call(self, op: ClientOperation | Housekeeping) -> Any:
        waiter = _Waiter()
        self._enqueue(op, waiter)
        return await waiter.wait()

    def submit(self, account: str, events: Sequence[Event], on_done: DoneCallback) -> None:
        """Queue an append of ``events`` (all of ``account``); never blocks.

        ``on_done`` is called on the Trio thread after the group's ``COMMIT`` with the
        :class:`AppendResult`, or with the exception if the operation failed
        (:class:`CommitFailed`: nothing of its group was written; :class:`InvalidEvents`).
        Raises ``ValueError`` at once if an event's ``account`` is not ``account``.
        """
        batch = tuple(events)
        for index, event in enumerate(batch):
            if event.account != account:
                raise ValueError(
                    f"event {index} (id {event.id!r}) is of account {event.account!r},"
                    f" submitted for account {account!r}"
                )
        self._enqueue(Append(account, batch, self._clock()), on_done)

    def submit_batch(
        self,
        groups: Sequence[tuple[str, Sequence[Event]]],
        on_done: BatchDoneCallback,
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
        position: LogPosition | None = None,
        received_at: int | None = None,
    ) -> None:
        """Queue one producer batch, already grouped by account; never blocks.

        One operation for the whole batch: its keys are looked up in one go and its rows
        written with one statement per table, so a batch spread over many accounts costs
        little more than one of a single account. ``on_done`` gets one
        :class:`AppendResult` per group, in order (each accepted group is a journal batch
        of its own, so recovery and the events endpoint still find an account's events by
        account), or the exception if nothing of it was written (:class:`CommitFailed`,
        :class:`InvalidEvents`). Verdicts are exactly those of one :meth:`submit` per
        group in the same order. Raises ``ValueError`` at once if an event's ``account``
        is not its group's, or an account has two groups.

        ``rejected``: the batch's events rejected before the store that name an account;
        their ``audit`` rows (with ``producer`` and the producer's batch ``seq``) commit with
        the batch, as do those of its duplicates and conflicts. ``groups`` may be empty
        when only ``rejected`` is to be recorded.

        Cluster mode (docs/cluster.md): ``position`` is the batch's place in its log,
        written in the batch's transaction (:class:`LogPosition`), and ``received_at`` the
        time the log recorded for it (default: the writer's clock), so that replaying the
        log decides the same (the dedupe horizon is raised from it).
        """
        op = self._batch_append(groups, producer, seq, rejected)
        if position is not None or received_at is not None:
            op = dataclasses.replace(
                op,
                position=position,
                received_at=op.received_at if received_at is None else received_at,
            )
        self._enqueue(op, on_done)

    def _batch_append(
        self,
        groups: Sequence[tuple[str, Sequence[Event]]],
        producer: str | None,
        seq: int | None,
        rejected: Sequence[RejectedEvent],
    ) -> BatchAppend:
        # Runs on the Trio thread per producer batch: whole-batch checks with no per-group
        # set or list work; the precise error is found again only when one fails.
        accounts = list(map(itemgetter(0), groups))
        batches = list(map(tuple, map(itemgetter(1), groups)))
        if len(set(accounts)) != len(accounts):
            check_groups(groups)
        for account, events in zip(accounts, batches, strict=True):
            for event in events:
                if event.account != account:
                    check_groups(groups)
        checked = tuple(zip(accounts, batches, strict=True))
        # Encoded here, on the Trio thread, not in the group transaction: the writer thread
        # is the pipeline's serial stage (its Python, SQLite and fsync in a row), and the
        # encoding needs nothing from the database.
        if len(self._submit_buckets) > ACCOUNT_CACHE:
            self._submit_buckets.clear()
        encoded = encode_batch(checked, self._submit_buckets)
        return BatchAppend(checked, self._clock(), producer, seq, tuple(rejected), encoded)

    async def append(self, account: str, events: Sequence[Event]) -> AppendResult:
        """:meth:`submit` and wait for the result (waits first if ``max_pending`` are queued)."""
        await self._wait_for_room()
        waiter = _Waiter()
        self.submit(account, events, waiter)
        result = await waiter.wait()
        assert isinstance(result, AppendResult)
        return result

    async def checkpoint(
        self,
        account: str,
        windows: Sequence[WindowWrite],
        watermark: int,
        *,
        merge: WindowMerge | None = None,
        rows: Mapping[str, Sequence[tuple[object, ...]]] | None = None,
    ) -> None:
        """Upsert ``windows`` of ``account`` and set its watermark, in one transaction.

        The watermark is the last journal batch the windows include; it is set as given
        (not a maximum), because it must always describe the windows written with it.

        With ``merge``, ``windows`` are *deltas*: a window already stored becomes
        ``merge(meter, stored, delta)``, read and written in the same transaction (on the
        writer's thread: no read on another connection first, and nothing can commit in
        between); a new one is stored as given. If ``merge`` raises, this checkpoint fails
        alone with that exception and nothing of it is written; the rest of its group
        commits.

        ``rows``: more rows written in the same transaction, by table (each table's
        statement is declared in :data:`meterd.store._group.TABLES`).
        """
        windows = tuple(windows)
        for row in windows:
            if not (
                len(row) == 4
                and isinstance(row[0], str)
                and type(row[1]) is int
                and isinstance(row[2], str)
                and isinstance(row[3], bytes)
            ):
                raise TypeError(
                    f"checkpoint of {account!r}: a window must be (meter: str, start: int,"
                    f" dims: str, state: bytes), got {row!r:.200}"
                )
        if type(watermark) is not int or watermark < 0:
            raise ValueError(f"checkpoint of {account!r}: watermark must be an int >= 0")
        other = tuple((table, tuple(table_rows)) for table, table_rows in (rows or {}).items())
        for table, _ in other:
            if table not in TABLES:
                raise ValueError(
                    f"checkpoint of {account!r}: no statement for table {table!r} (declare"
                    f" it in meterd.store._group.TABLES; known: {', '.join(sorted(TABLES))})"
                )
        started = time.perf_counter()
        await self._wait_for_room()
        await self._call(Checkpoint(account, windows, watermark, merge, other))
        if self.on_checkpoint is not None:
            self.on_checkpoint(time.perf_counter() - started)

    async def quarantine(self, account: str, batch_id: int, event_id: str, error: str) -> None:
        """Record that event ``event_id`` of journal batch ``batch_id`` is poison.

        Quarantining the same event again replaces its error and time.
        """
        await self._wait_for_room()
        await self._call(Quarantine(account, batch_id, event_id, error, self._clock()))

    def submit_release(
        self,
        account: str,
        event_ids: Sequence[str] | None,
        by: str,
        reason: str,
        on_done: Callable[[QuarantineDecision | BaseException], None],
    ) -> None:
        """Queue a release of quarantined events of ``account`` (``event_ids``; ``None``:
        every one); never blocks. ``on_done`` is called on the Trio thread after the
        group's ``COMMIT``, in commit order like an append's (so the caller delivers the
        new batch before any later batch of the account), with the
        :class:`~meterd.store._ops.QuarantineDecision`, or the exception
        (:class:`~meterd.store.errors.QuarantineRefused`: nothing written, every id at
        fault named; :class:`CommitFailed`). See :mod:`meterd.store._quarantine`.

        Raises ``ValueError`` at once for a blank ``by`` or ``reason`` or an empty
        ``event_ids`` (``None`` means all)."""
        ids = None if event_ids is None else _checked_ids(event_ids)
        _check_audit(by, reason)
        self._enqueue(Release(account, ids, by, reason, self._clock()), on_done)

    async def discard(
        self, account: str, event_ids: Sequence[str], by: str, reason: str
    ) -> QuarantineDecision:
        """Discard quarantined events ``event_ids`` of ``account`` for good (audited in
        ``quarantine_log``; they never count). Raises
        :class:`~meterd.store.errors.QuarantineRefused` (nothing written) if an id is not
        in quarantine nor discarded already, ``ValueError`` for a blank ``by`` or
        ``reason`` or no ids."""
        ids = _checked_ids(event_ids)
        _check_audit(by, reason)
        await self._wait_for_room()
        decision = await self._call(Discard(account, ids, by, reason, self._clock()))
        assert isinstance(decision, QuarantineDecision)
        return decision

    async def alert_rule(
        self,
        account: str,
        name: str,
        by: str,
        rule: tuple[str, str, str | None, str | None, str] | None,
    ) -> bool:
        """Create (``rule``: meter, period, threshold, spend, webhook) or delete (None) the
        alert rule ``name`` of ``account`` in one transaction, recording ``by`` and the
        time; whether it was written (False: the name is taken, or there is no such rule)."""
        await self._wait_for_room()
        written = await self._call(AlertRuleWrite(account, name, by, self._clock(), rule))
        assert isinstance(written, bool)
        return written

    async def barrier(self) -> None:
        """Return once every operation queued before this call is committed (or has failed)."""
        if not self._queue and not self._in_flight:
            await trio.lowlevel.checkpoint()
            return
        await self._call(Barrier())

    async def perform(self, op: Housekeeping) -> None:
        """Queue a housekeeping operation and return once its group is done (committed or
        not: :attr:`failing` says). The housekeeper's way, and the tests'."""
        await self._call(op)


_HOUSEKEEPING: Final = (Probe, IndexPass, SweepSlice)
_accepted_of: Final = attrgetter("accepted")
_duplicates_of: Final = attrgetter("duplicates")
_conflicts_of: Final = attrgetter("conflicts")
_too_late_of: Final = attrgetter("too_late")


def _checked_ids(event_ids: Sequence[str]) -> tuple[str, ...]:
    ids = tuple(event_ids)
    if not ids:
        raise ValueError("no event ids given (a release without ids releases all: pass None)")
    for event_id in ids:
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"an event id must be a non-empty string, got {event_id!r}")
    return ids


def _check_audit(by: str, reason: str) -> None:
    for name, text in (("by", by), ("reason", reason)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} must say who and why (non-blank text), got {text!r}")


def _resolve(op: Operation, reply: _Reply, outcome: Any) -> None:
    try:
        reply(outcome)
    except Exception:
        log.exception("store_on_done_raised", operation=type(op).__name__)
