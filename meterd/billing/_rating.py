"""Rating: usage, corrections and the price book of one account and month -> an invoice.

Pure and exact: no I/O, :class:`~decimal.Decimal` (or ``int``) everywhere, never a float.
The input is the account's **minute cells** ``(start, dims, state)`` per meter (the stored
aggregation states, with voided events already taken out), merged here through the real
aggregation monoid (:mod:`meterd.accounts.aggregate`), never by adding values.

Lines (docs/billing.md has the reasons):

* **Summed meters** (``sum``, ``count``): one line per combination of dimension values and
  per price segment: a price that starts mid-month cuts the line at 00:00 UTC of its date.
  quantity = the windows' total in the segment + the adjustments whose window starts in it;
  then rounded by the rule's billing unit, then held under the rule's monthly cap (the cap
  covers the whole month: earlier segments use it up first).
* **Other meters** (``max``, ``min``, ``latest``, ``unique_count``): one line per combination
  of dimension values for the whole month, the month's figure computed by merging states (the
  month's maximum; the number of distinct values over the month, *not* a sum of daily
  distinct counts), priced by the rule in effect at the end of the month.
* amount = quantity * unit price, exact, then rounded **half-even** to ``amount_places``;
  the total is the sum of the rounded line amounts, so the lines add up to it.
* Usage that no rule prices is listed as ``unpriced`` (never dropped silently).

Rating runs on a worker thread (``Billing.off_loop``) while the Trio thread serves ingestion,
and Python lets another thread run only between bytecodes: one long C call (sorting 50,000
tuples is ~60 ms) holds every other thread for its whole length. So large sorts here are
made in slices (:func:`sorted_in_slices`) and the cost is linear in the lines (n log n for
the sorts).
"""

from __future__ import annotations

import decimal
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, TypeAlias, TypeVar

from meterd.accounts.aggregate import EXACT, State
from meterd.model import Meter, Quantity, canonical_quantity

from ._corrections import ADDITIVE, Adjustment
from ._json import Slices
from ._period import Period
from ._prices import PriceBook, PriceRule

__all__ = [
    "Cell",
    "Invoice",
    "InvoiceLine",
    "LineKey",
    "Unpriced",
    "merge_cells",
    "rate",
    "exact_sum",
    "round_amount",
    "sorted_in_slices",
]

T = TypeVar("T")

Dims: TypeAlias = tuple[str, ...]
Cell: TypeAlias = tuple[int, Dims, State]
"""A minute cell of one meter: ``(minute start ms, dimension values, state)``."""
LineKey: TypeAlias = tuple[str, Dims, int]
"""What identifies a line across re-ratings: ``(meter, dimension values, segment start)``."""


def _listed(items: Sequence[T], convert: Callable[[T], Any], lazy: bool) -> Any:
    """``items`` converted to JSON values, or as :class:`Slices` converted when encoded."""
    return Slices(items, convert) if lazy else [convert(item) for item in items]


def _dec(quantity: Quantity) -> Decimal:
    return Decimal(quantity)


def text(number: Quantity) -> str:
    """A quantity or amount as exact decimal text (what JSON carries)."""
    return canonical_quantity(Decimal(number))


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One priced line. ``usage`` comes from the windows (voids applied), ``adjusted`` is the
    net of the adjustments (credits negative), ``quantity`` what is billed after rounding
    and the cap."""

    number: int
    meter: str
    dims: tuple[tuple[str, str], ...]
    start: int
    end: int
    usage: Decimal
    adjusted: Decimal
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    rule: str
    capped: bool = False
    adjustments: tuple[int, ...] = ()

    @property
    def key(self) -> LineKey:
        return (self.meter, tuple(v for _, v in self.dims), self.start)

    def figures(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """What a restatement compares: ``(usage, adjusted, quantity, unit price, amount)``."""
        return (self.usage, self.adjusted, self.quantity, self.unit_price, self.amount)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "meter": self.meter,
            "dimensions": dict(self.dims),
            "start": self.start,
            "end": self.end,
            "usage": text(self.usage),
            "adjusted": text(self.adjusted),
            "quantity": text(self.quantity),
            "unit_price": text(self.unit_price),
            "amount": str(self.amount),
            "rule": self.rule,
            "capped": self.capped,
            "adjustments": list(self.adjustments),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> InvoiceLine:
        return cls(
            number=int(raw["number"]),
            meter=str(raw["meter"]),
            dims=tuple((str(k), str(v)) for k, v in raw["dimensions"].items()),
            start=int(raw["start"]),
            end=int(raw["end"]),
            usage=Decimal(raw["usage"]),
            adjusted=Decimal(raw["adjusted"]),
            quantity=Decimal(raw["quantity"]),
            unit_price=Decimal(raw["unit_price"]),
            amount=Decimal(raw["amount"]),
            rule=str(raw["rule"]),
            capped=bool(raw["capped"]),
            adjustments=tuple(int(i) for i in raw["adjustments"]),
        )


@dataclass(frozen=True, slots=True)
class Unpriced:
    """Usage no price rule covers: shown, not billed."""

    meter: str
    dims: tuple[tuple[str, str], ...]
    start: int
    end: int
    usage: Decimal

    @property
    def key(self) -> LineKey:
        return (self.meter, tuple(v for _, v in self.dims), self.start)

    def describe(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims)
        return f"{self.meter}{' ' + dims if dims else ''} from {self.start}"

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "dimensions": dict(self.dims),
            "start": self.start,
            "end": self.end,
            "usage": text(self.usage),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Unpriced:
        return cls(
            meter=str(raw["meter"]),
            dims=tuple((str(k), str(v)) for k, v in raw["dimensions"].items()),
            start=int(raw["start"]),
            end=int(raw["end"]),
            usage=Decimal(raw["usage"]),
        )


@dataclass(frozen=True, slots=True)
class Invoice:
    account: str
    period: Period
    currency: str
    lines: tuple[InvoiceLine, ...]
    unpriced: tuple[Unpriced, ...] = ()
    total: Decimal = field(default=Decimal(0))

    def to_json(self, lazy: bool = False) -> dict[str, Any]:
        """The invoice as JSON values; ``lazy``: its lines and unpriced usage as
        :class:`Slices`, converted only as :func:`encode_json` encodes them."""
        return {
            "account": self.account,
            "period": str(self.period),
            "currency": self.currency,
            "lines": _listed(self.lines, InvoiceLine.to_json, lazy),
            "unpriced": _listed(self.unpriced, Unpriced.to_json, lazy),
            "total": str(self.total),
        }

    def line(self, number: int) -> InvoiceLine:
        """Line ``number`` (1-based); ``LookupError`` naming the range otherwise."""
        if not 1 <= number <= len(self.lines):
            raise LookupError(
                f"invoice {self.account}/{self.period} has no line {number}"
                f" (it has {len(self.lines)})"
            )
        return self.lines[number - 1]


SORT_SLICE: Final = 2000
"""Items :func:`sorted_in_slices` sorts in one C call (~2 ms for tuples of strings)."""


def sorted_in_slices(items: Iterable[T], key: Callable[[T], Any]) -> list[T]:
    """``sorted(items, key=key)``, made of sorts of :data:`SORT_SLICE` items merged by
    ``heapq.merge`` (Python code, so other threads get the interpreter in between): one sort
    of 50,000 items would hold it for ~60 ms. Stable, like ``sorted``."""
    items = list(items)
    if len(items) <= SORT_SLICE:
        return sorted(items, key=key)
    runs = [sorted(items[i : i + SORT_SLICE], key=key) for i in range(0, len(items), SORT_SLICE)]
    return list(heapq.merge(*runs, key=key))


def exact_sum(numbers: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``numbers`` (the builtin ``sum`` rounds to 28 digits)."""
    total = Decimal(0)
    for number in numbers:
        total = EXACT.add(total, number)
    return total


_HALF_EVEN: Final = decimal.Context(
    prec=1000, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation]
)
_UNITS: Final = {places: Decimal(1).scaleb(-places) for places in range(19)}


def round_amount(amount: Decimal, places: int) -> Decimal:
    """``amount`` rounded half-even to ``places`` decimal places (exact input, one rounding)."""
    unit = _UNITS.get(places)
    if unit is None:
        unit = Decimal(1).scaleb(-places)
    return amount.quantize(unit, context=_HALF_EVEN)


def merge_cells(cells: Iterable[Cell], low: int, high: int) -> dict[Dims, State]:
    """The cells with ``low <= start < high``, merged per dimension values (inputs untouched).

    Empty merged states are left out."""
    out: dict[Dims, State] = {}
    owned: set[Dims] = set()
    for start, dims, state in cells:
        if not low <= start < high:
            continue
        have = out.get(dims)
        if have is None:
            out[dims] = state
            continue
        if dims not in owned:
            have = out[dims] = have.copy()
            owned.add(dims)
        have.merge_from(state)
    return {dims: state for dims, state in out.items() if not state.empty}


def _named(meter: Meter, dims: Dims) -> tuple[tuple[str, str], ...]:
    return tuple(zip(meter.dimensions, dims, strict=True))


class _Lines:
    """Accumulates lines and unpriced usage while one invoice is rated, **in key order**
    (meter, dimension values, segment start): each line is numbered as it is added."""

    def __init__(self, period: Period, places: int) -> None:
        self.period = period
        self.places = places
        self.lines: list[InvoiceLine] = []
        self.unpriced: list[Unpriced] = []
        self._described: dict[int, str] = {}  # id(rule) -> rule.describe(): once per rule

    def add(
        self,
        meter: Meter,
        dims: Dims,
        span: tuple[int, int],
        rule: PriceRule | None,
        usage: Decimal,
        adjustments: Sequence[Adjustment] = (),
        cap_left: Decimal | None = None,
    ) -> Decimal:
        """Add one line; returns the quantity billed (what it used of the cap)."""
        adjusted = exact_sum(a.signed for a in adjustments)
        raw = EXACT.add(usage, adjusted)
        if rule is None:
            self.unpriced.append(Unpriced(meter.name, _named(meter, dims), *span, raw))
            return Decimal(0)
        quantity = raw if rule.rounding is None else rule.rounding.apply(raw)
        capped = cap_left is not None and quantity > cap_left
        if capped:
            assert cap_left is not None
            quantity = cap_left
        amount = round_amount(EXACT.multiply(quantity, rule.unit_price), self.places)
        described = self._described.get(id(rule))
        if described is None:
            described = self._described[id(rule)] = rule.describe()
        self.lines.append(
            InvoiceLine(
                len(self.lines) + 1,
                meter.name,
                _named(meter, dims),
                *span,
                usage,
                adjusted,
                quantity,
                rule.unit_price,
                amount,
                described,
                capped,
                tuple(sorted(a.id for a in adjustments)),
            )
        )
        return quantity


def _itself(dims: Dims) -> Dims:
    return dims


def rate(
    account: str,
    period: Period,
    meters: Mapping[str, Meter],
    cells: Mapping[str, Iterable[Cell]],
    book: PriceBook,
    adjustments: Iterable[Adjustment] = (),
    *,
    currency: str = "USD",
    amount_places: int = 2,
) -> Invoice:
    """Rate one account's month (see the module docstring). ``cells`` maps meter names to
    their minute cells (cells outside the period are ignored); ``adjustments`` outside the
    period or of other accounts are ignored. Raises ``ValueError`` for an adjustment on a
    meter that is not summed, or on a meter not in ``meters``."""
    low, high = period.start_ms, period.end_ms
    adjust_by_meter: dict[str, list[Adjustment]] = {}
    for adjustment in adjustments:
        if adjustment.account == account and low <= adjustment.start < high:
            meter = meters.get(adjustment.meter)
            if meter is None or meter.aggregation not in ADDITIVE:
                raise ValueError(
                    f"{adjustment.describe()}: meter {adjustment.meter!r} cannot be adjusted"
                )
            adjust_by_meter.setdefault(adjustment.meter, []).append(adjustment)
    out = _Lines(period, amount_places)
    for name in sorted(set(cells) | set(adjust_by_meter)):
        meter = meters[name]
        meter_cells = list(cells.get(name, ()))
        if meter.aggregation in ADDITIVE:
            _rate_summed(out, meter, meter_cells, book, adjust_by_meter.get(name, []))
        else:
            merged = merge_cells(meter_cells, low, high)
            for dims in sorted_in_slices(merged, key=_itself):
                rule = book.rule_at(meter, dims, high - 1)
                out.add(meter, dims, (low, high), rule, _dec(merged[dims].value()))
    numbered = tuple(out.lines)  # made in key order, numbered as they came
    total = exact_sum(line.amount for line in numbered)
    unpriced = tuple(out.unpriced)  # in key order too
    return Invoice(
        account, period, currency, numbered, unpriced, round_amount(total, amount_places)
    )


def _rate_summed(
    out: _Lines,
    meter: Meter,
    cells: list[Cell],
    book: PriceBook,
    adjustments: list[Adjustment],
) -> None:
    period = out.period
    low, high = period.start_ms, period.end_ms
    # One pass over the cells and one over the adjustments, grouped by dimension values:
    # each line then reads only its own (a scan of every cell per line is quadratic in the
    # number of distinct dimension values).
    by_dims: dict[Dims, list[Cell]] = {}
    for cell in cells:
        if low <= cell[0] < high:
            by_dims.setdefault(cell[1], []).append(cell)
    adjust_by_dims: dict[Dims, list[Adjustment]] = {}
    for adjustment in adjustments:
        adjust_by_dims.setdefault(adjustment.dims, []).append(adjustment)
    segments_of: dict[tuple[bool, ...], list[tuple[int, int, PriceRule | None]]] = {}
    # A line whose cells merge to nothing in every segment, with no adjustment, is skipped
    # below: no month-wide merge is needed to leave it out.
    all_dims = by_dims.keys() | adjust_by_dims.keys()
    for dims in sorted_in_slices(all_dims, key=_itself):  # lines are made in key order
        mine = by_dims.get(dims, [])
        theirs = adjust_by_dims.get(dims, [])
        selector = book.selector(meter, dims)  # lines matching the same rules: same segments
        segments = segments_of.get(selector)
        if segments is None:
            segments = segments_of[selector] = book.segments(meter, dims, low, high)
        used = Decimal(0)  # of the month's cap, by the earlier segments
        for start, end, rule in segments:
            merged = merge_cells(mine, start, end).get(dims)
            here = [a for a in theirs if start <= a.start < end]
            if merged is None and not here:
                continue
            usage = Decimal(0) if merged is None else _dec(merged.value())
            cap = None if rule is None else rule.cap_for(period)
            left = None if cap is None else max(EXACT.subtract(cap, used), Decimal(0))
            billed = out.add(meter, dims, (start, end), rule, usage, here, left)
            # A net-negative segment (a credit larger than its usage) is billed as the
            # credit it is but gives no cap back: the month's billed usage stays under it.
            used = EXACT.add(used, max(billed, Decimal(0)))
