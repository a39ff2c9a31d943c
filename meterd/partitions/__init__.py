"""Partitions: the unit of ownership of accounts (issue 15; docs/partitions.md).

So far: :func:`partition_of`, the stable hash of an account id to its partition.
"""

from ._hash import DEFAULT_PARTITIONS, MAX_PARTITIONS, PERSON, partition_of

__all__ = ["DEFAULT_PARTITIONS", "MAX_PARTITIONS", "PERSON", "partition_of"]
