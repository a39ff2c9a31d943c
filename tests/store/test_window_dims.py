"""A window's dimension values as its store key: injective for every string, and the
migration (schema version 6) from the ``"\\x1f"``-joined keys that were not.

Two acknowledged events whose dimension values differ only in where a U+001F sits
(``("a\\x1fb", "c")`` and ``("a", "b\\x1fc")``) once shared a window row, so the later
checkpoint's usage was lost and the billing code failed on the row's three values.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.accounts.service import Accounts
from meterd.billing import Billing, BillingDB, Period, PriceBook, PriceRule
from meterd.model import DAY_MS, HOUR_MS, Aggregation, Event, Meter, Window, canonical_quantity
from meterd.store import schema
from meterd.store.codec import decode_dims, encode_dims
from tests.accounts.test_accounts import running, settled, submit
from tests.examples import examples
from tests.store.test_dedupe_retention import as_before_retention

SIZED = Meter("dyno.seconds", Aggregation.SUM, ("size", "app"))
ONE = Meter("addon.hours", Aggregation.SUM, ("plan",))
NONE = Meter("requests", Aggregation.COUNT)
METERS = {m.name: m for m in (SIZED, ONE, NONE)}
NOV = Period(2026, 11)
T0 = NOV.start_ms + HOUR_MS

# What a producer can send: msgpack carries any str but a lone surrogate (not UTF-8).
values = st.text(
    st.one_of(
        st.sampled_from(["\x1f", "\x1e", "\\", '"', "[", "]", ",", "\x00", "é", "\U0001f600"]),
        st.characters(exclude_categories=["Cs"]),
    ),
    max_size=6,
)


def sized(id: str, quantity: int, size: str, app: str, minute: int = 0) -> Event:
    return Event(
        id, "acme", SIZED.name, quantity, T0 + minute * 60_000, (("app", app), ("size", size))
    )


async def restart(accounts: Accounts, account: str) -> None:
    """Checkpoint, stop the account's actor, and let the next query wake a new one from the
    store (so what is read back went through the window rows)."""
    await accounts.checkpoint(account)
    ref = accounts.registry.whereis(account)
    assert ref is not None
    monitor = ref.monitor()
    await ref.cast(("hibernate",))
    assert (await monitor.wait()).kind == "normal"


@given(st.lists(values, max_size=4), st.lists(values, max_size=4))
def test_the_key_is_injective_and_decodes_back(a: list[str], b: list[str]) -> None:
    assert decode_dims(encode_dims(a)) == tuple(a)
    assert (encode_dims(a) == encode_dims(b)) == (a == b)
    assert encode_dims(a).isascii()


def test_lone_surrogates_are_keys_too() -> None:
    dims = ("\ud800", "a\udfff")
    assert decode_dims(encode_dims(dims)) == dims


async def test_values_holding_the_old_separator_keep_their_own_cells(tmp_path: Path) -> None:
    book = PriceBook([PriceRule(SIZED.name, Decimal("0.01"), date(2026, 1, 1))], METERS)
    async with running(tmp_path, meters=METERS) as accounts:
        verdicts = await submit(
            accounts,
            [("acme", [sized("e1", 100, "a\x1fb", "c"), sized("e2", 5, "a", "b\x1fc")])],
        )
        assert verdicts == [([0, 1], [], [])]
        await settled(accounts)
        for _ in range(2):  # from the live actor, then from the store after a restart
            rows = await accounts.usage("acme", SIZED, T0, T0 + HOUR_MS, Window.HOUR, "size")
            assert [(r.group, r.value) for r in rows] == [
                ({"size": "a"}, 5),
                ({"size": "a\x1fb"}, 100),
            ]
            total = await accounts.usage("acme", SIZED, T0, T0 + HOUR_MS, Window.HOUR)
            assert [r.value for r in total] == [105]
            await restart(accounts, "acme")
        db = BillingDB(tmp_path / "billing.sqlite3")
        try:
            billing = Billing(accounts, await db.open(), book, clock=lambda: NOV.end_ms + 1)
            invoice = (await billing.invoice("acme", NOV)).invoice
        finally:
            await db.aclose()
        assert sorted((line.dims, line.quantity) for line in invoice.lines) == [
            ((("size", "a"), ("app", "b\x1fc")), Decimal(5)),
            ((("size", "a\x1fb"), ("app", "c")), Decimal(100)),
        ]
        assert invoice.total == Decimal("1.05")


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(values, values, st.integers(0, 10**9), st.integers(0, 59), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_usage_per_group_equals_the_model_for_any_dimension_values(
    stream: list[tuple[str, str, int, int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_usage_per_group, Path(tmp), stream)


async def _usage_per_group(tmp: Path, stream: list[tuple[str, str, int, int, bool]]) -> None:
    by_size: dict[str, int] = defaultdict(int)
    by_app: dict[str, int] = defaultdict(int)
    async with running(tmp, meters=METERS, idle_timeout=10**6) as accounts:
        for index, (size, app, quantity, minute, then_restart) in enumerate(stream):
            event = sized(f"e{index}", quantity, size, app, minute)
            assert await submit(accounts, [("acme", [event])]) == [([0], [], [])]
            by_size[size] += quantity
            by_app[app] += quantity
            if then_restart:
                await settled(accounts)
                await restart(accounts, "acme")
        for group_by, model in (("size", by_size), ("app", by_app)):
            rows = await accounts.usage("acme", SIZED, T0, T0 + HOUR_MS, Window.HOUR, group_by)
            got = {r.group[group_by]: canonical_quantity(r.value) for r in rows if r.group}
            want = {k: canonical_quantity(v) for k, v in model.items()}
            assert got == want


# ---- the migration from schema version 5 -------------------------------------------------


def _v5_store(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for step in schema.MIGRATIONS[:5]:
        step.apply(conn, {})
    conn.execute("PRAGMA user_version = 5")
    conn.execute("COMMIT")
    conn.close()


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


def test_v6_re_encodes_window_keys_with_the_meters_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    _v5_store(path)
    old = [
        ("acme", SIZED.name, 0, "std\x1fweb", b"s1"),
        ("acme", SIZED.name, 0, "\x1f", b"s2"),  # both values empty
        ("acme", ONE.name, 0, "gold\x1fplus", b"s3"),  # one value holding U+001F: fine
        ("acme", ONE.name, 0, "", b"s4"),  # one empty value
        ("acme", ONE.name, 60_000, '["x"]', b"s5"),  # an old key that looks like a new one
        ("acme", ONE.name, 120_000, "x", b"s6"),
        ("acme", NONE.name, 0, "", b"s7"),  # no dimensions
        ("acme", "gone.meter", 0, "", b"s8"),  # a meter no longer configured
        ("acme", "gone.meter", 0, "p\x1fq", b"s9"),
        # Two cells shared this row: globex's windows are rebuilt from the journal.
        ("globex", SIZED.name, 0, "a\x1fb\x1fc", b"x1"),
        ("globex", ONE.name, 0, "fine", b"x2"),
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?)", old)
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?, 0)", [("acme", 7), ("globex", 9), ("initech", 3)]
    )
    conn.close()

    dimensions = {m.name: len(m.dimensions) for m in METERS.values()}
    with structlog.testing.capture_logs() as logs:
        schema.open_database(path, meter_dimensions=dimensions).close()

    assert _rows(path, "SELECT account, meter, start, dims, state FROM windows") == sorted(
        [
            ("acme", SIZED.name, 0, '["std","web"]', b"s1"),
            ("acme", SIZED.name, 0, '["",""]', b"s2"),
            ("acme", ONE.name, 0, '["gold\\u001fplus"]', b"s3"),
            ("acme", ONE.name, 0, '[""]', b"s4"),
            ("acme", ONE.name, 60_000, '["[\\"x\\"]"]', b"s5"),
            ("acme", ONE.name, 120_000, '["x"]', b"s6"),
            ("acme", NONE.name, 0, "[]", b"s7"),
            ("acme", "gone.meter", 0, "[]", b"s8"),
            ("acme", "gone.meter", 0, '["p","q"]', b"s9"),
        ]
    )
    assert _rows(path, "SELECT account, watermark FROM accounts") == [
        ("acme", 7),
        ("globex", 0),
        ("initech", 3),
    ]
    assert [line["account"] for line in logs if line["event"] == "store_windows_rebuilt"] == [
        "globex"
    ]


async def test_an_account_whose_row_was_shared_is_rebuilt_from_its_journal(
    tmp_path: Path,
) -> None:
    """End to end: the old code's checkpoint of the two events, as a v5 store would hold it
    (one shared row, the watermark past the batch), comes back exact after the migration."""
    path = tmp_path / "meterd.sqlite3"
    async with running(tmp_path, meters=METERS) as accounts:
        await submit(
            accounts,
            [("acme", [sized("e1", 100, "a\x1fb", "c"), sized("e2", 5, "a", "b\x1fc")])],
        )
        await settled(accounts)
        await accounts.checkpoint("acme")
    conn = sqlite3.connect(path, isolation_level=None)
    # What the old encoding left: one row for both cells, holding only the 100.
    [(state,)] = conn.execute("SELECT state FROM windows WHERE dims LIKE '%a\\u001fb%'")
    conn.execute("DELETE FROM windows")
    conn.execute(
        "INSERT INTO windows VALUES ('acme', ?, ?, 'a\x1fb\x1fc', ?)", (SIZED.name, T0, state)
    )
    conn.execute("PRAGMA user_version = 5")
    as_before_retention(conn)  # and step 7's tables as they were at version 5
    conn.close()

    async with running(tmp_path, meters=METERS) as accounts:
        rows = await accounts.usage("acme", SIZED, T0, T0 + DAY_MS, Window.DAY, "app")
        assert [(r.group, r.value) for r in rows] == [({"app": "b\x1fc"}, 5), ({"app": "c"}, 100)]
