"""Explanations as text, for people (``meterd explain``): from the JSON the API returns.

Works on the JSON shape (:meth:`Explanation.to_json`), so a client needs nothing but the
response. Times are shown in UTC to the millisecond; quantities and amounts exactly as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = [
    "format_ms",
    "largest_lines",
    "render_explanation",
    "render_invoice",
    "render_summary",
]

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


def _amount(value: str, currency: str) -> str:
    return f"{value} {currency}" if currency else value


def _cap_words(cap: Mapping[str, Any], unit: str) -> str:
    """``at most 86400 dyno-seconds a day x 30 days = 2592000 dyno-seconds``."""
    if cap.get("daily") is not None:
        limit = f"at most {cap['daily']} {unit} a day x {cap['days']} days = {cap['cap']} {unit}"
    else:
        limit = f"at most {cap['cap']} {unit} a month"
    used = cap.get("used_before")
    if used not in (None, "0"):
        limit += f", of which {used} were billed on this line's earlier dates"
    return limit


def _figure_lines(doc: Mapping[str, Any], line: Mapping[str, Any], currency: str) -> list[str]:
    """How the line's amount comes from its usage, in words."""
    unit = doc.get("unit") or line["meter"]
    out = [f"  usage {line['usage']} {unit}"]
    if line["adjusted"] != "0":
        out[0] += f", corrections {line['adjusted']} (adjustments below)"
    cap = doc.get("cap")
    if line["capped"] and cap:
        out.append(f"  billed {line['quantity']} {unit}: capped, {_cap_words(cap, unit)}")
    elif line["capped"]:
        out.append(f"  billed {line['quantity']} {unit}: capped")
    else:
        net = Decimal(line["usage"]) + Decimal(line["adjusted"])
        rounded = " (rounded by the price rule)" if net != Decimal(line["quantity"]) else ""
        out.append(f"  billed {line['quantity']} {unit}{rounded}")
        if cap:
            out.append(f"  (under its cap: {_cap_words(cap, unit)})")
    out.append(
        f"  {line['quantity']} x {line['unit_price']} per unit"
        f" = {_amount(line['amount'], currency)}, priced by {line['rule']}"
    )
    return out


_DECIDED = {
    "max": "the peak was set by",
    "min": "the low was set by",
    "latest": "the value is that of the latest event,",
}


def _event_cells(e: Mapping[str, Any]) -> list[str]:
    return [
        format_ms(e["time"]),
        e["id"],
        e["quantity"],
        e["status"] + (f" (void #{e['void']})" if e.get("void") else ""),
        _dims(e["properties"]),
        f"from {e['producer']}" if e["producer"] else "",
    ]


def render_explanation(doc: Mapping[str, Any], *, currency: str = "") -> str:
    """A readable page of an explanation: the figure in words (usage, corrections, cap,
    price, the event that set a max/min/latest), its windows, the page of events in time
    order, the corrections that touched it, the duplicates and rejected events in it, and
    the notes; says how to get the next page."""
    out: list[str] = []
    currency = currency or str(doc.get("currency") or "")
    line = doc.get("line")
    span = f"{format_ms(doc['start'])} to {format_ms(doc['end'])} (UTC, end excluded)"
    unit = doc.get("unit") or doc["meter"]
    if line is not None:
        out.append(f"{doc['account']}: invoice line {line['number']}: {line['meter']}")
        out.append(f"  {_dims(line['dimensions'])}, {span}")
        out += _figure_lines(doc, line, currency)
    else:
        out.append(f"{doc['account']}: {doc['meter']} {_dims(doc['filter'])}")
        out.append(f"  {span}: {doc['value']} {unit}")
    decided = doc.get("decided_by")
    if decided:
        what = _DECIDED.get(str(doc.get("aggregation")), "set by")
        out.append(
            f"  {what} event {decided['id']}: {decided['quantity']} {unit}"
            f" at {format_ms(decided['time'])}"
        )
    out.append("")
    out.append("windows:")
    out += _table([[format_ms(w["start"]), w["value"]] for w in doc["windows"]]) or ["  (none)"]
    out.append("")
    events = sorted(doc["events"], key=lambda e: (e["time"], e["id"]))
    more = " (more pages: see below)" if doc.get("next_cursor") else ""
    out.append(f"events ({len(events)} on this page{more}, in time order):")
    out += _table([_event_cells(e) for e in events]) or ["  (none)"]
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


def render_summary(
    invoice: Mapping[str, Any],
    docs: list[Mapping[str, Any]],
    lines: list[Mapping[str, Any]] | None = None,
) -> str:
    """One sentence per invoice line: what was used, what was billed and why (cap,
    corrections), at what price, and for a max/min/latest meter the event that set it.
    ``docs`` are explanations (the cap's arithmetic, units and that event come from them);
    ``lines`` are invoice lines to say without one (the plainer sentence). For one screen;
    ``--line N`` gives a line's detail."""
    currency = invoice["currency"]
    out = ["", "the lines in words:"]
    said_docs: list[Mapping[str, Any]] = list(docs)
    said_docs += [{"line": line} for line in lines or []]
    for doc in sorted(said_docs, key=lambda d: int(d["line"]["number"])):
        line = doc["line"]
        unit = doc.get("unit") or line["meter"]
        said = (
            f"  {line['number']}. {line['meter']} {_dims(line['dimensions'])},"
            f" from {format_ms(line['start'], date_only=True)}:"
            f" {line['usage']} {unit} used"
        )
        if line["adjusted"] != "0":
            said += f", {line['adjusted']} in corrections"
        if line["capped"]:
            cap = doc.get("cap")
            said += (
                f", billed {line['quantity']} (capped: {_cap_words(cap, unit)})"
                if cap
                else (f", billed {line['quantity']} (capped)")
            )
        elif line["quantity"] != line["usage"]:
            said += f", billed {line['quantity']}"
        said += f" x {line['unit_price']} = {_amount(line['amount'], currency)} ({line['rule']})"
        decided = doc.get("decided_by")
        if decided:
            said += f"; set by event {decided['id']} at {format_ms(decided['time'])}"
        out.append(said)
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


def largest_lines(doc: Mapping[str, Any], top: int) -> list[Mapping[str, Any]]:
    """The ``top`` lines of the invoice with the largest amounts, in line order."""
    lines = list(doc["lines"])
    if len(lines) <= top:
        return lines
    largest = sorted(lines, key=lambda line: (-Decimal(line["amount"]), line["number"]))[:top]
    return sorted(largest, key=lambda line: int(line["number"]))


def render_invoice(doc: Mapping[str, Any], top: int | None = None) -> str:
    """An invoice (the API's JSON) as text: its lines (with ``top``, only the ``top``
    largest amounts, saying how many more), total, closing and restatements."""
    currency = doc["currency"]
    out = [f"{doc['account']}: invoice {doc['period']} ({doc['status']}), {currency}"]
    shown = doc["lines"] if top is None else largest_lines(doc, top)
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
            for line in shown
        ]
    )
    hidden = len(doc["lines"]) - len(shown)
    if hidden:
        out.append(f"  ... and {hidden} more lines with smaller amounts (--all lists them)")
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
                shown = change.get("new") or change.get("old") or {}
                dims = _dims(shown.get("dimensions") or {})
                out.append(
                    f"    {change['meter']} {dims} from {since}: {', '.join(change['why'])}"
                    f" ({change['difference']} {currency})"
                )
    return "\n".join(out) + "\n"
