"""What a node's API answers itself, in front of the gateway's app (an ASGI wrapper, so the
gateway's own routes do not change):

* ``GET /v1/cluster`` (protocol.md §5): the operation declared in :mod:`meterd.api.cluster`
  (its model, its place in ``/openapi.json``), called with this node's status reader;
* ``GET /v1/tree``: this node's own supervision tree, its ``shard-SSS`` subtrees (the shards
  it holds now) marked with their shard, epoch, applied sequence and lag;
* ``POST /v1/periods/{period}/close``: the month is first closed for the cluster in the KV
  bucket of closed periods (:mod:`._periods`, a create: the first close wins; a second one
  anywhere is 409 ``already_closed``), then a ``Close`` of the month is published to every
  shard's log (:mod:`._closes`: each shard's owner fixes its figures where the close stands
  in its log), then the request goes on to the gateway, which asks every shard for its
  closing (each answers once its applier applied the close). A request the gateway would
  refuse (no token, a bad body or month) is passed on untouched, and refused there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, Final

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from meterd.api.answers import json_answer
from meterd.api.auth import require_admin
from meterd.api.bodies import MAX_BODY_BYTES
from meterd.api.cluster import CLUSTER_PATH, ClusterStatus
from meterd.api.cluster import cluster as cluster_operation
from meterd.api.errors import ApiError, error_response
from meterd.api.models import CloseBody, TreeQuery
from meterd.api.openapi import OPERATIONS
from meterd.api.operations import parse
from meterd.billing import Period
from meterd.config import ApiConfig
from meterd.ingest.server import wall_clock_ms

from ._nats import ClusterUnavailable
from ._periods import AlreadyClosed, ClosedPeriods

__all__ = ["PATH", "ClusterRoute"]

log = structlog.get_logger("meterd.cluster.api")

PATH: Final = CLUSTER_PATH
TREE: Final = "/v1/tree"
_CLOSE: Final = re.compile(r"/v1/periods/([^/]+)/close")
_OPERATION: Final = next(op for op in OPERATIONS if op.handler is cluster_operation)

Tree = Callable[[int], dict[str, Any]]


class ClusterRoute:
    """Answers the routes of the module doc, passes the rest to ``app``."""

    def __init__(
        self,
        app: Any,
        config: ApiConfig,
        status: Callable[[], Awaitable[ClusterStatus]],
        *,
        node: str = "",
        periods: ClosedPeriods | None = None,
        tree: Tree | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        logged: Callable[[Period, str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.status = status
        self.node = node
        self.periods = periods
        self.tree = tree
        self.clock = clock
        self.logged = logged  # publishes a won close to every shard's log (._closes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path"), scope.get("method")
        if path == PATH:
            response = await self._cluster(Request(scope, receive))
        elif path == TREE and method in ("GET", "HEAD") and self.tree is not None:
            response = self._tree(Request(scope, receive))
        elif method == "POST" and self.periods is not None and (found := _CLOSE.fullmatch(path)):
            await self._close(found[1], scope, receive, send)
            return
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _cluster(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "method_not_allowed", f"method {request.method} is not allowed on {PATH}"
            )

        async def read() -> ClusterStatus:
            try:
                return await self.status()
            except ClusterUnavailable as error:
                raise ApiError(
                    503,
                    "unavailable",
                    f"NATS did not answer ({error}); the cluster's state is read from it: retry",
                ) from None

        stand_in = SimpleNamespace(config=SimpleNamespace(api=self.config), cluster=read)
        try:
            return await _OPERATION.call(stand_in, request)  # type: ignore[arg-type]
        except ApiError as error:
            return error_response(
                error.status, error.code, error.message, parameter=error.parameter
            )

    def _tree(self, request: Request) -> Response:
        assert self.tree is not None
        try:
            require_admin(request, self.config)
            query = parse(TreeQuery, request.query_params)
        except ApiError as error:
            return error_response(
                error.status, error.code, error.message, parameter=error.parameter
            )
        return json_answer(self.tree(query.limit))

    async def _close(self, text: str, scope: Any, receive: Any, send: Any) -> None:
        """Close the month in the KV bucket first (see the module doc), then pass on."""
        assert self.periods is not None
        body, replay = await _buffered(receive)
        claim = self._claim(Request(scope, replay), text, body)
        if claim is not None:
            try:
                period, by = claim
                won = await self.periods.close(period, by=by, at=self.clock(), node=self.node)
            except AlreadyClosed as error:
                response = error_response(409, "already_closed", str(error))
                await response(scope, receive, send)
                return
            except ClusterUnavailable as error:
                response = error_response(
                    503,
                    "unavailable",
                    f"the month was not closed: NATS did not record it ({error}); retry",
                )
                await response(scope, receive, send)
                return
            if self.logged is not None:  # the close, into every shard's log
                await self.logged(won.period, won.by, won.at)
        await self.app(scope, _buffered_again(body), send)

    def _claim(self, request: Request, text: str, body: bytes | None) -> tuple[Period, str] | None:
        """(month, by) of a close the gateway will accept, else None (it answers why)."""
        if body is None:
            return None
        try:
            require_admin(request, self.config)
            period = Period.parse(text)
            by = msgspec.json.decode(body, type=CloseBody).by
        except (ApiError, ValueError, msgspec.ValidationError):
            return None
        if not by.strip() or self.clock() < period.end_ms:
            return None  # the shards answer it (period_not_over, by)
        return period, by


async def _buffered(receive: Any) -> tuple[bytes | None, Any]:
    """The request's body (None past the API's limit: the gateway refuses it) and a
    ``receive`` that gives it again."""
    chunks: list[bytes] = []
    size, more, too_large = 0, True, False
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            too_large = True
        else:
            chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return (None if too_large else body), _buffered_again(body if not too_large else b"")


def _buffered_again(body: bytes | None) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        return {"type": "http.disconnect"}

    return receive
