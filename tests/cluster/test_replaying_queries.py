"""A node that took a shard over answers its queries only once the shard's cell has reached
the end of the log (protocol.md §5: a query includes every event acknowledged before it was
sent, and the old owner acknowledged events the new one is still replaying). Before that a
query is refused as unavailable (503 through the API), never answered from a partial cell."""

from __future__ import annotations

from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterd.cluster._gateway import JetStreamLinks
from meterd.cluster._nats import Connection
from meterd.partitions import OwnerUnavailable
from meterd.partitions._cell import Cell
from tests.cluster.cells import LAYOUT

SHARD = 1
QUERY = {"method": "GET", "path": "/v1/accounts/a/usage", "query": "", "headers": []}


class _Cell:
    """A cell whose API answers 200 to anything."""

    def app(self) -> Starlette:
        async def usage(request: Request) -> JSONResponse:
            return JSONResponse({"value": "7"})

        return Starlette(routes=[Route("/v1/accounts/{account}/usage", usage)])


def links(replaying: set[int]) -> JetStreamLinks:
    return JetStreamLinks(
        cast(Connection, None),  # a held shard's queries never touch NATS
        "gw",
        LAYOUT,
        slice_timeout=1.0,
        cells={SHARD: cast(Cell, _Cell())},
        replaying=lambda shard: shard in replaying,
    )


async def test_a_replaying_shards_queries_are_refused_until_it_caught_up() -> None:
    replaying = {SHARD}
    node = links(replaying)
    with pytest.raises(OwnerUnavailable, match="replaying its log"):
        await node.ask(SHARD, "http", dict(QUERY), 1.0)
    assert await node.ask(SHARD, "ping", {}, 1.0) == "pong"  # alive, only not ready
    replaying.clear()  # the applier reached the end of the log
    answer: dict[str, Any] = await node.ask(SHARD, "http", dict(QUERY), 1.0)
    assert answer["status"] == 200
