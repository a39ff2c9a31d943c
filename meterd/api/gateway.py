"""The operator API across owner processes: the gateway's starlette application.

With ``[partitions] owners >= 1`` the accounts live in shards (fixed groups of partitions),
each a *cell* in an owner process with its own daemon and API application answering every
route for its accounts. The gateway serves the public API (protocol.md §3, docs/api.md) and
reaches the cells through :class:`meterd.partitions.Owners`: ``ask(shard, "http", args)``
runs a request through that shard's application (the query contract of docs/partitions.md,
"API across owners").

How each operation is answered is declared once, on the operation (its
:class:`~.operations.Scope`); :func:`build_gateway_app` derives the routing from it:

* ``account``: the admin token and the path are checked here, then the request goes to
  the shard of ``{account}`` as it came (headers, query string, body) and its answer comes
  back as it went (status, body, the headers that matter);
* ``actor``: an account id goes to its shard; a node path goes to the shard whose
  ``shard-SSS`` node it passes through, the path rebased on that cell's tree, and the
  answer's paths are written back in the gateway's tree;
* ``shards``: every shard is asked (at once), the answers merged by the named merge
  (:data:`MERGES`);
* ``find``: every shard is asked, the one that does not answer 404 has it;
* ``graphql``: the shard of the account the query names (one per query);
* ``gateway``: answered here (the configuration, the document, the tree).

A shard whose owner does not answer is never answered for silently: a route of one shard
answers 503 ``owner_unavailable`` naming the shard and its owner; a route of every shard
answers 503 ``shards_unavailable`` naming each missing one rather than a partial answer.
``/metrics`` is the exception: a scrape stays useful with an owner down, so it answers what
it has and says which shards are missing in ``meterd_shard_up``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlencode

import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as _Sample
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

import supervisors as sv
from meterd.billing import Period
from meterd.config import Config
from meterd.ingest.observe import ACK_LATENCY_BUCKETS
from meterd.partitions import Owners, OwnerUnavailable, owner_of_shard, shard_of

from .answers import json_answer
from .auth import require_admin
from .bodies import read_body
from .console import TICK, _resident_bytes, asset, index
from .daemon import Daemon
from .errors import ApiError, bad_parameter, exception_handlers
from .live import LIVE_INTERVAL, LiveUsage, authorise, serve_live
from .metrics import CONTENT_TYPE
from .models import MAX_NODES_LIMIT, AccountPath, NodesQuery, TreeQuery
from .openapi import OPERATIONS
from .operations import Operation, parse
from .routes import INGEST_NOT_ACCEPTING

if TYPE_CHECKING:
    from meterd.ingest.server import IngestServer

log = structlog.get_logger("meterd.api.gateway")

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds an owner has to answer one request (a scrape, a page, an invoice)."""

_SHARD_NODE: Final = re.compile(r"shard-([0-9]{3,})")
_DROPPED_REQUEST: Final = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}
)
_DROPPED_ANSWER: Final = frozenset({"content-length", "transfer-encoding", "date", "server"})
_NOT_SUMMED: Final = frozenset({"process_start_time_seconds", "process_max_fds"})
"""Gauges whose sum over processes means nothing: only their per-owner series are kept."""
_MAXED: Final = frozenset({"meterd_alert_oldest_undelivered_seconds"})
"""Gauges of an age: over processes, the oldest."""
_PROCESS_WIDE: Final = ("process_", "python_", "meterd_gc_")


# ---- what an owner answered -------------------------------------------------------------


@dataclass(slots=True)
class Forwarded:
    """A cell's answer to a forwarded request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def response(self, body: bytes | None = None) -> Response:
        headers = {k: v for k, v in self.headers if k not in _DROPPED_ANSWER}
        return Response(self.body if body is None else body, self.status, headers)


@dataclass(frozen=True, slots=True)
class Fanned:
    """Every shard's answer (``found``, by shard) and the shards that did not answer."""

    found: dict[int, Forwarded]
    missing: list[Missing]


@dataclass(frozen=True, slots=True)
class Missing:
    """A shard that did not answer: its owner, and why."""

    shard: int
    owner: int
    reason: str


class ShardsUnavailable(Exception):
    def __init__(self, missing: Sequence[Missing]) -> None:
        super().__init__(", ".join(f"shard {m.shard}: {m.reason}" for m in missing))
        self.missing = sorted(missing, key=lambda m: m.shard)

    def error(self, *, fan_out: bool, done: str = "") -> ApiError:
        """The 503 of docs/api.md ("Across owner processes")."""
        grouped: dict[tuple[int, str], list[int]] = {}  # an owner's shards fail together
        for m in self.missing:
            grouped.setdefault((m.owner, m.reason), []).append(m.shard)
        where = "; ".join(
            f"owner-{owner} {reason}"
            + (f" (shards {', '.join(map(str, held))})" if len(grouped) > 1 else "")
            for (owner, reason), held in grouped.items()
        )
        advice = (
            "retry shortly (an owner that died is restarted by its supervisor); if it"
            " persists, GET /v1/tree shows the owner processes and their restarts, and the"
            " daemon log says why"
        )
        if not fan_out:
            m = self.missing[0]
            return ApiError(
                503,
                "owner_unavailable",
                f"shard {m.shard}, which holds this account, did not answer: its owner"
                f" owner-{m.owner} {m.reason}; {advice}",
            )
        shards = ", ".join(str(m.shard) for m in self.missing)
        return ApiError(
            503,
            "shards_unavailable",
            f"shards {shards} did not answer ({where}); this answer needs every shard, so"
            f" none is given rather than a partial one{done}; {advice}",
        )


def _missing(owners: Owners, shard: int, error: Exception) -> Missing:
    owner = owner_of_shard(shard, owners.partitions)
    if isinstance(error, OwnerUnavailable):
        return Missing(shard, owner, f"is unavailable ({error.reason})")
    return Missing(shard, owner, f"answered an error ({error})")


# ---- the gateway ---------------------------------------------------------------------------


@dataclass
class Gateway:
    """What the gateway's routes read: the configuration, the owners, its own tree."""

    config: Config
    owners: Owners
    root: sv.SupervisorCore | Callable[[], sv.SupervisorCore] | None = None
    registry: CollectorRegistry | None = None
    timeout: float = DEFAULT_TIMEOUT
    ingest: Callable[[], Mapping[str, Any]] | None = None
    _cell_roots: dict[int, str] = field(default_factory=dict)

    @property
    def tree(self) -> sv.SupervisorCore | None:
        """The gateway's own tree (None until it is built, or without one)."""
        root = self.root
        if root is None or isinstance(root, sv.SupervisorCore):
            return root
        try:
            return root()
        except RuntimeError:  # not built yet
            return None

    @property
    def shards(self) -> range:
        return range(self.owners.partitions.shards)

    def shard_of(self, account: str) -> int:
        return shard_of(account, self.owners.partitions)

    def owner_of(self, shard: int) -> int:
        return owner_of_shard(shard, self.owners.partitions)

    # ---- asking the cells ----

    async def ask(
        self,
        shard: int,
        method: str,
        path: str,
        query: str = "",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Forwarded:
        """``method path?query`` through ``shard``'s application; :class:`ShardsUnavailable`
        when its owner does not answer."""
        args = {
            "method": method,
            "path": path,
            "query": query,
            "headers": [[k, v] for k, v in headers],
            "body": body,
        }
        try:
            value = await self.owners.ask(shard, "http", args, self.timeout)
            return Forwarded(
                int(value["status"]),
                [(str(k).lower(), str(v)) for k, v in value["headers"]],
                bytes(value["body"]),
            )
        except (OwnerUnavailable, RuntimeError) as error:
            log.warning("api_shard_unavailable", shard=shard, path=path, error=str(error))
            raise ShardsUnavailable([_missing(self.owners, shard, error)]) from None
        except (KeyError, TypeError, ValueError) as error:  # an answer not of the contract
            missing = Missing(shard, self.owner_of(shard), f"answered malformed ({error!r})")
            raise ShardsUnavailable([missing]) from None

    async def forward(
        self, shard: int, request: Request, *, path: str | None = None, query: str | None = None
    ) -> Forwarded:
        """``request`` to ``shard`` as it came (its body read within bounds); a HEAD as a
        GET (its body is needed to merge; the server sends none for a HEAD)."""
        body = await read_body(request) if request.method in ("POST", "PUT", "PATCH") else b""
        return await self.ask(
            shard,
            "GET" if request.method == "HEAD" else request.method,
            request.url.path if path is None else path,
            request.url.query if query is None else query,
            _headers(request),
            body,
        )

    async def each(
        self,
        shards: Iterable[int],
        ask: Callable[[int], Awaitable[Forwarded]],
        *,
        partial: bool = False,
    ) -> Fanned:
        """``ask(shard)`` for every shard at once; the answers by shard. Raises
        :class:`ShardsUnavailable` naming every shard that did not answer, unless
        ``partial`` (then they are left out)."""
        found: dict[int, Forwarded] = {}
        missing: list[Missing] = []

        async def one(shard: int) -> None:
            try:
                found[shard] = await ask(shard)
            except ShardsUnavailable as error:
                missing.extend(error.missing)

        async with trio.open_nursery() as nursery:
            for shard in shards:
                nursery.start_soon(one, shard)
        if missing and not partial:
            raise ShardsUnavailable(missing)
        return Fanned(dict(sorted(found.items())), sorted(missing, key=lambda m: m.shard))

    async def each_json(
        self, request: Request, query: str | None = None, shards: Iterable[int] | None = None
    ) -> dict[int, Any]:
        """``request`` (a GET) asked of every shard: the JSON answers by shard, or the first
        error answer as it is (every shard checks the same parameters the same way)."""
        answers = await self.each(
            self.shards if shards is None else shards,
            lambda s: self.forward(s, request, query=query),
        )
        for answer in answers.found.values():
            if answer.status != 200:
                raise _Passed(answer)
        return {shard: answer.json() for shard, answer in answers.found.items()}

    # ---- paths in the gateway's tree ----

    def root_name(self) -> str:
        tree = self.tree
        return "root" if tree is None else tree.name

    def owner_path(self, owner: int) -> str:
        """The path of ``owner-K``'s node in the gateway's tree (under the root when the
        gateway has no such node)."""
        name = f"owner-{owner}"
        tree = self.tree
        if tree is not None:
            stack: list[tuple[str, sv.SupervisorCore]] = [(tree.name, tree)]
            while stack:
                path, sup = stack.pop(0)
                for info in sup.iter_children():
                    if info.name == name:
                        return f"{path}/{name}"
                    if isinstance(info.ref, sv.SupervisorCore) and not isinstance(
                        info.ref, sv.DynamicSupervisor
                    ):
                        stack.append((f"{path}/{info.name}", info.ref))
        return f"{self.root_name()}/{name}"

    def shard_path(self, shard: int) -> str:
        """The path of ``shard``'s cell in the gateway's tree."""
        return f"{self.owner_path(self.owner_of(shard))}/shard-{shard:03d}"

    async def cell_root(self, shard: int) -> str:
        """The name of the root of ``shard``'s cell tree (asked once)."""
        name = self._cell_roots.get(shard)
        if name is None:
            answer = await self.ask(shard, "GET", "/v1/tree", "limit=0", self._admin())
            if answer.status != 200:
                raise _Passed(answer)
            name = self._cell_roots[shard] = str(answer.json()["name"])
        return name

    def _admin(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.config.api.admin_token}")]

    def to_gateway(self, shard: int, cell_root: str, path: str) -> str:
        """A node path of ``shard``'s cell as a path of the gateway's tree."""
        if path == cell_root or path.startswith(cell_root + "/"):
            return self.shard_path(shard) + path[len(cell_root) :]
        return path

    def shard_in(self, names: Sequence[str]) -> tuple[int, int] | None:
        """``(shard, position)`` of the first ``shard-SSS`` name of a node path."""
        for position, name in enumerate(names):
            found = _SHARD_NODE.fullmatch(name)
            if found is not None and int(found[1]) in self.shards:
                return int(found[1]), position
        return None


class _Passed(Exception):
    """A cell's error answer, passed to the caller as it is."""

    def __init__(self, answer: Forwarded) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _headers(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.headers.items() if k not in _DROPPED_REQUEST]


# ---- the application -------------------------------------------------------------------------

Handler = Callable[[Gateway, Operation, Request], Awaitable[Response]]


def build_gateway_app(
    config: Config,
    owners: Owners,
    *,
    root: sv.SupervisorCore | Callable[[], sv.SupervisorCore] | None = None,
    registry: CollectorRegistry | None = None,
    ingest: Callable[[], Mapping[str, Any]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Starlette:
    """The operator API (protocol.md §3) of a gateway whose shards are in ``owners``.

    ``root`` is the gateway's own supervision tree, or a function that returns it (the API
    is built before the tree that holds it) (``/v1/tree``, with each owner's tree grafted
    under its ``owner-K`` node); ``registry`` its own metrics (``/metrics`` adds
    every shard's); ``ingest`` its ingest counters for the console (added to the shards'
    :class:`~.console.IngestSnapshot`); ``timeout`` the seconds an owner has to answer."""
    gateway = Gateway(config, owners, root, registry, timeout, ingest)
    by_route: dict[str, list[Operation]] = {}
    for operation in OPERATIONS:
        by_route.setdefault(operation.route, []).append(operation)
    routes: list[BaseRoute] = [
        _route(gateway, route, operations) for route, operations in by_route.items()
    ]
    routes += [
        Route("/", index, methods=["GET"]),
        Route("/console/{name}", asset, methods=["GET"]),
        Route("/v1/console/stream", _stream, methods=["GET"]),
        WebSocketRoute("/v1/accounts/{account}/usage/live", _live),
    ]
    app = Starlette(routes=routes, exception_handlers=exception_handlers())
    app.state.gateway = gateway
    return app


def handler_of(operation: Operation) -> Handler:
    """How the gateway answers ``operation``, from its declared scope; ``LookupError``
    when it has none or names no known merge."""
    scope = operation.scope
    if scope is None:
        raise LookupError(
            f"operation {operation.id} ({operation.method} {operation.route}) declares no"
            " scope: say how it is answered across owner processes (operations.Scope)"
        )
    if scope.kind in ("shards", "gateway") and scope.merge is not None:
        merges = MERGES if scope.kind == "shards" else OWN
        if scope.merge not in merges:
            raise LookupError(f"operation {operation.id}: no {scope.kind} merge {scope.merge!r}")
        return merges[scope.merge]
    return KINDS[scope.kind]


def _route(gateway: Gateway, route: str, operations: Sequence[Operation]) -> Route:
    by_method = {operation.method: (operation, handler_of(operation)) for operation in operations}

    async def endpoint(request: Request) -> Response:
        operation, handler = by_method["GET" if request.method == "HEAD" else request.method]
        if operation.admin:
            require_admin(request, gateway.config.api)
        try:
            return await handler(gateway, operation, request)
        except _Passed as passed:
            return passed.answer.response()
        except ShardsUnavailable as error:
            fan_out = operation.scope is not None and operation.scope.kind in ("shards", "find")
            raise error.error(fan_out=fan_out) from None

    endpoint.__name__ = operations[0].handler.__name__
    return Route(route, endpoint, methods=list(by_method))


# ---- one shard ---------------------------------------------------------------------------------


async def _account(gateway: Gateway, operation: Operation, request: Request) -> Response:
    path = parse(operation.path_model, request.path_params)
    account: str = cast(AccountPath, path).account  # every account route's path names it
    return (await gateway.forward(gateway.shard_of(account), request)).response()


_PATH_FIELDS: Final = ("actor", "path")


async def _actor(gateway: Gateway, operation: Operation, request: Request) -> Response:
    actor: str = request.path_params["actor"]
    prefix = "/v1/actors/"
    suffix = request.url.path[len(prefix) + len(actor) :]  # /kill, /restart, /status
    if "/" not in actor:
        shard = gateway.shard_of(actor)
        answer = await gateway.forward(shard, request)
    else:
        names = actor.split("/")
        found = gateway.shard_in(names)
        if found is None:
            own = gateway.tree
            if own is None or names[0] != own.name:
                raise ApiError(
                    404,
                    "unknown_actor",
                    f"no actor {actor!r}: a node path starts at {gateway.root_name()!r}, and"
                    " a node of an owner's shard goes through its shard-SSS node (see GET"
                    " /v1/tree/nodes)",
                )
            # A node of the gateway's own tree (an owner process, ingest): the operation's
            # own handler on that tree, with its refusals (the API itself, or a kill that
            # would stop it: 409 would_stop_api).
            return await operation.call(_own_tree(gateway, own), request)
        shard, position = found
        cell = "/".join([await gateway.cell_root(shard), *names[position + 1 :]])
        answer = await gateway.forward(shard, request, path=prefix + cell + suffix)
    if answer.status != 200:
        return answer.response()
    document = answer.json()
    cell_root = await gateway.cell_root(shard)
    for name in _PATH_FIELDS:
        if isinstance(document.get(name), str):
            document[name] = gateway.to_gateway(shard, cell_root, document[name])
    return answer.response(msgspec.json.encode(document))


async def _find(gateway: Gateway, operation: Operation, request: Request) -> Response:
    body = await read_body(request) if request.method == "POST" else b""
    headers = _headers(request)
    fanned = await gateway.each(
        gateway.shards,
        lambda s: gateway.ask(
            s, request.method, request.url.path, request.url.query, headers, body
        ),
        partial=True,
    )
    for answer in fanned.found.values():
        if answer.status != 404:
            return answer.response()
    missing = fanned.missing
    if missing:  # it may be in a shard that did not answer
        raise ShardsUnavailable(missing)
    if fanned.found:
        return next(iter(fanned.found.values())).response()
    raise ApiError(404, "not_found", f"nothing at {request.url.path!r} in any shard")


async def _graphql(gateway: Gateway, operation: Operation, request: Request) -> Response:
    body = await read_body(request)
    accounts = graphql_accounts(body)
    shards = sorted({gateway.shard_of(a) for a in accounts})
    if len(shards) > 1:
        message = (
            f"this query names accounts of different shards ({', '.join(sorted(accounts))}):"
            " across owner processes a query is answered by one account's shard; send one"
            " query per account"
        )
        document = {"errors": [{"message": message, "extensions": {"code": "several_shards"}}]}
        return json_answer(document, 400)
    shard = shards[0] if shards else 0  # no account: the schema, the same in every shard
    answer = await gateway.ask(
        shard, "POST", request.url.path, request.url.query, _headers(request), body
    )
    return answer.response()


def graphql_accounts(body: bytes) -> set[str]:
    """The ids of the ``account(id:)`` fields a GraphQL request's query asks for (literal,
    variables, or a variable's default), whether written in the operation or in a fragment
    it spreads (named or inline) at its root; empty when it names none or is not a query
    (the cell then answers its error, as the single process does)."""
    from graphql import (
        FieldNode,
        FragmentDefinitionNode,
        FragmentSpreadNode,
        InlineFragmentNode,
        OperationDefinitionNode,
        SelectionSetNode,
        StringValueNode,
        VariableNode,
    )
    from graphql import parse as parse_graphql
    from graphql.error import GraphQLError

    try:
        request = json.loads(body)
        document = parse_graphql(request["query"])
    except (ValueError, KeyError, TypeError, GraphQLError, RecursionError):
        return set()
    given = request.get("variables") if isinstance(request, dict) else None
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    found: set[str] = set()
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        variables: dict[str, Any] = {
            d.variable.name.value: d.default_value.value
            for d in definition.variable_definitions or ()
            if isinstance(d.default_value, StringValueNode)
        }
        if isinstance(given, dict):
            variables.update(given)
        spread: set[str] = set()  # fragments walked (a cycle is the cell's error to answer)
        stack: list[SelectionSetNode] = [definition.selection_set]
        while stack:
            for selection in stack.pop().selections:
                if isinstance(selection, InlineFragmentNode):
                    stack.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in fragments and name not in spread:
                        spread.add(name)
                        stack.append(fragments[name].selection_set)
                elif isinstance(selection, FieldNode) and selection.name.value == "account":
                    for argument in selection.arguments or ():
                        value = argument.value
                        if argument.name.value != "id":
                            continue
                        if isinstance(value, StringValueNode):
                            found.add(value.value)
                        elif isinstance(value, VariableNode):
                            named = variables.get(value.name.value)
                            if isinstance(named, str):
                                found.add(named)
    return found


def _own_tree(gateway: Gateway, tree: sv.SupervisorCore) -> Daemon:
    """The gateway's own tree as the actor handlers read a daemon: no accounts (a bare
    account id never comes here), no stored restart history, the API child ``api``."""
    return cast(
        Daemon,
        SimpleNamespace(
            config=gateway.config,
            root=tree,
            tree=tree,
            api_child_id="api",
            accounts=SimpleNamespace(supervisor=None),
            restarts=None,
        ),
    )


async def _own(gateway: Gateway, operation: Operation, request: Request) -> Response:
    """An operation whose handler reads only the configuration (the document, the alert
    rules, the console's names): its own handler, on the gateway's configuration."""
    stand_in = cast(Daemon, SimpleNamespace(config=gateway.config))
    return await operation.call(stand_in, request)


KINDS: Final[Mapping[str, Handler]] = {
    "account": _account,
    "actor": _actor,
    "find": _find,
    "graphql": _graphql,
    "gateway": _own,
}


# ---- live usage (a websocket) -------------------------------------------------------------------


class LiveUnreadable(Exception):
    """The account's shard answered the live route's summary with an error."""


class _Ticks:
    """The live route's "next change" across owners: the gateway hears of no commit, so it
    asks the shard again every ``interval`` (an event set, then replaced, each time)."""

    def __init__(self) -> None:
        self._next = trio.Event()

    def next(self) -> trio.Event:
        return self._next

    async def run(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self._next.set()
            self._next = trio.Event()


async def _live(websocket: WebSocket) -> None:
    """``/v1/accounts/{account}/usage/live`` across owners (docs/api.md, "Live usage"): the
    token checked here as in one process, then the values of the account's shard's
    ``/usage/summary`` for the month, asked every ``LIVE_INTERVAL`` and sent when they
    changed (so a change reaches the client within about one interval, as in one process;
    an unchanged value is never sent again)."""
    gateway: Gateway = websocket.app.state.gateway
    account: str = websocket.path_params["account"]
    who = await authorise(websocket, gateway.config.api, account)
    if who is None:
        return
    shard = gateway.shard_of(account)
    path = f"/v1/accounts/{account}/usage/summary"

    async def snapshot() -> LiveUsage:
        now = time.time_ns() // 1_000_000
        period = Period.containing(now)
        query = urlencode({"from": period.start_ms, "to": period.end_ms, "window": "month"})
        answer = await gateway.ask(shard, "GET", path, query, gateway._admin())
        if answer.status == 200:
            values = {m["meter"]: m["total"] for m in answer.json()["meters"]}
        elif answer.status == 404 and _code(answer) == "unknown_account":
            values = {meter.name: None for meter in gateway.config.meters}
        else:
            raise LiveUnreadable(f"shard {shard} answered {answer.status}: {_code(answer)}")
        return LiveUsage.of(account, period, now, values)

    ticks = _Ticks()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticks.run, LIVE_INTERVAL)
        await serve_live(
            websocket, account, who, snapshot, ticks.next, (ShardsUnavailable, LiveUnreadable)
        )
        nursery.cancel_scope.cancel()


# ---- the gateway's own tree, with the owners' grafted ---------------------------------------


def _node(name: str, pid: int | None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "name": name,
        "kind": "worker",
        "status": "running" if pid is not None else "restarting",
        "restarts": 0,
        "started_at": None,
        "children": [],
        "children_total": 0,
    }
    if pid is not None:
        node["pid"] = pid
    return node


def _find_node(node: dict[str, Any], name: str) -> dict[str, Any] | None:
    stack = [node]
    while stack:
        here = stack.pop()
        if here["name"] == name and here is not node:
            return here
        stack.extend(here.get("children", ()))
    return None


async def _tree(gateway: Gateway, operation: Operation, request: Request) -> Response:
    query = parse(TreeQuery, request.query_params)
    own = gateway.tree
    if own is not None:
        tree = sv.snapshot(own, limit=query.limit)
    else:
        tree = {
            "name": "root",
            "kind": "supervisor",
            "strategy": "one_for_one",
            "status": "running",
            "restarts": 0,
            "started_at": None,
            "children": [],
            "children_total": 0,
        }
    snapshots = await gateway.owners.trees(query.limit, 10_000, gateway.timeout)
    pids = gateway.owners.pids()
    for owner in range(gateway.owners.partitions.owners):
        name = f"owner-{owner}"
        node = _find_node(tree, name)
        if node is None:  # the gateway's tree has no node for it: shown under the root
            node = _node(name, pids[owner] if owner < len(pids) else None)
            tree["children"].append(node)
            tree["children_total"] += 1
        snapshot = snapshots[owner] if owner < len(snapshots) else None
        if snapshot is None:
            node["unavailable"] = "the owner did not send its tree in time"
            continue
        node.setdefault("pid", snapshot.pid)
        grafted = snapshot.tree.get("children", [])
        node["children"] = list(grafted)
        node["children_total"] = snapshot.tree.get("children_total", len(grafted))
    return json_answer(tree)


OWN: Final[Mapping[str, Handler]] = {"tree": _tree}


# ---- merges of every shard's answer -----------------------------------------------------------


async def _health(gateway: Gateway, operation: Operation, request: Request) -> Response:
    fanned = await gateway.each(gateway.shards, lambda s: gateway.forward(s, request), partial=True)
    problems: list[str] = []
    own = gateway.tree
    if own is not None:
        if not own.running:
            problems.append("the gateway's supervision tree is not running")
        problems += [
            f"{info.id} is {info.status.value}"
            for info in own.which_children()
            if info.status is not sv.ChildStatus.RUNNING
        ]
    for m in fanned.missing:
        problems.append(f"shard {m.shard} (owner-{m.owner}) {m.reason}")
    for shard, answer in fanned.found.items():
        if answer.status != 200:
            problems += [
                f"shard {shard}: {p}"
                for p in answer.json().get("problems", [])
                if p != INGEST_NOT_ACCEPTING  # a cell takes no producers: the gateway does
            ]
    if problems:
        return json_answer({"status": "unavailable", "problems": problems}, 503)
    return json_answer({"status": "ok"})


async def _quarantine(gateway: Gateway, operation: Operation, request: Request) -> Response:
    account = request.query_params.get("account")
    shards = [gateway.shard_of(account)] if account else None
    found = await gateway.each_json(request, shards=shards)
    events = [e for answer in found.values() for e in answer["events"]]
    events.sort(key=lambda e: (e["at"], e["account"], e["batch_id"], e["event_id"]))
    return json_answer({"events": events})


async def _accounts(gateway: Gateway, operation: Operation, request: Request) -> Response:
    from .models import AccountsQuery

    query = parse(AccountsQuery, request.query_params)
    found = await gateway.each_json(request)
    rows = sorted(
        (row for a in found.values() for row in a["accounts"]), key=lambda r: r["account"]
    )
    more = len(rows) > query.limit or any(a["next_after"] is not None for a in found.values())
    page = rows[: query.limit]
    next_after = page[-1]["account"] if more and page else None
    return json_answer({"accounts": page, "next_after": next_after})


async def _deliveries(gateway: Gateway, operation: Operation, request: Request) -> Response:
    from .alerts import DeliveriesQuery

    query = parse(DeliveriesQuery, request.query_params)
    shards = [gateway.shard_of(query.account)] if query.account else None
    found = await gateway.each_json(request, shards=shards)
    rows = [d for answer in found.values() for d in answer["deliveries"]]
    rows.sort(key=lambda d: (d["created_at"], d["id"]))
    counts: dict[str, int] = {}
    oldest: int | None = None
    for answer in (found if shards is None else await gateway.each_json(request)).values():
        for status, count in answer["counts"].items():
            counts[status] = counts.get(status, 0) + count
        age = answer["oldest_undelivered_ms"]
        oldest = age if oldest is None or (age is not None and age > oldest) else oldest
    return json_answer(
        {"deliveries": rows[: query.limit], "counts": counts, "oldest_undelivered_ms": oldest}
    )


async def _close(gateway: Gateway, operation: Operation, request: Request) -> Response:
    """Every shard closes the month. A shard that had closed it already (a retry after a
    partial failure) counts as closed; the answer's ``accounts`` are those this call closed.
    With a shard missing the answer is 503 naming it: the others stay closed, and the same
    request again closes the rest."""
    body = await read_body(request)
    headers = _headers(request)
    fanned = await gateway.each(
        gateway.shards,
        lambda s: gateway.ask(s, "POST", request.url.path, request.url.query, headers, body),
        partial=True,
    )
    closed = [a.json() for a in fanned.found.values() if a.status == 200]
    already = [a for a in fanned.found.values() if a.status == 409 and _code(a) == "already_closed"]
    other = [a for a in fanned.found.values() if a.status != 200 and a not in already]
    if other:
        return other[0].response()
    if fanned.missing:
        done = (
            f" ({len(closed)} other shards closed it now and {len(already)} had already; they"
            " stay closed, and the same request again closes the rest)"
        )
        raise ShardsUnavailable(fanned.missing).error(fan_out=True, done=done)
    if not closed:  # closed before in every shard: as the single process answers
        return already[0].response()
    first = closed[0]
    return json_answer(
        {
            "period": first["period"],
            "by": first["by"],
            "at": max(c["at"] for c in closed),
            "accounts": sum(c["accounts"] for c in closed),
        }
    )


def _code(answer: Forwarded) -> str | None:
    try:
        return str(answer.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


_SUMMED: Final = (
    "accepted",
    "duplicates",
    "acks",
    "connections",
    "store_commits",
    "store_pending",
    "checkpoint_count",
    "live_actors",
    "resident_bytes",
)


_HISTOGRAMS = ("ack_latency", "commit_latency")  # summed bucket by bucket


def merge_ingest(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The console's ingest snapshot of several processes: counts summed (rejections by
    code, ack and store commit latency per bucket, producers by name), the latest ``at``."""
    out: dict[str, Any] = {
        "at": 0,
        "rejected": {},
        **{f"{h}_counts": [] for h in _HISTOGRAMS},
        "producers": {},
        "checkpoint_seconds": 0.0,
        **dict.fromkeys(_SUMMED, 0),
    }
    bounds: dict[str, list[float]] = {h: [] for h in _HISTOGRAMS}
    for part in parts:
        out["at"] = max(out["at"], int(part.get("at", 0)))
        for name in _SUMMED:
            out[name] += int(part.get(name, 0))
        out["checkpoint_seconds"] += float(part.get("checkpoint_seconds", 0.0))
        for code, count in part.get("rejected", {}).items():
            out["rejected"][code] = out["rejected"].get(code, 0) + count
        for h in _HISTOGRAMS:
            counts = list(part.get(f"{h}_counts", ()))
            bounds[h] = list(part.get(f"{h}_bounds", ())) or bounds[h]
            have = out[f"{h}_counts"]
            have.extend([0] * (len(counts) - len(have)))
            for i, count in enumerate(counts):
                have[i] += count
        for row in part.get("producers", ()):
            mine = out["producers"].setdefault(row["producer"], dict.fromkeys(row, 0))
            mine["producer"] = row["producer"]
            for key, value in row.items():
                if key != "producer":
                    mine[key] += value
    for h in _HISTOGRAMS:
        out[f"{h}_bounds"] = bounds[h]
    out["rejected"] = dict(sorted(out["rejected"].items()))
    out["producers"] = [out["producers"][name] for name in sorted(out["producers"])]
    return out


def _per_process(gateway: Gateway, found: Mapping[int, Any]) -> list[Any]:
    """The shards' snapshots, a process's figures (its resident memory) kept in one shard
    of each owner only: every cell of an owner reports the same process."""
    parts = []
    seen: set[int] = set()
    for shard, part in sorted(found.items()):
        owner = gateway.owner_of(shard)
        parts.append(part if owner not in seen else {**part, "resident_bytes": 0})
        seen.add(owner)
    return parts


def ingest_counters(ingest: IngestServer) -> dict[str, Any]:
    """The gateway's part of the console's ingest snapshot (``build_gateway_app``'s
    ``ingest``): what its producers' connections did, which no cell sees."""
    stats = ingest.stats
    observed = stats.observed
    connections = ingest.connections_by_producer
    producers = []
    for name in sorted(set(observed.producers) | set(connections)):
        counts = observed.producers.get(name)
        producers.append(
            {
                "producer": name,
                "connections": connections.get(name, 0),
                "acks": counts.batches if counts else 0,
                "accepted": counts.accepted if counts else 0,
                "duplicates": counts.duplicates if counts else 0,
                "rejected": counts.rejected if counts else 0,
            }
        )
    return {
        "at": time.time_ns() // 1_000_000,
        "accepted": stats.accepted,
        "duplicates": stats.duplicates,
        "rejected": dict(observed.rejected_by_code),
        "acks": stats.acks,
        "ack_latency_bounds": list(ACK_LATENCY_BUCKETS),
        "ack_latency_counts": list(observed.ack_latency.counts),
        "connections": ingest.connection_count,
        "producers": producers,
        "resident_bytes": _resident_bytes(),
    }


async def _ingest(gateway: Gateway, operation: Operation, request: Request) -> Response:
    found = await gateway.each_json(request)
    parts = _per_process(gateway, found)
    if gateway.ingest is not None:
        parts.append(gateway.ingest())
    return json_answer(merge_ingest(parts))


async def _stream(request: Request) -> Response:
    """``GET /v1/console/stream``: the console's ticks, each with the ingest snapshot of
    every shard merged; a tick while shards do not answer has what answered and
    ``missing_shards``."""
    gateway: Gateway = request.app.state.gateway
    require_admin(request, gateway.config.api)
    if request.query_params:
        name = next(iter(request.query_params))
        raise bad_parameter(name, "is not a parameter of this route (known: none)")
    headers = gateway._admin()

    async def ticks() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        while True:
            fanned = await gateway.each(
                gateway.shards,
                lambda s: gateway.ask(s, "GET", "/v1/console/ingest", "", headers),
                partial=True,
            )
            found = {s: a.json() for s, a in fanned.found.items() if a.status == 200}
            parts = _per_process(gateway, found)
            if gateway.ingest is not None:
                parts.append(gateway.ingest())
            snapshot = merge_ingest(parts)
            if fanned.missing:
                snapshot["missing_shards"] = [m.shard for m in fanned.missing]
            yield b"event: tick\ndata: " + msgspec.json.encode({"ingest": snapshot}) + b"\n\n"
            await trio.sleep(TICK)

    return StreamingResponse(
        ticks(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ---- the console's table of the tree ---------------------------------------------------------


async def _gateway_rows(gateway: Gateway, query: NodesQuery) -> list[tuple[dict[str, Any], int]]:
    """The gateway's own nodes as the console's rows, each with the owner it is (or -1),
    depth first; with no tree of its own, a root and one node per owner."""
    from .console import _root_row, _row, nodes

    rows: list[tuple[dict[str, Any], int]] = []
    own = gateway.tree
    if own is None:
        rows.append(
            (
                {
                    "path": "root",
                    "name": "root",
                    "depth": 0,
                    "kind": "supervisor",
                    "status": "running",
                    "children": gateway.owners.partitions.owners,
                },
                -1,
            )
        )
        for owner, pid in enumerate(gateway.owners.pids()):
            name = f"owner-{owner}"
            row = {
                "path": f"root/{name}",
                "name": name,
                "depth": 1,
                "kind": "worker",
                "status": "running" if pid is not None else "restarting",
            }
            rows.append((row, owner))
        return rows
    now = trio.current_time()
    owner_names = {f"owner-{k}": k for k in range(gateway.owners.partitions.owners)}
    async for info, path, depth in nodes(own):
        node = _root_row(own) if info is None else _row(info, path, depth, now, set())
        name = path.rsplit("/", 1)[-1]
        rows.append((msgspec.to_builtins(node), owner_names.get(name, -1)))
    return rows


def _keeps(row: Mapping[str, Any], query: NodesQuery) -> bool:
    if query.search is not None and query.search.lower() not in row["name"].lower():
        return False
    return query.status is None or row["status"] == query.status


def _sort_value(row: Mapping[str, Any], sort: str) -> Any:
    if sort == "name":
        return row["name"]
    return row.get(sort, 0)


async def _tree_nodes(gateway: Gateway, operation: Operation, request: Request) -> Response:
    query = parse(NodesQuery, request.query_params)
    end = query.offset + query.limit
    if query.sort != "tree" and end > MAX_NODES_LIMIT:
        raise bad_parameter(
            "offset",
            f"plus limit must be at most {MAX_NODES_LIMIT} when sorting by {query.sort} across"
            " owner processes; narrow the table with search or status",
        )
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "limit")}

    def page(offset: int, limit: int) -> str:
        return urlencode({**params, "offset": offset, "limit": limit})

    first = min(end, MAX_NODES_LIMIT)
    found = await gateway.each_json(request, query=page(0, first))
    roots = {shard: await gateway.cell_root(shard) for shard in found}
    own = await _gateway_rows(gateway, query)
    by_owner: dict[int, list[int]] = {}
    for shard in found:
        by_owner.setdefault(gateway.owner_of(shard), []).append(shard)
    depth_of = {owner: gateway.owner_path(owner).count("/") + 1 for owner in by_owner}

    def moved(shard: int, row: dict[str, Any]) -> dict[str, Any]:
        row["path"] = gateway.to_gateway(shard, roots[shard], row["path"])
        row["depth"] += depth_of[gateway.owner_of(shard)]
        return row

    # Segments in tree order: the gateway's matching rows, each owner followed by its shards.
    segments: list[tuple[int | None, list[dict[str, Any]], int]] = []  # (shard, rows, size)
    for row, owner in own:
        if _keeps(row, query):
            segments.append((None, [row], 1))
        for shard in by_owner.get(owner, ()):
            answer = found[shard]
            segments.append((shard, [moved(shard, r) for r in answer["nodes"]], answer["matched"]))
    if query.sort == "tree":
        ordered = segments[::-1] if query.order == "desc" else segments
        chosen: list[dict[str, Any]] = []
        position = 0
        for held, rows, size in ordered:
            lo, hi = max(query.offset, position), min(end, position + size)
            if lo < hi:
                if held is None:
                    chosen += rows
                elif hi - position <= len(rows):
                    chosen += rows[lo - position : hi - position]
                else:  # past the first round's rows: ask for exactly these
                    more = await gateway.each_json(
                        request, query=page(lo - position, hi - lo), shards=[held]
                    )
                    chosen += [moved(held, r) for r in more[held]["nodes"]]
            position += size
    else:
        rows = [r for _, segment, _ in segments for r in segment]
        rows.sort(
            key=lambda r: (r["status"] == "hibernated", _sort_value(r, query.sort)),
            reverse=query.order == "desc",
        )
        if query.order == "desc":  # asleep accounts after the live nodes, as one process
            rows.sort(key=lambda r: r["status"] == "hibernated")
        chosen = rows[query.offset : end]
    own_total = len(own)
    own_matched = sum(1 for row, _ in own if _keeps(row, query))
    return json_answer(
        {
            "total": own_total + sum(a["total"] for a in found.values()),
            "asleep": sum(a["asleep"] for a in found.values()),
            "matched": own_matched + sum(a["matched"] for a in found.values()),
            "offset": query.offset,
            "nodes": chosen,
        }
    )


# ---- /metrics ---------------------------------------------------------------------------------


async def _metrics(gateway: Gateway, operation: Operation, request: Request) -> Response:
    fanned = await gateway.each(gateway.shards, lambda s: gateway.forward(s, request), partial=True)
    texts: dict[int, str] = {s: a.body.decode() for s, a in fanned.found.items() if a.status == 200}
    own = generate_latest(gateway.registry).decode() if gateway.registry is not None else ""
    body = merge_metrics(
        own,
        {s: (gateway.owner_of(s), text) for s, text in texts.items()},
        gateway.shards,
        {m.shard: m.owner for m in fanned.missing},
    )
    return Response(body, media_type=CONTENT_TYPE)


class _Families:
    """Metric families by name, their samples combined by (sample name, labels): summed,
    or the largest for the gauges of :data:`_MAXED`; ``once``: the first value kept."""

    def __init__(self) -> None:
        self.meta: dict[str, tuple[str, str]] = {}
        self.samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(self, family: Metric, *, once: bool = False) -> None:
        self.meta.setdefault(family.name, (family.documentation, family.type))
        into = self.samples.setdefault(family.name, {})
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            have = into.get(key)
            if have is None:
                into[key] = sample.value
            elif not once:
                into[key] = (
                    max(have, sample.value) if family.name in _MAXED else have + sample.value
                )

    def add_all(self, other: _Families) -> None:
        for name, samples in other.samples.items():
            family = Metric(name, *other.meta[name])
            family.samples = [
                _Sample(sample, dict(labels), value) for (sample, labels), value in samples.items()
            ]
            self.add(family)


def _process_wide(name: str) -> bool:
    """A family of the whole process (every cell of an owner reports the same one)."""
    return name.startswith(_PROCESS_WIDE)


def merge_metrics(
    own: str,
    shards: Mapping[int, tuple[int, str]],
    every: Iterable[int],
    missing: Mapping[int, int],
) -> bytes:
    """One exposition of the gateway's metrics (``own``) and every shard's (``shards``:
    shard -> (owner, text)): each series once per label set over every process (counters,
    histograms and gauges summed, the oldest-age gauges the largest), then the same per
    process with an ``owner`` label (``gateway``, ``owner-K``: an owner's shards combined;
    its process-wide series, ``process_*`` and the collector's, counted once, every cell
    of an owner being the same process). Start times and ``_created`` samples are only per
    process. ``meterd_shard_up`` says which shards answered this scrape (1) and which did
    not (0, with their owner)."""
    per: dict[str, _Families] = {}
    if own:
        gateway = per.setdefault("gateway", _Families())
        for family in text_string_to_metric_families(own):
            gateway.add(family)
    for _shard, (owner, text) in sorted(shards.items()):
        families = per.setdefault(f"owner-{owner}", _Families())
        for family in text_string_to_metric_families(text):
            families.add(family, once=_process_wide(family.name))
    total = _Families()
    for families in per.values():
        total.add_all(families)
    out: list[Metric] = []
    for name in sorted(total.meta):
        metric = Metric(name, *total.meta[name])
        if name not in _NOT_SUMMED and not name.endswith("_created"):
            for (sample, labels), value in sorted(total.samples[name].items()):
                if not sample.endswith("_created"):
                    metric.add_sample(sample, dict(labels), value)
        for who in sorted(per):
            for (sample, labels), value in sorted(per[who].samples.get(name, {}).items()):
                metric.add_sample(sample, {**dict(labels), "owner": who}, value)
        out.append(metric)
    up = Metric(
        "meterd_shard_up", "1 when the shard's owner answered this scrape, else 0.", "gauge"
    )
    for shard in every:
        answered = shard in shards
        owner = shards[shard][0] if answered else missing.get(shard, -1)
        up.add_sample(
            "meterd_shard_up", {"shard": str(shard), "owner": f"owner-{owner}"}, float(answered)
        )
    out.append(up)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(cast(Any, _Fixed(out)))
    return generate_latest(registry)


@dataclass(frozen=True, slots=True, eq=False)  # (a registry keys its collectors by identity)
class _Fixed:
    """A collector of metrics already made."""

    metrics: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.metrics


MERGES: Final[Mapping[str, Handler]] = {
    "health": _health,
    "metrics": _metrics,
    "quarantine": _quarantine,
    "accounts": _accounts,
    "deliveries": _deliveries,
    "close": _close,
    "ingest": _ingest,
    "tree_nodes": _tree_nodes,
}


__all__ = [
    "DEFAULT_TIMEOUT",
    "MERGES",
    "Gateway",
    "build_gateway_app",
    "graphql_accounts",
    "handler_of",
    "merge_ingest",
    "merge_metrics",
]
