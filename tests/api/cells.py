"""Real in-process cells behind a test :class:`meterd.partitions.Owners`, for the gateway's API.

Each shard of a small layout (16 partitions, 4 per shard: 4 shards; 2 owners) is a whole
daemon built by :func:`meterd.app.build` on its own temporary directory, its API app
(:func:`meterd.api.build_app`) reached in-process (``httpx.ASGITransport``) as an owner
answers ``Query(op="http")``. A single-process daemon beside them gets every event too,
so a route can be asked of both and the answers compared. :class:`CellOwners` can be told
that a shard's owner is down.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

import supervisors as sv
from meterd.api import build_app
from meterd.api.gateway import build_gateway_app
from meterd.app import Services, build
from meterd.config import Config, PartitionsConfig
from meterd.model import Event
from meterd.partitions import OwnerUnavailable, TreeSnapshot, owner_of_shard, shard_of
from tests.ingest.test_server import ADMIN_TOKEN, make_config

LAYOUT = PartitionsConfig(count=16, shard_size=4, owners=2)
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class CellOwners:
    """:class:`meterd.partitions.Owners` over in-process cells (one per shard)."""

    partitions: PartitionsConfig
    cells: dict[int, Services]
    down: set[int] = field(default_factory=set)  # shards whose owner does not answer
    broken: set[int] = field(default_factory=set)  # shards whose owner answers an error
    asked: list[tuple[int, str, str]] = field(default_factory=list)  # (shard, method, path)

    def __post_init__(self) -> None:
        self.apps = {shard: build_app(cell.api.daemon) for shard, cell in self.cells.items()}

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        assert op == "http"
        owner = owner_of_shard(shard, self.partitions)
        if shard in self.down:
            raise OwnerUnavailable(shard, owner, "its process is down (test)")
        if shard in self.broken:
            raise RuntimeError("no such shard here (test)")
        self.asked.append((shard, args["method"], args["path"]))
        transport = httpx.ASGITransport(app=self.apps[shard])
        async with httpx.AsyncClient(transport=transport, base_url="http://cell") as client:
            url = quote(args["path"]) + ("?" + args["query"] if args["query"] else "")
            answer = await client.request(
                args["method"], url, headers=args["headers"], content=args["body"]
            )
        return {
            "status": answer.status_code,
            "headers": [[k, v] for k, v in answer.headers.items()],
            "body": answer.content,
        }

    async def trees(self, limit: int, total: int, timeout: float) -> list[TreeSnapshot | None]:
        out: list[TreeSnapshot | None] = []
        for owner in range(self.partitions.owners):
            shards = [s for s in self.cells if owner_of_shard(s, self.partitions) == owner]
            if any(s in self.down for s in shards):
                out.append(None)
                continue
            children = []
            for shard in shards:
                node = sv.snapshot(self.cells[shard].root, limit=limit)
                node["name"] = f"shard-{shard:03d}"
                children.append(node)
            tree = {
                "name": f"owner-{owner}",
                "kind": "supervisor",
                "strategy": "one_for_one",
                "status": "running",
                "restarts": 0,
                "started_at": None,
                "children": children,
                "children_total": len(children),
            }
            out.append(TreeSnapshot(id=0, owner=f"owner-{owner}", pid=os.getpid(), tree=tree))
        return out

    def pids(self) -> list[int | None]:
        return [os.getpid()] * self.partitions.owners


@asynccontextmanager
async def _running(config: Config) -> AsyncIterator[Services]:
    services = build(config)
    await services.billing.db.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.root.run)
            yield services
            services.root.stop()
    finally:
        await services.billing.db.aclose()
        await services.store.aclose()


@dataclass
class World:
    """The cells, their owners, the gateway's client and a single-process daemon."""

    config: Config
    owners: CellOwners
    single: Services
    gateway: httpx.AsyncClient
    reference: httpx.AsyncClient

    @property
    def cells(self) -> dict[int, Services]:
        return self.owners.cells

    def shard(self, account: str) -> int:
        return shard_of(account, LAYOUT)

    async def send(self, events: Iterable[Event]) -> None:
        """``events`` into the single daemon and into their accounts' cells; returns once
        their accounts' actors run in both."""
        events = list(events)
        by_account: dict[str, list[Event]] = {}
        for event in events:
            by_account.setdefault(event.account, []).append(event)
        await self.single.accounts.write(list(by_account.items()))
        by_shard: dict[int, list[tuple[str, list[Event]]]] = {}
        for account, group in by_account.items():
            by_shard.setdefault(self.shard(account), []).append((account, group))
        for shard, groups in by_shard.items():
            await self.cells[shard].accounts.write(groups)
        for account in by_account:  # awake in both (an actor may still be starting)
            await self.single.accounts.ensure_started(account)
            await self.cells[self.shard(account)].accounts.ensure_started(account)


def accounts_per_shard(per_shard: int, prefix: str = "acct") -> list[str]:
    """Account ids, ``per_shard`` in each shard of :data:`LAYOUT`."""
    found: dict[int, list[str]] = {s: [] for s in range(LAYOUT.shards)}
    index = 0
    while any(len(v) < per_shard for v in found.values()):
        account = f"{prefix}-{index:04d}"
        held = found[shard_of(account, LAYOUT)]
        if len(held) < per_shard:
            held.append(account)
        index += 1
    return sorted(a for v in found.values() for a in v)


def event(account: str, index: int, time: int, quantity: str = "1.5", **props: str) -> Event:
    return Event(
        id=f"{account}-{index}",
        account=account,
        meter="dyno.seconds",
        quantity=Decimal(quantity),
        time=time,
        properties=tuple(sorted({"size": "S", **props}.items())),
        producer="platform",
        received_at=time,
    )


@asynccontextmanager
async def world(
    tmp: Path,
    root: sv.SupervisorCore | Callable[[], sv.SupervisorCore] | None = None,
    **config_changes: Any,
) -> AsyncIterator[World]:
    """The cells, their owners and the gateway (``root``: its own tree, if any)."""
    base = replace(make_config(tmp / "single"), **config_changes)
    async with AsyncExitStack() as stack:
        single = await stack.enter_async_context(_running(base))
        cells = {}
        for shard in range(LAYOUT.shards):
            where = tmp / f"shard-{shard:03d}"
            where.mkdir()
            config = replace(make_config(where), partitions=LAYOUT, **config_changes)
            cells[shard] = await stack.enter_async_context(_running(config))
        owners = CellOwners(LAYOUT, cells)
        gateway_config = replace(base, partitions=LAYOUT)
        app = build_gateway_app(gateway_config, owners, root=root, timeout=5.0)
        gateway = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=HEADERS
            )
        )
        reference = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=build_app(single.api.daemon)),
                base_url="http://one",
                headers=HEADERS,
            )
        )
        yield World(gateway_config, owners, single, gateway, reference)
