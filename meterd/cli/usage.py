"""``meterd usage ACCOUNT``: an account's usage per window, as a table or, with ``--json``, as
the API's document. Values are the API's decimal strings, printed as they are.

* without ``--meter``: every meter (``GET /v1/accounts/{account}/usage/summary``), by
  calendar month unless ``--window`` says otherwise, each meter with its total over the range;
* with ``--meter``: that meter's windows (``GET /v1/accounts/{account}/usage``, which also
  splits by a dimension with ``--group-by``) and a total row when there are several windows
  (the summary's, merged by the meter's aggregation: a max of a max meter, the distinct count
  of the whole range of a unique_count one, never a sum of daily distinct counts).

``--from``/``--to`` default to the current calendar month (UTC).
"""

from __future__ import annotations

import time
from typing import Any

import click

from meterd.cli._api import Api, ApiError, Target, api_options, connect, fail, path_segment
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


def this_month() -> tuple[int, int]:
    """``[first day of this month, first day of the next)`` in epoch ms, UTC."""
    from meterd.billing import Period

    month = Period.containing(time.time_ns() // 1_000_000)
    return month.start_ms, month.end_ms


def summary_rows(document: dict[str, Any], *, with_meter: bool) -> list[list[str]]:
    """Rows of a summary document: each window, then the meter's total when it has several
    windows (one window is its own total); ``with_meter``: the meter and its unit too."""
    out: list[list[str]] = []
    for meter in document.get("meters") or []:
        lead = [str(meter["meter"])] if with_meter else []
        unit = [str(meter.get("unit") or "")] if with_meter else []
        rows = meter.get("rows") or []
        for row in rows:
            cells = [format_time(row.get("start")), format_time(row.get("end"))]
            out.append([*lead, *cells, str(row.get("value")), *unit])
        if len(rows) > 1:
            out.append([*lead, "total", "", str(meter.get("total")), *unit])
        elif not rows and with_meter:
            out.append([*lead, "-", "-", "0", *unit])
    return out


def _summary(api: Api, account: str, params: dict[str, Any]) -> dict[str, Any]:
    return api.get(f"/v1/accounts/{path_segment(account)}/usage/summary", params)


@click.command("usage")
@click.argument("account")
@click.option("--meter", help="Only this meter, e.g. dyno.seconds (default: every meter).")
@click.option("--from", "start", type=TIME, help=f"Inclusive (default: this month); {TIME_HELP}.")
@click.option("--to", "end", type=TIME, help=f"Exclusive (default: next month); {TIME_HELP}.")
@click.option(
    "--window",
    type=click.Choice(["minute", "hour", "day", "month"]),
    help="Window size (from and to are aligned down to it); month is the calendar month,"
    " UTC. Default: hour with --meter, else month.",
)
@click.option("--group-by", help="With --meter: a dimension of the meter to split the usage by.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def usage(
    account: str,
    meter: str | None,
    start: int | None,
    end: int | None,
    window: str | None,
    group_by: str | None,
    as_json: bool,
    target: Target,
) -> None:
    """Show ACCOUNT's usage per window that had usage, in time order: every meter (with
    its total), or one with --meter.

    Times are epoch milliseconds or ISO-8601 (2026-11-25, 2026-11-25T13:00:00Z); a time
    without a zone is UTC.
    """
    if group_by is not None and meter is None:
        raise click.UsageError("--group-by needs --meter (a dimension is a meter's)")
    if group_by is not None and window == "month":
        raise click.UsageError("--group-by works with minute, hour and day windows")
    month_start, month_end = this_month()
    start = month_start if start is None else start
    end = month_end if end is None else end
    window = window or ("hour" if meter is not None else "month")
    summary_params = {"meter": meter, "from": start, "to": end, "window": window}
    with connect("usage", target) as api:
        try:
            if meter is None or window == "month":
                document = _summary(api, account, summary_params)
            else:
                params = {
                    "meter": meter,
                    "from": start,
                    "to": end,
                    "window": window,
                    "group_by": group_by,
                }
                document = api.get(f"/v1/accounts/{path_segment(account)}/usage", params)
                if not as_json and group_by is None and len(document.get("rows") or []) > 1:
                    document = _summary(api, account, summary_params)
        except ApiError as error:
            fail("usage", error)
    if as_json:
        echo_json(document)
        return
    span = f"from {format_time(start)} to {format_time(end)}"
    if "meters" in document:
        every = meter is None
        rows = summary_rows(document, with_meter=every)
        if not any(row[-2 if every else -1] != "0" for row in rows):
            which = "usage" if every else f"{meter} usage"
            click.echo(f"no {which} for {account} {span}")
            return
        columns = [*(["meter"] if every else []), "start", "end", "value", *(["unit"] * every)]
        print_table(columns, rows, right=["value"])
        return
    columns = ["start", "end", *([group_by] if group_by else []), "value"]
    table = usage_rows(document, group_by)
    if not table:
        click.echo(f"no {meter} usage for {account} {span}")
        return
    print_table(columns, table, right=["value"])
