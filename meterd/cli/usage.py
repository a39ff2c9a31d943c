"""``meterd usage ACCOUNT``: an account's usage of one meter per window
(``GET /v1/accounts/{account}/usage``), as a table or, with ``--json``, as the API's
document. Values are the API's decimal strings, printed as they are."""

from __future__ import annotations

from typing import Any

import click

from meterd.cli._api import ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import TIME, TIME_HELP, format_time


def usage_rows(document: dict[str, Any], group_by: str | None) -> list[list[str]]:
    """The table cells of a usage document: start, end, [group value], value."""
    rows = []
    for row in document.get("rows") or []:
        cells = [format_time(row.get("start")), format_time(row.get("end"))]
        if group_by is not None:
            group = row.get("group") or {}
            value = group.get(group_by)
            cells.append("(none)" if value is None else str(value))
        cells.append(str(row.get("value")))
        rows.append(cells)
    return rows


@click.command("usage")
@click.argument("account")
@click.option("--meter", required=True, help="The meter, e.g. dyno.seconds.")
@click.option("--from", "start", type=TIME, required=True, help=f"Inclusive; {TIME_HELP}.")
@click.option("--to", "end", type=TIME, required=True, help=f"Exclusive; {TIME_HELP}.")
@click.option(
    "--window",
    type=click.Choice(["minute", "hour", "day"]),
    default="hour",
    show_default=True,
    help="Window size (from and to are aligned down to it).",
)
@click.option("--group-by", help="A dimension of the meter to split the usage by.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def usage(
    account: str,
    meter: str,
    start: int,
    end: int,
    window: str,
    group_by: str | None,
    as_json: bool,
    target: Target,
) -> None:
    """Show ACCOUNT's usage of a meter, per window that had usage, in time order.

    Times are epoch milliseconds or ISO-8601 (2026-11-25, 2026-11-25T13:00:00Z); a time
    without a zone is UTC.
    """
    params = {"meter": meter, "from": start, "to": end, "window": window, "group_by": group_by}
    with connect("usage", target) as api:
        try:
            document = api.get(f"/v1/accounts/{path_segment(account)}/usage", params)
        except ApiError as error:
            fail("usage", error)
    if as_json:
        echo_json(document)
        return
    columns = ["start", "end", *([group_by] if group_by else []), "value"]
    rows = usage_rows(document, group_by)
    if not rows:
        click.echo(
            f"no {meter} usage for {account} from {format_time(start)} to {format_time(end)}"
        )
        return
    print_table(columns, rows, right=["value"])
