"""``meterd explain ACCOUNT --period 2026-11 [--line N]``: why an account was charged what it
was, down to the events (``GET /v1/accounts/{account}/invoices/{period}`` and
``.../lines/{n}/explanation``; docs/billing.md).

* with ``--line N``: that invoice line, the windows that make it, one page of its events
  (``--limit``; the command for the next page is printed), and the adjustments and voids
  on it;
* without: the invoice (lines, total, closing, restatements), then every line explained
  (its first page of events).

``--json`` prints the API's JSON instead. Errors are one sentence on stderr (exit 1: the API
refused, e.g. an unknown line; 2: the command or config was wrong).
"""

from __future__ import annotations

import shlex
from typing import Any

import click

from meterd.billing import render_explanation, render_invoice
from meterd.cli._api import Api, ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._output import echo_json


def explanation(api: Api, base: str, line: int, limit: int | None, cursor: str | None) -> Any:
    return api.get(f"{base}/lines/{line}/explanation", {"limit": limit, "cursor": cursor})


@click.command("explain")
@click.argument("account")
@click.option("--period", required=True, help="The month, UTC, written 2026-11.")
@click.option("--line", type=click.IntRange(min=1), help="Explain this invoice line (from 1).")
@click.option("--limit", type=click.IntRange(1, 10_000), help="Events per page (default 100).")
@click.option("--cursor", help="With --line: continue its events from this cursor.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@api_options
def explain(
    account: str,
    period: str,
    line: int | None,
    limit: int | None,
    cursor: str | None,
    as_json: bool,
    target: Target,
) -> None:
    """Explain ACCOUNT's invoice for a month, down to the events that make each line."""
    if cursor is not None and line is None:
        fail("explain", ApiError("--cursor pages one line's events: give --line too", 2))
    base = f"/v1/accounts/{path_segment(account)}/invoices/{path_segment(period)}"
    with connect("explain", target) as api:
        try:
            if line is not None:
                doc = explanation(api, base, line, limit, cursor)
                if as_json:
                    echo_json(doc)
                    return
                click.echo(render_explanation(doc), nl=False)
                if doc.get("next_cursor") is not None:
                    more = shlex.quote(str(doc["next_cursor"]))
                    click.echo(
                        f"next page: meterd explain {shlex.quote(account)} --period"
                        f" {period} --line {line} --cursor {more}",
                        err=True,
                    )
                return
            invoice = api.get(base)
            docs = [
                explanation(api, base, item["number"], limit, None) for item in invoice["lines"]
            ]
        except ApiError as error:
            fail("explain", error)
    if as_json:
        echo_json({"invoice": invoice, "explanations": docs})
        return
    click.echo(render_invoice(invoice))
    for doc in docs:
        click.echo(render_explanation(doc, currency=str(invoice["currency"])))
