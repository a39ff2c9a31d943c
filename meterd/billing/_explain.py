"""Explanations: the windows that make a figure, and the events that make each window.

An explanation covers one meter, one time range and a filter on dimension values (an invoice
line: its exact values; a usage row: its group, or none). It holds

* the figure and the **windows** under it (days for a line, the next finer window for a
  usage row), their values computed from the stored states with voids applied;
* one **page** of the events in the range that pass the filter, in journal order, each marked
  ``counted``, ``voided`` (with the void), ``quarantined`` (it crashed its actor and was
  never counted) or ``discarded`` (an operator set it aside from quarantine for good), with
  the window it falls in (an event released from quarantine is listed once, as counted, at
  its release batch's place); ``next_cursor`` continues (a store cursor);
* the **adjustments** and **voids** that touched the figure;
* one page of the **audit** trail in the range (the store's ``audit`` table, passing the same
  filter): each duplicate (never counted: the copy counted is in ``batch_id``) and each
  rejected event of the account (``id_conflict`` included), with the window it falls in
  (``None`` when its time was invalid: it is then placed by when it was received);
  ``audit_next_cursor`` continues. An entry whose properties were invalid cannot be
  filtered by dimension and is always listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from meterd.model import Event, Quantity

from ._corrections import Adjustment, Void
from ._rating import InvoiceLine, _listed, text

if TYPE_CHECKING:  # the store loads Trio; the config must not (tests/billing/test_billing.py)
    from meterd.store import AuditEntry

__all__ = [
    "NOTES",
    "CapDetail",
    "ExplainedAudit",
    "ExplainedEvent",
    "Explanation",
    "WindowFigure",
]

NOTES: Final[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class WindowFigure:
    start: int
    end: int
    value: Quantity

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "value": text(self.value)}


@dataclass(frozen=True, slots=True)
class ExplainedEvent:
    event: Event
    window: int  # start of the window (of ``Explanation.windows``'s size) it falls in
    status: str  # "counted" | "voided" | "quarantined" | "discarded"
    void: int | None = None

    def to_json(self) -> dict[str, Any]:
        e = self.event
        return {
            "id": e.id,
            "meter": e.meter,
            "time": e.time,
            "quantity": text(e.quantity),
            "properties": dict(e.properties),
            "producer": e.producer,
            "received_at": e.received_at,
            "window": self.window,
            "status": self.status,
            "void": self.void,
        }


@dataclass(frozen=True, slots=True)
class ExplainedAudit:
    entry: AuditEntry
    window: int | None  # start of the window its time falls in; None: its time was invalid

    def to_json(self) -> dict[str, Any]:
        a = self.entry
        return {
            "kind": a.kind,
            "id": a.event_id,
            "code": a.code,
            "message": a.message,
            "meter": a.meter,
            "time": a.time,
            "properties": None if a.properties is None else dict(a.properties),
            "producer": a.producer,
            "seq": a.seq,
            "batch_id": a.batch_id,
            "received_at": a.received_at,
            "window": self.window,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    account: str
    meter: str
    start: int
    end: int
    filter: dict[str, str]
    value: Decimal  # the figure explained: the line's billed quantity, or the usage value
    windows: tuple[WindowFigure, ...]
    events: tuple[ExplainedEvent, ...]
    next_cursor: str | None
    adjustments: tuple[Adjustment, ...]
    voids: tuple[Void, ...]
    line: InvoiceLine | None = None
    dimension_names: tuple[str, ...] = ()  # the meter's, naming the adjustments' and voids' values
    notes: tuple[str, ...] = field(default=NOTES)
    audit: tuple[ExplainedAudit, ...] = ()
    audit_next_cursor: str | None = None
    unit: str = ""  # the meter's unit (config), else its name
    aggregation: str = ""
    cap: CapDetail | None = None  # a line's cap, when its rule has one
    decided_by: ExplainedEvent | None = None  # max/min/latest: the event that set the figure
    currency: str = ""  # of a line's amount

    def to_json(self, lazy: bool = False) -> dict[str, Any]:
        """``lazy``: the events and audit entries as :class:`Slices` (:func:`encode_json`)."""
        return {
            "account": self.account,
            "meter": self.meter,
            "start": self.start,
            "end": self.end,
            "filter": self.filter,
            "value": text(self.value),
            "line": None if self.line is None else self.line.to_json(),
            "windows": [w.to_json() for w in self.windows],
            "events": _listed(self.events, ExplainedEvent.to_json, lazy),
            "next_cursor": self.next_cursor,
            "adjustments": [adjustment_json(a, self.dimension_names) for a in self.adjustments],
            "voids": [void_json(v, self.dimension_names) for v in self.voids],
            "audit": _listed(self.audit, ExplainedAudit.to_json, lazy),
            "audit_next_cursor": self.audit_next_cursor,
            "notes": list(self.notes),
            "unit": self.unit,
            "aggregation": self.aggregation,
            "cap": None if self.cap is None else self.cap.to_json(),
            "decided_by": None if self.decided_by is None else self.decided_by.to_json(),
            "currency": self.currency,
        }


@dataclass(frozen=True, slots=True)
class CapDetail:
    """The cap on a line's quantity, as arithmetic: ``daily`` x ``days`` (a daily_cap) or
    a fixed monthly cap; ``used_before``: what earlier segments of the same line (dimension
    values) used of it this month, when the line was capped."""

    cap: Decimal
    daily: Decimal | None
    days: int
    capped: bool
    used_before: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {
            "cap": text(self.cap),
            "daily": None if self.daily is None else text(self.daily),
            "days": self.days,
            "capped": self.capped,
            "used_before": None if self.used_before is None else text(self.used_before),
        }


def adjustment_json(a: Adjustment, names: tuple[str, ...]) -> dict[str, Any]:
    """An adjustment as JSON; ``names`` are its meter's dimensions."""
    return {
        "id": a.id,
        "account": a.account,
        "meter": a.meter,
        "start": a.start,
        "end": a.end,
        "dimensions": dict(zip(names, a.dims, strict=True)),
        "kind": a.kind.value,
        "quantity": text(a.quantity),
        "by": a.by,
        "at": a.at,
        "reason": a.reason,
        "idempotency_key": a.key,
    }


def void_json(v: Void, names: tuple[str, ...]) -> dict[str, Any]:
    """A void as JSON; ``names`` are its meter's dimensions."""
    return {
        "id": v.id,
        "account": v.account,
        "event_id": v.event_id,
        "meter": v.meter,
        "time": v.time,
        "dimensions": dict(zip(names, v.dims, strict=True)),
        "quantity": v.quantity,
        "by": v.by,
        "at": v.at,
        "reason": v.reason,
        "idempotency_key": v.key,
    }


DimsFilter = Callable[[tuple[str, ...]], bool]
