"""What the store's tests share: events, a running writer, rows read back, and faults
injected from outside the writer (a connection class of the test's)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.accounts import actor as actor_module
from meterd.accounts.aggregate import AccountUsage
from meterd.config import AccountsConfig, Duration, StoreConfig
from meterd.model import Event, Meter
from meterd.store import AppendResult, Writer, schema

FIXTURES = Path(__file__).parent.parent / "fixtures"


def ev(
    event_id: str,
    account: str = "acme",
    *,
    meter: str = "api",
    quantity: int | Decimal = 1,
    time: int = 60_000,
    properties: tuple[tuple[str, str], ...] = (),
) -> Event:
    return Event(event_id, account, meter, quantity, time, properties, "prod", 1)


@asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[Writer]:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(writer.run)
        assert started is writer
        yield writer
        nursery.cancel_scope.cancel()


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class Collector:
    """An ``on_done`` that records what it was given."""

    def __init__(self) -> None:
        self.outcomes: list[AppendResult | list[AppendResult] | BaseException] = []

    def __call__(self, outcome: AppendResult | list[AppendResult] | BaseException) -> None:
        self.outcomes.append(outcome)

    def result(self, index: int = 0) -> AppendResult:
        outcome = self.outcomes[index]
        assert isinstance(outcome, AppendResult), outcome
        return outcome


def dedupe_row_keys_by_method(buckets: Mapping[str, int], events: Iterable[Event]) -> list[int]:
    """The writer's batch keys through ``Event.dedupe_key()`` (which tests patch to make
    keys collide; the real ``schema.dedupe_row_keys`` computes it inline)."""
    return [schema.dedupe_row_key(buckets[event.account], event) for event in events]


class Faults:
    """Faults injected into a writer's connection from outside: pass
    :meth:`connection_class` as the writer's ``connection_factory``, then set
    :attr:`before_commit` (called on the writer's thread just before each ``COMMIT``: it
    may raise, block, or kill the process) while the writer runs."""

    def __init__(self) -> None:
        self.before_commit: Callable[[], None] | None = None

    def connection_class(self) -> type[sqlite3.Connection]:
        faults = self

        class FaultyConnection(sqlite3.Connection):
            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                if sql == "COMMIT" and faults.before_commit is not None:
                    faults.before_commit()
                return super().execute(sql, parameters)

        return FaultyConnection


def faulty_writer(path: Path, config: StoreConfig, **options: Any) -> tuple[Writer, Faults]:
    """A :class:`Writer` (``options`` as its own) and the faults of its connection."""
    faults = Faults()
    writer = Writer(path, config, connection_factory=faults.connection_class(), **options)
    return writer, faults


async def until(writer: Writer, condition: Callable[[], bool]) -> None:
    """Wait (on the writer's own change events, never a sleep) until ``condition()``."""
    while not condition():
        await writer.next_change().wait()


def inject_apply_fault(monkeypatch: pytest.MonkeyPatch, fault: Callable[[Event], None]) -> None:
    """Meter actors started from now on apply events through the production path
    (``AccountUsage.apply_events``, which the start-up replay's ``apply`` also goes through),
    calling ``fault(event)`` before each event: it may raise (a poison event) or record the
    order. Injected from outside: the actor's usage class is replaced for the test."""

    class FaultyUsage(AccountUsage):
        def apply_events(self, meters: Mapping[str, Meter], events: Iterable[Event]) -> None:
            events = list(events)
            for index, event in enumerate(events):
                try:
                    fault(event)
                except BaseException:
                    super().apply_events(meters, events[:index])  # those before it, as it does
                    raise
            super().apply_events(meters, events)

    monkeypatch.setattr(actor_module, "AccountUsage", FaultyUsage)


def store_config(**seconds: float | None) -> StoreConfig:
    """The ``[store]`` table as the config model declares it, with the keys given here in
    seconds (``wal_checkpoint_interval=None``: SQLite's own checkpoints, the table's 0)."""
    given: dict[str, Any] = {
        key: Duration(round((value or 0) * 1000)) for key, value in seconds.items()
    }
    return dataclasses.replace(StoreConfig(), **given)


_DURATIONS = {"idle_timeout", "max_seconds", "checkpoint_interval"}


def layer_options(**options: Any) -> dict[str, Any]:
    """``running_accounts``' arguments from per-key ones (durations in seconds), built from
    the config model: ``[store] checkpoint_interval``, the ``[accounts]`` keys, ``[ingest]
    max_in_flight_events``; the others (``pressure_idle``, ``call_timeout``) as given."""
    given: dict[str, Any] = {
        key: Duration(round(value * 1000)) if key in _DURATIONS else value
        for key, value in options.items()
    }
    store_keys = {f.name for f in dataclasses.fields(StoreConfig)}
    accounts_keys = {f.name for f in dataclasses.fields(AccountsConfig)}
    store = {key: given.pop(key) for key in store_keys & set(given)}
    accounts = {key: given.pop(key) for key in accounts_keys & set(given)}
    if store:
        given["store"] = dataclasses.replace(StoreConfig(), **store)
    if accounts:
        given["accounts"] = dataclasses.replace(AccountsConfig(), **accounts)
    return given
