"""``meterd token ACCOUNT``: the account's token (docs/api.md, "Live usage"), computed from
the config's ``[api] account_token_secret`` on this host (no API call): give it to a
dashboard that shows that account's live usage only."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meterd.cli._options import config_option


@click.command("token")
@click.argument("account")
@config_option("The configuration holding [api] account_token_secret.")
def token(account: str, config_path: Path) -> None:
    """Print ACCOUNT's token: it opens that account's live usage websocket
    (/v1/accounts/ACCOUNT/usage/live) and nothing else."""
    from meterd.config import ConfigError, load

    try:
        config = load(config_path)
    except ConfigError as error:
        click.echo(f"meterd token: {error}", err=True)
        sys.exit(2)
    found = config.api.account_token(account)
    if found is None:
        click.echo(
            f"meterd token: {config_path} has no [api] account_token_secret (or"
            " account_token_secret_env): add one (16+ printable characters) and restart the"
            " daemon, then ask again",
            err=True,
        )
        sys.exit(2)
    click.echo(found)
