"""Defaults declared once: the writer, the store and the accounts layer take the config
model's tables (meterd.config), and repeat none of their keys' defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

from meterd.accounts.service import Accounts, running_accounts
from meterd.config import AccountsConfig, Duration, StoreConfig
from meterd.model import Aggregation, Meter
from meterd.store import Store, Writer

KEYS = {
    "commit_interval",
    "index_cycle",
    "wal_checkpoint_interval",
    "checkpoint_interval",
    "idle_timeout",
    "mailbox_size",
    "max_restarts",
    "max_seconds",
    "max_awake",
    "max_in_flight_events",
}


def test_no_constructor_repeats_a_config_default() -> None:
    for constructor in (Writer, Store.at, Accounts):
        parameters = inspect.signature(constructor).parameters
        repeated = {
            name
            for name, parameter in parameters.items()
            if name in KEYS and parameter.default is not inspect.Parameter.empty
        }
        assert repeated == set(), constructor


def test_the_writer_reads_its_keys_from_the_store_table(tmp_path: Path) -> None:
    table = StoreConfig(
        commit_interval=Duration(0),
        index_cycle=Duration(2_000),
        wal_checkpoint_interval=Duration(0),
    )
    writer = Writer(tmp_path / "s.sqlite3", table)
    assert writer.commit_interval == 0
    assert writer.journal_tail.cycle_ms == 2_000
    assert writer.wal is None  # 0: SQLite's own checkpoints
    defaults = Writer(tmp_path / "t.sqlite3", StoreConfig())
    assert defaults.commit_interval == StoreConfig().commit_interval.seconds
    assert defaults.wal is not None


async def test_the_accounts_layer_reads_its_keys_from_the_accounts_table(tmp_path: Path) -> None:
    meters = {"api": Meter("api", Aggregation.SUM)}
    table = AccountsConfig(idle_timeout=Duration(1_500), mailbox_size=7, max_awake=3)
    async with running_accounts(
        tmp_path / "s.sqlite3",
        meters,
        store=StoreConfig(checkpoint_interval=Duration(4_000)),
        accounts=table,
        max_in_flight_events=11,
    ) as accounts:
        assert (accounts.idle_timeout, accounts.mailbox_size, accounts.max_awake) == (1.5, 7, 3)
        assert accounts.checkpoint_interval == 4.0
        assert accounts.budget.limit == 11
    async with running_accounts(tmp_path / "t.sqlite3", meters) as accounts:
        assert accounts.idle_timeout == AccountsConfig().idle_timeout.seconds
