"""``meterd migrate partitions``: move the stored data to the layout the config asks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meterd.cli._options import config_option, load_config


@click.group()
def migrate() -> None:
    """Offline changes of how the data is stored (stop meterd first)."""


@migrate.command()
@config_option("The configuration file: its [store], [billing] and [partitions] decide.")
@click.option("--dry-run", is_flag=True, help="Say what would move, change nothing.")
@click.option("--log-level", default="warning", show_default=True, help="debug, info, warning")
def partitions(config_path: Path, dry_run: bool, log_level: str) -> None:
    """Move the accounts' data between the single-file store ([partitions] owners = 0) and
    shard files (owners >= 1), or between shard layouts (count, shard_size), as the config
    asks (docs/partitions.md, "Changing the layout").

    Refuses while a daemon uses the store. Crash-safe: rerun it after an interruption. The
    old files are renamed aside (*.pre-partitions), never deleted. Exit 2 for a wrong
    config, 1 when the migration cannot run."""
    import sqlite3

    from meterd import logs
    from meterd.partitions._migrate import MigrationError
    from meterd.partitions._migrate import migrate as run_migration
    from meterd.store.errors import StoreError

    logs.configure(level=log_level, json=None)
    config = load_config(config_path)
    try:
        outcome = run_migration(config, dry_run=dry_run)
    except (MigrationError, StoreError, OSError, sqlite3.Error) as error:
        click.echo(f"meterd: migrate partitions: {error}", err=True)
        sys.exit(1)
    for line in outcome.lines(dry_run):
        click.echo(line)
