"""``GET /v1/cluster`` on a node's API (protocol.md §5): an ASGI wrapper in front of the
gateway's app, so the route is served without changing the gateway's own routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meterd.api.answers import json_answer
from meterd.api.auth import require_admin
from meterd.api.errors import ApiError, error_response
from meterd.config import ApiConfig

from ._nats import ClusterUnavailable

__all__ = ["PATH", "ClusterRoute"]

PATH = "/v1/cluster"


class ClusterRoute:
    """Answers ``GET /v1/cluster`` with ``status()`` (admin token), passes the rest to ``app``."""

    def __init__(
        self, app: Any, config: ApiConfig, status: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        self.app = app
        self.config = config
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != PATH:
            await self.app(scope, receive, send)
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "method_not_allowed", f"method {request.method} is not allowed on {PATH}"
            )
        try:
            require_admin(request, self.config)
        except ApiError as error:
            return error_response(error.status, error.code, error.message)
        try:
            document = await self.status()
        except ClusterUnavailable as error:
            return error_response(
                503,
                "unavailable",
                f"NATS did not answer ({error}); the cluster's state is read from it: retry",
            )
        return json_answer(document)
