"""The gateway daemon's own API while the API across owners is not there: ``/healthz``
names each owner's pid, ``/v1/tree`` (admin token) shows the gateway's tree with the
owners as process children and each owner's own tree; ``meterd run`` picks the gateway
when ``[partitions] owners >= 1``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

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


@pytest.mark.skipif(not real_owner_available(), reason="meterd.partitions.owner is not here yet")
async def test_the_gateways_api_answers_across_real_owners(tmp_path: Path) -> None:
    """The gateway serves the API across owners: health, the tree with each owner's pid and
    its shards grafted under it, usage from the account's owner, metrics summed."""
    config = write_gateway_config(tmp_path / "d", owners=2)
    async with gateway(config, real_owner=True) as gw:
        pids = await gw.owner_pids()
        lane = Lane("api", ["acme", "globex", "initech"])
        await lane.run(gw.url, gw.token("platform"), trio.Event(), limit=30)
        assert await gw.totals(["acme", "globex", "initech"]) == lane.expected()
        base = f"http://{config.api.listen}"
        token = {"Authorization": f"Bearer {config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/tree")).status_code == 401
            tree = (await client.get("/v1/tree", headers=token)).json()
            metrics = (await client.get("/metrics", headers=token)).text
    children = {c["name"]: c for c in tree["children"]}
    assert [children["owner-0"]["pid"], children["owner-1"]["pid"]] == pids
    for owner in ("owner-0", "owner-1"):
        shards = [c["name"] for c in children[owner]["children"]]
        assert shards
        assert all(name.startswith("shard-") for name in shards)
    assert "meterd_events_accepted_total 30.0" in metrics.splitlines()
    assert 'meterd_events_accepted_total{owner="gateway"} 30.0' in metrics.splitlines()


@pytest.mark.skipif(not real_owner_available(), reason="meterd.partitions.owner is not here yet")
async def test_meterd_run_with_owners_is_the_gateway(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path / "d", owners=1)
    async with gateway(config, meterd_run=True) as gw:
        assert len(await gw.owner_pids()) == 1
        lane = Lane("run", ["acme", "globex"])
        await lane.run(gw.url, gw.token("platform"), trio.Event(), limit=50)
        assert lane.accepted == 50
        assert await gw.totals(["acme", "globex"]) == lane.expected()
