"""The journal's by-account index, maintained in passes instead of row by row.

Readers find an account's journal batches by account (actor recovery, the events endpoint);
ingest never does. A SQLite index on ``event_batches(account, …)`` would take one entry per
account share at a random place, and SQLite writes whole pages: with shares spread over
thousands of accounts that is about one 4 KiB page per event at every group commit
(``python -m meterd.bench.pages``), as much as the dedupe index the ack does need. So the
journal has no such index; ``journal_index(account, batch_id, min_time, max_time)`` is
filled by the writer in **passes**, and what no pass has covered yet, the *tail*, is kept in
memory.

Rules:

* Accounts fall in :data:`SLICES` slices (:func:`slice_of`: CRC-32 of the account's UTF-8
  bytes; part of the file format, like the dedupe key). ``journal_slices(slice, upto)``
  holds, per slice, the batch id up to which **every** batch of the slice's accounts is in
  ``journal_index``. A batch of slice ``k`` with ``batch_id > upto[k]`` is in the tail.
* Passes take the slices in turn, so each slice is passed once per ``cycle`` (the writer's
  ``index_cycle``): a group transaction passes the slices whose turn came since the last
  one (:meth:`JournalTail.due`). A pass inserts the slice's tail, and the rows the same
  transaction appended for it, sorted, and sets its ``upto`` to the last batch id of the
  transaction: in the transaction of the group, so it commits, or fails, with it. An
  account's entries then reach the index together, a page for several events, not one per
  event.
* :class:`JournalTail` is the writer's in-memory tail, changed on the Trio thread only
  after a group committed: the group's new batches are added, then the passed slices are
  emptied. The writer thread reads it during a group (nothing changes it meanwhile). It
  holds ``rate x cycle`` entries at most under load.
* A reader of the daemon's store (:class:`~meterd.store.Store`) takes an account's tail
  entries from the writer's :class:`JournalTail` when called, then reads the index in its
  own transaction; the union (by batch id) is every batch committed before the call. A
  reader without a writer in its process reads the tail from SQLite instead (the batches
  after ``upto`` of the account's slice: a scan of the journal's end).
* At start the writer indexes whatever tail the database has (:func:`catch_up`: a crash or
  a stop leaves one) before reporting ready, so the in-memory tail starts empty and
  complete.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

__all__ = [
    "SLICES",
    "JournalTail",
    "NewBatch",
    "TailEntry",
    "catch_up",
    "pass_slices",
    "slice_of",
]

SLICES: Final = 256
_SLICE_CACHE: Final = 200_000  # accounts whose slice the tail remembers

TailEntry: TypeAlias = tuple[int, int, int]
"""``(batch_id, min_time, max_time)`` of a journal batch not yet in ``journal_index``."""
NewBatch: TypeAlias = tuple[str, int, int, int]
"""``(account, batch_id, min_time, max_time)`` of a batch appended by a group."""


def slice_of(account: str) -> int:
    """The slice of ``account`` (0 to :data:`SLICES` - 1)."""
    return zlib.crc32(account.encode()) % SLICES


class JournalTail:
    """The journal batches no pass has indexed yet, by slice and account (see the module
    doc). Changed on the Trio thread only."""

    def __init__(self, cycle_ms: int) -> None:
        if cycle_ms < 1:
            raise ValueError(f"the index cycle must be >= 1 ms, got {cycle_ms}")
        self.cycle_ms = cycle_ms
        self.slices: list[dict[str, list[TailEntry]]] = [{} for _ in range(SLICES)]
        self.size = 0  # entries held
        self.next_slice = 0  # the next slice to pass
        self.last_pass_ms: int | None = None  # wall ms of the last pass (None: none yet)
        self._slice_of: dict[str, int] = {}

    def slice_of(self, account: str) -> int:
        found = self._slice_of.get(account)
        if found is None:
            if len(self._slice_of) > _SLICE_CACHE:
                self._slice_of.clear()
            found = self._slice_of[account] = slice_of(account)
        return found

    def entries(self, account: str) -> list[TailEntry]:
        """A copy of ``account``'s tail, oldest first."""
        return list(self.slices[self.slice_of(account)].get(account, ()))

    def due(self, now_ms: int) -> list[int]:
        """The slices whose turn came by ``now_ms`` (in passing order; writer thread)."""
        if self.last_pass_ms is None:
            return []  # the first group starts the clock (see committed)
        turns = (now_ms - self.last_pass_ms) * SLICES // self.cycle_ms
        return [(self.next_slice + n) % SLICES for n in range(min(max(turns, 0), SLICES))]

    def committed(self, new: Iterable[NewBatch], passed: Sequence[int], now_ms: int) -> None:
        """A group committed: add its ``new`` batches, then empty the ``passed`` slices."""
        slices = self.slices
        added = 0
        for account, batch_id, low, high in new:
            per_account = slices[self.slice_of(account)]
            entries = per_account.get(account)
            if entries is None:
                per_account[account] = [(batch_id, low, high)]
            else:
                entries.append((batch_id, low, high))
            added += 1
        self.size += added
        for k in passed:
            self.size -= sum(map(len, slices[k].values()))
            slices[k] = {}
        if passed:
            self.next_slice = (passed[-1] + 1) % SLICES
        if passed or self.last_pass_ms is None:
            self.last_pass_ms = now_ms

    def clear(self) -> None:
        """Everything indexed (after :func:`catch_up`)."""
        self.slices = [{} for _ in range(SLICES)]
        self.size = 0


def pass_slices(
    conn: sqlite3.Connection,
    tail: JournalTail,
    slices: Sequence[int],
    new: Sequence[NewBatch],
    upto: int,
) -> None:
    """Index ``slices``: their tail and their rows among ``new`` (this transaction's), and
    set their ``upto`` (writer thread, inside the group transaction)."""
    if not slices:
        return
    wanted = set(slices)
    rows: list[tuple[str, int, int, int]] = [row for row in new if tail.slice_of(row[0]) in wanted]
    for k in slices:
        for account, entries in tail.slices[k].items():
            rows.extend((account, batch_id, low, high) for batch_id, low, high in entries)
    rows.sort()  # the index's order: each account's entries land together
    conn.executemany(
        "INSERT INTO journal_index (account, batch_id, min_time, max_time) VALUES (?, ?, ?, ?)",
        rows,
    )
    conn.executemany(
        "UPDATE journal_slices SET upto = ? WHERE slice = ?", [(upto, k) for k in slices]
    )


def catch_up(conn: sqlite3.Connection) -> int:
    """Index every batch that no pass covered (one transaction); the batches indexed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        upto = dict(conn.execute("SELECT slice, upto FROM journal_slices").fetchall())
        rows = [
            (account, batch_id, low, high)
            for batch_id, account, low, high in conn.execute(
                "SELECT batch_id, account, min_time, max_time FROM event_batches"
                " WHERE batch_id > ?",
                (min(upto.values(), default=0),),
            )
            if batch_id > upto[slice_of(account)]
        ]
        rows.sort()
        conn.executemany(
            "INSERT INTO journal_index (account, batch_id, min_time, max_time) VALUES (?, ?, ?, ?)",
            rows,
        )
        (top,) = conn.execute("SELECT coalesce(max(batch_id), 0) FROM event_batches").fetchone()
        conn.execute("UPDATE journal_slices SET upto = ?", (top,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(rows)
