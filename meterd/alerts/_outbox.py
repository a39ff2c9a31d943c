"""The alert outbox: one row per decided crossing, in the store, written in the same
transaction as the checkpoint of the windows (and watermark) that produced it.

Schema version 9 of the store (:data:`OUTBOX_STATEMENTS`, run by
:mod:`meterd.store.schema`)::

    alert_outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, id UNIQUE, account, alert, webhook,
                 meter, period, event_id, batch_id, body BLOB, created_at)

``id`` is the crossing's id (derived from rule, account and period): writing a crossing
again is a no-op (``INSERT OR IGNORE``), so an id is one crossing forever, with the body
first written. Rows are only ever appended; ``seq`` grows in commit order, so the delivery
service follows the table with a cursor. Delivery state lives in the delivery service's
own database (:mod:`meterd.alerts._delivery`), so the store's single writer is the only
writer of this file and delivery never waits for it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

from ._eval import Crossing
from ._schema import OUTBOX_INSERT, OUTBOX_STATEMENTS

__all__ = [
    "OUTBOX_STATEMENTS",
    "OutboxRow",
    "crossed_ids",
    "outbox_after",
    "outbox_rows",
    "write_crossings",
]


class OutboxRow(NamedTuple):
    seq: int
    id: str
    account: str
    alert: str
    webhook: str
    meter: str
    period: str
    event_id: str
    batch_id: int
    body: bytes
    created_at: int


def outbox_rows(crossings: Sequence[Crossing]) -> list[tuple[object, ...]]:
    """The ``alert_outbox`` rows of ``crossings``, for the checkpoint's transaction (the
    writer's ``Checkpoint.rows``, statement :data:`~._schema.OUTBOX_INSERT`)."""
    return [
        (
            c.id,
            c.account,
            c.rule.name,
            c.rule.webhook,
            c.rule.meter,
            c.period,
            c.event_id,
            c.batch_id,
            c.body(),
            c.created_at,
        )
        for c in crossings
    ]


def write_crossings(conn: sqlite3.Connection, crossings: Sequence[Crossing]) -> None:
    """Append ``crossings`` (inside the caller's transaction; tools and benchmarks)."""
    conn.executemany(OUTBOX_INSERT, outbox_rows(crossings))


def crossed_ids(conn: sqlite3.Connection, account: str) -> set[str]:
    """The ids of every crossing already decided for ``account``."""
    return {
        str(row[0])
        for row in conn.execute("SELECT id FROM alert_outbox WHERE account = ?", (account,))
    }


def outbox_after(conn: sqlite3.Connection, seq: int, limit: int = 1000) -> list[OutboxRow]:
    """Outbox rows with ``seq`` above ``seq``, oldest first."""
    return [
        OutboxRow(*row)
        for row in conn.execute(
            "SELECT seq, id, account, alert, webhook, meter, period, event_id, batch_id, body,"
            " created_at FROM alert_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
    ]
