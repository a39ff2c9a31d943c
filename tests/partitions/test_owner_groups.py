"""An owner's grouping of a slice by account (``group_by_account``), built from the
slice's columns at once: the same groups, ``Event``s and indexes as building each event
on its own, for random slices (accounts in runs or scattered, repeated or not), and the
same refusal of an account that is not in the slice's shard."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.config import PartitionsConfig
from meterd.model import Event
from meterd.partitions import shard_of
from meterd.partitions._messages import BatchId, Slice, SliceEvent
from meterd.partitions._owner import group_by_account
from tests.examples import examples

LAYOUT = PartitionsConfig(count=256, shard_size=16, owners=2)
SHARD = 3
IN_SHARD = [a for a in (f"acct-{n}" for n in range(2000)) if shard_of(a, LAYOUT) == SHARD][:8]
ELSEWHERE = next(a for a in (f"other-{n}" for n in range(100)) if shard_of(a, LAYOUT) != SHARD)


def reference(piece: Slice) -> tuple[list[tuple[str, list[Event]]], list[list[int]]]:
    """The grouping spelled out: one ``Event(...)`` per event, by account in first-seen order."""
    groups: dict[str, tuple[list[int], list[Event]]] = {}
    for e in piece.events:
        event = Event(
            e.id, e.account, e.meter, e.quantity, e.time, e.properties,
            piece.producer, piece.received_at,
        )  # fmt: skip
        positions, events = groups.setdefault(e.account, ([], []))
        positions.append(e.index)
        events.append(event)
    return [(a, events) for a, (_, events) in groups.items()], [p for p, _ in groups.values()]


quantities = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
slice_events = st.lists(
    st.tuples(
        st.sampled_from(IN_SHARD),
        st.sampled_from(["dyno.seconds", "requests"]),
        quantities,
        st.integers(min_value=0, max_value=2**53),
        st.lists(
            st.tuples(st.sampled_from("abc"), st.text(max_size=3)),
            max_size=2,
            unique_by=lambda p: p[0],
        ),
    ),
    max_size=40,
)


def make_slice(
    rows: list[tuple[str, str, int | Decimal, int, list[tuple[str, str]]]], *, runs: bool
) -> Slice:
    if runs:  # as a gateway sends them: each account's events together
        rows = sorted(rows, key=lambda row: row[0])
    events = [
        SliceEvent(
            index * 2 + 1, f"e-{index}", account, meter, quantity, time, tuple(sorted(props))
        )
        for index, (account, meter, quantity, time, props) in enumerate(rows)
    ]
    return Slice(BatchId("gw", 1, 9), SHARD, "producer-1", 1_765_000_000_000, events)


@settings(max_examples=examples(300), deadline=None)
@given(rows=slice_events, runs=st.booleans(), cached=st.booleans())
def test_groups_are_the_per_event_groups(
    rows: list[tuple[str, str, int | Decimal, int, list[tuple[str, str]]]], runs: bool, cached: bool
) -> None:
    piece = make_slice(rows, runs=runs)
    known: dict[str, int] = {}
    if cached:
        group_by_account(piece, LAYOUT, known)
    groups, indexes = group_by_account(piece, LAYOUT, known)
    want_groups, want_indexes = reference(piece)
    assert groups == want_groups
    assert indexes == want_indexes
    for (_, events), (_, wanted) in zip(groups, want_groups, strict=True):
        for event, want in zip(events, wanted, strict=True):  # exact types, not just equal
            assert type(event.quantity) is type(want.quantity)
            assert (event.producer, event.received_at) == (want.producer, want.received_at)


@pytest.mark.parametrize("cached", [False, True])
def test_an_account_of_another_shard_is_refused(cached: bool) -> None:
    ok = make_slice([(IN_SHARD[0], "dyno.seconds", 1, 5, [])], runs=True)
    bad = make_slice(
        [(IN_SHARD[0], "dyno.seconds", 1, 5, []), (ELSEWHERE, "dyno.seconds", 1, 5, [])],
        runs=False,
    )
    known: dict[str, int] = {}
    if cached:
        group_by_account(ok, LAYOUT, known)
        known[ELSEWHERE] = shard_of(ELSEWHERE, LAYOUT)
    with pytest.raises(ValueError, match=f"account '{ELSEWHERE}' is in shard"):
        group_by_account(bad, LAYOUT, known)
