"""The journal's by-account index and the dedupe index, maintained in passes.

SQLite writes whole pages, so a row inserted at a random place in a B-tree costs a 4 KiB page
at the next commit unless another row of the same group lands on it. Two structures take a
row per event or account share at a place chosen by the account: the journal's by-account
index (readers only: actor recovery, the events endpoint) and the dedupe index (the writer's
verdicts). With events spread over thousands of accounts, each cost about one page per event
at every group commit (``python -m meterd.bench.pages``). Both are derived from the journal,
which is the truth: so the writer writes their rows in **passes**, a slice of the accounts at
a time, and keeps what no pass has covered yet, the *tail*, in memory.

Rules:

* Accounts fall in :data:`~meterd.store.schema.SLICES` slices
  (:func:`~meterd.store.schema.slice_of`, part of the file format). ``journal_slices(slice,
  upto)`` holds, per slice, the batch id up to which **every** batch of the slice's accounts
  has its ``journal_index`` row and the ``dedupe`` rows of its events. A batch of slice ``k``
  with ``batch_id > upto[k]`` is in the tail. (``dedupe_overflow`` rows, for the rare
  ``(account, id)`` whose key another pair holds, are written at once, as before.)
* Passes take the slices in turn, so each slice is passed once per ``cycle`` (the writer's
  ``index_cycle``): a group transaction passes the slices whose turn came since the last one
  (:meth:`JournalTail.due`), :data:`MAX_SLICES_PER_GROUP` at most (after an idle time the
  next groups share the slices due). An idle writer holding a large tail (after a burst)
  passes the next slices early, a group of passes only at a time, while nothing waits.
  A pass inserts the slice's tail rows, and the rows the same transaction added for it,
  sorted, and sets its ``upto`` to the last batch id of the transaction: in the group's
  transaction, so it commits, or fails, with it. An account's rows of a cycle then reach
  each B-tree together, a page for several events.
* :class:`JournalTail` is the writer's in-memory tail, changed on the Trio thread only after
  a group committed: the group's new batches and dedupe rows are added, then the passed
  slices are emptied. The writer thread reads it during a group (nothing changes it
  meanwhile): a key is stored if it is in ``dedupe``, in the tail, or added earlier in the
  same transaction. It holds ``rate x cycle`` entries at most under load. A key has one row
  in the tail at most (the writer sends any other event with that key to
  ``dedupe_overflow``); a pass *replaces* a ``dedupe`` row of the same key, which is then
  one the writer had forgotten (past ``dedupe_window``: docs/accounts.md).
* A reader of the daemon's store (:class:`~meterd.store.Store`) takes an account's tail
  batches from the writer's :class:`JournalTail` when called, then reads the index in its
  own transaction; the union (by batch id) is every batch committed before the call. A
  reader without a writer in its process reads the tail from SQLite instead (the batches
  after ``upto`` of the account's slice: a scan of the journal's end).
* At start the writer indexes whatever tail the database has (:func:`catch_up`: a crash or
  a stop leaves one; the dedupe rows are derived again from the journal's payloads, as
  when they were appended) before reporting ready, so the in-memory tail starts empty and
  complete. If they cannot be written (a full disk), it holds the same rows in memory
  (:func:`rebuild_tail`) and starts anyway: a full disk fails commits, not the writer. An
  accepted event either claimed its key (its row is the one to write) or has a
  ``dedupe_overflow`` row of its batch, written with it: that is how the rebuild tells
  them apart, whatever the ``dedupe`` table held when it was decided.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, repeat
from operator import itemgetter
from typing import Final, TypeAlias

from . import codec
from ._rows import insert_rows
from .schema import SLICES, account_bucket, dedupe_row_key, slice_of

__all__ = [
    "DedupeRow",
    "MAX_SLICES_PER_GROUP",
    "JournalTail",
    "NewBatch",
    "TailEntry",
    "catch_up",
    "pass_everything",
    "pass_slices",
    "rebuild_tail",
]

_SLICE_CACHE: Final = 200_000  # accounts whose slice the tail remembers
MAX_SLICES_PER_GROUP: Final = 16
"""Slices one group passes at most: after a burst and an idle time (no group, so no pass)
the slices whose turn came are passed over the next groups, a bounded share of the tail
each, instead of the whole tail in the first group (a stall of every batch in it)."""

TailEntry: TypeAlias = tuple[int, int, int]
"""``(batch_id, min_time, max_time)`` of a journal batch not yet in ``journal_index``."""
NewBatch: TypeAlias = tuple[str, int, int, int]
"""``(account, batch_id, min_time, max_time)`` of a batch appended by a group."""
DedupeRow: TypeAlias = tuple[int, int, int, int]
"""``(key, batch_id, fingerprint, time_s)``: a ``dedupe`` row (``time_s``: the event's time
in seconds, floor)."""
_ROW: Final = 4  # ints per dedupe row in the tail's flat arrays
_OFFSET_BITS: Final = 32  # JournalTail.position_of: slice above the offset in its array


class JournalTail:
    """The journal batches no pass has indexed yet, by slice and account (see the module
    doc). Changed on the Trio thread only."""

    def __init__(self, cycle_ms: int) -> None:
        if cycle_ms < 1:
            raise ValueError(f"the index cycle must be >= 1 ms, got {cycle_ms}")
        self.cycle_ms = cycle_ms
        # No tuple per entry: the collector walks every young container, and the tail holds
        # a cycle of events (two tuples an event doubled its young-generation pauses).
        # Per slice, account -> its batches as flat [batch_id, min_time, max_time, ...];
        # per slice, the dedupe rows as one flat array of [key, batch_id, fingerprint,
        # time_s, ...]; and by key, where its held row is: slice << 32 | offset.
        self.slices: list[dict[str, list[int]]] = [{} for _ in range(SLICES)]
        self.dedupe: list[array[int]] = [array("q") for _ in range(SLICES)]
        self.position_of: dict[int, int] = {}
        self.size = 0  # batches held
        self.next_slice = 0  # the next slice to pass
        # The passes' clock (wall ms): the turn of the slice after the last one passed.
        self.last_pass_ms: float | None = None  # None: no group yet
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
        flat = self.slices[self.slice_of(account)].get(account, ())
        return list(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))

    def stored(self, key: int) -> tuple[int, int, int] | None:
        """``(batch_id, fingerprint, time_s)`` of the held dedupe row of ``key``, if any."""
        position = self.position_of.get(key)
        if position is None:
            return None
        flat = self.dedupe[position >> _OFFSET_BITS]
        at = position & ((1 << _OFFSET_BITS) - 1)
        return flat[at + 1], flat[at + 2], flat[at + 3]

    def rows(self, k: int) -> list[DedupeRow]:
        """The held dedupe rows of slice ``k``."""
        flat = self.dedupe[k]
        return list(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4], strict=True))

    def due(self, now_ms: int, *, early: bool = False) -> list[int]:
        """The slices whose turn came by ``now_ms`` (in passing order; writer thread), or
        with ``early`` (an idle writer with a backlog) the next ones whether or not."""
        if self.last_pass_ms is None:
            return []  # the first group starts the clock (see committed)
        if early:
            return [(self.next_slice + n) % SLICES for n in range(MAX_SLICES_PER_GROUP)]
        turns = int((now_ms - self.last_pass_ms) * SLICES // self.cycle_ms)
        count = min(max(turns, 0), SLICES, MAX_SLICES_PER_GROUP)
        return [(self.next_slice + n) % SLICES for n in range(count)]

    def committed(
        self,
        new: Iterable[NewBatch],
        new_dedupe: Mapping[int, list[DedupeRow]],
        passed: Sequence[int],
        now_ms: int,
    ) -> None:
        """A group committed: add its ``new`` batches and dedupe rows (by slice), then
        empty the ``passed`` slices."""
        position_of = self.position_of
        for k, rows in new_dedupe.items():
            flat = self.dedupe[k]
            at = (k << _OFFSET_BITS) + len(flat)
            flat.extend(chain.from_iterable(rows))
            offsets = range(at, at + _ROW * len(rows), _ROW)
            position_of.update(zip(map(itemgetter(0), rows), offsets, strict=True))
        slices = self.slices
        added = 0
        for account, batch_id, low, high in new:
            per_account = slices[self.slice_of(account)]
            entries = per_account.get(account)
            if entries is None:
                per_account[account] = [batch_id, low, high]
            else:
                entries += (batch_id, low, high)
            added += 1
        self.size += added
        for k in passed:
            self.size -= sum(map(len, slices[k].values())) // 3
            slices[k] = {}
            for key in self.dedupe[k][0::_ROW]:
                del position_of[key]
            self.dedupe[k] = array("q")
        if self.last_pass_ms is None:
            self.last_pass_ms = now_ms
        elif passed:
            self.next_slice = (passed[-1] + 1) % SLICES
            # One turn per slice passed; never more than a cycle behind (a long idle time).
            turn = self.cycle_ms / SLICES
            self.last_pass_ms = max(self.last_pass_ms + len(passed) * turn, now_ms - self.cycle_ms)

    def clear(self) -> None:
        """Everything indexed (after :func:`catch_up`)."""
        self.slices = [{} for _ in range(SLICES)]
        self.dedupe = [array("q") for _ in range(SLICES)]
        self.position_of = {}
        self.size = 0


_UPSERT_DEDUPE: Final = (
    "INSERT INTO dedupe (key, batch_id, fingerprint, time_s) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET batch_id = excluded.batch_id,"
    " fingerprint = excluded.fingerprint, time_s = excluded.time_s"
)
"""A dedupe row, replacing the row of its key if there is one (a forgotten one: see the
module doc)."""
_INSERT_INDEX: Final = (
    "INSERT INTO journal_index (account, batch_id, min_time, max_time) VALUES (?, ?, ?, ?)"
)


def pass_slices(
    conn: sqlite3.Connection,
    tail: JournalTail,
    slices: Sequence[int],
    new: Sequence[NewBatch],
    new_dedupe: Mapping[int, list[DedupeRow]],
    upto: int,
) -> None:
    """Index ``slices``: their tail and their rows among ``new`` and ``new_dedupe`` (this
    transaction's), and set their ``upto`` (writer thread, inside the group transaction)."""
    if not slices:
        return
    keys: list[DedupeRow] = []
    for k in slices:
        keys.extend(tail.rows(k))
        keys.extend(new_dedupe.get(k, ()))
    keys.sort()
    insert_rows(conn, _UPSERT_DEDUPE, keys)
    wanted = set(slices)
    rows: list[tuple[str, int, int, int]] = [row for row in new if tail.slice_of(row[0]) in wanted]
    for k in slices:
        for account, flat in tail.slices[k].items():
            rows.extend(zip(repeat(account), flat[0::3], flat[1::3], flat[2::3], strict=False))
    rows.sort()  # the index's order: each account's entries land together
    insert_rows(conn, _INSERT_INDEX, rows)
    conn.executemany(
        "UPDATE journal_slices SET upto = ? WHERE slice = ?", [(upto, k) for k in slices]
    )


def rebuild_tail(
    conn: sqlite3.Connection,
) -> tuple[list[NewBatch], dict[int, list[DedupeRow]]]:
    """What :func:`catch_up` would write, to hold in a tail instead (reads only: for a
    database that cannot take the writes, e.g. a full disk): the batches no pass covered and
    their events' dedupe rows by slice, in journal order: the row of each event that claimed
    its key, i.e. each event without a ``dedupe_overflow`` row of its batch."""
    upto = dict(conn.execute("SELECT slice, upto FROM journal_slices").fetchall())
    lowest = min(upto.values(), default=0)
    # Small: only the rare (account, id) whose key another one held when it was counted.
    overflowed = set(
        conn.execute(
            "SELECT account, event_id, batch_id FROM dedupe_overflow WHERE batch_id > ?",
            (lowest,),
        ).fetchall()
    )
    new: list[NewBatch] = []
    new_dedupe: dict[int, list[DedupeRow]] = {}
    buckets: dict[str, int] = {}
    for batch_id, account, low, high, payload in conn.execute(
        "SELECT batch_id, account, min_time, max_time, payload FROM event_batches"
        " WHERE batch_id > ? ORDER BY batch_id",
        (lowest,),
    ).fetchall():
        k = slice_of(account)
        if batch_id <= upto[k]:
            continue
        new.append((account, batch_id, low, high))
        bucket = buckets.get(account)
        if bucket is None:
            bucket = buckets[account] = account_bucket(account)
        for event in codec.decode_batch(payload, account, where=f"batch {batch_id}"):
            if overflowed and (account, event.id, batch_id) in overflowed:
                continue
            row = (dedupe_row_key(bucket, event), batch_id, event.fingerprint(), event.time // 1000)
            new_dedupe.setdefault(k, []).append(row)
    return new, new_dedupe


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed if the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise


def _last_batch_id(conn: sqlite3.Connection) -> int:
    (top,) = conn.execute("SELECT coalesce(max(batch_id), 0) FROM event_batches").fetchone()
    return int(top)


def pass_everything(conn: sqlite3.Connection, tail: JournalTail) -> None:
    """Write the whole tail (every slice) in one transaction (the writer's stop)."""
    with _immediate(conn):
        pass_slices(conn, tail, range(SLICES), (), {}, _last_batch_id(conn))


def catch_up(conn: sqlite3.Connection) -> int:
    """Index every batch that no pass covered, and write its events' dedupe rows (one
    transaction; the rows are :func:`rebuild_tail`'s); the batches indexed."""
    with _immediate(conn):
        new, new_dedupe = rebuild_tail(conn)
        insert_rows(conn, _INSERT_INDEX, sorted(new))
        insert_rows(conn, _UPSERT_DEDUPE, sorted(chain.from_iterable(new_dedupe.values())))
        conn.execute("UPDATE journal_slices SET upto = ?", (_last_batch_id(conn),))
    return len(new)
