"""The store's SQLite schema, its versions and forward migrations, and opening a database.

The schema version is ``PRAGMA user_version``; ``PRAGMA application_id`` marks the file as
a meterd store. :data:`MIGRATIONS` is the ordered list of steps: step ``n`` takes a database
from version ``n`` to ``n + 1``, so a new database runs them all and an old one the ones it
lacks. All pending steps run in **one** ``BEGIN IMMEDIATE`` transaction: a migration is
applied completely or not at all, and two processes opening the same new file cannot both
migrate it. A step is never edited once released; a change is a new step.

Versions:

1. ``event_batches`` (the journal: one row per accepted ``append``, the events as one
   msgpack blob, :mod:`meterd.store.codec`), ``dedupe`` (63-bit key of ``(account, id)``
   -> batch and fingerprint) with ``dedupe_overflow`` for true key collisions, ``windows``
   (checkpointed aggregate states), ``accounts`` (watermark).
2. ``quarantine``: events that crashed their actor when applied (docs/accounts.md).
3. ``event_batches.min_time`` / ``max_time`` (the event time range of each batch, backfilled
   from the payloads), and the by-account index extended to cover them, so the events
   endpoint skips batches outside the asked time range without reading their payload.
4. ``audit``: per account, each duplicate and each rejected event that names the account
   (billing support's explanations list them; docs/accounts.md "Audit trail"). Written by
   the writer in the transaction of the batch it belongs to.
5. The journal's by-account index becomes ``journal_index``, a table the writer fills in
   passes (:mod:`meterd.store.journal_index`), with ``journal_slices`` saying how far each
   slice of the accounts is indexed: appends no longer pay a random index page each. The
   migration indexes every batch already stored.
6. ``windows.dims`` becomes a JSON array of the dimension values
   (:func:`~meterd.store.codec.encode_dims`) instead of the values joined by ``"\x1f"``,
   which let two cells whose values contain that character share a row (the later one's
   usage was lost). Splitting an old key needs the meter's number of dimensions: the
   writer passes them from the configuration (``meter_dimensions``); a meter it does not
   know is split on every separator (an empty key: no dimensions). An account with a row
   that does not fit its meter (more values than dimensions: two cells shared it) has all
   its windows deleted and its watermark set to 0: its actor rebuilds them from the
   journal, which holds every event, when it next wakes.
7. Dedupe retention (docs/accounts.md "Dedupe retention"): ``dedupe.time_s`` and
   ``dedupe_overflow.time_s``, the event time of the row in seconds (floor), so rows past
   ``dedupe_window`` can be forgotten and deleted; ``dedupe_overflow`` keyed by
   ``(account, event_id, batch_id)`` (an id counted again after it was forgotten keeps one
   row per counted copy); ``store_meta`` holding the dedupe horizon. Rows stored before get
   the newest event time of their batch (``max_time``: never earlier than their own).
8. ``restarts``: the restart history of the supervision tree's nodes (by path: crashes,
   kills, operator restarts), kept across daemon restarts for the console
   (:mod:`meterd.store.restarts`; written on its own connection, never by the writer).
9. ``alert_outbox``: crossings of threshold alerts, written in the checkpoint transaction
   of the windows that produced them (:mod:`meterd.alerts._outbox`, docs/alerts.md).
10. ``quarantine_log``: the append-only record of quarantined events an operator released
    (re-applied: the copy in ``release_batch`` counts) or discarded (never counts), with who
    and why; the copy ``(account, batch_id, event_id)`` it names is never applied again
    (:mod:`meterd.store._quarantine`, docs/accounts.md "Quarantine: release and discard").
11. ``alert_rules``: alert rules of one account made through the API, with who and when
    created and deleted (rows stay: the audit trail; :mod:`meterd.alerts._rules`).
12. ``log_positions``: in cluster mode, the last sequence of each log (a JetStream stream's
    subject, docs/cluster.md) whose slice this store has applied, written in the
    transaction of that slice's rows (exactly-once application across restarts).

Tables at the latest version::

    event_batches(batch_id INTEGER PRIMARY KEY AUTOINCREMENT, account, received_at, count,
                  payload BLOB, min_time, max_time)
    journal_index(account, batch_id, min_time, max_time,
                  PRIMARY KEY(account, batch_id)) WITHOUT ROWID
    journal_slices(slice INTEGER PRIMARY KEY, upto)
    dedupe(key INTEGER PRIMARY KEY, batch_id, fingerprint, time_s)
    dedupe_overflow(account, event_id, batch_id, fingerprint, time_s,
                    PRIMARY KEY(account, event_id, batch_id)) WITHOUT ROWID
    windows(account, meter, start, dims, state BLOB,
            PRIMARY KEY(account, meter, start, dims)) WITHOUT ROWID
    accounts(account PRIMARY KEY, watermark, updated_at) WITHOUT ROWID
    quarantine(account, batch_id, event_id, error, at,
               PRIMARY KEY(account, batch_id, event_id)) WITHOUT ROWID
    audit(audit_id INTEGER PRIMARY KEY, account, kind, event_id, code, message, meter, time,
          properties, producer, seq, batch_id, received_at, position)
        index audit_by_account(account, position, audit_id)
    restarts(restart_id INTEGER PRIMARY KEY, path, at, kind, error_type, message)
        index restarts_by_path(path, restart_id)
    store_meta(name PRIMARY KEY, value) WITHOUT ROWID
    alert_outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, id UNIQUE, account, alert, webhook,
                 meter, period, event_id, batch_id, body BLOB, created_at)
        index alert_outbox_by_account(account, seq)
    quarantine_log(entry_id INTEGER PRIMARY KEY, account, batch_id, event_id, action,
                   release_batch, error, quarantined_at, by, reason, at)
        index quarantine_log_by_batch(account, batch_id, event_id)
    log_positions(log PRIMARY KEY, seq) WITHOUT ROWID
        index quarantine_log_by_event(account, event_id, entry_id)
    alert_rules(rule_id INTEGER PRIMARY KEY, account, name, meter, period, threshold, spend,
                webhook, created_by, created_at, deleted_by, deleted_at, armed_after)
        unique index alert_rules_live(account, name) WHERE deleted_at IS NULL

The ``dedupe.key`` of an event is :func:`dedupe_row_key`: 23 bits of the account
(:func:`account_bucket`) above the low 40 bits of ``Event.dedupe_key()``. Keys of one account
are neighbours in the B-tree, so a group transaction touches a few pages per account instead
of one random page per event (on 200k events it halved the commit cost and cut the lookups by
3x; at production sizes, where the index outgrows the page cache, it is the difference
between one read per account and one per event). Collisions are resolved exactly
(``dedupe_overflow``), they only cost time: within one account they become likely past
~1M ids in the table (40 bits). The derivation is part of the file format: changing it needs
a migration that rebuilds ``dedupe``.

``AUTOINCREMENT`` makes batch ids strictly increasing for the life of the file, even if the
newest batches are deleted one day (pruning): the journal order and the events cursor rely
on "a newer batch has a larger id".
"""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias
from urllib.parse import quote

import structlog

from meterd.alerts._schema import OUTBOX_STATEMENTS, RULES_STATEMENTS
from meterd.model import Event

from . import codec
from .errors import NotAStoreError, StoreError, StoreVersionError

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SLICES",
    "MeterDimensions",
    "Migration",
    "account_bucket",
    "IN_CHUNK",
    "dedupe_row_key",
    "dedupe_row_keys",
    "overflow_key",
    "read_meta",
    "stored_dedupe_rows",
    "write_meta",
    "open_database",
    "open_readonly",
    "slice_of",
]

log = structlog.get_logger("meterd.store")

APPLICATION_ID: Final = 0x6D657472  # "metr"
BUSY_TIMEOUT_MS: Final = 5_000
WRITER_CACHE_KIB: Final = 65_536
"""The writer connection's page cache (SQLite's default is 2 MiB): the dedupe index and the
journal's account index take random inserts (one per event and one per account share), and
once their hot pages outgrow the cache each insert costs a read from the OS."""


_EVENT_KEY_BITS: Final = 40
_EVENT_KEY_MASK: Final = (1 << _EVENT_KEY_BITS) - 1


SLICES: Final = 256
"""Slices of the accounts for the index passes (:mod:`meterd.store.journal_index`)."""


def slice_of(account: str) -> int:
    """The slice of ``account`` (0 to :data:`SLICES` - 1): CRC-32 of its UTF-8 bytes. Part of
    the file format (``journal_slices`` says how far each slice is indexed)."""
    return zlib.crc32(account.encode()) % SLICES


def account_bucket(account: str) -> int:
    """The high bits of the ``dedupe`` keys of ``account`` (23 bits, already shifted)."""
    digest = hashlib.blake2b(account.encode(), digest_size=4, person=b"meterd-dedupe").digest()
    return (int.from_bytes(digest, "big") >> 9) << _EVENT_KEY_BITS


def dedupe_row_key(bucket: int, event: Event) -> int:
    """The ``dedupe.key`` of ``event`` (63 bits): ``bucket`` is ``account_bucket(account)``."""
    return bucket | (event.dedupe_key() & _EVENT_KEY_MASK)


def dedupe_row_keys(buckets: Mapping[str, int], events: Iterable[Event]) -> list[int]:
    """``dedupe_row_key(buckets[event.account], event)`` of each event, computed inline
    (the writer's hot path: no method call per event). The derivation must stay
    ``Event.dedupe_key()``'s (tests/store/test_codec.py checks they agree)."""
    fresh = _EMPTY_DIGEST.copy  # copy() and update(): less than blake2b(data, digest_size=8)
    from_bytes = int.from_bytes
    mask = _EVENT_KEY_MASK
    keys: list[int] = []
    add = keys.append
    for e in events:
        digest = fresh()
        digest.update(f"{e.account}\x1f{e.id}".encode())
        add(buckets[e.account] | (from_bytes(digest.digest(), "big") >> 1 & mask))
    return keys


_EMPTY_DIGEST: Final = hashlib.blake2b(digest_size=8)


IN_CHUNK: Final = 500
"""Values per ``IN (...)`` lookup, well under SQLite's variable limit."""


def stored_dedupe_rows(
    conn: sqlite3.Connection, keys: Iterable[int]
) -> dict[int, tuple[int, int, int | None]]:
    """``(batch_id, fingerprint, time_s)`` of each of ``keys`` that has a ``dedupe`` row
    (``time_s``: the event's time in seconds, ``None`` if unknown)."""
    found: dict[int, tuple[int, int, int | None]] = {}
    pending = list(keys)
    for start in range(0, len(pending), IN_CHUNK):
        chunk = pending[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for key, batch_id, fingerprint, time_s in conn.execute(
            f"SELECT key, batch_id, fingerprint, time_s FROM dedupe WHERE key IN ({marks})",
            chunk,
        ):
            found[key] = (batch_id, fingerprint, time_s)
    return found


MeterDimensions: TypeAlias = Mapping[str, int]
"""Meter name -> its number of dimensions (what the configuration says), for migrations that
read stored keys made of dimension values."""


def overflow_key(account: str, event_id: str) -> int:
    """The ``dedupe.key`` that ``(account, event_id)`` has (an overflow row's key, which
    the table does not store): :func:`dedupe_row_key` without a whole event."""
    event = Event(event_id, account, "", 0, 0)
    return dedupe_row_key(account_bucket(account), event)


def read_meta(conn: sqlite3.Connection, name: str) -> int | None:
    """The ``store_meta`` value ``name`` (``None``: never written)."""
    row = conn.execute("SELECT value FROM store_meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def write_meta(conn: sqlite3.Connection, name: str, value: int) -> None:
    """Set the ``store_meta`` value ``name`` (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO store_meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: ``apply(conn, meter_dimensions)`` takes the database from ``version - 1`` to
    ``version`` (``meter_dimensions`` is empty when the opener knows no configuration)."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection, MeterDimensions], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection, MeterDimensions], None]:
    # Not executescript(): it COMMITs first, and a migration must stay one transaction.
    def apply(conn: sqlite3.Connection, meter_dimensions: MeterDimensions) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


WINDOWS_TABLE: Final = """CREATE TABLE windows (
        account TEXT    NOT NULL,
        meter   TEXT    NOT NULL,
        start   INTEGER NOT NULL,
        dims    TEXT    NOT NULL,
        state   BLOB    NOT NULL,
        PRIMARY KEY (account, meter, start, dims)
    ) WITHOUT ROWID"""


V1_STATEMENTS: Final = (
    f"PRAGMA application_id = {APPLICATION_ID}",
    """CREATE TABLE event_batches (
        batch_id    INTEGER PRIMARY KEY AUTOINCREMENT,
        account     TEXT    NOT NULL,
        received_at INTEGER NOT NULL,
        count       INTEGER NOT NULL,
        payload     BLOB    NOT NULL
    )""",
    "CREATE INDEX event_batches_by_account ON event_batches (account, batch_id)",
    """CREATE TABLE dedupe (
        key         INTEGER PRIMARY KEY,
        batch_id    INTEGER NOT NULL,
        fingerprint INTEGER NOT NULL
    )""",
    """CREATE TABLE dedupe_overflow (
        account     TEXT    NOT NULL,
        event_id    TEXT    NOT NULL,
        batch_id    INTEGER NOT NULL,
        fingerprint INTEGER NOT NULL,
        PRIMARY KEY (account, event_id)
    ) WITHOUT ROWID""",
    WINDOWS_TABLE,
    """CREATE TABLE accounts (
        account    TEXT    NOT NULL PRIMARY KEY,
        watermark  INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

V2_STATEMENTS: Final = (
    """CREATE TABLE quarantine (
        account  TEXT    NOT NULL,
        batch_id INTEGER NOT NULL,
        event_id TEXT    NOT NULL,
        error    TEXT    NOT NULL,
        at       INTEGER NOT NULL,
        PRIMARY KEY (account, batch_id, event_id)
    ) WITHOUT ROWID""",
)


def _v3_batch_time_bounds(conn: sqlite3.Connection, meter_dimensions: MeterDimensions) -> None:
    conn.execute("ALTER TABLE event_batches ADD COLUMN min_time INTEGER")
    conn.execute("ALTER TABLE event_batches ADD COLUMN max_time INTEGER")
    last = 0
    while True:
        rows = conn.execute(
            "SELECT batch_id, payload FROM event_batches WHERE batch_id > ?"
            " ORDER BY batch_id LIMIT 1000",
            (last,),
        ).fetchall()
        if not rows:
            break
        updates = []
        for batch_id, payload in rows:
            low, high = codec.batch_time_bounds(payload, where=f"batch {batch_id}")
            updates.append((low, high, batch_id))
        conn.executemany(
            "UPDATE event_batches SET min_time = ?, max_time = ? WHERE batch_id = ?", updates
        )
        last = rows[-1][0]
    conn.execute("DROP INDEX event_batches_by_account")
    conn.execute(
        "CREATE INDEX event_batches_by_account_time"
        " ON event_batches (account, batch_id, min_time, max_time)"
    )


V4_STATEMENTS: Final = (
    # kind: 'duplicate' or 'rejected'; code: the rejection code (NULL for a duplicate);
    # event_id / meter / time / properties (JSON object): NULL where the event's was invalid;
    # batch_id: the journal batch holding the counted copy (duplicate, id_conflict);
    # seq: the producer's batch seq; position: time if known, else received_at (the key
    # the reader pages by, so every row has a place in time).
    """CREATE TABLE audit (
        audit_id    INTEGER PRIMARY KEY,
        account     TEXT    NOT NULL,
        kind        TEXT    NOT NULL,
        event_id    TEXT,
        code        TEXT,
        message     TEXT,
        meter       TEXT,
        time        INTEGER,
        properties  TEXT,
        producer    TEXT,
        seq         INTEGER,
        batch_id    INTEGER,
        received_at INTEGER NOT NULL,
        position    INTEGER NOT NULL
    )""",
    "CREATE INDEX audit_by_account ON audit (account, position, audit_id)",
)


def _v5_deferred_journal_index(conn: sqlite3.Connection, meter_dimensions: MeterDimensions) -> None:
    conn.execute("DROP INDEX event_batches_by_account_time")
    conn.execute(
        """CREATE TABLE journal_index (
            account  TEXT    NOT NULL,
            batch_id INTEGER NOT NULL,
            min_time INTEGER,
            max_time INTEGER,
            PRIMARY KEY (account, batch_id)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        "INSERT INTO journal_index (account, batch_id, min_time, max_time)"
        " SELECT account, batch_id, min_time, max_time FROM event_batches"
        " ORDER BY account, batch_id"
    )
    conn.execute("CREATE TABLE journal_slices (slice INTEGER PRIMARY KEY, upto INTEGER NOT NULL)")
    (top,) = conn.execute("SELECT coalesce(max(batch_id), 0) FROM event_batches").fetchone()
    conn.executemany(
        "INSERT INTO journal_slices (slice, upto) VALUES (?, ?)",
        [(k, top) for k in range(SLICES)],
    )


def _v6_injective_window_dims(conn: sqlite3.Connection, meter_dimensions: MeterDimensions) -> None:
    # Into a new table: an old key may look like a new one ('["a"]' was a valid value).
    conn.execute(WINDOWS_TABLE.replace("CREATE TABLE windows", "CREATE TABLE windows_v6"))
    rebuild: set[str] = set()  # accounts with a row that does not fit its meter
    rows = conn.execute("SELECT account, meter, start, dims, state FROM windows")
    while chunk := rows.fetchmany(10_000):
        converted = []
        for account, meter, start, old, state in chunk:
            count = meter_dimensions.get(meter)
            if count == 1:
                values = [old]
            elif old == "":  # () or ("",): the configuration says which (unknown meter: ())
                values = []
            else:
                values = old.split("\x1f")
            if count is not None and len(values) != count:
                # Two cells shared this row (a value held U+001F), or the meter's dimensions
                # changed since it was written: only the journal can say what it should hold.
                rebuild.add(account)
            else:
                converted.append((account, meter, start, codec.encode_dims(values), state))
        conn.executemany("INSERT INTO windows_v6 VALUES (?, ?, ?, ?, ?)", converted)
    conn.execute("DROP TABLE windows")
    conn.execute("ALTER TABLE windows_v6 RENAME TO windows")
    for account in sorted(rebuild):
        conn.execute("DELETE FROM windows WHERE account = ?", (account,))
        conn.execute("UPDATE accounts SET watermark = 0 WHERE account = ?", (account,))
        log.warning(
            "store_windows_rebuilt",
            account=account,
            reason="a window row did not fit its meter's dimensions; the account's windows"
            " are rebuilt from the journal when it next wakes",
        )


_FLOOR_SECONDS: Final = "(({ms}) - ((({ms}) % 1000) + 1000) % 1000) / 1000"
"""SQL: ``floor(ms / 1000)`` (SQLite's ``/`` and ``%`` truncate toward zero)."""


def _dedupe_event_times(conn: sqlite3.Connection, meter_dimensions: MeterDimensions) -> None:
    """Version 7 (docs at the top): every dedupe row gets its event time, in seconds.

    Rows written before this step get their batch's ``max_time``, which is never earlier
    than their event's: such a row is forgotten no sooner than it should be (later by at
    most the spread of its batch's times). A row whose batch is missing keeps ``NULL``
    (never forgotten)."""
    batch_seconds = _FLOOR_SECONDS.format(ms="b.max_time")
    conn.execute("ALTER TABLE dedupe ADD COLUMN time_s INTEGER")
    conn.execute(
        f"UPDATE dedupe SET time_s = (SELECT {batch_seconds} FROM event_batches b"
        " WHERE b.batch_id = dedupe.batch_id)"
    )
    conn.execute(
        """CREATE TABLE dedupe_overflow_v7 (
            account     TEXT    NOT NULL,
            event_id    TEXT    NOT NULL,
            batch_id    INTEGER NOT NULL,
            fingerprint INTEGER NOT NULL,
            time_s      INTEGER,
            PRIMARY KEY (account, event_id, batch_id)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        "INSERT INTO dedupe_overflow_v7 (account, event_id, batch_id, fingerprint, time_s)"
        f" SELECT o.account, o.event_id, o.batch_id, o.fingerprint, (SELECT {batch_seconds}"
        " FROM event_batches b WHERE b.batch_id = o.batch_id) FROM dedupe_overflow o"
    )
    conn.execute("DROP TABLE dedupe_overflow")
    conn.execute("ALTER TABLE dedupe_overflow_v7 RENAME TO dedupe_overflow")
    conn.execute(
        "CREATE TABLE store_meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)"
        " WITHOUT ROWID"
    )


V8_STATEMENTS: Final = (
    # path: node names from the root (root/accounts/meters/acme); at: Unix ms; kind: crash,
    # killed, shutdown, sibling, operator, ...; error_type, message: why (docs/console.md).
    # IF NOT EXISTS: a store made to look older (tests lower user_version) keeps the table.
    """CREATE TABLE IF NOT EXISTS restarts (
        restart_id INTEGER PRIMARY KEY,
        path       TEXT    NOT NULL,
        at         INTEGER NOT NULL,
        kind       TEXT    NOT NULL,
        error_type TEXT,
        message    TEXT    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS restarts_by_path ON restarts (path, restart_id)",
)

V10_STATEMENTS: Final = (
    # IF NOT EXISTS: the step may be renumbered when branches merge; it stays idempotent.
    """CREATE TABLE IF NOT EXISTS quarantine_log (
        entry_id       INTEGER PRIMARY KEY,
        account        TEXT    NOT NULL,
        batch_id       INTEGER NOT NULL,
        event_id       TEXT    NOT NULL,
        action         TEXT    NOT NULL CHECK (action IN ('released', 'discarded')),
        release_batch  INTEGER,
        error          TEXT    NOT NULL,
        quarantined_at INTEGER NOT NULL,
        by             TEXT    NOT NULL,
        reason         TEXT    NOT NULL,
        at             INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS quarantine_log_by_batch"
    " ON quarantine_log (account, batch_id, event_id)",
    "CREATE INDEX IF NOT EXISTS quarantine_log_by_event"
    " ON quarantine_log (account, event_id, entry_id)",
)

V12_STATEMENTS: Final = (
    # log: a log's name (cluster mode: "<stream>/<subject>"); seq: the last applied sequence.
    # IF NOT EXISTS: the step may be renumbered when branches merge; it stays idempotent.
    """CREATE TABLE IF NOT EXISTS log_positions (
        log TEXT    NOT NULL PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "journal, dedupe index, windows, accounts", _statements(*V1_STATEMENTS)),
    Migration(2, "quarantine table", _statements(*V2_STATEMENTS)),
    Migration(3, "event time range per batch (events endpoint)", _v3_batch_time_bounds),
    Migration(4, "audit trail of duplicates and rejections", _statements(*V4_STATEMENTS)),
    Migration(5, "journal index filled in passes", _v5_deferred_journal_index),
    Migration(6, "injective window dimension keys", _v6_injective_window_dims),
    Migration(7, "event times in the dedupe index (retention)", _dedupe_event_times),
    Migration(8, "restart history of the tree's nodes", _statements(*V8_STATEMENTS)),
    Migration(9, "alert outbox (meterd.alerts)", _statements(*OUTBOX_STATEMENTS)),
    Migration(10, "quarantine releases and discards", _statements(*V10_STATEMENTS)),
    Migration(11, "alert rules of one account (meterd.alerts)", _statements(*RULES_STATEMENTS)),
    Migration(12, "applied log positions (cluster mode)", _statements(*V12_STATEMENTS)),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The newest schema version this code knows (and the one it migrates to)."""


def _user_version(conn: sqlite3.Connection) -> int:
    value = conn.execute("PRAGMA user_version").fetchone()[0]
    assert isinstance(value, int)
    return value


def _check_identity(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Refuse another application's database and a schema newer than this code."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id not in (0, APPLICATION_ID):
        raise NotAStoreError(
            f"database {path} belongs to another application (application_id {app_id:#x});"
            " point store.path at a meterd store or a new file"
        )
    if version == 0:
        tables = conn.execute(
            "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
        ).fetchone()[0]
        if tables:
            raise NotAStoreError(
                f"database {path} has tables but no meterd schema version; it is not a meterd"
                " store: point store.path at a meterd store or a new file"
            )
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"database {path} is schema version {version}, this meterd knows up to"
            f" {SCHEMA_VERSION}; upgrade meterd or use another store.path"
        )


def _check_migrated(path: Path, version: int) -> None:
    if version < SCHEMA_VERSION:
        raise StoreVersionError(
            f"database {path} is schema version {version}, this meterd reads version"
            f" {SCHEMA_VERSION}; the store writer migrates it when it opens: start it first"
        )


def _set_durable_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"database {path}: cannot switch to WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")


def _connect(
    path: Path, *, create: bool, factory: type[sqlite3.Connection] = sqlite3.Connection
) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    uri = f"file:{quote(str(path))}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, factory=factory
        )
    except sqlite3.Error as exc:
        what = "create" if create else "open"
        raise StoreError(f"cannot {what} database {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlite3.Connection, path: Path, meter_dimensions: MeterDimensions) -> int:
    """Run the missing steps in one transaction; the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _user_version(conn)  # again, under the write lock
        _check_identity(conn, path, found)
        for step in MIGRATIONS[found:]:
            try:
                step.apply(conn, meter_dimensions)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"database {path}: migration to schema version {step.version}"
                    f" ({step.description}) failed: {exc}"
                ) from exc
        if found < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def open_database(
    path: Path | str,
    *,
    meter_dimensions: MeterDimensions | None = None,
    check: Callable[[sqlite3.Connection, int], None] | None = None,
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> sqlite3.Connection:
    """The writer's connection to the store at ``path``, migrated to :data:`SCHEMA_VERSION`.

    ``meter_dimensions`` (meter name -> number of dimensions, from the configuration) is
    what migrations that re-read stored dimension keys need (version 6).

    Creates the file and its parent directories if needed; sets ``journal_mode=WAL`` (readers
    do not block the writer) and ``synchronous=FULL`` (a committed transaction is fsync'ed to
    the WAL before ``COMMIT`` returns: an acknowledged event survives ``kill -9`` and power
    loss). Raises :class:`StoreVersionError` for a database newer than this code,
    :class:`NotAStoreError` for a file that is not a meterd store, :class:`StoreError` for
    anything else, each naming the file.

    The connection is in autocommit mode (``isolation_level=None``: the caller writes
    ``BEGIN``/``COMMIT``) and may be used from any one thread at a time.

    ``check(connection, version)``, if given, runs before any migration writes anything (the
    writer's commit mark: :mod:`meterd.store.commitmark`); what it raises closes the
    connection and propagates. ``factory``: the connection's class (``sqlite3.connect``'s).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory of database {path}: {exc}") from exc
    conn = _connect(path, create=True, factory=factory)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            version = _user_version(conn)
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{path} is not a SQLite database ({exc})") from exc
        _check_identity(conn, path, version)  # before anything is written
        _set_durable_wal(conn, path)
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        if check is not None:
            check(conn, version)
        found = _migrate(conn, path, meter_dimensions or {})
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    if found < SCHEMA_VERSION:
        log.info("store_migrated", path=str(path), from_version=found, to_version=SCHEMA_VERSION)
    return conn


def open_readonly(path: Path | str) -> sqlite3.Connection:
    """A read-only connection to an existing store at the latest schema version.

    Never creates or migrates (the writer does: open it first); refuses other versions with
    :class:`StoreVersionError`. ``query_only`` makes any write through it an error.
    """
    path = Path(path)
    conn = _connect(path, create=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
        try:
            version = _user_version(conn)
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{path} is not a SQLite database ({exc})") from exc
        _check_identity(conn, path, version)
        _check_migrated(path, version)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open database {path} for reading: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
