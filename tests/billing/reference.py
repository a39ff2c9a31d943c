"""The rating algorithm as it was before rating became linear (an oracle for the tests).

``rate_reference`` is ``meterd.billing.rate`` as of commit 73b1d6d: for every combination of
dimension values it scanned every cell of the meter and every adjustment, which is
quadratic in the number of lines (issue 13, "rating an invoice blocks the event loop"). Its
figures were checked by the property tests of that time; the linear rating must give the
same invoice for the same input, which ``tests/billing/test_rating.py`` checks for random
inputs with many distinct dimension values. Keep it as it was: it is the "before".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal

from meterd.accounts.aggregate import EXACT
from meterd.billing import (
    Adjustment,
    Cell,
    Invoice,
    InvoiceLine,
    Period,
    PriceBook,
    PriceRule,
    Unpriced,
    merge_cells,
    round_amount,
)
from meterd.billing._corrections import ADDITIVE
from meterd.billing._rating import exact_sum
from meterd.model import Meter

Dims = tuple[str, ...]


def _named(meter: Meter, dims: Dims) -> tuple[tuple[str, str], ...]:
    return tuple(zip(meter.dimensions, dims, strict=True))


class _Lines:
    def __init__(self, period: Period, places: int) -> None:
        self.period = period
        self.places = places
        self.lines: list[InvoiceLine] = []
        self.unpriced: list[Unpriced] = []

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
        self.lines.append(
            InvoiceLine(
                0,
                meter.name,
                _named(meter, dims),
                *span,
                usage=usage,
                adjusted=adjusted,
                quantity=quantity,
                unit_price=rule.unit_price,
                amount=amount,
                rule=rule.describe(),
                capped=capped,
                adjustments=tuple(sorted(a.id for a in adjustments)),
            )
        )
        return quantity


def rate_reference(
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
            for dims, state in sorted(merge_cells(meter_cells, low, high).items()):
                rule = book.rule_at(meter, dims, high - 1)
                out.add(meter, dims, (low, high), rule, Decimal(state.value()))
    lines = sorted(out.lines, key=lambda line: line.key)
    numbered = tuple(replace(line, number=n) for n, line in enumerate(lines, 1))
    total = exact_sum(line.amount for line in numbered)
    unpriced = tuple(sorted(out.unpriced, key=lambda u: (u.meter, u.dims, u.start)))
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
    all_dims = set(merge_cells(cells, low, high)) | {a.dims for a in adjustments}
    for dims in sorted(all_dims):
        mine = [c for c in cells if c[1] == dims]
        used = Decimal(0)
        for start, end, rule in book.segments(meter, dims, low, high):
            merged = merge_cells(mine, start, end).get(dims)
            here = [a for a in adjustments if a.dims == dims and start <= a.start < end]
            if merged is None and not here:
                continue
            usage = Decimal(0) if merged is None else Decimal(merged.value())
            cap = None if rule is None else rule.cap_for(period)
            left = None if cap is None else max(EXACT.subtract(cap, used), Decimal(0))
            billed = out.add(meter, dims, (start, end), rule, usage, here, left)
            used = EXACT.add(used, max(billed, Decimal(0)))
