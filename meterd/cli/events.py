"""``meterd events ACCOUNT``: the events behind an account's usage
(``GET /v1/accounts/{account}/events``), one page at a time or, with ``--all``, every
page (following ``next_cursor``). Quantities are the API's decimal strings, printed as
they are."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import click

from meterd.cli._api import Api, ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._options import name_values
from meterd.cli._output import echo_json, print_table, properties_text
from meterd.cli._times import TIME, TIME_HELP, format_time

COLUMNS = ["time", "id", "meter", "quantity", "properties", "producer", "received"]


def pages(
    api: Api, account: str, params: dict[str, Any], *, follow: bool
) -> Iterator[dict[str, Any]]:
    """The pages of events from ``params["cursor"]`` on: one, or with ``follow`` all."""
    path = f"/v1/accounts/{path_segment(account)}/events"
    seen: set[str] = set()
    while True:
        page = api.get(path, params)
        if not isinstance(page.get("events"), list):
            raise ApiError("the API's events answer has no list of events")
        yield page
        cursor = page.get("next_cursor")
        if not follow or cursor is None:
            return
        if str(cursor) in seen:  # a cursor that does not move would loop for ever
            raise ApiError(f"the API returned the cursor {cursor!r} twice")
        seen.add(str(cursor))
        params = {**params, "cursor": cursor}


def event_row(event: dict[str, Any]) -> list[str]:
    status = event.get("status")  # only on an event that does not count
    return [
        format_time(event.get("time")),
        str(event.get("id")) + (f" ({status})" if status else ""),
        str(event.get("meter")),
        str(event.get("quantity")),
        properties_text(event.get("properties")),
        str(event.get("producer") or "-"),
        format_time(event.get("received_at")),
    ]


def _wanted(event: dict[str, Any], ids: tuple[str, ...], properties: dict[str, str]) -> bool:
    if ids and event.get("id") not in ids:
        return False
    have = event.get("properties") or {}
    return all(have.get(name) == value for name, value in properties.items())


@click.command("events")
@click.argument("account")
@click.option("--meter", help="Only this meter's events.")
@click.option("--from", "start", type=TIME, help=f"Inclusive; {TIME_HELP}.")
@click.option("--to", "end", type=TIME, help=f"Exclusive; {TIME_HELP}.")
@click.option("--limit", type=click.IntRange(min=1), help="Events per page (default: the API's).")
@click.option("--cursor", help="Start at this next_cursor of an earlier page.")
@click.option("--all", "follow", is_flag=True, help="Follow next_cursor to the last page.")
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="Only the event with this id (repeat for several: then every page in range is read).",
)
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="Only events with this property value (repeat: all must hold, and every page is read).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"events": [...], "next_cursor": ...} (with --all: every event, cursor null).',
)
@api_options
def events(
    account: str,
    meter: str | None,
    start: int | None,
    end: int | None,
    limit: int | None,
    cursor: str | None,
    follow: bool,
    ids: tuple[str, ...],
    properties: tuple[str, ...],
    as_json: bool,
    target: Target,
) -> None:
    """List the events of ACCOUNT that make up its usage (for billing support).

    Times are epoch milliseconds or ISO-8601 (2026-11-25, 2026-11-25T13:00:00Z); a time
    without a zone is UTC. Without --all, one page is shown and the command to see the
    next one is printed on stderr. One --id and one --property are filtered by the
    daemon; with several, the rest are filtered here as the events are read, following
    every page in the range (narrow it with --meter, --from and --to).
    """
    wanted = name_values(properties, "--property")
    filtering = bool(ids or wanted)
    params = {
        "meter": meter,
        "from": start,
        "to": end,
        "limit": limit,
        "cursor": cursor,
        "id": ids[0] if len(ids) == 1 else None,  # several ids: any of them, filtered here
        "property": properties[0] if properties else None,
    }
    filtered_here = len(ids) > 1 or len(properties) > 1
    collected: list[dict[str, Any]] = []
    next_cursor: Any = None
    with connect("events", target) as api:
        try:
            for page in pages(api, account, params, follow=follow or filtered_here):
                collected.extend(e for e in page["events"] if _wanted(e, ids, wanted))
                next_cursor = page.get("next_cursor")
        except ApiError as error:
            fail("events", error)
    if as_json:
        echo_json({"events": collected, "next_cursor": next_cursor})
        return
    if collected:
        print_table(COLUMNS, (event_row(event) for event in collected), right=["quantity"])
    else:
        click.echo(f"no events for {account}" + (" matching the filter" if filtering else ""))
    if next_cursor is not None:
        more = shlex.quote(str(next_cursor))
        click.echo(f"{len(collected)} events shown; more with --cursor {more} (or --all)", err=True)
