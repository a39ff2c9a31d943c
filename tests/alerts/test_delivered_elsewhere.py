"""Crossings another process delivered (cluster mode: a shard's previous owner, whose
deliveries database comes in the shard's snapshot): ``import_delivered`` merges only the ids
it knows delivered, and the delivery service records those crossings ``delivered`` without
sending them, while every other crossing is sent. The copy's cursor and ``seq`` are never
used."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from meterd.accounts.service import Accounts
from meterd.alerts import Webhook, delivered_count, import_delivered, rebase_deliveries
from meterd.alerts._delivered import connect, read_delivered
from meterd.alerts._delivery import Delivery, DeliveryService, _redeliver

from .helpers import NOW, book, dyno, outbox, rule, running

SECRET = "whsec-0123456789abcdef"
ONE = rule("one", "1")
ACME = ONE.crossing_id("acme", "2026-11")
BETA = ONE.crossing_id("beta", "2026-11")


def a_delivery(id: str, seq: int, status: str, delivered_at: int | None = None) -> Delivery:
    return Delivery(
        id, seq, "acct", "one", "hook", "2026-11", "e", b"{}", NOW, status,
        delivered_at=delivered_at,
    )  # fmt: skip


def write(path: Path, rows: list[Delivery], cursor: int | None = None) -> None:
    conn = connect(path)
    try:
        for d in rows:
            conn.execute(f"INSERT INTO deliveries VALUES ({', '.join('?' * 16)})", d.row())
        if cursor is not None:
            conn.execute("INSERT INTO cursor (one, seq) VALUES (1, ?)", (cursor,))
    finally:
        conn.close()


def table(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


@asynccontextmanager
async def delivering(
    tmp_path: Path, local: Path
) -> AsyncIterator[tuple[Accounts, DeliveryService, list[str]]]:
    """A store in ``tmp_path`` with rule ONE, and a delivery service on the deliveries
    database ``local`` whose webhook answers 200; the ids it was sent, in order."""
    got: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        got.append(request.headers["Meterd-Event-Id"])
        return httpx.Response(200)

    alerts = book(ONE)
    db = tmp_path / "meterd.sqlite3"
    async with running(db, alerts, idle_timeout=3600, checkpoint_interval=3600) as accounts:
        service = DeliveryService(
            accounts.store,
            alerts,
            [Webhook("hook", "http://127.0.0.1:9/hooks", SECRET)],
            local,
            transport=httpx.MockTransport(answer),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            yield accounts, service, got
            nursery.cancel_scope.cancel()


async def test_a_crossing_delivered_elsewhere_is_recorded_delivered_and_not_sent(
    tmp_path: Path,
) -> None:
    # The copy (another node's): acme's crossing delivered, beta's still pending there, and
    # a cursor and seq far ahead of anything this node's outbox numbers.
    copy = tmp_path / "copy.sqlite3"
    write(
        copy,
        [a_delivery(ACME, 999, "delivered", NOW - 5), a_delivery(BETA, 1000, "pending")],
        cursor=1000,
    )
    local = tmp_path / "deliveries.sqlite3"
    assert await trio.to_thread.run_sync(import_delivered, local, copy) == 1
    db = tmp_path / "meterd.sqlite3"
    async with delivering(tmp_path, local) as (accounts, service, got):
        # acme's crossing first in the outbox: once beta's is delivered, the service has
        # followed the outbox past acme's too.
        await accounts.ingest("acme", [dyno("acme", "e1", "1")])
        await accounts.checkpoint("acme")
        assert [r.id for r in outbox(db)] == [ACME]
        await accounts.ingest("beta", [dyno("beta", "e2", "1")])
        with trio.fail_after(30):
            await service.wait_until(lambda: service.delivered >= 1)
        counts = await service.counts()
        settled = dict(service.settled)
        pending = service.pending
        listed = {d.id: d for d in await service.deliveries()}
    assert got == [BETA]  # acme's was delivered elsewhere: not sent; beta's (unknown): sent
    assert counts == {"pending": 0, "delivered": 2, "failed": 0}
    assert settled == {"delivered": 2, "failed": 0}  # /metrics agrees with the database
    assert pending == 0
    assert (listed[ACME].status, listed[ACME].attempts, listed[ACME].delivered_at) == (
        "delivered",
        0,
        NOW - 5,
    )
    assert listed[BETA].attempts == 1
    # This node's own outbox numbering, not the copy's.
    seqs = {r.id: r.seq for r in outbox(db)}
    assert table(local, "SELECT id, seq FROM deliveries ORDER BY seq") == sorted(
        seqs.items(), key=lambda item: item[1]
    )
    assert table(local, "SELECT seq FROM cursor") == [(max(seqs.values()),)]
    assert max(seqs.values()) < 999


async def test_a_copys_cursor_is_not_imported_so_nothing_is_skipped(tmp_path: Path) -> None:
    """The copy's cursor is far ahead and says nothing was delivered: every crossing here is
    sent (at least once), none skipped."""
    copy = tmp_path / "copy.sqlite3"
    write(copy, [], cursor=10**6)
    local = tmp_path / "deliveries.sqlite3"
    assert await trio.to_thread.run_sync(import_delivered, local, copy) == 0
    async with delivering(tmp_path, local) as (accounts, service, got):
        assert service.cursor == 0
        await accounts.ingest("acme", [dyno("acme", "e1", "1")])
        await accounts.ingest("beta", [dyno("beta", "e2", "1")])
        with trio.fail_after(30):
            await service.wait_until(lambda: service.delivered == 2)
    assert sorted(got) == sorted([ACME, BETA])


async def test_a_rebased_database_follows_a_new_stores_outbox_from_its_start(
    tmp_path: Path,
) -> None:
    """This node held the shard before and its store is now replaced by another node's copy:
    its deliveries database numbers the old store's outbox (cursor 9). Rebased, it keeps
    only what it knows delivered, by id, and the service skips nothing of the new outbox
    (kept, the cursor would skip beta's crossing, seq 2 here, forever)."""
    local = tmp_path / "deliveries.sqlite3"
    old = [a_delivery(ACME, 7, "delivered", NOW - 9), a_delivery("gone", 8, "failed")]
    write(local, old, cursor=9)
    assert await trio.to_thread.run_sync(rebase_deliveries, local) == 2
    assert table(local, "SELECT * FROM cursor") == []
    assert table(local, "SELECT * FROM deliveries") == []
    assert table(local, "SELECT id, delivered_at FROM delivered_elsewhere") == [(ACME, NOW - 9)]
    assert rebase_deliveries(tmp_path / "none.sqlite3") == 0  # no database: nothing to do
    db = tmp_path / "meterd.sqlite3"  # the new store: its outbox numbered from 1
    async with delivering(tmp_path, local) as (accounts, service, got):
        await accounts.ingest("acme", [dyno("acme", "e1", "1")])
        await accounts.checkpoint("acme")
        await accounts.ingest("beta", [dyno("beta", "e2", "1")])
        with trio.fail_after(10):
            await service.wait_until(lambda: service.delivered >= 1)
        counts = await service.counts()
    assert got == [BETA]  # acme's was delivered before the store was replaced: not sent
    assert counts == {"pending": 0, "delivered": 2, "failed": 0}
    assert [seq for _, seq in table(local, "SELECT id, seq FROM deliveries")] == sorted(
        r.seq for r in outbox(db)
    )


def test_import_merges_ids_only_and_keeps_the_local_records(tmp_path: Path) -> None:
    local = tmp_path / "deliveries.sqlite3"
    # This node held the shard before: its own rows (one pending, one failed) and cursor.
    write(
        local,
        [
            a_delivery("p", 3, "pending"),
            a_delivery("f", 4, "failed"),
            a_delivery("d", 5, "pending"),
        ],
        cursor=5,
    )
    copy = tmp_path / "copy.sqlite3"
    write(
        copy,
        [
            a_delivery("p", 40, "delivered", 111),
            a_delivery("f", 41, "delivered", 112),
            a_delivery("n", 42, "failed"),
            a_delivery("q", 43, "pending"),
        ],
        cursor=43,
    )
    conn = sqlite3.connect(copy)  # what the copy had itself imported counts too
    conn.execute("INSERT INTO delivered_elsewhere VALUES ('e', 100)")
    conn.commit()
    conn.close()
    assert delivered_count(copy) == 3
    assert import_delivered(local, copy) == 3  # p, f, e
    assert import_delivered(local, copy) == 0  # merged: nothing new
    assert table(local, "SELECT id, delivered_at FROM delivered_elsewhere ORDER BY id") == [
        ("e", 100),
        ("f", 112),
        ("p", 111),
    ]
    # Its own records stay (a failed one stays failed); a pending one delivered elsewhere
    # is not sent again; the cursor and seqs are its own.
    assert table(local, "SELECT id, seq, status, delivered_at FROM deliveries ORDER BY seq") == [
        ("p", 3, "delivered", 111),
        ("f", 4, "failed", None),
        ("d", 5, "pending", None),
    ]
    assert table(local, "SELECT seq FROM cursor") == [(5,)]
    assert delivered_count(local) == 3  # p (its own now), and f and e imported
    assert delivered_count(tmp_path / "none.sqlite3") == 0


def test_a_copy_from_before_delivered_elsewhere_or_without_deliveries_imports(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE deliveries (id TEXT PRIMARY KEY, seq INTEGER, status TEXT,"
                 " delivered_at INTEGER)")  # fmt: skip
    conn.execute("INSERT INTO deliveries VALUES ('a', 1, 'delivered', 7), ('b', 2, 'failed', NULL)")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    local = tmp_path / "deliveries.sqlite3"
    assert import_delivered(local, empty) == 0
    assert import_delivered(local, old) == 1
    assert table(local, "SELECT id, delivered_at FROM delivered_elsewhere") == [("a", 7)]


def test_a_redelivery_is_not_counted_delivered_by_a_copy_or_a_rebase(tmp_path: Path) -> None:
    """A crossing recorded delivered elsewhere that an operator redelivers is pending until it
    is sent: neither a snapshot's copy of this database nor a rebase may say it was
    delivered, or the next owner would record it delivered and never send it."""
    local = tmp_path / "deliveries.sqlite3"
    copy = tmp_path / "copy.sqlite3"
    write(copy, [a_delivery(ACME, 1, "delivered", NOW - 5)], cursor=1)
    assert import_delivered(local, copy) == 1
    write(local, [a_delivery(ACME, 3, "delivered", NOW - 5)], cursor=3)  # recorded, unsent
    assert delivered_count(local) == 1
    conn = connect(local)
    try:
        again = a_delivery(ACME, 3, "pending")  # what DeliveryService.redeliver saves
        _redeliver(conn, again)
    finally:
        conn.close()
    assert table(local, "SELECT id FROM delivered_elsewhere") == []
    assert read_delivered(local) == []  # a snapshot's copy of it knows nothing delivered
    assert rebase_deliveries(local) == 1
    assert table(local, "SELECT id FROM delivered_elsewhere") == []  # sent by the next owner
    # An id both imported and pending in its own record (written before redeliveries forgot
    # imports) is not counted delivered either: its own record wins.
    older = tmp_path / "older.sqlite3"
    write(older, [a_delivery(BETA, 4, "pending")], cursor=4)
    conn = sqlite3.connect(older)
    conn.execute("INSERT INTO delivered_elsewhere VALUES (?, ?)", (BETA, NOW))
    conn.commit()
    conn.close()
    assert read_delivered(older) == []
