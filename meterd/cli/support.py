"""Billing support without curl: ``meterd accounts``, ``adjust``, ``void`` and ``close``.

* ``accounts [SEARCH]`` pages ``GET /v1/accounts`` (ids containing SEARCH);
* ``adjust`` credits or debits a quantity on a window of a summed meter
  (``POST /v1/accounts/{account}/adjustments``), ``void`` takes one event out of billed usage
  (``POST .../events/{event}/void``), ``close`` makes a finished month's figures final
  (``POST /v1/periods/{period}/close``).

A correction is append-only: a wrong one stays in the audit, reversed by another. So each
writing command first prints what it will record (account, meter, the day or window in UTC,
the quantity, who and why) and asks; without a terminal it refuses unless ``--yes``. Times
are epoch milliseconds or ISO-8601 (no zone: UTC), as everywhere in the CLI.

``adjust`` and ``void`` send an ``Idempotency-Key`` (one per command, or
``--idempotency-key``) and retry on their own, with that key, when the answer is lost (no
answer, or 502/503/504): the daemon records the correction once (docs/billing.md
"Retrying a correction"). When they give up they print the key, to re-run the command
with it.
"""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from meterd.cli._api import (
    USAGE_ERROR,
    Api,
    ApiError,
    Target,
    api_options,
    connect,
    fail,
    path_segment,
)
from meterd.cli._options import name_values
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import TIME, TIME_HELP, format_time
from meterd.model import Window

_WINDOWS = {window.value: window for window in Window}

RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
"""Seconds before each retry of a correction whose answer was lost (then it gives up)."""
_RETRIED_STATUSES = frozenset({502, 503, 504})
_KEY_HELP = (
    "Idempotency key of this correction (1-200 printable ASCII characters; default: a new"
    " one per command). Re-running the command with the key of an earlier run records"
    " nothing more if that run's correction was recorded."
)


def _key_option(function: Callable[..., None]) -> Callable[..., None]:
    return click.option("--idempotency-key", "key", metavar="KEY", help=_KEY_HELP)(function)


def _check_key(key: str | None) -> str:
    from meterd.billing._corrections import check_key

    if key is None:
        return f"cli-{uuid.uuid4().hex}"
    why = check_key(key)
    if why is not None:
        raise click.BadParameter(why, param_hint="'--idempotency-key'")
    return key


def post_correction(
    command: str, api: Api, path: str, body: dict[str, Any], key: str
) -> dict[str, Any]:
    """``POST path`` with ``Idempotency-Key: key``, sent again with the same key while the
    answer is lost (no answer, or 502/503/504), after each of :data:`RETRY_DELAYS`; the last
    failure names the key to re-run the command with."""
    headers = {"Idempotency-Key": key}
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            return api.post(path, body, headers)
        except ApiError as error:
            lost = error.unreachable or error.http_status in _RETRIED_STATUSES
            if not lost:
                raise
            if delay is None:
                raise ApiError(
                    f"{error}; gave up after {attempt} attempts. The correction may be"
                    f" recorded: re-run the command with --idempotency-key {shlex.quote(key)}"
                    " to record it at most once"
                ) from None
            click.echo(
                f"meterd {command}: {error}; sending it again with the same idempotency key"
                f" in {delay:g} s (attempt {attempt + 1} of {len(RETRY_DELAYS) + 1})",
                err=True,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _recorded_words(answer: dict[str, Any]) -> str:
    """How a correction's answer begins: recorded now, or before under the same key."""
    if answer.get("replayed"):
        return "already recorded (an earlier run with this idempotency key)"
    return "recorded"


def _interactive() -> bool:
    return sys.stdin.isatty()


def confirm(command: str, plan: str, yes: bool, question: str) -> None:
    """Print ``plan`` (what the command will write) and ask ``question``; exit unless
    confirmed. Without a terminal, ``--yes`` is the confirmation."""
    click.echo(plan, err=True)
    if yes:
        return
    if not _interactive():
        fail(command, ApiError("nothing written without confirmation: pass --yes", USAGE_ERROR))
    if not click.confirm(question, default=False, err=True):
        click.echo("nothing written", err=True)
        sys.exit(1)


def _restated(answer: dict[str, Any]) -> str:
    found = answer.get("restatement")
    if not found:
        return ""
    return (
        f"; the month was closed: restatement #{found['id']} of {found['period']},"
        f" total {found['old_total']} -> {found['new_total']} ({found['difference']})"
    )


# ---- accounts -------------------------------------------------------------------------------


def _account_pages(
    api: Api, search: str | None, limit: int | None, cursor: str | None, follow: bool
) -> tuple[list[dict[str, Any]], str | None]:
    """The accounts of one page (or with ``follow`` every page) and the cursor after them."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page = api.get("/v1/accounts", {"search": search, "limit": limit, "after": cursor})
        found.extend(page.get("accounts") or [])
        cursor = page.get("next_after")
        if not follow or cursor is None:
            return found, cursor
        if cursor in seen:  # a cursor that does not move would loop for ever
            raise ApiError(f"the API returned the cursor {cursor!r} twice")
        seen.add(cursor)


@click.command("accounts")
@click.argument("search", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), help="Accounts per page (default 100).")
@click.option("--after", "cursor", help="List the accounts after this id (where a page ended).")
@click.option("--all", "follow", is_flag=True, help="Follow next_cursor to the last page.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (one page, or all).")
@api_options
def accounts(
    search: str | None,
    limit: int | None,
    cursor: str | None,
    follow: bool,
    as_json: bool,
    target: Target,
) -> None:
    """List the accounts meterd knows, by id; SEARCH keeps those whose id contains it
    (ASCII letters match either case). Awake accounts have a running meter actor."""
    with connect("accounts", target) as api:
        try:
            found, cursor = _account_pages(api, search, limit, cursor, follow)
        except ApiError as error:
            fail("accounts", error)
    if as_json:
        echo_json({"accounts": found, "next_after": cursor})
        return
    if not found:
        click.echo("no accounts" + (f" with {search!r} in their id" if search else ""))
    else:
        print_table(
            ["account", "state", "updated"],
            [
                [
                    str(a["account"]),
                    "awake" if a.get("awake") else "hibernated",
                    format_time(a.get("updated_at")),
                ]
                for a in found
            ],
        )
    if cursor is not None:
        again = "meterd accounts" + (f" {shlex.quote(search)}" if search else "")
        click.echo(
            f"{len(found)} shown; more with: {again} --after {shlex.quote(cursor)} (or --all)",
            err=True,
        )


# ---- adjust ---------------------------------------------------------------------------------


def _quantity(text: str) -> str:
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = Decimal(0)
    if not number.is_finite() or number <= 0 or "e" in text.lower():
        raise click.BadParameter(
            f"{text!r} is not a decimal greater than 0 (digits and an optional point)",
            param_hint="'--quantity'",
        )
    return text


def _window_words(start: int, window: Window) -> str:
    if window is Window.DAY:
        return f"the day {format_time(start)[:10]} (UTC)"
    return f"the {window.value} from {format_time(start)} to {format_time(start + window.ms)}"


@click.command("adjust")
@click.argument("account")
@click.option("--meter", required=True, help="A sum or count meter, e.g. dyno.seconds.")
@click.option(
    "--kind",
    type=click.Choice(["credit", "debit"]),
    required=True,
    help="credit takes the quantity off the bill; debit adds it.",
)
@click.option("--quantity", required=True, help="Units of the meter, a decimal > 0 (e.g. 3600).")
@click.option(
    "--on",
    "start",
    type=TIME,
    required=True,
    help=f"The window's start, e.g. the day 2026-11-20; {TIME_HELP}.",
)
@click.option(
    "--window",
    type=click.Choice(list(_WINDOWS)),
    default="day",
    show_default=True,
    help="The window the adjustment is on (--on must be its start).",
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=VALUE",
    help="A dimension value of the line to adjust (repeat for several).",
)
@click.option("--by", required=True, help="Who records it (kept in the audit).")
@click.option("--reason", required=True, help="Why (kept in the audit).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@_key_option
@api_options
def adjust(
    account: str,
    meter: str,
    kind: str,
    quantity: str,
    start: int,
    window: str,
    dims: tuple[str, ...],
    by: str,
    reason: str,
    yes: bool,
    as_json: bool,
    key: str | None,
    target: Target,
) -> None:
    """Credit or debit QUANTITY units of a summed meter on one window of ACCOUNT (append-only;
    a closed month is restated at once). Shows what it will record and asks first.

    Example: meterd adjust acme --meter dyno.seconds --kind credit --quantity 3600
    --on 2026-11-20 --dim size=standard-1x --by alice --reason "outage credit, ticket 4411"
    """
    key = _check_key(key)
    size = _WINDOWS[window]
    dimensions = name_values(dims, "--dim")
    amount = _quantity(quantity)
    if start % size.ms:
        aligned = start - start % size.ms
        fail(
            "adjust",
            ApiError(
                f"--on {format_time(start)} is not the start of a {window}"
                f" (UTC); did you mean {format_time(aligned)}?",
                USAGE_ERROR,
            ),
        )
    dim_text = " ".join(f"{k}={v}" for k, v in dimensions.items()) or "no dimension values"
    sign = "-" if kind == "credit" else "+"
    plan = (
        f"{kind} {sign}{amount} {meter} ({dim_text}) for account {account!r}"
        f" on {_window_words(start, size)}, by {by}: {reason}"
    )
    confirm("adjust", f"will record: {plan}", yes, "Record this adjustment?")
    body = {
        "meter": meter,
        "start": start,
        "window": window,
        "dimensions": dimensions,
        "kind": kind,
        "quantity": amount,
        "by": by,
        "reason": reason,
    }
    with connect("adjust", target) as api:
        try:
            answer = post_correction(
                "adjust", api, f"/v1/accounts/{path_segment(account)}/adjustments", body, key
            )
        except ApiError as error:
            fail("adjust", error)
    if as_json:
        echo_json(answer)
        return
    recorded = answer.get("adjustment") or {}
    click.echo(
        f"{_recorded_words(answer)} adjustment #{recorded.get('id')}: {plan}{_restated(answer)}"
    )


# ---- void -----------------------------------------------------------------------------------


def _find_event(api: Api, account: str, event_id: str, period: str | None) -> dict[str, Any]:
    """The event ``event_id`` of ``account`` (searched in ``period``'s month when given),
    shown before the void is recorded; :class:`ApiError` when there is none."""
    params: dict[str, Any] = {"limit": 10_000}
    if period is not None:
        from meterd.billing import Period

        month = Period.parse(period)
        params.update({"from": month.start_ms, "to": month.end_ms})
    path = f"/v1/accounts/{path_segment(account)}/events"
    while True:
        page = api.get(path, params)
        for event in page.get("events") or []:
            if event.get("id") == event_id:
                return dict(event)
        if page.get("next_cursor") is None:
            where = f" in {period}" if period else ""
            raise ApiError(f"account {account!r} has no event {event_id!r}{where}")
        params = {**params, "cursor": page["next_cursor"]}


def _month_of(text: str) -> str:
    """``2026-11`` for ``2026-11`` or a time in that month (epoch ms or ISO-8601)."""
    from meterd.billing import Period
    from meterd.isotime import parse_time

    try:
        return str(Period.parse(text))
    except ValueError:
        pass
    try:
        return str(Period.containing(parse_time(text)))
    except ValueError as error:
        raise click.BadParameter(
            f"{text!r} is not a month (2026-11) nor a time in one ({error})",
            param_hint="'--period'",
        ) from None


@click.command("void")
@click.argument("account")
@click.argument("event_id")
@click.option("--by", required=True, help="Who records it (kept in the audit).")
@click.option("--reason", required=True, help="Why (kept in the audit).")
@click.option(
    "--period",
    help="The month the event's time falls in (2026-11, or a date in it): a faster search.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@_key_option
@api_options
def void(
    account: str,
    event_id: str,
    by: str,
    reason: str,
    period: str | None,
    yes: bool,
    as_json: bool,
    key: str | None,
    target: Target,
) -> None:
    """Take EVENT_ID out of ACCOUNT's billed usage (it stays in the journal; append-only; a
    closed month is restated at once). Shows the event and asks first."""
    key = _check_key(key)
    if period is not None:
        period = _month_of(period)
    with connect("void", target) as api:
        try:
            event = _find_event(api, account, event_id, period)
            what = (
                f"void event {event_id!r} of account {account!r}: {event['quantity']}"
                f" {event['meter']} at {format_time(event['time'])}"
                f" ({' '.join(f'{k}={v}' for k, v in sorted(event['properties'].items()))}),"
                f" by {by}: {reason}"
            )
            confirm("void", f"will record: {what}", yes, "Void this event?")
            body: dict[str, Any] = {"by": by, "reason": reason}
            if period is not None:
                body["period"] = period
            answer = post_correction(
                "void",
                api,
                f"/v1/accounts/{path_segment(account)}/events/{path_segment(event_id)}/void",
                body,
                key,
            )
        except ApiError as error:
            fail("void", error)
    if as_json:
        echo_json(answer)
        return
    recorded = answer.get("void") or {}
    click.echo(f"{_recorded_words(answer)} void #{recorded.get('id')}: {what}{_restated(answer)}")


# ---- close ----------------------------------------------------------------------------------


@click.command("close")
@click.argument("period")
@click.option("--by", required=True, help="Who closes the month (kept with it).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@api_options
def close(period: str, by: str, yes: bool, as_json: bool, target: Target) -> None:
    """Close PERIOD (a finished month, 2026-11) for every account: its figures become final;
    later changes are recorded as restatements. Asks first."""
    from meterd.billing import Period

    try:
        month = Period.parse(period)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'PERIOD'") from None
    plan = (
        f"close {month} ({format_time(month.start_ms)[:10]} to {format_time(month.end_ms)[:10]},"
        f" UTC) for every account, by {by}: its figures become final"
    )
    confirm("close", f"will record: {plan}", yes, f"Close {month}?")
    with connect("close", target) as api:
        try:
            answer = api.post(f"/v1/periods/{month}/close", {"by": by})
        except ApiError as error:
            fail("close", error)
    if as_json:
        echo_json(answer)
        return
    click.echo(
        f"closed {answer.get('period')} for {answer.get('accounts')} accounts"
        f" at {format_time(answer.get('at'))}, by {answer.get('by')}"
    )
