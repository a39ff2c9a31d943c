"""The starlette application: one route per path of :data:`.openapi.OPERATIONS`."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .console import asset, index, stream
from .daemon import Daemon
from .errors import exception_handlers
from .live import live_usage
from .openapi import OPERATIONS
from .operations import Operation


def build_app(daemon: Daemon) -> Starlette:
    """The ASGI application of the operator API (protocol.md §3)."""
    by_route: dict[str, list[Operation]] = {}
    for operation in OPERATIONS:
        by_route.setdefault(operation.route, []).append(operation)
    routes: list[BaseRoute] = [
        _route(daemon, route, operations) for route, operations in by_route.items()
    ]
    # The console (docs/console.md): its page and files, no token (they hold no data).
    routes += [
        Route("/", index, methods=["GET"]),
        Route("/console/{name}", asset, methods=["GET"]),
        Route("/v1/console/stream", stream, methods=["GET"]),
        # Live usage for dashboards (docs/api.md): a websocket, its own token check.
        WebSocketRoute("/v1/accounts/{account}/usage/live", live_usage),
    ]
    app = Starlette(routes=routes, exception_handlers=exception_handlers())
    app.state.daemon = daemon
    return app


def _route(daemon: Daemon, route: str, operations: Sequence[Operation]) -> Route:
    """One route per path, so that a 405 lists every method the path has (HEAD is GET's)."""
    by_method = {operation.method: operation for operation in operations}

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method[method].call(daemon, request)

    endpoint.__name__ = operations[0].handler.__name__
    return Route(route, endpoint, methods=list(by_method))
