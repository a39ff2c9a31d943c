"""Checking one producer event (protocol.md §2.2) and naming what is wrong with it (§2.3).

:meth:`EventValidator.validate` turns the decoded msgpack value of one event into a
:class:`meterd.model.Event`, or into a :class:`Rejection` whose ``code`` is one of §2.3's and
whose ``message`` names the field and why, in words a producer's engineer can act on. An
event gets one rejection: the first problem found, checking the event's shape first, then
``id``, ``account``, ``meter``, ``quantity``, ``time`` and ``properties`` in that order.

Choices where the protocol is silent (documented in :mod:`meterd.ingest`):

* A **missing** field is rejected with that field's code (a missing ``time`` is
  ``invalid_time``); ``invalid_event`` is for an event that is not a map or has a key the
  protocol does not define (a non-string key included).
* **quantity** as a string is a plain decimal: ASCII digits with an optional fraction and an
  optional exponent (``"12.5"``, ``"0.25"``, ``"1E-7"``; an optional sign), parsed exactly
  with :class:`decimal.Decimal`. Strings longer than 64 characters and values with more than
  40 digits when written out in full (``1E+40`` is 41 digits) are rejected: no real usage
  figure needs more, and it keeps sums exact and cheap. ``-0`` is ``0``. Booleans are not
  integers. For a ``count`` meter the quantity is ignored whatever it holds (even a float),
  and the event counts 1.
* **time** must lie in ``[now - late_window, now + 5 minutes]``, both ends included, ``now``
  being the server's clock when the batch was read (one ``now`` per batch).
* **properties** may be absent or ``nil`` (no properties); empty keys and values are allowed
  (the protocol only bounds their length).
* Lengths are counted in characters (Unicode code points), as the protocol says.

Several paths, one verdict. :meth:`EventValidator.validate_precise` checks every field in
the order above and writes every rejection message: it is the reference. In front of it,
:meth:`EventValidator.validate` first tries a fast check of the common well-formed event
(exact types, one lookup per meter, a plain decimal string of at most 40 characters, a
cache of property maps) and hands anything else to the precise path; and
:meth:`EventValidator.validate_batch` first tries those same checks a field at a time over
the whole batch, then falls back to :meth:`~EventValidator.validate` per event. The fast
paths only ever accept what the precise path accepts, as the same :class:`Event`; they
never reject (tests/ingest/test_validate.py checks this on generated events). A fourth,
:meth:`EventValidator.accept_typed`, takes a batch that :mod:`meterd.ingest.typed` decoded
into msgspec Structs (types and lengths already checked in C) under the same rule
(tests/ingest/test_typed_decode.py).
"""

from __future__ import annotations

import decimal
import difflib
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import repeat
from typing import Any, Final, NamedTuple, Protocol

from meterd.config import Producer, format_duration
from meterd.model import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Aggregation,
    Event,
    Meter,
    Quantity,
    new_event,
)

__all__ = [
    "ACCOUNT_MAX",
    "EVENT_KEYS",
    "FUTURE_MS",
    "ID_MAX",
    "MAX_PROPERTIES",
    "PROPERTY_KEY_MAX",
    "PROPERTY_VALUE_MAX",
    "QUANTITY_DIGITS_MAX",
    "QUANTITY_TEXT_MAX",
    "REJECTION_CODES",
    "Columns",
    "EventValidator",
    "Rejection",
    "TypedEvent",
]

ID_MAX: Final = 200
ACCOUNT_MAX: Final = 128
MAX_PROPERTIES: Final = 16
PROPERTY_KEY_MAX: Final = 64
PROPERTY_VALUE_MAX: Final = 256
QUANTITY_TEXT_MAX: Final = 64
QUANTITY_DIGITS_MAX: Final = 40
FUTURE_MS: Final = 5 * MINUTE_MS
EVENT_KEYS: Final = ("id", "account", "meter", "quantity", "time", "properties")
REJECTION_CODES: Final = (
    "invalid_id",
    "invalid_account",
    "unknown_meter",
    "not_permitted",
    "invalid_quantity",
    "invalid_time",
    "time_out_of_range",
    "invalid_properties",
    "id_conflict",
    "invalid_event",
)

_ACCOUNT: Final = re.compile(r"[A-Za-z0-9._:@-]+")
_ACCOUNT_FULLMATCH: Final = _ACCOUNT.fullmatch
_ACCOUNT_BAD_CHAR: Final = re.compile(r"[^A-Za-z0-9._:@-]")
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE: Final = frozenset(
    {"nan", "+nan", "-nan", "snan", "+snan", "-snan", "inf", "+inf", "-inf"}
    | {"infinity", "+infinity", "-infinity"}
)
_EVENT_KEY_SET: Final = frozenset(EVENT_KEYS)
_KEYS_TEXT: Final = "id, account, meter, quantity, time and properties"
_SECONDS_LIKE: Final = 100_000_000_000  # a time below this (1973 in ms) is likely seconds
_ZERO: Final = Decimal(0)
_ONLY_DICT: Final = frozenset({dict})
_ONLY_STR: Final = frozenset({str})
_ONLY_INT: Final = frozenset({int})
_ONLY_NONE: Final = frozenset({type(None)})
_REQUIRED_FIELDS: Final = operator.itemgetter("id", "account", "meter", "time")
_QUANTITY_FIELD: Final = operator.methodcaller("get", "quantity")  # a count meter's may be missing
_PROPERTIES_FIELD: Final = operator.methodcaller("get", "properties")
_DOT, _NOTHING, _ONCE = repeat("."), repeat(""), repeat(1)  # str.replace(text, ".", "", 1)
_INT_OR_STR: Final = frozenset({int, str})
# What _accept's quantity check lets through: ASCII digits with at most one '.' (and a digit).
_PLAIN_DECIMAL: Final = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+").fullmatch
_ID_OF, _ACCOUNT_OF, _METER_OF, _TIME_OF, _QUANTITY_OF, _PROPERTIES_OF = map(
    operator.attrgetter, ("id", "account", "meter", "time", "quantity", "properties")
)
_ZERO_DIGITS: Final = repeat("0.")  # str.strip(text, "0."): "" for a plain decimal zero
_PROPERTIES_SEEN_MAX: Final = 1024  # property maps one validator remembers (then starts over)


class TypedEvent(Protocol):
    """What :meth:`EventValidator.accept_typed` reads of an event msgspec decoded
    (:class:`meterd.ingest.typed.WireEvent`, which imports this module)."""

    @property
    def id(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def meter(self) -> str: ...
    @property
    def time(self) -> int: ...
    @property
    def quantity(self) -> object: ...
    @property
    def properties(self) -> dict[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected event of a batch, as §2.3's ``rejected`` list holds it."""

    index: int
    id: str | None
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "code": self.code, "message": self.message}


class Columns(NamedTuple):
    """A batch's accepted events, a field a column (:meth:`EventValidator.typed_columns`):
    event *i* of the batch is ``ids[i]``, ``accounts[i]``, ... (``meters``, ``quantities``
    and ``properties`` may be :func:`itertools.repeat` of one value: read them with
    ``zip``). ``meters`` are the configured meters' names; ``quantities`` as an
    :class:`Event` holds them, or as a gateway sends them (``wire``)."""

    ids: list[str]
    accounts: list[str]
    meters: Iterable[str]
    quantities: Iterable[Quantity | str]
    times: list[int]
    properties: Iterable[tuple[tuple[str, str], ...]]


def describe(value: object) -> str:
    """What ``value`` is, for a message: ``'a float (1.5)'``, ``'a list'``; short, never deep."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({_clip(str(value))})"
    if isinstance(value, float):
        return f"a float ({_clip(repr(value))})"
    if isinstance(value, str):
        return f"a string ({show(value)})"
    if isinstance(value, bytes | bytearray):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, list | tuple):
        return f"an array ({len(value)} items)"
    if isinstance(value, dict):
        return f"a map ({len(value)} entries)"
    return f"a msgpack {type(value).__name__}"


def show(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return "far outside any calendar date"


def _human(ms: int) -> str:
    """``35 days``, ``5 minutes``; falls back to the config's short form (``1500ms``)."""
    for size, unit in ((DAY_MS, "day"), (HOUR_MS, "hour"), (MINUTE_MS, "minute"), (1000, "second")):
        if ms and ms % size == 0:
            count = ms // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return format_duration(ms)


def _suggest(word: str, candidates: list[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _grouped(
    indexes: Iterable[int], events: list[Event]
) -> dict[str, tuple[list[int], list[Event]]]:
    """``events`` (at ``indexes`` in their batch) by account, in order of first appearance."""
    groups: dict[str, tuple[list[int], list[Event]]] = {}
    get = groups.get
    for index, event in zip(indexes, events, strict=True):
        account = event.account
        group = get(account)
        if group is None:  # the common case: ~490 accounts in a batch of 500 events
            groups[account] = ([index], [event])
        else:
            group[0].append(index)
            group[1].append(event)
    return groups


def _quantities(texts_or_ints: tuple[Any, ...]) -> list[Quantity] | tuple[int, ...] | None:
    """:meth:`EventValidator._accept`'s quantity check over a batch (all decimal strings or
    all integers), or ``None``."""
    kinds = set(map(type, texts_or_ints))
    if kinds == _ONLY_INT:
        return texts_or_ints if min(texts_or_ints) >= 0 else None
    if (
        kinds != _ONLY_STR
        or max(map(len, texts_or_ints)) > QUANTITY_DIGITS_MAX
        or not all(map(str.isascii, texts_or_ints))
        or not all(map(str.isdigit, map(str.replace, texts_or_ints, _DOT, _NOTHING, _ONCE)))
    ):
        return None
    values: list[Quantity] = list(map(Decimal, texts_or_ints))
    return values if all(values) else [value or _ZERO for value in values]


def _typed_quantities(quantities: list[Any]) -> list[Quantity] | None:
    """The quantities of non-count events msgspec decoded (integers >= 0, strings of at most
    ``QUANTITY_DIGITS_MAX`` characters, or ``UNSET`` for none), or ``None`` if one is missing
    or is not a plain decimal (ASCII digits with at most one '.'): :meth:`_accept`'s check."""
    kinds = set(map(type, quantities))
    if kinds == _ONLY_INT:
        return quantities
    if not kinds <= _INT_OR_STR:
        return None
    if kinds == _ONLY_STR:
        if not all(map(_PLAIN_DECIMAL, quantities)):
            return None
        values: list[Quantity] = list(map(Decimal, quantities))
        return values if all(values) else [value or _ZERO for value in values]
    if not all(map(_PLAIN_DECIMAL, [value for value in quantities if type(value) is str])):
        return None
    return [value if type(value) is int else Decimal(value) or _ZERO for value in quantities]


def _typed_wire_quantities(quantities: list[Any]) -> list[Any] | None:
    """:func:`_typed_quantities`' check, the values as a gateway sends them: integers as
    they are, a decimal as its text (``"0"`` for any zero, as validation makes every zero
    ``Decimal(0)``), never a :class:`~decimal.Decimal` built."""
    kinds = set(map(type, quantities))
    if kinds == _ONLY_INT:
        return quantities
    if not kinds <= _INT_OR_STR:
        return None
    texts = quantities if kinds == _ONLY_STR else [v for v in quantities if type(v) is str]
    if not all(map(_PLAIN_DECIMAL, texts)):
        return None
    if "" in map(str.strip, texts, _ZERO_DIGITS):  # a zero: only '0's and a '.'
        return [
            "0" if type(value) is str and not value.strip("0.") else value for value in quantities
        ]
    return quantities


def written_digits(value: Decimal) -> int:
    """How many digits ``value`` (finite, not zero) has written out in full, without
    trailing fraction zeros: ``1E+3`` -> 4, ``0.0015`` -> 5, ``12.50`` -> 3."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    count = len(digits)
    while exponent < 0 and count > 1 and digits[count - 1] == 0:
        count -= 1
        exponent += 1
    if exponent >= 0:
        return count + exponent
    fraction = -exponent
    return max(count - fraction, 1) + fraction


class _Invalid(Exception):
    """Raised inside validation; becomes a :class:`Rejection`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventValidator:
    """Validates the events of one producer against the configured meters."""

    def __init__(
        self,
        meters: Mapping[str, Meter],
        producer: Producer,
        late_window_ms: int,
        future_ms: int = FUTURE_MS,
    ) -> None:
        self.meters = meters
        self.producer = producer
        self.late_window_ms = late_window_ms
        self.future_ms = future_ms
        self._late_text = _human(late_window_ms)
        self._permitted = sorted(
            name for name in meters if producer.meters is None or name in producer.meters
        )
        # The fast path's one lookup per event: a meter this producer may write -> (its
        # name, whether it is a count meter).
        self._writable: dict[str, tuple[str, bool]] = {
            name: (meters[name].name, meters[name].aggregation is Aggregation.COUNT)
            for name in self._permitted
        }
        self._properties_seen: dict[tuple[Any, ...], tuple[tuple[str, str], ...]] = {}

    def validate(self, index: int, raw: object, now_ms: int, received_at: int) -> Event | Rejection:
        """The event at ``index`` of a batch read at ``now_ms``, or why it is rejected.

        Exactly :meth:`validate_precise`'s verdict, faster for a well-formed event."""
        event = self._accept(
            raw, now_ms - self.late_window_ms, now_ms + self.future_ms, received_at
        )
        if event is None:
            return self.validate_precise(index, raw, now_ms, received_at)
        return event

    def validate_batch(
        self, raw_events: list[Any], now_ms: int
    ) -> tuple[dict[str, tuple[list[int], list[Event]]], list[Rejection]]:
        """A whole batch read at ``now_ms`` (also every event's ``received_at``):
        ``(groups, rejected)``. ``groups`` maps each account to the indexes of its valid
        events in the batch and those events, in batch order, accounts in order of first
        appearance; ``rejected`` holds the rejections in index order. Each verdict is
        :meth:`validate`'s (so :meth:`validate_precise`'s)."""
        low = now_ms - self.late_window_ms
        high = now_ms + self.future_ms
        events = self._accept_all(raw_events, low, high, now_ms)
        if events is not None:
            return _grouped(range(len(events)), events), []
        accept = self._accept
        indexes: list[int] = []
        events = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(raw_events):
            event = accept(raw, low, high, now_ms)
            if event is None:
                result = self.validate_precise(index, raw, now_ms, now_ms)
                if isinstance(result, Rejection):
                    rejected.append(result)
                    continue
                event = result
            indexes.append(index)
            events.append(event)
        return _grouped(indexes, events), rejected

    def accept_typed(
        self, events: Sequence[TypedEvent], now_ms: int
    ) -> tuple[dict[str, tuple[list[int], list[Event]]], list[Rejection]] | None:
        """:meth:`validate_batch`'s ``(groups, [])`` for a batch whose events msgspec
        decoded (:mod:`meterd.ingest.typed`: keys, types, lengths and bounds are checked),
        if every event is accepted; else ``None``, and :meth:`validate_batch` on the events
        as msgpack decodes them gives the verdicts. The checks are :meth:`typed_columns`';
        the :class:`Event` objects are built from its columns."""
        columns = self.typed_columns(events, now_ms)
        if columns is None:
            return None
        found = list(
            map(
                new_event,
                columns.ids,
                columns.accounts,
                columns.meters,
                columns.quantities,
                columns.times,
                columns.properties,
                repeat(self.producer.name),
                repeat(now_ms),
            )
        )
        return _grouped(range(len(found)), found), []

    def typed_columns(
        self, events: Sequence[TypedEvent], now_ms: int, *, wire: bool = False
    ) -> Columns | None:
        """The fields of a batch msgspec decoded, a column each, if every event is accepted
        (else ``None``: see :meth:`accept_typed`). The checks left after msgspec's are made
        a field at a time over the whole batch, in C: an account's characters, the meter
        (configured, writable by this producer), a decimal quantity's digits, ``time`` in
        its window; the same shortcuts as :meth:`_accept`'s, so the same fields as the
        :class:`Event` objects the other paths build.

        ``wire``: the quantities as a gateway sends them (:mod:`meterd.partitions`), not
        as :class:`Event` holds them: a decimal stays the producer's text (``"0"`` for a
        zero, which validation makes ``Decimal(0)``), which is the text of the
        :class:`~decimal.Decimal` an owner decodes from it. No per-event object is built
        either way."""
        accounts = list(map(_ACCOUNT_OF, events))
        times = list(map(_TIME_OF, events))
        if (
            not all(map(_ACCOUNT_FULLMATCH, accounts))
            or min(times) < now_ms - self.late_window_ms
            or max(times) > now_ms + self.future_ms
        ):
            return None
        quantities_of = _typed_wire_quantities if wire else _typed_quantities
        meters = list(map(_METER_OF, events))
        names: Iterable[str]
        values: Iterable[Quantity | str] | None
        if len(set(meters)) == 1:
            writable = self._writable.get(meters[0])
            if writable is None:
                return None
            names = repeat(writable[0])
            # A count's quantity is 1, whatever it holds (even nothing).
            values = repeat(1) if writable[1] else quantities_of(list(map(_QUANTITY_OF, events)))
        else:
            known = {meter: self._writable.get(meter) for meter in meters}
            if None in known.values():
                return None
            pairs = [known[meter] for meter in meters]
            names = [pair[0] for pair in pairs]  # type: ignore[index]
            counts = [pair[1] for pair in pairs]  # type: ignore[index]
            quantities = list(map(_QUANTITY_OF, events))
            if True not in counts:
                values = quantities_of(quantities)
            else:  # a count's quantity is 1, whatever it holds (even nothing)
                others = quantities_of(
                    [value for value, count in zip(quantities, counts, strict=True) if not count]
                )
                if others is None:
                    return None
                rest = iter(others)
                values = [1 if count else next(rest) for count in counts]
        if values is None:
            return None
        maps = list(map(_PROPERTIES_OF, events))
        properties: Iterable[tuple[tuple[str, str], ...] | None] | None
        if not any(maps):  # no properties (nil or empty maps)
            properties = repeat(())
        elif not all(maps):  # nil (or empty) maps among others: one at a time
            properties = [self._fast_properties(value) if value else () for value in maps]
            if None in properties:
                return None
        else:
            properties = self._all_properties(maps)
            if properties is None:
                return None
        return Columns(
            list(map(_ID_OF, events)),
            accounts,
            names,
            values,
            times,
            properties,  # type: ignore[arg-type]  # no None left
        )

    def _accept_all(
        self, raws: list[Any], low: int, high: int, received_at: int
    ) -> list[Event] | None:
        """The events of a batch :meth:`_accept` would accept whole, or ``None`` if it
        leaves any one to :meth:`validate_precise` (or the batch mixes ``count`` and other
        meters, or kinds of quantity or of properties: rarer shapes the per-event path
        takes). :meth:`_accept`'s checks, a field at a time over the whole batch: the
        loops run in C (``map`` over builtins), which halves the cost of a large batch."""
        if not raws or set(map(type, raws)) != _ONLY_DICT:
            return None
        if not all(map(_EVENT_KEY_SET.issuperset, raws)):
            return None
        try:
            ids, accounts, meters, times = zip(*map(_REQUIRED_FIELDS, raws), strict=True)
        except KeyError:
            return None
        if (
            set(map(type, ids)) != _ONLY_STR
            or min(map(len, ids)) == 0
            or max(map(len, ids)) > ID_MAX
            or set(map(type, accounts)) != _ONLY_STR
            or max(map(len, accounts)) > ACCOUNT_MAX
            or not all(map(_ACCOUNT_FULLMATCH, accounts))
            or set(map(type, meters)) != _ONLY_STR
            or set(map(type, times)) != _ONLY_INT
            or min(times) < low
            or max(times) > high
        ):
            return None
        names: Iterable[str]
        counts: set[bool]
        if len(set(meters)) == 1:
            writable = self._writable.get(meters[0])
            if writable is None:
                return None
            names, counts = repeat(writable[0]), {writable[1]}
        else:
            known = {meter: self._writable.get(meter) for meter in meters}
            if None in known.values():
                return None
            names = [known[meter][0] for meter in meters]  # type: ignore[index]
            counts = {writable[1] for writable in known.values()}  # type: ignore[index]
        values: Iterable[Quantity] | None
        if counts == {True}:  # the quantity is ignored (even missing)
            values = repeat(1)
        elif counts == {False}:
            values = _quantities(tuple(map(_QUANTITY_FIELD, raws)))
            if values is None:
                return None
        else:  # count and other meters mixed: left to the per-event path
            return None
        properties = self._all_properties(list(map(_PROPERTIES_FIELD, raws)))
        if properties is None:
            return None
        return list(
            map(
                new_event,
                ids,
                accounts,
                names,
                values,
                times,
                properties,
                repeat(self.producer.name),
                repeat(received_at),
            )
        )

    def _all_properties(self, maps: list[Any]) -> Iterable[tuple[tuple[str, str], ...]] | None:
        """:meth:`_fast_properties` of every map of a batch (``None`` if one is not good, or
        they are not all maps or all ``nil``)."""
        kinds = set(map(type, maps))
        if kinds == _ONLY_NONE:
            return repeat(())
        if kinds != _ONLY_DICT:
            return None
        try:
            found = list(map(self._properties_seen.get, map(tuple, map(dict.items, maps))))
        except TypeError:  # an unhashable value: a list or a map
            return None
        if None in found:
            found = [
                self._fast_properties(value) if known is None else known
                for known, value in zip(found, maps, strict=True)
            ]
            if None in found:
                return None
        return found  # type: ignore[return-value]

    def _accept(self, raw: object, low: int, high: int, received_at: int) -> Event | None:
        """The :class:`Event` of a well-formed event whose time lies in ``[low, high]``, or
        ``None``: then :meth:`validate_precise` gives the verdict (it may still accept).

        Only ever accepts what :meth:`validate_precise` accepts, as the same Event
        (tests/ingest/test_validate.py checks it on generated events). It asks for exact
        types (msgpack makes no subclasses) and takes shortcuts that hold for the common
        case only: a decimal string is plain digits with at most one '.', at most
        ``QUANTITY_DIGITS_MAX`` characters, so that it cannot have more digits written out
        in full than that."""
        if type(raw) is not dict or not raw.keys() <= _EVENT_KEY_SET:
            return None
        try:
            event_id = raw["id"]
            account = raw["account"]
            meter = raw["meter"]
            time = raw["time"]
        except KeyError:
            return None
        quantity = raw.get("quantity")  # missing is good for a count meter
        if type(event_id) is not str or not 0 < len(event_id) <= ID_MAX:
            return None
        if type(account) is not str or len(account) > ACCOUNT_MAX:
            return None
        if not _ACCOUNT_FULLMATCH(account) or type(meter) is not str:
            return None
        writable = self._writable.get(meter)
        if writable is None:
            return None
        name, is_count = writable
        if is_count:
            quantity = 1
        elif type(quantity) is str:
            if (
                len(quantity) > QUANTITY_DIGITS_MAX
                or not quantity.isascii()
                or not quantity.replace(".", "", 1).isdigit()  # ASCII: only 0-9 are digits
            ):
                return None
            quantity = Decimal(quantity) or _ZERO
        elif type(quantity) is not int or quantity < 0:
            return None
        if type(time) is not int or not low <= time <= high:
            return None
        properties = raw.get("properties")
        if properties is None:
            properties = ()
        elif type(properties) is dict:
            properties = self._fast_properties(properties)
            if properties is None:
                return None
        else:
            return None
        return new_event(
            event_id, account, name, quantity, time, properties, self.producer.name, received_at
        )

    def _fast_properties(self, value: dict[Any, Any]) -> tuple[tuple[str, str], ...] | None:
        """:meth:`_properties` of a good map (else ``None``), from a cache when a map with
        the same items in the same order was seen: producers repeat a few property sets,
        and the events then share one tuple."""
        items = tuple(value.items())
        try:
            known = self._properties_seen.get(items)
        except TypeError:  # an unhashable value: a list or a map
            return None
        if known is not None:
            return known
        if len(items) > MAX_PROPERTIES:
            return None
        for key, item in items:
            if (
                type(key) is not str
                or type(item) is not str
                or len(key) > PROPERTY_KEY_MAX
                or len(item) > PROPERTY_VALUE_MAX
            ):
                return None
        if len(self._properties_seen) >= _PROPERTIES_SEEN_MAX:
            self._properties_seen.clear()
        known = self._properties_seen[items] = tuple(sorted(items))
        return known

    def validate_precise(
        self, index: int, raw: object, now_ms: int, received_at: int
    ) -> Event | Rejection:
        """:meth:`validate` the slow way: every check one at a time, in the documented order;
        the reference for the fast path and the maker of every rejection message."""
        event_id: str | None = None
        if isinstance(raw, dict):  # a rejection names the event's id whenever it is valid
            candidate = raw.get("id")
            if isinstance(candidate, str) and 0 < len(candidate) <= ID_MAX:
                event_id = candidate
        try:
            raw = self._shape(raw)
            self._id(raw)
            account = self._account(raw)
            meter = self._meter(raw)
            quantity = self._quantity(raw, meter)
            time = self._time(raw, now_ms)
            properties = self._properties(raw)
        except _Invalid as invalid:
            return Rejection(index, event_id, invalid.code, invalid.message)
        assert event_id is not None  # _id() checked it
        return Event(
            event_id,
            account,
            meter.name,
            quantity,
            time,
            properties,
            self.producer.name,
            received_at,
        )

    def attribution(
        self, raw: object, now_ms: int
    ) -> tuple[str, str | None, int | None, tuple[tuple[str, str], ...] | None] | None:
        """For a rejected event: its ``(account, meter, time, properties)`` where each is
        valid (``None`` where not), or ``None`` if it names no valid account (it cannot be
        attributed). ``meter`` is any configured meter's name (even one the producer may
        not write); ``time`` any integer that fits SQLite's (even out of range), so that the
        audit trail places the event where the producer meant it."""
        if not isinstance(raw, dict):
            return None
        try:
            account = self._account(raw)
        except _Invalid:
            return None
        meter = raw.get("meter")
        if not isinstance(meter, str) or meter not in self.meters:
            meter = None
        time = raw.get("time")
        if type(time) is not int or not -(1 << 63) <= time < (1 << 63):
            time = None
        try:
            properties: tuple[tuple[str, str], ...] | None = self._properties(raw)
        except _Invalid:
            properties = None
        return account, meter, time, properties

    # ---- one field each --------------------------------------------------------------------

    def _shape(self, raw: object) -> dict[Any, Any]:
        if not isinstance(raw, dict):
            raise _Invalid(
                "invalid_event",
                f"an event must be a map with the keys {_KEYS_TEXT}; this one is {describe(raw)}",
            )
        if len(raw) > len(EVENT_KEYS) or not _EVENT_KEY_SET.issuperset(raw):
            self._unknown_keys(raw)
        return raw

    def _unknown_keys(self, raw: dict[Any, Any]) -> None:
        for key in raw:
            if not isinstance(key, str):
                raise _Invalid(
                    "invalid_event",
                    f"the event has a key that is {describe(key)}; keys are strings, one of"
                    f" {_KEYS_TEXT}",
                )
            if key not in _EVENT_KEY_SET:
                raise _Invalid(
                    "invalid_event",
                    f"unknown key {show(key)}{_suggest(key, list(EVENT_KEYS), 0.5)}; an event has"
                    f" only the keys {_KEYS_TEXT}",
                )

    def _id(self, raw: dict[Any, Any]) -> str:
        if "id" not in raw:
            raise _Invalid(
                "invalid_id",
                f"id is missing: every event needs an id, its idempotency key (a string of"
                f" 1-{ID_MAX} characters)",
            )
        value = raw["id"]
        if not isinstance(value, str):
            raise _Invalid(
                "invalid_id",
                f"id must be a string of 1-{ID_MAX} characters, not {describe(value)}",
            )
        if not value:
            raise _Invalid("invalid_id", f"id is empty; it must be 1-{ID_MAX} characters")
        if len(value) > ID_MAX:
            raise _Invalid(
                "invalid_id", f"id is {len(value)} characters long; at most {ID_MAX} are allowed"
            )
        return value

    def _account(self, raw: dict[Any, Any]) -> str:
        rule = f"1-{ACCOUNT_MAX} characters of A-Z, a-z, 0-9 and . _ : @ -"
        if "account" not in raw:
            raise _Invalid("invalid_account", f"account is missing (a string of {rule})")
        value = raw["account"]
        if not isinstance(value, str):
            raise _Invalid(
                "invalid_account", f"account must be a string of {rule}, not {describe(value)}"
            )
        if not value:
            raise _Invalid("invalid_account", f"account is empty; it must be {rule}")
        if len(value) > ACCOUNT_MAX:
            raise _Invalid(
                "invalid_account",
                f"account is {len(value)} characters long; at most {ACCOUNT_MAX} are allowed",
            )
        if not _ACCOUNT.fullmatch(value):
            bad = _ACCOUNT_BAD_CHAR.search(value)
            assert bad is not None
            raise _Invalid(
                "invalid_account",
                f"account {show(value)} contains {bad.group()!r} at position {bad.start()};"
                f" an account is {rule}",
            )
        return value

    def _meter(self, raw: dict[Any, Any]) -> Meter:
        if "meter" not in raw:
            raise _Invalid("unknown_meter", "meter is missing: name one of the configured meters")
        value = raw["meter"]
        if not isinstance(value, str):
            raise _Invalid(
                "unknown_meter",
                f"meter must be the name of a configured meter (a string), not {describe(value)}",
            )
        meter = self.meters.get(value)
        if meter is None:
            raise _Invalid(
                "unknown_meter",
                f"meter {show(value)} is not configured on this server"
                f"{_suggest(value, self._permitted)}",
            )
        if not self.producer.may_write(value):
            allowed = ", ".join(self._permitted) or "none"
            raise _Invalid(
                "not_permitted",
                f"producer {self.producer.name!r} may not write meter {value!r}"
                f" (its producers.meters in the server config permits: {allowed})",
            )
        return meter

    def _quantity(self, raw: dict[Any, Any], meter: Meter) -> Quantity:
        if meter.aggregation is Aggregation.COUNT:
            return 1  # ignored for count meters, whatever it holds (protocol.md §2.2)
        if "quantity" not in raw:
            raise _Invalid(
                "invalid_quantity",
                f"quantity is missing; meter {meter.name!r} ({meter.aggregation.value}) needs"
                ' one: an integer or a decimal string like "12.5"',
            )
        value = raw["quantity"]
        if type(value) is int:
            if value < 0:
                raise _Invalid("invalid_quantity", f"quantity must be >= 0, not {value}")
            return value
        if isinstance(value, str):
            return _decimal_quantity(value)
        if isinstance(value, float):
            raise _Invalid(
                "invalid_quantity",
                f"quantity is {describe(value)}: floats are rejected because usage is billed"
                ' exactly; send an integer or a decimal string like "12.5"',
            )
        raise _Invalid(
            "invalid_quantity",
            f'quantity must be an integer or a decimal string like "12.5", not {describe(value)}',
        )

    def _time(self, raw: dict[Any, Any], now_ms: int) -> int:
        rule = "Unix time in milliseconds, UTC, as an integer"
        if "time" not in raw:
            raise _Invalid("invalid_time", f"time is missing: when the usage happened ({rule})")
        value = raw["time"]
        if type(value) is not int:
            raise _Invalid("invalid_time", f"time must be {rule}, not {describe(value)}")
        low = now_ms - self.late_window_ms
        high = now_ms + self.future_ms
        if low <= value <= high:
            return value
        if value > high:
            why = (
                f"it is more than {_human(self.future_ms)} in the future: the latest"
                f" time accepted now is {high} ({_iso(high)})"
            )
        else:
            why = (
                f"it is older than late_window ({self._late_text}): the earliest time accepted"
                f" now is {low} ({_iso(low)})"
            )
            if 0 < value < _SECONDS_LIKE and value * 1000 >= low:
                why += "; it looks like seconds, but time is in milliseconds"
        raise _Invalid("time_out_of_range", f"time {value} ({_iso(value)}) is out of range: {why}")

    def _properties(self, raw: dict[Any, Any]) -> tuple[tuple[str, str], ...]:
        value = raw.get("properties")
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise _Invalid(
                "invalid_properties",
                f"properties must be a map of string to string, not {describe(value)}",
            )
        if len(value) > MAX_PROPERTIES:
            raise _Invalid(
                "invalid_properties",
                f"properties has {len(value)} entries; at most {MAX_PROPERTIES} are allowed",
            )
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Invalid(
                    "invalid_properties",
                    f"properties has a key that is {describe(key)}; keys must be strings",
                )
            if len(key) > PROPERTY_KEY_MAX:
                raise _Invalid(
                    "invalid_properties",
                    f"properties key {show(key)} is {len(key)} characters long; at most"
                    f" {PROPERTY_KEY_MAX} are allowed",
                )
            if not isinstance(item, str):
                raise _Invalid(
                    "invalid_properties",
                    f"properties[{show(key)}] must be a string, not {describe(item)}",
                )
            if len(item) > PROPERTY_VALUE_MAX:
                raise _Invalid(
                    "invalid_properties",
                    f"properties[{show(key)}] is {len(item)} characters long; at most"
                    f" {PROPERTY_VALUE_MAX} are allowed",
                )
        return tuple(sorted(value.items()))


def _decimal_quantity(text: str) -> Decimal:
    rule = 'an integer or a decimal string like "12.5"'
    if len(text) > QUANTITY_TEXT_MAX:
        raise _Invalid(
            "invalid_quantity",
            f"quantity is a string of {len(text)} characters; a decimal quantity is at most"
            f" {QUANTITY_TEXT_MAX} characters and {QUANTITY_DIGITS_MAX} digits",
        )
    if not _DECIMAL.fullmatch(text):
        if text.strip().lower() in _NOT_FINITE:
            raise _Invalid("invalid_quantity", f"quantity {show(text)} is not a finite number")
        raise _Invalid(
            "invalid_quantity",
            f"quantity {show(text)} is not a decimal number: send {rule} (digits, an optional"
            " fraction after '.', an optional exponent; no spaces or separators)",
        )
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:  # the pattern admits only decimals: the exponent overflows
        raise _Invalid("invalid_quantity", f"quantity {show(text)} is far too large") from None
    if value.is_zero():
        return _ZERO
    if value.is_signed():
        raise _Invalid("invalid_quantity", f"quantity must be >= 0, not {show(text)}")
    digits = written_digits(value)
    if digits > QUANTITY_DIGITS_MAX:
        raise _Invalid(
            "invalid_quantity",
            f"quantity {show(text)} has {digits} digits written out in full; at most"
            f" {QUANTITY_DIGITS_MAX} are allowed",
        )
    return value
