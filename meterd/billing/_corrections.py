"""Corrections: adjustments and voids, append-only records of who, when and why.

* An :class:`Adjustment` credits or debits a quantity on one meter, one window and one set of
  dimension values. It counts at the window's start (which period, which price), and only
  on summed meters (``sum``, ``count``): adding a quantity to a ``max`` or a distinct count
  has no meaning; correct those by voiding the events that are wrong.
* A :class:`Void` takes one event, named by ``(account, id)``, out of billed usage. The event
  stays in the journal; the windows it fell in are recomputed from their events without it,
  which is exact for every aggregation (a voided maximum gives way to the next one).

Neither is ever edited or deleted (the billing database refuses it with triggers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from meterd.model import Aggregation

__all__ = ["ADDITIVE", "Adjustment", "AdjustmentKind", "Void"]

ADDITIVE = frozenset({Aggregation.SUM, Aggregation.COUNT})
"""Aggregations whose month figure is the sum of its windows (adjustable, cappable, split)."""


class AdjustmentKind(enum.Enum):
    CREDIT = "credit"  # takes quantity off the bill
    DEBIT = "debit"  # adds quantity to it


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A credit or debit of ``quantity`` (> 0) units of ``meter`` over ``[start, end)``."""

    id: int
    account: str
    meter: str
    start: int
    end: int
    dims: tuple[str, ...]
    kind: AdjustmentKind
    quantity: Decimal
    by: str
    at: int
    reason: str

    @property
    def signed(self) -> Decimal:
        """What it adds to the quantity: negative for a credit (``copy_negate``: unary minus
        would round to the default context's 28 digits)."""
        return self.quantity.copy_negate() if self.kind is AdjustmentKind.CREDIT else self.quantity

    def describe(self) -> str:
        return (
            f"adjustment #{self.id} ({self.kind.value} {self.quantity} by {self.by}: {self.reason})"
        )


@dataclass(frozen=True, slots=True)
class Void:
    """Event ``event_id`` of ``account`` taken out of billed usage; a snapshot of where it
    counted (meter, time, dimension values, quantity) so its windows can be found again."""

    id: int
    account: str
    event_id: str
    meter: str
    time: int
    dims: tuple[str, ...]
    quantity: str
    by: str
    at: int
    reason: str

    def describe(self) -> str:
        return f"void #{self.id} of event {self.event_id!r} (by {self.by}: {self.reason})"
