"""``SupervisorCore.on_restart``: every restart record, with the node's path, from the
supervisor it is set on and every supervisor below it (also those started before it had
one, and those its parent starts again)."""

from __future__ import annotations

import trio

import supervisors as sv
from tests.supervisors.test_operator_actions import incarnation, worker


async def test_every_restart_below_is_observed_with_its_path(nursery: trio.Nursery) -> None:
    log: list[str] = []
    seen: list[tuple[str, str]] = []
    deep = sv.Supervisor.child_spec("deep", [worker("d", log)])  # started before inner has one
    inner = sv.Supervisor.child_spec(
        "inner",
        [worker("a", log), worker("b", log), deep],
        strategy=sv.Strategy.ONE_FOR_ALL,
        max_restarts=10,
    )
    top = sv.Supervisor([worker("w", log), inner], max_restarts=10, name="top")
    top.on_restart = lambda path, record: seen.append((path, record.kind))
    await nursery.start(top.run)

    await top.kill_child("w")
    await top.stop_and_restart_child("w")
    inner_sup = top.child_info("inner").ref
    await inner_sup.child_info("deep").ref.kill_child("d")
    await inner_sup.kill_child("a")  # one_for_all: b and deep restart as its siblings
    assert await incarnation(inner_sup, "b") > 0
    await top.kill_child("inner")  # a new inner supervisor: it is told too
    new_inner = top.child_info("inner").ref
    assert new_inner is not inner_sup
    await new_inner.stop_and_restart_child("b")
    assert seen == [
        ("top/w", "killed"),
        ("top/w", "operator"),
        ("top/inner/deep/d", "killed"),
        ("top/inner/a", "killed"),
        ("top/inner/b", "sibling"),
        ("top/inner/deep", "sibling"),
        ("top/inner", "killed"),
        ("top/inner/b", "operator"),
    ]
    assert new_inner.path == "top/inner"


async def test_without_an_observer_nothing_is_told(nursery: trio.Nursery) -> None:
    log: list[str] = []
    top = sv.Supervisor([worker("w", log)], name="top")
    await nursery.start(top.run)
    await top.kill_child("w")
    [info] = top.which_children()
    assert info.restarts == 1
    assert top.on_restart is None
