"""``/v1/cluster/drain`` on a node's API (docs/cluster.md "Draining a node"): an ASGI
wrapper in front of the node's app, like ``GET /v1/cluster``.

* ``POST /v1/cluster/drain`` (admin token): this node hands all its shards over to the
  other live nodes by handoff (snapshot, release; :mod:`._placement`) from its next
  placement round on, and takes none; it keeps running as a gateway and an API that
  forwards. Answers 202 with ``{"node", "draining": true, "shards": [held now]}``.
* ``DELETE /v1/cluster/drain``: it takes its share again (by handoff from the others).
* ``GET /v1/cluster/drain``: the same document, to watch ``shards`` empty.

A drain lasts until it is undone or the process stops (a restarted node takes its share).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meterd.api.answers import json_answer
from meterd.api.auth import require_admin
from meterd.api.errors import ApiError, error_response
from meterd.config import ApiConfig

__all__ = ["DRAIN_PATH", "DrainRoute"]

DRAIN_PATH = "/v1/cluster/drain"


class DrainRoute:
    """Answers ``/v1/cluster/drain`` (see the module doc) with ``drain(bool)`` and
    ``state()``; passes the rest to ``app``."""

    def __init__(
        self,
        app: Any,
        config: ApiConfig,
        drain: Callable[[bool], None],
        state: Callable[[], dict[str, Any]],
    ) -> None:
        self.app = app
        self.config = config
        self.drain = drain
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != DRAIN_PATH:
            await self.app(scope, receive, send)
            return
        response = self._answer(Request(scope, receive))
        await response(scope, receive, send)

    def _answer(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD", "POST", "DELETE"):
            return error_response(
                405,
                "method_not_allowed",
                f"method {request.method} is not allowed on {DRAIN_PATH}: POST drains this"
                " node, DELETE undoes it, GET shows it",
            )
        try:
            require_admin(request, self.config)
        except ApiError as error:
            return error_response(error.status, error.code, error.message)
        if request.method == "POST":
            self.drain(True)
            return json_answer(self.state(), status=202)
        if request.method == "DELETE":
            self.drain(False)
            return json_answer(self.state(), status=202)
        return json_answer(self.state())
