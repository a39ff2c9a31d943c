"""``meterd``: run the daemon and talk to it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import ClassVar

import click

from meterd import __version__
from meterd.cli._options import config_option, load_config


class _LazyGroup(click.Group):
    """Subcommands imported only when used (click's documented lazy-loading pattern):
    ``meterd run`` does not pay for the client or the benchmarks, and each lives in
    its own module."""

    lazy: ClassVar[dict[str, str]] = {  # name -> "module:attribute"
        "send": "meterd.cli.send:send",
        "bench": "meterd.cli.bench:bench",
        "tree": "meterd.cli.tree:tree",
        "usage": "meterd.cli.usage:usage",
        "events": "meterd.cli.events:events",
        "restart": "meterd.cli.actors:restart",
        "kill": "meterd.cli.actors:kill",
        "quarantine": "meterd.cli.quarantine:quarantine",
        "explain": "meterd.cli.explain:explain",
        "accounts": "meterd.cli.support:accounts",
        "adjust": "meterd.cli.support:adjust",
        "void": "meterd.cli.support:void",
        "close": "meterd.cli.support:close",
        "alerts": "meterd.cli.alerts:alerts",
        "deliveries": "meterd.cli.alerts:deliveries",
        "webhook-listen": "meterd.cli.webhook_listen:webhook_listen",
        "token": "meterd.cli.token:token",
        "migrate": "meterd.cli.migrate:migrate",
        "cluster": "meterd.cli.cluster:cluster",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="meterd")
def main() -> None:
    """meterd: usage metering with supervised per-account actors."""


@main.command()
@config_option("The configuration file.")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning, error")
@click.option("--json-logs/--console-logs", default=None, help="Default: JSON unless on a TTY.")
def run(config_path: Path, log_level: str, json_logs: bool | None) -> None:
    """Start the daemon; SIGINT/SIGTERM stop it cleanly.

    Exit status 2 for a wrong config, 1 when it cannot start or its supervision tree gives
    up later (one sentence on stderr naming the config key and the address or file)."""
    # Imported here: the other commands (lazily loaded) must not pay for the daemon's
    # modules, nor for everything the config loader imports.
    import structlog
    import trio

    from meterd import logs
    from meterd.app import serve
    from meterd.startup import DaemonFailed, StartupFailed

    logs.configure(level=log_level, json=json_logs)
    config = load_config(config_path)
    try:
        trio.run(serve, config)
    except StartupFailed as failed:  # a port in use, a store that cannot be opened, ...
        event, reason, prefix = "meterd_start_failed", str(failed), "cannot start"
    except DaemonFailed as failed:  # the tree gave up later: a child failing too often
        event, reason, prefix = "meterd_failed", str(failed), "stopped"
    else:
        return
    structlog.get_logger("meterd").error(event, error=reason)
    click.echo(f"meterd: {prefix}: {reason}", err=True)
    sys.exit(1)
