"""The billing database: corrections, closed periods and restatements (its own SQLite file).

It lives beside the store (``[billing] path``), never inside it: the store belongs to the
ingest path and its writer. Schema versioned like the store's (``PRAGMA user_version``,
``application_id`` "bill", forward migrations run in one transaction), WAL with
``synchronous=FULL``. Every record is **append-only**: triggers refuse ``UPDATE`` and
``DELETE`` on every table, so a correction can only ever be corrected by another record.

Queries run off the Trio thread (``trio.to_thread``) on one connection, one at a time.

Version 1 tables::

    adjustments(id, account, meter, start, end_ms, dims JSON, kind, quantity TEXT,
                made_by, made_at, reason)
    voids(id, account, event_id UNIQUE per account, meter, time, dims JSON, quantity TEXT,
          made_by, made_at, reason)
    closures(period PRIMARY KEY, made_by, made_at, accounts)
    closed_invoices(period, account, total TEXT, lines JSON, unpriced JSON)
    restatements(id, period, account, made_at, causes JSON, old_total, new_total,
                 changes JSON, lines JSON)

Version 2 adds ``restatements.unpriced`` (JSON, the unpriced usage after the restatement,
compared like the lines; NULL in rows written by version 1: their unpriced usage is taken
to be the closing's), and ``seen`` on ``closures`` and ``restatements``: JSON
``[last adjustment id, last void id]`` when the figures were fixed, so a restatement found
later can name the corrections recorded since (a crash between a correction and its
restatement must not lose the cause); NULL in rows written by version 1.

Version 3 adds ``log_corrections(seq PRIMARY KEY, kind, row_id)`` (append-only): in cluster
mode a correction is applied from the shard's log, and the stream sequence it came from is
written in the same transaction as its row, so a replay of the log applies it once
(:meth:`BillingDB.logged_correction`).

Version 4 adds ``idempotency_key`` to ``adjustments`` and ``voids`` (the client's
``Idempotency-Key``, or one the server generated), unique per account in each table by a
partial index and across both by :func:`_keyed`, checked in the transaction that records a
correction: the same key again returns the first record (``replayed``) and writes nothing;
with a different request it is a :class:`Conflict` ``idempotency_conflict`` naming the
field. Rows written before version 4 have NULL (no key).

Version 5 adds ``closures.log_seq``: in cluster mode a month is closed from the shard's log
(a ``Close`` message), and the stream sequence it came from is written with the closing's
figures in one transaction, so a replay of the log finds the month closed and fixes
nothing again; NULL for a month closed by the API on one host (or before version 5).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar, overload
from urllib.parse import quote

import structlog
import trio

from ._corrections import (
    Adjustment,
    AdjustmentKind,
    AdjustmentRequest,
    CorrectionRequest,
    Void,
    VoidRequest,
    replay,
)
from ._errors import BillingError, Conflict, Unavailable
from ._json import Slices, encode_json, loads_array
from ._period import Period
from ._rating import Invoice, InvoiceLine, Unpriced
from ._restate import LineChange, Restatement

__all__ = ["SCHEMA_VERSION", "BillingDB", "Closure", "StoredFigures"]

log = structlog.get_logger("meterd.billing")
T = TypeVar("T")

APPLICATION_ID: Final = 0x62696C6C  # "bill"
_TABLES: Final = ("adjustments", "voids", "closures", "closed_invoices", "restatements")

_V1: Final = (
    f"PRAGMA application_id = {APPLICATION_ID}",
    """CREATE TABLE adjustments (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        account  TEXT    NOT NULL,
        meter    TEXT    NOT NULL,
        start    INTEGER NOT NULL,
        end_ms   INTEGER NOT NULL,
        dims     TEXT    NOT NULL,
        kind     TEXT    NOT NULL CHECK (kind IN ('credit', 'debit')),
        quantity TEXT    NOT NULL,
        made_by  TEXT    NOT NULL,
        made_at  INTEGER NOT NULL,
        reason   TEXT    NOT NULL
    )""",
    "CREATE INDEX adjustments_by_account ON adjustments (account, start)",
    """CREATE TABLE voids (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        account  TEXT    NOT NULL,
        event_id TEXT    NOT NULL,
        meter    TEXT    NOT NULL,
        time     INTEGER NOT NULL,
        dims     TEXT    NOT NULL,
        quantity TEXT    NOT NULL,
        made_by  TEXT    NOT NULL,
        made_at  INTEGER NOT NULL,
        reason   TEXT    NOT NULL,
        UNIQUE (account, event_id)
    )""",
    """CREATE TABLE closures (
        period   TEXT    NOT NULL PRIMARY KEY,
        made_by  TEXT    NOT NULL,
        made_at  INTEGER NOT NULL,
        accounts INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE closed_invoices (
        period   TEXT NOT NULL,
        account  TEXT NOT NULL,
        total    TEXT NOT NULL,
        lines    TEXT NOT NULL,
        unpriced TEXT NOT NULL,
        PRIMARY KEY (period, account)
    ) WITHOUT ROWID""",
    """CREATE TABLE restatements (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        period    TEXT    NOT NULL,
        account   TEXT    NOT NULL,
        made_at   INTEGER NOT NULL,
        causes    TEXT    NOT NULL,
        old_total TEXT    NOT NULL,
        new_total TEXT    NOT NULL,
        changes   TEXT    NOT NULL,
        lines     TEXT    NOT NULL
    )""",
    "CREATE INDEX restatements_by_account ON restatements (account, period, id)",
    *(
        f"CREATE TRIGGER {table}_append_only_{verb.lower()} BEFORE {verb} ON {table}"
        f" BEGIN SELECT RAISE(ABORT, 'billing records are append-only: {table}'); END"
        for table in _TABLES
        for verb in ("UPDATE", "DELETE")
    ),
)

_V2: Final = (
    "ALTER TABLE restatements ADD COLUMN unpriced TEXT",
    "ALTER TABLE restatements ADD COLUMN seen TEXT",
    "ALTER TABLE closures ADD COLUMN seen TEXT",
)

_V3: Final = (
    """CREATE TABLE log_corrections (
        seq    INTEGER PRIMARY KEY,
        kind   TEXT    NOT NULL,
        row_id INTEGER NOT NULL
    )""",
    *(
        f"CREATE TRIGGER log_corrections_append_only_{verb.lower()} BEFORE {verb}"
        " ON log_corrections BEGIN"
        " SELECT RAISE(ABORT, 'billing records are append-only: log_corrections'); END"
        for verb in ("UPDATE", "DELETE")
    ),
)

_V4: Final = (
    "ALTER TABLE adjustments ADD COLUMN idempotency_key TEXT",
    "ALTER TABLE voids ADD COLUMN idempotency_key TEXT",
    "CREATE UNIQUE INDEX adjustments_by_key ON adjustments (account, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX voids_by_key ON voids (account, idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
)

_V5: Final = ("ALTER TABLE closures ADD COLUMN log_seq INTEGER",)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1, _V2, _V3, _V4, _V5)
SCHEMA_VERSION: Final = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Closure:
    period: Period
    by: str
    at: int
    accounts: int
    log_seq: int | None = None  # cluster mode: the shard's log sequence of its Close


@dataclass(frozen=True, slots=True)
class StoredFigures:
    """A period's figures as fixed: at closing, or by the latest restatement."""

    total: Decimal
    lines: tuple[InvoiceLine, ...]
    unpriced: tuple[Unpriced, ...] = ()


def _open(path: Path) -> sqlite3.Connection:
    """Open, check and migrate the billing database.

    The same steps as the store's ``open_database``, kept apart on purpose: those helpers are
    private to the store (owned elsewhere and not to be coupled to), and raise store errors
    about a store file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode=rwc",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except (OSError, sqlite3.Error) as exc:
        raise BillingError(f"cannot open the billing database {path}: {exc}") from exc
    try:
        found = _prepare(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BillingError(f"cannot open the billing database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    if found < SCHEMA_VERSION:
        log.info("billing_db_migrated", path=str(path), from_version=found, to=SCHEMA_VERSION)
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> int:
    """Check the file is ours, switch to WAL, migrate; the version found before."""
    conn.execute("PRAGMA busy_timeout = 5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and version):
        raise BillingError(f"{path} is not a meterd billing database; use another path")
    if version > SCHEMA_VERSION:
        raise BillingError(
            f"billing database {path} is schema version {version}, this meterd knows up"
            f" to {SCHEMA_VERSION}"
        )
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
        raise BillingError(f"billing database {path}: cannot switch to WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        found: int = conn.execute("PRAGMA user_version").fetchone()[0]
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        if found < SCHEMA_VERSION:  # else write nothing: a start must not need free space
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


Fence = Callable[[], str | None]
"""Asked right before a correction's transaction commits (cluster mode: the shard's lease):
None while it may commit, else why not (the transaction is rolled back: nothing written)."""


def _fenced(fence: Fence | None) -> None:
    reason = None if fence is None else fence()
    if reason is not None:
        raise Unavailable(f"nothing was recorded: {reason}", code="fenced")


def _logged(conn: sqlite3.Connection, seq: int | None, kind: str, row_id: int) -> None:
    if seq is not None:
        conn.execute(
            "INSERT INTO log_corrections (seq, kind, row_id) VALUES (?, ?, ?)", (seq, kind, row_id)
        )


@overload
def _replayed(
    conn: sqlite3.Connection,
    wanted: AdjustmentRequest,
    log_seq: int | None,
    kind: str,
    fence: Fence | None,
) -> Adjustment | None: ...
@overload
def _replayed(
    conn: sqlite3.Connection,
    wanted: VoidRequest,
    log_seq: int | None,
    kind: str,
    fence: Fence | None,
) -> Void | None: ...
def _replayed(
    conn: sqlite3.Connection,
    wanted: CorrectionRequest,
    log_seq: int | None,
    kind: str,
    fence: Fence | None,
) -> Adjustment | Void | None:
    """The correction recorded under ``wanted``'s key as its answer (``replayed``; its log
    sequence kept, the fence asked), :class:`Conflict` when it was another request, None
    when the key is unused (or None)."""
    if wanted.key is None:
        return None
    found = _keyed(conn, wanted.account, wanted.key)
    if found is None:
        return None
    replayed = replay(found, wanted)
    _logged(conn, log_seq, kind, found.id)
    _fenced(fence)
    return replayed


def _inserted(
    conn: sqlite3.Connection,
    cursor: sqlite3.Cursor,
    log_seq: int | None,
    kind: str,
    fence: Fence | None,
) -> int:
    """The id of the correction ``cursor`` inserted, its log sequence kept, the fence asked."""
    row_id = cursor.lastrowid
    assert row_id is not None
    _logged(conn, log_seq, kind, row_id)
    _fenced(fence)
    return row_id


def _keyed(conn: sqlite3.Connection, account: str, key: str) -> Adjustment | Void | None:
    """The correction of ``account`` recorded under idempotency ``key`` (None: none is)."""
    row = conn.execute(
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM adjustments WHERE account = ? AND idempotency_key = ?",
        (account, key),
    ).fetchone()
    if row is not None:
        return _adjustment(row)
    row = conn.execute(
        f"SELECT {_VOID_COLUMNS} FROM voids WHERE account = ? AND idempotency_key = ?",
        (account, key),
    ).fetchone()
    return None if row is None else _void(row)


def _dims(raw: str) -> tuple[str, ...]:
    return tuple(json.loads(raw))


def _adjustment(row: Sequence[Any]) -> Adjustment:
    id, account, meter, start, end, dims, kind, quantity, by, at, reason, key = row
    kind, quantity = AdjustmentKind(kind), Decimal(quantity)
    wanted = AdjustmentRequest(
        account, meter, start, end, _dims(dims), kind, quantity, by, reason, key
    )
    return wanted.recorded(id, at)


def _void(row: Sequence[Any]) -> Void:
    id, account, event_id, meter, time, dims, quantity, by, at, reason, key = row
    wanted = VoidRequest(account, event_id, meter, time, _dims(dims), quantity, by, reason, key)
    return wanted.recorded(id, at)


# Figures are written and read a slice at a time (meterd.billing._json): one json.dumps or
# json.loads of a 50,000-line invoice would hold the interpreter, and so the Trio thread,
# for a few hundred milliseconds. The text is what json.dumps gave before.


def _stored(items: Sequence[T], convert: Callable[[T], Any]) -> str:
    """``json.dumps([convert(item) for item in items])``, a slice at a time."""
    return encode_json(Slices(items, convert), ensure_ascii=True, separators=(", ", ": "))


def _lines(raw: str) -> tuple[InvoiceLine, ...]:
    return tuple(InvoiceLine.from_json(item) for item in loads_array(raw))


def _lines_json(lines: Sequence[InvoiceLine]) -> str:
    return _stored(lines, InvoiceLine.to_json)


def _unpriced(raw: str | None) -> tuple[Unpriced, ...]:
    return () if raw is None else tuple(Unpriced.from_json(item) for item in loads_array(raw))


def _unpriced_json(unpriced: Sequence[Unpriced]) -> str:
    return _stored(unpriced, Unpriced.to_json)


def _seen(conn: sqlite3.Connection) -> str:
    """The last adjustment and void ids now (JSON), recorded with fixed figures."""
    row = conn.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM adjustments),"
        " (SELECT coalesce(max(id), 0) FROM voids)"
    ).fetchone()
    return json.dumps(list(row))


def _last_restatement(conn: sqlite3.Connection, columns: str, period: Period, account: str) -> Any:
    """``columns`` of the latest restatement of ``account``'s ``period`` (a row or None)."""
    return conn.execute(
        f"SELECT {columns} FROM restatements WHERE account = ? AND period = ?"
        " ORDER BY id DESC LIMIT 1",
        (account, str(period)),
    ).fetchone()


def _restatement(row: Sequence[Any]) -> Restatement:
    id, period, account, at, causes, old_total, new_total, changes, lines, unpriced = row
    return Restatement(
        id,
        account,
        Period.parse(period),
        at,
        tuple(json.loads(causes)),
        Decimal(old_total),
        Decimal(new_total),
        tuple(LineChange.from_json(item) for item in loads_array(changes)),
        _lines(lines),
        _unpriced(unpriced),
    )


_ADJUSTMENT_COLUMNS: Final = (
    "id, account, meter, start, end_ms, dims, kind, quantity, made_by, made_at, reason,"
    " idempotency_key"
)
_VOID_COLUMNS: Final = (
    "id, account, event_id, meter, time, dims, quantity, made_by, made_at, reason,"
    " idempotency_key"
)
_RESTATEMENT_COLUMNS: Final = (
    "id, period, account, made_at, causes, old_total, new_total, changes, lines, unpriced"
)


class BillingDB:
    """The billing database at ``path``; :meth:`open` it (creates and migrates)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def open(self) -> BillingDB:
        if self._conn is None:
            self._conn = await trio.to_thread.run_sync(_open, self.path)
        return self

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        await self.open()
        return await trio.to_thread.run_sync(self._in_thread, work, limiter=self._limiter)

    def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise BillingError(f"the billing database {self.path} is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # -- corrections --------------------------------------------------------------------------

    async def add_adjustment(
        self,
        wanted: AdjustmentRequest,
        at: int,
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> Adjustment:
        """Record ``wanted`` as made at ``at``. ``log_seq``: the log sequence it is applied
        from (cluster mode), kept with it. ``wanted.key``: its idempotency key; if the
        account already has a correction under it, that one is returned (``replayed``) and
        nothing is written (but ``log_seq``, so a replay of the log finds it), or
        :class:`Conflict` if the request differs. The caller checks nothing more: a void
        under the key is a conflict (field ``operation``). ``fence``: asked in the
        transaction right before it commits (:data:`Fence`)."""

        def work(conn: sqlite3.Connection) -> Adjustment:
            replayed = _replayed(conn, wanted, log_seq, "adjust", fence)
            if replayed is not None:
                return replayed
            cursor = conn.execute(
                "INSERT INTO adjustments (account, meter, start, end_ms, dims, kind, quantity,"
                " made_by, made_at, reason, idempotency_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    wanted.account,
                    wanted.meter,
                    wanted.start,
                    wanted.end,
                    json.dumps(wanted.dims),
                    wanted.kind.value,
                    str(wanted.quantity),
                    wanted.by,
                    at,
                    wanted.reason,
                    wanted.key,
                ),
            )
            return wanted.recorded(_inserted(conn, cursor, log_seq, "adjust", fence), at)

        return await self._run(work)

    async def adjustments(
        self, account: str, low: int, high: int, meter: str | None = None
    ) -> list[Adjustment]:
        """Adjustments of ``account`` whose window starts in ``[low, high)``, oldest first."""

        def work(conn: sqlite3.Connection) -> list[Adjustment]:
            sql = f"SELECT {_ADJUSTMENT_COLUMNS} FROM adjustments WHERE account = ?"
            sql += " AND start >= ? AND start < ?"
            args: tuple[Any, ...] = (account, low, high)
            if meter is not None:
                sql += " AND meter = ?"
                args += (meter,)
            return [_adjustment(row) for row in conn.execute(sql + " ORDER BY id", args)]

        return await self._run(work)

    async def add_void(
        self,
        wanted: VoidRequest,
        at: int,
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> Void:
        """As :meth:`add_adjustment`; :class:`Conflict` ``already_void`` when the event is."""

        def work(conn: sqlite3.Connection) -> Void:
            replayed = _replayed(conn, wanted, log_seq, "void", fence)
            if replayed is not None:
                return replayed
            try:
                cursor = conn.execute(
                    "INSERT INTO voids (account, event_id, meter, time, dims, quantity, made_by,"
                    " made_at, reason, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        wanted.account,
                        wanted.event_id,
                        wanted.meter,
                        wanted.time,
                        json.dumps(wanted.dims),
                        wanted.quantity,
                        wanted.by,
                        at,
                        wanted.reason,
                        wanted.key,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"event {wanted.event_id!r} of account {wanted.account!r} is already void",
                    code="already_void",
                ) from None
            return wanted.recorded(_inserted(conn, cursor, log_seq, "void", fence), at)

        return await self._run(work)

    async def keyed(self, account: str, key: str) -> Adjustment | Void | None:
        """The correction of ``account`` recorded under idempotency ``key`` (None: none)."""
        return await self._run(lambda conn: _keyed(conn, account, key))

    async def logged_correction(self, seq: int) -> Adjustment | Void | None:
        """The correction applied from log sequence ``seq`` (None: none was)."""

        def work(conn: sqlite3.Connection) -> Adjustment | Void | None:
            row = conn.execute(
                "SELECT kind, row_id FROM log_corrections WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return None
            if row[0] == "adjust":
                found = conn.execute(
                    f"SELECT {_ADJUSTMENT_COLUMNS} FROM adjustments WHERE id = ?", (row[1],)
                ).fetchone()
                return None if found is None else _adjustment(found)
            found = conn.execute(
                f"SELECT {_VOID_COLUMNS} FROM voids WHERE id = ?", (row[1],)
            ).fetchone()
            return None if found is None else _void(found)

        return await self._run(work)

    async def voids(
        self,
        account: str,
        low: int | None = None,
        high: int | None = None,
        meter: str | None = None,
    ) -> list[Void]:
        """Voids of ``account`` (of events with ``low <= time < high``), oldest first."""

        def work(conn: sqlite3.Connection) -> list[Void]:
            sql = f"SELECT {_VOID_COLUMNS} FROM voids WHERE account = ?"
            args: tuple[Any, ...] = (account,)
            if low is not None and high is not None:
                sql += " AND time >= ? AND time < ?"
                args += (low, high)
            if meter is not None:
                sql += " AND meter = ?"
                args += (meter,)
            return [_void(row) for row in conn.execute(sql + " ORDER BY id", args)]

        return await self._run(work)

    async def adjusted_accounts(self, low: int, high: int) -> set[str]:
        """Accounts with an adjustment whose window starts in ``[low, high)``."""

        def work(conn: sqlite3.Connection) -> set[str]:
            return {
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT account FROM adjustments WHERE start >= ? AND start < ?",
                    (low, high),
                )
            }

        return await self._run(work)

    # -- periods ------------------------------------------------------------------------------

    async def closure(self, period: Period) -> Closure | None:
        def work(conn: sqlite3.Connection) -> Closure | None:
            row = conn.execute(
                "SELECT made_by, made_at, accounts, log_seq FROM closures WHERE period = ?",
                (str(period),),
            ).fetchone()
            return None if row is None else Closure(period, *row)

        return await self._run(work)

    async def close(
        self,
        period: Period,
        by: str,
        at: int,
        invoices: Sequence[Invoice],
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> Closure:
        """Record ``period`` as closed with the figures of ``invoices``, in one transaction
        (``log_seq``: the log sequence of the ``Close`` it is applied from, cluster mode;
        ``fence``: asked right before the transaction commits, as for a correction)."""

        def work(conn: sqlite3.Connection) -> Closure:
            try:
                conn.execute(
                    "INSERT INTO closures (period, made_by, made_at, accounts, seen, log_seq)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (str(period), by, at, len(invoices), _seen(conn), log_seq),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"period {period} is already closed", code="already_closed"
                ) from None
            conn.executemany(
                "INSERT INTO closed_invoices (period, account, total, lines, unpriced)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        str(period),
                        invoice.account,
                        str(invoice.total),
                        _lines_json(invoice.lines),
                        _unpriced_json(invoice.unpriced),
                    )
                    for invoice in invoices
                ],
            )
            _fenced(fence)
            return Closure(period, by, at, len(invoices), log_seq)

        return await self._run(work)

    async def figures(self, period: Period, account: str) -> StoredFigures:
        """The latest fixed figures of a closed period for ``account``: those of its last
        restatement, else those of the closing (an account absent then had none)."""

        def work(conn: sqlite3.Connection) -> StoredFigures:
            closed = conn.execute(
                "SELECT total, lines, unpriced FROM closed_invoices"
                " WHERE period = ? AND account = ?",
                (str(period), account),
            ).fetchone()
            row = _last_restatement(conn, "new_total, lines, unpriced", period, account)
            if row is None:
                row = closed
            if row is None:
                return StoredFigures(Decimal(0), ())
            unpriced = row[2] if row[2] is not None or closed is None else closed[2]
            return StoredFigures(Decimal(row[0]), _lines(row[1]), _unpriced(unpriced))

        return await self._run(work)

    async def closed_total(self, period: Period, account: str) -> Decimal:
        """The total fixed when ``period`` was closed (0 for an account absent then)."""

        def work(conn: sqlite3.Connection) -> Decimal:
            row = conn.execute(
                "SELECT total FROM closed_invoices WHERE period = ? AND account = ?",
                (str(period), account),
            ).fetchone()
            return Decimal(0) if row is None else Decimal(row[0])

        return await self._run(work)

    async def closed_figures(self, period: Period, account: str) -> StoredFigures:
        """The figures as they were when ``period`` was closed."""

        def work(conn: sqlite3.Connection) -> StoredFigures:
            row = conn.execute(
                "SELECT total, lines, unpriced FROM closed_invoices"
                " WHERE period = ? AND account = ?",
                (str(period), account),
            ).fetchone()
            return (
                StoredFigures(Decimal(0), ())
                if row is None
                else StoredFigures(Decimal(row[0]), _lines(row[1]), _unpriced(row[2]))
            )

        return await self._run(work)

    async def add_restatement(
        self,
        period: Period,
        account: str,
        at: int,
        causes: Sequence[str],
        old_total: Decimal,
        invoice: Invoice,
        changes: Sequence[LineChange],
    ) -> Restatement:
        def work(conn: sqlite3.Connection) -> Restatement:
            cursor = conn.execute(
                f"INSERT INTO restatements ({_RESTATEMENT_COLUMNS.removeprefix('id, ')}, seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(period),
                    account,
                    at,
                    json.dumps(list(causes)),
                    str(old_total),
                    str(invoice.total),
                    _stored(changes, LineChange.to_json),
                    _lines_json(invoice.lines),
                    _unpriced_json(invoice.unpriced),
                    _seen(conn),
                ),
            )
            assert cursor.lastrowid is not None
            return Restatement(
                cursor.lastrowid,
                account,
                period,
                at,
                tuple(causes),
                old_total,
                invoice.total,
                tuple(changes),
                invoice.lines,
                invoice.unpriced,
            )

        return await self._run(work)

    async def corrections_since_fixed(self, period: Period, account: str) -> list[str]:
        """What describes the corrections of ``account`` in ``period`` recorded after its
        latest fixed figures (of the last restatement, else of the closing), oldest first;
        none when those figures predate version 2 (nothing was recorded to tell)."""

        def work(conn: sqlite3.Connection) -> list[str]:
            row = _last_restatement(conn, "seen", period, account)
            if row is None:
                row = conn.execute(
                    "SELECT seen FROM closures WHERE period = ?", (str(period),)
                ).fetchone()
            if row is None or row[0] is None:
                return []
            last_adjustment, last_void = json.loads(row[0])
            found: list[Adjustment | Void] = []
            for table, columns, time, last, parse in (
                ("adjustments", _ADJUSTMENT_COLUMNS, "start", last_adjustment, _adjustment),
                ("voids", _VOID_COLUMNS, "time", last_void, _void),
            ):
                found.extend(
                    parse(r)
                    for r in conn.execute(
                        f"SELECT {columns} FROM {table} WHERE account = ? AND id > ?"
                        f" AND {time} >= ? AND {time} < ? ORDER BY id",
                        (account, last, period.start_ms, period.end_ms),
                    )
                )
            return [
                c.describe() for c in sorted(found, key=lambda c: (c.at, isinstance(c, Void), c.id))
            ]

        return await self._run(work)

    async def restatements(self, account: str, period: Period) -> list[Restatement]:
        def work(conn: sqlite3.Connection) -> list[Restatement]:
            return [
                _restatement(row)
                for row in conn.execute(
                    f"SELECT {_RESTATEMENT_COLUMNS} FROM restatements"
                    " WHERE account = ? AND period = ? ORDER BY id",
                    (account, str(period)),
                )
            ]

        return await self._run(work)
