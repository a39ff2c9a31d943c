"""``meterd.billing`` rating: pure, exact, through the real aggregation states."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.accounts.aggregate import AccountUsage
from meterd.billing import (
    Adjustment,
    AdjustmentKind,
    Cell,
    Invoice,
    Period,
    PriceBook,
    PriceRule,
    QuantityRounding,
    RoundingMode,
    rate,
    round_amount,
)
from meterd.model import DAY_MS, Aggregation, Event, Meter
from tests.billing.reference import rate_reference
from tests.examples import examples

DYNO = Meter("dyno.seconds", Aggregation.SUM, ("size", "app"))
REQUESTS = Meter("router.requests", Aggregation.COUNT)
STORAGE = Meter("postgres.storage_bytes", Aggregation.MAX, ("database",))
USERS = Meter("api.active_users", Aggregation.UNIQUE_COUNT, (), "user")
METERS = {m.name: m for m in (DYNO, REQUESTS, STORAGE, USERS)}
NOV = Period(2026, 11)
DAY = [NOV.start_ms + d * DAY_MS for d in range(30)]  # DAY[0] is 1 November


def event(meter: Meter, id: str, time: int, quantity: int | str = 1, **props: str) -> Event:
    q: int | Decimal = quantity if isinstance(quantity, int) else Decimal(quantity)
    return Event(id, "acme", meter.name, q, time, tuple(sorted(props.items())))


def cells(events: Iterable[Event]) -> dict[str, list[Cell]]:
    usage = AccountUsage()
    for e in events:
        usage.apply(METERS[e.meter], e)
    return {name: list(usage.states(name)) for name in METERS if list(usage.states(name))}


def rate_events(
    book: PriceBook, events: Iterable[Event], adjustments: Iterable[Adjustment] = ()
) -> Invoice:
    """Rate November for 'acme' from ``events``, through real aggregation states."""
    return rate("acme", NOV, METERS, cells(events), book, adjustments)


def rule(meter: Meter, price: str, since: date = date(2026, 1, 1), **options: object) -> PriceRule:
    return PriceRule(meter.name, Decimal(price), since, **options)  # type: ignore[arg-type]


def test_period_bounds_and_parsing() -> None:
    assert Period.parse("2026-11") == NOV
    assert NOV.days == 30
    assert Period(2028, 2).days == 29
    assert NOV.end_ms - NOV.start_ms == 30 * DAY_MS
    assert Period.containing(NOV.end_ms - 1) == NOV
    assert Period.containing(NOV.end_ms) == Period(2026, 12)
    assert Period.containing(NOV.start_ms) == NOV
    for bad in ("2026-13", "2026-1", "26-11", "2026-11-01", ""):
        with pytest.raises(ValueError, match=r"period|month"):
            Period.parse(bad)


def test_a_price_change_mid_month_splits_the_line_on_its_date() -> None:
    book = PriceBook([rule(DYNO, "0.01"), rule(DYNO, "0.02", date(2026, 11, 15))], METERS)
    invoice = rate_events(
        book,
        [
            event(DYNO, "a", DAY[2], "100", size="std", app="web"),
            event(DYNO, "b", DAY[14] - 1, "10", size="std", app="web"),  # 14 Nov 23:59:59.999
            event(DYNO, "c", DAY[14], "50", size="std", app="web"),  # 15 Nov 00:00
        ],
    )
    [first, second] = invoice.lines
    assert (first.start, first.end, first.quantity, first.amount) == (
        NOV.start_ms,
        DAY[14],
        Decimal(110),
        Decimal("1.10"),
    )
    assert (second.start, second.end, second.quantity, second.amount) == (
        DAY[14],
        NOV.end_ms,
        Decimal(50),
        Decimal("1.00"),
    )
    assert [first.number, second.number] == [1, 2]
    assert invoice.total == Decimal("2.10")


def test_a_matching_rule_beats_the_general_one_while_it_applies() -> None:
    book = PriceBook(
        [
            rule(DYNO, "0.01"),
            rule(DYNO, "0.05", date(2026, 11, 10), match=("size", "perf-l")),
            rule(DYNO, "0.02", date(2026, 11, 20)),  # a later general price does not win
        ],
        METERS,
    )
    invoice = rate_events(
        book,
        [
            event(DYNO, "a", DAY[0], "10", size="perf-l", app="x"),
            event(DYNO, "b", DAY[25], "10", size="perf-l", app="x"),
            event(DYNO, "c", DAY[25], "10", size="std", app="x"),
        ],
    )
    got = [(dict(ln.dims)["size"], ln.start, ln.unit_price, ln.amount) for ln in invoice.lines]
    assert got == [
        ("perf-l", NOV.start_ms, Decimal("0.01"), Decimal("0.10")),
        ("perf-l", DAY[9], Decimal("0.05"), Decimal("0.50")),
        ("std", DAY[19], Decimal("0.02"), Decimal("0.20")),
    ]


def test_quantity_rounding_and_a_daily_cap_spanning_segments() -> None:
    rounding = QuantityRounding(0, RoundingMode.CEILING)
    book = PriceBook(
        [
            rule(DYNO, "1", rounding=rounding, daily_cap=Decimal(1)),
            rule(DYNO, "2", date(2026, 11, 16), rounding=rounding, daily_cap=Decimal(1)),
        ],
        METERS,
    )
    # cap: 1 a day over 30 days = 30 for the month; 20.2 used before the 16th (rounded 21)
    invoice = rate_events(
        book,
        [
            event(DYNO, "a", DAY[1], "20.2", size="s", app="a"),
            event(DYNO, "b", DAY[20], "15", size="s", app="a"),
        ],
    )
    [early, late] = invoice.lines
    assert (early.usage, early.quantity, early.capped, early.amount) == (
        Decimal("20.2"),
        Decimal(21),
        False,
        Decimal(21),
    )
    assert (late.usage, late.quantity, late.capped, late.amount) == (
        Decimal(15),
        Decimal(9),
        True,
        Decimal(18),
    )


def test_amounts_round_half_even_to_the_cent() -> None:
    assert round_amount(Decimal("0.125"), 2) == Decimal("0.12")
    assert round_amount(Decimal("0.135"), 2) == Decimal("0.14")
    assert round_amount(Decimal("-0.125"), 2) == Decimal("-0.12")
    book = PriceBook([rule(REQUESTS, "0.0025")], METERS)
    invoice = rate(
        "acme", NOV, METERS, cells(event(REQUESTS, f"r{i}", DAY[3]) for i in range(5)), book
    )
    assert invoice.lines[0].amount == Decimal("0.01")  # 0.0125 -> 0.01 (half to even)


def test_max_is_the_month_maximum_and_unique_count_distinct_over_the_month() -> None:
    book = PriceBook([rule(STORAGE, "0.001"), rule(USERS, "0.5")], METERS)
    invoice = rate_events(
        book,
        [
            event(STORAGE, "s1", DAY[1], 500, database="main"),
            event(STORAGE, "s2", DAY[7], 900, database="main"),
            event(STORAGE, "s3", DAY[20], 700, database="main"),
            # the same two users on three days: 2 distinct, not 6 (a sum of daily counts)
            *(event(USERS, f"u{d}{u}", DAY[d], user=u) for d in (1, 2, 3) for u in "ab"),
            event(USERS, "u-late", DAY[29], user="c"),
        ],
    )
    [users, storage] = [(ln.meter, ln.quantity, ln.amount) for ln in invoice.lines]
    assert storage == ("postgres.storage_bytes", Decimal(900), Decimal("0.90"))
    assert users == ("api.active_users", Decimal(3), Decimal("1.50"))


def test_unpriced_usage_is_listed_not_dropped_and_adjustments_count() -> None:
    book = PriceBook([rule(DYNO, "0.5", date(2026, 11, 10))], METERS)
    credit = Adjustment(
        7,
        "acme",
        DYNO.name,
        DAY[12],
        DAY[13],
        ("s", "a"),
        AdjustmentKind.CREDIT,
        Decimal(3),
        "ops",
        0,
        "outage",
    )
    invoice = rate_events(
        book,
        [
            event(DYNO, "early", DAY[1], 4, size="s", app="a"),
            event(DYNO, "late", DAY[12], 10, size="s", app="a"),
            event(REQUESTS, "r", DAY[1]),
        ],
        [credit],
    )
    [line] = invoice.lines
    assert (line.usage, line.adjusted, line.quantity, line.amount) == (
        Decimal(10),
        Decimal(-3),
        Decimal(7),
        Decimal("3.5"),
    )
    assert line.adjustments == (7,)
    assert [(u.meter, u.usage) for u in invoice.unpriced] == [
        ("dyno.seconds", Decimal(4)),
        ("router.requests", Decimal(1)),
    ]


def test_an_adjustment_on_a_max_meter_is_refused() -> None:
    bad = Adjustment(
        1,
        "acme",
        STORAGE.name,
        DAY[1],
        DAY[2],
        ("main",),
        AdjustmentKind.DEBIT,
        Decimal(1),
        "ops",
        0,
        "why",
    )
    with pytest.raises(ValueError, match="cannot be adjusted"):
        rate("acme", NOV, METERS, {}, PriceBook([], METERS), [bad])


prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False)


@settings(max_examples=examples(200))
@given(
    quantities=st.lists(
        st.tuples(st.integers(0, 29), st.sampled_from("sm"), st.decimals("0", "1000", places=3)),
        max_size=30,
    ),
    price_a=prices,
    price_b=prices,
    cut=st.integers(1, 29),
)
def test_line_amounts_are_quantity_times_price_and_the_total_adds_up(
    quantities: list[tuple[int, str, Decimal]], price_a: Decimal, price_b: Decimal, cut: int
) -> None:
    since = date(2026, 11, 1 + cut)
    book = PriceBook([rule(DYNO, str(price_a)), rule(DYNO, str(price_b), since)], METERS)
    events = [
        event(DYNO, f"e{i}", DAY[d] + i, str(q), size=size, app="a")
        for i, (d, size, q) in enumerate(quantities)
    ]
    invoice = rate("acme", NOV, METERS, cells(events), book)
    for line in invoice.lines:
        size = dict(line.dims)["size"]
        expected = sum(
            (
                Decimal(e.quantity)
                for e in events
                if dict(e.properties)["size"] == size and line.start <= e.time < line.end
            ),
            Decimal(0),
        )
        assert line.quantity == line.usage == expected
        assert line.amount == round_amount(expected * line.unit_price, 2)
        assert line.unit_price == (price_a if line.start < DAY[cut] else price_b)
    assert invoice.total == sum((ln.amount for ln in invoice.lines), Decimal(0))
    assert sum((ln.usage for ln in invoice.lines), Decimal(0)) == sum(
        (Decimal(e.quantity) for e in events), Decimal(0)
    )


rules = st.lists(
    st.builds(
        lambda day, price, size: PriceRule(
            DYNO.name,
            Decimal(price),
            date(2026, 10, 20) + timedelta(days=day),
            None if size is None else ("size", size),
        ),
        st.integers(0, 50),
        st.sampled_from(["1", "2", "3", "5"]),
        st.sampled_from([None, "s", "m"]),
    ),
    max_size=6,
    unique_by=lambda r: (r.effective_from, r.match),
)


@settings(max_examples=examples(300))
@given(book_rules=rules, size=st.sampled_from(["s", "m", "l"]), instant=st.integers(0, 30))
def test_rule_selection_and_segments_follow_the_documented_order(
    book_rules: list[PriceRule], size: str, instant: int
) -> None:
    book = PriceBook(book_rules, METERS)
    dims = (size, "app")
    at = NOV.start_ms + instant * DAY_MS - 1
    applicable = [
        r for r in book_rules if r.effective_ms <= at and (r.match is None or r.match[1] == size)
    ]
    expected = max(applicable, key=lambda r: (r.match is not None, r.effective_from), default=None)
    assert book.rule_at(DYNO, dims, at) == expected
    segments = book.segments(DYNO, dims, NOV.start_ms, NOV.end_ms)
    assert segments[0][0] == NOV.start_ms
    assert segments[-1][1] == NOV.end_ms
    for (_, end, rule), (start, _, next_rule) in pairwise(segments):
        assert end == start
        assert rule is not next_rule  # neighbours with one rule are joined
    for start, end, rule in segments:
        assert book.rule_at(DYNO, dims, start) is rule
        assert book.rule_at(DYNO, dims, end - 1) is rule


@settings(max_examples=examples(200))
@given(
    quantities=st.lists(
        st.tuples(st.integers(0, 29), st.decimals("0", "50", places=1)), max_size=20
    ),
    cap=st.decimals("1", "300", places=0),
    cut=st.integers(1, 29),
)
def test_a_monthly_cap_holds_across_segments(
    quantities: list[tuple[int, Decimal]], cap: Decimal, cut: int
) -> None:
    rounding = QuantityRounding(0, RoundingMode.CEILING)
    book = PriceBook(
        [
            rule(DYNO, "1", rounding=rounding, monthly_cap=cap),
            rule(DYNO, "2", date(2026, 11, 1 + cut), rounding=rounding, monthly_cap=cap),
        ],
        METERS,
    )
    invoice = rate_events(
        book,
        [
            event(DYNO, f"e{i}", DAY[d] + i, str(q), size="s", app="a")
            for i, (d, q) in enumerate(quantities)
        ],
    )
    billed = sum((ln.quantity for ln in invoice.lines), Decimal(0))
    uncapped = sum(
        (QuantityRounding(0, RoundingMode.CEILING).apply(ln.usage) for ln in invoice.lines),
        Decimal(0),
    )
    assert billed == min(uncapped, cap)
    assert all(ln.quantity <= ln.usage + 1 for ln in invoice.lines)  # rounding adds < 1 unit


def adjustment(
    id: int, day: int, kind: AdjustmentKind, quantity: str, size: str = "s"
) -> Adjustment:
    return Adjustment(
        id, "acme", DYNO.name, DAY[day], DAY[day + 1], (size, "a"), kind, Decimal(quantity),
        "ops", 0, "why",
    )  # fmt: skip


def test_a_credit_beyond_28_digits_is_not_rounded_away() -> None:
    tiny = "0.000000000000000000000000000001"  # 30 places: the input check allows them
    assert adjustment(1, 1, AdjustmentKind.CREDIT, tiny).signed == Decimal("-" + tiny)
    book = PriceBook([rule(DYNO, "1")], METERS)
    debit = adjustment(1, 1, AdjustmentKind.DEBIT, "1")
    credit = adjustment(2, 1, AdjustmentKind.CREDIT, tiny)
    [line] = rate_events(book, [], [debit, credit]).lines
    assert line.adjusted == line.quantity == Decimal("0.999999999999999999999999999999")


# What the service's input check lets through: up to 30 digits each side of the point.
wide = st.builds(
    lambda whole, frac: Decimal(f"{whole}.{frac:030d}"),
    st.integers(0, 10**30 - 1),
    st.integers(0, 10**30 - 1),
).filter(lambda q: q > 0)


@settings(max_examples=examples(200))
@given(
    usage=st.lists(st.tuples(st.integers(0, 29), wide), max_size=6),
    corrections=st.lists(st.tuples(st.integers(0, 28), st.booleans(), wide), max_size=6),
    cut=st.integers(1, 29),
)
def test_wide_quantities_and_adjustments_rate_exactly(
    usage: list[tuple[int, Decimal]], corrections: list[tuple[int, bool, Decimal]], cut: int
) -> None:
    book = PriceBook([rule(DYNO, "1"), rule(DYNO, "3", date(2026, 11, 1 + cut))], METERS)
    events = [event(DYNO, f"e{i}", DAY[d] + i, str(q), size="s", app="a") for i, (d, q) in
              enumerate(usage)]  # fmt: skip
    adjustments = [
        adjustment(i, d, AdjustmentKind.CREDIT if credit else AdjustmentKind.DEBIT, str(q))
        for i, (d, credit, q) in enumerate(corrections)
    ]
    invoice = rate_events(book, events, adjustments)
    # the expected figures in Fraction, which never rounds
    for line in invoice.lines:
        used = sum(
            (Fraction(e.quantity) for e in events if line.start <= e.time < line.end), Fraction(0)
        )
        adjusted = sum(
            (
                Fraction(a.quantity) * (-1 if a.kind is AdjustmentKind.CREDIT else 1)
                for a in adjustments
                if line.start <= a.start < line.end
            ),
            Fraction(0),
        )
        assert Fraction(line.usage) == used
        assert Fraction(line.adjusted) == adjusted
        assert Fraction(line.quantity) == used + adjusted
        exact = (used + adjusted) * Fraction(line.unit_price)
        assert Fraction(line.amount) == Fraction(round(exact, 2))
    assert Fraction(invoice.total) == sum(
        (Fraction(ln.amount) for ln in invoice.lines), Fraction(0)
    )


def test_a_net_negative_segment_frees_no_cap_for_the_next_one() -> None:
    cap = Decimal(50)
    book = PriceBook(
        [rule(DYNO, "1", monthly_cap=cap), rule(DYNO, "2", date(2026, 11, 16), monthly_cap=cap)],
        METERS,
    )
    events = [
        event(DYNO, "a", DAY[1], 10, size="s", app="a"),
        event(DYNO, "b", DAY[20], 100, size="s", app="a"),
    ]
    [early, late] = rate_events(book, events, [adjustment(1, 2, AdjustmentKind.CREDIT, "30")]).lines
    assert (early.quantity, early.amount) == (Decimal(-20), Decimal(-20))  # a visible net credit
    assert (late.quantity, late.capped) == (cap, True)


@settings(max_examples=examples(200))
@given(
    quantities=st.lists(
        st.tuples(st.integers(0, 29), st.decimals("0", "50", places=1)), max_size=12
    ),
    credits=st.lists(st.tuples(st.integers(0, 28), st.decimals("1", "80", places=0)), max_size=4),
    cap=st.decimals("1", "100", places=0),
    cuts=st.sets(st.integers(1, 29), max_size=3),
)
def test_a_monthly_cap_holds_across_segments_with_credits(
    quantities: list[tuple[int, Decimal]],
    credits: list[tuple[int, Decimal]],
    cap: Decimal,
    cuts: set[int],
) -> None:
    book = PriceBook(
        [rule(DYNO, "1", monthly_cap=cap)]
        + [rule(DYNO, str(2 + i), date(2026, 11, 1 + c), monthly_cap=cap)
           for i, c in enumerate(sorted(cuts))],
        METERS,
    )  # fmt: skip
    events = [
        event(DYNO, f"e{i}", DAY[d] + i, str(q), size="s", app="a")
        for i, (d, q) in enumerate(quantities)
    ]
    adjustments = [adjustment(i, d, AdjustmentKind.CREDIT, str(q)) for i, (d, q) in
                   enumerate(credits)]  # fmt: skip
    lines = rate_events(book, events, adjustments).lines
    assert all(ln.quantity <= cap for ln in lines)
    # the cap holds over the month at every point: what the segments so far billed
    billed = Decimal(0)
    for ln in lines:
        # a line is capped only to what the earlier positive segments left
        assert ln.quantity == min(ln.usage + ln.adjusted, cap - billed)
        billed += max(ln.quantity, Decimal(0))
        assert billed <= cap


# ---- many distinct dimension values: linear, and the same invoice as before ---------------

SIZES = [f"s{i}" for i in range(40)]


def many_cells(
    draws: list[tuple[str, str, int, int, int]],
) -> dict[str, list[Cell]]:
    """``(meter kind, size, app, day, quantity)`` draws -> cells of DYNO, REQUESTS (count,
    no dimensions), STORAGE (max, by database) and USERS (unique_count)."""
    events = []
    for i, (kind, size, app, day, quantity) in enumerate(draws):
        time = DAY[day] + i * 60_000 % DAY_MS
        if kind == "dyno":
            events.append(event(DYNO, f"e{i}", time, f"{quantity}.5", size=size, app=f"a{app}"))
        elif kind == "requests":
            events.append(event(REQUESTS, f"e{i}", time))
        elif kind == "storage":
            events.append(event(STORAGE, f"e{i}", time, quantity, database=size))
        else:
            events.append(event(USERS, f"e{i}", time, user=f"u{quantity % 7}"))
    return cells(events)


many_rules = st.lists(
    st.builds(
        lambda day, price, size, capped, rounded: PriceRule(
            DYNO.name,
            Decimal(price),
            date(2026, 10, 20) + timedelta(days=day),
            None if size is None else ("size", size),
            QuantityRounding(0, RoundingMode.CEILING) if rounded else None,
            Decimal(300) if capped else None,
        ),
        st.integers(0, 50),
        st.sampled_from(["0.01", "0.5", "2", "3.125"]),
        st.sampled_from([None, None, *SIZES[:5]]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=8,
    unique_by=lambda r: (r.effective_from, r.match),
)


@settings(max_examples=examples(150), deadline=None)
@given(
    draws=st.lists(
        st.tuples(
            st.sampled_from(["dyno", "dyno", "dyno", "requests", "storage", "users"]),
            st.sampled_from(SIZES),
            st.integers(0, 3),
            st.integers(0, 29),
            st.integers(0, 500),
        ),
        max_size=120,
    ),
    book_rules=many_rules,
    others=st.lists(
        st.sampled_from([REQUESTS, STORAGE, USERS]).map(lambda m: rule(m, "0.25")),
        unique_by=lambda r: r.meter,
    ),
    corrections=st.lists(
        st.tuples(
            st.integers(0, 28), st.sampled_from(SIZES[:8]), st.booleans(), st.integers(1, 400)
        ),
        max_size=12,
    ),
)
def test_many_dimension_values_rate_as_the_quadratic_algorithm_did(
    draws: list[tuple[str, str, int, int, int]],
    book_rules: list[PriceRule],
    others: list[PriceRule],
    corrections: list[tuple[int, str, bool, int]],
) -> None:
    """The linear rating gives the invoice the quadratic one gave (tests/billing/reference.py),
    line by line and to the cent: prices matched by size, changes mid-month, caps, rounding,
    credits and debits on lines with and without usage, every aggregation."""
    book = PriceBook(book_rules + others, METERS)
    adjustments = [
        Adjustment(
            i, "acme", DYNO.name, DAY[d], DAY[d + 1], (size, "a0"),
            AdjustmentKind.CREDIT if credit else AdjustmentKind.DEBIT, Decimal(q), "ops", 0, "why",
        )
        for i, (d, size, credit, q) in enumerate(corrections)
    ]  # fmt: skip
    got = many_cells(draws)
    assert rate("acme", NOV, METERS, got, book, adjustments) == rate_reference(
        "acme", NOV, METERS, got, book, adjustments
    )


def distinct_sizes(n: int) -> dict[str, list[Cell]]:
    """``n`` dyno cells over November, each with its own ``size`` (the issue's load)."""
    return cells(
        event(DYNO, f"e{i}", DAY[i % 30] + i * 60_000 % DAY_MS, f"{i % 97}.25", size=f"z{i}")
        for i in range(n)
    )


def test_thousands_of_distinct_values_rate_as_before_with_matches_cuts_and_caps() -> None:
    book = PriceBook(
        [
            rule(DYNO, "0.01"),
            rule(DYNO, "0.02", date(2026, 11, 15), monthly_cap=Decimal(60)),
            rule(DYNO, "0.5", date(2026, 11, 10), match=("size", "z7")),
        ],
        METERS,
    )
    adjustments = [adjustment(1, 3, AdjustmentKind.CREDIT, "5", size="z3")]
    got = distinct_sizes(3000)
    invoice = rate("acme", NOV, METERS, got, book, adjustments)
    assert invoice == rate_reference("acme", NOV, METERS, got, book, adjustments)
    assert len({line.dims for line in invoice.lines}) == 3000 + 1  # + the credit's line


class CountedDims(tuple[str, ...]):
    """Dimension values that count how often they are compared for equality."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedDims.compared += 1
        return tuple.__eq__(self, other)

    __hash__ = tuple.__hash__


def test_rating_does_not_compare_every_line_with_every_cell() -> None:
    """Rating n lines is linear (sorting them n log n), not one scan of the meter's cells
    per line: counted as comparisons of dimension values, not timed."""
    n = 2000
    got = {
        name: [(start, CountedDims(dims), state) for start, dims, state in meter_cells]
        for name, meter_cells in distinct_sizes(n).items()
    }
    CountedDims.compared = 0
    invoice = rate("acme", NOV, METERS, got, PriceBook([rule(DYNO, "0.01")], METERS))
    assert len(invoice.lines) == n
    assert CountedDims.compared <= 20 * n  # sorting: ~n log2 n = 22k; a scan per line: n * n
