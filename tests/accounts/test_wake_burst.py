"""A burst of new accounts: wake-ups are bounded, and they queue in their own reader lane,
so ``/metrics`` and ``/healthz`` answer while it is full (meterd/store/reader.py, lanes;
meterd/accounts/service.py, wake-ups; docs/accounts.md).

Structural, never timed: the wake-ups' reads are blocked in their reader threads (the
journal lookup of ``load_account`` waits on a ``threading.Event``) until the test lets
them go; ``trio.fail_after`` is only a safety net against a hang."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import meterd.store.reader as reader_module
from meterd.accounts.actor import MeterActor
from meterd.accounts.service import MAX_WAKING, running_accounts
from meterd.app import Services
from meterd.model import DAY_MS, Event, Window
from tests.ingest.test_server import METERS, T0, make_config, running, total
from tests.store.helpers import layer_options

BLOCKED = 10  # wake-ups started while the reads are blocked


class BlockedReads:
    """Makes ``load_account`` block in its reader thread until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.entered = 0
        self._progress = trio.Event()
        original = reader_module._journal_ids

        def blocked(*args: Any) -> Any:
            trio.from_thread.run_sync(self._enter)
            self.gate.wait(timeout=60)  # a safety net: never a stuck thread after a failure
            return original(*args)

        monkeypatch.setattr(reader_module, "_journal_ids", blocked)

    def _enter(self) -> None:
        self.entered += 1
        self._progress.set()
        self._progress = trio.Event()

    async def until_entered(self, count: int) -> None:
        while self.entered < count:
            await self._progress.wait()

    def release(self) -> None:
        self.gate.set()


async def test_metrics_and_healthz_answer_while_wake_ups_fill_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the lanes, every read queued on one limiter of 2 threads: with both held by
    wake-ups, ``/metrics`` (its quarantine count) waited behind all of them."""
    blocked = BlockedReads(monkeypatch)
    async with running(make_config(tmp_path)) as services:
        accounts = services.accounts
        async with trio.open_nursery() as wakes:
            for n in range(BLOCKED):
                wakes.start_soon(accounts.ensure_started, f"new-{n}")
            await blocked.until_entered(2)  # both threads busy...
            await trio.testing.wait_all_tasks_blocked()  # ...and the rest queued
            assert blocked.entered == 2
            await check_the_api_answers(services)
            blocked.release()
        assert all(f"new-{n}" in accounts.registry for n in range(BLOCKED))


async def check_the_api_answers(services: Services) -> None:
    with trio.fail_after(20):  # a hang guard only: before the fix this never answered
        async with httpx.AsyncClient(base_url=services.api.url) as client:
            metrics = await client.get("/metrics")
            health = await client.get("/healthz")
    assert metrics.status_code == 200
    assert f'meterd_store_reads_waiting{{lane="recovery"}} {BLOCKED - 2}.0' in metrics.text
    assert 'meterd_store_reads_waiting{lane="monitor"} 0.0' in metrics.text
    assert "meterd_quarantined_events 0.0" in metrics.text
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


async def test_wake_ups_in_flight_are_bounded_and_every_account_wakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events of 100 new accounts committed while every wake-up read is blocked: at most
    MAX_WAKING actors are starting, the rest wait as names; once the reads go, every
    account wakes and counts its event. (Before the bound, all 100 were starting.)"""
    blocked = BlockedReads(monkeypatch)
    starting = started = most = 0
    all_started = trio.Event()
    original_init = MeterActor.init

    async def counted_init(self: MeterActor) -> None:
        nonlocal starting, started, most
        starting += 1
        most = max(most, starting)
        try:
            await original_init(self)
        finally:
            starting -= 1
            started += 1
            if started == len(names):
                all_started.set()

    monkeypatch.setattr(MeterActor, "init", counted_init)
    names = [f"burst-{n:03d}" for n in range(100)]
    async with running(make_config(tmp_path)) as services:
        accounts = services.accounts
        committed = trio.Event()
        groups = [
            (name, [Event(f"e-{name}", name, "router.requests", 1, T0, (("app", "a"),))])
            for name in names
        ]
        accounts.submit(groups, lambda outcome: committed.set())
        await committed.wait()
        await blocked.until_entered(2)
        await trio.testing.wait_all_tasks_blocked()
        assert most == starting == MAX_WAKING
        assert accounts.waking_now == MAX_WAKING
        assert accounts.waking_queued == len(names) - MAX_WAKING
        blocked.release()
        await all_started.wait()
        assert most == MAX_WAKING
        assert accounts.wakes == len(names)
        for name in names:
            assert await total(services, name) == "1"


async def test_at_most_max_awake_actors_are_awake_and_every_account_still_wakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 new accounts, ``max_awake`` 10: wake-ups wait while 10 are awake, and the
    sweeper's ticks put idle ones to sleep early (here idle for 0 s), so every account is
    woken in turn and counts its event, never more than 10 (+ the wake-ups starting) awake.
    (Before the cap, all 30 were awake at once until idle_timeout.)"""
    names = [f"capped-{n:02d}" for n in range(30)]
    most = started = 0
    all_started = trio.Event()
    original_init = MeterActor.init
    awake: list[Any] = []  # the Accounts, once running

    async def counted_init(self: MeterActor) -> None:
        nonlocal most, started
        most = max(most, len(awake[0].supervisor))  # awake, this one not yet counted
        await original_init(self)
        started += 1
        if started == len(names):
            all_started.set()

    monkeypatch.setattr(MeterActor, "init", counted_init)
    async with running_accounts(
        tmp_path / "meterd.sqlite3",
        {meter.name: meter for meter in METERS},
        # The sweeper's period: 50 ms (checkpoint_interval / 4).
        **layer_options(max_awake=10, pressure_idle=0.0, checkpoint_interval=0.2),
    ) as accounts:
        awake.append(accounts)
        groups = [
            (name, [Event(f"e-{name}", name, "router.requests", 1, T0, (("app", "a"),))])
            for name in names
        ]
        with trio.fail_after(30):  # a hang guard: the sweeper runs on the real clock
            await accounts.write(groups)
            await all_started.wait()
        assert accounts.wakes == len(names)
        assert accounts.wake_waits >= 1
        assert most <= 10 + MAX_WAKING - 1
        meter = accounts.meters["router.requests"]
        for name in names:
            rows = await accounts.usage(name, meter, T0 - DAY_MS, T0 + DAY_MS, Window.DAY)
            assert [row.value for row in rows] == [1]
