"""The account -> partition hash (``meterd.partitions.partition_of``): stable and in range."""

from __future__ import annotations

import subprocess
import sys
from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS, partition_of
from meterd.store.schema import slice_of
from tests.examples import examples

accounts = st.text(min_size=1, max_size=64)
counts = st.integers(min_value=1, max_value=MAX_PARTITIONS)

# Pinned values: a change of the function (or of its personalisation) moves accounts
# between partitions, which is an offline migration, never a silent change.
KNOWN = {
    "acme": 44,
    "acct-0000001": 93,
    "": 154,
    "Ünïcødé ☃": 144,
}


@given(accounts, counts)
@settings(max_examples=examples(300))
def test_the_partition_is_in_range_and_the_same_every_time(account: str, partitions: int) -> None:
    found = partition_of(account, partitions)
    assert 0 <= found < partitions
    assert partition_of(account, partitions) == found


@given(accounts, counts)
@settings(max_examples=examples(300))
def test_it_is_the_documented_function(account: str, partitions: int) -> None:
    """BLAKE2b, 8 bytes, person ``meterd.part.v1``, big-endian, modulo: what another
    language computes with any BLAKE2b library."""
    digest = blake2b(account.encode(), digest_size=8, person=b"meterd.part.v1").digest()
    assert partition_of(account, partitions) == int.from_bytes(digest, "big") % partitions


def test_known_values_do_not_move() -> None:
    assert {a: partition_of(a, DEFAULT_PARTITIONS) for a in KNOWN} == KNOWN


def test_another_process_computes_the_same_partitions() -> None:
    """Unlike ``hash(str)``, salted per process (PYTHONHASHSEED)."""
    script = (
        "from meterd.partitions import partition_of\n"
        f"print([partition_of(a) for a in {list(KNOWN)!r}])"
    )
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        )
        assert done.stdout.strip() == str(list(KNOWN.values()))


def test_it_is_independent_of_the_stores_index_slices() -> None:
    """The store splits its accounts into 256 slices by CRC-32 (``slice_of``); a partition
    hashed the same way would hold one slice only."""
    ids = [f"acct-{i:07d}" for i in range(2_000)]
    same = sum(partition_of(a) == slice_of(a) for a in ids)
    assert same < 40  # about 2,000 / 256 by chance
    in_partition_0 = {slice_of(a) for a in ids if partition_of(a) == 0}
    assert len(in_partition_0) > 1


@pytest.mark.parametrize("partitions", [0, -1, MAX_PARTITIONS + 1])
def test_a_number_of_partitions_out_of_range_is_refused(partitions: int) -> None:
    with pytest.raises(ValueError, match=r"partitions must be in 1\.\.65536"):
        partition_of("acme", partitions)
