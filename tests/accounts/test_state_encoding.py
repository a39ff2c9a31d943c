"""A window state's stored bytes (``aggregate.encode``, msgspec's msgpack and a canonical
decimal text without a context switch) are the bytes msgpack wrote before, for every
aggregation and any quantity: ints beyond 64 bits, decimals with exponents, negative
zeros, long fractions."""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

import msgpack  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.accounts.aggregate import (
    EXACT,
    AccountUsage,
    CountState,
    LatestState,
    MaxState,
    MinState,
    State,
    SumState,
    UniqueCountState,
    _canonical,
    encode,
)
from meterd.model import canonical_quantity
from tests.accounts.test_aggregate import event_lists, meters
from tests.examples import examples


def reference_quantity(q: Any) -> Any:
    if q is None:
        return None
    if isinstance(q, Decimal):
        with decimal.localcontext(EXACT):
            return canonical_quantity(q)
    if -(2**63) <= q <= 2**64 - 1:
        return q
    return msgpack.ExtType(1, str(q).encode("ascii"))


def reference(state: State) -> bytes:
    """``encode`` as it was: msgpack.packb, the canonical text in the exact context."""
    p = state._payload()
    if isinstance(state, UniqueCountState | CountState):
        body = p
    elif isinstance(state, LatestState):
        body = [*p[:2], reference_quantity(p[2])] if p else []
    else:
        body = [reference_quantity(p[0])]
    data = msgpack.packb([state.aggregation.value, *body], use_bin_type=True)
    assert isinstance(data, bytes)
    return data


decimals = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.decimals(min_value=-1, max_value=1, places=12),
    st.sampled_from(
        [Decimal("-0"), Decimal("0E-9"), Decimal("-0.000"), Decimal("1E+3"), Decimal("1.50")]
    ),
)
quantities = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), decimals)
states = st.one_of(
    st.builds(SumState, st.one_of(st.none(), quantities)),
    st.builds(CountState, st.integers(min_value=0, max_value=2**63)),
    st.builds(MaxState, st.one_of(st.none(), quantities)),
    st.builds(MinState, st.one_of(st.none(), quantities)),
    st.builds(
        LatestState, st.integers(min_value=0, max_value=2**62), st.text(max_size=8), quantities
    ),
    st.just(LatestState()),
    st.builds(UniqueCountState, st.just("user"), st.lists(st.text(max_size=6), max_size=5)),
)


@settings(max_examples=examples(400), deadline=None)
@given(state=states)
def test_a_states_bytes_are_msgpacks(state: State) -> None:
    assert encode(state) == reference(state)


@settings(max_examples=examples(400), deadline=None)
@given(quantity=decimals)
def test_the_canonical_text_is_the_models(quantity: Decimal) -> None:
    with decimal.localcontext(EXACT):
        want = canonical_quantity(quantity)
    assert _canonical(quantity) == want


@settings(max_examples=examples(200), deadline=None)
@given(data=st.data())
def test_dirty_states_are_the_dirty_cells_states(data: st.DataObject) -> None:
    """``AccountUsage.dirty_states`` (what a checkpoint writes) is ``dirty()`` with each
    cell's ``state()``, for every aggregation, after some cells were checkpointed."""
    usage = AccountUsage()
    meter = data.draw(meters())
    events = data.draw(event_lists(meter))
    cut = data.draw(st.integers(0, len(events)))
    usage.apply_events({meter.name: meter}, events[:cut])
    usage.clear_dirty()
    usage.apply_events({meter.name: meter}, events[cut:])
    want = []
    for name, start, dims in usage.dirty():
        state = usage.state(name, start, dims)
        if state is not None:
            want.append((name, start, dims, state))
    got = usage.dirty_states()
    assert len(got) == len(want)
    for cell in want:  # states compare equal but do not hash: no sets
        assert cell in got
