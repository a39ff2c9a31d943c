"""Multi-row statements (meterd.store._rows): the same table as executemany, fewer steps."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.store._rows import CHUNKS, insert_rows
from tests.examples import examples

UPSERT = (
    "INSERT INTO t (k, v, n) VALUES (?, ?, 0) ON CONFLICT (k) DO UPDATE"
    " SET v = excluded.v, n = t.n + 1"
)


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    return conn


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.text(max_size=3)),
        max_size=2 * CHUNKS[0] + sum(CHUNKS) + 3,
    )
)
def test_an_upsert_in_chunks_leaves_what_executemany_leaves(rows: list[tuple[int, str]]) -> None:
    chunked, one_by_one = _table(), _table()
    insert_rows(chunked, UPSERT, rows)
    one_by_one.executemany(UPSERT, rows)  # a later row of a key wins, in order
    query = "SELECT k, v, n FROM t ORDER BY k"
    assert chunked.execute(query).fetchall() == one_by_one.execute(query).fetchall()


def test_rows_go_in_fixed_chunks_then_one_by_one() -> None:
    conn = _table()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    insert_rows(conn, UPSERT, [(k, "x") for k in range(64 + 16 + 4 + 3)])
    # (traced with the values bound: one 'x' per row)
    assert [s.count("'x'") for s in statements if s.startswith("INSERT")] == [64, 16, 4, 1, 1, 1]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (87,)


def test_a_statement_without_one_values_row_is_refused() -> None:
    with pytest.raises(ValueError, match="not an INSERT"):
        insert_rows(_table(), "UPDATE t SET v = ? WHERE k = ?", [(1, 2)] * 4)
