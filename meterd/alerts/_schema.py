"""The outbox table's DDL (schema version 9 of the store, :mod:`meterd.store.schema`);
imports nothing, so the store's schema module can take it without importing alerts."""

from typing import Final

OUTBOX_STATEMENTS: Final = (
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT    NOT NULL UNIQUE,
        account    TEXT    NOT NULL,
        alert      TEXT    NOT NULL,
        webhook    TEXT    NOT NULL,
        meter      TEXT    NOT NULL,
        period     TEXT    NOT NULL,
        event_id   TEXT    NOT NULL,
        batch_id   INTEGER NOT NULL,
        body       BLOB    NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_by_account ON alert_outbox (account, seq)",
)

OUTBOX_INSERT: Final = (
    "INSERT OR IGNORE INTO alert_outbox (id, account, alert, webhook, meter, period,"
    " event_id, batch_id, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
"""One crossing's row; an id already there is kept (one id, one crossing)."""
