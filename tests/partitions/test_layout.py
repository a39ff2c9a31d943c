"""Shards, owners and files of partitions (meterd/partitions/_layout.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterd.config import Config, PartitionsConfig, load
from meterd.partitions import (
    owner_of_shard,
    partition_of,
    shard_files,
    shard_of,
    shards_of_owner,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"


@given(st.text(min_size=1, max_size=40))
def test_an_account_is_in_the_shard_of_its_partition(account: str) -> None:
    partitions = PartitionsConfig()
    assert shard_of(account, partitions) == partition_of(account, 256) // 16


@pytest.mark.parametrize(("owners", "held"), [(1, [16]), (2, [8, 8]), (3, [6, 5, 5])])
def test_owners_hold_whole_shards_evenly(owners: int, held: list[int]) -> None:
    partitions = PartitionsConfig(owners=owners)
    counts = Counter(owner_of_shard(s, partitions) for s in range(partitions.shards))
    assert [counts[o] for o in range(owners)] == held
    for owner in range(owners):
        assert all(
            owner_of_shard(s, partitions) == owner for s in shards_of_owner(owner, partitions)
        )


def test_no_owner_holds_a_shard_without_owner_processes() -> None:
    with pytest.raises(ValueError, match="owners is 0"):
        owner_of_shard(0, PartitionsConfig(owners=0))


def test_shard_files_sit_beside_the_store() -> None:
    config: Config = load(SHIPPED)
    files = shard_files(config, 7)
    directory = config.store_path.parent / "meterd.shards"
    assert files.store == directory / "shard-007.sqlite3"
    assert files.billing == directory / "shard-007.billing.sqlite3"
    assert files.deliveries == directory / "shard-007.deliveries.sqlite3"
    with pytest.raises(ValueError, match=r"not in 0\.\.15"):
        shard_files(config, 16)
