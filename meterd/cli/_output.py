"""Output shared by the operator commands: JSON for scripts, rich tables for people.

Decimals stay exact on the way out: a :class:`~decimal.Decimal` (a number the API sent
as a JSON number rather than the contract's decimal string) is written as its exact
string, never through ``float``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table


def _exact(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def echo_json(document: Any) -> None:
    """Print ``document`` as indented JSON on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=_exact))


def console() -> Console:
    """A console on stdout: the terminal's width on a terminal; otherwise (a pipe, a file)
    wide enough that no cell is ever cut."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=100_000)


def properties_text(properties: Mapping[str, Any] | None) -> str:
    """``k=v k2=v2`` in key order."""
    return " ".join(f"{key}={value}" for key, value in sorted((properties or {}).items()))


def print_table(
    columns: Iterable[str], rows: Iterable[Iterable[str]], *, right: Iterable[str] = ()
) -> None:
    """A rich table of text cells on stdout; ``right`` names the right-aligned columns."""
    aligned = set(right)
    out = console()
    # Lines on a terminal; plain aligned columns in a pipe (awk and grep see only the cells).
    table = Table(
        box=box.HEAVY_HEAD if out.is_terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
    )
    for column in columns:
        # fold, never cut: a value is shown in full even on a narrow terminal
        table.add_column(column, justify="right" if column in aligned else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())  # no padding after the last cell
