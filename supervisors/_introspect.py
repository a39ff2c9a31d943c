"""A snapshot of a live supervision tree as plain data (the shape of ``/v1/tree``).

Each node::

    {"name": str, "kind": "supervisor" | "worker", "strategy": str (supervisors),
     "status": "running" | "restarting" | "stopped" | ..., "restarts": int,
     "started_at": int ms | None, "mailbox": int (workers),
     "pid": int (a running OS-process child only),
     "restart_history": [{"at": ms, "kind", "error_type", "message"}, ...],
     "children": [...], "children_total": int}

``limit`` caps the children listed per node (``children_total`` still counts them
all), and ``total`` caps the nodes in the whole snapshot, so that a dynamic
supervisor of a million actors costs no more to inspect than a hundred.

:func:`find_child` resolves a path of node names (as the snapshot shows them) to the
supervisor holding that child and the child's id, for the run-time operations.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ._core import ChildInfo, SupervisorCore
from ._errors import NoSuchChild
from ._process import ProcessRef
from ._spec import ChildType


def snapshot(root: SupervisorCore, *, limit: int = 100, total: int = 10_000) -> dict[str, Any]:
    """The tree under ``root``; see the module doc."""
    if limit < 0 or total < 1:
        raise ValueError(f"limit must be >= 0 and total >= 1, not {limit!r}, {total!r}")
    budget = [total - 1]
    node = _supervisor_node(root, root.name, restarts=0, history=(), limit=limit, budget=budget)
    return node


def find_child(root: SupervisorCore, path: Sequence[str]) -> tuple[SupervisorCore, Hashable]:
    """``(supervisor, child id)`` of the node at ``path``: node names from ``root`` down,
    ``root``'s own name first (``["root", "accounts", "sweeper"]``).

    Raises :class:`NoSuchChild` naming the first name that matches nothing (the root
    itself is nobody's child, so a path of one name matches nothing either). A name
    is looked up among its supervisor's children one by one (linear in their number).
    """
    if len(path) < 2 or path[0] != root.name:
        raise NoSuchChild(f"no child at {'/'.join(path)!r} under {root.name!r}")
    sup = root
    for depth, name in enumerate(path[1:], start=1):
        child = next((c for c in sup.iter_children() if c.name == name), None)
        if child is None:
            raise NoSuchChild(f"{'/'.join(path[:depth])!r} has no child named {name!r}")
        if depth == len(path) - 1:
            return sup, child.id
        if not isinstance(child.ref, SupervisorCore):
            raise NoSuchChild(f"{'/'.join(path[: depth + 1])!r} has no children")
        sup = child.ref
    raise AssertionError("unreachable")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _supervisor_node(
    sup: SupervisorCore,
    name: str,
    *,
    restarts: int,
    history: Any,
    limit: int,
    budget: list[int],
) -> dict[str, Any]:
    children: list[dict[str, Any]] = []
    for info in sup.iter_children():
        if len(children) >= limit or budget[0] <= 0:
            break  # the rest is only counted (children_total)
        budget[0] -= 1
        children.append(_child_node(info, limit, budget))
    return {
        "name": name,
        "kind": "supervisor",
        "strategy": sup.strategy_name,
        "status": sup.status,
        "restarts": restarts,
        "started_at": _ms(sup.started_at),
        "restart_history": _history(history),
        "children": children,
        "children_total": sup.count_children().specs,
    }


def _history(history: Any) -> list[dict[str, Any]]:
    return [
        {"at": _ms(r.at), "kind": r.kind, "error_type": r.error_type, "message": r.message}
        for r in history or ()
    ]


def _child_node(info: ChildInfo, limit: int, budget: list[int]) -> dict[str, Any]:
    ref = info.ref
    if isinstance(ref, SupervisorCore):
        return _supervisor_node(
            ref, info.name, restarts=info.restarts, history=info.history, limit=limit, budget=budget
        )
    node: dict[str, Any] = {
        "name": info.name,
        "kind": "supervisor" if info.type is ChildType.SUPERVISOR else "worker",
        "status": info.status.value,
        "restarts": info.restarts,
        "started_at": _ms(info.started_at),
        "mailbox": info.mailbox,
        "restart_history": _history(info.history),
        "children": [],
        "children_total": 0,
    }
    if isinstance(ref, ProcessRef):
        node["pid"] = ref.pid
    return node
