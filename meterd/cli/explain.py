"""``meterd explain ACCOUNT --period 2026-11 [--line N]``: why an account was charged what it
was, down to the events (``GET /v1/accounts/{account}/invoices/{period}`` and
``.../lines/{n}/explanation``; docs/billing.md).

* without options, one screen: the invoice (its 20 largest lines, total, closing,
  restatements) and each of those lines in one sentence (usage, corrections, the cap in
  words, price and rule, the event that set a max/min/latest);
* with ``--line N``: that invoice line, the windows that make it, one page of its events
  in time order (``--limit``; the command for the next page is printed), the adjustments
  and voids on it, and one page of the duplicates and rejected events in it
  (``--audit-cursor``);
* with ``--all``: every line of the invoice, each explained (its first page of events);
* both end with the alerts the month crossed: which event crossed which alert, its time,
  the usage before and after it, and the delivery's status
  (``GET /v1/accounts/{account}/crossings?period=``; docs/alerts.md).

``--json`` prints the API's JSON instead. Errors are one sentence on stderr (exit 1: the API
refused, e.g. an unknown line; 2: the command or config was wrong).
"""

from __future__ import annotations

import shlex
from typing import Any

import click

from meterd.billing import largest_lines, render_explanation, render_invoice, render_summary
from meterd.cli._api import Api, ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._output import echo_json
from meterd.cli._times import format_time

SUMMARY_LINES = 20  # lines of the one-screen summary (the largest amounts)


def render_crossings(doc: dict[str, Any], period: str) -> str:
    """The alerts crossed in ``period``, one sentence each ("" when none)."""
    found = doc.get("crossings") or []
    if not found:
        return ""
    out = [f"\nalerts crossed in {period}:"]
    for c in found:
        limit = f"threshold {c['threshold']}" if c.get("threshold") else f"spend {c.get('spend')}"
        before = c.get("value_before")
        change = f"from {before} to {c['value']}" if before is not None else f"to {c['value']}"
        d = c.get("delivery")
        if d is None:
            status = "delivery not started yet"
        else:
            attempts = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
            status = f"{d['status']} ({attempts}"
            status += f", last error: {d['last_error']})" if d.get("last_error") else ")"
        out.append(
            f"  {c['alert']} ({c['meter']} {limit}): event {c['event_id']} at"
            f" {format_time(c['crossed_at'])} took it {change}; {c['id']} {status}"
        )
    return "\n".join(out) + "\n"


def explanation(
    api: Api,
    base: str,
    line: int,
    limit: int | None,
    cursor: str | None,
    audit_cursor: str | None = None,
) -> Any:
    return api.get(
        f"{base}/lines/{line}/explanation",
        {"limit": limit, "cursor": cursor, "audit_cursor": audit_cursor},
    )


@click.command("explain")
@click.argument("account")
@click.option("--period", required=True, help="The month, UTC, written 2026-11.")
@click.option("--line", type=click.IntRange(min=1), help="Explain this invoice line (from 1).")
@click.option("--limit", type=click.IntRange(1, 10_000), help="Events per page (default 100).")
@click.option("--cursor", help="With --line: continue its events from this cursor.")
@click.option(
    "--audit-cursor", help="With --line: continue its duplicates and rejections from this cursor."
)
@click.option(
    "--all", "every", is_flag=True, help="Every line of the invoice, each explained in full."
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@api_options
def explain(
    account: str,
    period: str,
    line: int | None,
    limit: int | None,
    cursor: str | None,
    audit_cursor: str | None,
    every: bool,
    as_json: bool,
    target: Target,
) -> None:
    """Explain ACCOUNT's invoice for a month, down to the events that make each line: a
    one-screen summary, --line N for one line's detail, --all for every line's."""
    if (cursor is not None or audit_cursor is not None) and line is None:
        fail("explain", ApiError("--cursor pages one line's events: give --line too", 2))
    base = f"/v1/accounts/{path_segment(account)}/invoices/{path_segment(period)}"
    with connect("explain", target) as api:
        try:
            if line is not None:
                doc = explanation(api, base, line, limit, cursor, audit_cursor)
                if as_json:
                    echo_json(doc)
                    return
                click.echo(render_explanation(doc), nl=False)
                command = f"meterd explain {shlex.quote(account)} --period {period} --line {line}"
                for key, option in (
                    ("next_cursor", "cursor"),
                    ("audit_next_cursor", "audit-cursor"),
                ):
                    if doc.get(key) is not None:
                        more = shlex.quote(str(doc[key]))
                        click.echo(f"next page: {command} --{option} {more}", err=True)
                return
            invoice = api.get(base)
            every = every or as_json  # scripts get every line's explanation
            shown = invoice["lines"] if every else largest_lines(invoice, SUMMARY_LINES)
            # A line's explanation re-rates the month: the words of a few lines only.
            explained = every or len(invoice["lines"]) <= SUMMARY_LINES
            docs = [
                explanation(api, base, item["number"], limit if every else 1, None)
                for item in (shown if explained else [])
            ]
            crossed = api.get(f"/v1/accounts/{path_segment(account)}/crossings", {"period": period})
        except ApiError as error:
            fail("explain", error)
    if as_json:
        echo_json({"invoice": invoice, "explanations": docs, "crossings": crossed["crossings"]})
        return
    if every:
        click.echo(render_invoice(invoice))
        for doc in docs:
            click.echo(render_explanation(doc, currency=str(invoice["currency"])))
        click.echo(render_crossings(crossed, period), nl=False)
        return
    click.echo(render_invoice(invoice, top=SUMMARY_LINES), nl=False)
    if shown:
        click.echo(render_summary(invoice, docs, [] if explained else shown), nl=False)
    click.echo(render_crossings(crossed, period), nl=False)
    command = f"meterd explain {shlex.quote(account)} --period {period}"
    click.echo(f"\none line in detail: {command} --line N; every line: {command} --all")
