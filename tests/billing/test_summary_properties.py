"""The usage summary behind ``meterd usage ACCOUNT`` (``/v1/accounts/{account}/usage/summary``):
for random events of every aggregation, each window's value and the total are what the
meter's own aggregation makes of exactly the events in them (hypothesis), calendar months
included; the inputs are never mutated."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.accounts.aggregate import State, add, new_state
from meterd.api.support import bucket_end, summarise
from meterd.billing import Period
from meterd.model import MINUTE_MS, Aggregation, Event, Meter, canonical_quantity
from tests.examples import examples

START = Period(2026, 10).start_ms
SPAN = Period(2027, 1).end_ms - START  # four calendar months, 30 and 31 days
METERS = [
    Meter("m.sum", Aggregation.SUM),
    Meter("m.max", Aggregation.MAX),
    Meter("m.min", Aggregation.MIN),
    Meter("m.latest", Aggregation.LATEST),
    Meter("m.unique", Aggregation.UNIQUE_COUNT, (), "user"),
]

events = st.lists(
    st.tuples(
        st.integers(0, SPAN // MINUTE_MS - 1),  # the minute
        st.integers(0, 59_999),  # ms in it
        st.decimals(0, 1000, places=2, allow_nan=False, allow_infinity=False),
        st.sampled_from(["ann", "bob", "cid"]),
    ),
    min_size=1,
    max_size=40,
)


def figure(meter: Meter, chosen: list[Event]) -> str | None:
    state = new_state(meter)
    for event in chosen:
        add(state, event)
    return None if state.empty else canonical_quantity(state.value())


@settings(max_examples=examples(60), deadline=None)
@given(
    meter=st.sampled_from(METERS),
    raw=events,
    window=st.sampled_from(["hour", "day", "month"]),
)
def test_windows_and_total_are_the_aggregation_of_their_events(
    meter: Meter, raw: list[tuple[int, int, Decimal, str]], window: str
) -> None:
    made = [
        Event(f"e{n}", "acct", meter.name, q, START + minute * MINUTE_MS + ms, (("user", u),))
        for n, (minute, ms, q, u) in enumerate(raw)
    ]
    cells: dict[int, State] = {}
    for event in made:  # one minute cell per minute, as the store keeps them
        start = event.time - event.time % MINUTE_MS
        cells[start] = add(cells.get(start) or new_state(meter), event)
    stored: list[tuple[int, tuple[str, ...], State]] = [
        (start, (), state) for start, state in sorted(cells.items())
    ]
    before = [repr(state) for _start, _dims, state in stored]
    rows, total = summarise(meter, stored, window)
    assert [repr(state) for _start, _dims, state in stored] == before  # not mutated
    assert (None if total is None else canonical_quantity(total)) == figure(meter, made)
    for start, end, value in rows:
        assert end == bucket_end(window, start)
        if window == "month":
            assert Period.containing(start).start_ms == start
        inside = [e for e in made if start <= e.time < end]
        assert canonical_quantity(value) == figure(meter, inside)
    covered = sum(1 for e in made if any(s <= e.time < e_ for s, e_, _v in rows))
    assert covered == len(made)  # every event is in one of the rows
