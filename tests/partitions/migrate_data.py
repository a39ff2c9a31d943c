"""A store with real data in every table, written through meterd's own layers, and what
the migration tests compare: rows per table (ids given again on a merge left out), usage
per account read back through the accounts layer, and the references between tables."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest

from meterd.accounts.service import running_accounts
from meterd.alerts import AlertRule
from meterd.alerts._delivered import SCHEMA as DELIVERIES_SCHEMA
from meterd.alerts._delivery import Delivery, _add
from meterd.alerts._runtime import AlertBook
from meterd.billing import AdjustmentKind, Billing, BillingDB, Period, PriceBook, PriceRule
from meterd.config import Config, load
from meterd.model import DAY_MS, HOUR_MS, Aggregation, Event, Meter, Window
from meterd.partitions._migrate import TABLES, expected_layout, found_layout
from tests.store.helpers import inject_apply_fault

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size",))
METERS = {DYNO.name: DYNO}
NOV = Period(2026, 11)
T0 = NOV.start_ms + 2 * DAY_MS


def write_config(directory: Path, owners: int, count: int = 256, shard_size: int = 16) -> Config:
    path = directory / "meterd.toml"
    path.write_text(
        f"""
late_window = "35d"
dedupe_window = "35d"
[ingest]
listen = "127.0.0.1:18998"
[api]
listen = "127.0.0.1:18999"
admin_token = "test-admin-token-0123"
[store]
path = "var/meterd.sqlite3"
[partitions]
owners = {owners}
count = {count}
shard_size = {shard_size}
[[producers]]
name = "platform"
token = "test-platform-token"
[[meters]]
name = "dyno.seconds"
aggregation = "sum"
dimensions = ["size"]
"""
    )
    return load(path)


def accounts_of(n: int) -> list[str]:
    return [f"acct-{i:03d}" for i in range(n)]


def dyno(account: str, id: str, seconds: str, hour: int = 0, size: str = "std") -> Event:
    return Event(id, account, DYNO.name, Decimal(seconds), T0 + hour * HOUR_MS, (("size", size),))


BOOK = PriceBook([PriceRule(DYNO.name, Decimal("0.01"), date(2026, 1, 1))], METERS)


async def populate(config: Config, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events (with duplicates and id conflicts), two poison events per tenth account
    (quarantine: one discarded, in the quarantine log), alert crossings (outbox,
    deliveries), rules of one account, adjustments, voids, a closed month and the
    restatements of corrections after it, for ``n`` accounts."""

    def poison(event: Event) -> None:
        if event.id.startswith("poison"):
            raise ValueError("cannot apply this event")

    inject_apply_fault(monkeypatch, poison)
    rule = AlertRule(name="ten", meter=DYNO.name, webhook="hook", threshold=Decimal(10))
    alerts = AlertBook((rule,), METERS, history_ms=35 * DAY_MS, clock_ms=lambda: T0 + DAY_MS)
    accounts = accounts_of(n)
    async with running_accounts(config.store_path, METERS, alerts=alerts) as layer:
        for round_ in range(3):
            for i, account in enumerate(accounts):
                events = [
                    dyno(account, f"e{round_}-{k}", f"{i % 7 + k}.5", hour=k, size="std")
                    for k in range(3)
                ]
                if round_ == 1:
                    events.append(dyno(account, "e0-0", f"{i % 7}.5"))  # duplicate
                    events.append(dyno(account, "e0-1", "99"))  # id conflict
                if round_ == 2 and i % 10 == 3:
                    events.append(dyno(account, "poison-1", "5"))
                    events.append(dyno(account, "poison-2", "6"))
                await layer.ingest(account, events)
            if round_ == 0:  # a rule of one account, evaluated from the next batch on
                for account in accounts[::7]:
                    rule_ = ("dyno.seconds", "month", "20", None, "hook")
                    assert await layer.change_rule(account, "twenty", "dora", rule_)
        for account in accounts:  # every actor has applied (and checkpointed on stop)
            await layer.usage(account, DYNO, NOV.start_ms, NOV.end_ms, Window.DAY, None)
        for i, account in enumerate(accounts):  # quarantine: one discarded, one kept
            if i % 10 == 3:
                await layer.discard(account, ["poison-2"], "erin", "sent by a broken build")
        db = BillingDB(config.billing_path)
        billing = Billing(layer, await db.open(), BOOK, clock=lambda: NOV.end_ms + 1)
        try:
            for i, account in enumerate(accounts):
                if i % 3 == 0:
                    await billing.adjust(
                        account, DYNO.name, T0, Window.DAY, {"size": "std"},
                        AdjustmentKind.CREDIT, "1.5", "alice", f"credit {i}",
                    )  # fmt: skip
                if i % 4 == 1:
                    await billing.void_event(account, "e1-2", "bob", "sent twice")
            await billing.close_period(NOV, "alice")
            for i, account in enumerate(accounts):
                if i % 5 == 2:  # after the close: restated
                    await billing.adjust(
                        account, DYNO.name, T0, Window.DAY, {"size": "std"},
                        AdjustmentKind.DEBIT, "2", "carol", f"debit {i}",
                    )  # fmt: skip
        finally:
            await db.aclose()
    deliveries(config)
    restarts(config, accounts)


def restarts(config: Config, accounts: list[str]) -> None:
    """Restart history as the daemon's RestartLog writes it (its SQL): the poisoned
    accounts' actors and a node that is no account's."""
    rows = [
        (f"root/accounts/meters/{a}", T0, "crash", "ValueError", "cannot apply this event")
        for i, a in enumerate(accounts)
        if i % 10 == 3
    ]
    rows.append(("root/ingest", T0, "crash", "OSError", "address in use"))
    with sqlite3.connect(config.store_path) as conn:
        conn.executemany(
            "INSERT INTO restarts (path, at, kind, error_type, message) VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def deliveries(config: Config) -> None:
    """The delivery service's copy of the outbox: all but the last rows copied, the first
    ones delivered (its own functions, on its own file)."""
    path = config.store_path.with_name("deliveries.sqlite3")
    with sqlite3.connect(config.store_path) as store:
        rows = store.execute(
            "SELECT id, seq, account, alert, webhook, period, event_id, body, created_at"
            " FROM alert_outbox ORDER BY seq"
        ).fetchall()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in DELIVERIES_SCHEMA:
            conn.execute(statement)
        copied = [Delivery(*r) for r in rows[:-2]]
        for d in copied[: len(copied) // 2]:
            d.status, d.attempts, d.delivered_at = "delivered", 1, d.created_at + 5
        _add(conn, copied, copied[-1].seq if copied else 0)
    finally:
        conn.close()


# -- what is compared ---------------------------------------------------------------------


def _rows(path: Path, table: str, drop: Iterable[str]) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        keep = [c for c in columns if c not in set(drop)]
        return conn.execute(f"SELECT {', '.join(keep)} FROM {table}").fetchall()
    finally:
        conn.close()


def contents(config: Config, with_ids: bool = False) -> dict[str, Counter[tuple[Any, ...]]]:
    """Rows per table over every file of the layout on disk (placement-independent tables
    once per file are left out: store_meta, closures, journal_slices, cursor)."""
    layout = found_layout(config)
    out: dict[str, Counter[tuple[Any, ...]]] = {}
    for table in TABLES:
        if table.placement != "account":
            continue
        ids = (table.renumber, *dict(table.refs), *table.marks)
        drop = [] if with_ids else [c for c in ids if c]
        if table.name == "restatements":
            drop.append("seen")
        counter: Counter[tuple[Any, ...]] = Counter()
        for files in layout.files:
            counter.update(_rows(getattr(files, table.database), table.name, drop))
        out[f"{table.database}.{table.name}"] = counter
    return out


def accounts_in(path: Path) -> set[str]:
    """The accounts with a row in the store at ``path`` (tables with an account column)."""
    conn = sqlite3.connect(path)
    try:
        found: set[str] = set()
        for table in TABLES:
            if table.database == "store" and (
                table.account == "t.account" or table.name == "event_batches"
            ):
                found |= {a for (a,) in conn.execute(f"SELECT account FROM {table.name}")}
        return found
    finally:
        conn.close()


def references_hold(path: Path) -> None:
    """Every row pointing at a journal batch points at one of its own account."""
    conn = sqlite3.connect(path)
    try:
        for table in ("journal_index", "dedupe_overflow", "quarantine", "audit", "alert_outbox"):
            bad = conn.execute(
                f"SELECT count(*) FROM {table} t LEFT JOIN event_batches b"
                " ON b.batch_id = t.batch_id WHERE t.batch_id IS NOT NULL"
                " AND (b.account IS NULL OR b.account != t.account)"
            ).fetchone()[0]
            assert bad == 0, (path, table)
        orphans = conn.execute(
            "SELECT count(*) FROM dedupe d LEFT JOIN event_batches b ON b.batch_id = d.batch_id"
            " WHERE b.batch_id IS NULL"
        ).fetchone()[0]
        assert orphans == 0, path
    finally:
        conn.close()


async def usage(config: Config, store: Path, accounts: Iterable[str]) -> dict[str, Any]:
    """Each account's daily usage in November, read through the accounts layer on
    ``store`` (its actors replay the journal and checkpoints found there)."""
    out: dict[str, Any] = {}
    async with running_accounts(store, METERS) as layer:
        for account in accounts:
            rows = await layer.usage(account, DYNO, NOV.start_ms, NOV.end_ms, Window.DAY, None)
            out[account] = [(r.start, str(r.value)) for r in rows]
    return out


def layout_files(config: Config) -> list[Path]:
    return [p for f in expected_layout(config).files for p in f.all()]


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


Failer = Callable[[str], None]


def populated_template(where: Path, n: int) -> Path:
    """A directory with a populated single store (``var/``) under ``where``, made once and
    copied by each test (:func:`copy_of`)."""
    import trio

    if not (where / "var").exists():
        with pytest.MonkeyPatch.context() as monkeypatch:
            trio.run(populate, write_config(where, owners=0), n, monkeypatch)
    return where


SMALL: Final = (64, 16)
"""A layout of 4 shards (count, shard_size): the crash tests' (fewer files to fsync)."""


def copy_of(
    template: Path, where: Path, owners: int = 0, layout: tuple[int, int] = (256, 16)
) -> Config:
    """A copy of ``template``'s files in ``where``, with a config of ``owners`` and the
    partitions ``layout`` (count, shard_size)."""
    shutil.copytree(template / "var", where / "var")
    return write_config(where, owners, *layout)
