"""The names cluster mode uses in NATS, and provisioning them (docs/cluster.md "The log").

* One JetStream stream, :data:`STREAM`, holds every slice: the slice of shard ``s`` is
  published to subject ``meterd.log.<s>`` (:func:`log_subject`) with a ``Nats-Msg-Id``
  naming (gateway, connection, seq, shard) (:func:`slice_msg_id`), so a gateway's own
  re-publish within ``[cluster] duplicate_window`` is stored once.
* The owner of shard ``s`` reads ``meterd.log.<s>`` in stream order and stores, with the
  slice's rows, the stream sequence it applied, under the log name :func:`log_name`.
* Verdicts go back over core NATS to ``meterd.verdicts.<gateway>`` (:func:`verdict_subject`).
* API queries for an account of shard ``s`` held by another node are requests (core NATS
  request/reply) on ``meterd.query.<s>`` (:func:`query_subject`), answered by its owner.
* Shard leases live in the KV bucket :data:`LEASES` (TTL ``[cluster] lease_ttl``).

:func:`provision` creates the stream and the bucket if they are missing, and checks them if
they exist (idempotent: every node runs it at start); 3 replicas when the client knows at
least 3 servers, else 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import structlog

from meterd.config import ClusterConfig
from meterd.partitions._messages import BatchId

from ._lease import Leases
from ._nats import Connection, StreamInfo

__all__ = [
    "LEASES",
    "STREAM",
    "SUBJECTS",
    "Provisioned",
    "log_name",
    "log_subject",
    "provision",
    "query_subject",
    "slice_msg_id",
    "verdict_subject",
]

log = structlog.get_logger("meterd.cluster")

STREAM: Final = "METERD_LOG"
SUBJECTS: Final = "meterd.log.*"
LEASES: Final = "meterd-shard-leases"
_VERDICTS: Final = "meterd.verdicts."
_QUERIES: Final = "meterd.query."


def log_subject(shard: int) -> str:
    """The subject of shard ``shard``'s slices in :data:`STREAM`."""
    return f"meterd.log.{shard}"


def log_name(shard: int) -> str:
    """The name under which a store keeps the position it applied of shard ``shard``'s log."""
    return f"{STREAM}/{log_subject(shard)}"


def verdict_subject(gateway: str) -> str:
    """The core NATS subject a gateway receives its slices' verdicts on."""
    return _VERDICTS + gateway


def query_subject(shard: int) -> str:
    """The core NATS subject shard ``shard``'s owner answers API queries on."""
    return _QUERIES + str(shard)


def slice_msg_id(batch: BatchId, shard: int) -> str:
    """The ``Nats-Msg-Id`` of a slice: its batch's (gateway, connection, seq) and its shard."""
    return f"{batch.gateway}:{batch.connection}:{batch.seq}:{shard}"


@dataclass(frozen=True, slots=True)
class Provisioned:
    stream: StreamInfo
    leases: Leases


async def provision(connection: Connection, config: ClusterConfig) -> Provisioned:
    """Create (or check) the log stream and the lease bucket; see the module doc.

    Raises :class:`~meterd.cluster.ClusterUnavailable` when NATS cannot place them in time and
    :class:`~meterd.cluster.StreamMismatch` when one exists with another configuration."""
    stream = await connection.ensure_stream(
        STREAM,
        [SUBJECTS],
        duplicate_window=config.duplicate_window.seconds,
        max_age=config.retention.seconds,
    )
    leases = await Leases.open(connection, LEASES, ttl=config.lease_ttl.seconds)
    log.info(
        "cluster.provisioned",
        stream=stream.name,
        replicas=stream.replicas,
        leases=LEASES,
        lease_ttl=config.lease_ttl.seconds,
    )
    return Provisioned(stream, leases)
