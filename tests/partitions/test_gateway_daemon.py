"""The gateway daemon's own API while the API across owners is not there: ``/healthz``
names each owner's pid, ``/v1/tree`` (admin token) shows the gateway's tree with the
owners as process children and each owner's own tree; ``meterd run`` picks the gateway
when ``[partitions] owners >= 1``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
import trio

from meterd.config import load
from meterd.gateway import build_gateway
from meterd.partitions import Owners
from meterd.partitions._gateway import OwnerLinks
from tests.partitions.gateway_harness import (
    Lane,
    gateway,
    real_owner_available,
    write_gateway_config,
)


def test_owner_links_are_the_gateways_owners(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path, owners=2)
    services = build_gateway(config)
    owners: Owners = services.owners  # the protocol the API across owners uses (mypy checks)
    assert isinstance(services.owners, OwnerLinks)
    assert owners.partitions == config.partitions
    assert owners.pids() == [None, None]  # not started
    assert [child.id for child in services.root.which_children()] == [
        "owner-0",
        "owner-1",
        "link-0",
        "link-1",
        "ingest",
        "api",
    ]


@pytest.mark.skipif(
    importlib.util.find_spec("meterd.api.gateway") is not None,
    reason="the API across owners (meterd.api.gateway) replaces the minimal one",
)
async def test_the_gateways_healthz_and_tree(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path / "d", owners=2)
    async with gateway(config) as gw:
        pids = await gw.owner_pids()
        base = f"http://{config.api.listen}"
        token = {"Authorization": f"Bearer {config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=base) as client:
            health = (await client.get("/healthz")).json()
            assert health["status"] == "ok"
            assert [o["pid"] for o in health["owners"]] == pids
            assert (await client.get("/v1/tree")).status_code == 401
            tree = (await client.get("/v1/tree", headers=token)).json()
        children = {c["name"]: c for c in tree["gateway"]["children"]}
        assert [children["owner-0"]["pid"], children["owner-1"]["pid"]] == pids
        assert {"link-0", "link-1", "ingest", "api"} <= set(children)
        assert [o["pid"] for o in tree["owners"]] == pids
    assert load(config.path).partitions.owners == 2


@pytest.mark.skipif(not real_owner_available(), reason="meterd.partitions.owner is not here yet")
async def test_meterd_run_with_owners_is_the_gateway(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path / "d", owners=1)
    async with gateway(config, meterd_run=True) as gw:
        assert len(await gw.owner_pids()) == 1
        lane = Lane("run", ["acme", "globex"])
        await lane.run(gw.url, gw.token("platform"), trio.Event(), limit=50)
        assert lane.accepted == 50
        assert await gw.totals(["acme", "globex"]) == lane.expected()
