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

RULES_STATEMENTS: Final = (
    # One row per rule created through the API (docs/alerts.md "Rules of one account"):
    # threshold / spend as decimal strings (one of them set), who and when it was created
    # and, once deleted, who and when (the row stays: the audit trail; crossings and
    # deliveries keep their rule's name). One live rule per (account, name). armed_after:
    # the last journal batch committed before it; it evaluates the events of later ones.
    """CREATE TABLE IF NOT EXISTS alert_rules (
        rule_id    INTEGER PRIMARY KEY,
        account    TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        meter      TEXT    NOT NULL,
        period     TEXT    NOT NULL,
        threshold  TEXT,
        spend      TEXT,
        webhook    TEXT    NOT NULL,
        created_by TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        deleted_by TEXT,
        deleted_at INTEGER,
        armed_after INTEGER NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS alert_rules_live ON alert_rules (account, name)"
    " WHERE deleted_at IS NULL",
)

RULE_INSERT: Final = (
    "INSERT INTO alert_rules (account, name, meter, period, threshold, spend, webhook,"
    " created_by, created_at, armed_after) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'event_batches')"
    " WHERE NOT EXISTS"
    " (SELECT 1 FROM alert_rules WHERE account = ? AND name = ? AND deleted_at IS NULL)"
)
"""A new live rule, unless the account has a live rule of that name (then no row)."""

RULE_DELETE: Final = (
    "UPDATE alert_rules SET deleted_by = ?, deleted_at = ?"
    " WHERE account = ? AND name = ? AND deleted_at IS NULL"
)
"""The live rule of that name marked deleted (its row stays, with who and when)."""
