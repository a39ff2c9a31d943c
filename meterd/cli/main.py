"""``meterd``: run the daemon and talk to it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import trio

from meterd import __version__, logs
from meterd.config import ConfigError, load


@click.group()
@click.version_option(__version__, prog_name="meterd")
def main() -> None:
    """meterd: usage metering with supervised per-account actors."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("config.toml"),
    show_default=True,
    help="The configuration file.",
)
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning, error")
@click.option("--json-logs/--console-logs", default=None, help="Default: JSON unless on a TTY.")
def run(config_path: Path, log_level: str, json_logs: bool | None) -> None:
    """Start the daemon; SIGINT/SIGTERM stop it cleanly."""
    from meterd.app import serve

    logs.configure(level=log_level, json=json_logs)
    try:
        config = load(config_path)
    except ConfigError as error:
        click.echo(f"meterd: bad config: {error}", err=True)
        sys.exit(2)
    trio.run(serve, config)
