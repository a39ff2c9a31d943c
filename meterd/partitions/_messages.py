"""What the gateway and the partition owners say to each other (docs/partitions.md "Messages").

Every message is a msgspec Struct, encoded as one msgpack map whose ``"t"`` key names its
type; events inside a slice are msgpack arrays (their field order is the wire format). A
decoder built once (:data:`DECODER`) turns a frame back into its Struct in C, every field
checked against its type: nothing is decoded into a dict first.

Gateway -> owner:

* :class:`Slice`: the events of one producer batch that fall in one shard (a fixed group
  of partitions, the unit of storage and placement: meterd.partitions._layout), with the
  batch's identity (:class:`BatchId`: gateway, connection, seq) and the shard.
  ``index`` is each event's position in the producer's batch, so verdicts name it.
  ``rejected`` carries the batch's events the gateway rejected that name an account of this
  shard (for the shard's audit trail).
* :class:`Slices` (version 3): the parts of one producer batch for several shards of one
  owner (each a :class:`Part`: a shard, its events, its rejected), in one message: the
  gateway's local links send each owner one per batch, instead of one :class:`Slice` per
  shard (cluster mode still logs a :class:`Slice` per shard: the log is per shard). Its
  ``shard`` is its first part's: the answer names it.
* :class:`Query`: a question about accounts of a shard (``op`` and ``args``, answered
  by an :class:`Answer` with the same ``id``).
* :class:`TreeRequest`: the owner's supervision tree, answered by a :class:`TreeSnapshot`.

Owner -> gateway:

* :class:`Hello`: first message on a connection: who the owner is, its pid, its shards.
* :class:`Verdicts`: a slice (or every part of a :class:`Slices`, summed) is durable in
  its owner: ``accepted`` and ``duplicates`` counted, ``id_conflicts`` and other
  ``rejected`` events by index. Sent only after the commit, so the gateway acks the
  producer's batch (in seq order) once it holds the verdicts of every slice of it.
* :class:`Unavailable`: a slice (or a part of a :class:`Slices`) the owner could not make
  durable (full disk, shutting down): the producer's batch is answered ``unavailable``, never acked.
* :class:`Answer`, :class:`TreeSnapshot`.

Quantities are ints or decimals (a decimal travels as its string, exactly); an int beyond
64 bits, which msgpack cannot hold, is sent as a decimal (:func:`wire_quantity`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, TypeAlias

import msgspec
from msgspec import Struct

__all__ = [
    "DECODER",
    "ENCODER",
    "Answer",
    "BatchId",
    "Close",
    "Correction",
    "Hello",
    "Message",
    "Part",
    "Query",
    "Rejection",
    "SCHEMA_VERSION",
    "Slice",
    "SliceEvent",
    "Slices",
    "TreeRequest",
    "TreeSnapshot",
    "Unavailable",
    "Verdicts",
    "decode",
    "encode",
    "wire_quantity",
]

#: Bumped when a message changes shape; an owner refuses a gateway of another version.
SCHEMA_VERSION: Final = 3
"""2: a slice event's properties are sorted [key, value] pairs; 3: :class:`Slices`, one
message per owner per batch."""

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


def wire_quantity(quantity: int | Decimal) -> int | Decimal:
    """``quantity`` as a slice carries it: an int msgpack cannot hold becomes a Decimal."""
    if type(quantity) is int and not _INT64_MIN <= quantity <= _UINT64_MAX:
        return Decimal(quantity)
    return quantity


class BatchId(Struct, frozen=True, array_like=True):
    """A producer batch, as the gateway knows it: its own name, the connection, the seq."""

    gateway: str
    connection: int
    seq: int


class SliceEvent(Struct, frozen=True, array_like=True, gc=False):
    """One event of a slice (protocol §2.2's fields and its position in the batch).

    ``properties`` are ``[key, value]`` pairs sorted by key (as validation leaves them in
    :attr:`meterd.model.Event.properties`), decoded straight into that tuple form: the
    owner builds its :class:`~meterd.model.Event` from the fields as they are. The gateway
    encodes a slice's events from plain tuples in this field order (msgspec writes the same
    array), never building this Struct."""

    index: int
    id: str
    account: str
    meter: str
    quantity: int | Decimal
    time: int
    properties: tuple[tuple[str, str], ...] = ()


class Rejection(Struct, frozen=True, array_like=True):
    """An event not counted: its position in the batch, its id, protocol §2.3's code and
    message."""

    index: int
    id: str | None
    code: str
    message: str
    account: str | None = None


class Hello(Struct, frozen=True, tag_field="t", tag="hello"):
    owner: str
    pid: int
    shards: list[int]
    version: int = SCHEMA_VERSION


class Slice(Struct, frozen=True, tag_field="t", tag="slice"):
    batch: BatchId
    shard: int
    producer: str
    received_at: int  # ms
    events: list[SliceEvent]
    rejected: list[Rejection] = []


class Part(Struct, frozen=True, array_like=True):
    """One shard's part of a :class:`Slices`: what a :class:`Slice` of that shard holds."""

    shard: int
    events: list[SliceEvent]
    rejected: list[Rejection] = []


class Slices(Struct, frozen=True, tag_field="t", tag="slices"):
    """The parts of one producer batch for one owner's shards (version 3). Answered by one
    :class:`Verdicts` (the parts' counts summed, their rejections by index) or one
    :class:`Unavailable` (a part could not be made durable), each naming ``batch`` and
    ``shard``, the first part's shard."""

    batch: BatchId
    shard: int
    producer: str
    received_at: int  # ms
    parts: list[Part]


class Verdicts(Struct, frozen=True, tag_field="t", tag="verdicts"):
    batch: BatchId
    shard: int
    accepted: int
    duplicates: int
    id_conflicts: list[Rejection] = []
    rejected: list[Rejection] = []  # other codes decided by the owner (time_out_of_range)
    epoch: int = 0  # cluster mode: the deciding owner's lease epoch (0: not in a cluster)


class Unavailable(Struct, frozen=True, tag_field="t", tag="unavailable"):
    batch: BatchId
    shard: int
    reason: str


class Query(Struct, frozen=True, tag_field="t", tag="query"):
    id: int
    shard: int
    op: str  # "usage", "events", "explain", "quarantine", ...
    args: dict[str, Any] = {}


class Answer(Struct, frozen=True, tag_field="t", tag="answer"):
    id: int
    value: Any = None
    error: str | None = None  # what went wrong, in words for an operator; value is then None


class TreeRequest(Struct, frozen=True, tag_field="t", tag="tree"):
    id: int
    limit: int = 100
    total: int = 10_000


class Correction(Struct, frozen=True, tag_field="t", tag="correction"):
    """Cluster mode: an adjustment (``kind`` "adjust") or a void ("void") of an account of
    ``shard``, published to the shard's log and applied by its owner in stream order. ``at``
    is stamped when it is published (no clock in the decision); ``id`` is its
    ``Nats-Msg-Id``. A void carries where the event counted (meter, time, dims, quantity)."""

    id: str
    shard: int
    kind: str  # "adjust" | "void"
    account: str
    by: str
    reason: str
    at: int  # ms
    meter: str
    start: int = 0  # adjust: the window [start, end)
    end: int = 0
    dims: list[str] = []
    direction: str = ""  # adjust: "credit" | "debit"
    quantity: str = ""  # a decimal, as text
    event_id: str = ""  # void
    time: int = 0  # void: the event's time
    key: str = ""  # the correction's idempotency key (docs/billing.md; "": none, older log)


class Close(Struct, frozen=True, tag_field="t", tag="close"):
    """Cluster mode: the month ``period`` ("YYYY-MM") closed for the cluster (the KV bucket's
    ``by``, ``at`` in ms, and the ``node`` that closed it), published to ``shard``'s log and
    applied by its owner in stream order: the shard's figures of the month are fixed after
    exactly the messages before it. ``id`` is its ``Nats-Msg-Id``, the same for every
    publish of one month and shard (``close:<period>:<shard>``)."""

    id: str
    shard: int
    period: str
    by: str
    at: int  # ms
    node: str


class TreeSnapshot(Struct, frozen=True, tag_field="t", tag="tree_snapshot"):
    id: int
    owner: str
    pid: int
    tree: dict[str, Any]  # supervisors.snapshot()'s shape


Message: TypeAlias = (
    Hello
    | Slice
    | Slices
    | Verdicts
    | Unavailable
    | Query
    | Answer
    | TreeRequest
    | TreeSnapshot
    | Correction
    | Close
)

ENCODER: Final = msgspec.msgpack.Encoder(decimal_format="string")
DECODER: Final = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return ENCODER.encode(message)


def decode(data: bytes) -> Message:
    """The message in ``data``; :class:`msgspec.ValidationError` or
    :class:`msgspec.DecodeError` names what is wrong (and where) otherwise."""
    message: Message = DECODER.decode(data)
    return message
