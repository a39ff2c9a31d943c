"""The console's walk of the live tree (``meterd.api.console.nodes``): every node in tree
order, with checkpoints so a walk over many actors never holds the event loop, and a tree
that changes under it never fails it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import supervisors as sv
from meterd.api import console


class Idle(sv.GenServer[Any, Any]):
    pass


async def tree(
    nursery: trio.Nursery, actors: int
) -> tuple[sv.Supervisor, sv.DynamicSupervisor, list[Any]]:
    meters = sv.DynamicSupervisor(name="meters")
    accounts = sv.Supervisor([meters.as_child("meters")], name="accounts")
    root = sv.Supervisor(
        [sv.actor_spec("store", Idle), accounts.as_child("accounts"), sv.actor_spec("api", Idle)],
        name="root",
    )
    await nursery.start(root.run)
    refs = [await meters.start_child(sv.actor_spec(f"acct-{i:03}", Idle)) for i in range(actors)]
    return root, meters, refs


async def walked(root: sv.SupervisorCore) -> list[str]:
    return [path async for _, path, _ in console.nodes(root)]


async def test_the_walk_is_the_tree_in_order_whatever_the_slice(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = await tree(nursery, 25)
    accounts = [f"root/accounts/meters/acct-{i:03}" for i in range(25)]
    expected = [
        "root",
        "root/store",
        "root/accounts",
        "root/accounts/meters",
        *accounts,
        "root/api",
    ]
    for size in (1, 3, 7, 1000):
        monkeypatch.setattr(console, "WALK_SLICE", size)
        assert await walked(root) == expected, size


async def test_a_long_walk_lets_other_tasks_run(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = await tree(nursery, 40)
    monkeypatch.setattr(console, "WALK_SLICE", 10)
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as busy:
        busy.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = turns
        assert len(await walked(root)) == 45
        # 45 nodes in slices of 10 make 4 checkpoints, each a turn for the other task (one
        # may share a scheduler batch with the turn counted in `before`); a walk without
        # checkpoints gives it none.
        assert turns - before >= 3
        busy.cancel_scope.cancel()


async def test_children_that_go_during_a_walk_do_not_fail_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, meters, refs = await tree(nursery, 30)
    monkeypatch.setattr(console, "WALK_SLICE", 5)
    seen: list[str] = []
    async for _, path, _ in console.nodes(root):
        seen.append(path)
        if path.endswith("acct-007"):
            for i in range(20, 30):  # gone while the walk is between two slices
                await meters.terminate_child(refs[i])
    accounts = [p for p in seen if "/meters/" in p]
    assert accounts[:8] == [f"root/accounts/meters/acct-{i:03}" for i in range(8)]
    assert not any(p.endswith(f"acct-{i:03}") for i in range(20, 30) for p in accounts)
    assert seen[-1] == "root/api"
