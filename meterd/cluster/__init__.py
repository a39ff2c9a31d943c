"""meterd's groundwork for cluster mode: NATS JetStream driven from Trio (docs/cluster.md).

The public API:

* :func:`open_bridge` / :class:`AsyncioBridge`: one asyncio loop in its own thread, called from
  Trio (cancellation, closing and exceptions handled across it).
* :func:`connect` → :class:`Connection`: streams (:meth:`~Connection.ensure_stream`), publishes
  with a ``Nats-Msg-Id`` (:meth:`~Connection.publish` → :class:`PublishAck`), ordered log reads
  from a sequence (:meth:`~Connection.reader` → :class:`LogReader`), core subscriptions with a
  bounded buffer (:meth:`~Connection.subscribe`), leases in a KV bucket with a TTL
  (:meth:`Leases.open` on a connection → :class:`Leases`, :class:`Lease`).
* Errors: :class:`ClusterUnavailable` (retryable), :class:`LeaseHeld`, :class:`LeaseLost`,
  :class:`StreamMismatch`, :class:`BridgeClosed`.
"""

from meterd.cluster._applier import ShardApplier, applied_position
from meterd.cluster._bridge import AsyncioBridge, BridgeClosed, open_bridge
from meterd.cluster._gateway import JetStreamLinks
from meterd.cluster._lease import Lease, LeaseHeld, LeaseLost, Leases
from meterd.cluster._log import (
    LEASES,
    STREAM,
    SUBJECTS,
    Provisioned,
    log_name,
    log_subject,
    provision,
    slice_msg_id,
    verdict_subject,
)
from meterd.cluster._nats import (
    ClusterUnavailable,
    Connection,
    LogMessage,
    LogReader,
    PublishAck,
    StreamInfo,
    StreamMismatch,
    Subscription,
    connect,
)

__all__ = [
    "LEASES",
    "STREAM",
    "SUBJECTS",
    "Provisioned",
    "JetStreamLinks",
    "ShardApplier",
    "applied_position",
    "log_name",
    "log_subject",
    "provision",
    "slice_msg_id",
    "verdict_subject",
    "AsyncioBridge",
    "BridgeClosed",
    "ClusterUnavailable",
    "Connection",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "Leases",
    "LogMessage",
    "LogReader",
    "PublishAck",
    "StreamInfo",
    "StreamMismatch",
    "Subscription",
    "connect",
    "open_bridge",
]
