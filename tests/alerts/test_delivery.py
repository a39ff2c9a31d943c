"""The delivery service against a real local receiver and against httpx's MockTransport:
signed bodies, retries with backoff, a receiver down then up, 24 h then failed, ordering."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from meterd.accounts.service import Accounts
from meterd.alerts import AlertRule, Webhook
from meterd.alerts._delivery import (
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    RETRY_FOR_MS,
    DeliveryService,
    backoff_s,
)
from meterd.store import CommitFailed

from .helpers import NOW, book, dyno, outbox, rule, running
from .receiver import Receiver

SECRET = "whsec-0123456789abcdef"


def mock_ms() -> int:
    return NOW + int(trio.current_time() * 1000)


@asynccontextmanager
async def delivering(
    tmp_path: Path, rules: list[AlertRule], hooks: list[Webhook], **options: Any
) -> AsyncIterator[tuple[Accounts, DeliveryService]]:
    alerts = book(*rules)
    # a slow sweeper: with mock time every wake of it is a jump of the clock
    async with running(
        tmp_path / "meterd.sqlite3", alerts, idle_timeout=3600, checkpoint_interval=3600
    ) as accounts:
        service = DeliveryService(
            accounts.store, alerts, hooks, tmp_path / "deliveries.sqlite3", **options
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            yield accounts, service
            nursery.cancel_scope.cancel()


async def _wait(receiver: Receiver, done: Callable[[Receiver], bool]) -> None:
    def block() -> bool:
        with receiver.changed:
            return receiver.changed.wait_for(lambda: done(receiver), timeout=30)

    assert await trio.to_thread.run_sync(block)


async def test_a_crossing_arrives_signed_within_seconds(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    ten = rule("ten", "10")
    try:
        async with delivering(tmp_path, [ten], [Webhook("hook", receiver.url, SECRET)]) as (
            accounts,
            service,
        ):
            started = trio.current_time()
            await accounts.ingest("acme", [dyno("acme", "e1", "4"), dyno("acme", "e2", "6.5")])
            await _wait(receiver, lambda r: len(r.received) >= 1)
            assert trio.current_time() - started < 5
            await service.wait_until(lambda: service.delivered == 1)
            [delivery] = await service.deliveries()
    finally:
        receiver.stop()
    [got] = receiver.received
    assert got.valid
    assert got.id == ten.crossing_id("acme", "2026-11") == delivery.id
    assert got.body == outbox(tmp_path / "meterd.sqlite3")[0].body
    body = got.json
    assert (body["type"], body["alert"], body["value"], body["threshold"]) == (
        "alert.triggered",
        "ten",
        "10.5",
        "10",
    )
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 1, None)


# The real receiver runs in a thread: these use real time with a fast schedule (mock time
# would jump a request's timeout while the thread answers); the schedule itself is checked
# with mock time below.
FAST = {"first_backoff": 0.02, "max_backoff": 0.1}


async def test_a_receiver_failing_three_times_gets_it_on_the_fourth(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, fail_first=3).start()
    try:
        async with delivering(
            tmp_path, [rule("one", "1")], [Webhook("hook", receiver.url, SECRET)], **FAST
        ) as (accounts, service):
            await accounts.ingest("acme", [dyno("acme", "e1", "1")])
            await service.wait_until(lambda: service.delivered == 1)
            [delivery] = await service.deliveries()
    finally:
        receiver.stop()
    assert [r.status for r in receiver.received] == [500, 500, 500, 200]
    assert len({r.body for r in receiver.received}) == 1  # the same bytes on every attempt
    assert all(r.valid for r in receiver.received)
    assert delivery.attempts == 4
    assert delivery.last_error == "HTTP 500 Internal Server Error"  # of the last failure


async def test_a_receiver_down_then_up_gets_everything(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)
    receiver.reserve()  # nothing listens there yet: connections are refused
    rules = [rule("one", "1"), rule("two", "2")]
    try:
        async with delivering(tmp_path, rules, [Webhook("hook", receiver.url, SECRET)], **FAST) as (
            accounts,
            service,
        ):
            await accounts.ingest("acme", [dyno("acme", "e1", "1")])
            await accounts.ingest("acme", [dyno("acme", "e2", "1")])
            await accounts.ingest("beta", [dyno("beta", "b1", "5")])
            await service.wait_until(lambda: service.attempts >= 6)
            assert service.delivered == 0
            [first, *_] = await service.deliveries(account="acme")
            assert first.last_error is not None
            assert "ConnectError" in first.last_error
            receiver.start()
            await service.wait_until(lambda: service.delivered == 4)
            assert await service.counts() == {"pending": 0, "delivered": 4, "failed": 0}
    finally:
        receiver.stop()
    # each account's crossings arrive in the order they were decided
    acme = [json.loads(r.body)["alert"] for r in receiver.received if r.json["account"] == "acme"]
    assert acme == ["one", "two"]
    assert len(receiver.delivered_ids()) == 4


def test_the_default_schedule_retries_for_a_day_at_most_5_minutes_apart() -> None:
    rng = random.Random(17)
    waited, gaps = 0.0, []
    attempts = 1
    while waited * 1000 < RETRY_FOR_MS:  # the service's rule: fail once a day has passed
        gap = backoff_s(attempts, rng, FIRST_BACKOFF_S, MAX_BACKOFF_S)
        gaps.append(gap)
        waited += gap
        attempts += 1
    assert gaps[0] <= 5
    assert max(gaps) <= 300
    assert all(g > 0 for g in gaps)
    assert 290 <= attempts <= 600  # ~1 attempt every 3.75 minutes once backed off


async def test_after_the_retry_time_it_is_failed_then_redelivered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    up = False
    times: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(200 if up else 503)

    hook = Webhook("hook", "http://127.0.0.1:9/hooks", SECRET)
    async with delivering(
        tmp_path,
        [rule("one", "1")],
        [hook],
        clock_ms=mock_ms,
        transport=httpx.MockTransport(answer),
        retry_for_ms=600_000,  # 10 minutes instead of the day
        poll=3600,
    ) as (accounts, service):
        await accounts.ingest("acme", [dyno("acme", "e1", "1")])
        await service.wait_until(lambda: service.failed == 1)
        [delivery] = await service.deliveries()
        assert (delivery.status, delivery.last_error) == ("failed", "HTTP 503 Service Unavailable")
        # Lower bounds only: while a worker thread writes the delivery's state, autojump
        # runs the store's periodic tasks and mock time races ahead (upper bounds of the
        # schedule are checked without threads, above).
        assert times[-1] - times[0] >= 600
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 1  # 2 s x 2^(n-1) with jitter in [0.5, 1]
        assert service.oldest_undelivered_ms() is None
        assert await service.counts() == {"pending": 0, "delivered": 0, "failed": 1}
        up = True
        await service.redeliver(delivery.id)
        await service.wait_until(lambda: service.delivered == 1)
        [again] = await service.deliveries()
        assert (again.status, again.attempts) == ("delivered", 1)


async def test_concurrency_is_bounded_per_webhook(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    in_flight = 0
    most = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await trio.sleep(1)  # mock time: a slow receiver
        in_flight -= 1
        return httpx.Response(204)

    hook = Webhook("hook", "http://127.0.0.1:9/hooks", SECRET, max_concurrency=2)
    async with delivering(
        tmp_path,
        [rule("one", "1")],
        [hook],
        clock_ms=mock_ms,
        transport=httpx.MockTransport(answer),
    ) as (accounts, service):
        for n in range(6):
            await accounts.ingest(f"a{n}", [dyno(f"a{n}", "e", "1")])
        await service.wait_until(lambda: service.delivered == 6)
    assert most == 2


async def test_a_restart_wakes_the_accounts_whose_journal_passed_their_checkpoint(
    tmp_path: Path,
) -> None:
    """Regression (the kill -9 soak): events committed after an account's last checkpoint
    were evaluated only when the account next woke, and a re-send of them (duplicates)
    wakes nothing, so their crossings waited for new traffic."""
    db = tmp_path / "meterd.sqlite3"
    async with running(db, book(rule("ten", "10"))) as accounts:
        writer = accounts.store.writer

        async def no_checkpoint(*args: Any, **kwargs: Any) -> None:
            raise CommitFailed("the process dies before any checkpoint commits")

        writer.checkpoint = no_checkpoint  # type: ignore[method-assign]
        await accounts.ingest("acme", [dyno("acme", "e1", "10")])
        accounts.supervisor.stop()  # the account's actor goes without writing anything
    assert outbox(db) == []
    got: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        got.append(request.headers["Meterd-Event-Id"])
        return httpx.Response(200)

    alerts = book(rule("ten", "10"))
    async with running(db, alerts, idle_timeout=3600, checkpoint_interval=3600) as accounts:
        service = DeliveryService(
            accounts.store,
            alerts,
            [Webhook("hook", "http://127.0.0.1:9/hooks", SECRET)],
            tmp_path / "deliveries.sqlite3",
            transport=httpx.MockTransport(answer),
            wake=accounts.checkpoint,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):  # without the wake-up it never comes
                await service.wait_until(lambda: service.delivered == 1)
            nursery.cancel_scope.cancel()
    assert got == [rule("ten", "10").crossing_id("acme", "2026-11")]


async def test_the_delivery_services_of_a_process_share_one_tls_context(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """An owner process runs a delivery service per shard: the CA bundle is loaded once
    (each load is ~20 ms of CPU at the owner's start), not once per service."""
    from meterd.alerts import _delivery

    made: list[object] = []
    real = httpx.create_ssl_context

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    _delivery._tls.cache_clear()
    hook = Webhook("h", "https://hooks.invalid/x", SECRET)
    for shard in range(3):
        async with delivering(tmp_path / f"shard-{shard}", [], [hook]):
            pass
    assert len(made) == 1
