"""Releases and discards of quarantined events, in a group transaction.

Rules (docs/accounts.md, "Quarantine: release and discard"):

* An event in ``quarantine`` is a **copy**: ``(account, batch_id, event_id)``, an event of a
  journal batch that crashed the account's actor. That copy is never applied again: a
  starting actor's replay leaves out the copies in ``quarantine`` and those in
  ``quarantine_log`` (:meth:`meterd.store.Reader.load_account`).
* A :class:`~meterd.store._ops.Release` appends the released events (as stored, unchanged)
  to the journal as **one new batch** of the account, deletes their ``quarantine`` rows and
  writes a ``quarantine_log`` row per copy (``released``, the new batch, who and why), in
  the group's transaction. The new batch is a journal batch like any other: the account's
  actor applies it once (delivered after the commit, or replayed by its next incarnation),
  and if it crashes the actor again its replay quarantines it again, as the copy of the new
  batch. Each copy the release appends gets a ``dedupe_overflow`` row of the new batch: a
  re-send of the id is still a duplicate, and the dedupe rows derived from the journal
  after a crash (:func:`~meterd.store.journal_index.rebuild_tail`) leave it out, as they
  do for every counted copy whose key another row holds.
* A :class:`~meterd.store._ops.Discard` deletes the ``quarantine`` rows and writes
  ``quarantine_log`` rows (``discarded``, who and why): the copy never counts.
* All or nothing: every id asked for must be in quarantine, or already so (released for a
  release, discarded for a discard: that id is :class:`~meterd.store._ops.Unchanged`, a
  no-op). Otherwise the operation is refused with every problem
  (:class:`~meterd.store.errors.QuarantineRefused`) and writes nothing; the rest of its
  group commits.
* ``quarantine_log`` is append-only: no operation updates or deletes its rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from meterd.isotime import format_time
from meterd.model import Event

from . import codec, schema
from ._appends import Appends
from ._ops import Discard, QuarantineDecision, Release, Settled, Unchanged
from .errors import QuarantineRefused, StoreCorruptError

__all__ = ["discard", "release"]

_LOG_INSERT: Final = (
    "INSERT INTO quarantine_log (account, batch_id, event_id, action, release_batch, error,"
    " quarantined_at, by, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def release(
    conn: sqlite3.Connection, txn: Appends, op: Release
) -> QuarantineDecision | QuarantineRefused | StoreCorruptError:
    """``op`` in the group's transaction (see the module doc): its outcome."""
    found = _quarantined(conn, op.account, op.event_ids)
    unchanged, problems = _others(conn, txn, op.account, op.event_ids, found, "released")
    if problems:
        return QuarantineRefused(problems)
    if not found:
        return QuarantineDecision(op.account, "released", None, (), (), tuple(unchanged))
    events: list[Event] = []
    by_batch: dict[int, set[str]] = {}
    for copy in found:
        by_batch.setdefault(copy.batch_id, set()).add(copy.event_id)
    for batch_id, ids in sorted(by_batch.items()):
        row = conn.execute(
            "SELECT payload FROM event_batches WHERE batch_id = ? AND account = ?",
            (batch_id, op.account),
        ).fetchone()
        if row is None:
            return StoreCorruptError(
                f"quarantined events {sorted(ids)} of account {op.account!r} name journal"
                f" batch {batch_id}, which the store does not hold: nothing was released"
            )
        try:
            stored = codec.decode_batch(row[0], op.account, where=f"batch {batch_id}")
        except StoreCorruptError as error:  # this operation fails, not its group
            return error
        picked = [event for event in stored if event.id in ids]
        missing = ids - {event.id for event in picked}
        if missing:
            return StoreCorruptError(
                f"journal batch {batch_id} of account {op.account!r} does not hold the"
                f" quarantined events {sorted(missing)}: nothing was released"
            )
        events.extend(picked)
    batch_id = txn.next_batch_id
    txn.next_batch_id += 1
    times = [event.time for event in events]
    conn.execute(
        "INSERT INTO event_batches"
        " (batch_id, account, received_at, count, payload, min_time, max_time)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (batch_id, op.account, op.at, len(events), codec.encode_batch(events), min(times),
         max(times)),
    )  # fmt: skip
    txn.new_batches.append((op.account, batch_id, min(times), max(times)))
    conn.executemany(
        "INSERT INTO dedupe_overflow (account, event_id, batch_id, fingerprint, time_s)"
        " VALUES (?, ?, ?, ?, ?)",
        [(op.account, e.id, batch_id, e.fingerprint(), e.time // 1000) for e in events],
    )
    _settle(conn, op.account, found, "released", batch_id, op.by, op.reason, op.at)
    return QuarantineDecision(
        op.account, "released", batch_id, tuple(found), tuple(events), tuple(unchanged)
    )


def discard(
    conn: sqlite3.Connection, txn: Appends, op: Discard
) -> QuarantineDecision | QuarantineRefused:
    """``op`` in the group's transaction (see the module doc): its outcome."""
    found = _quarantined(conn, op.account, op.event_ids)
    unchanged, problems = _others(conn, txn, op.account, op.event_ids, found, "discarded")
    if problems:
        return QuarantineRefused(problems)
    _settle(conn, op.account, found, "discarded", None, op.by, op.reason, op.at)
    return QuarantineDecision(op.account, "discarded", None, tuple(found), (), tuple(unchanged))


def _quarantined(
    conn: sqlite3.Connection, account: str, event_ids: Sequence[str] | None
) -> list[Settled]:
    """The account's quarantined copies (of ``event_ids``; ``None``: all), in journal order."""
    rows = conn.execute(
        "SELECT event_id, batch_id, error, at FROM quarantine WHERE account = ?"
        " ORDER BY batch_id, event_id",
        (account,),
    ).fetchall()
    wanted = None if event_ids is None else set(event_ids)
    return [Settled(*row) for row in rows if wanted is None or row[0] in wanted]


def _settle(
    conn: sqlite3.Connection,
    account: str,
    found: list[Settled],
    action: str,
    release_batch: int | None,
    by: str,
    reason: str,
    at: int,
) -> None:
    conn.executemany(
        "DELETE FROM quarantine WHERE account = ? AND batch_id = ? AND event_id = ?",
        [(account, copy.batch_id, copy.event_id) for copy in found],
    )
    conn.executemany(
        _LOG_INSERT,
        [
            (account, c.batch_id, c.event_id, action, release_batch, c.error, c.quarantined_at,
             by, reason, at)
            for c in found
        ],
    )  # fmt: skip


def _others(
    conn: sqlite3.Connection,
    txn: Appends,
    account: str,
    event_ids: Sequence[str] | None,
    found: list[Settled],
    action: str,
) -> tuple[list[Unchanged], list[tuple[str, str, str]]]:
    """For the ids asked for that are not in quarantine: those already ``action`` (no-ops)
    and the problems ``(event_id, code, message)`` of the others."""
    unchanged: list[Unchanged] = []
    problems: list[tuple[str, str, str]] = []
    if event_ids is None:
        return unchanged, problems
    present = {copy.event_id for copy in found}
    for event_id in dict.fromkeys(event_ids):  # each once, in the order asked
        if event_id in present:
            continue
        last = conn.execute(
            "SELECT action, by, at, release_batch FROM quarantine_log"
            " WHERE account = ? AND event_id = ? ORDER BY entry_id DESC LIMIT 1",
            (account, event_id),
        ).fetchone()
        name = f"event {event_id!r} of account {account!r}"
        if last is not None:
            done, by, at, release_batch = last
            when = f"by {by} at {format_time(at)}"
            if done == action:
                unchanged.append(Unchanged(event_id, done, by, at, release_batch))
            elif done == "discarded":
                problems.append(
                    (
                        event_id,
                        "discarded",
                        f"{name} was discarded {when}: a discarded event is never counted"
                        " and cannot be released",
                    )
                )
            else:
                problems.append(
                    (
                        event_id,
                        "already_released",
                        f"{name} was released {when} and counts now (journal batch"
                        f" {release_batch}): it cannot be discarded; void it to take it out"
                        " of billed usage (meterd void)",
                    )
                )
        elif _counted(txn, account, event_id):
            problems.append(
                (
                    event_id,
                    "not_quarantined",
                    f"{name} is counted, not quarantined: nothing to {action[:-1]}"
                    " (void it to take it out of billed usage: meterd void)",
                )
            )
        else:
            problems.append(
                (
                    event_id,
                    "unknown_event",
                    f"account {account!r} has no quarantined event {event_id!r}, nor a"
                    " counted one within dedupe_window: check the id (meterd quarantine"
                    f" {account} lists its quarantined events)",
                )
            )
    return unchanged, problems


def _counted(txn: Appends, account: str, event_id: str) -> bool:
    """Whether the dedupe index (table, tail, overflow) holds ``(account, event_id)``."""
    if txn._overflow_row(account, event_id) is not None:
        return True
    probe = Event(event_id, account, "", 0, 0)
    key = schema.dedupe_row_key(schema.account_bucket(account), probe)
    row = txn._lookup_keys([key]).get(key)
    return row is not None and txn._batch_holds(row[0], account, event_id)
