"""The price book: per-meter unit prices with effective dates, matches, rounding and caps.

Selection (which rule prices a line of ``meter`` with dimension values ``dims`` at a time ``t``):

* candidates are the meter's rules whose ``match`` is absent or names one of ``dims``'s
  values, and whose ``effective_from`` (00:00 UTC of that date) is at or before ``t``;
* a rule **with** a match beats every rule without one (a size-specific price overrides the
  meter's general price for as long as it is in effect);
* among those, the latest ``effective_from`` wins.

The config refuses what would make this ambiguous: two rules of a meter with the same match
and date, and matches on two different dimensions of one meter.
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Final

from meterd.accounts.aggregate import EXACT
from meterd.model import Meter

from ._period import Period, date_ms

__all__ = ["PriceBook", "PriceRule", "QuantityRounding", "RoundingMode"]

MAX_PLACES: Final = 18


class RoundingMode(enum.Enum):
    """How a quantity is rounded to its billing unit (the :mod:`decimal` modes, by name)."""

    CEILING = "ceiling"
    FLOOR = "floor"
    UP = "up"
    DOWN = "down"
    HALF_UP = "half_up"
    HALF_DOWN = "half_down"
    HALF_EVEN = "half_even"

    @property
    def decimal_mode(self) -> str:
        return f"ROUND_{self.name}"


@dataclass(frozen=True, slots=True)
class QuantityRounding:
    """Round a line's quantity to ``places`` decimal places (0: whole units) by ``mode``."""

    places: int
    mode: RoundingMode = RoundingMode.CEILING

    def apply(self, quantity: Decimal) -> Decimal:
        context = decimal.Context(
            prec=1000, rounding=self.mode.decimal_mode, traps=[decimal.InvalidOperation]
        )
        return quantity.quantize(Decimal(1).scaleb(-self.places), context=context)

    def __str__(self) -> str:
        return f"{self.places} places, {self.mode.value}"


@dataclass(frozen=True, slots=True)
class PriceRule:
    """One ``[[prices]]`` entry of the config (see docs/billing.md)."""

    meter: str
    unit_price: Decimal
    effective_from: date
    match: tuple[str, str] | None = None  # (dimension, value)
    rounding: QuantityRounding | None = None
    monthly_cap: Decimal | None = None
    daily_cap: Decimal | None = None  # the monthly cap is this times the days of the month
    index: int = field(default=0, compare=False)  # position in the config, for messages
    name: str | None = field(default=None, compare=False)  # shown instead of prices[N]

    @property
    def effective_ms(self) -> int:
        return date_ms(self.effective_from)

    def cap_for(self, period: Period) -> Decimal | None:
        """The cap on one line's quantity over ``period``, or None."""
        if self.daily_cap is not None:
            return EXACT.multiply(self.daily_cap, period.days)
        return self.monthly_cap

    def matches(self, meter: Meter, dims: tuple[str, ...]) -> bool:
        if self.match is None:
            return True
        name, value = self.match
        try:
            return dims[meter.dimensions.index(name)] == value
        except ValueError:
            return False

    def describe(self) -> str:
        """The rule as people name it: its ``name`` (``performance-l from mid-November``),
        else ``prices[2] (dyno.seconds size=performance-l from 2026-11-15)``."""
        if self.name is not None:
            return self.name
        match = "" if self.match is None else f" {self.match[0]}={self.match[1]}"
        return f"prices[{self.index}] ({self.meter}{match} from {self.effective_from})"


class PriceBook:
    """The rules of the config, looked up per meter (see the module docstring)."""

    def __init__(self, rules: Iterable[PriceRule], meters: Mapping[str, Meter]) -> None:
        self.rules = tuple(rules)
        self.meters = dict(meters)
        # (rule, its effective_ms) per meter: the date's milliseconds are computed once,
        # not once per line (an invoice may have tens of thousands of lines).
        by_meter: dict[str, list[tuple[PriceRule, int]]] = {}
        for rule in self.rules:
            by_meter.setdefault(rule.meter, []).append((rule, rule.effective_ms))
        self._by_meter = by_meter
        self._matching: dict[str, tuple[PriceRule, ...]] = {
            name: tuple(rule for rule, _ms in rules if rule.match is not None)
            for name, rules in by_meter.items()
        }

    def rule_at(self, meter: Meter, dims: tuple[str, ...], time_ms: int) -> PriceRule | None:
        """The rule in effect for ``meter``/``dims`` at ``time_ms``, or None (unpriced)."""
        best: PriceRule | None = None
        for rule, effective_ms in self._by_meter.get(meter.name, ()):
            if effective_ms > time_ms or not rule.matches(meter, dims):
                continue
            if best is None or (rule.match is not None, rule.effective_from) > (
                best.match is not None,
                best.effective_from,
            ):
                best = rule
        return best

    def selector(self, meter: Meter, dims: tuple[str, ...]) -> tuple[bool, ...]:
        """Which of ``meter``'s rules with a ``match`` ``dims`` satisfies. The rules without
        one apply to every line, so two lines with the same selector are priced by the same
        rule at every instant (and have the same :meth:`segments`)."""
        matching = self._matching.get(meter.name)
        if not matching:
            return ()
        return tuple([rule.matches(meter, dims) for rule in matching])

    def segments(
        self, meter: Meter, dims: tuple[str, ...], low: int, high: int
    ) -> list[tuple[int, int, PriceRule | None]]:
        """``[low, high)`` cut where the rule in effect changes: ``(start, end, rule)``s in
        time order, neighbours with the same rule joined."""
        cuts = sorted({ms for _rule, ms in self._by_meter.get(meter.name, ()) if low < ms < high})
        out: list[tuple[int, int, PriceRule | None]] = []
        for start, end in zip([low, *cuts], [*cuts, high], strict=True):
            rule = self.rule_at(meter, dims, start)
            if out and out[-1][2] is rule:
                out[-1] = (out[-1][0], end, rule)
            else:
                out.append((start, end, rule))
        return out
