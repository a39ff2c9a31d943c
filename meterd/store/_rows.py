"""Many rows in few statements: multi-row ``INSERT`` for the writer's hot tables.

Python's ``sqlite3`` releases the GIL around every ``sqlite3_step`` and takes it back after,
so ``executemany`` of N rows gives the GIL away N times. When another thread wants it (the
Trio thread, busy with the next slices), each give-away can cost the writing thread up to a
switch interval (5 ms) before it gets it back, and a context switch either way: a commit
round that writes a thousand rows in a row on one thread (meterd.store._rounds) then waits
on the Trio thread more than it works.

:func:`insert_rows` writes the same rows with statements of :data:`CHUNKS` rows each (one
step, one GIL release, per chunk), then the rest (fewer than the smallest chunk) with the
one-row statement. The sizes are fixed, so each connection's statement cache holds at most
``len(CHUNKS) + 1`` statements per table. Rules for the statement: an ``INSERT`` with one
``VALUES (...)`` row of ``?`` parameters and literals, optionally followed by an ``ON
CONFLICT`` clause;
rows are written in order, so a later row of the same key wins exactly as with
``executemany`` (an upsert's ``excluded`` is each row's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from itertools import chain
from sqlite3 import Connection
from typing import Final

__all__ = ["CHUNKS", "insert_rows"]

CHUNKS: Final = (64, 16, 4)
"""Rows per multi-row statement, largest first (64 rows of 13 columns stay far below
SQLite's limit of bound parameters)."""


@cache
def _chunked(statement: str, rows: int) -> str:
    """``statement`` with ``rows`` rows in its ``VALUES``."""
    head, marker, rest = statement.partition("VALUES (")
    if not marker:
        raise ValueError(f"not an INSERT ... VALUES (...) statement: {statement!r}")
    values, closing, tail = rest.partition(")")
    if not closing or "(" in values or "?" not in values:
        raise ValueError(f"the VALUES row must be parameters and literals: {statement!r}")
    row = f"({values})"
    return f"{head}VALUES {', '.join([row] * rows)}{tail}"


def insert_rows(conn: Connection, statement: str, rows: Sequence[Sequence[object]]) -> None:
    """``conn.executemany(statement, rows)`` in :data:`CHUNKS`-row statements (see the
    module doc)."""
    count = len(rows)
    start = 0
    for size in CHUNKS:
        if count - start < size:
            continue
        sql = _chunked(statement, size)
        while count - start >= size:
            conn.execute(sql, list(chain.from_iterable(rows[start : start + size])))
            start += size
    if start < count:
        conn.executemany(statement, rows[start:])
