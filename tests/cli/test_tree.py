"""``meterd tree``'s drawing, fed a real snapshot of a live supervision tree.

The tree is the shape the daemon has (a ``rest_for_one`` root over a store actor and a
dynamic supervisor of account actors); a store that really crashed gives a restart
history, an actor really blocked in a handler gives a mailbox depth, and the dynamic
supervisor holds more children than ``limit`` lists.
"""

from __future__ import annotations

import io
import re
from typing import Any

import trio
import trio.testing
from rich.console import Console

import supervisors as sv
from meterd.cli.tree import render_tree


class Store(sv.GenServer[Any, Any]):
    def handle_cast(self, request: Any) -> None:
        raise RuntimeError(f"disk on fire: {request}")


class Account(sv.GenServer[Any, Any]):
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def handle_cast(self, request: Any) -> None:
        await self.gate.wait()


def draw(node: dict[str, Any], now: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_tree(node, now=now))
    return out.getvalue().splitlines()


async def test_a_live_tree_is_drawn_with_status_restarts_mailbox_uptime_and_more(
    nursery: trio.Nursery,
) -> None:
    registry = sv.Registry()
    gate = trio.Event()
    accounts = sv.DynamicSupervisor(name="meters")
    root = sv.Supervisor(
        [sv.actor_spec("store", Store, name=(registry, "store")), accounts.as_child("meters")],
        strategy=sv.Strategy.REST_FOR_ONE,
        name="root",
    )
    await nursery.start(root.run)
    await registry.ref("store").cast("[bold]sda1[/]")  # markup in a message stays text
    await trio.testing.wait_all_tasks_blocked()
    for n in range(5):
        await accounts.start_child(sv.actor_spec(n, Account, gate, label=f"acct-{n}"))
    busy = accounts.which_children()[0].ref
    for _ in range(3):  # the first is being handled (blocked), two wait in the mailbox
        await busy.cast("work")
    await trio.testing.wait_all_tasks_blocked()

    snapshot = sv.snapshot(root, limit=3)
    started = [
        node["started_at"]
        for node in (snapshot, *snapshot["children"], *snapshot["children"][1]["children"])
    ]
    assert all(isinstance(ms, int) for ms in started)
    now = min(started) + 65_000
    lines = draw(snapshot, now)

    assert re.fullmatch(
        r"root  supervisor rest_for_one  running  restarts 0  up 1m [45]s", lines[0]
    )
    assert re.fullmatch(r"├── store  worker  running  mailbox 0  restarts 1  up 1m [45]s", lines[1])
    assert re.fullmatch(
        r"│   last restart 1m [45]s ago \(crash\): RuntimeError: disk on fire: \[bold\]sda1\[/\]",
        lines[2],
    ), lines[2]
    # rest_for_one restarted the meters supervisor after the store, before the accounts
    assert re.fullmatch(
        r"└── meters  supervisor one_for_one  running  restarts 1  up 1m [45]s", lines[3]
    ), lines[3]
    assert re.fullmatch(
        r"    last restart 1m [45]s ago \(sibling\): rest_for_one: 'store' ended", lines[4]
    ), lines[4]
    assert re.fullmatch(
        r"    ├── acct-0  worker  running  mailbox 2  restarts 0  up 1m [45]s", lines[5]
    ), lines[5]
    assert re.fullmatch(
        r"    ├── acct-1  worker  running  mailbox 0  restarts 0  up 1m [45]s", lines[6]
    ), lines[6]
    assert lines[7].startswith("    ├── acct-2  worker  running  mailbox 0")
    assert lines[8] == "    └── … and 2 more"
    assert len(lines) == 9
    gate.set()


class Quitter(sv.GenServer[Any, Any]):
    def handle_cast(self, request: Any) -> None:
        raise sv.Stop()


async def test_a_stopped_child_shows_no_uptime(nursery: trio.Nursery) -> None:
    sup = sv.Supervisor(
        [
            sv.actor_spec("quitter", Quitter, restart=sv.Restart.TRANSIENT),
            sv.actor_spec("stays", Quitter),
        ],
        name="top",
    )
    await nursery.start(sup.run)
    quitter = sup.which_children()[0].ref
    await quitter.cast("enough")  # a transient child that ends normally is not restarted
    await trio.testing.wait_all_tasks_blocked()
    snapshot = sv.snapshot(sup)
    lines = draw(snapshot, snapshot["started_at"] + 1_000)
    assert lines[0] == "top  supervisor one_for_one  running  restarts 0  up 1s"
    assert lines[1] == "├── quitter  worker  stopped  mailbox 0  restarts 0"
    assert re.fullmatch(
        r"└── stays  worker  running  mailbox 0  restarts 0  up ([0-9]+ms|1s)", lines[2]
    )
    assert len(lines) == 3


async def test_statuses_are_coloured(nursery: trio.Nursery) -> None:
    sup = sv.Supervisor(
        [sv.actor_spec("quitter", Quitter, restart=sv.Restart.TRANSIENT)], name="top"
    )
    await nursery.start(sup.run)
    await sup.which_children()[0].ref.cast("enough")
    await trio.testing.wait_all_tasks_blocked()
    snapshot = sv.snapshot(sup)
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="standard").print(
        render_tree(snapshot, now=snapshot["started_at"])
    )
    text = out.getvalue()
    assert "\x1b[32mrunning\x1b[0m" in text  # green
    assert "\x1b[31mstopped\x1b[0m" in text  # red
