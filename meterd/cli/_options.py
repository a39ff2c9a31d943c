"""Options several commands share, declared once, and reading the file ``--config`` names
(light: click only, so that ``meterd`` itself can use them without loading a command's
dependencies; the config's modules are imported when a config is read)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from meterd.config import Config

__all__ = ["config_option", "load_config", "name_values"]

F = TypeVar("F", bound=Callable[..., Any])


def config_option(help: str) -> Callable[[F], F]:
    """``--config PATH`` (default ``config.toml``), passed to the command as
    ``config_path``; ``help`` says what the command reads from it."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=Path("config.toml"),
        show_default=True,
        help=help,
    )


def load_config(path: Path) -> Config:
    """The config at ``path``; a wrong one (or none there) ends the command: one sentence on
    stderr naming the mistake, exit status 2."""
    from meterd.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as error:
        click.echo(f"meterd: bad config: {error}", err=True)
        sys.exit(2)


def name_values(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``NAME=VALUE`` items given with a repeatable ``option`` (``--dim``), by name (a later
    one wins); ``click.BadParameter`` naming the option for an item that is not one."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=f"'{option}'")
        out[name] = value
    return out
