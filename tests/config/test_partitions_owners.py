"""``[partitions] owners``: a number of processes or ``"auto"`` (docs/partitions.md,
"Owners or not"); the shipped config runs gateway + owners."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterd.config import load
from meterd.config._model import AutoOwners, auto_owners
from tests.config.test_config import ROOT, load_text, problem_for, text


@pytest.mark.parametrize(("cores", "owners"), [(1, 2), (2, 2), (3, 2), (4, 3), (8, 7), (64, 63)])
def test_auto_is_the_cores_minus_one_at_least_two(cores: int, owners: int) -> None:
    assert auto_owners(cores) == owners
    assert isinstance(auto_owners(cores), AutoOwners)


def test_auto_is_read_as_a_number_of_owners_for_this_host(tmp_path: Path) -> None:
    partitions = load_text(tmp_path, text() + '\n[partitions]\nowners = "auto"\n').partitions
    assert partitions.owners == min(auto_owners(), partitions.shards)
    assert isinstance(partitions.owners, int)


def test_auto_is_at_most_one_owner_per_shard(tmp_path: Path) -> None:
    content = text() + '\n[partitions]\ncount = 16\nshard_size = 16\nowners = "auto"\n'
    assert load_text(tmp_path, content).partitions.owners == 1  # one shard: one owner


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('"all"', "expected a number of processes or \"auto\", got a string ('all')"),
        ("true", 'expected a number of processes or "auto", got a boolean'),
        ("2.5", 'expected a number of processes or "auto", got a float'),
        ("-1", "must be between 0 and 256 (processes), got -1"),
        ("257", "must be between 0 and 256 (processes), got 257"),
    ],
)
def test_a_wrong_owners_value_is_named(tmp_path: Path, value: str, says: str) -> None:
    problem = problem_for(
        tmp_path, text() + f"\n[partitions]\nowners = {value}\n", "partitions.owners"
    )
    assert says in problem


def test_the_shipped_config_runs_gateway_and_owners() -> None:
    config = load(ROOT / "config.toml")
    assert config.partitions.owners == min(auto_owners(), config.partitions.shards) >= 2
