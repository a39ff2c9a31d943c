"""A batch frame decoded typed, in C (msgspec), with the precise path behind it.

:class:`BatchReader` is what a connection does with a producer's frame before its events
reach the accounts layer: :meth:`BatchReader.read` checks the frame (protocol.md §2.1,
§2.4) and :meth:`ReadBatch.validate` gives every event's verdict (§2.2, §2.3).

The common frame — a well-formed batch of well-formed events — is decoded by one
``msgspec.msgpack.Decoder`` into :class:`WireBatch` / :class:`WireEvent` Structs. The
decoder checks in C what needs no configuration: the frame's and each event's keys (no
unknown ones, none missing but ``quantity`` and ``properties``), every type (msgpack's
own: a float is not an integer, a ``bin`` is not a string, a boolean is not an integer),
lengths in characters, ``seq >= 0``, an integer quantity ``>= 0``, and the property map's
bounds. What depends on the configuration or on the clock (the meter and whether this
producer may write it, ``time`` in its window) and the two patterns (an account's
characters, a decimal quantity's digits) are checked a field at a time over the whole
batch by :meth:`EventValidator.accept_typed
<meterd.ingest.validate.EventValidator.accept_typed>`, its loops in C (``map`` over
builtins), which then builds the :class:`~meterd.model.Event` objects.

Anything else — a frame msgspec refuses, a batch key this module does not know (ignored by
the protocol, but msgspec would skip it without the checks msgpack makes), an event the
typed checks do not accept whole — goes the way it went before: :func:`decode_frame`,
:func:`parse_batch` and :meth:`EventValidator.validate_batch
<meterd.ingest.validate.EventValidator.validate_batch>` on the msgpack-decoded frame. So
the typed path decides nothing by itself: it accepts only batches whose every event the
precise path accepts, as the same events, and every fault and rejection (its code, its
message naming the event and the field) is the precise path's (tests/ingest/
test_typed_decode.py checks it on generated frames, valid and not). A frame the typed path
refuses costs its failed decode on top of the old path's (a batch msgspec decoded but
:meth:`~meterd.ingest.validate.EventValidator.accept_typed` does not take whole is turned
back into maps with ``msgspec.to_builtins``, not decoded again), only for batches that hold
an event the typed path does not take: ``meterd bench validate`` prints the figure.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from meterd.ingest.protocol import decode_frame, parse_batch
from meterd.ingest.validate import (
    ACCOUNT_MAX,
    ID_MAX,
    MAX_PROPERTIES,
    PROPERTY_KEY_MAX,
    PROPERTY_VALUE_MAX,
    QUANTITY_DIGITS_MAX,
    Columns,
    EventValidator,
    Rejection,
)
from meterd.model import Event

__all__ = ["BatchReader", "ReadBatch", "WireBatch", "WireEvent"]

Groups = dict[str, tuple[list[int], list[Event]]]

# The typed path's quantity: an integer >= 0, or a string that may be a plain decimal (its
# digits are checked over the batch; longer strings are left to the precise path, which
# allows up to QUANTITY_TEXT_MAX characters with an exponent).
_Quantity = Annotated[int, Meta(ge=0)] | Annotated[str, Meta(max_length=QUANTITY_DIGITS_MAX)]
_Properties = Annotated[
    dict[
        Annotated[str, Meta(max_length=PROPERTY_KEY_MAX)],
        Annotated[str, Meta(max_length=PROPERTY_VALUE_MAX)],
    ],
    Meta(max_length=MAX_PROPERTIES),
]


class WireEvent(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One event of a batch frame as the typed path decodes it (protocol.md §2.2): the
    checks that need no configuration, made in C. ``gc=False``: it holds only strings,
    integers and a map of strings, so it can be in no cycle. ``omit_defaults``: turned
    back into a map (:meth:`ReadBatch.validate`), a missing quantity or properties stays
    missing."""

    id: Annotated[str, Meta(min_length=1, max_length=ID_MAX)]
    account: Annotated[str, Meta(min_length=1, max_length=ACCOUNT_MAX)]
    meter: str
    time: int
    quantity: _Quantity | UnsetType = UNSET  # missing is good for a count meter
    properties: _Properties | None = None


class WireBatch(Struct, forbid_unknown_fields=True, gc=False):
    """A batch frame as the typed path decodes it (protocol.md §2.1)."""

    type: Literal["batch"]
    seq: Annotated[int, Meta(ge=0)]
    events: Annotated[list[WireEvent], Meta(min_length=1)]


_decode: Final = msgspec.msgpack.Decoder(WireBatch).decode


class ReadBatch:
    """One batch frame read by :meth:`BatchReader.read`: its ``seq`` and ``size`` (events),
    :meth:`validate` for the verdicts, :meth:`raw` for a rejected event as sent."""

    __slots__ = ("_raws", "_reader", "_typed", "seq", "size")

    def __init__(
        self,
        reader: BatchReader,
        seq: int,
        size: int,
        typed: list[WireEvent] | None,
        raws: list[Any] | None,
    ) -> None:
        self._reader = reader
        self.seq = seq
        self._typed = typed
        self._raws = raws
        self.size = size

    def validate(self, now_ms: int) -> tuple[Groups, list[Rejection]]:
        """:meth:`EventValidator.validate_batch
        <meterd.ingest.validate.EventValidator.validate_batch>`'s ``(groups, rejected)`` for
        this batch read at ``now_ms``."""
        validator = self._reader.validator
        if self._typed is not None:
            found = validator.accept_typed(self._typed, now_ms)
            if found is not None:
                return found
            # The old path decides, on the events as maps: msgspec's, which hold what
            # msgpack's would (the same keys and values; nil properties left out, which
            # every check reads as none), at a fifth of a second decode's cost.
            self._raws = msgspec.to_builtins(self._typed)
            self._typed = None
        assert self._raws is not None
        return validator.validate_batch(self._raws, now_ms)

    def columns(self, now_ms: int) -> Columns | None:
        """This batch's events a field a column, quantities as a gateway sends them
        (:meth:`EventValidator.typed_columns
        <meterd.ingest.validate.EventValidator.typed_columns>` with ``wire``), if the typed
        path accepts every event; else ``None``, and :meth:`validate` gives the verdicts
        (on the old path at once: the typed checks are not made twice)."""
        if self._typed is None:
            return None
        found = self._reader.validator.typed_columns(self._typed, now_ms, wire=True)
        if found is None:
            self._raws = msgspec.to_builtins(self._typed)  # as validate() does
            self._typed = None
        return found

    @property
    def typed(self) -> bool:
        """Whether the typed path decides (so far: :meth:`validate` may still leave the
        batch to the old path)."""
        return self._typed is not None

    def raw(self, index: int) -> object:
        """The event at ``index`` as a map, as the old path checked it (for a rejected
        event's audit record: only the old path rejects, so the map is there)."""
        assert self._raws is not None, "raw() is for rejected events, after validate()"
        return self._raws[index]


class BatchReader:
    """Reads one connection's batch frames (see the module doc)."""

    def __init__(self, validator: EventValidator, max_batch: int) -> None:
        self.validator = validator
        self.max_batch = max_batch

    def read(self, message: str | bytes, last_seq: int) -> ReadBatch:
        """The batch ``message`` holds; :class:`~meterd.ingest.protocol.Fault` (the one
        :func:`decode_frame` or :func:`parse_batch` raises) if it is not a good batch."""
        if type(message) is bytes:
            try:
                batch = _decode(message)
            except Exception:  # msgspec refuses it: the precise path says why, or accepts
                pass  # (ValidationError, DecodeError, UnicodeDecodeError, RecursionError)
            else:
                events = batch.events
                if batch.seq > last_seq and len(events) <= self.max_batch:
                    return ReadBatch(self, batch.seq, len(events), events, None)
        seq, raws = self.parse(message, last_seq)
        return ReadBatch(self, seq, len(raws), None, raws)

    def parse(self, message: str | bytes, last_seq: int) -> tuple[int, list[Any]]:
        """The old way: :func:`decode_frame` then :func:`parse_batch`."""
        return parse_batch(decode_frame(message), last_seq, self.max_batch)
