"""The gateway daemon's own API while the API across owners is not there: ``/healthz``
names each owner's pid, ``/v1/tree`` (admin token) shows the gateway's tree with the
owners as process children and each owner's own tree; ``meterd run`` picks the gateway
when ``[partitions] owners >= 1``."""

from __future__ import annotations

import os
import stat
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
    # Where an ack's time goes (docs/api.md): each batch's round trip to each owner it
    # touched, from the gateway; its time in the owner; each process's collector pauses.
    found = _counts(metrics)
    trips = [found.get(("meterd_gateway_slice_seconds_count", f"owner-{k}")) for k in (0, 1)]
    assert all(trip is not None and trip >= 1 for trip in trips), trips
    for owner in ("owner-0", "owner-1"):
        assert found[("meterd_owner_slice_seconds_count", owner)] >= 1
        assert found[("meterd_gc_pause_seconds_count", owner)] > 0  # every 0.1 s
    assert found[("meterd_gc_pause_seconds_count", "gateway")] > 0
    # The gateway's collector is tuned as the owners' are: its start-up frozen, never
    # walked again by its collections (meterd/memory.py).
    assert found[("meterd_gc_frozen_objects", "gateway")] > 0


def _counts(metrics: str) -> dict[tuple[str, str], float]:
    """``(sample name, link or process)`` -> value, summed over the other labels, of the
    per-process series (those with an ``owner`` label) of a gateway's /metrics."""
    found: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if line.startswith("#") or 'owner="' not in line:
            continue
        name, labels = line.split("{", 1)
        pairs = dict(p.split("=", 1) for p in labels.rsplit("}", 1)[0].split(","))
        who = pairs.get("link", pairs["owner"]).strip('"')
        key = (name, who)
        found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.skipif(not real_owner_available(), reason="meterd.partitions.owner is not here yet")
async def test_meterd_run_with_owners_is_the_gateway(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path / "d", owners=1)
    async with gateway(config, meterd_run=True) as gw:
        assert len(await gw.owner_pids()) == 1
        lane = Lane("run", ["acme", "globex"])
        await lane.run(gw.url, gw.token("platform"), trio.Event(), limit=50)
        assert lane.accepted == 50
        assert await gw.totals(["acme", "globex"]) == lane.expected()


def test_owner_sockets_of_a_deep_store_go_to_a_private_temporary_directory(
    tmp_path: Path,
) -> None:
    """A Unix socket's path is at most 107 bytes: a store deep in the file system (the
    shipped config in a clone with a long path) has its owners' sockets in
    ``meterd-<uid>-<digest>`` of the temporary directory, mode 0700, instead of failing."""
    from meterd.gateway import owner_socket, prepare_runtime_directory, runtime_directory

    short = write_gateway_config(tmp_path / "s", owners=2)
    assert runtime_directory(short) == short.store_path.parent / "s.shards" / "run"
    deep = write_gateway_config(tmp_path / ("d" * 60) / ("e" * 60), owners=2)
    directory = runtime_directory(deep)
    assert directory.name.startswith(f"meterd-{os.getuid()}-")
    assert runtime_directory(deep) == directory  # the same at every start
    assert directory != runtime_directory(write_gateway_config(tmp_path / ("f" * 120), owners=2))
    try:
        assert prepare_runtime_directory(deep) == directory
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert owner_socket(deep, 1) == str(directory / "owner-1.sock")
        directory.rmdir()
        directory.write_text("not a directory")
        with pytest.raises(ValueError, match=r"is not a directory .* remove it"):
            prepare_runtime_directory(deep)
    finally:
        if directory.is_dir():
            directory.rmdir()
        else:
            directory.unlink(missing_ok=True)
