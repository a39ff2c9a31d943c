"""Restatements: what changed in a closed period's figures, line by line, and why.

A closed period's figures are final. When the period is rated again and the result differs
from its latest figures (the closed ones, or those of the last restatement), a
:class:`Restatement` is recorded: every line that appeared, disappeared or changed, with its
old and new figures, the difference in amount and what moved; and the causes (the
adjustment or void that triggered it, or "usage changed" for late events). The figures of
the period are then closed figures + the sum of the restatements' differences, and that
always equals a fresh rating.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from meterd.accounts.aggregate import EXACT

from ._period import Period
from ._rating import InvoiceLine, LineKey, Unpriced, _listed, sorted_in_slices, text

__all__ = ["LineChange", "Restatement", "compare_lines", "compare_unpriced"]


@dataclass(frozen=True, slots=True)
class LineChange:
    """One line of a restatement: ``old`` or ``new`` is None for a line that (dis)appeared."""

    key: LineKey
    old: InvoiceLine | None
    new: InvoiceLine | None
    why: tuple[str, ...]

    @property
    def difference(self) -> Decimal:
        old = Decimal(0) if self.old is None else self.old.amount
        new = Decimal(0) if self.new is None else self.new.amount
        return EXACT.subtract(new, old)

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.key[0],
            "start": self.key[2],
            "old": None if self.old is None else self.old.to_json(),
            "new": None if self.new is None else self.new.to_json(),
            "difference": str(self.difference),
            "why": list(self.why),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LineChange:
        old = None if raw["old"] is None else InvoiceLine.from_json(raw["old"])
        new = None if raw["new"] is None else InvoiceLine.from_json(raw["new"])
        line = new or old
        assert line is not None
        return cls(line.key, old, new, tuple(raw["why"]))


@dataclass(frozen=True, slots=True)
class Restatement:
    id: int
    account: str
    period: Period
    at: int
    causes: tuple[str, ...]
    old_total: Decimal
    new_total: Decimal
    changes: tuple[LineChange, ...]
    lines: tuple[InvoiceLine, ...]  # the figures after it
    unpriced: tuple[Unpriced, ...] = ()  # the unpriced usage after it

    @property
    def difference(self) -> Decimal:
        return EXACT.subtract(self.new_total, self.old_total)

    def to_json(self, lazy: bool = False) -> dict[str, Any]:
        """``lazy``: the changes as :class:`Slices` (see :func:`encode_json`)."""
        return {
            "id": self.id,
            "account": self.account,
            "period": str(self.period),
            "at": self.at,
            "causes": list(self.causes),
            "old_total": str(self.old_total),
            "new_total": str(self.new_total),
            "difference": str(self.difference),
            "changes": _listed(self.changes, LineChange.to_json, lazy),
        }


_FIELDS = ("usage", "adjusted", "quantity", "unit_price", "amount")


def _what_moved(old: InvoiceLine | None, new: InvoiceLine | None) -> tuple[str, ...]:
    if old is None:
        return ("new line",)
    if new is None:
        return ("line gone",)
    moved = []
    for name, a, b in zip(_FIELDS, old.figures(), new.figures(), strict=True):
        if a != b:
            moved.append(f"{name} {text(a)} -> {text(b)}")
    if old.adjustments != new.adjustments:
        moved.append(f"adjustments {list(old.adjustments)} -> {list(new.adjustments)}")
    return tuple(moved)


def _itself(key: LineKey) -> LineKey:
    return key


def compare_lines(old: Iterable[InvoiceLine], new: Iterable[InvoiceLine]) -> list[LineChange]:
    """The lines that differ between two ratings of a period (by line key), in key order."""
    before = {line.key: line for line in old}
    after = {line.key: line for line in new}
    changes = []
    for key in sorted_in_slices(before.keys() | after.keys(), key=_itself):
        a, b = before.get(key), after.get(key)
        if a is None or b is None or a.figures() != b.figures() or a.adjustments != b.adjustments:
            changes.append(LineChange(key, a, b, _what_moved(a, b)))
    return changes


def compare_unpriced(old: Iterable[Unpriced], new: Iterable[Unpriced]) -> list[str]:
    """What moved in the unpriced usage between two ratings (by key), in key order, as text
    for a restatement's causes (unpriced usage is not billed, so it has no line change)."""
    before = {u.key: u for u in old}
    after = {u.key: u for u in new}
    moved = []
    for key in sorted_in_slices(before.keys() | after.keys(), key=_itself):
        a, b = before.get(key), after.get(key)
        if a is None and b is not None:
            moved.append(f"unpriced usage {b.describe()}: new, {text(b.usage)}")
        elif b is None and a is not None:
            moved.append(f"unpriced usage {a.describe()}: gone (was {text(a.usage)})")
        elif a is not None and b is not None and (a.usage, a.end) != (b.usage, b.end):
            moved.append(f"unpriced usage {a.describe()}: {text(a.usage)} -> {text(b.usage)}")
    return moved
