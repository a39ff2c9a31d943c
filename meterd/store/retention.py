"""Dedupe retention: which dedupe rows the writer has forgotten, and deleting them.

protocol.md §2.5 promises that an ``(account, id)`` is counted at most once within
``dedupe_window``; the ``dedupe`` index (and ``dedupe_overflow``) need not remember a pair
longer. The rule (docs/accounts.md "Dedupe retention"):

* The **horizon** ``H`` is a time in milliseconds, a multiple of :func:`horizon_step`
  (``dedupe_window / 8``, whole seconds). Before deciding each operation, in queue order,
  the writer raises it to ``horizon_at(received_at, dedupe_window)`` (the receipt time
  less ``dedupe_window``, rounded down to the step) if that is larger. It never goes down,
  and it is stored (``store_meta``) in the transaction that raised it: so ``H`` is a
  function of the operations decided so far (their ``received_at``), never of when a
  deletion ran, and a restart goes on from the same value.
* An event whose time is before ``H`` is ``time_out_of_range`` (verdict ``too_late``),
  checked **before** any dedupe lookup. Ingest's own check (``late_window`` ≤
  ``dedupe_window``, against a ``now`` taken before the writer's ``received_at``) rejects
  such events first; the writer's check is what holds for an event validated just before
  ``H`` moved (in flight), and after the wall clock went back (a restart on a host whose
  clock is behind).
* A stored row whose event time is before ``H`` is **forgotten**: it decides nothing, as if
  absent (an id counted again after that is a new event, not an ``id_conflict``). A new
  event may take over the key of a forgotten ``dedupe`` row (the pass replaces it).
* Deleting the forgotten rows (:func:`sweep`) is only housekeeping: it changes no verdict,
  so it may run whenever, in slices, and start over after a restart. It never deletes a
  ``dedupe`` row whose key a remembered ``dedupe_overflow`` row needs (those rows are
  found through that key), nor an overflow row that tells apart two ids of the batch a
  remembered ``dedupe`` row points at, nor the overflow rows of batches a pass has not
  covered (the rebuild of the writer's tail reads them: :mod:`meterd.store.journal_index`).

Times are kept in whole seconds (``time_s``, floor): ``H`` is a multiple of 1,000 ms, so
``time < H`` exactly when ``time // 1000 < H // 1000``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Final

from . import schema

__all__ = [
    "HORIZON",
    "SWEEP_BATCH",
    "SWEEP_EVERY_MS",
    "horizon_at",
    "horizon_step",
    "sweep",
    "too_late_message",
]

HORIZON: Final = "dedupe_horizon"
"""The ``store_meta`` name of the horizon (ms)."""
SWEEP_EVERY_MS: Final = 100
"""Between two slices of a sweep (wall clock, ms): a sweep rides in the groups that commit
anyway (and in idle ones while it lasts), one slice a group at most this often."""
SWEEP_BATCH: Final = 5_000
"""``dedupe`` rows a slice of a sweep looks at (about 40 pages, read in key order)."""
_STEPS: Final = 8


def horizon_step(window_ms: int) -> int:
    """How far the horizon moves at a time: ``window_ms / 8`` in whole seconds (at least 1):
    a forgotten row is deleted within ``window / 8`` (plus a sweep) of becoming forgotten,
    and each sweep deletes about an eighth of the rows, so it rewrites each page of the
    index once per eighth of the window."""
    return max(1_000, window_ms // _STEPS // 1_000 * 1_000)


def horizon_at(received_at: int, window_ms: int) -> int:
    """The horizon an operation received at ``received_at`` asks for."""
    step = horizon_step(window_ms)
    return (received_at - window_ms) // step * step


def too_late_message(time: int, horizon: int) -> str:
    """Why the writer rejected an event older than the horizon (the ack's message)."""
    when = datetime.fromtimestamp(horizon / 1000, UTC).isoformat(timespec="seconds")
    return (
        f"time {time} is out of range: it is older than {horizon} ({when}), the oldest time"
        " the store still checks for duplicates (dedupe_window before the newest batch"
        " received), so it was not counted"
    )


def sweep(
    conn: sqlite3.Connection, after: int, floor_s: int, limit: int | None = None
) -> tuple[int | None, int]:
    """One slice of a sweep, inside the caller's transaction: delete the forgotten rows
    (``time_s < floor_s``) among the ``limit`` (:data:`SWEEP_BATCH`) ``dedupe`` rows after
    key ``after``; at the end of the table also the forgotten ``dedupe_overflow`` rows.
    Returns the key to go on after (``None``: the sweep is done) and the rows deleted."""
    limit = SWEEP_BATCH if limit is None else limit
    row = conn.execute(
        "SELECT key FROM dedupe WHERE key > ? ORDER BY key LIMIT 1 OFFSET ?", (after, limit - 1)
    ).fetchone()
    end: int | None = None if row is None else int(row[0])
    bounds = "key > ?" + ("" if end is None else " AND key <= ?")
    args: tuple[int, ...] = (after,) if end is None else (after, end)
    # The keys that remembered overflow rows are found through (few: true collisions).
    needed = {
        schema.overflow_key(account, event_id)
        for account, event_id in conn.execute(
            "SELECT account, event_id FROM dedupe_overflow WHERE time_s IS NULL OR time_s >= ?",
            (floor_s,),
        )
    }
    if needed:
        expired = [
            (key,)
            for (key,) in conn.execute(
                f"SELECT key FROM dedupe WHERE {bounds} AND time_s < ?", (*args, floor_s)
            )
            if key not in needed
        ]
        conn.executemany("DELETE FROM dedupe WHERE key = ?", expired)
        deleted = len(expired)
    else:
        deleted = conn.execute(
            f"DELETE FROM dedupe WHERE {bounds} AND time_s < ?", (*args, floor_s)
        ).rowcount
    if end is None:
        deleted += _sweep_overflow(conn, floor_s)
    return end, deleted


def _sweep_overflow(conn: sqlite3.Connection, floor_s: int) -> int:
    """Delete the forgotten ``dedupe_overflow`` rows of batches every pass has covered,
    except one whose key's ``dedupe`` row is remembered and points at the same batch: that
    batch holds both ids, and the overflow row is what tells the writer which of them the
    key's row is not (``Writer._batch_holds`` only checks that the batch holds the id)."""
    (covered,) = conn.execute("SELECT coalesce(min(upto), 0) FROM journal_slices").fetchone()
    doomed = []
    for account, event_id, batch_id in conn.execute(
        "SELECT account, event_id, batch_id FROM dedupe_overflow"
        " WHERE time_s < ? AND batch_id <= ?",
        (floor_s, covered),
    ).fetchall():
        holder = conn.execute(
            "SELECT batch_id, time_s FROM dedupe WHERE key = ?",
            (schema.overflow_key(account, event_id),),
        ).fetchone()
        if (
            holder is not None
            and holder[0] == batch_id
            and (holder[1] is None or holder[1] >= floor_s)
        ):
            continue
        doomed.append((account, event_id, batch_id))
    conn.executemany(
        "DELETE FROM dedupe_overflow WHERE account = ? AND event_id = ? AND batch_id = ?", doomed
    )
    return len(doomed)
