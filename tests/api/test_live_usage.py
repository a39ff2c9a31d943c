"""Live usage for dashboards (docs/api.md, "Live usage"): a real websocket client
(trio-websocket) against an in-process daemon: the current value on connect, a message per
change, coalesced to at most one per LIVE_INTERVAL (MockClock), the admin token or the
account's own token (header or first message), never another account's."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing
from click.testing import CliRunner
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket

from meterd.api.live import LIVE_INTERVAL, LiveUsage, follow
from meterd.app import Services
from meterd.cli.main import main as cli
from meterd.config import ApiConfig, Config, account_token
from meterd.model import Event
from meterd.store import CommitFailed
from tests.ingest.test_server import ADMIN_TOKEN, make_config, running

SECRET = "account-token-secret-0123"
NOW = time.time_ns() // 1_000_000
T = NOW - 60_000


def config(tmp_path: Path) -> Config:
    base = make_config(tmp_path)
    return replace(base, api=replace(base.api, account_token_secret=SECRET))


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


@asynccontextmanager
async def live(
    services: Services, account: str, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    port = int(services.api.url.rsplit(":", 1)[1])
    async with open_websocket(
        "127.0.0.1",
        port,
        f"/v1/accounts/{account}/usage/live",
        use_ssl=False,
        extra_headers=headers if headers is not None else bearer(ADMIN_TOKEN),
    ) as ws:
        yield ws


async def message(ws: WebSocketConnection) -> dict[str, Any]:
    found = json.loads(await ws.get_message())
    assert isinstance(found, dict)
    return found


def dyno(account: str, id: str, seconds: int | str) -> Event:
    from decimal import Decimal

    return Event(id, account, "dyno.seconds", Decimal(seconds), T, (("size", "std"),))


async def test_the_current_value_on_connect_then_each_change(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as services:
        await services.accounts.ingest("acme", [dyno("acme", "e1", "1.5")])
        async with live(services, "acme") as ws:
            first = await message(ws)
            assert first["type"] == "usage"
            assert first["account"] == "acme"
            assert first["meters"] == {
                "router.requests": None,
                "dyno.seconds": "1.5",
                "api.active_users": None,
            }
            assert first["from"] <= NOW < first["to"]
            assert first["period"] == time.strftime("%Y-%m", time.gmtime(first["from"] / 1000))
            await services.accounts.ingest("acme", [dyno("acme", "e2", "2.25")])
            second = await message(ws)
            assert second["meters"]["dyno.seconds"] == "3.75"
        async with live(services, "nobody") as ws:  # unknown: nulls, and no actor woken
            assert set((await message(ws))["meters"].values()) == {None}
            assert "nobody" not in services.accounts.registry


async def test_changes_are_coalesced_to_one_message_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``follow`` alone on a MockClock: 200 changes, one every 10 ms (Trio time), make a
    message at once and then at most one per interval, each with the latest value."""
    value = 0
    change = trio.Event()
    sent: list[tuple[float, int]] = []

    async def snapshot() -> LiveUsage:
        return LiveUsage(
            account="acme", period="2026-12", from_=0, to=NOW + 86_400_000, at=0,
            meters={"dyno.seconds": str(value)},
        )  # fmt: skip

    def next_change() -> trio.Event:
        return change

    async def send(found: LiveUsage) -> None:
        sent.append((trio.current_time(), int(found.meters["dyno.seconds"] or 0)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow, snapshot, next_change, send)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for _ in range(200):
            await trio.sleep(0.01)
            value += 1
            change.set()
            change = trio.Event()
        await trio.sleep(LIVE_INTERVAL)  # Trio time: the last change's message goes out
        nursery.cancel_scope.cancel()
    times = [t for t, _ in sent]
    assert sent[0] == (start, 0)  # the current value at once
    assert sent[-1][1] == 200  # the latest value, in the end
    assert all(b - a >= LIVE_INTERVAL for a, b in itertools.pairwise(times))
    assert len(sent) <= 2 + 200 * 0.01 / LIVE_INTERVAL  # 6 messages for 200 changes
    assert [v for _, v in sent] == sorted({v for _, v in sent})  # increasing, none twice


async def test_a_burst_of_commits_is_a_few_messages_end_to_end(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as services, live(services, "acme") as ws:
        assert (await message(ws))["meters"]["dyno.seconds"] is None
        started = trio.current_time()
        for n in range(20):  # 20 commits, each a change
            await services.accounts.ingest("acme", [dyno("acme", f"e{n}", 1)])
        received: list[dict[str, Any]] = []
        while not received or received[-1]["meters"]["dyno.seconds"] != "20":
            received.append(await message(ws))
        elapsed = trio.current_time() - started  # real time here
        assert len(received) <= 2 + elapsed / LIVE_INTERVAL


async def test_an_account_token_opens_its_account_only(tmp_path: Path) -> None:
    token = account_token(SECRET, "acme")
    async with running(config(tmp_path)) as services:
        with structlog.testing.capture_logs() as logs:
            async with live(services, "acme", bearer(token)) as ws:
                assert (await message(ws))["account"] == "acme"
            with pytest.raises(ConnectionRejected) as rejected:
                async with live(services, "globex", bearer(token)):
                    pytest.fail("another account's usage opened")
        assert rejected.value.status_code in (401, 403)
        assert token not in repr(logs)
        assert SECRET not in repr(logs)
        assert {"event": "live_usage_opened", "account": "acme", "token": "account"} in [
            {k: e[k] for k in ("event", "account", "token") if k in e} for e in logs
        ]


async def test_the_token_may_come_in_the_first_message(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as services:
        async with live(services, "acme", []) as ws:
            await ws.send_message(
                json.dumps({"type": "auth", "token": account_token(SECRET, "acme")})
            )
            assert (await message(ws))["type"] == "usage"
        async with live(services, "acme", []) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": "wrong"}))
            error = await message(ws)
            assert error["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1008


async def test_no_secret_no_account_tokens(tmp_path: Path) -> None:
    plain = make_config(tmp_path)
    assert plain.api.account_token_secret is None
    api = ApiConfig(plain.api.listen, admin_token=ADMIN_TOKEN)
    assert not api.is_account_token(account_token(SECRET, "acme"), "acme")
    async with running(plain) as services:
        with pytest.raises(ConnectionRejected):
            async with live(services, "acme", bearer(account_token(SECRET, "acme"))):
                pytest.fail("opened without a secret")


def test_meterd_token_prints_the_accounts_token(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    shipped = Path(__file__).parents[2] / "config.toml"
    path.write_text(
        shipped.read_text().replace("[api]\n", f'[api]\naccount_token_secret = "{SECRET}"\n', 1)
    )
    printed = CliRunner().invoke(cli, ["token", "acme", "--config", str(path)])
    assert printed.exit_code == 0, printed.output
    assert printed.output.strip() == account_token(SECRET, "acme")
    missing = CliRunner().invoke(cli, ["token", "acme", "--config", str(shipped)])
    assert missing.exit_code == 2
    assert "account_token_secret" in missing.output


async def test_usage_that_cannot_be_read_is_said_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(config(tmp_path)) as services:
        await services.accounts.ingest("acme", [dyno("acme", "e1", 1)])

        async def full_disk(*args: Any) -> Any:
            raise CommitFailed("store: the transaction failed: database or disk is full")

        monkeypatch.setattr(services.accounts, "states", full_disk)
        async with live(services, "acme") as ws:
            error = await message(ws)
            assert error["type"] == "error"
            assert error["code"] == "unavailable"
            assert "reconnect" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1011
