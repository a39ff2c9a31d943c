"""``meterd quarantine [ACCOUNT]``: the events that crashed their meter actor and were set
aside (``GET /v1/quarantine``); they stay out of usage until an operator deals with them
(docs/accounts.md)."""

from __future__ import annotations

import click

from meterd.cli._api import ApiError, Target, api_options, connect, fail
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import format_time

COLUMNS = ["account", "batch", "event id", "at", "error"]


@click.command("quarantine")
@click.argument("account", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def quarantine(account: str | None, as_json: bool, target: Target) -> None:
    """List quarantined events: of ACCOUNT, or of every account."""
    with connect("quarantine", target) as api:
        try:
            document = api.get("/v1/quarantine", {"account": account})
        except ApiError as error:
            fail("quarantine", error)
    if as_json:
        echo_json(document)
        return
    events = (document or {}).get("events") or []
    if not events:
        click.echo(f"no quarantined events{f' for {account}' if account else ''}")
        return
    print_table(
        COLUMNS,
        (
            [
                str(event.get("account")),
                str(event.get("batch_id")),
                str(event.get("event_id")),
                format_time(event.get("at")),
                str(event.get("error")),
            ]
            for event in events
        ),
    )
