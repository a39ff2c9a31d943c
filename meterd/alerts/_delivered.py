"""What a shard's deliveries database knows delivered, and how another's is merged into it
(cluster mode: the copy in the shard's snapshot). Its schema is here too; the delivery
service (:mod:`._delivery`) uses it. Standard library only: the cluster layer calls
:func:`import_delivered` and :func:`delivered_count` without loading the delivery service.

Only ids (and when they were delivered) are merged, into ``delivered_elsewhere``; another
database's ``cursor`` and ``seq`` are never read: the outbox's ``seq`` is numbered by the
store that wrote it (per node), so another node's would make this one skip crossings.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

__all__ = [
    "SCHEMA",
    "connect",
    "delivered_count",
    "import_delivered",
    "read_delivered",
    "rebase_deliveries",
]

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        id               TEXT    NOT NULL PRIMARY KEY,
        seq              INTEGER NOT NULL UNIQUE,
        account          TEXT    NOT NULL,
        alert            TEXT    NOT NULL,
        webhook          TEXT    NOT NULL,
        period           TEXT    NOT NULL,
        event_id         TEXT    NOT NULL,
        body             BLOB    NOT NULL,
        created_at       INTEGER NOT NULL,
        status           TEXT    NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        first_attempt_at INTEGER,
        last_attempt_at  INTEGER,
        next_attempt_at  INTEGER,
        last_error       TEXT,
        delivered_at     INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, seq)",
    "CREATE TABLE IF NOT EXISTS cursor (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER)",
    # ids another process delivered (import_delivered): recorded delivered when they come
    """CREATE TABLE IF NOT EXISTS delivered_elsewhere (
        id           TEXT    NOT NULL PRIMARY KEY,
        delivered_at INTEGER
    )""",
)
# Every id known delivered in a deliveries database: its own and those it imported, but for
# an id its own record has pending (an operator's redelivery: to be sent again).
_DELIVERED_IDS: Final = (
    "SELECT id, delivered_at FROM deliveries WHERE status = 'delivered'",
    "SELECT id, delivered_at FROM delivered_elsewhere"
    " WHERE id NOT IN (SELECT id FROM deliveries WHERE status = 'pending')",
)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the deliveries database at ``path`` (made if missing), its schema
    created; autocommit (each caller opens its transactions)."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


def read_delivered(source: Path) -> list[tuple[str, int | None]]:
    """Every id known delivered in the deliveries database ``source`` (a copy, read-only;
    a copy made before ``delivered_elsewhere`` existed has only its own)."""
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        found: list[tuple[str, int | None]] = []
        for sql in _DELIVERED_IDS:
            try:
                found.extend((str(i), None if t is None else int(t)) for i, t in conn.execute(sql))
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):
                    raise
        return found
    finally:
        conn.close()


def import_delivered(deliveries_path: Path, source: Path) -> int:
    """Learn which crossings were delivered from ``source``, a copy of another deliveries
    database of the same shard (cluster mode: from the shard's snapshot): the ids it records
    delivered (and those it had imported) are merged into ``delivered_elsewhere`` of the
    database at ``deliveries_path`` (made if missing; nothing else of it is replaced), and
    its own ``pending`` rows with those ids become ``delivered``. Only ids: the copy's cursor
    and ``seq`` are never read (see the module doc). Returns how many ids were new. Blocking
    (run it in a thread, while no delivery service runs on ``deliveries_path``)."""
    delivered = read_delivered(source)
    conn = connect(deliveries_path)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO delivered_elsewhere (id, delivered_at) VALUES (?, ?)",
                delivered,
            )
            added = conn.total_changes - before
            conn.execute(
                "UPDATE deliveries SET status = 'delivered', next_attempt_at = NULL,"
                " delivered_at = (SELECT e.delivered_at FROM delivered_elsewhere e"
                " WHERE e.id = deliveries.id)"
                " WHERE status = 'pending' AND id IN (SELECT id FROM delivered_elsewhere)"
            )
        return added
    finally:
        conn.close()


def rebase_deliveries(deliveries_path: Path) -> int:
    """The store that the deliveries database at ``deliveries_path`` followed is being
    replaced by another's copy (cluster mode: a shard's store restored from a snapshot made
    by another node): its rows' ``seq`` and its ``cursor`` number the old store's outbox, and
    kept they would make the delivery service skip, or fail to record, crossings of the new
    one. So what it knows delivered is kept by id (into ``delivered_elsewhere``) and its
    ``deliveries`` and ``cursor`` are emptied: the service then follows the new outbox from
    its start, records the crossings known delivered as delivered and sends every other one
    (a crossing that had failed here is attempted again). Returns the rows let go (0: no
    such file). Blocking (run it in a thread, while no delivery service runs on it)."""
    if not deliveries_path.exists():
        return 0
    conn = connect(deliveries_path)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO delivered_elsewhere (id, delivered_at)"
                " SELECT id, delivered_at FROM deliveries WHERE status = 'delivered'"
            )
            dropped = conn.execute("DELETE FROM deliveries").rowcount
            conn.execute("DELETE FROM cursor")
        return dropped
    finally:
        conn.close()


def delivered_count(path: Path) -> int:
    """How many distinct ids the deliveries database at ``path`` knows delivered (its own
    and imported; 0: no such file). Read-only; blocking (run it in a thread)."""
    if not path.exists():
        return 0
    return len({id for id, _ in read_delivered(path)})
