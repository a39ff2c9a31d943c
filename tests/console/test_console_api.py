"""The console's API in process: the tree as a paged, filtered, sorted table, one actor's
page, restart history kept across daemon restarts, the stream, and the actors' counters."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from meterd.accounts.actor import CELL_BYTES, MeterActor
from meterd.accounts.aggregate import AccountUsage
from meterd.api.console import _fast, _slow, _sort_key
from meterd.api.models import NodesQuery
from meterd.app import Services
from meterd.client import Producer
from meterd.model import Aggregation, Event, Meter
from tests.ingest.test_server import ADMIN_TOKEN, PLATFORM_TOKEN, T0, make_config, running

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def send(services: Services, accounts: list[str], per_account: int = 1) -> None:
    async with Producer(services.ingest.url, PLATFORM_TOKEN, linger=0.001) as producer:
        for account in accounts:
            for index in range(per_account):
                await producer.send(
                    {
                        "id": f"{account}-{index}",
                        "account": account,
                        "meter": "dyno.seconds",
                        "quantity": "2",
                        "time": T0 + index * 60_000,
                        "properties": {"size": "S"},
                    }
                )
        await producer.flush()


@asynccontextmanager
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=services.api.url, headers=HEADERS) as api:
        yield api


async def awake(services: Services, account: str) -> Any:
    """The account's actor once it has applied what was committed for it."""
    ref = services.accounts.registry.whereis(account)
    assert ref is not None
    await ref.call(("status",))  # after the deliveries queued before it
    return ref


async def test_tree_nodes_are_filtered_sorted_and_paged_on_the_server(tmp_path: Path) -> None:
    names = [f"shop-{i:02d}" for i in range(30)]
    async with running(make_config(tmp_path)) as services, client(services) as api:
        await send(services, names)
        await send(services, ["busy-1"], per_account=5)
        for name in [*names, "busy-1"]:
            await awake(services, name)
        await api.post("/v1/actors/shop-07/kill")
        await awake(services, "shop-07")

        page = (await api.get("/v1/tree/nodes", params={"limit": 5})).json()
        assert page["total"] == 9 + 31  # the static tree (deliveries too) and every actor
        assert page["offset"] == 0
        paths = [n["path"] for n in page["nodes"]]
        assert paths[:4] == ["root", "root/store-writer", "root/accounts", "root/accounts/meters"]
        assert len(page["nodes"]) == 5

        by_name: dict[str, str | int] = {
            "search": "shop-",
            "sort": "name",
            "offset": 10,
            "limit": 10,
        }
        page = (await api.get("/v1/tree/nodes", params=by_name)).json()
        assert page["matched"] == 30
        assert [n["name"] for n in page["nodes"]] == names[10:20]
        assert {n["account"] for n in page["nodes"]} == set(names[10:20])
        assert all(n["path"] == f"root/accounts/meters/{n['name']}" for n in page["nodes"])

        restarts: dict[str, str | int] = {"sort": "restarts", "order": "desc", "limit": 1}
        (top,) = (await api.get("/v1/tree/nodes", params=restarts)).json()["nodes"]
        assert (top["name"], top["restarts"]) == ("shop-07", 1)

        memory: dict[str, str | int] = {
            "search": "-",
            "sort": "memory",
            "order": "desc",
            "limit": 1,
        }
        (top,) = (await api.get("/v1/tree/nodes", params=memory)).json()["nodes"]
        assert top["name"] == "busy-1"  # five minute cells, the others one

        # The shortcuts (no row per actor) answer as the full walk does.
        daemon = services.api.daemon
        now = trio.current_time()
        for params in (
            {},
            {"offset": 3, "limit": 7},
            {"offset": 30, "limit": 20},
            {"search": "shop-1", "sort": "name", "order": "desc"},
            {"search": "S", "limit": 100},
            {"sort": "memory", "order": "desc", "limit": 5},
            {"sort": "rate", "limit": 40},
            {"sort": "mailbox", "offset": 2, "limit": 3},
            {"sort": "name", "offset": 5, "limit": 9},
        ):
            query = msgspec.convert(params, NodesQuery)
            search = query.search.lower() if query.search else None
            fast = _fast(daemon, query, search, now)
            assert fast is not None, params
            total, matched, chosen = await _slow(daemon, query, search, now, set())
            assert fast[:2] == (total, matched), params
            if query.sort == "tree" and search:  # matches: the tree's nodes, then accounts
                assert sorted(n[1] for n in fast[2]) == sorted(n[1] for n in chosen), params
            elif query.sort in ("tree", "name"):
                assert [n[1] for n in fast[2]] == [n[1] for n in chosen], params
            else:  # ties may be broken differently: the same keys in the same order
                key = _sort_key(query.sort, now)
                assert [key(n) for n in fast[2]] == [key(n) for n in chosen], params

        status = (await api.get("/v1/tree/nodes", params={"status": "restarting"})).json()
        assert status["matched"] == 0
        bad = await api.get("/v1/tree/nodes", params={"sort": "colour"})
        assert bad.status_code == 400
        assert bad.json()["error"]["parameter"] == "sort"


async def test_asleep_accounts_are_listed_and_searched_from_the_store(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as services, client(services) as api:
        await send(services, ["sleepy-a", "sleepy-b", "awake-c"])
        for name in ("sleepy-a", "sleepy-b"):
            ref = await awake(services, name)
            down = ref.monitor()
            await ref.cast(("hibernate",))
            await down.wait()  # stopped: checkpointed, asleep
        await awake(services, "awake-c")
        page = (await api.get("/v1/tree/nodes", params={"status": "hibernated"})).json()
        assert [(n["name"], n["status"]) for n in page["nodes"]] == [
            ("sleepy-a", "hibernated"),
            ("sleepy-b", "hibernated"),
        ]
        found = (await api.get("/v1/tree/nodes", params={"search": "SLEEPY-B"})).json()
        assert [n["path"] for n in found["nodes"]] == ["root/accounts/meters/sleepy-b"]
        asleep = (await api.get("/v1/actors/sleepy-a/status")).json()
        assert asleep["status"] == "hibernated"
        assert asleep["watermark"] >= 1
        missing = await api.get("/v1/actors/nobody/status")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "unknown_actor"


async def test_an_actors_page_has_its_figures(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as services, client(services) as api:
        await send(services, ["acme"], per_account=4)
        await awake(services, "acme")
        status = (await api.get("/v1/actors/acme/status")).json()
        assert status["path"] == "root/accounts/meters/acme"
        assert (status["status"], status["incarnation"], status["restarts"]) == ("running", 1, 0)
        assert status["events_applied"] == 4
        assert status["windows"] == 4
        assert status["memory"] > 4 * CELL_BYTES
        assert status["mailbox"] == 0
        assert status["uptime_ms"] >= 0
        assert status["watermark"] >= 1
        sweeper = (await api.get("/v1/actors/root/accounts/sweeper/status")).json()
        assert (sweeper["kind"], sweeper["account"]) == ("worker", None)


async def test_restart_history_is_kept_across_daemon_restarts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as services, client(services) as api:
        await send(services, ["acme"])
        await awake(services, "acme")
        assert (await api.post("/v1/actors/acme/kill")).status_code == 200
        await awake(services, "acme")
        assert (await api.post("/v1/actors/acme/restart")).status_code == 200
        assert (await api.post("/v1/actors/root/accounts/sweeper/restart")).status_code == 200
        live = (await api.get("/v1/actors/acme/status")).json()["restart_history"]
        assert [r["kind"] for r in live] == ["killed", "operator"]
    async with running(config) as services, client(services) as api:  # a new daemon
        history = (await api.get("/v1/actors/acme/status")).json()["restart_history"]
        assert [r["kind"] for r in history] == ["killed", "operator"]
        assert history == live
        sweeper = (await api.get("/v1/actors/root/accounts/sweeper/status")).json()
        assert [r["kind"] for r in sweeper["restart_history"]] == ["operator"]
        assert sweeper["restarts"] == 0  # this daemon's count; the history is the store's


async def test_the_stream_needs_the_token_and_ticks(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as services:
        async with httpx.AsyncClient(base_url=services.api.url) as anonymous:
            refused = await anonymous.get("/v1/console/stream")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
        async with client(services) as api:
            typo = await api.get("/v1/console/stream", params={"tok": "x"})
            assert typo.status_code == 400
            async with api.stream("GET", "/v1/console/stream") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                text = ""
                async for chunk in response.aiter_text():
                    text += chunk
                    if "event: tick" in text and text.endswith("\n\n"):
                        break
            assert '"accepted":0' in text
            page = await api.get("/")
            assert page.headers["content-type"].startswith("text/html")
            assert (await api.get("/console/app.js")).status_code == 200
            assert (await api.get("/console/secret.txt")).status_code == 404


def test_events_per_second_counts_the_last_whole_second() -> None:
    actor = MeterActor.__new__(MeterActor)
    actor.rate_second, actor.rate_count, actor.rate_previous = 100, 7, 3
    assert actor.events_per_second(100.5) == 3  # second 100 is not over: the one before
    assert actor.events_per_second(101.2) == 7
    assert actor.events_per_second(102.0) == 0  # nothing applied in second 101


def test_cell_bytes_is_near_what_a_cell_costs() -> None:
    meter = Meter("dyno.seconds", Aggregation.SUM, ("size",))
    events = [
        Event(f"e{i}", "acme", meter.name, 1 + i, T0 + i * 60_000, (("size", f"s{i % 3}"),))
        for i in range(2000)
    ]
    usage = AccountUsage()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    usage.apply_events({meter.name: meter}, events)
    per_cell = (tracemalloc.get_traced_memory()[0] - before) / usage.cell_count()
    tracemalloc.stop()
    assert usage.cell_count() == 2000
    assert CELL_BYTES / 2 <= per_cell <= CELL_BYTES * 2, per_cell
