"""The store writer: the single owner of the write connection, committing in groups.

Operations (:meth:`Writer.submit` / :meth:`Writer.append`, :meth:`Writer.checkpoint`,
:meth:`Writer.quarantine`, :meth:`Writer.barrier`) are queued from the Trio thread. The
writer's task takes **everything queued** as one group, runs it in **one** SQLite
transaction on its own thread (``trio.to_thread.run_sync`` with a limiter of 1, so the
connection is only ever used by one thread at a time), commits, and only then resolves each
operation, in the order they were queued. While a group is being written the next one
accumulates, so under load one fsync covers many operations.

Pacing: when the writer is idle (it had nothing queued after its last group), the next
operation starts a group at once (after one Trio checkpoint, so operations queued in the same
scheduling tick join it): at light load an append costs one transaction and nothing more.
When operations arrived while a group was being written (load), the next group starts
``commit_interval`` seconds (Trio clock) after the previous one started, or at once if that
is past: under load, groups are at least that far apart and grow instead of multiplying.

Failure: if the transaction fails (``database or disk is full``, an I/O error, a busy lock)
it is rolled back, **every** operation of the group fails with :class:`CommitFailed` (its
``__cause__`` is the sqlite3 error), one ``store_commit_failed`` line is logged, and the
writer goes on with the next group: a full disk fails ingestion while it lasts, it does not
crash-loop the writer. :attr:`Writer.failing` says why until a group commits again (the
API's ``/healthz`` reports it). Meanwhile an idle writer *probes* every ``probe_interval``
(1 s) with a group of one write (a row changed and changed back; after a full disk, only once
:data:`PROBE_MIN_FREE_BYTES` are free), so it recovers by itself once commits can succeed
(``store_commit_recovered`` is logged), not only at the next producer's batch: a load
balancer that reads ``/healthz`` would otherwise never send that batch. An ``append``
whose events cannot be encoded (a ``float`` quantity) fails alone with
:class:`InvalidEvents` before any SQL runs for it; the rest of its group commits.

Dedupe is exact: the ``dedupe`` table maps a 63-bit key of ``(account, id)``
(:func:`~meterd.store.schema.dedupe_row_key`, built on ``Event.dedupe_key()``) to the batch
holding the event and its ``Event.fingerprint()``. When a key is found, the writer checks it
is really this ``(account, id)``: first in ``dedupe_overflow`` (where an ``(account, id)``
whose key was already taken by another pair is kept, keyed by the text), then by reading the
ids of the stored batch. Only a true match counts as duplicate (same fingerprint) or conflict
(different fingerprint). Events earlier in the same group, or the same call, count as stored.

Passes (:mod:`meterd.store.journal_index`): appends write neither a journal index entry nor
``dedupe`` rows; the group transaction *passes* the slices of accounts whose turn came,
writing their rows. After its COMMIT, before any operation is resolved,
:attr:`Writer.journal_tail` gets the group's new batches and dedupe rows and forgets the
passed slices; a key is looked up in this tail too. ``run`` writes the rows of whatever tail
the file has (derived from the journal; held in memory instead if they cannot be written)
before reporting ready, and all of the tail when it stops. If a group's pass raises, the
group is rolled back and written again without it (the appends are the truth, the index is
derived): :attr:`Writer.pass_failing` says why until a pass is written again, one
``journal_index_pass_failed`` line is logged, and no pass is tried for
:data:`PASS_RETRY_MS` (then again, by an idle writer too); the rows wait in the tail.

Log checkpoints: with ``wal_checkpoint_interval`` (default 0.1 s), a
:class:`~meterd.store.wal.WalCheckpointer` task beside the writer copies committed pages from
the write-ahead log into the database file on its own connection, so that no COMMIT waits for
that copy (``None``: SQLite's default, a checkpoint inside the COMMIT that passes 1,000 pages).

Audit trail: each duplicate and ``id_conflict`` the writer decides, and each
:class:`RejectedEvent` given to :meth:`submit_batch` (ingest's rejections that name an
account), becomes an ``audit`` row in the **same** transaction as the batch: it is durable
when the batch's verdicts are, and a failed or killed transaction leaves neither. The common
case (a batch of new events, nothing rejected) writes no audit row and does no audit work.
With ``audit_retention_ms``, a group transaction at most every :data:`AUDIT_PRUNE_EVERY_MS`
also deletes the oldest audit rows received before ``now - audit_retention_ms`` (at most
:data:`AUDIT_PRUNE_BATCH` a time, oldest row id first; the next group goes on while a pass
found a full batch).

Backpressure: :meth:`append`, :meth:`checkpoint` and :meth:`quarantine` wait while
``max_pending`` operations are queued or being written. :meth:`submit` never waits and may
exceed the bound: it is called from an actor's handler, which must not block, and the
actors are bounded by their mailboxes (each outstanding append answers one message), so the
total stays bounded by what the callers can hold.

Lifecycle: ``run`` is the task (``sv.task_spec("store-writer", writer.run)``): it opens and
migrates the database, calls ``task_status.started(writer)``, serves until cancelled, then
(under :func:`supervisors.shutdown_shield`) commits what is still queued and closes the
connection. The same :class:`Writer` may be ``run`` again after it stopped (a supervised
restart). Operations queued while it is not running wait for the next ``run``.

Cancelling an ``await append(...)`` (or ``checkpoint``/``quarantine``) does not withdraw the
operation: once queued it is committed or failed as part of its group.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Final, TypeAlias

import structlog
import trio

import supervisors as sv
from meterd.alerts._eval import Crossing
from meterd.alerts._outbox import write_crossings
from meterd.model import Event

from . import codec, retention, schema
from .commitmark import CommitMark
from .errors import CommitFailed, InvalidEvents, StoreCorruptError
from .journal_index import (
    DedupeRow,
    JournalTail,
    NewBatch,
    catch_up,
    pass_everything,
    pass_slices,
    rebuild_tail,
)
from .retention import too_late_message
from .schema import MeterDimensions, open_database
from .wal import FALLBACK_AUTOCHECKPOINT_PAGES, WalCheckpointer

__all__ = [
    "AppendResult",
    "BatchDoneCallback",
    "DoneCallback",
    "RejectedEvent",
    "WindowMerge",
    "WindowWrite",
    "Writer",
    "WriterStats",
]

log = structlog.get_logger("meterd.store")

ACCOUNT_CACHE: Final = 200_000  # accounts the writer's per-account shortcuts remember
AUDIT_PRUNE_EVERY_MS: Final = 60_000  # between two pruning passes of the audit trail
AUDIT_PRUNE_BATCH: Final = 5_000  # audit rows a pass reads (and deletes) at most
IDLE_PASS_MIN_BATCHES: Final = 20_000  # a tail this large is written early when idle
IDLE_PASS_AFTER: Final = 0.05  # seconds without any operation before an idle pass
PASS_RETRY_MS: Final = 1_000  # after a failed pass, the groups of this long pass nothing
# A probe's write: one row changed and changed back (SQLite writes nothing for an UPDATE to
# the same bytes): a page and a log frame, fsynced like any commit, and no change to the data.
_PROBE_SQL: Final = "UPDATE journal_slices SET upto = -1 - upto WHERE slice = 0"
# After a full disk, no probe is written before the store's file system has this much free:
# a one-page write can fit in log space already allocated while a batch still cannot.
PROBE_MIN_FREE_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The verdicts of one ``append``: indexes into the submitted ``events``.

    ``batch_id`` is the journal batch holding the accepted events (``None`` if none was
    accepted). A duplicate is an event whose ``(account, id)`` is stored (or accepted earlier
    in the same group or call) with the same fingerprint; a conflict is one stored with a
    different fingerprint (``id_conflict``): it is not written and the stored one stays.
    ``too_late``: events older than the dedupe horizon ``horizon`` (set when there are
    some): ``time_out_of_range``, with :func:`~meterd.store.retention.too_late_message`;
    not written, and decided before any dedupe lookup (:mod:`meterd.store.retention`).
    """

    batch_id: int | None
    accepted: list[int]
    duplicates: list[int]
    conflicts: list[int]
    too_late: list[int] = field(default_factory=list)
    horizon: int | None = None


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event of a producer batch rejected before the store (protocol.md §2.3) that names
    a valid ``account``: it gets an ``audit`` row with the batch.

    ``meter``, ``time`` and ``properties`` are the event's where they were valid (``None``
    where not), so that an explanation can place it in a window."""

    account: str
    event_id: str | None
    code: str
    message: str
    meter: str | None = None
    time: int | None = None
    properties: tuple[tuple[str, str], ...] | None = None


def conflict_message(account: str, event_id: str) -> str:
    """Why an ``id_conflict`` was rejected (the ack's message and the audit row's)."""
    return (
        f"id {event_id!r} was already counted for account {account!r} with a different meter,"
        " quantity, time or properties; a re-sent event must be identical (new usage needs a"
        " new id)"
    )


BatchRow: TypeAlias = tuple[int, str, int, int, bytes, int, int]
"""An ``event_batches`` row: ``(batch_id, account, received_at, count, payload, min_time,
max_time)``."""
_ONE: Final = b"\x91"  # the msgpack header of a one-item array (a one-event payload)
AuditRow: TypeAlias = tuple[
    str, str, str | None, str | None, str | None, str | None, int | None,
    str | None, str | None, int | None, int | None, int, int,
]  # fmt: skip
"""``(account, kind, event_id, code, message, meter, time, properties, producer, seq,
batch_id, received_at, position)`` of one ``audit`` row."""
OverflowRow: TypeAlias = tuple[str, str, int, int, int]
"""``(account, event_id, batch_id, fingerprint, time_s)``: a ``dedupe_overflow`` row."""


def _properties_json(properties: tuple[tuple[str, str], ...] | None) -> str | None:
    if properties is None:
        return None
    return json.dumps(dict(properties), separators=(",", ":"), ensure_ascii=False)


DoneCallback: TypeAlias = Callable[[AppendResult | BaseException], None]
BatchDoneCallback: TypeAlias = Callable[["list[AppendResult] | BaseException"], None]
"""Called with one :class:`AppendResult` per group of :meth:`Writer.submit_batch`, in order."""
WindowWrite: TypeAlias = tuple[str, int, str, bytes]
"""``(meter, start, dims, state)`` of one window row."""
WindowMerge: TypeAlias = Callable[[str, bytes, bytes], bytes]
"""``merge(meter, stored, delta)``: the state of a window holding both (see
:meth:`Writer.checkpoint`)."""


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
    idle_passes: int = 0  # groups of passes only, written while idle (not in ``commits``)
    failed_passes: int = 0  # passes that failed (their groups committed without them)
    probes: int = 0  # groups of one probe write, while commits fail (not in ``commits``)


@dataclass(slots=True)
class _Append:
    account: str
    events: tuple[Event, ...]
    on_done: DoneCallback
    received_at: int


Encoded: TypeAlias = tuple[list[bytes], list[int], list[int], list[int]]
"""A batch's events ready to store, in order: packed rows, fingerprints, dedupe keys, times
in seconds (floor: the dedupe rows' ``time_s``)."""
StoredRow: TypeAlias = tuple[int, int, "int | None", bool]
"""A dedupe row found for a key: ``(batch_id, fingerprint, time_s, in_table)``; ``in_table``:
in the ``dedupe`` table (not in the tail, nor added by this transaction)."""


@dataclass(slots=True)
class _BatchAppend:
    groups: tuple[tuple[str, tuple[Event, ...]], ...]
    on_done: BatchDoneCallback
    received_at: int
    producer: str | None = None
    seq: int | None = None
    rejected: tuple[RejectedEvent, ...] = ()
    # Computed by submit_batch on the Trio thread (None: by the writer thread).
    encoded: Encoded | InvalidEvents | None = None


@dataclass(slots=True)
class _Checkpoint:
    account: str
    windows: tuple[WindowWrite, ...]
    watermark: int
    on_done: Callable[[Any], None]
    merge: WindowMerge | None = None
    outbox: Sequence[Crossing] = ()  # alert crossings, written in the same transaction


@dataclass(slots=True)
class _Quarantine:
    account: str
    batch_id: int
    event_id: str
    error: str
    at: int
    on_done: Callable[[Any], None]


@dataclass(slots=True)
class _Barrier:
    on_done: Callable[[Any], None]


_Op: TypeAlias = _Append | _BatchAppend | _Checkpoint | _Quarantine | _Barrier


@dataclass(slots=True)
class _Waiter:
    """Turns ``on_done`` into an awaitable (for the async operations)."""

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


@dataclass(frozen=True, slots=True)
class _Sweep:
    """A sweep under way: the horizon it deletes below, the key it goes on after, the rows
    it deleted so far."""

    horizon: int
    after: int = -1
    deleted: int = 0


_Swept: TypeAlias = tuple[_Sweep | None, int | None, int]
"""After a slice: the sweep under way, the horizon of the last sweep done, rows deleted."""


class _PassFailed(Exception):
    """Raised inside a group transaction when its pass failed (``__cause__``: why)."""


class _GroupFailed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Writer:
    """The store writer for the database at ``path``. See the module doc.

    ``commit_interval``: under load, the least time (seconds, Trio clock) between the starts
    of two group transactions (see the module doc). ``max_pending``: the backpressure bound
    of the async operations. ``clock``: wall-clock milliseconds for ``received_at`` /
    ``updated_at`` / ``at`` columns. ``audit_retention_ms``: audit rows older than this
    (by ``received_at``) are pruned (``None``: kept; the daemon passes ``dedupe_window``).
    ``dedupe_window_ms``: how long the dedupe index remembers an event, by its time
    (:mod:`meterd.store.retention`; ``None``: the horizon never moves, a store's stored
    horizon still holds; the daemon passes ``dedupe_window``).
    ``index_cycle``: seconds between two passes of the journal index over the same accounts
    (:mod:`meterd.store.journal_index`; :attr:`journal_tail` holds what they have not
    covered yet). ``meter_dimensions``: each configured meter's number of dimensions, for
    the migration of an older store's window keys (:mod:`meterd.store.schema`, version 6).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        commit_interval: float = 0.002,
        max_pending: int = 10_000,
        clock: Callable[[], int] = _wall_ms,
        audit_retention_ms: int | None = None,
        dedupe_window_ms: int | None = None,
        index_cycle: float = 5.0,
        wal_checkpoint_interval: float | None = 0.1,
        probe_interval: float = 1.0,
        meter_dimensions: MeterDimensions | None = None,
    ) -> None:
        if commit_interval < 0:
            raise ValueError(f"commit_interval must be >= 0 seconds, got {commit_interval}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.max_pending = max_pending
        self.probe_interval = probe_interval
        self.meter_dimensions = dict(meter_dimensions or {})
        self.stats = WriterStats()
        self._clock = clock
        self.audit_retention_ms = audit_retention_ms
        if dedupe_window_ms is not None and dedupe_window_ms < 1:
            raise ValueError(f"dedupe_window_ms must be >= 1, got {dedupe_window_ms}")
        self.dedupe_window_ms = dedupe_window_ms
        # The last committed journal batch, beside the database (checked at open).
        self.commit_mark = CommitMark(self.path)
        self.journal_tail = JournalTail(max(1, round(index_cycle * 1000)))
        # Checkpoints of the log, off the commit path (None: SQLite's, inside a COMMIT).
        self.wal = (
            None
            if wal_checkpoint_interval is None
            else WalCheckpointer(self.path, interval=wal_checkpoint_interval)
        )
        self._next_prune = 0  # writer thread: wall ms of the next audit pruning pass
        # Dedupe retention (writer thread; meterd.store.retention): the horizon as committed
        # (read at open), the sweep under way (None: none), the horizon of the last sweep
        # done, the time of the next slice.
        self.horizon: int | None = None
        self._sweep: _Sweep | None = None
        self._swept: int | None = None
        self._next_sweep = 0
        self._queue: list[_Op] = []
        self._in_flight = 0
        self._wake: trio.Event | None = None
        self._room = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(1)
        self._connection: sqlite3.Connection | None = None
        self._running = False
        self._last_start = -float("inf")
        # Writer-thread caches: the dedupe bucket of each account, the accounts known to
        # have their ``accounts`` row (committed; rows are never deleted). Both are only
        # shortcuts, emptied past ACCOUNT_CACHE accounts so memory stays bounded.
        self._buckets: dict[str, int] = {}
        self._submit_buckets: dict[str, int] = {}  # the same cache, for the Trio thread
        self._known_accounts: set[str] = set()
        # Writer thread -> Trio thread, for the journal tail: the last committed group's new
        # batches, the slices it passed, its time.
        self._idle_pass = False  # the next group is an idle one: pass slices early
        self._probe = False  # the next group is a probe: write one row, nothing else
        self._disk_full = False  # why the last group failed: the disk was full
        self._indexed: tuple[Sequence[NewBatch], dict[int, list[DedupeRow]], Sequence[int], int] = (
            (),
            {},
            (),
            0,
        )
        # Test hook: called on the writer thread just before COMMIT of each group.
        self._before_commit: Callable[[], None] | None = None
        # Why the last group failed, until a group commits again (for health checks).
        self.failing: str | None = None
        # Why the last pass failed, until one is written again (its groups committed).
        self.pass_failing: str | None = None
        self._pass_error: Exception | None = None  # writer thread -> Trio thread
        self._passes_resume_ms = 0  # writer thread: no pass before (after a failed one)
        # Test hook: called after each group of passes written while idle.
        self.on_idle_pass: Callable[[], None] | None = None
        # Test hook: called after each probe (committed or not).
        self.on_probe: Callable[[], None] | None = None
        # Metrics hook: seconds each checkpoint took, from its call until it was committed.
        self.on_checkpoint: Callable[[float], None] | None = None

    # -- the task ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pending(self) -> int:
        """Operations queued or being written."""
        return len(self._queue) + self._in_flight

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
                    task_status.started(self)
                    await self._serve()
            finally:
                with sv.shutdown_shield():
                    try:
                        # One last group: what was queued when the writer was stopped.
                        # What ``on_done`` callbacks queue meanwhile waits for a next run.
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
                self.path, meter_dimensions=self.meter_dimensions, check=self.commit_mark.check
            )
        except BaseException:
            self.commit_mark.close()
            raise
        self.horizon = schema.read_meta(connection, retention.HORIZON)
        self._sweep = self._swept = None  # a restart sweeps again from the start
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
                unasked = self._unasked_group()
                if unasked is not None:
                    with trio.move_on_after(unasked):
                        await self._wake.wait()
                    if not self._wake.is_set():
                        self._wake = None
                        loaded = await self._commit_unasked_group()
                        continue
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
                await trio.lowlevel.checkpoint()  # queued by on_done callbacks, or before run
            loaded = await self._commit_group()

    def _unasked_group(self) -> float | None:
        """After how long an idle writer writes a group nobody asked for (or ``None``)."""
        if self.failing is not None:
            # Commits fail (a full disk): a probe now and then, so that the writer (and
            # /healthz, which load balancers read) recovers by itself once they can succeed,
            # not only at the next producer's batch.
            return self.probe_interval
        if self.pass_failing is not None and self.journal_tail.size:
            return PASS_RETRY_MS / 1000  # failing passes, tried again once paused
        if self.journal_tail.size >= IDLE_PASS_MIN_BATCHES:
            # A backlog of passes (after a burst): written while nothing waits for a commit,
            # a few slices a group, so the next load does not pay for it.
            return IDLE_PASS_AFTER
        if self._sweep is not None or (self.horizon is not None and self.horizon != self._swept):
            # A sweep under way goes on while idle (and one is due after a start).
            return retention.SWEEP_EVERY_MS / 1000
        return None

    async def _commit_unasked_group(self) -> bool:
        """A probe while commits fail, else passes written while idle (see
        :meth:`_unasked_group`); whether operations arrived meanwhile."""
        loaded = False
        if self.failing is not None:
            if not self._disk_full or _free_bytes(self.path) >= PROBE_MIN_FREE_BYTES:
                self._probe = True
                loaded = await self._commit_group()
            if self.on_probe is not None:
                self.on_probe()
        else:
            # Passes early, unless only a sweep under way asked for this group.
            self._idle_pass = self.journal_tail.size >= IDLE_PASS_MIN_BATCHES or (
                self.pass_failing is not None and self.journal_tail.size > 0
            )
            loaded = await self._commit_group()
            if self.on_idle_pass is not None:
                self.on_idle_pass()
        return loaded

    async def _commit_group(self) -> bool:
        """Write the queued operations as one group; whether more arrived meanwhile."""
        group, self._queue = self._queue, []
        probe, self._probe = self._probe, False
        self._in_flight = len(group)
        self._last_start = trio.current_time()
        barriers_only = bool(group) and all(isinstance(op, _Barrier) for op in group)
        try:
            if barriers_only:
                outcomes: list[Any] | _GroupFailed = [None] * len(group)
            else:
                connection = self._connection
                assert connection is not None
                self._pass_error = None
                outcomes = await trio.to_thread.run_sync(
                    partial(self._write_group, connection, group, probe=probe),
                    limiter=self._limiter,
                )
        except BaseException:
            # Cancelled before the thread ran (or the thread died): nothing was committed,
            # so the group goes back to the front of the queue for the next attempt.
            self._queue[:0] = group
            raise
        finally:
            self._in_flight = 0
            self._room.unpark_all()
        if not barriers_only and not isinstance(outcomes, _GroupFailed):
            # Before any outcome is resolved: whoever learns of a batch (an ack, a delivery,
            # a wake-up) can find it through a reader. (Outside the try above: the group is
            # committed, it must never go back to the queue.)
            new, new_dedupe, passed, now = self._indexed
            self.journal_tail.committed(new, new_dedupe, passed, now)
            if self.wal is not None:
                self.wal.committed()
            if group:
                self.stats.commits += 1
            elif not probe:
                self.stats.idle_passes += 1
            if self.failing is not None:
                log.info("store_commit_recovered", path=str(self.path), was=self.failing)
                self.failing = None
            self._note_pass(bool(passed))
        loaded = bool(self._queue)
        self.stats.operations += len(group)
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        if probe:
            self.stats.probes += 1
            if isinstance(outcomes, _GroupFailed):  # still failing: logged once already
                self.failing = f"{type(outcomes.error).__name__}: {outcomes.error}"
                self._disk_full = _is_disk_full(outcomes.error)
            return loaded
        if isinstance(outcomes, _GroupFailed):
            self.stats.failed_commits += 1
            cause = outcomes.error
            self.failing = f"{type(cause).__name__}: {cause}"
            self._disk_full = _is_disk_full(cause)
            log.error(
                "store_commit_failed",
                path=str(self.path),
                operations=len(group),
                error=self.failing,
                disk_full=_is_disk_full(cause),
            )
            for op in group:
                if isinstance(op, _Barrier):
                    self._resolve(op, None)  # settled: nothing before it is still in flight
                else:
                    failure = CommitFailed(
                        f"store {self.path}: the transaction of {len(group)} operations failed"
                        f" and was rolled back, nothing of it was written: {cause}"
                    )
                    failure.__cause__ = cause
                    self._resolve(op, failure)
            return loaded
        stats = self.stats
        for op, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, AppendResult):
                outcome_list: list[AppendResult] = [outcome]
            elif isinstance(outcome, list):
                outcome_list = outcome
                stats.batches += 1
            else:
                outcome_list = []
            stats.events_accepted += sum(map(len, map(_accepted_of, outcome_list)))
            stats.events_duplicate += sum(map(len, map(_duplicates_of, outcome_list)))
            stats.events_conflict += sum(map(len, map(_conflicts_of, outcome_list)))
            stats.events_too_late += sum(map(len, map(_too_late_of, outcome_list)))
            self._resolve(op, outcome)
        return loaded

    @staticmethod
    def _resolve(op: _Op, outcome: Any) -> None:
        try:
            op.on_done(outcome)
        except Exception:
            log.exception("store_on_done_raised", operation=type(op).__name__.lstrip("_"))

    # -- operations (Trio thread) -----------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        if self._wake is not None:
            self._wake.set()

    async def _wait_for_room(self) -> None:
        while self.pending >= self.max_pending:
            await self._room.park()

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
        self._enqueue(_Append(account, batch, on_done, self._clock()))

    def submit_batch(
        self,
        groups: Sequence[tuple[str, Sequence[Event]]],
        on_done: BatchDoneCallback,
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
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
        """
        # Runs on the Trio thread per producer batch: whole-batch checks with no per-group
        # set or list work; the precise error is found again only when one fails.
        accounts = list(map(itemgetter(0), groups))
        batches = list(map(tuple, map(itemgetter(1), groups)))
        if len(set(accounts)) != len(accounts):
            _check_groups(groups)
        for account, events in zip(accounts, batches, strict=True):
            for event in events:
                if event.account != account:
                    _check_groups(groups)
        checked = tuple(zip(accounts, batches, strict=True))
        # Encoded here, on the Trio thread, not in the group transaction: the writer thread
        # is the pipeline's serial stage (its Python, SQLite and fsync in a row), and the
        # encoding needs nothing from the database.
        if len(self._submit_buckets) > ACCOUNT_CACHE:
            self._submit_buckets.clear()
        encoded = _encode_batch(checked, self._submit_buckets)
        self._enqueue(
            _BatchAppend(checked, on_done, self._clock(), producer, seq, tuple(rejected), encoded)
        )

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
        outbox: Sequence[Crossing] = (),
    ) -> None:
        """Upsert ``windows`` of ``account`` and set its watermark, in one transaction
        (with ``outbox``, the alert crossings those windows decided: docs/alerts.md).

        The watermark is the last journal batch the windows include; it is set as given
        (not a maximum), because it must always describe the windows written with it.

        With ``merge``, ``windows`` are *deltas*: a window already stored becomes
        ``merge(meter, stored, delta)``, read and written in the same transaction (on the
        writer's thread: no read on another connection first, and nothing can commit in
        between); a new one is stored as given. If ``merge`` raises, this checkpoint fails
        alone with that exception and nothing of it is written; the rest of its group
        commits.
        """
        rows = tuple(windows)
        for row in rows:
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
        started = time.perf_counter()
        await self._wait_for_room()
        waiter = _Waiter()
        self._enqueue(_Checkpoint(account, rows, watermark, waiter, merge, outbox))
        await waiter.wait()
        if self.on_checkpoint is not None:
            self.on_checkpoint(time.perf_counter() - started)

    async def quarantine(self, account: str, batch_id: int, event_id: str, error: str) -> None:
        """Record that event ``event_id`` of journal batch ``batch_id`` is poison.

        Quarantining the same event again replaces its error and time.
        """
        await self._wait_for_room()
        waiter = _Waiter()
        self._enqueue(_Quarantine(account, batch_id, event_id, error, self._clock(), waiter))
        await waiter.wait()

    async def barrier(self) -> None:
        """Return once every operation queued before this call is committed (or has failed)."""
        if not self._queue and not self._in_flight:
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter()
        self._enqueue(_Barrier(waiter))
        await waiter.wait()

    # -- the group transaction (writer thread) ----------------------------------------

    def _note_pass(self, written: bool) -> None:
        """After a committed group: log a pass that failed (once until one is written again)
        and the pass written after such failures."""
        error = self._pass_error
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
        elif written and self.pass_failing is not None:
            self.pass_failing = None
            log.info("journal_index_pass_recovered", path=str(self.path))

    def _write_group(
        self,
        conn: sqlite3.Connection,
        group: list[_Op],
        *,
        passes: bool = True,
        probe: bool = False,
    ) -> list[Any] | _GroupFailed:
        """The group's transaction (writer thread). If its pass fails, it is rolled back and
        written again without one: a failing pass (a bug, a corrupt index page) costs the
        index rows' memory, held in the tail a while longer, never the appends; passes are
        tried again after :data:`PASS_RETRY_MS`. A ``probe`` group writes only
        :data:`_PROBE_SQL`, twice (see ``_serve``)."""
        outcomes: list[Any] = [None] * len(group)
        self._indexed = ((), {}, (), 0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(self._buckets) > ACCOUNT_CACHE:
                self._buckets.clear()
            if len(self._known_accounts) > ACCOUNT_CACHE:
                self._known_accounts.clear()
            txn = _Transaction(
                conn,
                self._clock(),
                self.journal_tail,
                self._buckets,
                self._known_accounts,
                self.horizon,
                self.dedupe_window_ms,
            )
            for index, op in enumerate(group):
                if isinstance(op, _Append):
                    outcomes[index] = txn.append(op)
                elif isinstance(op, _BatchAppend):
                    outcomes[index] = txn.append_batch(op)
                elif isinstance(op, _Checkpoint):
                    outcomes[index] = txn.checkpoint(op)
                elif isinstance(op, _Quarantine):
                    txn.quarantine(op)
            passed: Sequence[int] = ()
            if passes and not probe and txn.now >= self._passes_resume_ms:
                passed = self.journal_tail.due(txn.now, early=self._idle_pass)
            self._idle_pass = False
            try:
                pass_slices(
                    conn,
                    self.journal_tail,
                    passed,
                    txn.new_batches,
                    txn.new_dedupe_by_slice,
                    txn.next_batch_id - 1,
                )
            except Exception as error:
                raise _PassFailed() from error
            if self.audit_retention_ms is not None and not probe and txn.now >= self._next_prune:
                pruned = _prune_audit(conn, txn.now - self.audit_retention_ms)
                more = pruned == AUDIT_PRUNE_BATCH
                self._next_prune = txn.now + (0 if more else AUDIT_PRUNE_EVERY_MS)
            if txn.horizon != self.horizon:
                assert txn.horizon is not None
                schema.write_meta(conn, retention.HORIZON, txn.horizon)
            swept: _Swept | None = None
            # Paced under load; an idle group (no operation) is there for it.
            if not probe and txn.horizon is not None and (not group or txn.now >= self._next_sweep):
                swept = self._sweep_slice(conn, txn.horizon, txn.now)
            if probe:
                conn.execute(_PROBE_SQL)
                conn.execute(_PROBE_SQL)
            if self._before_commit is not None:
                self._before_commit()
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_error:
                    exc.add_note(f"and the ROLLBACK failed: {rollback_error}")
            if isinstance(exc, _PassFailed) and isinstance(exc.__cause__, Exception):
                self._pass_error = exc.__cause__
                self._passes_resume_ms = txn.now + PASS_RETRY_MS
                return self._write_group(conn, group, passes=False, probe=probe)
            return _GroupFailed(exc)
        # Committed: nothing below may turn the group into a failed one.
        if txn.new_batches:
            self.commit_mark.record(txn.next_batch_id - 1)
        self._known_accounts.update(txn.new_accounts)
        self._indexed = (txn.new_batches, txn.new_dedupe_by_slice, passed, txn.now)
        self.horizon = txn.horizon
        if swept is not None:
            sweep, done, deleted = swept
            self.stats.dedupe_rows_swept += deleted
            if sweep is None and self._sweep is not None:
                log.info(
                    "dedupe_swept",
                    path=str(self.path),
                    horizon=done,
                    deleted=self._sweep.deleted + deleted,
                )
            self._sweep, self._swept = sweep, done
        return outcomes

    def _sweep_slice(self, conn: sqlite3.Connection, horizon: int, now: int) -> _Swept | None:
        """One slice of the sweep of forgotten dedupe rows, in the group's transaction; what
        the sweep state becomes once the group commits (``None``: no change). A sweep starts
        once the horizon is past the one the last sweep deleted below, and keeps its
        horizon to its end."""
        sweep = self._sweep
        if sweep is None:
            if horizon == self._swept:
                return None
            sweep = _Sweep(horizon)
        self._next_sweep = now + retention.SWEEP_EVERY_MS
        end, deleted = retention.sweep(conn, sweep.after, sweep.horizon // 1000)
        if end is None:
            return None, sweep.horizon, deleted
        return _Sweep(sweep.horizon, end, sweep.deleted + deleted), self._swept, deleted


def _prune_audit(conn: sqlite3.Connection, before: int) -> int:
    """Delete the oldest audit rows received before ``before``: the run of such rows at the
    start of the table (row id order, so a clock that went back delays, never loses, a
    row), :data:`AUDIT_PRUNE_BATCH` at most. How many were deleted."""
    oldest = conn.execute(
        "SELECT audit_id, received_at FROM audit ORDER BY audit_id LIMIT ?", (AUDIT_PRUNE_BATCH,)
    ).fetchall()
    last = None
    for audit_id, received_at in oldest:
        if received_at >= before:
            break
        last = audit_id
    if last is None:
        return 0
    return conn.execute("DELETE FROM audit WHERE audit_id <= ?", (last,)).rowcount


def _free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``path``."""
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _is_disk_full(error: Exception) -> bool:
    """Whether ``error`` says the disk (or the database's size limit) is full."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno == errno.ENOSPC


_accepted_of: Final = attrgetter("accepted")
_duplicates_of: Final = attrgetter("duplicates")
_conflicts_of: Final = attrgetter("conflicts")
_too_late_of: Final = attrgetter("too_late")


def _check_groups(groups: Iterable[tuple[str, Sequence[Event]]]) -> None:
    """``ValueError`` for the first group of ``groups`` whose account was seen already or
    that holds an event of another account (:meth:`Writer.submit_batch`'s check, spelled
    out for its message)."""
    seen: set[str] = set()
    for account, events in groups:
        if account in seen:
            raise ValueError(f"account {account!r} has two groups in one batch")
        seen.add(account)
        for index, event in enumerate(events):
            if event.account != account:
                raise ValueError(
                    f"event {index} (id {event.id!r}) is of account {event.account!r},"
                    f" submitted for account {account!r}"
                )
    raise AssertionError("the fast check of submit_batch found a problem this one did not")


def _ignore(outcome: object) -> None:
    """An ``on_done`` for operations built inside the transaction (never called)."""


def _encode_batch(
    groups: Sequence[tuple[str, Sequence[Event]]], buckets: dict[str, int]
) -> Encoded | InvalidEvents:
    """Every event of ``groups`` ready to store (``buckets`` caches ``account_bucket``), or
    the error naming the first that cannot be stored."""
    for account in [account for account, _ in groups if account not in buckets]:
        buckets[account] = schema.account_bucket(account)
    events = list(chain.from_iterable(map(itemgetter(1), groups)))
    try:
        packed, fingerprints = codec.encode_rows(events)  # checks each time is an int
        keys = schema.dedupe_row_keys(buckets, events)
        seconds = [event.time // 1000 for event in events]
    except Exception:  # the caller's data: this operation fails, not the group
        for account, group in groups:
            failure = _invalid(account, group)
            if failure.__cause__ is not None:
                return failure
        return InvalidEvents("a batch has an event that cannot be stored")
    return packed, fingerprints, keys, seconds


def _invalid(account: str, events: Sequence[Event]) -> InvalidEvents:
    """The error for the first event of ``events`` that cannot be stored."""
    bucket = schema.account_bucket(account)
    for index, event in enumerate(events):
        try:
            codec.pack_rows([codec.event_row(event)])
            schema.dedupe_row_key(bucket, event)
            event.fingerprint()
        except Exception as exc:
            failure = InvalidEvents(
                f"append for account {account!r}: event {index} (id {event.id!r})"
                f" cannot be stored: {exc}"
            )
            failure.__cause__ = exc
            return failure
    return InvalidEvents(f"append for account {account!r}: an event cannot be stored")


class _Transaction:
    """The state of one group transaction: the next batch id, decoded batches."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        now: int,
        tail: JournalTail,
        buckets: dict[str, int] | None = None,
        known_accounts: set[str] | frozenset[str] = frozenset(),
        horizon: int | None = None,
        dedupe_window_ms: int | None = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.tail = tail
        # Dedupe retention (meterd.store.retention): the horizon, raised by each operation
        # before it is decided; floor_s is it in seconds (None: nothing forgotten).
        self.horizon = horizon
        self.floor_s = None if horizon is None else horizon // 1000
        self.dedupe_window_ms = dedupe_window_ms
        self.buckets = {} if buckets is None else buckets
        self.known_accounts = known_accounts
        self.new_accounts: list[str] = []
        # For the passes (journal_index.py): the batches this transaction appended, and the
        # dedupe rows of their events by slice and by key (they are not in ``dedupe`` yet).
        self.new_batches: list[NewBatch] = []
        self.new_dedupe_by_slice: dict[int, list[DedupeRow]] = {}
        self.new_dedupe: dict[int, tuple[int, int, int]] = {}
        (self.next_batch_id,) = conn.execute(
            "SELECT max("
            " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event_batches'), 0),"
            " coalesce((SELECT max(batch_id) FROM event_batches), 0)) + 1"
        ).fetchone()
        self._batch_ids: dict[int, tuple[str, frozenset[str]]] = {}

    def append_batch(self, op: _BatchAppend) -> list[AppendResult] | InvalidEvents:
        """One producer batch: one key lookup for all its events, one ``executemany`` per
        table. Verdicts as if each group were an :meth:`append`, in order.

        Keys, packed rows and fingerprints are computed for the whole batch at once; when
        no key is stored yet and none repeats (the common case: every event new, no two
        sharing a key), every event is accepted without any per-event decision
        (:meth:`_all_new`); otherwise each group is classified in order.

        The dedupe horizon is raised for ``op`` first; an event older than it is
        ``too_late``, whatever the index holds (:mod:`meterd.store.retention`)."""
        encoded = op.encoded
        if encoded is None:
            encoded = _encode_batch(op.groups, self.buckets)
        if isinstance(encoded, InvalidEvents):
            return encoded
        packed, fingerprints, keys, seconds = encoded
        if self.dedupe_window_ms is not None:
            self._raise_horizon(op.received_at)
        floor = self.floor_s
        stored = self._lookup_keys(keys) if keys else {}
        audit_rows: list[AuditRow] = []
        overflow_rows: list[OverflowRow] = []
        if (
            not stored
            and len(set(keys)) == len(keys)
            and (floor is None or not seconds or min(seconds) >= floor)
        ):
            results, batch_rows, dedupe_rows = self._all_new(
                op, packed, keys, fingerprints, seconds
            )
        else:
            results, batch_rows, dedupe_rows = [], [], []
            self._classify_groups(
                op, packed, keys, fingerprints, seconds, stored, results, batch_rows,
                dedupe_rows, overflow_rows, audit_rows,
            )  # fmt: skip
        conn = self.conn
        if batch_rows:
            conn.executemany(
                "INSERT INTO event_batches"
                " (batch_id, account, received_at, count, payload, min_time, max_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch_rows,
            )
            self._defer_dedupe(batch_rows, dedupe_rows)
            if overflow_rows:
                conn.executemany(
                    "INSERT INTO dedupe_overflow"
                    " (account, event_id, batch_id, fingerprint, time_s) VALUES (?, ?, ?, ?, ?)",
                    overflow_rows,
                )
            self._note_accounts([row[1] for row in batch_rows])
            self.new_batches.extend([(row[1], row[0], row[5], row[6]) for row in batch_rows])
        if op.rejected:
            self._audit_rejected(audit_rows, op)
        if audit_rows:
            conn.executemany(
                "INSERT INTO audit (account, kind, event_id, code, message, meter, time,"
                " properties, producer, seq, batch_id, received_at, position)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                audit_rows,
            )
        return results

    def _defer_dedupe(self, batch_rows: list[BatchRow], dedupe_rows: list[DedupeRow]) -> None:
        """Hold ``dedupe_rows`` for their slices' next pass (``batch_rows``: their batches)."""
        slice_of = self.tail.slice_of
        slices = {row[0]: slice_of(row[1]) for row in batch_rows}
        by_slice = self.new_dedupe_by_slice
        for row in dedupe_rows:
            k = slices[row[1]]
            rows = by_slice.get(k)
            if rows is None:
                by_slice[k] = [row]
            else:
                rows.append(row)
        self.new_dedupe.update([(row[0], row[1:]) for row in dedupe_rows])

    def _raise_horizon(self, received_at: int) -> None:
        """The horizon for an operation received at ``received_at`` (never lowered)."""
        assert self.dedupe_window_ms is not None
        wanted = retention.horizon_at(received_at, self.dedupe_window_ms)
        if self.horizon is None or wanted > self.horizon:
            self.horizon = wanted
            self.floor_s = wanted // 1000

    def _all_new(
        self,
        op: _BatchAppend,
        packed: list[bytes],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
    ) -> tuple[list[AppendResult], list[BatchRow], list[DedupeRow]]:
        """Results and rows when every event of ``op`` is accepted: each group becomes a
        journal batch of all its events (``packed``, ``keys``, ``fingerprints``,
        ``seconds``: the batch's events in order)."""
        groups = op.groups
        at = op.received_at
        counts = list(map(len, map(itemgetter(1), groups)))
        first = self.next_batch_id
        self.next_batch_id = first + len(groups)
        batch_ids = range(first, first + len(groups))
        batch_rows: list[BatchRow] = []
        add_batch = batch_rows.append
        start = 0
        for batch_id, (account, events), count in zip(batch_ids, groups, counts, strict=True):
            if count == 1:  # most groups, with events spread over many accounts
                time = events[0].time
                add_batch((batch_id, account, at, 1, _ONE + packed[start], time, time))
            else:
                times = [event.time for event in events]
                payload = codec.pack_batch(packed[start : start + count])
                add_batch((batch_id, account, at, count, payload, min(times), max(times)))
            start += count
        results = [
            AppendResult(batch_id, [0] if count == 1 else list(range(count)), [], [])
            for batch_id, count in zip(batch_ids, counts, strict=True)
        ]
        event_batch_ids = chain.from_iterable(map(repeat, batch_ids, counts))
        dedupe_rows = list(zip(keys, event_batch_ids, fingerprints, seconds, strict=True))
        return results, batch_rows, dedupe_rows

    def _classify_groups(
        self,
        op: _BatchAppend,
        packed: list[bytes],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
        stored: dict[int, StoredRow],
        results: list[AppendResult],
        batch_rows: list[BatchRow],
        dedupe_rows: list[DedupeRow],
        overflow_rows: list[OverflowRow],
        audit_rows: list[AuditRow],
    ) -> None:
        """Each group's verdicts in order, when some key of ``op`` is stored or repeats, or
        some event is older than the horizon: appends to the result and row lists."""
        taken: set[int] = set()  # keys claimed by earlier groups of this batch
        floor = self.floor_s
        start = 0
        for account, events in op.groups:
            count = len(events)
            stop = start + count
            group_keys = keys[start:stop]
            group_fingerprints = fingerprints[start:stop]
            group_seconds = seconds[start:stop]
            group_packed = packed[start:stop]
            start = stop
            batch_id = self.next_batch_id
            clash = bool(stored) and not stored.keys().isdisjoint(group_keys)
            clash = clash or (bool(taken) and not taken.isdisjoint(group_keys))
            clash = clash or (floor is not None and min(group_seconds) < floor)
            if (
                not clash
                and len(set(group_keys)) == count
                and len({event.id for event in events}) == count
            ):  # all new
                accepted = list(range(count))
                duplicates: list[int] = []
                conflicts: list[int] = []
                too_late: list[int] = []
                horizon = None
                dedupe_rows.extend(
                    zip(group_keys, repeat(batch_id), group_fingerprints, group_seconds)
                )
                taken.update(group_keys)
                kept = group_packed
            else:
                verdicts = self._classify(
                    account, events, group_keys, group_fingerprints, group_seconds, stored,
                    batch_id, taken,
                )  # fmt: skip
                accepted, duplicates, conflicts, too_late = verdicts[:4]
                group_dedupe, group_overflow, originals = verdicts[4:]
                if duplicates or conflicts or too_late:
                    self._audit_verdicts(
                        audit_rows, op, account, events, duplicates, conflicts, too_late,
                        originals, self.horizon,
                    )  # fmt: skip
                dedupe_rows.extend(group_dedupe)
                overflow_rows.extend(group_overflow)
                taken.update(row[0] for row in group_dedupe)
                horizon = self.horizon if too_late else None
                if not accepted:
                    results.append(
                        AppendResult(None, accepted, duplicates, conflicts, too_late, horizon)
                    )
                    continue
                kept = [group_packed[index] for index in accepted]
            self.next_batch_id += 1
            times = [events[index].time for index in accepted]
            batch_rows.append(
                (
                    batch_id,
                    account,
                    op.received_at,
                    len(accepted),
                    codec.pack_batch(kept),
                    min(times),
                    max(times),
                )
            )
            results.append(
                AppendResult(batch_id, accepted, duplicates, conflicts, too_late, horizon)
            )

    @staticmethod
    def _audit_verdicts(
        audit_rows: list[AuditRow],
        op: _BatchAppend,
        account: str,
        events: Sequence[Event],
        duplicates: list[int],
        conflicts: list[int],
        too_late: list[int],
        originals: dict[str, int],
        horizon: int | None,
    ) -> None:
        """The audit rows of a group's duplicates, conflicts and events older than the
        horizon (``originals``: the batch of the counted copy of each id)."""
        at = op.received_at
        code: dict[int, str] = dict.fromkeys(conflicts, "id_conflict")
        code.update(dict.fromkeys(too_late, "time_out_of_range"))
        for index in sorted(duplicates + conflicts + too_late):
            event = events[index]
            rejection = code.get(index)
            if rejection == "time_out_of_range":
                assert horizon is not None
                message: str | None = too_late_message(event.time, horizon)
            elif rejection == "id_conflict":
                message = conflict_message(account, event.id)
            else:
                message = None
            audit_rows.append(
                (
                    account,
                    "duplicate" if rejection is None else "rejected",
                    event.id,
                    rejection,
                    message,
                    event.meter,
                    event.time,
                    _properties_json(event.properties),
                    op.producer if op.producer is not None else event.producer,
                    op.seq,
                    None if rejection == "time_out_of_range" else originals.get(event.id),
                    at,
                    event.time,
                )
            )

    @staticmethod
    def _audit_rejected(audit_rows: list[AuditRow], op: _BatchAppend) -> None:
        at = op.received_at
        for r in op.rejected:
            audit_rows.append(
                (
                    r.account,
                    "rejected",
                    r.event_id,
                    r.code,
                    r.message,
                    r.meter,
                    r.time,
                    _properties_json(r.properties),
                    op.producer,
                    op.seq,
                    None,
                    at,
                    at if r.time is None else r.time,
                )
            )

    def _note_accounts(self, accounts: Iterable[str]) -> None:
        """Make sure ``accounts`` have their row (skipping those this writer knows have)."""
        known = self.known_accounts
        new = [(account, self.now) for account in accounts if account not in known]
        if new:
            self.conn.executemany(
                "INSERT INTO accounts (account, watermark, updated_at) VALUES (?, 0, ?)"
                " ON CONFLICT (account) DO NOTHING",
                new,
            )
            self.new_accounts.extend(account for account, _ in new)

    def append(self, op: _Append) -> AppendResult | InvalidEvents:
        """One account's events: a batch of one group."""
        result = self.append_batch(
            _BatchAppend(((op.account, op.events),), _ignore, op.received_at)
        )
        return result if isinstance(result, InvalidEvents) else result[0]

    def _classify(
        self,
        account: str,
        events: Sequence[Event],
        keys: list[int],
        fingerprints: list[int],
        seconds: list[int],
        stored: dict[int, StoredRow],
        batch_id: int,
        taken: set[int] | frozenset[int] = frozenset(),
    ) -> tuple[
        list[int],
        list[int],
        list[int],
        list[int],
        list[DedupeRow],
        list[OverflowRow],
        dict[str, int],
    ]:
        """Verdicts (accepted, duplicates, conflicts, too late) when some key is stored
        already or repeats within the call, or some event is older than the horizon, the
        rows to write, and the journal batch of the counted copy of each id seen (for the
        audit rows).

        ``taken``: keys claimed (not yet written) by other accounts' groups of the same
        batch; an event with such a key is new but goes to the overflow table.
        """
        floor = self.floor_s
        late = (
            frozenset()
            if floor is None
            else frozenset(index for index, s in enumerate(seconds) if s < floor)
        )

        def remembered(time_s: int | None) -> bool:
            return floor is None or time_s is None or time_s >= floor

        # The fingerprint each id already has: stored and remembered (checked to really be
        # this (account, id): in the overflow table, or in the batch the key points at), or
        # accepted earlier in this call. Too late events are decided before any lookup.
        known: dict[str, int] = {}
        originals: dict[str, int] = {}
        for index, event in enumerate(events):
            row = stored.get(keys[index])
            if row is None or event.id in known or index in late:
                continue
            overflow = self._overflow_row(account, event.id)
            if overflow is not None and remembered(overflow[2]):
                known[event.id], originals[event.id] = overflow[0], overflow[1]
            elif (
                remembered(row[2])
                and self._batch_holds(row[0], account, event.id)
                # ... and not as a copy the key's row is not (an overflow row of that batch)
                and (overflow is None or not self._overflowed(account, event.id, row[0]))
            ):
                known[event.id], originals[event.id] = row[1], row[0]

        accepted: list[int] = []
        duplicates: list[int] = []
        conflicts: list[int] = []
        too_late: list[int] = []
        dedupe_rows: list[DedupeRow] = []
        overflow_rows: list[OverflowRow] = []
        claimed: set[int] = set()
        for index, event in enumerate(events):
            if index in late:
                too_late.append(index)
                continue
            fingerprint = fingerprints[index]
            previous = known.get(event.id)
            if previous is None:
                known[event.id] = fingerprint
                originals[event.id] = batch_id
                accepted.append(index)
                key = keys[index]
                row = stored.get(key)
                # The key is another (account, id)'s, or a forgotten row's that only a row
                # of the dedupe table may replace (the tail holds one row per key).
                if (
                    (row is not None and (not row[3] or remembered(row[2])))
                    or key in claimed
                    or key in taken
                ):
                    overflow_rows.append((account, event.id, batch_id, fingerprint, seconds[index]))
                else:
                    claimed.add(key)
                    dedupe_rows.append((key, batch_id, fingerprint, seconds[index]))
            elif previous == fingerprint:
                duplicates.append(index)
            else:
                conflicts.append(index)
        return (
            accepted, duplicates, conflicts, too_late, dedupe_rows, overflow_rows, originals
        )  # fmt: skip

    def _lookup_keys(self, keys: list[int]) -> dict[int, StoredRow]:
        """The row of each of ``keys`` stored, remembered or not: in this transaction, in
        the tail no pass has written yet, or in ``dedupe``."""
        found: dict[int, StoredRow] = {}
        local, held = self.new_dedupe, self.tail.stored
        pending: list[int] = []
        for key in set(keys):
            row = local.get(key) or held(key)
            if row is None:
                pending.append(key)
            else:
                found[key] = (row[0], row[1], row[2], False)
        for key, (batch_id, fingerprint, time_s) in schema.stored_dedupe_rows(
            self.conn, pending
        ).items():
            found[key] = (batch_id, fingerprint, time_s, True)
        return found

    def _overflow_row(self, account: str, event_id: str) -> tuple[int, int, int | None] | None:
        """``(fingerprint, batch_id, time_s)`` of the newest copy of ``(account, event_id)``
        in ``dedupe_overflow`` (an id counted again once forgotten has one row per copy)."""
        row = self.conn.execute(
            "SELECT fingerprint, batch_id, time_s FROM dedupe_overflow"
            " WHERE account = ? AND event_id = ? ORDER BY batch_id DESC LIMIT 1",
            (account, event_id),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), row[2])

    def _overflowed(self, account: str, event_id: str, batch_id: int) -> bool:
        """Whether ``(account, event_id)`` has a ``dedupe_overflow`` row of ``batch_id``."""
        return (
            self.conn.execute(
                "SELECT 1 FROM dedupe_overflow WHERE account = ? AND event_id = ? AND batch_id = ?",
                (account, event_id, batch_id),
            ).fetchone()
            is not None
        )

    def _batch_holds(self, batch_id: int, account: str, event_id: str) -> bool:
        """Whether journal batch ``batch_id`` holds ``(account, event_id)``."""
        entry = self._batch_ids.get(batch_id)
        if entry is None:
            row = self.conn.execute(
                "SELECT account, payload FROM event_batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                raise StoreCorruptError(
                    f"a dedupe row points at journal batch {batch_id}, which does not exist"
                )
            ids = codec.batch_event_ids(row[1], where=f"batch {batch_id}")
            entry = (row[0], frozenset(ids))
            self._batch_ids[batch_id] = entry
        return entry[0] == account and event_id in entry[1]

    def checkpoint(self, op: _Checkpoint) -> Exception | None:
        """The windows and the watermark of ``op``, or the exception its ``merge`` raised
        (then nothing of it was written)."""
        account = op.account
        windows: Sequence[WindowWrite] = op.windows
        if op.merge is not None:
            try:
                windows = self._merged(account, op.windows, op.merge)
            except Exception as error:  # the caller's states: this checkpoint fails alone
                return error
        self.conn.executemany(
            "INSERT INTO windows (account, meter, start, dims, state) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (account, meter, start, dims) DO UPDATE SET state = excluded.state",
            [(account, meter, start, dims, state) for meter, start, dims, state in windows],
        )
        self.conn.execute(
            "INSERT INTO accounts (account, watermark, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE"
            " SET watermark = excluded.watermark, updated_at = excluded.updated_at",
            (account, op.watermark, self.now),
        )
        if op.outbox:
            write_crossings(self.conn, op.outbox)
        return None

    def _merged(
        self, account: str, deltas: Sequence[WindowWrite], merge: WindowMerge
    ) -> list[WindowWrite]:
        """``deltas`` merged into the stored windows they name (one range read per meter)."""
        bounds: dict[str, tuple[int, int]] = {}
        for meter, start, _, _ in deltas:
            low, high = bounds.get(meter, (start, start))
            bounds[meter] = (min(low, start), max(high, start))
        stored: dict[tuple[str, int, str], bytes] = {}
        for meter, (low, high) in bounds.items():
            for start, dims, state in self.conn.execute(
                "SELECT start, dims, state FROM windows"
                " WHERE account = ? AND meter = ? AND start >= ? AND start <= ?",
                (account, meter, low, high),
            ):
                stored[(meter, start, dims)] = state
        if not stored:
            return list(deltas)
        merged: list[WindowWrite] = []
        for meter, start, dims, delta in deltas:
            old = stored.get((meter, start, dims))
            merged.append((meter, start, dims, delta if old is None else merge(meter, old, delta)))
        return merged

    def quarantine(self, op: _Quarantine) -> None:
        self.conn.execute(
            "INSERT INTO quarantine (account, batch_id, event_id, error, at)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (account, batch_id, event_id) DO UPDATE"
            " SET error = excluded.error, at = excluded.at",
            (op.account, op.batch_id, op.event_id, op.error, op.at),
        )
