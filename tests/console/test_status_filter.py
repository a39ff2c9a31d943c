"""The tree query's status filter without a walk over every actor (issue 18): a tree with
thousands of actors, a few restarting, starting (stopped) or with quarantined events, each
filter answered as the full walk answers it, while looking at the few actors only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import supervisors as sv
from meterd.api import console
from meterd.api.models import NodesQuery

ACTORS = 3000
CRASHED = (17, 1200, 2999)  # restarting (a long backoff, the clock does not move)
QUARANTINED = {"acct-00005", "acct-00017", "acct-01500"}


class Account(sv.GenServer[Any, Any]):
    def __init__(self, gates: dict[str, trio.Event], tag: str) -> None:
        self.gates, self.tag = gates, tag

    async def init(self) -> None:
        gate = self.gates.get(self.tag)
        if gate is not None:
            await gate.wait()

    def handle_cast(self, request: Any) -> None:
        raise RuntimeError(f"{self.tag} crashed")


async def daemon_like(nursery: trio.Nursery) -> tuple[Any, dict[str, trio.Event]]:
    """What the tree query reads of a daemon: its tree, the accounts' dynamic supervisor
    and their registry (the daemon's shape: root/accounts/meters/<account>)."""
    registry: sv.Registry = sv.Registry("accounts")
    meters = sv.DynamicSupervisor(name="meters", max_restarts=1000, max_seconds=1)
    idle = sv.Supervisor([], name="sweeper")
    accounts = sv.Supervisor(
        [meters.as_child("meters"), idle.as_child("sweeper")], name="accounts"
    )
    root = sv.Supervisor(
        [sv.actor_spec("store-writer", Account, {}, "w"), accounts.as_child("accounts")],
        name="root",
    )
    await nursery.start(root.run)
    gates: dict[str, trio.Event] = {}
    backoff = sv.Backoff(initial=60, maximum=60, jitter=0)
    refs = []
    for i in range(ACTORS):
        tag = f"acct-{i:05}"
        spec = sv.actor_spec(tag, Account, gates, tag, name=(registry, tag), backoff=backoff)
        refs.append(await meters.start_child(spec))
    for i in CRASHED:
        await refs[i].cast("crash")
    for tag in ("late-1", "late-2"):  # stopped: their first start waits
        gates[tag] = trio.Event()
        spec = sv.actor_spec(tag, Account, gates, tag, name=(registry, tag))
        nursery.start_soon(meters.start_child, spec)
    await trio.testing.wait_all_tasks_blocked()
    accounts_side = SimpleNamespace(supervisor=meters, registry=registry)
    return SimpleNamespace(tree=root, accounts=accounts_side), gates


QUERIES: list[dict[str, Any]] = [
    {},
    {"limit": 5},
    {"offset": 1, "limit": 2},
    {"search": "acct-000", "limit": 100},
    {"search": "late"},
    {"sort": "name", "order": "desc", "limit": 7},
    {"sort": "mailbox", "limit": 4},
    {"sort": "restarts", "order": "desc", "limit": 3},
]


@contextlib.contextmanager
def child_infos_built() -> Iterator[list[int]]:
    """Counts the ``ChildInfo``s built in the block (a row per actor looked at): ``[n]``."""
    looked = [0]
    of = sv.ChildInfo.of

    def counted(child: Any) -> Any:
        looked[0] += 1
        return of(child)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sv.ChildInfo, "of", staticmethod(counted))
        yield looked


async def test_each_status_filter_answers_as_the_walk_without_one(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    daemon, gates = await daemon_like(nursery)
    now = trio.current_time()
    cases = [
        ("restarting", q) for q in QUERIES
    ] + [("stopped", q) for q in QUERIES] + [("quarantined", q) for q in QUERIES]
    cases += [("hibernated", {}), ("running", {"sort": "name", "offset": 10, "limit": 20})]
    cases += [("running", {"search": "acct-01", "sort": "rate", "order": "desc"})]
    for status, params in cases:
        query = msgspec.convert({**params, "status": status}, NodesQuery)
        search = query.search.lower() if query.search else None
        walked = await console._slow(daemon, query, search, now, QUARANTINED)
        with child_infos_built() as looked:
            quick = console._fast(daemon, query, search, now) or console._by_status(
                daemon, query, search, now, QUARANTINED
            )
        assert quick is not None, (status, params)
        assert quick[:2] == walked[:2], (status, params)
        paths, walked_paths = [n[1] for n in quick[2]], [n[1] for n in walked[2]]
        if status in ("restarting", "stopped") and query.sort == "tree":
            # In the order they stopped running (the walk: tree order); the same ones.
            assert len(paths) == len(walked_paths), (status, params)
            if query.offset == 0 and query.limit >= walked[1]:
                assert sorted(paths) == sorted(walked_paths), (status, params)
        elif query.sort in ("tree", "name") or status != "running":
            assert paths == walked_paths, (status, params)
        # Rows for the page and the few not running, never a look at every actor.
        assert looked[0] <= query.limit + 20, (status, params, looked)
    restarting = msgspec.convert({"status": "restarting"}, NodesQuery)
    found = console._by_status(daemon, restarting, None, now, set())
    assert sorted(n[1].rsplit("/", 1)[1] for n in found[2]) == [f"acct-{i:05}" for i in CRASHED]
    stopped = msgspec.convert({"status": "stopped"}, NodesQuery)
    found = console._by_status(daemon, stopped, None, now, set())
    assert sorted(n[1].rsplit("/", 1)[1] for n in found[2]) == ["late-1", "late-2"]
    gates["late-1"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert console._by_status(daemon, stopped, None, now, set())[1] == 1


async def test_running_in_tree_order_pages_past_the_actors_not_running(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    daemon, _ = await daemon_like(nursery)
    now = trio.current_time()
    for params in (
        {},
        {"offset": 10, "limit": 10},
        {"offset": 1195, "limit": 10},  # around acct-01200, restarting
        {"offset": ACTORS - 10, "limit": 50},  # the last page, then the sweeper
        {"limit": 10_000},
    ):
        query = msgspec.convert({**params, "status": "running"}, NodesQuery)
        walked = await console._slow(daemon, query, None, now, set())
        assert console._fast(daemon, query, None, now) is None  # some are not running
        paged = await console._running_in_order(daemon, query, None)
        assert paged is not None
        assert paged[:2] == walked[:2], params
        assert [n[1] for n in paged[2]] == [n[1] for n in walked[2]], params


async def test_a_sort_by_restarts_answers_as_the_walk_looking_at_the_restarted_only(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """The crashed actors (restarting, their names released) and the restarted ones come
    first, as in the walk; the others are not looked at (no ``ChildInfo`` each)."""
    daemon, _ = await daemon_like(nursery)
    meters = daemon.accounts.supervisor
    for tag in ("acct-00300", "acct-02000"):  # restarted by an operator: running again
        await meters.stop_and_restart_child(tag)
    await trio.testing.wait_all_tasks_blocked()
    now = trio.current_time()
    restarted = {f"acct-{i:05}" for i in (*CRASHED, 300, 2000)}

    def rows(nodes: list[Any]) -> list[tuple[str, int]]:
        return [(n[1].rsplit("/", 1)[-1], 0 if n[0] is None else n[0].restarts) for n in nodes]
    for params in (
        {"sort": "restarts", "order": "desc", "limit": 10},
        {"sort": "restarts", "order": "desc", "limit": 3, "offset": 2},
        {"sort": "restarts", "order": "desc", "search": "acct-02"},
        {"sort": "restarts", "order": "desc", "status": "running", "limit": 4},
        {"sort": "restarts", "order": "asc", "limit": 5},
    ):
        query = msgspec.convert(params, NodesQuery)
        search = query.search.lower() if query.search else None
        walked = await console._slow(daemon, query, search, now, set())
        with child_infos_built() as looked:
            quick = console._fast(daemon, query, search, now)
        assert quick is not None, params
        assert quick[:2] == walked[:2], params
        quick_rows, walked_rows = rows(quick[2]), rows(walked[2])
        if query.order == "desc":  # the restarted first: the same ones, the same counts
            top = [row for row in walked_rows if row[1]]
            assert sorted(quick_rows[: len(top)]) == sorted(top), params
            assert {name for name, n in quick_rows if n} <= restarted, params
        assert [n for _, n in quick_rows] == [n for _, n in walked_rows], params
        assert looked[0] <= query.limit + 20, (params, looked)
