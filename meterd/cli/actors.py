"""``meterd restart ACTOR`` and ``meterd kill ACTOR``: fault drills on one actor
(``POST /v1/actors/{actor}/restart`` and ``.../kill``).

ACTOR is an account id (its meter actor) or a path in the tree, as ``meterd tree``
shows it (``root/accounts/sweeper``). ``restart`` stops the actor cleanly and its
supervisor starts it again; ``kill`` crashes it, as a fault would, and its supervisor
applies its strategy (and counts the restart toward its intensity), so it asks first.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from meterd.cli._api import USAGE_ERROR, ApiError, Target, api_options, connect, fail, path_segment


def _act(command: str, actor: str, target: Target) -> None:
    with connect(command, target) as api:
        try:
            answer: Any = api.post(f"/v1/actors/{path_segment(actor)}/{command}")
        except ApiError as error:
            fail(command, error)
    if not isinstance(answer, dict):
        fail(command, ApiError(f"the API's {command} answer is not a JSON object"))
    path = answer.get("actor", actor)
    status = answer.get("status")
    done = {"restart": "restarted", "kill": "killed"}[command]
    click.echo(f"{done} {path}" + (f" (now {status})" if status else ""))


@click.command("restart")
@click.argument("actor")
@api_options
def restart(actor: str, target: Target) -> None:
    """Restart ACTOR (an account id, or a tree path such as root/accounts/sweeper): it
    stops cleanly and its supervisor starts it again."""
    _act("restart", actor, target)


@click.command("kill")
@click.argument("actor")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@api_options
def kill(actor: str, yes: bool, target: Target) -> None:
    """Kill ACTOR (an account id, or a tree path such as root/accounts/sweeper) as a crash
    would: its supervisor restarts it per its strategy, and the restart counts toward the
    supervisor's restart intensity. Asks first unless --yes."""
    if not yes:
        if not sys.stdin.isatty():
            fail(
                "kill",
                ApiError(f"not killing {actor} without confirmation: pass --yes", USAGE_ERROR),
            )
        if not click.confirm(f"Kill {actor}? Its supervisor will restart it", default=False):
            click.echo("not killed", err=True)
            sys.exit(1)
    _act("kill", actor, target)
