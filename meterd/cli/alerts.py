"""``meterd alerts`` (the configured rules; ``create``, ``list``, ``delete`` of one
account's rules) and ``meterd deliveries`` (their crossings' deliveries: status, attempts,
last error, next retry; ``--redeliver ID``), on the API (docs/alerts.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from meterd.cli._api import ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import format_time


@click.group("alerts")
def alerts() -> None:
    """Threshold alerts ([[alerts]] in the config, and rules of one account; docs/alerts.md)."""


_RULE_COLUMNS = ["name", "meter", "period", "threshold", "spend", "accounts", "webhook"]


def _rule_row(r: dict[str, Any], accounts: str) -> list[str]:
    return [
        str(r.get("name")),
        str(r.get("meter")),
        str(r.get("period")),
        str(r.get("threshold") or "-"),
        str(r.get("spend") or "-"),
        accounts,
        str(r.get("webhook")),
    ]


@alerts.command("list")
@click.argument("account", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def list_alerts(account: str | None, as_json: bool, target: Target) -> None:
    """List the configured alerts, or every rule watching ACCOUNT (its own and the
    configured ones)."""
    with connect("alerts list", target) as api:
        try:
            if account is None:
                document = api.get("/v1/alerts")
            else:
                document = api.get(f"/v1/accounts/{path_segment(account)}/alerts")
        except ApiError as error:
            fail("alerts list", error)
    if as_json:
        echo_json(document)
        return
    rules = document.get("alerts") or []
    if not rules:
        click.echo("no alerts configured" if account is None else f"no alerts watch {account}")
        return
    if account is None:
        print_table(
            _RULE_COLUMNS,
            (_rule_row(r, ",".join(r.get("accounts") or ["(all)"])) for r in rules),
        )
        return
    print_table(
        [*_RULE_COLUMNS, "source", "created"],
        (
            [
                *_rule_row(r, account),
                str(r.get("source")) + ("" if r.get("active") else " (inactive)"),
                (
                    f"{format_time(r['created_at'])} by {r.get('created_by')}"
                    if r.get("created_at") is not None
                    else "-"
                ),
            ]
            for r in rules
        ),
    )
    for r in rules:
        if r.get("inactive_reason"):
            click.echo(f"{r.get('name')}: not evaluated: {r['inactive_reason']}")


@alerts.command("create")
@click.argument("account")
@click.option("--name", required=True, help="The rule's name (unique in the account).")
@click.option("--meter", required=True, help="The meter watched.")
@click.option("--threshold", help="Usage at which it fires once a month (a decimal).")
@click.option("--spend", help="Instead: the meter's invoice amount (a decimal).")
@click.option("--webhook", required=True, help="A configured [[webhooks]] name.")
@click.option("--by", "by", required=True, help="Who makes the rule (kept with it).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def create_alert(
    account: str,
    name: str,
    meter: str,
    threshold: str | None,
    spend: str | None,
    webhook: str,
    by: str,
    as_json: bool,
    target: Target,
) -> None:
    """Create an alert rule of ACCOUNT, checked like an [[alerts]] entry; its next event
    is evaluated against it."""
    body: dict[str, Any] = {"name": name, "meter": meter, "webhook": webhook, "by": by}
    if threshold is not None:
        body["threshold"] = threshold
    if spend is not None:
        body["spend"] = spend
    with connect("alerts create", target) as api:
        try:
            document = api.post(f"/v1/accounts/{path_segment(account)}/alerts", body)
        except ApiError as error:
            fail("alerts create", error)
    if as_json:
        echo_json(document)
        return
    limit = (
        f"threshold {document.get('threshold')}"
        if document.get("threshold")
        else (f"spend {document.get('spend')}")
    )
    click.echo(
        f"created {document.get('name')} for {account}: {document.get('meter')} {limit}"
        f" a month, to webhook {document.get('webhook')}"
    )


@alerts.command("delete")
@click.argument("account")
@click.argument("name")
@click.option("--by", "by", required=True, help="Who deletes the rule (kept with it).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def delete_alert(account: str, name: str, by: str, as_json: bool, target: Target) -> None:
    """Delete alert rule NAME of ACCOUNT (its crossings and deliveries stay)."""
    with connect("alerts delete", target) as api:
        try:
            document = api.delete(
                f"/v1/accounts/{path_segment(account)}/alerts/{path_segment(name)}", {"by": by}
            )
        except ApiError as error:
            fail("alerts delete", error)
    if as_json:
        echo_json(document)
        return
    click.echo(f"deleted {name} of {account} (its crossings and deliveries stay)")


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
