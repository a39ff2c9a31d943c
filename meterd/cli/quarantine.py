"""``meterd quarantine``: the events that crashed their meter actor and were set aside
(docs/accounts.md, "Quarantine: release and discard"), and what an operator does with them.

* ``meterd quarantine [ACCOUNT]`` (or ``quarantine list [ACCOUNT]``) lists them
  (``GET /v1/quarantine``), with the error each crashed its actor with;
* ``meterd quarantine release ACCOUNT [--id ID ...] --by WHO --reason WHY`` re-applies them
  once the cause is fixed (all of the account's without ``--id``;
  ``POST /v1/quarantine/{account}/release``);
* ``meterd quarantine discard ACCOUNT --id ID [--id ...] --by WHO --reason WHY`` sets them
  aside for good (``POST .../discard``): they never count.

Both writing commands first print what they will do (each event: its id, the batch it was
quarantined in, its error) and ask; without a terminal they refuse unless ``--yes``, as the
billing corrections do. Both are audited (who and why) and append-only.
"""

from __future__ import annotations

from typing import Any

import click

from meterd.cli._api import ApiError, Target, api_options, connect, fail, path_segment
from meterd.cli._output import echo_json, print_table
from meterd.cli._times import format_time
from meterd.cli.support import confirm

COLUMNS = ["account", "batch", "event id", "at", "error"]


class _ListByDefault(click.Group):
    """``meterd quarantine [ACCOUNT]`` lists, as it always did: an argument that is not a
    subcommand is the account of ``list`` (an account named like a subcommand: ``list``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("quarantine", cls=_ListByDefault)
def quarantine() -> None:
    """Quarantined (poison) events: list them, release them after a fix, or discard them.

    \b
    meterd quarantine [ACCOUNT]                    list (all accounts without ACCOUNT)
    meterd quarantine release ACCOUNT [--id ID]... --by WHO --reason WHY
    meterd quarantine discard ACCOUNT --id ID... --by WHO --reason WHY
    """


@quarantine.command("list")
@click.argument("account", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@api_options
def list_(account: str | None, as_json: bool, target: Target) -> None:
    """List quarantined events: of ACCOUNT, or of every account."""
    with connect("quarantine", target) as api:
        try:
            document = api.get("/v1/quarantine", {"account": account})
        except ApiError as error:
            fail("quarantine", error)
    if as_json:
        echo_json(document)
        return
    events = document.get("events") or []
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


def _plan(verb: str, account: str, found: list[dict[str, Any]], ids: tuple[str, ...]) -> str:
    """What the command will do, one line per quarantined event it names (and the ids asked
    for that are not in quarantine: the API says what they are)."""
    chosen = [e for e in found if not ids or e.get("event_id") in ids]
    lines = [
        f"  {e.get('event_id')} (batch {e.get('batch_id')}, quarantined"
        f" {format_time(e.get('at'))}): {e.get('error')}"
        for e in chosen
    ]
    listed = {e.get("event_id") for e in chosen}
    lines += [f"  {i} (not in quarantine now)" for i in ids if i not in listed]
    what = "every quarantined event" if not ids else f"{len(ids)} event id(s)"
    return f"will {verb} {what} of account {account!r}:\n" + "\n".join(lines)


def _decide(
    action: str,
    account: str,
    ids: tuple[str, ...],
    by: str,
    reason: str,
    yes: bool,
    as_json: bool,
    target: Target,
) -> None:
    command = f"quarantine {action}"
    verb = "release (re-apply)" if action == "release" else "discard (never count)"
    with connect(command, target) as api:
        try:
            found = api.get("/v1/quarantine", {"account": account}).get("events") or []
            if action == "release" and not ids and not found:
                click.echo(f"no quarantined events for {account}: nothing to release")
                return
            plan = f"{_plan(verb, account, found, ids)}\nby {by}: {reason}"
            question = f"{action.capitalize()} these events?"
            confirm(command, plan, yes, question)
            body: dict[str, Any] = {"by": by, "reason": reason}
            if ids:
                body["ids"] = list(ids)
            answer = api.post(f"/v1/quarantine/{path_segment(account)}/{action}", body)
        except ApiError as error:
            fail(command, error)
    if as_json:
        echo_json(answer)
        return
    done = [str(e.get("event_id")) for e in answer.get("events") or []]
    past = "released" if action == "release" else "discarded"
    if done:
        where = f" (journal batch {answer.get('batch_id')})" if answer.get("batch_id") else ""
        click.echo(f"{past} {len(done)} event(s) of {account}{where}: {', '.join(done)}")
    for same in answer.get("unchanged") or []:
        click.echo(
            f"{same.get('event_id')}: already {same.get('action')} by {same.get('by')} at"
            f" {format_time(same.get('at'))}: nothing to do"
        )
    if not done and not answer.get("unchanged"):
        click.echo(f"nothing {past}")


_ID_HELP = "A quarantined event's id (repeat for several)."


@quarantine.command("release")
@click.argument("account")
@click.option("--id", "ids", multiple=True, help=_ID_HELP + " Default: every one of ACCOUNT.")
@click.option("--by", required=True, help="Who releases them (kept in the quarantine log).")
@click.option("--reason", required=True, help="Why: the fix (kept in the quarantine log).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@api_options
def release(
    account: str,
    ids: tuple[str, ...],
    by: str,
    reason: str,
    yes: bool,
    as_json: bool,
    target: Target,
) -> None:
    """Re-apply ACCOUNT's quarantined events once their cause is fixed: they are appended
    to the journal again and counted once; one that crashes the actor again goes back to
    quarantine. Shows them and asks first."""
    _decide("release", account, ids, by, reason, yes, as_json, target)


@quarantine.command("discard")
@click.argument("account")
@click.option("--id", "ids", multiple=True, required=True, help=_ID_HELP)
@click.option("--by", required=True, help="Who discards them (kept in the quarantine log).")
@click.option("--reason", required=True, help="Why (kept in the quarantine log).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@api_options
def discard(
    account: str,
    ids: tuple[str, ...],
    by: str,
    reason: str,
    yes: bool,
    as_json: bool,
    target: Target,
) -> None:
    """Set ACCOUNT's quarantined events aside for good: they never count (audited,
    append-only; they stay in the journal, shown as discarded). Shows them and asks first."""
    _decide("discard", account, ids, by, reason, yes, as_json, target)
