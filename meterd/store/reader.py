"""The store reader: read-only connections, queries off the Trio thread.

Reads use their own connections (``query_only``), never the writer's: in WAL mode a reader
sees the last committed state and neither blocks the writer nor waits for it. Each method
runs in one read transaction (one consistent snapshot) on a worker thread, each on a
connection of a small pool opened on demand.

Queries wait for a thread in one of three **lanes**, each with its own limit, so that a
flood of one kind never queues another behind it:

* ``recovery`` (``recovery_connections``, default 2): :meth:`Reader.load_account`, what a
  (re)starting meter actor reads. A burst of new accounts wakes thousands of actors, each
  with one such read.
* ``monitor`` (1): :meth:`Reader.quarantined_count`, the one read of ``GET /metrics``.
* ``default`` (``connections``, default 2): everything else (the API's and billing's reads).

:meth:`Reader.waiting` says how many queries wait in each lane (``/metrics`` shows it).

Open the writer first (it creates and migrates the database); the reader refuses a database
that is not at :data:`~meterd.store.schema.SCHEMA_VERSION`.

An account's journal batches are those of ``journal_index`` and those of the tail no index
pass has covered yet (:mod:`meterd.store.journal_index`): with ``tail`` (the daemon's store
passes its writer's :class:`~meterd.store.journal_index.JournalTail`), the tail's batch ids
are taken from memory when a query is called; without, the reader scans the journal's end in
its transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

import trio

from meterd.model import Event

from . import codec
from .errors import InvalidCursor, ReaderClosed
from .journal_index import TailEntry
from .schema import IN_CHUNK, open_readonly, slice_of

__all__ = [
    "AuditEntry",
    "AuditPage",
    "EventsPage",
    "LoadedAccount",
    "QuarantineLogEntry",
    "QuarantinedEvent",
    "Reader",
    "StoredWindow",
    "WindowRow",
    "open_reader",
]

T = TypeVar("T")

_SCAN_CHUNK: Final = 64  # batches fetched per query while paging events
_NO_BATCH: Final = (1 << 63) - 1  # above every batch id (newest first, no cursor)
TailOf = Callable[[str], list[TailEntry]]
"""An account's journal batches not yet in ``journal_index`` (from the writer's memory)."""
MAX_EVENTS_LIMIT: Final = 10_000
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class StoredWindow(NamedTuple):
    meter: str
    start: int
    dims: str
    state: bytes


class WindowRow(NamedTuple):
    start: int
    dims: str
    state: bytes


class LoadedAccount(NamedTuple):
    """What a (re)starting actor needs: its checkpoint and the journal after it.

    ``replay`` holds the batches with ``batch_id > watermark`` in journal order, without
    their quarantined events (they are never applied again; :meth:`Reader.quarantined`
    lists them) nor the copies an operator released or discarded (``quarantine_log``: a
    released event counts as the copy in its release batch). A batch whose events are all
    left out is kept, empty, so the batch ids stay complete.
    """

    watermark: int
    windows: list[StoredWindow]
    replay: list[tuple[int, list[Event]]]


class EventsPage(NamedTuple):
    """``statuses``: per event, ``counted``, or ``quarantined`` / ``discarded`` for a copy
    that does not count. A copy an operator released is not listed (the copy its release
    appended is, later in journal order)."""

    events: list[Event]
    next_cursor: str | None
    statuses: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class QuarantinedEvent:
    account: str
    batch_id: int
    event_id: str
    error: str
    at: int


@dataclass(frozen=True, slots=True)
class QuarantineLogEntry:
    """One ``quarantine_log`` row: quarantined copy ``(batch_id, event_id)`` of ``account``
    was ``released`` (its events re-appended as journal batch ``release_batch``) or
    ``discarded`` by ``by`` at ``at`` for ``reason``; ``error`` and ``quarantined_at`` are
    the quarantine's."""

    entry_id: int
    account: str
    batch_id: int
    event_id: str
    action: str
    release_batch: int | None
    error: str
    quarantined_at: int
    by: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One ``audit`` row: a duplicate (``kind`` ``"duplicate"``, ``code`` ``None``) or a
    rejected event (``kind`` ``"rejected"``, ``code`` from protocol.md §2.3) of ``account``.

    ``event_id``, ``meter``, ``time`` and ``properties`` are ``None`` where the event's were
    invalid. ``batch_id`` is the journal batch holding the counted copy of the id (a
    duplicate, an ``id_conflict``); ``seq`` the producer's batch seq (``None`` when it did
    not come over the producer protocol); ``received_at`` when the batch was received."""

    account: str
    kind: str
    event_id: str | None
    code: str | None
    message: str | None
    meter: str | None
    time: int | None
    properties: tuple[tuple[str, str], ...] | None
    producer: str | None
    seq: int | None
    batch_id: int | None
    received_at: int


class AuditPage(NamedTuple):
    entries: list[AuditEntry]
    next_cursor: str | None


def _audit_entry(row: Any) -> AuditEntry:
    """An :class:`AuditEntry` from the first 12 columns of an ``audit`` query."""
    props = row[7]
    properties = None if props is None else tuple(sorted(json.loads(props).items()))
    return AuditEntry(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], properties, *row[8:12]
    )


def encode_cursor(batch_id: int, index: int) -> str:
    """An events cursor: the position ``(batch_id, index in the batch)`` of the next event."""
    return f"{batch_id}.{index}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    batch_text, dot, index_text = cursor.partition(".")
    if not (
        dot
        and cursor.isascii()
        and batch_text.isdigit()
        and index_text.isdigit()
        and len(batch_text) <= 18
        and len(index_text) <= 9
    ):
        raise InvalidCursor(f"cursor {cursor!r:.80} is not one this server issued")
    return int(batch_text), int(index_text)


def _decode_audit_cursor(cursor: str) -> tuple[int, int]:
    """An audit cursor ``"<place>.<row id>"`` (the place may be negative)."""
    negative = cursor.startswith("-")
    place, index = decode_cursor(cursor[1:] if negative else cursor)
    return (-place if negative else place), index


LANES: Final = ("default", "recovery", "monitor")


class Reader:
    """Queries on the store at ``path``. Use :func:`open_reader`, or call :meth:`aclose`."""

    def __init__(
        self,
        path: Path | str,
        *,
        connections: int = 2,
        recovery_connections: int = 2,
        tail: TailOf | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        if recovery_connections < 1:
            raise ValueError(f"recovery_connections must be >= 1, got {recovery_connections}")
        self.path = Path(path)
        self._tail = tail
        self._limiter = trio.CapacityLimiter(connections)
        self._lanes = {
            "default": self._limiter,
            "recovery": trio.CapacityLimiter(recovery_connections),
            "monitor": trio.CapacityLimiter(1),
        }
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def waiting(self) -> dict[str, int]:
        """Queries waiting for a thread, by lane (see the module doc)."""
        return {lane: limiter.statistics().tasks_waiting for lane, limiter in self._lanes.items()}

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections; queries after this raise :class:`ReaderClosed`."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _run(self, query: Callable[[sqlite3.Connection], T], lane: str = "default") -> T:
        if self._closed:
            raise ReaderClosed(f"the reader of {self.path} is closed")
        limiter = self._lanes[lane]
        return await trio.to_thread.run_sync(self._in_thread, query, limiter=limiter)

    def _in_thread(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._idle.pop()  # (another lane's thread may take the last one first)
        except IndexError:
            conn = open_readonly(self.path)
        try:
            conn.execute("BEGIN")
            try:
                return query(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)

    # -- queries ----------------------------------------------------------------------

    async def load_account(
        self, account: str, *, windows_since: int | None = None
    ) -> LoadedAccount:
        """The account's watermark, its windows (those starting at or after ``windows_since``
        if given), and the journal batches after the watermark. An unknown account loads as
        ``(0, [], [])``."""

        tail = None if self._tail is None else self._tail(account)

        def query(conn: sqlite3.Connection) -> LoadedAccount:
            row = conn.execute(
                "SELECT watermark FROM accounts WHERE account = ?", (account,)
            ).fetchone()
            watermark = 0 if row is None else int(row[0])
            windows = [
                StoredWindow(*w)
                for w in conn.execute(
                    "SELECT meter, start, dims, state FROM windows"
                    " WHERE account = ? AND start >= ? ORDER BY meter, start, dims",
                    (account, -(1 << 63) if windows_since is None else windows_since),
                )
            ]
            poison = {
                (int(b), str(e))
                for b, e in conn.execute(
                    "SELECT batch_id, event_id FROM quarantine WHERE account = ? AND batch_id > ?"
                    " UNION ALL SELECT batch_id, event_id FROM quarantine_log"
                    " WHERE account = ? AND batch_id > ?",
                    (account, watermark, account, watermark),
                )
            }
            ids = _journal_ids(conn, account, watermark, tail)
            batches = _payloads(conn, ids)
            replay: list[tuple[int, list[Event]]] = []
            for batch_id, payload in batches:
                events = codec.decode_batch(payload, account, where=f"batch {batch_id}")
                if poison:
                    events = [e for e in events if (batch_id, e.id) not in poison]
                replay.append((batch_id, events))
            return LoadedAccount(watermark, windows, replay)

        return await self._run(query, "recovery")

    async def windows(self, account: str, meter: str, from_ms: int, to_ms: int) -> list[WindowRow]:
        """Checkpointed windows of one meter with ``from_ms <= start < to_ms``, by start."""

        def query(conn: sqlite3.Connection) -> list[WindowRow]:
            return [
                WindowRow(*row)
                for row in conn.execute(
                    "SELECT start, dims, state FROM windows"
                    " WHERE account = ? AND meter = ? AND start >= ? AND start < ?"
                    " ORDER BY start, dims",
                    (account, meter, from_ms, to_ms),
                )
            ]

        return await self._run(query)

    async def events(
        self,
        account: str,
        meter: str | None,
        from_ms: int,
        to_ms: int,
        limit: int,
        cursor: str | None = None,
        *,
        newest_first: bool = False,
        where: Callable[[Event], bool] | None = None,
    ) -> EventsPage:
        """Stored events with ``from_ms <= time < to_ms`` (and of ``meter`` if given), in
        journal (ingestion) order, ``limit`` at most; ``newest_first``: in the reverse
        order, the last ingested first.

        ``next_cursor`` resumes after the last event returned, or is ``None`` when nothing
        more matched at the time of the query. The cursor is a journal position, so pages
        neither repeat nor skip events while new ones are ingested: newer batches have
        larger ids and only ever appear after the ones already paged (newest first: they
        are not shown by the following pages, which go on toward the oldest). A cursor
        goes on in the order it was issued for.

        ``where``: only the events it holds for (run on a reader thread: a pure test of the
        event); ``limit`` counts those, and the scan goes on until it has them or the range
        ends.
        """
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        tail = None if self._tail is None else self._tail(account)
        if newest_first:
            return await self._newest_events(
                account, meter, from_ms, to_ms, limit, cursor, tail, where
            )
        start_batch, start_index = (1, 0) if cursor is None else decode_cursor(cursor)

        def query(conn: sqlite3.Connection) -> EventsPage:
            found: list[Event] = []
            statuses: list[str] = []
            set_aside = _set_aside(conn, account)
            batch_from = start_batch
            # The tail's batches in the range (all after the indexed ones but for those a
            # pass indexed since the call: the union below takes each batch once).
            tail_ids = _tail_ids(conn, account, start_batch - 1, tail, from_ms, to_ms)
            while True:
                indexed = [
                    batch_id
                    for (batch_id,) in conn.execute(
                        "SELECT batch_id FROM journal_index"
                        " WHERE account = ? AND batch_id >= ? AND max_time >= ? AND min_time < ?"
                        " ORDER BY batch_id LIMIT ?",
                        (account, batch_from, from_ms, to_ms, _SCAN_CHUNK),
                    )
                ]
                full = len(indexed) == _SCAN_CHUNK
                last = indexed[-1] if full else None
                candidates = sorted(
                    set(indexed).union(
                        b for b in tail_ids if b >= batch_from and (last is None or b <= last)
                    )
                )
                ids = candidates[:_SCAN_CHUNK]  # the tail too is read a chunk at a time
                more = full or len(candidates) > _SCAN_CHUNK
                rows = _payloads(conn, ids)
                for batch_id, payload in rows:
                    events = codec.decode_batch(payload, account, where=f"batch {batch_id}")
                    first = start_index if batch_id == start_batch else 0
                    for index in range(first, len(events)):
                        event = events[index]
                        if (
                            from_ms <= event.time < to_ms
                            and (meter is None or event.meter == meter)
                            and (where is None or where(event))
                        ):
                            status = (
                                set_aside.get((batch_id, event.id), "counted")
                                if set_aside
                                else "counted"
                            )
                            if status == "released":
                                continue  # it counts as its release batch's copy
                            if len(found) == limit:
                                return EventsPage(found, encode_cursor(batch_id, index), statuses)
                            found.append(event)
                            statuses.append(status)
                if not more:
                    return EventsPage(found, None, statuses)
                batch_from = ids[-1] + 1

        return await self._run(query)

    async def _newest_events(
        self,
        account: str,
        meter: str | None,
        from_ms: int,
        to_ms: int,
        limit: int,
        cursor: str | None,
        tail: list[TailEntry] | None,
        where: Callable[[Event], bool] | None,
    ) -> EventsPage:
        """:meth:`events` newest first: the journal's batches read backwards, a chunk at a
        time (so the newest page of a long history reads a chunk, not the history); the
        cursor is the position of the next (older) event."""
        last_batch, last_index = (_NO_BATCH, 0) if cursor is None else decode_cursor(cursor)

        def query(conn: sqlite3.Connection) -> EventsPage:
            found: list[Event] = []
            statuses: list[str] = []
            set_aside = _set_aside(conn, account)
            tail_ids = _tail_ids(conn, account, 0, tail, from_ms, to_ms)
            batch_to = last_batch
            while True:
                indexed = [
                    batch_id
                    for (batch_id,) in conn.execute(
                        "SELECT batch_id FROM journal_index"
                        " WHERE account = ? AND batch_id <= ? AND max_time >= ? AND min_time < ?"
                        " ORDER BY batch_id DESC LIMIT ?",
                        (account, batch_to, from_ms, to_ms, _SCAN_CHUNK),
                    )
                ]
                full = len(indexed) == _SCAN_CHUNK
                lowest = indexed[-1] if full else None
                candidates = sorted(
                    set(indexed).union(
                        b for b in tail_ids if b <= batch_to and (lowest is None or b >= lowest)
                    ),
                    reverse=True,
                )
                ids = candidates[:_SCAN_CHUNK]
                more = full or len(candidates) > _SCAN_CHUNK
                for batch_id, payload in reversed(_payloads(conn, ids[::-1])):
                    events = codec.decode_batch(payload, account, where=f"batch {batch_id}")
                    first = len(events) - 1
                    if batch_id == last_batch:
                        first = min(first, last_index)
                    for index in range(first, -1, -1):
                        event = events[index]
                        if (
                            not (from_ms <= event.time < to_ms)
                            or (meter is not None and event.meter != meter)
                            or (where is not None and not where(event))
                        ):
                            continue
                        status = set_aside.get((batch_id, event.id), "counted")
                        if status == "released":
                            continue  # it counts as its release batch's copy
                        if len(found) == limit:
                            return EventsPage(found, encode_cursor(batch_id, index), statuses)
                        found.append(event)
                        statuses.append(status)
                if not more or not ids:
                    return EventsPage(found, None, statuses)
                batch_to = ids[-1] - 1

        return await self._run(query)

    async def audit(
        self,
        account: str,
        from_ms: int,
        to_ms: int,
        meter: str | None = None,
        *,
        limit: int,
        cursor: str | None = None,
    ) -> AuditPage:
        """The account's duplicates and rejected events placed in ``[from_ms, to_ms)`` (of
        ``meter`` if given), ``limit`` at most, ordered by place then as recorded.

        An entry's place is its event ``time``, or ``received_at`` when the time was invalid
        (such an entry has no meter either, so asking for a ``meter`` leaves it out).
        ``next_cursor`` resumes after the last entry returned, or is ``None`` when nothing
        more matched at the time of the query. The cursor is ``(place, row id)``: pages
        neither repeat nor skip entries, except entries recorded meanwhile with a place
        before the cursor's (late events), which the next full read shows.
        """
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        after_place, after_id = (from_ms, 0) if cursor is None else _decode_audit_cursor(cursor)
        if after_place < from_ms:  # a cursor from before the range: start at the range
            after_place, after_id = from_ms, 0

        def query(conn: sqlite3.Connection) -> AuditPage:
            sql = (
                "SELECT account, kind, event_id, code, message, meter, time, properties,"
                " producer, seq, batch_id, received_at, position, audit_id FROM audit"
                " WHERE account = ? AND (position, audit_id) > (?, ?) AND position < ?"
            )
            args: list[object] = [account, after_place, after_id, to_ms]
            if meter is not None:
                sql += " AND meter = ?"
                args.append(meter)
            sql += " ORDER BY position, audit_id LIMIT ?"
            args.append(limit + 1)
            rows = conn.execute(sql, args).fetchall()
            entries = [_audit_entry(row[:12]) for row in rows[:limit]]
            more = None
            if len(rows) > limit:
                place, audit_id = rows[limit - 1][12:14]
                more = f"{place}.{audit_id}"
            return AuditPage(entries, more)

        return await self._run(query)

    async def accounts(self) -> list[str]:
        """Every account the store has seen (events appended or a checkpoint written), sorted."""

        def query(conn: sqlite3.Connection) -> list[str]:
            return [row[0] for row in conn.execute("SELECT account FROM accounts ORDER BY 1")]

        return await self._run(query)

    async def account_page(
        self, search: str | None, after: str | None, limit: int
    ) -> tuple[list[tuple[str, int]], str | None]:
        """One page of the accounts the store has seen, by id: ``[(account, updated_at)]``
        (``updated_at``: when its row was last written, first seen or last checkpoint) of
        those after ``after`` whose id contains ``search`` (case-insensitive), at most
        ``limit``; and the id to continue after, or None when nothing more matched.

        The accounts table is walked in key order from ``after`` and stops at the page's
        end, so a page costs the rows it skips over, never the whole table (a rare
        ``search`` on a million accounts still walks them all, on a reader thread)."""

        def query(conn: sqlite3.Connection) -> tuple[list[tuple[str, int]], str | None]:
            sql = "SELECT account, updated_at FROM accounts WHERE account > ?"
            args: list[object] = [after or ""]
            if search:
                sql += " AND instr(lower(account), ?) > 0"
                # SQLite's lower() folds ASCII only: fold the search the same way.
                args.append(search.translate(_ASCII_LOWER))
            sql += " ORDER BY account LIMIT ?"
            args.append(limit + 1)
            rows = [(str(a), int(u)) for a, u in conn.execute(sql, args)]
            more = rows[limit - 1][0] if len(rows) > limit else None
            return rows[:limit], more

        return await self._run(query)

    async def quarantined(self, account: str | None = None) -> list[QuarantinedEvent]:
        """Quarantined events (of ``account``, or all), oldest first."""

        def query(conn: sqlite3.Connection) -> list[QuarantinedEvent]:
            sql = "SELECT account, batch_id, event_id, error, at FROM quarantine"
            args: tuple[str, ...] = ()
            if account is not None:
                sql += " WHERE account = ?"
                args = (account,)
            sql += " ORDER BY at, account, batch_id, event_id"
            return [QuarantinedEvent(*row) for row in conn.execute(sql, args)]

        return await self._run(query)

    async def quarantine_log(
        self, account: str | None = None, event_ids: Sequence[str] | None = None
    ) -> list[QuarantineLogEntry]:
        """The releases and discards of quarantined events (of ``account``, of
        ``event_ids``), in the order they were recorded."""

        def query(conn: sqlite3.Connection) -> list[QuarantineLogEntry]:
            sql = (
                "SELECT entry_id, account, batch_id, event_id, action, release_batch, error,"
                " quarantined_at, by, reason, at FROM quarantine_log"
            )
            args: tuple[str, ...] = ()
            if account is not None:
                sql += " WHERE account = ?"
                args = (account,)
            entries = [
                QuarantineLogEntry(*row) for row in conn.execute(sql + " ORDER BY entry_id", args)
            ]
            if event_ids is not None:
                wanted = set(event_ids)
                entries = [entry for entry in entries if entry.event_id in wanted]
            return entries

        return await self._run(query)

    async def quarantined_count(self) -> int:
        """How many events are quarantined (counted in SQLite, no rows loaded)."""

        def query(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])

        return await self._run(query, "monitor")

    async def has_account(self, account: str) -> bool:
        """Whether the store has seen ``account`` (events appended or a checkpoint written)."""

        def query(conn: sqlite3.Connection) -> bool:
            found = conn.execute("SELECT 1 FROM accounts WHERE account = ?", (account,))
            return found.fetchone() is not None

        return await self._run(query)

    async def run(self, query: Callable[[sqlite3.Connection], T], lane: str = "default") -> T:
        """``query(connection)`` on a reader thread of ``lane``, for a read this class does
        not have (the console's account search, :mod:`meterd.api.console`); read-only."""
        return await self._run(query, lane)

    async def known_accounts(self) -> int:
        """How many accounts the store has seen (events appended or a checkpoint written)."""

        def query(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM accounts").fetchone()[0])

        return await self._run(query)


def _set_aside(conn: sqlite3.Connection, account: str) -> dict[tuple[int, str], str]:
    """The account's copies that do not count as such, ``(batch_id, event_id)`` ->
    ``quarantined``, ``released`` (it counts as its release batch's copy) or ``discarded``."""
    found: dict[tuple[int, str], str] = {}
    for batch_id, event_id, status in conn.execute(
        "SELECT batch_id, event_id, action FROM quarantine_log WHERE account = ?"
        " UNION ALL SELECT batch_id, event_id, 'quarantined' FROM quarantine WHERE account = ?",
        (account, account),
    ):
        found[(int(batch_id), str(event_id))] = str(status)
    return found


def _tail_ids(
    conn: sqlite3.Connection,
    account: str,
    after: int,
    tail: list[TailEntry] | None,
    from_ms: int | None = None,
    to_ms: int | None = None,
) -> list[int]:
    """The ids of ``account``'s tail batches after batch ``after`` (overlapping
    ``[from_ms, to_ms)`` if given): from ``tail`` (memory), or read from the journal's end."""
    if tail is not None:
        return [
            batch_id
            for batch_id, low, high in tail
            if batch_id > after
            and (from_ms is None or high >= from_ms)
            and (to_ms is None or low < to_ms)
        ]
    (upto,) = conn.execute(
        "SELECT upto FROM journal_slices WHERE slice = ?", (slice_of(account),)
    ).fetchone()
    return [
        batch_id
        for (batch_id,) in conn.execute(
            "SELECT batch_id FROM event_batches"
            " WHERE batch_id > ? AND account = ? AND max_time >= ? AND min_time < ?"
            " ORDER BY batch_id",
            (
                max(upto, after),
                account,
                -(1 << 63) if from_ms is None else from_ms,
                (1 << 63) - 1 if to_ms is None else to_ms,
            ),
        )
    ]


def _journal_ids(
    conn: sqlite3.Connection, account: str, after: int, tail: list[TailEntry] | None
) -> list[int]:
    """The ids of all of ``account``'s journal batches after batch ``after``, in order."""
    indexed = [
        batch_id
        for (batch_id,) in conn.execute(
            "SELECT batch_id FROM journal_index WHERE account = ? AND batch_id > ?",
            (account, after),
        )
    ]
    return sorted(set(indexed).union(_tail_ids(conn, account, after, tail)))


def _payloads(conn: sqlite3.Connection, ids: list[int]) -> list[tuple[int, bytes]]:
    """``(batch_id, payload)`` of the journal batches ``ids`` (ascending), in that order."""
    rows: list[tuple[int, bytes]] = []
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows.extend(
            conn.execute(
                f"SELECT batch_id, payload FROM event_batches WHERE batch_id IN ({marks})"
                " ORDER BY batch_id",
                chunk,
            ).fetchall()
        )
    return rows


async def open_reader(path: Path | str, *, connections: int = 2) -> Reader:
    """A :class:`Reader` on ``path``, checked now: a missing database or one at another schema
    version raises here (:class:`~meterd.store.errors.StoreError` and subclasses)."""
    reader = Reader(path, connections=connections)
    await reader._run(lambda conn: None)
    return reader
