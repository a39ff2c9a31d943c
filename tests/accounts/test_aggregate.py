"""Exact windowed aggregation (``meterd.accounts.aggregate``) against an independent model.

The model computes every usage row straight from the events with :class:`fractions.Fraction`
(exact, and no ``decimal`` context involved): per bucket ``sum`` is the sum of the quantities,
``count`` the number of events, ``max``/``min`` the extreme, ``latest`` the quantity of the
event with the greatest ``(time, id)`` and ``unique_count`` the size of the set of values.
The implementation must agree for every window (minute, hour, day) and every ``group_by``,
whatever order the events arrive in and however they are split into states merged later
(in memory, or through ``encode``/``decode`` as the store would).
"""

from __future__ import annotations

import decimal
import gc
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.accounts import aggregate
from meterd.accounts.aggregate import (
    EXACT,
    AccountUsage,
    CountState,
    LatestState,
    State,
    SumState,
    UniqueCountState,
    UsageRow,
    add,
    decode,
    dims_of,
    encode,
    merge,
    new_state,
    rollup,
    value,
)
from meterd.model import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Aggregation,
    Event,
    Meter,
    Quantity,
    Window,
    canonical_quantity,
)
from tests.examples import examples

T0 = 19_675 * DAY_MS  # a UTC midnight (2023-11-14)
SPAN = 3 * DAY_MS + 5 * HOUR_MS
DIMS = ("region", "size", "app")
VALUES = {"region": ["eu", "us", ""], "size": ["S", "M", "L"], "app": ["a", "b"]}
USERS = ["u1", "u2", "u3", "u4", "u5"]
ACCOUNT = "acct"

# --------------------------------------------------------------------------- strategies


@st.composite
def meters(draw: st.DrawFn, aggregation: Aggregation | None = None) -> Meter:
    agg = draw(st.sampled_from(Aggregation)) if aggregation is None else aggregation
    dims = draw(st.lists(st.sampled_from(DIMS), unique=True, max_size=3))
    unique = "user" if agg is Aggregation.UNIQUE_COUNT else None
    return Meter(f"m.{agg.value}", agg, tuple(dims), unique)


def decimals() -> st.SearchStrategy[Decimal]:
    """Non-negative finite decimals, up to 40 significant and 60 fractional digits."""
    return st.builds(
        lambda coefficient, exponent: Decimal((0, tuple(map(int, str(coefficient))), exponent)),
        st.integers(0, 10**40),
        st.integers(-60, 4),
    )


quantities: st.SearchStrategy[Quantity] = st.one_of(
    st.integers(0, 1000),
    st.integers(0, 10**30),  # beyond 64 bits too
    decimals(),
    st.sampled_from([Decimal("5"), Decimal("5.0"), Decimal("5.000"), 5, Decimal("5E+0")]),
)

times = st.one_of(
    st.integers(T0, T0 + SPAN),
    # exact window boundaries and their neighbours
    st.builds(
        lambda k, unit, delta: T0 + k * unit + delta,
        st.integers(0, 3),
        st.sampled_from([MINUTE_MS, HOUR_MS, DAY_MS]),
        st.sampled_from([-1, 0, 1]),
    ),
    # a few shared instants, so that latest needs its id tie-break
    st.sampled_from([T0 + 7 * MINUTE_MS + 5, T0 + HOUR_MS, T0 + DAY_MS + 59_999]),
)


@st.composite
def event_lists(draw: st.DrawFn, meter: Meter, max_size: int = 40) -> list[Event]:
    n = draw(st.integers(0, max_size))
    ids = draw(
        st.lists(st.text("abcdef0123", min_size=1, max_size=4), min_size=n, max_size=n, unique=True)
    )
    events = []
    for event_id in ids:
        props: dict[str, str] = {}
        for dim in DIMS:
            v = draw(st.sampled_from([None, *VALUES[dim]]))
            if v is not None:
                props[dim] = v
        user = draw(st.sampled_from([None, *USERS]))
        if user is not None:
            props["user"] = user
        quantity = 1 if meter.aggregation is Aggregation.COUNT else draw(quantities)
        events.append(
            Event(
                event_id,
                ACCOUNT,
                meter.name,
                quantity,
                draw(times),
                tuple(sorted(props.items())),
            )
        )
    return events


# --------------------------------------------------------------------------- the model


def exact(q: Quantity) -> Fraction:
    return Fraction(q)


def spelling(q: Quantity) -> tuple[bool, str]:
    """What a value shows: its type and canonical text (all that encode and the API keep)."""
    if isinstance(q, int):
        return (True, str(q))
    with decimal.localcontext(EXACT):
        return (False, canonical_quantity(q))


def model_value(meter: Meter, bucket: Sequence[Event]) -> tuple[Fraction, object]:
    """The exact value of a bucket and what pins its representation down."""
    qs = [e.quantity for e in bucket]
    match meter.aggregation:
        case Aggregation.SUM:
            return sum((exact(q) for q in qs), Fraction(0)), all(type(q) is int for q in qs)
        case Aggregation.COUNT:
            return Fraction(len(bucket)), True
        case Aggregation.MAX:
            top = max(exact(q) for q in qs)
            return top, max(spelling(q) for q in qs if exact(q) == top)
        case Aggregation.MIN:
            low = min(exact(q) for q in qs)
            return low, max(spelling(q) for q in qs if exact(q) == low)
        case Aggregation.LATEST:
            last = max(bucket, key=lambda e: (e.time, e.id))
            return exact(last.quantity), spelling(last.quantity)
        case Aggregation.UNIQUE_COUNT:
            assert meter.unique_property is not None
            return Fraction(len({e.property(meter.unique_property) for e in bucket})), True


def observed(meter: Meter, q: Quantity) -> tuple[Fraction, object]:
    if meter.aggregation is Aggregation.SUM:
        return exact(q), type(q) is int
    if meter.aggregation in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT):
        return exact(q), type(q) is int
    return exact(q), spelling(q)


Row = tuple[int, int, tuple[Fraction, object], dict[str, str] | None]


def model_rows(
    meter: Meter,
    events: Iterable[Event],
    from_ms: int,
    to_ms: int,
    window: Window,
    group_by: str | None,
) -> list[Row]:
    size = {Window.MINUTE: MINUTE_MS, Window.HOUR: HOUR_MS, Window.DAY: DAY_MS}[window]
    lo = from_ms // size * size
    hi = to_ms // size * size
    buckets: dict[tuple[int, str], list[Event]] = defaultdict(list)
    for e in events:
        if meter.unique_property is not None and e.property(meter.unique_property) is None:
            continue  # documented choice: ignored
        start = e.time // size * size
        if lo <= start < hi:
            group = "" if group_by is None else (e.property(group_by) or "")
            buckets[(start, group)].append(e)
    return [
        (
            start,
            start + size,
            model_value(meter, buckets[(start, group)]),
            None if group_by is None else {group_by: group},
        )
        for start, group in sorted(buckets)
    ]


def as_rows(meter: Meter, rows: Iterable[UsageRow]) -> list[Row]:
    return [(r.start, r.end, observed(meter, r.value), r.group) for r in rows]


def queries(
    meter: Meter, events: Sequence[Event], rnd: random.Random
) -> list[tuple[int, int, Window, str | None]]:
    """Every window and group_by, over everything and over two random (unaligned) ranges
    whose ends are often at, just before or just after an event's time."""

    def end() -> int:
        if events and rnd.random() < 0.7:
            return rnd.choice(events).time + rnd.choice([-1, 0, 0, 1, rnd.randrange(-9, 9)])
        return rnd.randrange(T0 - HOUR_MS, T0 + SPAN)

    ranges = [(0, T0 + 10 * DAY_MS)] + [tuple(sorted((end(), end()))) for _ in range(2)]
    return [
        (lo, hi, window, group_by)
        for lo, hi in ranges
        for window in Window
        for group_by in (None, *meter.dimensions)
    ]


def built(meter: Meter, events: Iterable[Event]) -> State:
    state = new_state(meter)
    for e in events:
        add(state, e)
    return state


def fingerprint(state: State) -> bytes:
    """The exact content of a state: its bytes (canonical decimal text, ints as ints)."""
    return encode(state)


# --------------------------------------------------------------------------- properties


@settings(deadline=None, max_examples=examples(150))
@given(data=st.data(), meter=meters())
def test_rows_match_model_for_any_order_and_partition(data: st.DataObject, meter: Meter) -> None:
    events = data.draw(event_lists(meter))
    rnd = data.draw(st.randoms(use_true_random=False))
    parts = data.draw(st.integers(1, 4))

    # one account, events in random order
    whole = AccountUsage()
    for e in rnd.sample(events, len(events)):
        whole.apply(meter, e)

    # the same events split over several accounts' usage, each in its own order
    pieces = [AccountUsage() for _ in range(parts)]
    for e in rnd.sample(events, len(events)):
        pieces[rnd.randrange(parts)].apply(meter, e)
    minute_states = [s for piece in pieces for s in piece.states(meter.name)]
    rnd.shuffle(minute_states)

    # ... merged per cell (through the store's encoding) and loaded into a fresh one
    per_cell: dict[tuple[int, tuple[str, ...]], list[State]] = defaultdict(list)
    for start, dims, state in minute_states:
        per_cell[(start, dims)].append(decode(meter, encode(state)))
    restored = AccountUsage()
    for (start, dims), states in per_cell.items():
        rnd.shuffle(states)
        acc = new_state(meter)
        for state in states:
            acc = merge(state, acc) if rnd.random() < 0.5 else merge(acc, state)
        restored.load(meter, start, dims, acc)

    for from_ms, to_ms, window, group_by in queries(meter, events, rnd):
        expected = model_rows(meter, events, from_ms, to_ms, window, group_by)
        assert as_rows(meter, whole.rows(meter, from_ms, to_ms, window, group_by)) == expected
        assert as_rows(meter, restored.rows(meter, from_ms, to_ms, window, group_by)) == expected
        # rollup merges several states of one cell itself
        rolled = rollup(meter, minute_states, from_ms, to_ms, window, group_by)
        assert as_rows(meter, rolled) == expected


@given(data=st.data(), meter=meters())
def test_state_is_independent_of_order(data: st.DataObject, meter: Meter) -> None:
    events = data.draw(event_lists(meter))
    shuffled = data.draw(st.permutations(events))
    assert fingerprint(built(meter, events)) == fingerprint(built(meter, shuffled))


@given(data=st.data(), meter=meters())
def test_merge_is_a_commutative_monoid(data: st.DataObject, meter: Meter) -> None:
    events = data.draw(event_lists(meter, max_size=30))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=2, max_size=2)))
    a = built(meter, events[: cuts[0]])
    b = built(meter, events[cuts[0] : cuts[1]])
    c = built(meter, events[cuts[1] :])
    before = [fingerprint(s) for s in (a, b, c)]

    left = merge(merge(a, b), c)
    right = merge(a, merge(b, c))
    assert left == right
    assert fingerprint(left) == fingerprint(right)
    assert fingerprint(merge(a, b)) == fingerprint(merge(b, a))
    assert fingerprint(merge(new_state(meter), a)) == fingerprint(a)
    assert fingerprint(merge(a, new_state(meter))) == fingerprint(a)
    # merging is adding all the events
    assert fingerprint(left) == fingerprint(built(meter, events))
    # inputs untouched
    assert [fingerprint(s) for s in (a, b, c)] == before


@given(data=st.data(), meter=meters())
def test_encode_decode_round_trip(data: st.DataObject, meter: Meter) -> None:
    state = built(meter, data.draw(event_lists(meter, max_size=15)))
    blob = encode(state)
    again = decode(meter, blob)
    assert again == state
    assert type(again) is type(state)
    assert encode(again) == blob
    if not state.empty:
        assert value(again) == value(state)
        assert type(value(again)) is type(value(state))


# --------------------------------------------------------------------------- examples


def ev(
    event_id: str,
    time: int,
    quantity: Quantity = 1,
    meter: str = "m",
    **props: str,
) -> Event:
    return Event(event_id, ACCOUNT, meter, quantity, time, tuple(sorted(props.items())))


def values(rows: list[UsageRow]) -> list[tuple[int, Quantity, dict[str, str] | None]]:
    return [(r.start, r.value, r.group) for r in rows]


def test_a_days_unique_count_is_the_size_of_the_union() -> None:
    meter = Meter("m", Aggregation.UNIQUE_COUNT, ("region",), "user")
    usage = AccountUsage()
    usage.apply(meter, ev("1", T0 + 10, user="u1", region="eu"))
    usage.apply(meter, ev("2", T0 + HOUR_MS + 10, user="u1", region="us"))
    usage.apply(meter, ev("3", T0 + HOUR_MS + 20, user="u2", region="eu"))
    usage.apply(meter, ev("4", T0 + 5 * HOUR_MS, user="u2", region="us"))
    end = T0 + DAY_MS
    hourly = usage.rows(meter, T0, end, Window.HOUR, None)
    assert values(hourly) == [(T0, 1, None), (T0 + HOUR_MS, 2, None), (T0 + 5 * HOUR_MS, 1, None)]
    assert sum(int(r.value) for r in hourly) == 4
    assert values(usage.rows(meter, T0, end, Window.DAY, None)) == [(T0, 2, None)]
    # collapsing a dimension is a union too: eu {u1, u2}, us {u1, u2}
    assert values(usage.rows(meter, T0, end, Window.DAY, "region")) == [
        (T0, 2, {"region": "eu"}),
        (T0, 2, {"region": "us"}),
    ]


def test_coarse_windows_merge_max_min_latest() -> None:
    for agg, want in [(Aggregation.MAX, 9), (Aggregation.MIN, 2), (Aggregation.LATEST, 4)]:
        meter = Meter("m", agg, ("app",))
        usage = AccountUsage()
        usage.apply(meter, ev("1", T0, 9, app="a"))
        usage.apply(meter, ev("2", T0 + HOUR_MS, 2, app="b"))
        usage.apply(meter, ev("3", T0 + 2 * HOUR_MS, 4, app="a"))
        assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, None)) == [(T0, want, None)]


def test_latest_ties_are_broken_by_the_greatest_id() -> None:
    meter = Meter("m", Aggregation.LATEST)
    t = T0 + 30 * MINUTE_MS + 5
    early = [ev("b", t, 10), ev("a", t, 20), ev("c", t - 1, 30)]
    for order in (early, early[::-1], [early[1], early[2], early[0]]):
        usage = AccountUsage()
        for e in order:
            usage.apply(meter, e)
        assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.MINUTE, None)) == [
            (T0 + 30 * MINUTE_MS, 10, None)
        ]
    # and through merged states
    x, y = built(meter, [early[0]]), built(meter, [early[1]])
    assert value(merge(x, y)) == value(merge(y, x)) == 10
    # a later time wins over a greater id, also across windows of a day
    usage = AccountUsage()
    usage.apply(meter, ev("z", T0 + 5, 1))
    usage.apply(meter, ev("a", T0 + HOUR_MS, 2))
    assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, None)) == [(T0, 2, None)]


def test_from_and_to_are_aligned_down_and_to_is_exclusive() -> None:
    meter = Meter("m", Aggregation.SUM)
    usage = AccountUsage()
    ten = T0 + 10 * HOUR_MS
    # 10:00:00.000 -> 1, 10:59:59.999 -> 2, 11:00:00.000 -> 4, 12:00:00.000 -> 8
    for i, t in enumerate([ten, ten + HOUR_MS - 1, ten + HOUR_MS, ten + 2 * HOUR_MS]):
        usage.apply(meter, ev(str(i), t, 2**i))

    def rows(from_ms: int, to_ms: int, window: Window) -> list[tuple[int, int, Quantity]]:
        return [(r.start, r.end, r.value) for r in usage.rows(meter, from_ms, to_ms, window)]

    h10, h11, h12 = (
        (ten, ten + HOUR_MS, 3),
        (ten + HOUR_MS, ten + 2 * HOUR_MS, 4),
        (
            ten + 2 * HOUR_MS,
            ten + 3 * HOUR_MS,
            8,
        ),
    )
    assert rows(ten, ten + 3 * HOUR_MS, Window.HOUR) == [h10, h11, h12]
    # from 10:30 is aligned down to 10:00 (inclusive); to 12:30 down to 12:00 (exclusive)
    assert rows(ten + 30 * MINUTE_MS, ten + 2 * HOUR_MS + 30 * MINUTE_MS, Window.HOUR) == [h10, h11]
    assert rows(ten, ten + 2 * HOUR_MS, Window.HOUR) == [h10, h11]
    assert rows(ten + HOUR_MS - 1, ten + 2 * HOUR_MS + 1, Window.HOUR) == [h10, h11]
    assert rows(ten + HOUR_MS, ten + 2 * HOUR_MS + 1, Window.HOUR) == [h11]
    assert rows(ten + 30 * MINUTE_MS, ten + 59 * MINUTE_MS, Window.HOUR) == []  # same hour
    assert rows(ten, ten, Window.HOUR) == []
    assert rows(ten + 3 * HOUR_MS, ten, Window.HOUR) == []
    # minutes: the 10:59:59.999 event is in the 10:59 minute
    m59 = ten + 59 * MINUTE_MS
    assert rows(ten, ten + HOUR_MS, Window.MINUTE) == [
        (ten, ten + MINUTE_MS, 1),
        (m59, ten + HOUR_MS, 2),
    ]
    assert rows(m59 + 59_999, ten + HOUR_MS, Window.MINUTE) == [(m59, ten + HOUR_MS, 2)]
    assert rows(ten + 1, m59, Window.MINUTE) == [(ten, ten + MINUTE_MS, 1)]
    assert rows(ten + 1, m59 + 1, Window.MINUTE) == [(ten, ten + MINUTE_MS, 1)]
    # days
    assert rows(T0 + 1, T0 + DAY_MS + 1, Window.DAY) == [(T0, T0 + DAY_MS, 15)]
    assert rows(T0 + 1, T0 + DAY_MS - 1, Window.DAY) == []


def test_decimal_arithmetic_that_would_round_raises() -> None:
    meter = Meter("m", Aggregation.SUM)
    state = built(meter, [ev("1", T0, Decimal("1E+500"))])
    with pytest.raises((decimal.Inexact, decimal.Rounded)):
        add(state, ev("2", T0, Decimal("1E-500")))  # 1001 significant digits
    assert value(state) == Decimal("1E+500")  # unchanged
    with pytest.raises((decimal.Inexact, decimal.Rounded)):
        merge(state, built(meter, [ev("3", T0, Decimal("1E-500"))]))
    # the same through an account's usage: nothing changes, nothing gets dirty
    usage = AccountUsage()
    usage.apply(meter, ev("1", T0, Decimal("1E+500")))
    usage.clear_dirty()
    with pytest.raises((decimal.Inexact, decimal.Rounded)):
        usage.apply(meter, ev("2", T0, Decimal("1E-500")))
    assert usage.dirty() == set()
    assert values(usage.rows(meter, T0, T0 + 1, Window.DAY, None)) == []
    assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, None)) == [
        (T0, Decimal("1E+500"), None)
    ]
    # the module context itself never rounds
    with pytest.raises(decimal.Inexact):
        EXACT.divide(Decimal(1), Decimal(3))


def test_exact_where_a_default_context_would_round() -> None:
    meter = Meter("m", Aggregation.SUM)
    tiny = Decimal("0." + "0" * 59 + "1")
    big = Decimal(10**40)
    state = built(meter, [ev("1", T0, big), ev("2", T0, tiny), ev("3", T0, 7)])
    assert value(state) == EXACT.add(Decimal(10**40 + 7), tiny)
    # (the same sum in the default context, 28 digits, would silently round)
    assert Decimal(10**40 + 7) + tiny == Decimal("1.000000000000000000000000000E+40")
    assert Fraction(value(state)) == Fraction(10**40 + 7) + Fraction(1, 10**60)
    assert decode(meter, encode(state)) == state
    # ints stay ints, beyond 64 bits too
    ints = built(meter, [ev("1", T0, 2**70), ev("2", T0, 2**70)])
    assert value(ints) == 2**71
    assert type(value(ints)) is int
    assert type(value(decode(meter, encode(ints)))) is int


def test_a_smuggled_float_is_refused_not_converted() -> None:
    meter = Meter("m", Aggregation.SUM)
    for first in (1, Decimal("1.5")):
        state = built(meter, [ev("1", T0, first)])
        with pytest.raises(TypeError):
            add(state, ev("2", T0, 0.5))  # type: ignore[arg-type]


def test_equal_values_keep_one_type_whatever_the_order() -> None:
    for agg in (Aggregation.MAX, Aggregation.MIN):
        meter = Meter("m", agg)
        spellings: list[Quantity] = [Decimal("5.0"), 5, Decimal("5")]
        for order in (spellings, spellings[::-1]):
            got = value(built(meter, [ev(str(i), T0, q) for i, q in enumerate(order)]))
            assert type(got) is int
            assert got == 5


def test_unique_count_ignores_events_without_the_property() -> None:
    meter = Meter("m", Aggregation.UNIQUE_COUNT, (), "user")
    usage = AccountUsage()
    usage.apply(meter, ev("1", T0))  # no user: no window with usage
    assert usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, None) == []
    assert usage.dirty() == set()
    usage.apply(meter, ev("2", T0 + 1, user="u"))
    usage.apply(meter, ev("3", T0 + 2))
    assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, None)) == [(T0, 1, None)]
    with pytest.raises(ValueError, match="unique_property"):
        new_state(Meter("bad", Aggregation.UNIQUE_COUNT))


def test_group_by_must_be_a_dimension() -> None:
    meter = Meter("m", Aggregation.SUM, ("app",))
    usage = AccountUsage()
    with pytest.raises(ValueError, match="'size'"):
        usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, "size")
    usage.apply(meter, ev("1", T0, 3, app="a", size="S"))
    with pytest.raises(ValueError, match="'size'"):
        usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, "size")
    with pytest.raises(ValueError, match="'size'"):
        rollup(meter, usage.states("m"), T0, T0 + DAY_MS, Window.DAY, "size")
    assert values(usage.rows(meter, T0, T0 + DAY_MS, Window.DAY, "app")) == [(T0, 3, {"app": "a"})]


def test_dims_of_uses_the_meters_order_and_blank_for_missing() -> None:
    meter = Meter("m", Aggregation.SUM, ("size", "app", "region"))
    assert dims_of(meter, ev("1", T0, app="a", size="S")) == ("S", "a", "")
    assert dims_of(meter, ev("1", T0)) == ("", "", "")
    assert dims_of(Meter("m", Aggregation.SUM), ev("1", T0, app="a")) == ()
    many = tuple((f"k{i:02d}", str(i)) for i in range(16))
    wide = Meter("m", Aggregation.SUM, ("k15", "k00", "k07", "nope"))
    assert dims_of(wide, Event("1", ACCOUNT, "m", 1, T0, many)) == ("15", "0", "7", "")


def test_dirty_clear_dirty_and_load() -> None:
    meter = Meter("m", Aggregation.SUM, ("app",))
    other = Meter("n", Aggregation.COUNT)
    usage = AccountUsage()
    usage.apply(meter, ev("1", T0 + 5, 2, app="a"))
    usage.apply(meter, ev("2", T0 + 6, 3, app="a"))
    usage.apply(other, ev("3", T0 + MINUTE_MS, meter="n"))
    assert usage.dirty() == {("m", T0, ("a",)), ("n", T0 + MINUTE_MS, ())}
    usage.clear_dirty([("m", T0, ("a",))])
    assert usage.dirty() == {("n", T0 + MINUTE_MS, ())}
    assert usage.has_dirty()
    usage.clear_dirty()
    assert usage.dirty() == set()
    assert not usage.has_dirty()
    usage.apply(meter, ev("4", T0 + 7, 4, app="a"))
    assert usage.dirty() == {("m", T0, ("a",))}
    cell = usage.state("m", T0, ("a",))
    assert cell is not None
    assert value(cell) == 9

    restored = AccountUsage()
    restored.load(meter, T0, ("a",), decode(meter, encode(cell)))
    assert restored.dirty() == set()  # loading is not a change
    assert not restored.has_dirty()
    restored.apply(meter, ev("5", T0 + 8, 1, app="a"))
    assert values(restored.rows(meter, T0, T0 + MINUTE_MS, Window.MINUTE, None)) == [(T0, 10, None)]
    with pytest.raises(ValueError, match="aligned"):
        restored.load(meter, T0 + 1, ("a",), SumState(1))
    with pytest.raises(ValueError, match="dimensions"):
        restored.load(meter, T0, (), SumState(1))
    with pytest.raises(TypeError):
        restored.load(meter, T0, ("a",), LatestState())
    with pytest.raises(ValueError, match="meter"):
        restored.apply(meter, ev("6", T0, 1, meter="n"))

    usage.clear()
    assert usage.dirty() == set()
    assert usage.state("m", T0, ("a",)) is None
    assert usage.rows(meter, T0, T0 + DAY_MS, Window.DAY) == []


def test_merged_is_merge() -> None:
    meter = Meter("m", Aggregation.SUM)
    a, b = built(meter, [ev("1", T0, 2)]), built(meter, [ev("2", T0, Decimal("0.5"))])
    assert a.merged(b) == merge(a, b) == SumState(Decimal("2.5"))
    assert (value(a), value(b)) == (2, Decimal("0.5"))
    with pytest.raises(TypeError):
        merge(a, LatestState())


def test_decode_refuses_what_does_not_fit() -> None:
    meter = Meter("m", Aggregation.SUM)
    blob = encode(built(meter, [ev("1", T0, Decimal("1.25"))]))
    assert decode(meter, blob) == SumState(Decimal("1.25"))
    with pytest.raises(ValueError, match="max"):
        decode(Meter("m", Aggregation.MAX), blob)
    with pytest.raises(ValueError, match="undecodable"):
        decode(meter, b"\xc1")
    with pytest.raises(ValueError, match="undecodable"):
        decode(meter, encode(SumState()) + b"junk")
    unique = Meter("u", Aggregation.UNIQUE_COUNT, (), "user")
    state = decode(unique, encode(UniqueCountState("user", ["b", "a"])))
    assert isinstance(state, UniqueCountState)
    assert state.values == {"a", "b"}


def test_empty_states() -> None:
    for agg in Aggregation:
        meter = Meter("m", agg, (), "user")
        state = new_state(meter)
        assert state.empty
        assert decode(meter, encode(state)) == state
        if agg in (Aggregation.MAX, Aggregation.MIN, Aggregation.LATEST):
            with pytest.raises(ValueError, match="empty"):
                value(state)
        else:
            assert value(state) == 0
        # rollup leaves empty cells out
        assert rollup(meter, [(T0, (), state)], T0, T0 + DAY_MS, Window.DAY, None) == []


# --------------------------------------------------------------------------- the hot path


def reference_dims(meter: Meter, event: Event) -> tuple[str, ...]:
    """Dimension values, naively: each name looked up in the properties, ``""`` if absent."""
    return tuple(event.property(name) or "" for name in meter.dimensions)


def reference_cells(
    meters: dict[str, Meter], events: Iterable[Event]
) -> dict[tuple[str, int, tuple[str, ...]], bytes]:
    """Each event added on its own to a state per (meter, minute, dims): the cells' bytes."""
    cells: dict[tuple[str, int, tuple[str, ...]], State] = {}
    for e in events:
        meter = meters[e.meter]
        if meter.unique_property is not None and e.property(meter.unique_property) is None:
            continue
        key = (meter.name, e.time - e.time % MINUTE_MS, reference_dims(meter, e))
        add(cells.setdefault(key, new_state(meter)), e)
    return {key: encode(state) for key, state in cells.items()}


def cells_of(
    usage: AccountUsage, meters: dict[str, Meter]
) -> dict[tuple[str, int, tuple[str, ...]], bytes]:
    return {
        (name, start, dims): encode(state)
        for name in meters
        for start, dims, state in usage.states(name)
    }


@settings(deadline=None, max_examples=examples(200))
@given(
    data=st.data(),
    first=meters(),
    second=meters(),
    memo_size=st.sampled_from([1, 2, 4096]),
)
def test_apply_events_and_apply_agree_with_a_naive_reference(
    data: st.DataObject, first: Meter, second: Meter, memo_size: int
) -> None:
    """``AccountUsage.apply_events`` (a delivered batch, meters mixed in any order) and
    ``apply`` (one event) give the cells of a naive per-event reference, dims from a plain
    lookup, whatever the dimension memo holds (sizes 1 and 2 make it start over often)."""
    second = Meter("m.second", second.aggregation, second.dimensions, second.unique_property)
    meters = {first.name: first, second.name: second}
    events = data.draw(event_lists(first)) + [
        Event(e.id + "'", e.account, second.name, e.quantity, e.time, e.properties)
        for e in data.draw(event_lists(second))
    ]
    events = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(events)))
    expected = reference_cells(meters, events)
    old_size = aggregate.DIMS_MEMO_SIZE
    aggregate.DIMS_MEMO_SIZE = memo_size  # type: ignore[misc]
    try:
        batched = AccountUsage()
        batched.apply_events(meters, events[:cut])  # two batches, as two deliveries
        batched.apply_events(meters, events[cut:])
        one_by_one = AccountUsage()
        for e in events:
            one_by_one.apply(meters[e.meter], e)
    finally:
        aggregate.DIMS_MEMO_SIZE = old_size  # type: ignore[misc]
    assert cells_of(batched, meters) == expected
    assert cells_of(one_by_one, meters) == expected
    assert batched.dirty() == set(expected) == one_by_one.dirty()


def test_apply_events_stops_at_the_first_failure() -> None:
    """Events before a failing one are applied; it and those after it are not."""
    meter = Meter("m", Aggregation.SUM, ("app",))
    usage = AccountUsage()
    events = [
        ev("1", T0, 2, app="a"),
        ev("2", T0, 3, app="b"),
        ev("3", T0, 5, meter="unknown"),
        ev("4", T0, 7, app="a"),
    ]
    with pytest.raises(KeyError, match="unknown"):
        usage.apply_events({"m": meter}, events)
    assert cells_of(usage, {"m": meter}) == reference_cells({"m": meter}, events[:2])
    changed = Meter("m", Aggregation.COUNT, ("app",))  # same name, another definition
    with pytest.raises(ValueError, match="changed definition"):
        usage.apply_events({"m": changed}, events[3:])
    assert cells_of(usage, {"m": meter}) == reference_cells({"m": meter}, events[:2])


def test_sum_and_count_cells_hold_values_the_collector_does_not_walk() -> None:
    """Under load every new minute cell stays young until its checkpoint; a ``sum`` or
    ``count`` cell holds its value (no Python object for the collector to walk), and is
    seen from outside as a fresh :class:`State` (changing it changes nothing)."""
    total = Meter("t", Aggregation.SUM)
    calls = Meter("c", Aggregation.COUNT)
    users = Meter("u", Aggregation.UNIQUE_COUNT, unique_property="user")
    usage = AccountUsage()
    usage.apply_events(
        {m.name: m for m in (total, calls, users)},
        [
            ev("1", T0, Decimal("1.5"), meter="t"),
            ev("2", T0, 2, meter="t"),
            ev("3", T0, 1, meter="c"),
            ev("4", T0, 1, meter="c"),
            ev("5", T0, 1, meter="u", user="ann"),
        ],
    )
    stored = {name: list(rec.cells.values()) for name, rec in usage._meters.items()}
    assert stored["t"] == [Decimal("3.5")]
    assert stored["c"] == [2]
    assert not any(gc.is_tracked(cell) for cell in stored["t"] + stored["c"])
    assert all(isinstance(cell, State) for cell in stored["u"])
    state = usage.state("t", T0, ())
    assert isinstance(state, SumState)
    assert state.value() == Decimal("3.5")
    state.merge_from(SumState(Decimal(100)))
    assert usage.state("t", T0, ()) == SumState(Decimal("3.5"))
    counted = usage.state("c", T0, ())
    assert isinstance(counted, CountState)
    assert counted.value() == 2
