"""Partitions: the unit of ownership of accounts (issue 15; docs/partitions.md).

The generic pieces:

* :func:`partition_of`: the stable hash of an account id to its partition;
* the gateway <-> owner messages (:mod:`._messages`: msgspec Structs, msgpack);
* the transport behind one interface (:class:`Transport`, :class:`Channel`), with
  :class:`UnixTransport` (length-prefixed frames on a Unix socket).

Imported by their module, not re-exported here (they pull in the whole daemon):
:mod:`._cell` (a cell: the accounts side of one store file) and :mod:`._owner` with its
entry point :mod:`.owner` (``python -m meterd.partitions.owner``: an owner process); the
gateway's side, :mod:`._gateway` (``GatewaySubmitter``: a batch split by shard, the
verdicts joined; ``OwnerLinks``) and :mod:`._links` (``OwnerLink``: one per owner
process), with the daemon in :mod:`meterd.gateway`.
"""

from ._hash import DEFAULT_PARTITIONS, MAX_PARTITIONS, PERSON, partition_of
from ._layout import (
    ShardFiles,
    owner_of_shard,
    shard_files,
    shard_of,
    shards_directory,
    shards_of_owner,
)
from ._messages import (
    SCHEMA_VERSION,
    Answer,
    BatchId,
    Hello,
    Message,
    Part,
    Query,
    Rejection,
    Slice,
    SliceEvent,
    Slices,
    TreeRequest,
    TreeSnapshot,
    Unavailable,
    Verdicts,
    decode,
    encode,
    wire_quantity,
)
from ._owners import Owners, OwnerUnavailable
from ._transport import (
    DEFAULT_MAX_FRAME,
    Channel,
    ChannelClosed,
    FrameError,
    StreamChannel,
    Transport,
    UnixTransport,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PARTITIONS",
    "MAX_PARTITIONS",
    "PERSON",
    "SCHEMA_VERSION",
    "Answer",
    "BatchId",
    "Channel",
    "ChannelClosed",
    "FrameError",
    "Hello",
    "Message",
    "OwnerUnavailable",
    "Owners",
    "Part",
    "Query",
    "Rejection",
    "ShardFiles",
    "Slice",
    "SliceEvent",
    "Slices",
    "StreamChannel",
    "Transport",
    "TreeRequest",
    "TreeSnapshot",
    "Unavailable",
    "UnixTransport",
    "Verdicts",
    "decode",
    "encode",
    "owner_of_shard",
    "partition_of",
    "shard_files",
    "shard_of",
    "shards_directory",
    "shards_of_owner",
    "wire_quantity",
]
