"""``meterd alerts`` (the configured rules) and ``meterd deliveries`` (their crossings'
deliveries: status, attempts, last error, next retry; ``--redeliver ID``), on the API
(docs/alerts.md)."""

from __future__ import annotations

from urllib.parse import quote

import click

from meterd.cli._api import ApiError, Target, api_options, connect, fail
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import format_time


@click.group("alerts")
def alerts() -> None:
    """Threshold alerts ([[alerts]] in the config; docs/alerts.md)."""


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def list_alerts(as_json: bool, target: Target) -> None:
    """List the configured alerts."""
    with connect("alerts list", target) as api:
        try:
            document = api.get("/v1/alerts")
        except ApiError as error:
            fail("alerts list", error)
    if as_json:
        echo_json(document)
        return
    rules = document.get("alerts") or []
    if not rules:
        click.echo("no alerts configured")
        return
    print_table(
        ["name", "meter", "period", "threshold", "spend", "accounts", "webhook"],
        (
            [
                str(r.get("name")),
                str(r.get("meter")),
                str(r.get("period")),
                str(r.get("threshold") or "-"),
                str(r.get("spend") or "-"),
                ",".join(r.get("accounts") or ["(all)"]),
                str(r.get("webhook")),
            ]
            for r in rules
        ),
    )


@click.command("deliveries")
@click.argument("account", required=False)
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), help="Only these.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--redeliver", "redeliver", metavar="ID", help="Send delivery ID again.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def deliveries(
    account: str | None,
    status: str | None,
    limit: int,
    redeliver: str | None,
    as_json: bool,
    target: Target,
) -> None:
    """List the deliveries of alert crossings (of ACCOUNT, or every account), or re-deliver
    one with --redeliver ID."""
    with connect("deliveries", target) as api:
        try:
            if redeliver is not None:
                document = api.post(f"/v1/deliveries/{quote(redeliver, safe='')}/redeliver")
            else:
                document = api.get(
                    "/v1/deliveries", {"account": account, "status": status, "limit": limit}
                )
        except ApiError as error:
            fail("deliveries", error)
    if as_json:
        echo_json(document)
        return
    if redeliver is not None:
        click.echo(f"{document.get('id')}: {document.get('status')} (re-delivery asked)")
        return
    counts = document.get("counts") or {}
    click.echo(", ".join(f"{n} {status}" for status, n in counts.items()))
    rows = document.get("deliveries") or []
    if not rows:
        return
    print_table(
        ["id", "account", "alert", "period", "status", "attempts", "next retry", "last error"],
        (
            [
                str(d.get("id")),
                str(d.get("account")),
                str(d.get("alert")),
                str(d.get("period")),
                str(d.get("status")),
                str(d.get("attempts")),
                format_time(d.get("next_attempt_at")) if d.get("next_attempt_at") else "-",
                str(d.get("last_error") or "-"),
            ]
            for d in rows
        ),
    )
