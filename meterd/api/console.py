"""The console's API: the tree as a paged, filtered, sorted table; one actor's page; ingest
at a glance; a stream of ticks; and the console itself (static files at ``/``).

Declared like every route (:mod:`.operations`): models in :mod:`.models` (``NodesQuery``),
answers here (they are the console's, and only it and scripts read them).

``GET /v1/tree/nodes`` walks the live tree once per request (linear in the awake actors:
docs/console.md has the figures), keeps the nodes that match, sorts them and returns one
page: the browser never holds more than a page. Asleep (hibernated) accounts are only
counted (``asleep``) unless asked for (a search, ``status=hibernated`` or ``quarantined``):
then they come from the store's ``accounts`` table (a scan on a reader thread, linear in the
accounts the store knows), after the live nodes.

``GET /v1/console/stream`` is a ``text/event-stream`` read with ``fetch`` (so the admin
token goes in a header, never in a URL): one ``tick`` per second with the ingest
counters, and whatever page is open re-reads its own data on it.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec
import trio
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

import supervisors as sv
from meterd.accounts.actor import MeterActor
from meterd.ingest.observe import ACK_LATENCY_BUCKETS

from .answers import Closed, Count, Open, RestartRecord, Time, json_answer
from .auth import require_admin
from .daemon import Daemon
from .errors import ApiError, bad_parameter
from .models import ActorPath, NodesQuery
from .operations import ACTOR, GATEWAY, Operations, every_shard

ops = Operations()

STATIC: Final = Path(__file__).resolve().parent.parent / "console"
TICK: Final = 1.0  # seconds between two ticks of the stream
HISTORY_LIMIT: Final = 50

NodeStatus = Literal["running", "restarting", "stopped", "hibernated"]


# ---- answers ---------------------------------------------------------------------------------


class NodeRow(Closed, kw_only=True):
    """One node of the tree, as a row of the console's table."""

    path: Annotated[str, Meta(description="Node names from the root, joined by '/'.")]
    name: str
    depth: Annotated[int, Meta(ge=0, description="0 for the root.")]
    kind: Literal["supervisor", "worker"]
    status: NodeStatus
    account: Annotated[str | None, Meta(description="The account of a meter actor.")] = None
    restarts: Count = 0
    mailbox: Count = 0
    rate: Annotated[Count, Meta(description="Events applied in the last second.")] = 0
    memory: Annotated[Count, Meta(description="Bytes, estimated (meter actors).")] = 0
    children: Annotated[Count, Meta(description="Children (supervisors).")] = 0
    quarantined: Annotated[bool, Meta(description="The account has quarantined events.")] = False
    started_at: Time | None = None


class Nodes(Closed):
    """One page of the matching nodes."""

    total: Annotated[Count, Meta(description="Nodes in the live tree.")]
    asleep: Annotated[
        Count,
        Meta(
            description="Accounts the store knows with no actor awake (hibernated): listed"
            " only with a search or status=hibernated or quarantined."
        ),
    ]
    matched: Annotated[Count, Meta(description="Nodes (and asleep accounts) that match.")]
    offset: Count
    nodes: list[NodeRow]


class ActorStatus(Closed, kw_only=True):
    """One node in detail (a meter actor, asleep or awake, or any node of the tree)."""

    path: str
    name: str
    kind: Literal["supervisor", "worker"]
    status: NodeStatus
    account: str | None = None
    incarnation: Annotated[Count, Meta(description="1 + restarts since the daemon started.")]
    restarts: Count
    started_at: Time | None
    uptime_ms: Count | None
    mailbox: Count
    rate: Annotated[Count, Meta(description="Events applied in the last second.")]
    events_applied: Annotated[Count, Meta(description="By this incarnation.")]
    memory: Annotated[Count, Meta(description="Bytes, estimated.")]
    windows: Annotated[Count, Meta(description="Minute cells held (since its checkpoint).")]
    watermark: Annotated[int | None, Meta(description="Last journal batch applied.")]
    quarantined: Count
    restart_history: Annotated[
        list[RestartRecord],
        Meta(description="Oldest first, kept across daemon restarts (the store's restarts)."),
    ]


class MeterInfo(Closed):
    name: str
    aggregation: str
    dimensions: list[str]


class ConsoleMeta(Closed):
    meters: list[MeterInfo]
    producers: list[str]
    currency: str
    cluster_node: Annotated[
        str | None,
        Meta(description="This node's name with [cluster] (the console shows /v1/cluster)."),
    ] = None


class ProducerRow(Closed):
    producer: str
    connections: Count
    acks: Count
    accepted: Count
    duplicates: Count
    rejected: Count


class IngestSnapshot(Open):
    """Counters since the daemon started; the console charts their differences."""

    at: Time
    accepted: Count
    duplicates: Count
    rejected: dict[str, Count]
    acks: Count
    ack_latency_bounds: list[float]
    ack_latency_counts: Annotated[list[Count], Meta(description="Per bucket; the last is +Inf.")]
    connections: Count
    producers: list[ProducerRow]
    store_commits: Count
    store_pending: Count
    commit_latency_bounds: Annotated[
        list[float], Meta(description="Seconds, upper bounds of the commit-latency buckets.")
    ]
    commit_latency_counts: Annotated[
        list[Count],
        Meta(description="Store group commits per bucket since start; the last is +Inf."),
    ]
    checkpoint_count: Count
    checkpoint_seconds: float
    live_actors: Count
    resident_bytes: Count


# ---- the tree as rows -------------------------------------------------------------------------


def _actor_of(ref: Any) -> MeterActor | None:
    if isinstance(ref, sv.ActorRef):
        actor = ref.actor
        if isinstance(actor, MeterActor):
            return actor
    return None


def _children_of(ref: Any) -> int:
    """How many children a supervisor has (a dynamic one says it without a walk)."""
    if isinstance(ref, sv.DynamicSupervisor):
        return len(ref)
    return ref.count_children().specs if isinstance(ref, sv.SupervisorCore) else 0


def _row(info: sv.ChildInfo, path: str, depth: int, now: float, quarantined: set[str]) -> NodeRow:
    ref = info.ref
    actor = _actor_of(ref)
    account = actor.account if actor is not None else None
    return NodeRow(
        path=path,
        name=info.name,
        depth=depth,
        kind="supervisor" if isinstance(ref, sv.SupervisorCore) else "worker",
        status=info.status.value,
        account=account,
        restarts=info.restarts,
        mailbox=info.mailbox,
        rate=actor.events_per_second(now) if actor is not None else 0,
        memory=actor.memory_estimate() if actor is not None else 0,
        children=_children_of(ref),
        quarantined=account in quarantined if account is not None else False,
        started_at=None if info.started_at is None else int(info.started_at * 1000),
    )


Node = tuple[sv.ChildInfo | None, str, int]
"""A node of the walk: its info (None for the root), path and depth; a row is only built
for the nodes of the page (:func:`_row`)."""


WALK_SLICE: Final = 2048
"""Nodes a walk reads between two checkpoints: a filter over 100,000 awake actors lets the
event loop run (acks, other requests) every few milliseconds instead of holding it for the
whole walk (about 0.9 s at 90,000 actors)."""


async def nodes(root: sv.SupervisorCore) -> AsyncIterator[Node]:
    """Every node of the live tree, depth first, the root first, each supervisor's children
    in its own order; a checkpoint every :data:`WALK_SLICE` nodes.

    Children are read a slice at a time, by position (``iter_children(start)``), and only
    then handed out, so neither this walk's checkpoints nor its consumer's awaits hold an
    iterator over children that may change meanwhile: a walk over a changing tree may miss
    or repeat a child that came or went during it (a console page is a view, not a
    snapshot), but never fails."""
    yield None, root.name, 0
    # (supervisor, its path, the depth of its children, the position of the next child)
    stack: list[tuple[sv.SupervisorCore, str, int, int]] = [(root, root.name, 1, 0)]
    budget = WALK_SLICE
    while stack:
        supervisor, prefix, depth, position = stack.pop()
        read: list[sv.ChildInfo] = []
        for info in supervisor.iter_children(position):
            read.append(info)
            if isinstance(info.ref, sv.SupervisorCore) or len(read) >= budget:
                break
        if not read:
            continue  # this supervisor's children are done
        last = read[-1]
        if isinstance(last.ref, sv.SupervisorCore) or len(read) >= budget:
            stack.append((supervisor, prefix, depth, position + len(read)))  # more may follow
        if isinstance(last.ref, sv.SupervisorCore):
            stack.append((last.ref, f"{prefix}/{last.name}", depth + 1, 0))
        for info in read:
            yield info, f"{prefix}/{info.name}", depth
        budget -= len(read)
        if budget <= 0:
            budget = WALK_SLICE
            await trio.lowlevel.checkpoint()


def _root_row(root: sv.SupervisorCore) -> NodeRow:
    return NodeRow(
        path=root.name,
        name=root.name,
        depth=0,
        kind="supervisor",
        status="running" if root.running else "stopped",
        children=_children_of(root),
        started_at=None if root.started_at is None else int(root.started_at * 1000),
    )


def _sort_key(sort: str, now: float) -> Callable[[Node], Any]:
    def key(node: Node) -> Any:
        info = node[0]
        if sort == "name":
            return node[1].rsplit("/", 1)[-1]
        if info is None:
            return 0
        if sort == "mailbox":
            return info.mailbox
        if sort == "restarts":
            return info.restarts
        actor = _actor_of(info.ref)
        if actor is None:
            return 0
        return actor.memory_estimate() if sort == "memory" else actor.events_per_second(now)

    return key


def _keep(
    node: Node, search: str | None, status: str | None, quarantined: set[str], meters: str
) -> bool:
    info, path, _ = node
    name = path.rsplit("/", 1)[-1]
    if search is not None and search not in name.lower():
        return False
    if status is None:
        return True
    if status == "quarantined":
        return path.startswith(meters) and name in quarantined
    node_status = "running" if info is None else info.status.value
    return node_status == status


async def _quarantined_accounts(daemon: Daemon) -> set[str]:
    def query(conn: sqlite3.Connection) -> set[str]:
        return {row[0] for row in conn.execute("SELECT DISTINCT account FROM quarantine")}

    return await daemon.store.reader.run(query)


async def _asleep(
    daemon: Daemon,
    search: str | None,
    only: set[str] | None,
    offset: int,
    limit: int,
    count: bool = True,
) -> tuple[int, list[str]]:
    """Accounts the store knows that have no running actor: how many match, and the page
    ``[offset, offset + limit)`` of them by name (``only``: among these accounts, looked
    at one by one, not the store's table). ``count`` False: the scan stops once the page
    is full and the number is -1 (the caller knows it: every asleep account matches)."""
    registry = daemon.accounts.registry
    if only is not None:
        names = sorted(
            a for a in only if a not in registry and (search is None or search in a.lower())
        )
        return len(names), names[offset : offset + limit]
    pattern = "%" if search is None else "%" + _like(search) + "%"

    def query(conn: sqlite3.Connection) -> tuple[int, list[str]]:
        matched = 0
        page: list[str] = []
        rows = conn.execute(
            "SELECT account FROM accounts WHERE lower(account) LIKE ? ESCAPE '\\' ORDER BY account",
            (pattern,),
        )
        for (account,) in rows:
            if account in registry:
                continue
            if offset <= matched < offset + limit:
                page.append(account)
            matched += 1
            if not count and matched >= offset + limit:
                return -1, page
        return matched, page

    return await daemon.store.reader.run(query)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _asleep_row(daemon: Daemon, account: str, quarantined: set[str]) -> NodeRow:
    meters = f"{daemon.tree.name}/accounts/meters"
    return NodeRow(
        path=f"{meters}/{account}",
        name=account,
        depth=3,
        kind="worker",
        status="hibernated",
        account=account,
        quarantined=account in quarantined,
    )


class _Actors(NamedTuple):
    """In an outline of the tree: the place of the meter actors (the accounts' dynamic
    supervisor's children), not walked one by one."""

    sup: sv.DynamicSupervisor
    path: str  # of the supervisor
    depth: int  # of its children


def outline(root: sv.SupervisorCore, big: sv.DynamicSupervisor) -> list[Node | _Actors]:
    """Every node of the live tree depth first, but ``big``'s children: one :class:`_Actors`
    in their place (a handful of nodes, whatever the number of accounts)."""
    out: list[Node | _Actors] = [(None, root.name, 0)]
    stack: list[tuple[Iterator[sv.ChildInfo], str, int]] = [(root.iter_children(), root.name, 1)]
    while stack:
        children, prefix, depth = stack[-1]
        info = next(children, None)
        if info is None:
            stack.pop()
            continue
        path = f"{prefix}/{info.name}"
        out.append((info, path, depth))
        if info.ref is big:
            out.append(_Actors(big, path, depth + 1))
        elif isinstance(info.ref, sv.SupervisorCore):
            stack.append((info.ref.iter_children(), path, depth + 1))
    return out


def _actor_node(actors: _Actors, account: str) -> Node | None:
    try:
        info = actors.sup.child_info(account)
    except sv.NoSuchChild:
        return None
    return info, f"{actors.path}/{info.name}", actors.depth


def _status_of(node: Node) -> str:
    return "running" if node[0] is None else node[0].status.value


def _fast(daemon: Daemon, query: NodesQuery, search: str | None, now: float) -> Any:
    """``(total, matched, the page's nodes)`` without a row per meter actor, for the
    common questions (no status filter, or ``running``): the tree's first pages, a
    search, a sort by name, mailbox, memory, rate or restarts; None for the others
    (:func:`_by_status`, :func:`_running_in_order`, :func:`_slow`).

    ``running``: the actors that are not running are few and indexed by their supervisor
    (``DynamicSupervisor.not_running``), so the others are counted without a look and
    those few are left out of the candidates by id."""
    if query.status not in (None, "running"):
        return None
    root, big, registry = daemon.tree, daemon.accounts.supervisor, daemon.accounts.registry
    items = outline(root, big)
    actors = next((item for item in items if isinstance(item, _Actors)), None)
    awake = len(big) if actors is not None else 0
    total = len(items) - (actors is not None) + awake
    idle: set[str] = set()  # actors not running (left out by a running filter)
    if query.status == "running":
        idle = {str(info.id) for info in big.not_running()}
        items = [i for i in items if isinstance(i, _Actors) or _status_of(i) == "running"]
    static = [item for item in items if not isinstance(item, _Actors)]
    end = query.offset + query.limit
    if query.sort == "tree" and search is None:
        if query.order == "desc" or idle:
            return None  # (the running actors' positions are not known without a look)
        chosen: list[Node] = []
        position = 0
        for item in items:
            if position >= end:
                break
            if isinstance(item, _Actors):
                count = len(item.sup)
                first, last = max(query.offset, position), min(end, position + count)
                if first < last:
                    for info in item.sup.iter_children(first - position, last - position):
                        chosen.append((info, f"{item.path}/{info.name}", item.depth))
                position += count
                continue
            if position >= query.offset:
                chosen.append(item)
            position += 1
        return total, len(static) + awake, chosen
    candidates: list[tuple[Any, int, Node | str]] = []
    node_key = _sort_key(query.sort, now) if query.sort != "tree" else None
    for index, node in enumerate(static):
        name = node[1].rsplit("/", 1)[-1]
        if search is None or search in name.lower():
            candidates.append((node_key(node) if node_key else index, index, node))
    if actors is not None:
        base = len(static)
        running = query.status == "running"
        # A sort by restarts: the few restarted actors from their supervisor's index;
        # every other one has none.
        restarts = (
            {str(info.id): info.restarts for info in big.restarted()}
            if query.sort == "restarts"
            else {}
        )
        for index, key in enumerate(registry.keys()):
            account = str(key)
            if search is not None and search not in account.lower():
                continue
            if running and (account in idle or registry.whereis(key) is None):
                continue
            if query.sort in ("tree", "name"):
                value: Any = base + index if query.sort == "tree" else account
            elif query.sort == "restarts":
                value = restarts.get(account, 0)
            else:
                ref = registry.whereis(key)
                actor = _actor_of(ref)
                if actor is None:
                    value = 0
                elif query.sort == "mailbox":
                    value = actor.sv_mailbox_depth
                elif query.sort == "memory":
                    value = actor.memory_estimate()
                else:
                    value = actor.events_per_second(now)
            candidates.append((value, base + index, account))
        if restarts and not running:  # restarting ones hold no name: placed after the rest
            after = base + len(candidates)
            for index, (account, count) in enumerate(restarts.items()):
                if account not in registry and (search is None or search in account.lower()):
                    candidates.append((count, after + index, account))
    descending = query.order == "desc"
    if descending:
        picked = heapq.nlargest(end, candidates, key=lambda c: (c[0], -c[1]))
    else:
        picked = heapq.nsmallest(end, candidates, key=lambda c: (c[0], c[1]))
    chosen = []
    for _, _, what in picked[query.offset :]:
        if isinstance(what, str):
            assert actors is not None
            found = _actor_node(actors, what)
            if found is not None:  # (else it ended meanwhile)
                chosen.append(found)
        else:
            chosen.append(what)
    return total, len(candidates), chosen


def _page(live: list[Node], query: NodesQuery, now: float) -> list[Node]:
    """The page ``[offset, offset + limit)`` of ``live`` (in tree order) as asked."""
    end = query.offset + query.limit
    descending = query.order == "desc"
    if query.sort != "tree":  # the first `end` only: O(n log end), not a whole sort
        pick = heapq.nlargest if descending else heapq.nsmallest
        chosen = pick(end, live, key=_sort_key(query.sort, now))
    else:
        chosen = live[::-1][:end] if descending else live[:end]
    return chosen[query.offset :]


def _by_status(
    daemon: Daemon, query: NodesQuery, search: str | None, now: float, quarantined: set[str]
) -> Any:
    """What :func:`_slow` answers for a filter on a status few actors have, without a look
    at the others: ``restarting`` and ``stopped`` from the accounts supervisor's index of
    the actors not running, ``quarantined`` from the store's quarantined accounts (each
    found by id), ``hibernated`` (no live node at all); None for ``running`` or no
    filter. The few actors come in the order they stopped running (quarantined: by
    name), in the tree's place of the actors."""
    status = query.status
    if status is None or status == "running":
        return None
    root, big = daemon.tree, daemon.accounts.supervisor
    items = outline(root, big)
    has_actors = any(isinstance(item, _Actors) for item in items)
    total = len(items) - has_actors + (len(big) if has_actors else 0)
    if status == "hibernated":
        return total, 0, []
    meters = f"{root.name}/accounts/meters/"
    live: list[Node] = []
    for item in items:
        if not isinstance(item, _Actors):
            if _keep(item, search, status, quarantined, meters):
                live.append(item)
        elif status == "quarantined":
            for account in sorted(quarantined):
                if search is None or search in account.lower():
                    found = _actor_node(item, account)
                    if found is not None:  # (else it is asleep: listed from the store)
                        live.append(found)
        else:
            for info in item.sup.not_running():
                if info.status.value == status and (search is None or search in info.name.lower()):
                    live.append((info, f"{item.path}/{info.name}", item.depth))
    return total, len(live), _page(live, query, now)


async def _running_in_order(daemon: Daemon, query: NodesQuery, search: str | None) -> Any:
    """``status=running`` in tree order (ascending, no search) while some actors are not
    running: counted without a look (all but those few), and the page read from the
    start of the accounts' children up to its end, skipping the few (a checkpoint every
    :data:`WALK_SLICE` children): cheap for the first pages, up to a walk for the last."""
    if not (query.status == "running" and query.sort == "tree" and search is None):
        return None
    if query.order == "desc":
        return None
    root, big = daemon.tree, daemon.accounts.supervisor
    items = outline(root, big)
    idle = {str(info.id) for info in big.not_running()}
    end = query.offset + query.limit
    total = matched = 0
    position = 0
    chosen: list[Node] = []
    for item in items:
        if isinstance(item, _Actors):
            count = len(item.sup)
            running = max(0, count - len(idle))
            total += count
            matched += running
            base, seen, start = position, 0, 0
            while base + seen < end and seen < running:
                read = list(item.sup.iter_children(start, start + WALK_SLICE))
                if not read:
                    break
                start += len(read)
                for info in read:
                    if info.status is not sv.ChildStatus.RUNNING:
                        continue
                    if query.offset <= base + seen < end:
                        chosen.append((info, f"{item.path}/{info.name}", item.depth))
                    seen += 1
                await trio.lowlevel.checkpoint()
            position = base + running
            continue
        total += 1
        if _status_of(item) != "running":
            continue
        matched += 1
        if query.offset <= position < end:
            chosen.append(item)
        position += 1
    return total, matched, chosen


async def _slow(
    daemon: Daemon, query: NodesQuery, search: str | None, now: float, quarantined: set[str]
) -> Any:
    """What :func:`_fast` answers, for any question: a walk with every node's info."""
    root = daemon.tree
    meters = f"{root.name}/accounts/meters/"
    total = 0
    live: list[Node] = []
    async for node in nodes(root):
        total += 1
        if query.status != "hibernated" and _keep(node, search, query.status, quarantined, meters):
            live.append(node)
    return total, len(live), _page(live, query, now)


@ops.get(
    "/v1/tree/nodes",
    "treeNodes",
    "The tree as a table: every supervisor and actor (and asleep accounts), filtered, sorted"
    " and paged on the server.",
    answers={200: (Nodes, "One page.")},
    errors=(400, 401, 500),
    scope=every_shard("tree_nodes"),
)
async def tree_nodes(daemon: Daemon, query: NodesQuery) -> Response:
    quarantined = await _quarantined_accounts(daemon)
    search = query.search.lower() if query.search is not None else None
    status = query.status
    root = daemon.tree
    now = trio.current_time()
    found = _fast(daemon, query, search, now)
    if found is None:
        found = _by_status(daemon, query, search, now, quarantined)
    if found is None:
        found = await _running_in_order(daemon, query, search)
    if found is None:
        found = await _slow(daemon, query, search, now, quarantined)
    total, matched, chosen = found
    page = [
        _root_row(root) if info is None else _row(info, path, depth, now, quarantined)
        for info, path, depth in chosen
    ]
    known = await daemon.store.reader.known_accounts()
    asleep_total = max(0, known - len(daemon.accounts.supervisor))
    if status in ("hibernated", "quarantined") or (status is None and search is not None):
        only = quarantined if status == "quarantined" else None
        live_matched = matched
        first = max(0, query.offset - live_matched)
        room = query.limit - len(page)
        every = status == "hibernated" and search is None  # all asleep ones: counted already
        asleep, names = (0, []) if every and (not asleep_total or room <= 0) else await _asleep(
            daemon, search, only, first, room, count=not every
        )
        matched += asleep_total if every else asleep
        page += [_asleep_row(daemon, name, quarantined) for name in names]
    return json_answer(
        Nodes(total=total, asleep=asleep_total, matched=matched, offset=query.offset, nodes=page)
    )


# ---- one actor --------------------------------------------------------------------------------


async def _history(daemon: Daemon, path: str, live: tuple[sv.RestartRecord, ...]) -> list[Any]:
    """The stored history of ``path`` and the live records not stored yet, oldest first."""
    stored = [] if daemon.restarts is None else await daemon.restarts.history(path, HISTORY_LIMIT)
    seen = {(r.at, r.kind, r.message) for r in stored}
    records = [RestartRecord(r.at, r.kind, r.error_type, r.message) for r in stored]
    for r in live:
        at = int(r.at * 1000)
        if (at, r.kind, r.message[:1000]) not in seen:
            records.append(RestartRecord(at, r.kind, r.error_type, r.message))
    records.sort(key=lambda r: r.at or 0)
    return records[-HISTORY_LIMIT:]


def _find(daemon: Daemon, actor: str) -> tuple[str, sv.ChildInfo | None]:
    """``(path, the child's info)`` of ``actor`` (an account id or a path); info None for an
    account without an actor; 404 for a path that matches nothing."""
    root = daemon.tree
    if "/" not in actor:
        path = f"{root.name}/accounts/meters/{actor}"
        try:
            return path, daemon.accounts.supervisor.child_info(actor)
        except sv.NoSuchChild:
            return path, None
    try:
        sup, child_id = sv.find_child(root, actor.split("/"))
        return actor, sup.child_info(child_id)
    except sv.NoSuchChild as error:
        raise ApiError(404, "unknown_actor", f"no actor {actor!r}: {error}") from None


@ops.get(
    "/v1/actors/{actor:path}/status",
    "actorStatus",
    "One actor (an account id or a node path): status, incarnation, uptime, mailbox, rate,"
    " memory estimate, windows, watermark, restart history (kept across daemon restarts).",
    answers={200: (ActorStatus, "The node now.")},
    errors=(401, 404, 500),
    scope=ACTOR,
)
async def actor_status(daemon: Daemon, path: ActorPath) -> Response:
    where, info = _find(daemon, path.actor)
    account = path.actor if "/" not in path.actor else None
    if info is None:
        if account is None or not await daemon.store.reader.has_account(account):
            raise ApiError(404, "unknown_actor", f"no account or node {path.actor!r}")
        quarantined = len(await daemon.store.reader.quarantined(account))
        watermark = await _stored_watermark(daemon, account)
        return json_answer(
            ActorStatus(
                path=where,
                name=account,
                kind="worker",
                status="hibernated",
                account=account,
                incarnation=0,
                restarts=0,
                started_at=None,
                uptime_ms=None,
                mailbox=0,
                rate=0,
                events_applied=0,
                memory=0,
                windows=0,
                watermark=watermark,
                quarantined=quarantined,
                restart_history=await _history(daemon, where, ()),
            )
        )
    actor = _actor_of(info.ref)
    now = trio.current_time()
    started = None if info.started_at is None else int(info.started_at * 1000)
    return json_answer(
        ActorStatus(
            path=where,
            name=info.name,
            kind="supervisor" if isinstance(info.ref, sv.SupervisorCore) else "worker",
            status=info.status.value,
            account=actor.account if actor is not None else None,
            incarnation=info.restarts + 1,
            restarts=info.restarts,
            started_at=started,
            uptime_ms=None if started is None else max(0, time.time_ns() // 1_000_000 - started),
            mailbox=info.mailbox,
            rate=actor.events_per_second(now) if actor is not None else 0,
            events_applied=actor.events_applied if actor is not None else 0,
            memory=actor.memory_estimate() if actor is not None else 0,
            windows=actor.cells() if actor is not None else 0,
            watermark=actor.watermark if actor is not None else None,
            quarantined=actor.quarantined if actor is not None else 0,
            restart_history=await _history(daemon, where, info.history),
        )
    )


async def _stored_watermark(daemon: Daemon, account: str) -> int | None:
    def query(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT watermark FROM accounts WHERE account = ?", (account,))
        found = row.fetchone()
        return None if found is None else int(found[0])

    return await daemon.store.reader.run(query)


# ---- ingest at a glance, meta, stream ---------------------------------------------------------


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def ingest_snapshot(daemon: Daemon) -> IngestSnapshot:
    ingest = daemon.ingest
    stats = ingest.stats
    observed = stats.observed
    connections = ingest.connections_by_producer
    writer = daemon.store.writer
    checkpoints = daemon.metrics.checkpoint_seconds
    checkpoint_count = checkpoint_sum = 0.0
    for metric in checkpoints.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                checkpoint_count = sample.value
            elif sample.name.endswith("_sum"):
                checkpoint_sum = sample.value
    names = sorted(set(observed.producers) | set(connections))
    producers = []
    for name in names:
        counts = observed.producers.get(name)
        producers.append(
            ProducerRow(
                producer=name,
                connections=connections.get(name, 0),
                acks=counts.batches if counts else 0,
                accepted=counts.accepted if counts else 0,
                duplicates=counts.duplicates if counts else 0,
                rejected=counts.rejected if counts else 0,
            )
        )
    return IngestSnapshot(
        at=time.time_ns() // 1_000_000,
        accepted=stats.accepted,
        duplicates=stats.duplicates,
        rejected=dict(sorted(observed.rejected_by_code.items())),
        acks=stats.acks,
        ack_latency_bounds=list(ACK_LATENCY_BUCKETS),
        ack_latency_counts=list(observed.ack_latency.counts),
        connections=ingest.connection_count,
        producers=producers,
        store_commits=writer.stats.commits,
        store_pending=writer.pending,
        commit_latency_bounds=list(daemon.metrics.commit_latency.bounds),
        commit_latency_counts=list(daemon.metrics.commit_latency.counts),
        checkpoint_count=int(checkpoint_count),
        checkpoint_seconds=checkpoint_sum,
        live_actors=len(daemon.accounts.supervisor),
        resident_bytes=_resident_bytes(),
    )


@ops.get(
    "/v1/console/ingest",
    "ingestSnapshot",
    "Ingest counters since start (events, rejections by code, ack latency buckets,"
    " producers, store), for charts of their differences.",
    answers={200: (IngestSnapshot, "Now.")},
    errors=(401, 500),
    scope=every_shard("ingest"),
)
async def ingest(daemon: Daemon) -> Response:
    return json_answer(ingest_snapshot(daemon))


@ops.get(
    "/v1/console/meta",
    "consoleMeta",
    "The meters and producers of the configuration (names, dimensions), for the console.",
    answers={200: (ConsoleMeta, "The configuration's names.")},
    errors=(401, 500),
    scope=GATEWAY,
)
async def meta(daemon: Daemon) -> Response:
    config = daemon.config
    return json_answer(
        ConsoleMeta(
            meters=[
                MeterInfo(m.name, m.aggregation.value, list(m.dimensions)) for m in config.meters
            ],
            producers=[p.name for p in config.producers],
            currency=config.billing.currency,
            cluster_node=None if config.cluster is None else config.cluster.node,
        )
    )


async def _ticks(daemon: Daemon) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while True:
        payload = msgspec.json.encode({"ingest": ingest_snapshot(daemon)})
        yield b"event: tick\ndata: " + payload + b"\n\n"
        await trio.sleep(TICK)


async def stream(request: Request) -> Response:
    """``GET /v1/console/stream`` (admin token): server-sent events, a ``tick`` each second
    with the ingest snapshot, until the client goes. Not in ``/openapi.json``: an endless
    answer is no operation a client (or schemathesis) can call and check."""
    daemon: Daemon = request.app.state.daemon
    require_admin(request, daemon.config.api)
    if request.query_params:
        name = next(iter(request.query_params))
        raise bad_parameter(name, "is not a parameter of this route (known: none)")
    return StreamingResponse(
        _ticks(daemon),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ---- the console's files ----------------------------------------------------------------------

_FILES: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


async def index(request: Request) -> Response:
    """``GET /``: the console's page (no token: it holds no data; the data routes need it)."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = _FILES.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no console file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type)


__all__ = ["asset", "index", "ingest_snapshot", "nodes", "ops", "stream"]
