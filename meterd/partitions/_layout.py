"""Where partitions live: shards, their owners and their files (docs/partitions.md).

The rules, each fixed by ``[partitions]`` (:class:`meterd.config.PartitionsConfig`):

* partition ``p`` (:func:`partition_of`) is in shard ``p // shard_size``; a shard is a
  fixed group of partitions and the unit of storage (one SQLite store, its billing and
  alert-delivery databases) and of placement;
* shard ``s`` is held by owner ``s % owners`` (owners numbered from 0), so owners hold
  whole shards, as evenly as the counts allow (16 shards over 3 owners: 6, 5, 5);
* the files of shard ``s`` sit in a directory beside ``[store] path``, named after it with
  ``.shards`` in place of its suffix (``var/meterd.sqlite3`` -> ``var/meterd.shards/``):
  ``shard-SSS.sqlite3`` (the store), ``shard-SSS.billing.sqlite3`` and
  ``shard-SSS.deliveries.sqlite3``, ``SSS`` the shard's number in three or more digits.

With ``owners = 0`` there are no shard files: the daemon's own process holds every account
in ``[store] path`` as before partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meterd.config import Config, PartitionsConfig

from ._hash import partition_of

__all__ = [
    "ShardFiles",
    "owner_of_shard",
    "shard_files",
    "shard_name",
    "shard_of",
    "shards_directory",
    "shards_of_owner",
]


def shard_of(account: str, partitions: PartitionsConfig) -> int:
    """The shard that holds ``account``."""
    return partition_of(account, partitions.count) // partitions.shard_size


def owner_of_shard(shard: int, partitions: PartitionsConfig) -> int:
    """The owner (from 0) that holds ``shard``; needs ``owners >= 1``."""
    if partitions.owners < 1:
        raise ValueError("no owner processes: [partitions] owners is 0")
    return shard % partitions.owners


def shards_of_owner(owner: int, partitions: PartitionsConfig) -> range:
    """The shards ``owner`` holds, in order."""
    if not 0 <= owner < partitions.owners:
        raise ValueError(f"owner {owner} is not in 0..{partitions.owners - 1}")
    return range(owner, partitions.shards, partitions.owners)


@dataclass(frozen=True, slots=True)
class ShardFiles:
    """The files of one shard."""

    shard: int
    store: Path
    billing: Path
    deliveries: Path


def shards_directory(config: Config) -> Path:
    """The directory of every shard's files, beside ``[store] path``."""
    return config.store_path.with_suffix(".shards")


def shard_name(shard: int) -> str:
    """``shard-007``: the shard's files, its cell's supervisor, its lease."""
    return f"shard-{shard:03d}"


def shard_files(config: Config, shard: int) -> ShardFiles:
    """The files of ``shard``."""
    if not 0 <= shard < config.partitions.shards:
        raise ValueError(f"shard {shard} is not in 0..{config.partitions.shards - 1}")
    stem = shards_directory(config) / shard_name(shard)
    return ShardFiles(
        shard,
        stem.with_suffix(".sqlite3"),
        stem.with_name(stem.name + ".billing.sqlite3"),
        stem.with_name(stem.name + ".deliveries.sqlite3"),
    )
