"""The crossings of one account, for explanations (``meterd explain``, docs/alerts.md
"Which event crossed"): each with the event that crossed, its time, the value before and
after that event, read from the outbox and the journal batch holding the event."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from meterd.model import Aggregation, Meter, canonical_quantity
from meterd.store.codec import decode_batch, decode_quantity

__all__ = ["CrossingRecord", "crossings_of"]


@dataclass(frozen=True, slots=True)
class CrossingRecord:
    id: str
    alert: str
    meter: str
    period: str
    event_id: str
    crossed_at: int
    value_before: str | None
    value: str
    threshold: str | None
    spend: str | None
    created_at: int


def _before(meter: Meter | None, body: Mapping[str, Any], quantity: Any) -> str | None:
    """The usage right before the crossing event, where the aggregation says it exactly:
    a sum less the event's quantity, a count less one (other aggregations and spend: None,
    the value was below the threshold)."""
    if meter is None or body.get("threshold") is None:
        return None
    after = decode_quantity(body["value"])
    if meter.aggregation is Aggregation.COUNT:
        return canonical_quantity(after - 1)
    if meter.aggregation is Aggregation.SUM and quantity is not None:
        return canonical_quantity(after - quantity)
    return None


def crossings_of(
    conn: sqlite3.Connection, account: str, period: str | None, meters: Mapping[str, Meter]
) -> list[CrossingRecord]:
    """``account``'s crossings (of ``period`` only, if given), in the order decided."""
    rows = conn.execute(
        "SELECT id, alert, meter, period, event_id, batch_id, body, created_at"
        " FROM alert_outbox WHERE account = ? AND (? IS NULL OR period = ?) ORDER BY seq",
        (account, period, period),
    ).fetchall()
    found = []
    for id, alert, meter, in_period, event_id, batch_id, body, created_at in rows:
        doc = msgspec.json.decode(body)
        quantity = None
        payload = conn.execute(
            "SELECT payload FROM event_batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        if payload is not None:
            for event in decode_batch(payload[0], account):
                if event.id == event_id:
                    quantity = event.quantity
                    break
        found.append(
            CrossingRecord(
                id=str(id),
                alert=str(alert),
                meter=str(meter),
                period=str(in_period),
                event_id=str(event_id),
                crossed_at=int(doc["crossed_at"]),
                value_before=_before(meters.get(str(meter)), doc, quantity),
                value=str(doc["value"]),
                threshold=doc.get("threshold"),
                spend=doc.get("spend"),
                created_at=int(created_at),
            )
        )
    return found
