"""The core data types every part of meterd shares.

Quantities are exact: ``int`` or :class:`decimal.Decimal`, never ``float``.
Times are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import decimal
import enum
import hashlib
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Annotated, Final, TypeAlias

import msgpack  # type: ignore[import-untyped]
from msgspec import Meta

from meterd import schema

Quantity: TypeAlias = int | Decimal

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

MAX_MS: Final = 253_402_300_799_999
"""The greatest time the API takes: 9999-12-31T23:59:59.999Z, the last millisecond of
four-digit years. Any window a time in ``0..MAX_MS`` falls in ends well inside SQLite's
INTEGER (int64) and on a calendar date, so no query bound derived from one overflows."""
MAX_MS_TEXT: Final = "9999-12-31T23:59:59.999Z"


class Aggregation(enum.Enum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    MIN = "min"
    LATEST = "latest"
    UNIQUE_COUNT = "unique_count"


class Window(enum.Enum):
    """Query granularities; usage is kept per minute and rolled up from there."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def ms(self) -> int:
        return {Window.MINUTE: MINUTE_MS, Window.HOUR: HOUR_MS, Window.DAY: DAY_MS}[self]

    def align(self, time_ms: int) -> int:
        """The start of the window ``time_ms`` falls in (UTC; floor, also before 1970)."""
        return time_ms - time_ms % self.ms


METER_NAME: Final = r"[a-z0-9][a-z0-9._-]{0,63}"
MAX_DIMENSIONS: Final = 16
MAX_PROPERTY_KEY: Final = 64  # protocol.md §2.2: property keys are at most 64 characters
PropertyName: TypeAlias = Annotated[str, Meta(max_length=MAX_PROPERTY_KEY)]


@dataclass(frozen=True, slots=True)
class Meter:
    """One ``[[meters]]`` entry of the config: its keys are declared here (meterd.schema)."""

    name: Annotated[
        str,
        schema.key(
            "The meter's name, as events give it.",
            pattern=METER_NAME,
            invalid="a valid meter name (1-64 characters of a-z, 0-9, '.', '_', '-',"
            " starting with a letter or digit)",
        ),
    ]
    aggregation: Annotated[
        Aggregation, schema.key("How a window's usage combines its events' quantities.")
    ]
    dimensions: Annotated[
        tuple[PropertyName, ...],
        schema.key(
            "Event properties usage can be grouped by.",
            max_length=MAX_DIMENSIONS,
            unit="dimensions",
            kind="array of property names",
        ),
    ] = ()
    unique_property: (
        Annotated[
            str,
            schema.key(
                "The property whose distinct values unique_count counts (unique_count only).",
                max_length=MAX_PROPERTY_KEY,
            ),
        ]
        | None
    ) = None
    unit: (
        Annotated[
            str,
            schema.key(
                "What one unit of the quantity is, shown beside figures (`dyno-seconds`,"
                " `bytes`, `users`); default: the meter's name.",
                max_length=64,
            ),
        ]
        | None
    ) = None

    @property
    def units(self) -> str:
        """The word shown after a quantity of this meter: its ``unit``, else its name."""
        return self.unit or self.name


@dataclass(frozen=True, slots=True)
class Event:
    """A validated usage event (protocol.md §2.2), as the accounts layer receives it.

    ``quantity`` is 1 for ``count`` meters. ``properties`` are sorted by key so
    that equal events compare and hash equal.
    """

    id: str
    account: str
    meter: str
    quantity: Quantity
    time: int
    properties: tuple[tuple[str, str], ...] = ()
    producer: str = ""
    received_at: int = 0

    def fingerprint(self) -> int:
        """A 63-bit digest of what makes the event what it is (meter, quantity, time,
        properties): equal for a genuine re-send, different for an ``id_conflict``."""
        return fingerprint_of(
            self.meter, canonical_quantity(self.quantity), self.time, self.properties
        )

    def dedupe_key(self) -> int:
        """A 63-bit key for ``(account, id)``: the compact dedupe index key."""
        return _digest63(f"{self.account}\x1f{self.id}")

    def property(self, name: str) -> str | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None


_new_object = object.__new__
(
    _set_id,
    _set_account,
    _set_meter,
    _set_quantity,
    _set_time,
    _set_properties,
    _set_producer,
    _set_received_at,
) = (getattr(Event, field.name).__set__ for field in fields(Event))


def new_event(
    id: str,
    account: str,
    meter: str,
    quantity: Quantity,
    time: int,
    properties: tuple[tuple[str, str], ...],
    producer: str,
    received_at: int,
) -> Event:
    """``Event(id, account, ...)``, every field given, in about half the time: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``, this sets the
    slots directly (ingest builds one :class:`Event` per event, on the hot path). The
    result is an ordinary :class:`Event`, equal to the one ``Event(...)`` builds."""
    event: Event = _new_object(Event)
    _set_id(event, id)
    _set_account(event, account)
    _set_meter(event, meter)
    _set_quantity(event, quantity)
    _set_time(event, time)
    _set_properties(event, properties)
    _set_producer(event, producer)
    _set_received_at(event, received_at)
    return event


# Normalizing under the default context (28 digits) would round long quantities.
_CANONICAL = decimal.Context(prec=1000, traps=[decimal.Inexact, decimal.InvalidOperation])


def canonical_quantity(quantity: Quantity) -> str:
    """One text per value: ``Decimal("1.50")``, ``Decimal("1.5")`` -> ``"1.5"``; ints as is."""
    if isinstance(quantity, int):
        return str(quantity)
    normalized = quantity.normalize(_CANONICAL)
    text = format(normalized, "f")  # plain digits, never an exponent
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "0", "") else text


def fingerprint_of(
    meter: str, quantity_text: str, time: int, properties: tuple[tuple[str, str], ...]
) -> int:
    """:meth:`Event.fingerprint` from its parts (``quantity_text`` is the
    :func:`canonical_quantity`), for callers that have the canonical text already."""
    # msgpack, not a joined string: property values may hold any character, and
    # a separator inside one must not make two different events look equal.
    return _digest63_bytes(msgpack.packb([meter, quantity_text, time, list(properties)]))


def _digest63(text: str) -> int:
    return _digest63_bytes(text.encode())


def _digest63_bytes(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1
