"""One group transaction: what a group of operations writes, in one SQLite transaction.

Rules:

* :meth:`GroupTransactions.write` runs on the writer's thread only (the writer's limiter of
  1), with the operations of one group in queue order, and returns a value: a
  :class:`Committed` (one outcome per operation, and what the Trio side must learn: the new
  journal batches and dedupe rows, the slices passed) or a :class:`GroupFailed` (the whole
  group rolled back: nothing of it was written). It never resolves an operation itself.
  A commit round (:mod:`meterd.store._rounds`) calls its three steps instead:
  :meth:`~GroupTransactions.prepare` (every statement, the transaction left open) on the
  Trio thread, :meth:`~GroupTransactions.commit` on a commit thread, then
  :meth:`~GroupTransactions.committed`; one at a time for a file, never two at once.
* One ``BEGIN IMMEDIATE`` ... ``COMMIT`` per group: the operations' rows
  (:mod:`meterd.store._appends` for appends; :data:`TABLES` for the rows of checkpoints and
  quarantines; :mod:`meterd.store._quarantine` for releases and discards), then the work
  that rides in every group when it is due: the journal-index
  passes whose turn came (:mod:`meterd.store.journal_index`), a pruning pass of the audit
  trail (every :data:`AUDIT_PRUNE_EVERY_MS`), the new dedupe horizon, a slice of a dedupe
  sweep (:mod:`meterd.store.retention`, every ``SWEEP_EVERY_MS`` under load).
* The housekeeping operations shape the group: an :class:`~meterd.store._ops.IndexPass`
  passes slices ahead of their turn; a group of housekeeping only always takes a sweep
  slice; a :class:`~meterd.store._ops.Probe` writes :data:`PROBE_SQL` twice and none of the
  riding work.
* A failing pass never fails the appends: the group is rolled back and written again
  without it, and no pass is tried for :data:`PASS_RETRY_MS` (the index is derived, the
  journal is the truth).
* State carried from one group to the next (caches, the horizon, the sweep under way, the
  next pruning time) changes only once a group has committed.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import structlog

from meterd.alerts._schema import OUTBOX_INSERT, RULE_DELETE, RULE_INSERT

from . import _quarantine, retention, schema
from ._appends import Appends
from ._ops import (
    AlertRuleWrite,
    Append,
    BatchAppend,
    Checkpoint,
    Discard,
    IndexPass,
    LogPosition,
    Operation,
    Probe,
    Quarantine,
    Release,
    SweepSlice,
    WindowMerge,
    WindowWrite,
)
from ._rows import insert_rows
from .commitmark import CommitMark
from .errors import Fenced, PositionMismatch
from .journal_index import DedupeRow, JournalTail, NewBatch, pass_slices

__all__ = [
    "ACCOUNT_CACHE",
    "AUDIT_PRUNE_BATCH",
    "AUDIT_PRUNE_EVERY_MS",
    "PASS_RETRY_MS",
    "PROBE_SQL",
    "TABLES",
    "Committed",
    "GroupFailed",
    "GroupTransactions",
    "Prepared",
    "is_disk_full",
]

log = structlog.get_logger("meterd.store")

ACCOUNT_CACHE: Final = 200_000  # accounts the writer's per-account shortcuts remember
AUDIT_PRUNE_EVERY_MS: Final = 60_000  # between two pruning passes of the audit trail
AUDIT_PRUNE_BATCH: Final = 5_000  # audit rows a pass reads (and deletes) at most
PASS_RETRY_MS: Final = 1_000  # after a failed pass, the groups of this long pass nothing
# A probe's write: one row changed and changed back (SQLite writes nothing for an UPDATE to
# the same bytes): a page and a log frame, fsynced like any commit, and no change to the data.
PROBE_SQL: Final = "UPDATE journal_slices SET upto = -1 - upto WHERE slice = 0"

TABLES: Final[dict[str, str]] = {
    "windows": (
        "INSERT INTO windows (account, meter, start, dims, state) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (account, meter, start, dims) DO UPDATE SET state = excluded.state"
    ),
    "watermarks": (
        "INSERT INTO accounts (account, watermark, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (account) DO UPDATE"
        " SET watermark = excluded.watermark, updated_at = excluded.updated_at"
    ),
    "alert_outbox": OUTBOX_INSERT,  # crossings decided by the checkpoint's windows
    "quarantine": (
        "INSERT INTO quarantine (account, batch_id, event_id, error, at)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (account, batch_id, event_id) DO UPDATE"
        " SET error = excluded.error, at = excluded.at"
    ),
}
"""The statement that writes one row of each table a checkpoint or a quarantine writes
(rows are written with ``executemany``, a list per table). Another table written in a
checkpoint's transaction (``Checkpoint.rows``) declares its statement here."""


@dataclass(frozen=True, slots=True)
class _Sweep:
    """A sweep under way: the horizon it deletes below, the key it goes on after, the rows
    it deleted so far."""

    horizon: int
    after: int = -1
    deleted: int = 0


_Swept: TypeAlias = tuple[_Sweep | None, int | None, int]
"""After a slice: the sweep under way, the horizon of the last sweep done, rows deleted."""


@dataclass(frozen=True, slots=True)
class Committed:
    """A group that committed: each operation's outcome (an ``AppendResult``, a list of
    them, an exception of that operation alone, or ``None``), the new journal batches and
    dedupe rows (by slice), the slices passed, the transaction's time, and why its pass
    failed (``None``: it did not; the group was then written without one)."""

    outcomes: list[Any]
    new_batches: Sequence[NewBatch]
    new_dedupe: dict[int, list[DedupeRow]]
    passed: Sequence[int]
    now: int
    pass_error: Exception | None
    swept: int  # dedupe rows a sweep slice deleted


@dataclass(frozen=True, slots=True)
class GroupFailed:
    """A group rolled back: nothing of it was written (``error``: the sqlite3 error)."""

    error: Exception

    @property
    def disk_full(self) -> bool:
        return is_disk_full(self.error)


@dataclass(slots=True)
class Prepared:
    """A group's transaction written up to its ``COMMIT``, still open on its connection
    (:meth:`GroupTransactions.prepare`): each operation's outcome so far and what its commit
    will carry (``pass_error``: why its pass failed, the group then written without one)."""

    group: Sequence[Operation]
    outcomes: list[Any]
    txn: Appends
    passed: Sequence[int]
    swept: _Swept | None
    pass_error: Exception | None = None


class _PassFailed(Exception):
    """Raised inside a group transaction when its pass failed (``__cause__``: why)."""


class GroupTransactions:
    """Writes groups on the writer's connection and keeps what carries between them (see
    the module doc). Only the writer's thread calls :meth:`write`."""

    def __init__(
        self,
        path: str,
        clock: Callable[[], int],
        journal_tail: JournalTail,
        commit_mark: CommitMark,
        *,
        audit_retention_ms: int | None,
        dedupe_window_ms: int | None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.journal_tail = journal_tail
        self.commit_mark = commit_mark
        self.audit_retention_ms = audit_retention_ms
        self.dedupe_window_ms = dedupe_window_ms
        # Shortcuts: the dedupe bucket of each account, the accounts known to have their
        # ``accounts`` row (committed; rows are never deleted). Emptied past ACCOUNT_CACHE.
        self.buckets: dict[str, int] = {}
        self.known_accounts: set[str] = set()
        self.next_prune = 0  # wall ms of the next audit pruning pass
        # Dedupe retention: the horizon as committed (read at open), the sweep under way
        # (None: none), the horizon of the last sweep done, the time of the next slice.
        self.horizon: int | None = None
        self.sweep: _Sweep | None = None
        self.swept: int | None = None
        self.next_sweep = 0
        self.passes_resume_ms = 0  # no pass before this (after a failed one)

    def opened(self, conn: sqlite3.Connection) -> None:
        """At each open: the stored horizon; a restart sweeps again from the start."""
        self.horizon = schema.read_meta(conn, retention.HORIZON)
        self.sweep = self.swept = None

    @property
    def sweep_due(self) -> bool:
        """Whether a sweep is under way, or due (the horizon moved past the last one)."""
        return self.sweep is not None or (self.horizon is not None and self.horizon != self.swept)

    def write(
        self, conn: sqlite3.Connection, group: Sequence[Operation], *, passes: bool = True
    ) -> Committed | GroupFailed:
        """The group's transaction (see the module doc): :meth:`prepare`, :meth:`commit`,
        :meth:`committed` in a row."""
        prepared = self.prepare(conn, group, passes=passes)
        if isinstance(prepared, GroupFailed):
            return prepared
        failed = self.commit(conn, prepared)
        return failed if failed is not None else self.committed(prepared)

    def prepare(
        self, conn: sqlite3.Connection, group: Sequence[Operation], *, passes: bool = True
    ) -> Prepared | GroupFailed:
        """The group's transaction up to its ``COMMIT``: every statement, left open (or, if
        one failed, rolled back: :class:`GroupFailed`). Then :meth:`commit`, on any thread,
        and, once it committed, :meth:`committed` (a commit round prepares its files on one
        thread and commits them concurrently: meterd.store._rounds)."""
        outcomes: list[Any] = [None] * len(group)
        probe = any(isinstance(op, Probe) for op in group)
        housekeeping_only = all(isinstance(op, _HOUSEKEEPING) for op in group)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(self.buckets) > ACCOUNT_CACHE:
                self.buckets.clear()
            if len(self.known_accounts) > ACCOUNT_CACHE:
                self.known_accounts.clear()
            txn = Appends(
                conn,
                self.clock(),
                self.journal_tail,
                self.buckets,
                self.known_accounts,
                self.horizon,
                self.dedupe_window_ms,
            )
            for index, op in enumerate(group):
                if isinstance(op, BatchAppend):
                    if op.position is not None:
                        mismatch = _advance_position(conn, op.position)
                        if mismatch is not None:
                            outcomes[index] = mismatch
                            continue
                    outcomes[index] = txn.append_batch(op)
                elif isinstance(op, Append):
                    outcomes[index] = txn.append(op)
                elif isinstance(op, Checkpoint):
                    outcomes[index] = _checkpoint(conn, op, txn.now)
                elif isinstance(op, Quarantine):
                    _quarantine_event(conn, op)
                elif isinstance(op, Release):
                    outcomes[index] = _quarantine.release(conn, txn, op)
                elif isinstance(op, Discard):
                    outcomes[index] = _quarantine.discard(conn, txn, op)
                elif isinstance(op, AlertRuleWrite):
                    outcomes[index] = _alert_rule(conn, op)
            passed: Sequence[int] = ()
            if passes and not probe and txn.now >= self.passes_resume_ms:
                early = any(isinstance(op, IndexPass) for op in group)
                passed = self.journal_tail.due(txn.now, early=early)
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
            if self.audit_retention_ms is not None and not probe and txn.now >= self.next_prune:
                pruned = _prune_audit(conn, txn.now - self.audit_retention_ms)
                more = pruned == AUDIT_PRUNE_BATCH
                self.next_prune = txn.now + (0 if more else AUDIT_PRUNE_EVERY_MS)
            if txn.horizon != self.horizon:
                assert txn.horizon is not None
                schema.write_meta(conn, retention.HORIZON, txn.horizon)
            swept: _Swept | None = None
            # Paced under load; a group of housekeeping only is there for it.
            if (
                not probe
                and txn.horizon is not None
                and (housekeeping_only or txn.now >= self.next_sweep)
            ):
                swept = self._sweep_slice(conn, txn.horizon, txn.now)
            if probe:
                conn.execute(PROBE_SQL)
                conn.execute(PROBE_SQL)
        except Exception as exc:
            _roll_back(conn, exc)
            if isinstance(exc, _PassFailed) and isinstance(exc.__cause__, Exception):
                self.passes_resume_ms = txn.now + PASS_RETRY_MS
                again = self.prepare(conn, group, passes=False)
                if isinstance(again, Prepared):
                    again.pass_error = exc.__cause__
                return again
            return GroupFailed(exc)
        return Prepared(group, outcomes, txn, passed, swept)

    @staticmethod
    def commit(conn: sqlite3.Connection, prepared: Prepared) -> GroupFailed | None:
        """``COMMIT`` the transaction :meth:`prepare` left open (the fences checked just
        before it), or roll it back: ``None`` once it committed (durable), else why not.
        Thread-safe against the other files' commits: it touches only ``conn``."""
        try:
            _check_fences(prepared.group)
            conn.execute("COMMIT")
        except Exception as exc:
            _roll_back(conn, exc)
            return GroupFailed(exc)
        return None

    def abandon(self, conn: sqlite3.Connection, prepared: Prepared, error: Exception) -> None:
        """Roll back what :meth:`prepare` left open, never committed (its round failed)."""
        _roll_back(conn, error)

    def committed(self, prepared: Prepared) -> Committed:
        """After :meth:`commit` committed: the state carried to the next group, and what the
        Trio side learns (writer's thread, or the round's)."""
        # Committed: nothing below may turn the group into a failed one.
        txn, swept = prepared.txn, prepared.swept
        outcomes, passed = prepared.outcomes, prepared.passed
        if txn.new_batches:
            self.commit_mark.record(txn.next_batch_id - 1)
        self.known_accounts.update(txn.new_accounts)
        self.horizon = txn.horizon
        deleted = 0
        if swept is not None:
            sweep, done, deleted = swept
            if sweep is None and self.sweep is not None:
                log.info(
                    "dedupe_swept",
                    path=self.path,
                    horizon=done,
                    deleted=self.sweep.deleted + deleted,
                )
            self.sweep, self.swept = sweep, done
        return Committed(
            outcomes,
            txn.new_batches,
            txn.new_dedupe_by_slice,
            passed,
            txn.now,
            prepared.pass_error,
            deleted,
        )

    def _sweep_slice(self, conn: sqlite3.Connection, horizon: int, now: int) -> _Swept | None:
        """One slice of the sweep of forgotten dedupe rows, in the group's transaction; what
        the sweep state becomes once the group commits (``None``: no change). A sweep starts
        once the horizon is past the one the last sweep deleted below, and keeps its
        horizon to its end."""
        sweep = self.sweep
        if sweep is None:
            if horizon == self.swept:
                return None
            sweep = _Sweep(horizon)
        self.next_sweep = now + retention.SWEEP_EVERY_MS
        end, deleted = retention.sweep(conn, sweep.after, sweep.horizon // 1000)
        if end is None:
            return None, sweep.horizon, deleted
        return _Sweep(sweep.horizon, end, sweep.deleted + deleted), self.swept, deleted


_HOUSEKEEPING: Final = (Probe, IndexPass, SweepSlice)


def _roll_back(conn: sqlite3.Connection, error: Exception) -> None:
    """Roll back the connection's open transaction, if any, after ``error``."""
    if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:
            error.add_note(f"and the ROLLBACK failed: {rollback_error}")


def _check_fences(group: Sequence[Operation]) -> None:
    """Raise :class:`Fenced` (the group rolls back) if a positioned batch's fence says its
    owner's lease is no longer certainly held (cluster mode: docs/cluster.md "Fencing")."""
    for op in group:
        if isinstance(op, BatchAppend) and op.position is not None:
            fence = op.position.fence
            reason = None if fence is None else fence()
            if reason is not None:
                raise Fenced(f"log {op.position.log!r} at sequence {op.position.seq}: {reason}")


def _advance_position(conn: sqlite3.Connection, position: LogPosition) -> Exception | None:
    """Write ``position.seq`` as its log's applied position (in the batch's transaction,
    before its rows), or the error if the store does not hold ``position.prev``. The
    position advances whatever the batch's own outcome (an InvalidEvents is a decision
    too: replaying the log makes it again)."""
    row = conn.execute("SELECT seq FROM log_positions WHERE log = ?", (position.log,)).fetchone()
    stored = 0 if row is None else int(row[0])
    if stored != position.prev:
        return PositionMismatch(position.log, stored, position.prev, position.seq)
    conn.execute(
        "INSERT INTO log_positions (log, seq) VALUES (?, ?)"
        " ON CONFLICT (log) DO UPDATE SET seq = excluded.seq",
        (position.log, position.seq),
    )
    return None


def _checkpoint(conn: sqlite3.Connection, op: Checkpoint, now: int) -> Exception | None:
    """The windows and the watermark of ``op`` (and its other rows), or the exception its
    ``merge`` raised (then nothing of it was written)."""
    account = op.account
    windows: Sequence[WindowWrite] = op.windows
    if op.merge is not None:
        try:
            windows = _merged(conn, account, op.windows, op.merge)
        except Exception as error:  # the caller's states: this checkpoint fails alone
            return error
    insert_rows(
        conn,
        TABLES["windows"],
        [(account, meter, start, dims, state) for meter, start, dims, state in windows],
    )
    conn.execute(TABLES["watermarks"], (account, op.watermark, now))
    for table, rows in op.rows:
        conn.executemany(TABLES[table], rows)
    return None


def _merged(
    conn: sqlite3.Connection, account: str, deltas: Sequence[WindowWrite], merge: WindowMerge
) -> list[WindowWrite]:
    """``deltas`` merged into the stored windows they name (one range read per meter)."""
    bounds: dict[str, tuple[int, int]] = {}
    for meter, start, _, _ in deltas:
        low, high = bounds.get(meter, (start, start))
        bounds[meter] = (min(low, start), max(high, start))
    stored: dict[tuple[str, int, str], bytes] = {}
    for meter, (low, high) in bounds.items():
        for start, dims, state in conn.execute(
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


def _quarantine_event(conn: sqlite3.Connection, op: Quarantine) -> None:
    conn.execute(TABLES["quarantine"], (op.account, op.batch_id, op.event_id, op.error, op.at))


def _alert_rule(conn: sqlite3.Connection, op: AlertRuleWrite) -> bool:
    """Create or delete one rule (see :class:`~meterd.store._ops.AlertRuleWrite`)."""
    if op.rule is None:
        cursor = conn.execute(RULE_DELETE, (op.by, op.at, op.account, op.name))
    else:
        meter, period, threshold, spend, webhook = op.rule
        cursor = conn.execute(
            RULE_INSERT,
            # the row, then the key of the NOT EXISTS
            (
                op.account,
                op.name,
                meter,
                period,
                threshold,
                spend,
                webhook,
                op.by,
                op.at,
                op.account,
                op.name,
            ),
        )
    return bool(cursor.rowcount)


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
    return int(conn.execute("DELETE FROM audit WHERE audit_id <= ?", (last,)).rowcount)


def is_disk_full(error: Exception) -> bool:
    """Whether ``error`` says the disk (or the database's size limit) is full."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno == errno.ENOSPC
