"""The routes of protocol.md §3: health, metrics, the tree, usage, events, quarantine, actors.

Each is declared once (:mod:`.operations`): its path, query and body models
(:mod:`.models`) and its answers (:mod:`.answers`). Every ``/v1`` route checks the admin
token first (:mod:`.auth`), then its parameters (400 naming the first unknown or wrong one),
then that what it names exists (404), then answers. Usage values and event quantities are
exact decimal strings.

Actors (``/v1/actors/{actor}/restart|kill``): ``{actor}`` is a bare account id (that
account's meter actor, under ``root/accounts/meters``) or a path of node names from the
root, ``root/accounts/sweeper``. The answer's ``status`` is the node's status once its
supervisor has dealt with it (``running``; ``restarting`` while a restart is retried or
backs off). Actions whose effect would stop the API itself before it can answer are
refused with 409 ``would_stop_api``: restarting or killing ``root/api``, and killing an
earlier child of a ``rest_for_one`` root (or any child of a ``one_for_all`` one), which
restarts the API with it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, Literal, cast

from msgspec import UNSET
from starlette.responses import Response

import supervisors as sv
from meterd.model import Meter, canonical_quantity
from meterd.store import InvalidCursor

from . import answers
from .answers import json_answer, usage_answer
from .daemon import Daemon
from .errors import ApiError, bad_parameter
from .metrics import CONTENT_TYPE
from .models import (
    AccountPath,
    ActorPath,
    EventsQuery,
    QuarantineQuery,
    TreeQuery,
    UsageQuery,
)
from .operations import ACCOUNT, ACTOR, Operations, Scope, every_shard

ops = Operations()

READ_ERRORS: Final = (400, 401, 404, 500, 503)
INGEST_NOT_ACCEPTING: Final = "ingest is not accepting connections"


# ---- unauthenticated ------------------------------------------------------------------


def ready(daemon: Daemon) -> list[str]:
    """Why the daemon is not ready (empty when it is): the root and each of its children
    must be running, ingest must be accepting, the store's last write must not have failed
    (a full disk: every batch is then answered ``unavailable``), nor its last journal-index
    pass (the index then grows in memory: an operator's matter, see docs/accounts.md)."""
    root = daemon.root
    if root is None or not root.running:
        return ["the supervision tree is not running"]
    problems = [
        f"{info.id} is {info.status.value}"
        for info in root.which_children()
        if info.status is not sv.ChildStatus.RUNNING
    ]
    if daemon.ingest.stopping or not daemon.ingest.addresses:
        problems.append(INGEST_NOT_ACCEPTING)
    writer = daemon.store.writer
    if writer.failing is not None:
        problems.append(
            f"the store {writer.path} cannot commit ({writer.failing}): batches are answered"
            " 'unavailable' until a write succeeds"
        )
    if writer.pass_failing is not None:
        problems.append(
            f"the store {writer.path} cannot write its journal index ({writer.pass_failing}):"
            f" {writer.journal_tail.size} batches are indexed in memory only, and memory"
            " grows with every batch until a pass succeeds"
        )
    return problems


@ops.get(
    "/healthz",
    "health",
    "Ready when the tree is running and ingest accepts connections.",
    answers={
        200: (answers.Health, "Ready."),
        503: (answers.Health, "Not ready; problems says why."),
    },
    admin=False,
    scope=every_shard("health"),
)
async def healthz(daemon: Daemon) -> Response:
    problems = ready(daemon)
    if problems:
        return json_answer(answers.Health(status="unavailable", problems=problems), 503)
    return json_answer(answers.Health(status="ok"))


@ops.get(
    "/metrics",
    "metrics",
    "Prometheus text exposition format.",
    answers={200: (str, "Metrics.")},
    admin=False,
    scope=every_shard("metrics"),
)
async def metrics(daemon: Daemon) -> Response:
    return Response(await daemon.metrics.render(), media_type=CONTENT_TYPE)


# ---- /v1 ------------------------------------------------------------------------------


@ops.get(
    "/v1/tree",
    "tree",
    "The live supervision tree (live children only).",
    answers={200: (answers.TreeNode, "The root node.")},
    errors=(400, 401, 500),
    scope=Scope("gateway", "tree"),
)
async def tree(daemon: Daemon, query: TreeQuery) -> Response:
    return json_answer(sv.snapshot(daemon.tree, limit=query.limit))


def _meter(daemon: Daemon, name: str) -> Meter:
    meter = daemon.accounts.meters.get(name)
    if meter is None:
        raise ApiError(404, "unknown_meter", f"no meter named {name!r}")
    return meter


@ops.get(
    "/v1/accounts/{account}/usage",
    "usage",
    "Usage of one account and meter per window, exact.",
    answers={200: (answers.Usage, "Rows for the windows that had usage.")},
    errors=READ_ERRORS,
    scope=ACCOUNT,
)
async def usage(daemon: Daemon, path: AccountPath, query: UsageQuery) -> Response:
    meter = _meter(daemon, query.meter)
    group_by = query.group_by
    if group_by is not None and group_by not in meter.dimensions:
        dims = ", ".join(meter.dimensions) or "none"
        raise bad_parameter(
            "group_by", f"must be a dimension of meter {meter.name!r} ({dims}), not {group_by!r}"
        )
    await daemon.known_account(path.account)
    rows = await daemon.accounts.usage(
        path.account, meter, query.from_, query.to, query.window, group_by
    )
    found = ((row.start, row.end, row.value, row.group) for row in rows)
    return json_answer(
        usage_answer(path.account, meter.name, query.window, query.from_, query.to, found)
    )


@ops.get(
    "/v1/accounts/{account}/events",
    "events",
    "The stored events of one account, in ingestion order (or newest first), paged.",
    answers={200: (answers.Events, "One page.")},
    errors=(400, 401, 404, 500),
    scope=ACCOUNT,
)
async def events(daemon: Daemon, path: AccountPath, query: EventsQuery) -> Response:
    if query.meter is not None:
        _meter(daemon, query.meter)
    await daemon.known_account(path.account)
    try:
        page = await daemon.store.reader.events(
            path.account,
            query.meter,
            query.from_,
            query.to,
            query.limit,
            query.cursor,
            newest_first=query.order == "desc",
            where=query.where(),
        )
    except InvalidCursor as error:
        raise bad_parameter("cursor", f"is not valid: {error}") from None
    found = [
        answers.Event(
            id=event.id,
            account=event.account,
            meter=event.meter,
            quantity=canonical_quantity(event.quantity),
            time=event.time,
            properties=dict(event.properties),
            producer=event.producer,
            received_at=event.received_at,
            status=UNSET if status == "counted" else cast(Any, status),
        )
        for event, status in zip(page.events, page.statuses, strict=True)
    ]
    return json_answer(answers.Events(events=found, next_cursor=page.next_cursor))


@ops.get(
    "/v1/quarantine",
    "quarantine",
    "Quarantined (poison) events, oldest first.",
    answers={200: (answers.Quarantine, "Quarantined events.")},
    errors=(400, 401, 500),
    scope=every_shard("quarantine"),
)
async def quarantine(daemon: Daemon, query: QuarantineQuery) -> Response:
    found = await daemon.store.reader.quarantined(query.account)
    return json_answer(
        answers.Quarantine(
            events=[
                answers.QuarantinedEvent(
                    account=q.account,
                    batch_id=q.batch_id,
                    event_id=q.event_id,
                    error=q.error,
                    at=q.at,
                )
                for q in found
            ]
        )
    )


# ---- operator actions -------------------------------------------------------------------


async def _target(daemon: Daemon, actor: str) -> tuple[str, sv.SupervisorCore, Hashable]:
    """``(path, supervisor, child id)`` of ``{actor}``; 404 or 409 if it cannot be acted on."""
    root = daemon.tree
    meters = daemon.accounts.supervisor
    if "/" not in actor:  # an account id: its meter actor
        path = f"{root.name}/accounts/meters/{actor}"
        try:
            meters.child_status(actor)
        except sv.NoSuchChild:
            if await daemon.store.reader.has_account(actor):
                raise ApiError(
                    409, "not_running", f"account {actor!r} is hibernated (no actor running)"
                ) from None
            raise ApiError(404, "unknown_actor", f"no account {actor!r}") from None
        return path, meters, actor
    try:
        sup, child_id = sv.find_child(root, actor.split("/"))
    except sv.NoSuchChild as error:
        raise ApiError(404, "unknown_actor", f"no actor {actor!r}: {error}") from None
    return actor, sup, child_id


def _would_stop_api(
    daemon: Daemon, sup: sv.SupervisorCore, child_id: Hashable, *, kill: bool
) -> bool:
    root = daemon.tree
    if sup is not root:
        return False
    ids = [info.id for info in root.which_children()]
    if child_id == daemon.api_child_id:
        return True
    if not kill or daemon.api_child_id not in ids:
        return False
    if root.strategy is sv.Strategy.ONE_FOR_ALL:
        return True
    return root.strategy is sv.Strategy.REST_FOR_ONE and ids.index(child_id) < ids.index(
        daemon.api_child_id
    )


def _kill_would_stop_api(
    daemon: Daemon, path: str, sup: sv.SupervisorCore, child_id: Hashable
) -> bool:
    """Whether killing ``path`` would reach the API: each supervisor on the way up that
    would give up (restart intensity) passes the exit to its parent; the first that would
    not restarts its child, which stops the API only at the root (:func:`_would_stop_api`)."""
    names = path.split("/")
    chain = [sv.find_child(daemon.tree, names[:depth]) for depth in range(2, len(names))]
    chain.append((sup, child_id))
    for level, level_child in reversed(chain):
        if not level.would_give_up():
            return _would_stop_api(daemon, level, level_child, kill=True)
    return True  # even the root would give up: the daemon stops


async def actor_action(daemon: Daemon, actor: str, action: Literal["restart", "kill"]) -> Response:
    path, sup, child_id = await _target(daemon, actor)
    if _would_stop_api(daemon, sup, child_id, kill=action == "kill"):
        raise ApiError(
            409,
            "would_stop_api",
            f"{action} of {path!r} would stop the API before it could answer",
        )
    if action == "kill" and _kill_would_stop_api(daemon, path, sup, child_id):
        raise ApiError(
            409,
            "would_stop_api",
            f"kill of {path!r} would make its supervisors give up (restart intensity)"
            " up to the root, which would stop the API before it could answer",
        )
    try:
        if action == "kill":
            await sup.kill_child(child_id)
        else:
            await sup.stop_and_restart_child(child_id)
    except (sv.NoSuchChild, sv.ChildNotRunning):  # it ended or hibernated meanwhile
        raise ApiError(409, "not_running", f"{path!r} is not running") from None
    except sv.SupervisorStopping:
        raise ApiError(409, "stopping", f"the supervisor of {path!r} is stopping") from None
    except sv.StartError as error:  # as OTP's restart_child: it stays stopped, not retried
        reason = f"{type(error.reason).__name__}: {error.reason}"
        raise ApiError(
            409, "start_failed", f"{path!r} was stopped but failed to start again: {reason}"
        ) from None
    try:
        status = sup.child_status(child_id).value
    except sv.NoSuchChild:
        status = "stopped"  # a temporary child, or one that hibernated at once
    return json_answer(answers.ActorAction(actor=path, action=action, status=cast(Any, status)))


_ACTION_ERRORS: Final = (401, 404, 409, 500)


@ops.post(
    "/v1/actors/{actor:path}/restart",
    "restartActor",
    "Stop the actor gracefully and start it again.",
    answers={200: (answers.ActorAction, "Done; the node's status after.")},
    errors=_ACTION_ERRORS,
    scope=ACTOR,
)
async def restart(daemon: Daemon, path: ActorPath) -> Response:
    return await actor_action(daemon, path.actor, "restart")


@ops.post(
    "/v1/actors/{actor:path}/kill",
    "killActor",
    "Kill the actor abruptly; its supervisor handles it as a crash.",
    answers={200: (answers.ActorAction, "Done; the node's status after.")},
    errors=_ACTION_ERRORS,
    scope=ACTOR,
)
async def kill(daemon: Daemon, path: ActorPath) -> Response:
    return await actor_action(daemon, path.actor, "kill")


__all__ = ["INGEST_NOT_ACCEPTING", "Daemon", "ops", "ready"]
