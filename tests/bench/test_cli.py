"""``meterd bench NAME``: every benchmark module behind one command, registered from a table."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import meterd.bench
from meterd.cli.bench import MODULES, bench


def test_every_module_with_a_main_is_a_subcommand() -> None:
    here = Path(meterd.bench.__file__).parent
    # The modules a user runs: not the helpers, nor the triotp peer (its own virtualenv).
    helpers = {"__init__", "_proc", "triotp_env", "peer_triotp"}
    mains = {
        path.stem
        for path in here.glob("*.py")
        if path.stem not in helpers and re.search(r"^def main\(", path.read_text(), re.M)
    }
    # Each is a subcommand: from MODULES, or a command of its own (ingest, rating: options).
    assert mains <= set(bench.commands), mains - set(bench.commands)
    listing = CliRunner().invoke(bench, ["--help"]).output
    for name in [*MODULES, "ingest", "rating"]:
        assert re.search(rf"^  {name}\s", listing, re.M), (name, listing)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_help_is_the_modules_own(name: str) -> None:
    result = CliRunner().invoke(bench, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"usage: python -m meterd.bench.{name}" in result.output
    assert callable(importlib.import_module(f"meterd.bench.{name}").main)


def test_arguments_reach_the_module_and_a_bad_one_is_its_usage_error() -> None:
    result = CliRunner().invoke(bench, ["store", "--no-such-option"])
    assert result.exit_code == 2
    assert "unrecognized arguments: --no-such-option" in result.output
