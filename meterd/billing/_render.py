"""Explanations as text, for people (``meterd explain``): from the JSON the API returns.

Works on the JSON shape (:meth:`Explanation.to_json`), so a client needs nothing but the
response. Times are shown in UTC to the millisecond; quantities and amounts exactly as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["format_ms", "render_explanation", "render_invoice"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_ms(ms: int, *, date_only: bool = False) -> str:
    """``2026-11-02 01:00:00.000`` (UTC), computed without floats."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    if date_only:
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def _dims(dimensions: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v or '(none)'}" for k, v in dimensions.items()) or "(no dimensions)"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render_explanation(doc: Mapping[str, Any], *, currency: str = "") -> str:
    """A readable page of an explanation: the figure, its windows, the page of events, the
    corrections that touched it, the duplicates and rejected events in it, and the notes;
    says how to get the next page."""
    out: list[str] = []
    line = doc.get("line")
    span = f"{format_ms(doc['start'])} to {format_ms(doc['end'])} (UTC, end excluded)"
    if line is not None:
        out.append(f"{doc['account']}: invoice line {line['number']}: {line['meter']}")
        out.append(f"  {_dims(line['dimensions'])}, {span}")
        adjusted = f" {line['adjusted']} adjusted," if line["adjusted"] != "0" else ""
        capped = " (capped)" if line["capped"] else ""
        out.append(
            f"  usage {line['usage']},{adjusted} billed {line['quantity']}{capped}"
            f" x {line['unit_price']} = {line['amount']}{' ' + currency if currency else ''}"
        )
        out.append(f"  priced by {line['rule']}")
    else:
        out.append(f"{doc['account']}: {doc['meter']} {_dims(doc['filter'])}")
        out.append(f"  {span}: {doc['value']}")
    out.append("")
    out.append("windows:")
    out += _table([[format_ms(w["start"]), w["value"]] for w in doc["windows"]]) or ["  (none)"]
    out.append("")
    events = doc["events"]
    out.append(f"events ({len(events)} on this page, in the order they were received):")
    out += _table(
        [
            [
                format_ms(e["time"]),
                e["id"],
                e["quantity"],
                e["status"] + (f" (void #{e['void']})" if e.get("void") else ""),
                _dims(e["properties"]),
                f"from {e['producer']}" if e["producer"] else "",
            ]
            for e in events
        ]
    ) or ["  (none)"]
    if doc.get("next_cursor"):
        out.append(f"  more: --cursor {doc['next_cursor']}")
    for title, items, describe in (
        ("adjustments", doc["adjustments"], _adjustment),
        ("voids", doc["voids"], _void),
    ):
        if items:
            out.append("")
            out.append(f"{title}:")
            out += [f"  {describe(item)}" for item in items]
    audit = doc.get("audit") or []
    out.append("")
    out.append(f"duplicates and rejected events ({len(audit)} on this page):")
    out += _table([_audit_row(a) for a in audit]) or ["  (none)"]
    if doc.get("audit_next_cursor"):
        out.append(f"  more: --audit-cursor {doc['audit_next_cursor']}")
    if doc.get("notes"):
        out.append("")
        out += [f"note: {note}" for note in doc["notes"]]
    return "\n".join(out) + "\n"


def _audit_row(a: Mapping[str, Any]) -> list[str]:
    """One audit entry: when, id, what (a duplicate of batch N, or the rejection code and
    why), from whom."""
    when = format_ms(a["time"]) if a["time"] is not None else "time invalid"
    if a["kind"] == "duplicate":
        what = f"duplicate (counted in batch {a['batch_id']}), not counted again"
    else:
        what = f"rejected {a['code']}: {a['message']}"
    source = f"from {a['producer']}" if a.get("producer") else ""
    if a.get("seq") is not None:
        source += f" seq {a['seq']}"
    return [when, a["id"] if a["id"] is not None else "(no valid id)", what, source.strip()]


def _adjustment(a: Mapping[str, Any]) -> str:
    return (
        f"#{a['id']} {a['kind']} {a['quantity']} on {format_ms(a['start'])}"
        f" {_dims(a['dimensions'])}, by {a['by']} at {format_ms(a['at'])}: {a['reason']}"
    )


def _void(v: Mapping[str, Any]) -> str:
    return (
        f"#{v['id']} event {v['event_id']} ({v['quantity']} at {format_ms(v['time'])}),"
        f" by {v['by']} at {format_ms(v['at'])}: {v['reason']}"
    )


def render_invoice(doc: Mapping[str, Any]) -> str:
    """An invoice (the API's JSON) as text: its lines, total, closing and restatements."""
    currency = doc["currency"]
    out = [f"{doc['account']}: invoice {doc['period']} ({doc['status']}), {currency}"]
    out += _table(
        [["#", "meter", "dimensions", "from", "quantity", "unit price", "amount"]]
        + [
            [
                str(line["number"]),
                line["meter"],
                _dims(line["dimensions"]),
                format_ms(line["start"], date_only=True),
                line["quantity"] + (" (capped)" if line["capped"] else ""),
                line["unit_price"],
                line["amount"],
            ]
            for line in doc["lines"]
        ]
    )
    out.append(f"  total {doc['total']} {currency}")
    for item in doc["unpriced"]:
        usage = f"{item['meter']} {_dims(item['dimensions'])} {item['usage']}"
        out.append(f"  unpriced (not billed): {usage}")
    closed = doc.get("closed")
    if closed is not None:
        when = format_ms(closed["at"])
        out.append(f"  closed by {closed['by']} at {when}, total then {closed['total']}")
        for r in doc.get("restatements", []):
            totals = f"{r['old_total']} -> {r['new_total']} ({r['difference']})"
            out.append(f"  restatement #{r['id']} at {format_ms(r['at'])}: {totals}")
            out += [f"    cause: {cause}" for cause in r["causes"]]
            for change in r["changes"]:
                since = format_ms(change["start"], date_only=True)
                out.append(f"    {change['meter']} from {since}: {', '.join(change['why'])}")
    return "\n".join(out) + "\n"
