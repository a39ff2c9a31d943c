"""Options several commands share, declared once (light: click only, so that ``meterd``
itself can use them without loading a command's dependencies)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["config_option"]

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
