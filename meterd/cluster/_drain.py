"""``/v1/cluster/drain`` on a node's API (docs/cluster.md "Draining a node"): an ASGI
wrapper in front of the node's app, like ``GET /v1/cluster``.

* ``POST /v1/cluster/drain`` (admin token): this node hands all its shards over to the
  other live nodes by handoff (snapshot, release; :mod:`._placement`) from its next
  placement round on, and takes none; it keeps running as a gateway and an API that
  forwards. Answers 202 with ``{"node", "draining": true, "shards": [held now]}``.
* ``DELETE /v1/cluster/drain``: it takes its share again (by handoff from the others).
* ``GET /v1/cluster/drain``: the same document, to watch ``shards`` empty.

A drain lasts until it is undone, across restarts of the node: :class:`DrainMark` keeps it
in a small file beside the node's store (``<store path>.drain.json``), written before the
answer, read at start before the first placement round (so a drained node that restarts
takes no shard, as a cordoned host stays cordoned until an operator lifts it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from meterd.api.answers import json_answer
from meterd.api.auth import require_admin
from meterd.api.errors import ApiError, error_response
from meterd.config import ApiConfig

__all__ = ["DRAIN_PATH", "DrainMark", "DrainMarkUnreadable", "DrainRoute"]

DRAIN_PATH = "/v1/cluster/drain"

log = structlog.get_logger("meterd.cluster")


class DrainMarkUnreadable(Exception):
    """The drain mark exists but cannot be read: the node does not guess whether it is
    drained (the message says which file and what to do)."""


class DrainMark:
    """Whether node ``node`` is drained, kept in the file ``path`` (JSON: the node's name and
    since when, epoch ms). Blocking file I/O: call it on a thread from Trio."""

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node

    @classmethod
    def beside(cls, store_path: Path, node: str) -> DrainMark:
        """The mark of the node whose store is ``store_path``."""
        return cls(store_path.with_name(store_path.name + ".drain.json"), node)

    def load(self) -> bool:
        """Whether the node was left drained; a mark written by another node (a store
        directory reused under another ``[cluster] node``) is ignored, with a warning."""
        try:
            doc = json.loads(self.path.read_bytes())
            node = doc["node"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DrainMarkUnreadable(
                f"the drain mark {self.path} cannot be read ({error}): delete it to start"
                " undrained, or write {\"node\": NAME} into it to start drained"
            ) from None
        if node != self.node:
            log.warning(
                "cluster.drain_mark_ignored",
                path=str(self.path),
                marked=str(node),
                node=self.node,
                hint="the mark names another node; delete it",
            )
            return False
        return True

    def save(self, draining: bool) -> None:
        """Write (``draining``) or remove the mark, durably (fsync of the file and its
        directory) before returning."""
        if draining:
            tmp = self.path.with_name(self.path.name + ".tmp")
            doc = {"node": self.node, "since": time.time_ns() // 1_000_000}
            with open(tmp, "wb") as out:
                out.write(json.dumps(doc).encode())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        else:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class DrainRoute:
    """Answers ``/v1/cluster/drain`` (see the module doc) with ``drain(bool)`` and
    ``state()``; passes the rest to ``app``."""

    def __init__(
        self,
        app: Any,
        config: ApiConfig,
        drain: Callable[[bool], Awaitable[None]],
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
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
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
            await self.drain(True)
            return json_answer(self.state(), status=202)
        if request.method == "DELETE":
            await self.drain(False)
            return json_answer(self.state(), status=202)
        return json_answer(self.state())
