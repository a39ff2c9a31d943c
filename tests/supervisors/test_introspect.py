"""which_children, count_children and the tree snapshot (the shape of /v1/tree)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import supervisors as sv


class Idle(sv.GenServer[Any, Any]):
    def handle_cast(self, request: Any) -> None:
        raise RuntimeError("poison")


async def test_snapshot_shape_limits_and_totals(nursery: trio.Nursery) -> None:
    registry = sv.Registry()
    accounts = sv.DynamicSupervisor(name="accounts")

    root = sv.Supervisor(
        [
            sv.actor_spec("store", Idle, name=(registry, "store")),
            accounts.as_child("accounts"),
        ],
        strategy=sv.Strategy.REST_FOR_ONE,
        name="root",
    )
    await nursery.start(root.run)
    for i in range(7):
        await accounts.start_child(sv.actor_spec(i, Idle, label=f"acct-{i}"))
    await registry.ref("store").cast("boom")
    await trio.testing.wait_all_tasks_blocked()

    tree = sv.snapshot(root, limit=3)
    assert tree["name"] == "root"
    assert tree["kind"] == "supervisor"
    assert tree["strategy"] == "rest_for_one"
    assert tree["status"] == "running"
    assert tree["children_total"] == 2
    store, accounts_node = tree["children"]
    assert store["name"] == "store"
    assert store["kind"] == "worker"
    assert store["restarts"] == 1
    assert store["restart_history"][0]["error_type"] == "RuntimeError"
    assert store["mailbox"] == 0
    assert isinstance(store["started_at"], int)
    # rest_for_one restarted the accounts supervisor after the store, from a fresh state
    assert accounts_node["kind"] == "supervisor"
    assert accounts_node["strategy"] == "one_for_one"
    assert accounts_node["restarts"] == 1
    assert accounts_node["children_total"] == 0
    assert len(accounts) == 0


async def test_limit_and_total_bound_a_big_dynamic_supervisor(nursery: trio.Nursery) -> None:
    accounts = sv.DynamicSupervisor(name="accounts")
    await nursery.start(accounts.run)
    for i in range(250):
        await accounts.start_child(sv.actor_spec(i, Idle, label=f"acct-{i}"))
    tree = sv.snapshot(accounts)
    assert tree["children_total"] == 250
    assert len(tree["children"]) == 100  # default limit
    assert [c["name"] for c in tree["children"][:2]] == ["acct-0", "acct-1"]
    small = sv.snapshot(accounts, limit=1000, total=11)
    assert len(small["children"]) == 10  # the root counts toward the total
    counts = accounts.count_children()
    assert (counts.specs, counts.active) == (250, 250)
