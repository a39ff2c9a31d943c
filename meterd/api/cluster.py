"""``GET /v1/cluster`` (protocol.md §5): its answer declared once, as the other operations.

The operation is in every API's document and routes; it is answered by a cluster node only
(:mod:`meterd.cluster._api` gives the handler the node's ``cluster`` reader). A daemon
without ``[cluster]`` answers 404 ``not_a_cluster``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from msgspec import Meta
from starlette.responses import Response

from .answers import Closed, Count, json_answer
from .daemon import Daemon
from .errors import ApiError
from .operations import GATEWAY, Operations

__all__ = ["CLUSTER_PATH", "ClusterNode", "ClusterPartition", "ClusterStatus", "ops"]

CLUSTER_PATH = "/v1/cluster"


class ClusterNode(Closed):
    name: str
    status: Annotated[
        Literal["live", "down"],
        Meta(
            description="live while its entry in the node registry lives; down when it expired"
            " and the node still holds leases (a node gone that holds nothing is dropped)."
        ),
    ]
    partitions: Annotated[int, Meta(ge=0, description="How many partitions it owns.")]


class ClusterPartition(Closed):
    partition: Count
    owner: Annotated[str | None, Meta(description="The node holding its shard's lease.")]
    epoch: Annotated[
        int, Meta(ge=0, description="The lease revision that began its owner's tenure (0: none).")
    ]
    applied_seq: Annotated[
        int, Meta(ge=0, description="The last log sequence its shard's store committed.")
    ]
    lag: Annotated[int, Meta(ge=0, description="Slices of its shard's log not applied yet.")]


class ClusterStatus(Closed):
    node: Annotated[str, Meta(description="The node that answered.")]
    nodes: list[ClusterNode]
    partitions: Annotated[list[ClusterPartition], Meta(description="Every partition, in order.")]


StatusReader = Callable[[], Awaitable[ClusterStatus]]

ops = Operations()


@ops.get(
    CLUSTER_PATH,
    "cluster",
    "Cluster mode (protocol.md §5): the nodes, and every partition's owner, epoch and lag"
    " (applied_seq and lag as the owners last reported them, every lease_ttl / 3).",
    answers={200: (ClusterStatus, "The cluster as this node reads it from NATS.")},
    errors=(401, 404, 500, 503),
    scope=GATEWAY,
)
async def cluster(daemon: Daemon) -> Response:
    reader: StatusReader | None = getattr(daemon, "cluster", None)
    if reader is None:
        raise ApiError(
            404,
            "not_a_cluster",
            "this daemon runs without [cluster]: it is a single node (docs/cluster.md)",
        )
    return json_answer(await reader())
