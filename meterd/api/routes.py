"""The routes of protocol.md §3 and the starlette application serving them.

Every ``/v1`` route checks the admin token first (:mod:`.auth`), then its parameters
(400 naming the first unknown or wrong one, :mod:`.params`), then that what it names exists (404),
then answers. Usage values and event quantities are exact decimal strings.

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

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import supervisors as sv
from meterd.config import Config
from meterd.model import Event, Meter, canonical_quantity
from meterd.store import InvalidCursor
from meterd.store.reader import MAX_EVENTS_LIMIT

from . import billing
from .auth import require_admin
from .bodies import usage_body
from .errors import ApiError, bad_parameter, exception_handlers
from .metrics import CONTENT_TYPE, Metrics
from .openapi import openapi_document
from .params import Query, check_known, usage_query

if TYPE_CHECKING:
    from meterd.accounts.service import Accounts
    from meterd.billing import Billing, BillingGraphQL
    from meterd.ingest.server import IngestServer
    from meterd.store import Store

DEFAULT_TREE_LIMIT: Final = 100
MAX_TREE_LIMIT: Final = 10_000
DEFAULT_EVENTS_LIMIT: Final = 100

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class Daemon:
    """What the routes read: the daemon's parts (the tree is set once it is built)."""

    config: Config
    accounts: Accounts
    store: Store
    ingest: IngestServer
    metrics: Metrics
    root: sv.Supervisor | None = None
    api_child_id: Hashable = "api"
    billing: Billing | None = None
    graphql: BillingGraphQL | None = None  # the one GraphQL endpoint (its bound on queries)

    @property
    def tree(self) -> sv.Supervisor:
        if self.root is None:
            raise RuntimeError("the API is not attached to a tree")
        return self.root

    async def known_account(self, account: str) -> None:
        """404 unless the store (or a running actor) has seen ``account``.

        Checked before anything wakes the account: a query must not start actors for
        accounts that do not exist.
        """
        if account in self.accounts.registry or await self.store.reader.has_account(account):
            return
        raise ApiError(404, "unknown_account", f"no account {account!r} is known to the store")


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
        problems.append("ingest is not accepting connections")
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


async def healthz(daemon: Daemon, request: Request) -> Response:
    problems = ready(daemon)
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, 503)
    return JSONResponse({"status": "ok"})


async def metrics(daemon: Daemon, request: Request) -> Response:
    return Response(await daemon.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(daemon: Daemon, request: Request) -> Response:
    return JSONResponse(openapi_document())


# ---- /v1 ------------------------------------------------------------------------------


async def tree(daemon: Daemon, request: Request) -> Response:
    query = Query(request.query_params)
    limit = query.integer("limit", low=0, high=MAX_TREE_LIMIT, default=DEFAULT_TREE_LIMIT)
    return JSONResponse(sv.snapshot(daemon.tree, limit=limit))


def _meter(daemon: Daemon, name: str) -> Meter:
    meter = daemon.accounts.meters.get(name)
    if meter is None:
        raise ApiError(404, "unknown_meter", f"no meter named {name!r}")
    return meter


async def usage(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    meter_name, from_ms, to_ms, window, group_by = usage_query(request.query_params)
    meter = _meter(daemon, meter_name)
    if group_by is not None and group_by not in meter.dimensions:
        dims = ", ".join(meter.dimensions) or "none"
        raise bad_parameter(
            "group_by", f"must be a dimension of meter {meter.name!r} ({dims}), not {group_by!r}"
        )
    await daemon.known_account(account)
    rows = await daemon.accounts.usage(account, meter, from_ms, to_ms, window, group_by)
    answer = ((row.start, row.end, row.value, row.group) for row in rows)
    return JSONResponse(usage_body(account, meter.name, window, from_ms, to_ms, answer))


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "account": event.account,
        "meter": event.meter,
        "quantity": canonical_quantity(event.quantity),
        "time": event.time,
        "properties": dict(event.properties),
        "producer": event.producer,
        "received_at": event.received_at,
    }


async def events(daemon: Daemon, request: Request) -> Response:
    account = request.path_params["account"]
    query = Query(request.query_params)
    meter_name = query.text("meter")
    from_ms, to_ms = query.span()
    limit = query.integer("limit", low=1, high=MAX_EVENTS_LIMIT, default=DEFAULT_EVENTS_LIMIT)
    cursor = query.text("cursor")
    if meter_name is not None:
        _meter(daemon, meter_name)
    await daemon.known_account(account)
    try:
        page = await daemon.store.reader.events(account, meter_name, from_ms, to_ms, limit, cursor)
    except InvalidCursor as error:
        raise bad_parameter("cursor", f"is not valid: {error}") from None
    return JSONResponse(
        {"events": [event_json(e) for e in page.events], "next_cursor": page.next_cursor}
    )


async def quarantine(daemon: Daemon, request: Request) -> Response:
    account = Query(request.query_params).text("account")
    found = await daemon.store.reader.quarantined(account)
    return JSONResponse(
        {
            "events": [
                {
                    "account": q.account,
                    "batch_id": q.batch_id,
                    "event_id": q.event_id,
                    "error": q.error,
                    "at": q.at,
                }
                for q in found
            ]
        }
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


async def actor_action(daemon: Daemon, request: Request, action: str) -> Response:
    actor = request.path_params["actor"]
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
    return JSONResponse({"actor": path, "action": action, "status": status})


async def restart(daemon: Daemon, request: Request) -> Response:
    return await actor_action(daemon, request, "restart")


async def kill(daemon: Daemon, request: Request) -> Response:
    return await actor_action(daemon, request, "kill")


# ---- the application ----------------------------------------------------------------------


def _route(
    daemon: Daemon,
    path: str,
    handler: Callable[[Daemon, Request], Awaitable[Response]],
    method: str = "GET",
    *,
    params: frozenset[str] = frozenset(),
    admin: bool = True,
    post: Callable[[Daemon, Request], Awaitable[Response]] | None = None,
) -> Route:
    """``handler`` for ``method`` on ``path`` (and ``post`` for POST on the same path: one
    route per path, so a 405 lists every method the path has)."""

    async def endpoint(request: Request) -> Response:
        if admin:
            require_admin(request, daemon.config.api)
        if post is not None and request.method == "POST":
            check_known(request.query_params, frozenset())
            return await post(daemon, request)
        check_known(request.query_params, params)
        return await handler(daemon, request)

    endpoint.__name__ = handler.__name__
    return Route(path, endpoint, methods=[method] if post is None else [method, "POST"])


def _billing_routes(daemon: Daemon) -> list[Route]:
    """Billing support (docs/billing.md, :mod:`.billing`)."""
    invoice = "/v1/accounts/{account}/invoices/{period}"
    page = frozenset({"limit", "cursor", "audit_cursor"})
    usage_params = frozenset({"meter", "from", "to", "window", "group_by"})
    return [
        _route(daemon, invoice, billing.invoice),
        _route(daemon, f"{invoice}/restatements", billing.restatements),
        _route(
            daemon, f"{invoice}/lines/{{line}}/explanation", billing.line_explanation, params=page
        ),
        _route(
            daemon,
            "/v1/accounts/{account}/usage/explanation",
            billing.usage_explanation,
            params=page | {"meter", "start", "window", "group_by", "group"},
        ),
        _route(
            daemon, "/v1/accounts/{account}/usage/billed", billing.billed_usage, params=usage_params
        ),
        _route(
            daemon,
            "/v1/accounts/{account}/adjustments",
            billing.adjustments,
            params=frozenset({"meter", "from", "to"}),
            post=billing.adjust,
        ),
        _route(daemon, "/v1/accounts/{account}/voids", billing.voids),
        _route(daemon, "/v1/accounts/{account}/events/{event}/void", billing.void, "POST"),
        _route(daemon, "/v1/periods/{period}/close", billing.close_period, "POST"),
        _route(daemon, "/v1/graphql", billing.graphql, "POST"),
    ]


def build_app(daemon: Daemon) -> Starlette:
    """The ASGI application of the operator API (see the module doc)."""
    routes = [
        _route(daemon, "/healthz", healthz, admin=False),
        _route(daemon, "/metrics", metrics, admin=False),
        _route(daemon, "/openapi.json", openapi, admin=False),
        _route(daemon, "/v1/tree", tree, params=frozenset({"limit"})),
        _route(
            daemon,
            "/v1/accounts/{account}/usage",
            usage,
            params=frozenset({"meter", "from", "to", "window", "group_by"}),
        ),
        _route(
            daemon,
            "/v1/accounts/{account}/events",
            events,
            params=frozenset({"meter", "from", "to", "limit", "cursor"}),
        ),
        _route(daemon, "/v1/quarantine", quarantine, params=frozenset({"account"})),
        _route(daemon, "/v1/actors/{actor:path}/restart", restart, "POST"),
        _route(daemon, "/v1/actors/{actor:path}/kill", kill, "POST"),
        *_billing_routes(daemon),
    ]
    return Starlette(routes=routes, exception_handlers=exception_handlers())
