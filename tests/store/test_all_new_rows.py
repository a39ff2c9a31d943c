"""An all-new batch's journal rows, results and dedupe rows (``Appends._all_new``): built
with C passes when every group holds one event, and the same as the per-group rows the
writer builds otherwise (spelled out below), for random batches."""

from __future__ import annotations

from itertools import chain

from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.model import Event
from meterd.store import AppendResult, codec
from meterd.store._appends import Appends, encode_batch
from meterd.store._ops import BatchAppend, Encoded
from tests.examples import examples


def reference(
    first: int, op: BatchAppend, encoded: Encoded
) -> tuple[list[AppendResult], list[tuple[object, ...]], list[tuple[int, ...]]]:
    packed, fingerprints, keys, seconds = encoded
    results: list[AppendResult] = []
    rows: list[tuple[object, ...]] = []
    dedupe: list[tuple[int, ...]] = []
    start = 0
    for offset, (account, events) in enumerate(op.groups):
        batch_id, count = first + offset, len(events)
        times = [event.time for event in events]
        payload = codec.pack_batch(packed[start : start + count])
        rows.append((batch_id, account, op.received_at, count, payload, min(times), max(times)))
        results.append(AppendResult(batch_id, list(range(count)), [], []))
        dedupe += [
            (keys[i], batch_id, fingerprints[i], seconds[i]) for i in range(start, start + count)
        ]
        start += count
    return results, rows, dedupe


@settings(max_examples=examples(200), deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=12),
    singles=st.booleans(),
    first=st.integers(min_value=1, max_value=2**40),
)
def test_all_new_rows_are_the_per_group_rows(sizes: list[int], singles: bool, first: int) -> None:
    if singles:
        sizes = [1] * len(sizes)
    groups = tuple(
        (
            f"acct-{g}",
            tuple(
                Event(
                    f"e-{g}-{i}",
                    f"acct-{g}",
                    "m",
                    g * 10 + i,
                    1_765_000_000_000 - g * 7 + i,
                    (("k", str(i)),),
                    "p",
                    5,
                )
                for i in range(size)
            ),
        )
        for g, size in enumerate(sizes)
    )
    op = BatchAppend(groups, 1_765_000_000_123)
    encoded = encode_batch(groups, {})
    assert isinstance(encoded, tuple)
    appends = object.__new__(Appends)
    appends.next_batch_id = first
    packed, fingerprints, keys, seconds = encoded
    got = appends._all_new(op, packed, keys, fingerprints, seconds)
    want = reference(first, op, encoded)
    assert got[0] == want[0]
    assert [tuple(row) for row in got[1]] == want[1]
    assert [tuple(row) for row in got[2]] == want[2]
    assert appends.next_batch_id == first + len(groups)
    assert len(list(chain.from_iterable(events for _, events in groups))) == len(got[2])
