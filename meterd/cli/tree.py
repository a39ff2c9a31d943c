"""``meterd tree``: the live supervision tree (``GET /v1/tree``), the operator's observer.

Each node is one line: its name, kind (and a supervisor's strategy), status in colour,
restarts, a worker's mailbox depth and its uptime; under a node that restarted, its
latest restart (when and why). A node listing fewer children than ``children_total``
ends with ``… and K more``. ``--watch`` redraws in place every ``--interval`` seconds
until Ctrl-C; once it has drawn the tree, an API that cannot be reached (a restarting
daemon) is shown with the reason and retried.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from rich.tree import Tree

from meterd.cli._api import Api, ApiError, Target, api_options, connect, fail
from meterd.cli._output import console, echo_json
from meterd.cli._times import format_time, humanise

STATUS_STYLES = {
    "running": "green",
    "restarting": "yellow",
    "stopped": "red",
    "hibernated": "blue",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def render_tree(node: Mapping[str, Any], *, now: int) -> Tree:
    """``node`` (a ``/v1/tree`` document) as a rich tree; uptimes are taken at ``now`` (ms)."""
    tree = Tree(_label(node, now), guide_style="dim")
    _add_children(tree, node, now)
    return tree


def _add_children(branch: Tree, node: Mapping[str, Any], now: int) -> None:
    children = node.get("children") or []
    for child in children:
        _add_children(branch.add(_label(child, now)), child, now)
    more = int(node.get("children_total", len(children))) - len(children)
    if more > 0:
        branch.add(Text(f"… and {more} more", style="dim italic"))


def _label(node: Mapping[str, Any], now: int) -> Text:
    kind = str(node.get("kind", "?"))
    status = str(node.get("status", "?"))
    restarts = int(node.get("restarts") or 0)
    label = Text.assemble(
        (str(node.get("name", "?")), "bold"),
        "  ",
        (kind + (f" {node['strategy']}" if node.get("strategy") else ""), "cyan"),
        "  ",
        (status, STATUS_STYLES.get(status, "magenta")),
    )
    if kind == "worker":
        mailbox = int(node.get("mailbox") or 0)
        label.append("  mailbox ")
        label.append(str(mailbox), "bold yellow" if mailbox else "")
    label.append("  restarts ")
    label.append(str(restarts), "bold yellow" if restarts else "")
    started_at = node.get("started_at")
    if isinstance(started_at, int):
        label.append(f"  up {humanise(max(0, now - started_at))}", "dim")
    history = node.get("restart_history") or []
    if history:
        last = history[-1]
        at = last.get("at")
        when = f"{humanise(max(0, now - at))} ago" if isinstance(at, int) else "at an unknown time"
        kind_of = str(last.get("kind", "?"))
        message = str(last.get("message") or "")
        if message == kind_of or message.startswith(kind_of + " "):
            message = ""  # "(killed): killed" says nothing more
        why = ": ".join(part for part in (str(last.get("error_type") or ""), message) if part)
        label.append(f"\nlast restart {when} ({kind_of})", "dim")
        if why:
            label.append(f": {why}", "dim red")
    return label


def fetch_tree(api: Api, limit: int) -> dict[str, Any]:
    tree = api.get("/v1/tree", {"limit": limit})
    if not isinstance(tree, dict) or "name" not in tree:
        raise ApiError("the API's /v1/tree answer is not a tree node")
    return tree


def _watch_view(api: Api, limit: int, first: dict[str, Any] | None = None) -> Group:
    """What ``--watch`` shows: a header and the tree, or why it cannot be had right now."""
    now = now_ms()
    header = Text(f"meterd at {api.endpoint.url}  {format_time(now)}  (Ctrl-C to stop)", "dim")
    try:
        body: Tree | Text = render_tree(first or fetch_tree(api, limit), now=now)
    except ApiError as error:
        if not error.unreachable:
            raise
        body = Text(f"{error}; retrying", "red")
    return Group(header, body)


@click.command("tree")
@click.option("--watch", is_flag=True, help="Redraw in place until Ctrl-C.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Children listed per node (the rest are counted).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON tree (not with --watch)."
)
@api_options
def tree(watch: bool, limit: int, interval: float, as_json: bool, target: Target) -> None:
    """Show the live supervision tree: every supervisor and actor, its status, restarts,
    mailbox depth and uptime."""
    if watch and as_json:
        raise click.UsageError("--json and --watch do not go together")
    out = console()
    try:
        with connect("tree", target) as api:
            if as_json:
                echo_json(fetch_tree(api, limit))
            elif not watch:
                out.print(render_tree(fetch_tree(api, limit), now=now_ms()))
            else:
                _watch(api, out, limit, interval)
    except KeyboardInterrupt:
        pass  # the way out of --watch
    except ApiError as error:
        fail("tree", error)


def _watch(api: Api, out: Console, limit: int, interval: float) -> None:
    # The first fetch must succeed (a wrong address fails at once); after that an
    # unreachable daemon (restarting, say) is shown and retried.
    first = fetch_tree(api, limit)
    with Live(_watch_view(api, limit, first), console=out, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(_watch_view(api, limit), refresh=True)
