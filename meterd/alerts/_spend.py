"""Spend for alerts from billing's own rating (no second pricing implementation)."""

from __future__ import annotations

from decimal import Decimal

from meterd.accounts.aggregate import State
from meterd.billing import Period, PriceBook, rate
from meterd.model import Meter

__all__ = ["BookPricing"]


class BookPricing:
    """:class:`~meterd.alerts._eval.SpendPricing` over the configured price book: the
    amount of one meter's invoice lines, as :func:`meterd.billing.rate` computes them for
    the invoice (segments, quantity rounding, caps, half-even amounts)."""

    def __init__(self, book: PriceBook, *, currency: str = "USD", amount_places: int = 2) -> None:
        self.book = book
        self.currency = currency
        self.amount_places = amount_places
        self._bounds: dict[str, tuple[Decimal, Decimal] | None] = {}

    def amount(
        self,
        account: str,
        period: str,
        meter: Meter,
        cells: list[tuple[int, tuple[str, ...], State]],
    ) -> Decimal:
        invoice = rate(
            account,
            Period.parse(period),
            {meter.name: meter},
            {meter.name: cells},
            self.book,
            currency=self.currency,
            amount_places=self.amount_places,
        )
        return invoice.total

    def bound(self, meter: Meter) -> tuple[Decimal, Decimal] | None:
        """``(highest unit price, slack per line in units of usage)``: one line's amount
        grows by at most price x added usage, plus one rounding step of its quantity and one
        unit of the amount's last place (half-even on both sides) at that price."""
        if meter.name in self._bounds:
            return self._bounds[meter.name]
        rules = [r for r in self.book.rules if r.meter == meter.name]
        found: tuple[Decimal, Decimal] | None = None
        if rules:
            price = max(r.unit_price for r in rules)
            step = max(
                (Decimal(1).scaleb(-r.rounding.places) for r in rules if r.rounding is not None),
                default=Decimal(0),
            )
            quantum = Decimal(1).scaleb(-self.amount_places)
            found = (price, step + (quantum / price if price else Decimal(0)))
        self._bounds[meter.name] = found
        return found
