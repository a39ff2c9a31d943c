"""The batch payload: the accepted events of one ``append``, as one msgpack blob.

A payload is a msgpack **array of events**; each event is an array::

    [id, meter, quantity, time, properties, producer, received_at]

* ``quantity``: an ``int`` is a msgpack integer (``ExtType(1, ascii digits)`` outside the
  64-bit range msgpack integers cover); a ``Decimal`` is its
  :func:`~meterd.model.canonical_quantity` string, computed exactly whatever the decimal
  context (never rounded; at most 1000 digits written out), so ``Decimal("1.50")`` is
  stored as ``"1.5"`` and read back as ``Decimal("1.5")``. A
  ``float`` (or ``bool``) is refused: usage is billed exactly.
* ``properties``: a msgpack map ``str -> str`` in the event's (sorted) order.
* The account is not repeated per event: it is the batch row's ``account`` column.

Readers accept arrays with more than seven elements and ignore the extra ones, so a later
version can append fields without a migration.

msgpack is compositional: a payload is also the array header followed by the events packed
one by one (:func:`encode_event`, :func:`pack_batch`).
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from meterd.model import Event, Quantity, fingerprint_of

from .errors import StoreCorruptError

__all__ = [
    "batch_event_ids",
    "batch_time_bounds",
    "decode_batch",
    "decode_dims",
    "decode_quantity",
    "encode_batch",
    "encode_dims",
    "encode_event",
    "encode_quantity",
    "encode_rows",
    "stored_quantity",
    "event_row",
    "event_row_and_fingerprint",
    "pack_array_header",
    "pack_batch",
    "pack_rows",
]

BIGINT_EXT: Final = 1
_INT_MIN: Final = -(1 << 63)
_UINT_MAX: Final = (1 << 64) - 1
_FIELDS: Final = 7

_MAX_DIGITS: Final = 1000


_compact_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode_dims(dims: Sequence[str]) -> str:
    """Dimension values as the ``dims`` key of their ``windows`` row: a compact JSON array of
    strings, ASCII only (``("a\\x1fb", "c")`` -> ``'["a\\u001fb","c"]'``).

    Injective for every sequence of strings, separators, quotes, backslashes and lone
    surrogates included (JSON escapes them), so two cells never share a row. Part of the file
    format (schema version 6 re-encoded the earlier ``"\\x1f"``-joined keys).
    """
    return _compact_json(list(dims))


def decode_dims(text: str) -> tuple[str, ...]:
    """The dimension values :func:`encode_dims` encoded as ``text``."""
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise StoreCorruptError(f"window dims {text!r:.200} is not a JSON array of strings")
    return tuple(values)


def _canonical_decimal(quantity: Decimal) -> str:
    # canonical_quantity() computed without a context: format(d, "f") is exact, where
    # normalize() and quantize() would round to the ambient context's precision.
    if not quantity.is_finite():
        raise ValueError(f"quantity {quantity} is not finite")
    _, digits, exponent = quantity.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) + abs(exponent) > _MAX_DIGITS:
        raise ValueError(f"quantity {quantity} has more than {_MAX_DIGITS} digits written out")
    text = format(quantity, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("0", "-0") else text


def encode_quantity(quantity: Quantity) -> Any:
    """The msgpack value for ``quantity`` (see the module doc); ``TypeError``/``ValueError``."""
    if type(quantity) is int:
        if _INT_MIN <= quantity <= _UINT_MAX:
            return quantity
        return msgpack.ExtType(BIGINT_EXT, str(quantity).encode("ascii"))
    if isinstance(quantity, Decimal):
        return _canonical_decimal(quantity)
    raise TypeError(
        f"quantity must be an int or a Decimal, got {type(quantity).__name__} {quantity!r}"
    )


def decode_quantity(raw: Any) -> Quantity:
    """The quantity :func:`encode_quantity` wrote; ``ValueError`` for anything else."""
    if type(raw) is int:
        return raw
    if isinstance(raw, str):
        try:
            value = Decimal(raw)
        except decimal.InvalidOperation:
            raise ValueError(f"quantity {raw!r} is not a decimal") from None
        if not value.is_finite():
            raise ValueError(f"quantity {raw!r} is not finite")
        return value
    if isinstance(raw, msgpack.ExtType) and raw.code == BIGINT_EXT:
        return int(raw.data.decode("ascii"))
    raise ValueError(f"quantity {raw!r} is neither an integer nor a decimal string")


def event_row(event: Event) -> list[Any]:
    """The msgpack array of one event (the account left out); checks what msgpack would not."""
    properties = dict(event.properties)
    if len(properties) != len(event.properties):
        raise ValueError(f"event {event.id!r} has a property key twice")
    if type(event.time) is not int or type(event.received_at) is not int:
        raise TypeError(f"event {event.id!r}: time and received_at must be int milliseconds")
    return [
        event.id,
        event.meter,
        encode_quantity(event.quantity),
        event.time,
        properties,
        event.producer,
        event.received_at,
    ]


def event_row_and_fingerprint(event: Event) -> tuple[list[Any], int]:
    """:func:`event_row` and ``event.fingerprint()``, canonicalizing the quantity once."""
    row = event_row(event)
    quantity = row[2]
    text = quantity if type(quantity) is str else str(event.quantity)
    return row, fingerprint_of(event.meter, text, event.time, event.properties)


_SHORT_DECIMAL: Final = 500  # characters: str() of it is under _MAX_DIGITS written out


def stored_quantity(quantity: int | Decimal) -> tuple[Any, str]:
    """A quantity as a row stores it (:func:`encode_quantity`) and its canonical text (what
    ``Event.fingerprint()`` hashes), computed once: a ``Decimal`` takes ``str()``'s plain
    notation when it has one (no exponent, under the digit limit), with trailing zeros and
    the sign of zero dropped, and :func:`_canonical_decimal` otherwise."""
    if type(quantity) is Decimal:
        text = str(quantity)
        if "E" in text or len(text) > _SHORT_DECIMAL or not quantity.is_finite():
            text = _canonical_decimal(quantity)
        elif "." in text:
            text = text.rstrip("0").rstrip(".")
            if text == "-0":
                text = "0"
        elif text == "-0":
            text = "0"
        return text, text
    value = encode_quantity(quantity)
    return value, value if type(value) is str else str(quantity)


def encode_rows(events: Iterable[Event]) -> tuple[list[bytes], list[int]]:
    """Each event packed as by :func:`encode_event`, and its ``Event.fingerprint()``: the
    writer's hot path, the same bytes and digests as those functions computed with one
    reused packer and no per-event helper calls. Raises what :func:`event_row` would.

    A ``Decimal`` quantity takes ``str()``'s plain notation when it has one (no exponent,
    not too long to be under the digit limit) and :func:`_canonical_decimal` otherwise."""
    pack = msgpack.Packer(use_bin_type=True).pack
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    packed: list[bytes] = []
    fingerprints: list[int] = []
    add_row = packed.append
    add_fingerprint = fingerprints.append
    stored = stored_quantity
    for event in events:
        value, text = stored(event.quantity)
        time = event.time
        properties = event.properties
        mapping = dict(properties)
        if len(mapping) != len(properties):
            raise ValueError(f"event {event.id!r} has a property key twice")
        if type(time) is not int or type(event.received_at) is not int:
            raise TypeError(f"event {event.id!r}: time and received_at must be int milliseconds")
        meter = event.meter
        add_row(pack((event.id, meter, value, time, mapping, event.producer, event.received_at)))
        # fingerprint_of()'s bytes: a tuple packs as the array its list would.
        digest = blake2b(pack((meter, text, time, properties)), digest_size=8).digest()
        add_fingerprint(from_bytes(digest, "big") >> 1)
    return packed, fingerprints


def pack_array_header(length: int) -> bytes:
    """The msgpack header of an array of ``length`` items (a payload is this header
    followed by its events packed one by one)."""
    header = msgpack.Packer().pack_array_header(length)
    assert isinstance(header, bytes)
    return header


def pack_rows(rows: Sequence[list[Any]]) -> bytes:
    """A payload from :func:`event_row` arrays."""
    data = msgpack.packb(rows, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def encode_event(event: Event) -> bytes:
    """One event as a packed msgpack array (the account left out)."""
    data = msgpack.packb(event_row(event), use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def pack_batch(encoded: Sequence[bytes]) -> bytes:
    """A payload from events packed by :func:`encode_event` (the same bytes as
    :func:`encode_batch` of the events)."""
    return pack_array_header(len(encoded)) + b"".join(encoded)


def encode_batch(events: Iterable[Event]) -> bytes:
    """A payload holding ``events``."""
    return pack_rows([event_row(event) for event in events])


def _unpack(payload: bytes, where: str) -> list[Any]:
    try:
        raw = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise StoreCorruptError(f"{where}: payload is not msgpack: {exc}") from exc
    if not isinstance(raw, list):
        raise StoreCorruptError(f"{where}: payload is a {type(raw).__name__}, not an array")
    for index, item in enumerate(raw):
        if not isinstance(item, list) or len(item) < _FIELDS:
            raise StoreCorruptError(f"{where}: event {index} is not a {_FIELDS}-field array")
    return raw


def _event(item: list[Any], account: str) -> Event:
    event_id, meter, quantity, time, properties, producer, received_at = item[:_FIELDS]
    if not (
        isinstance(event_id, str)
        and isinstance(meter, str)
        and type(time) is int
        and isinstance(properties, dict)
        and isinstance(producer, str)
        and type(received_at) is int
    ):
        raise ValueError("a field has the wrong type")
    props = tuple(properties.items())
    if not all(isinstance(value, str) for _, value in props):
        raise ValueError("a property value is not a string")
    return Event(
        id=event_id,
        account=account,
        meter=meter,
        quantity=decode_quantity(quantity),
        time=time,
        properties=props,
        producer=producer,
        received_at=received_at,
    )


def decode_batch(payload: bytes, account: str, *, where: str = "batch") -> list[Event]:
    """The events of a payload, with ``account`` filled in.

    ``where`` names the batch in error messages; a payload that does not decode raises
    :class:`~meterd.store.errors.StoreCorruptError`.
    """
    events = []
    for index, item in enumerate(_unpack(payload, where)):
        try:
            events.append(_event(item, account))
        except ValueError as exc:
            raise StoreCorruptError(f"{where}: event {index}: {exc}") from exc
    return events


def batch_event_ids(payload: bytes, *, where: str = "batch") -> list[str]:
    """Only the ids of a payload's events (the dedupe collision check)."""
    return [item[0] for item in _unpack(payload, where)]


def batch_time_bounds(payload: bytes, *, where: str = "batch") -> tuple[int, int]:
    """``(min(time), max(time))`` of a non-empty payload (the v3 backfill)."""
    times = [item[3] for item in _unpack(payload, where)]
    if not times or not all(type(t) is int for t in times):
        raise StoreCorruptError(f"{where}: payload has no events or a non-integer time")
    return min(times), max(times)
