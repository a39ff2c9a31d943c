"""Exact windowed aggregation: per-minute mergeable states and their roll-up.

Usage is kept per *cell*: ``(meter, minute window start ms, dimension values)``. Each cell
holds a **state**, a commutative monoid for the meter's aggregation:

=================  ====================================  ==================================
aggregation        state                                 value
=================  ====================================  ==================================
``sum``            exact total (``int`` while every      the total
                   quantity is an ``int``)
``count``          number of events                      that number
``max`` / ``min``  the greatest / least quantity         that quantity
``latest``         ``(time, id, quantity)`` of the       its quantity
                   event with the greatest ``(time,
                   id)``
``unique_count``   the set of distinct values of         the size of the set
                   ``meter.unique_property``
=================  ====================================  ==================================

Every result is independent of the order events arrive in and of how they are split into
states that are merged later: ``merge`` is associative and commutative and ``new_state`` is
its identity. Coarser windows (hour, day) and collapsed dimensions are computed by
**merging states** (:func:`rollup`), never by adding values: a day's ``unique_count`` is the
size of the union of its minutes' sets, a day's ``max`` the max of maxes.

Choices (documented here, relied on by the tests):

* **Exactness.** Quantities are ``int`` or :class:`~decimal.Decimal`, never ``float``.
  ``int`` arithmetic stays ``int``; anything involving a ``Decimal`` runs in :data:`EXACT`,
  which traps ``Inexact``, ``Rounded``, ``Overflow`` and ``InvalidOperation``: a sum that
  would need more than 1000 significant digits raises (and leaves the state unchanged)
  instead of rounding.
* **Equal values, different types.** ``max``/``min`` of equal quantities keep an ``int``
  over a ``Decimal`` (``5`` over ``Decimal("5.0")``) whatever the order, so the *type* of a
  value never depends on arrival order either. Between equal Decimals spelled differently
  (``5.0``, ``5.00``) the one seen first stays: they have the same canonical text, which is
  all that :func:`encode` and the API ever show.
* **``latest``** is the quantity of the event with the greatest ``time``; equal times are
  broken by the greatest event ``id`` (ids are unique per account, so there is no tie left).
* **``unique_count`` and an event without ``unique_property``**: the event is *ignored*. It
  is not a distinct value (it names nobody), so it neither counts nor, on its own, creates
  a window with usage (:meth:`AccountUsage.apply` does not create a cell for it).
* A **missing dimension property** is the dimension value ``""``.
* **Empty states** (``new_state`` with nothing added) are skipped by :func:`rollup`; the
  ``value`` of an empty ``max``/``min``/``latest`` raises ``ValueError``; of an empty
  ``sum``/``count``/``unique_count`` it is ``0``.

Wire format (:func:`encode`): a msgpack array ``[aggregation, *payload]``; an ``int``
quantity is a msgpack integer (an ``ExtType(1, ascii digits)`` outside 64 bits), a
``Decimal`` its :func:`~meterd.model.canonical_quantity` string (computed in :data:`EXACT`,
so it never rounds); ``unique_count`` sets are sorted lists.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Final, Self, TypeAlias, TypeVar

import msgpack  # type: ignore[import-untyped]
import msgspec

from meterd.model import (
    MINUTE_MS,
    Aggregation,
    Event,
    Meter,
    Quantity,
    Window,
    canonical_quantity,
)

__all__ = [
    "EXACT",
    "AccountUsage",
    "CellKey",
    "CountState",
    "LatestState",
    "MaxState",
    "MinState",
    "State",
    "SumState",
    "UniqueCountState",
    "UsageRow",
    "add",
    "decode",
    "dims_of",
    "encode",
    "group_index",
    "merge",
    "new_state",
    "rollup",
    "value",
]

EXACT: Final = decimal.Context(
    prec=1000,
    traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation, decimal.Rounded],
)
"""The only context Decimal arithmetic runs in: exact, or it raises."""

_exact_add = EXACT.add

Dims: TypeAlias = tuple[str, ...]
CellKey: TypeAlias = tuple[str, int, Dims]
"""``(meter name, minute window start ms, dimension values)``."""


def dims_of(meter: Meter, event: Event) -> Dims:
    """The event's values for ``meter.dimensions``, in order; a missing property is ``""``."""
    names = meter.dimensions
    if not names:
        return ()
    props = event.properties
    if not props:
        return ("",) * len(names)
    if len(props) * len(names) > 24:
        found = dict(props)
        return tuple([found.get(name, "") for name in names])
    out = []  # few properties: a plain scan beats building a dict
    for name in names:
        for key, v in props:
            if key == name:
                out.append(v)
                break
        else:
            out.append("")
    return tuple(out)


# --------------------------------------------------------------------------- states


class State:
    """Base of the mergeable per-aggregation states. Not instantiated directly."""

    __slots__ = ()

    aggregation: ClassVar[Aggregation]

    def add(self, event: Event) -> None:
        """Absorb one event (mutates). On an exception the state is unchanged."""
        raise NotImplementedError

    def merge_from(self, other: Self) -> None:
        """Absorb another state of the same kind (mutates ``self`` only)."""
        raise NotImplementedError

    def copy(self) -> Self:
        raise NotImplementedError

    def merged(self, other: Self) -> Self:
        """A new state holding ``self`` and ``other`` (both untouched); see :func:`merge`."""
        return merge(self, other)

    def value(self) -> Quantity:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        """True when no event has been absorbed (the monoid's identity)."""
        raise NotImplementedError

    def _payload(self) -> list[Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self._payload()))})"


class SumState(State):
    __slots__ = ("total",)
    aggregation = Aggregation.SUM

    def __init__(self, total: Quantity | None = None) -> None:
        self.total = total  # None: empty

    def add(self, event: Event) -> None:
        q = event.quantity
        t = self.total
        if t is None:
            self.total = q
        elif type(t) is int and type(q) is int:
            self.total = t + q
        else:
            self.total = _exact_add(t, q)

    def merge_from(self, other: Self) -> None:
        o = other.total
        t = self.total
        if o is None:
            return
        if t is None:
            self.total = o
        elif type(t) is int and type(o) is int:
            self.total = t + o
        else:
            self.total = _exact_add(t, o)

    def copy(self) -> Self:
        return type(self)(self.total)

    def value(self) -> Quantity:
        return 0 if self.total is None else self.total

    @property
    def empty(self) -> bool:
        return self.total is None

    def _payload(self) -> list[Any]:
        return [self.total]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.total == self.total

    __hash__ = None  # type: ignore[assignment]


class CountState(State):
    __slots__ = ("n",)
    aggregation = Aggregation.COUNT

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def add(self, event: Event) -> None:
        self.n += 1

    def merge_from(self, other: Self) -> None:
        self.n += other.n

    def copy(self) -> Self:
        return type(self)(self.n)

    def value(self) -> Quantity:
        return self.n

    @property
    def empty(self) -> bool:
        return self.n == 0

    def _payload(self) -> list[Any]:
        return [self.n]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


class _ExtremeState(State):
    __slots__ = ("v",)

    def __init__(self, v: Quantity | None = None) -> None:
        self.v = v  # None: empty

    def _better(self, q: Quantity, v: Quantity) -> bool:
        raise NotImplementedError

    def add(self, event: Event) -> None:
        q = event.quantity
        v = self.v
        if v is None or self._better(q, v) or (type(q) is int and type(v) is not int and q == v):
            self.v = q

    def merge_from(self, other: Self) -> None:
        q = other.v
        if q is None:
            return
        v = self.v
        if v is None or self._better(q, v) or (type(q) is int and type(v) is not int and q == v):
            self.v = q

    def copy(self) -> Self:
        return type(self)(self.v)

    def value(self) -> Quantity:
        if self.v is None:
            raise ValueError(f"an empty {self.aggregation.value} state has no value")
        return self.v

    @property
    def empty(self) -> bool:
        return self.v is None

    def _payload(self) -> list[Any]:
        return [self.v]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.v == self.v

    __hash__ = None  # type: ignore[assignment]


class MaxState(_ExtremeState):
    __slots__ = ()
    aggregation = Aggregation.MAX

    def _better(self, q: Quantity, v: Quantity) -> bool:
        return q > v


class MinState(_ExtremeState):
    __slots__ = ()
    aggregation = Aggregation.MIN

    def _better(self, q: Quantity, v: Quantity) -> bool:
        return q < v


class LatestState(State):
    __slots__ = ("id", "time", "v")
    aggregation = Aggregation.LATEST

    def __init__(self, time: int = 0, id: str | None = None, v: Quantity = 0) -> None:
        self.time = time
        self.id = id  # None: empty
        self.v = v

    def add(self, event: Event) -> None:
        t = event.time
        i = self.id
        if i is None or t > self.time or (t == self.time and event.id > i):
            self.time = t
            self.id = event.id
            self.v = event.quantity

    def merge_from(self, other: Self) -> None:
        o = other.id
        if o is None:
            return
        t = other.time
        i = self.id
        if i is None or t > self.time or (t == self.time and o > i):
            self.time = t
            self.id = o
            self.v = other.v

    def copy(self) -> Self:
        return type(self)(self.time, self.id, self.v)

    def value(self) -> Quantity:
        if self.id is None:
            raise ValueError("an empty latest state has no value")
        return self.v

    @property
    def empty(self) -> bool:
        return self.id is None

    def _payload(self) -> list[Any]:
        return [] if self.id is None else [self.time, self.id, self.v]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        assert isinstance(other, LatestState)
        if self.id is None or other.id is None:
            return self.id is other.id
        return (self.time, self.id, self.v) == (other.time, other.id, other.v)

    __hash__ = None  # type: ignore[assignment]


class UniqueCountState(State):
    __slots__ = ("prop", "values")
    aggregation = Aggregation.UNIQUE_COUNT

    def __init__(self, prop: str, values: Iterable[str] = ()) -> None:
        self.prop = prop
        self.values: set[str] = set(values)

    def add(self, event: Event) -> None:
        prop = self.prop
        for key, v in event.properties:
            if key == prop:
                self.values.add(v)
                return
        # No unique_property: ignored (see the module docstring).

    def merge_from(self, other: Self) -> None:
        if other.prop != self.prop:
            raise ValueError(
                f"cannot merge unique_count states of {self.prop!r} and {other.prop!r}"
            )
        self.values |= other.values

    def copy(self) -> Self:
        return type(self)(self.prop, self.values)

    def value(self) -> Quantity:
        return len(self.values)

    @property
    def empty(self) -> bool:
        return not self.values

    def _payload(self) -> list[Any]:
        return sorted(self.values)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.prop == self.prop and other.values == self.values

    __hash__ = None  # type: ignore[assignment]


_FACTORIES: Final[dict[Aggregation, Callable[[], State]]] = {
    Aggregation.SUM: SumState,
    Aggregation.COUNT: CountState,
    Aggregation.MAX: MaxState,
    Aggregation.MIN: MinState,
    Aggregation.LATEST: LatestState,
}

S = TypeVar("S", bound=State)


def _factory(meter: Meter) -> Callable[[], State]:
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        prop = meter.unique_property
        if not prop:
            raise ValueError(f"meter {meter.name!r}: unique_count needs a unique_property")
        return lambda: UniqueCountState(prop)
    return _FACTORIES[meter.aggregation]


def new_state(meter: Meter) -> State:
    """The empty state (the identity of :func:`merge`) for ``meter``'s aggregation."""
    return _factory(meter)()


def add(state: S, event: Event) -> S:
    """Absorb ``event`` into ``state`` (mutates it) and return it.

    Exact or raises (``decimal.Inexact``/``Rounded``/``Overflow``), leaving ``state`` as it was.
    """
    state.add(event)
    return state


def merge(a: S, b: S) -> S:
    """A new state holding both ``a`` and ``b``; associative, commutative, inputs untouched."""
    if type(a) is not type(b):
        raise TypeError(f"cannot merge {type(a).__name__} with {type(b).__name__}")
    out = a.copy()
    out.merge_from(b)
    return out


def value(state: State) -> Quantity:
    """The aggregate value of ``state`` (see the module docstring for empty states)."""
    return state.value()


# --------------------------------------------------------------------------- encoding

_BIGINT_EXT: Final = 1
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


_SHORT_DECIMAL: Final = 500
"""Characters: a decimal whose ``str()`` is plain digits this short has fewer significant
digits than :func:`canonical_quantity`'s context holds, so the text is its own."""


def _canonical(d: Decimal) -> str:
    # canonical_quantity(d), without a context switch in the common case: a plain str()
    # (no exponent) is format(d, "f"), whose trailing zeros are all the normalizing does.
    text = str(d)
    if "E" in text or len(text) > _SHORT_DECIMAL or not d.is_finite():
        with decimal.localcontext(EXACT):
            return canonical_quantity(d)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _enc_q(q: Quantity | None) -> Any:
    if q is None:
        return None
    if isinstance(q, Decimal):
        return _canonical(q)
    if _INT64_MIN <= q <= _UINT64_MAX:
        return q
    return msgpack.ExtType(_BIGINT_EXT, str(q).encode("ascii"))


def _dec_q(raw: Any) -> Quantity:
    if type(raw) is int:
        return raw
    if isinstance(raw, str):
        try:
            d = Decimal(raw)
        except decimal.InvalidOperation:
            raise ValueError(f"bad decimal quantity {raw!r}") from None
        if not d.is_finite():
            raise ValueError(f"non-finite decimal quantity {raw!r}")
        return d
    if isinstance(raw, msgpack.ExtType) and raw.code == _BIGINT_EXT:
        return int(raw.data.decode("ascii"))
    raise ValueError(f"bad quantity {raw!r}")


def encode(state: State) -> bytes:
    """msgpack bytes for ``state``; exact (decimals as canonical strings), deterministic."""
    p = state._payload()
    if isinstance(state, UniqueCountState):
        body: list[Any] = p
    elif isinstance(state, LatestState):
        body = [*p[:2], _enc_q(p[2])] if p else []
    elif isinstance(state, CountState):
        body = p
    else:
        body = [_enc_q(p[0])]
    if body and type(body[-1]) is msgpack.ExtType:  # an int beyond 64 bits: msgpack's own
        data = msgpack.packb([state.aggregation.value, *body], use_bin_type=True)
        assert isinstance(data, bytes)
        return data
    return _pack([state.aggregation.value, *body])


_pack: Final = msgspec.msgpack.Encoder().encode
"""msgspec's msgpack: the bytes of ``msgpack.packb(..., use_bin_type=True)`` for a state's
str, int (64 bits), None and lists (tests/accounts/test_aggregate.py), without building a
packer per call; it would write an ``ExtType`` as an array, so :func:`encode` packs one
with msgpack."""


def decode(meter: Meter, data: bytes) -> State:
    """The state :func:`encode` wrote, for ``meter``; ``ValueError`` if it does not fit."""
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"undecodable state for meter {meter.name!r}: {exc}") from exc
    if not isinstance(raw, list) or not raw or raw[0] != meter.aggregation.value:
        raise ValueError(
            f"state {raw!r:.80} is not a {meter.aggregation.value} state (meter {meter.name!r})"
        )
    body = raw[1:]
    state = new_state(meter)
    match state:
        case SumState() | MaxState() | MinState():
            if len(body) != 1:
                raise ValueError(f"bad {meter.aggregation.value} state {raw!r:.80}")
            if body[0] is not None:
                q = _dec_q(body[0])
                if isinstance(state, SumState):
                    state.total = q
                else:
                    state.v = q
        case CountState():
            if len(body) != 1 or type(body[0]) is not int or body[0] < 0:
                raise ValueError(f"bad count state {raw!r:.80}")
            state.n = body[0]
        case LatestState():
            if body:
                if len(body) != 3 or type(body[0]) is not int or not isinstance(body[1], str):
                    raise ValueError(f"bad latest state {raw!r:.80}")
                state.time, state.id, state.v = body[0], body[1], _dec_q(body[2])
        case UniqueCountState():
            if not all(isinstance(v, str) for v in body):
                raise ValueError(f"bad unique_count state {raw!r:.80}")
            state.values = set(body)
    return state


# --------------------------------------------------------------------------- roll-up


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One row of the usage endpoint (protocol §3): ``[start, end)`` and its value."""

    start: int
    end: int
    value: Quantity
    group: dict[str, str] | None = None


def group_index(meter: Meter, group_by: str | None) -> int | None:
    """The position of dimension ``group_by`` in ``meter.dimensions`` (None for None);
    ``ValueError`` naming the meter's dimensions when it has no such dimension."""
    if group_by is None:
        return None
    try:
        return meter.dimensions.index(group_by)
    except ValueError:
        raise ValueError(
            f"group_by {group_by!r} is not a dimension of meter {meter.name!r} "
            f"(dimensions: {', '.join(meter.dimensions) or 'none'})"
        ) from None


def rollup(
    meter: Meter,
    states: Iterable[tuple[int, Dims, State]],
    from_ms: int,
    to_ms: int,
    window: Window,
    group_by: str | None,
) -> list[UsageRow]:
    """Roll minute states ``(minute start, dims, state)`` up into usage rows.

    ``from_ms`` (inclusive) and ``to_ms`` (exclusive) are aligned down to ``window`` first.
    States falling in one window (and, with ``group_by``, one value of that dimension) are
    **merged**; the other dimensions are collapsed. Several states for the same minute cell
    are merged as well. Rows come in time order, then by group value; windows whose merged
    state is empty are left out. The inputs are not mutated.
    """
    index = group_index(meter, group_by)
    lo = window.align(from_ms)
    hi = window.align(to_ms)
    if lo >= hi:
        return []
    size = window.ms
    acc: dict[tuple[int, str], State] = {}
    owned: set[tuple[int, str]] = set()
    for start, dims, state in states:
        if start < lo or start >= hi:
            continue
        key = (start - start % size, "" if index is None else dims[index])
        have = acc.get(key)
        if have is None:
            acc[key] = state  # copied only when something is merged into it
        else:
            if key not in owned:
                have = acc[key] = have.copy()
                owned.add(key)
            have.merge_from(state)
    rows: list[UsageRow] = []
    for key in sorted(acc):
        state = acc[key]
        if state.empty:
            continue
        bucket, group = key
        rows.append(
            UsageRow(
                bucket,
                bucket + size,
                state.value(),
                None if group_by is None else {group_by: group},
            )
        )
    return rows


# --------------------------------------------------------------------------- one account


DIMS_MEMO_SIZE: Final = 4096
"""Entries a dimension memo holds before it starts over (property sets are usually few)."""

_dims_memos: dict[tuple[str, ...], dict[tuple[tuple[str, str], ...], Dims]] = {}


def _dims_memo(names: tuple[str, ...]) -> dict[tuple[tuple[str, str], ...], Dims]:
    """The memo of :func:`dims_of` for dimension names ``names``: an event's properties ->
    its dimension values, shared by every account. The same property sets come back event
    after event, so a dict lookup replaces the scan, and the cells of all accounts share one
    tuple per dimension values instead of one per event. Bounded (:data:`DIMS_MEMO_SIZE`)."""
    memo = _dims_memos.get(names)
    if memo is None:
        memo = _dims_memos[names] = {}
    return memo


def _memo_dims(memo: dict[tuple[tuple[str, str], ...], Dims], meter: Meter, event: Event) -> Dims:
    """:func:`dims_of`, remembered in ``memo`` (the memo of ``meter.dimensions``)."""
    dims = dims_of(meter, event)
    if len(memo) >= DIMS_MEMO_SIZE:
        memo.clear()  # e.g. a property unique per event: start over rather than grow
    memo[event.properties] = dims
    return dims


class _MeterCells:
    """The minute cells of one meter of one account.

    A ``sum`` or ``count`` meter's cell holds its value itself (the total, an ``int`` or a
    ``Decimal``; the count), not a :class:`State`: under load every new cell is a young
    object until its checkpoint, and the collector walks each ``State`` (a Python object)
    but not an ``int`` or a ``Decimal``. :meth:`state` wraps it on the way out.
    """

    __slots__ = ("cells", "dims", "dirty", "meter", "new", "plain")

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.new = _factory(meter)
        self.plain: type[SumState] | type[CountState] | None = _PLAIN.get(meter.aggregation)
        self.cells: dict[tuple[int, Dims], Any] = {}  # a State, or the value (plain)
        self.dirty: set[tuple[int, Dims]] = set()
        self.dims = _dims_memo(meter.dimensions)

    def state(self, cell: Any) -> State:
        """The :class:`State` of a cell's content (a new one for a plain cell)."""
        plain = self.plain
        return cell if plain is None else plain(cell)


_PLAIN: Final[dict[Aggregation, type[SumState] | type[CountState]]] = {
    Aggregation.SUM: SumState,
    Aggregation.COUNT: CountState,
}


class AccountUsage:
    """The in-memory per-minute usage of one account, for every meter it has used.

    Not thread-safe; owned by the account's actor.
    """

    __slots__ = ("_meters",)

    def __init__(self) -> None:
        self._meters: dict[str, _MeterCells] = {}

    def _cells_for(self, meter: Meter) -> _MeterCells:
        rec = self._meters.get(meter.name)
        if rec is None:
            rec = self._meters[meter.name] = _MeterCells(meter)
        elif rec.meter is not meter and rec.meter != meter:
            raise ValueError(f"meter {meter.name!r} changed definition: {rec.meter} -> {meter}")
        return rec

    def apply(self, meter: Meter, event: Event) -> None:
        """Add ``event`` to its minute cell and mark the cell dirty.

        Exact or raises; on an exception nothing changed.
        """
        if event.meter != meter.name:
            raise ValueError(f"event {event.id!r} is for meter {event.meter!r}, not {meter.name!r}")
        self.apply_events({meter.name: meter}, (event,))

    def apply_events(self, meters: Mapping[str, Meter], events: Iterable[Event]) -> None:
        """:meth:`apply` each event to the meter it names, ``meters[event.meter]`` (the hot
        path: a delivered journal batch; its events are usually all of one meter).

        In order, each exact or raising; on an exception the events before it are applied,
        it and those after it are not (``KeyError`` for a meter not in ``meters``).
        """
        name: str | None = None
        for event in events:
            if event.meter != name:
                name = event.meter
                meter = meters[name]
                found = self._meters.get(name)
                if found is None or found.meter is not meter:
                    found = self._cells_for(meter)
                rec = found
                cells = rec.cells
                dirty = rec.dirty
                memo = rec.dims
                new = rec.new
                plain = rec.plain
            t = event.time
            dims = memo.get(event.properties)
            if dims is None:
                dims = _memo_dims(memo, rec.meter, event)
            key = (t - t % MINUTE_MS, dims)
            if plain is not None:
                value = cells.get(key)
                if plain is CountState:
                    cells[key] = 1 if value is None else value + 1
                else:
                    q = event.quantity
                    if value is None:
                        cells[key] = q
                    elif type(value) is int and type(q) is int:
                        cells[key] = value + q
                    else:
                        cells[key] = _exact_add(value, q)
                dirty.add(key)
                continue
            state = cells.get(key)
            if state is None:
                state = new()
                state.add(event)
                if state.empty:  # unique_count event without its property: ignored
                    continue
                cells[key] = state
            else:
                state.add(event)
            dirty.add(key)

    def load(self, meter: Meter, start: int, dims: Dims, state: State) -> None:
        """Restore one minute cell from the store (replaces it; not marked dirty)."""
        if start % MINUTE_MS:
            raise ValueError(f"window start {start} is not aligned to a minute")
        if len(dims) != len(meter.dimensions):
            raise ValueError(
                f"meter {meter.name!r} has {len(meter.dimensions)} dimensions, got {dims!r}"
            )
        rec = self._cells_for(meter)
        if type(state) is not type(rec.new()):
            raise TypeError(f"a {type(state).__name__} cannot hold a {meter.aggregation.value}")
        if isinstance(state, UniqueCountState) and state.prop != meter.unique_property:
            raise ValueError(f"state counts {state.prop!r}, meter {meter.name!r} does not")
        key = (start, tuple(dims))
        if rec.plain is None:
            rec.cells[key] = state
        elif state.empty:
            rec.cells.pop(key, None)  # a plain cell exists only with a value
        else:
            rec.cells[key] = state.total if isinstance(state, SumState) else state.value()

    def dirty(self) -> set[CellKey]:
        """The cells changed since they were last forgotten by :meth:`clear_dirty` (a copy)."""
        return {(name, s, d) for name, rec in self._meters.items() for s, d in rec.dirty}

    def dirty_states(self) -> list[tuple[str, int, Dims, State]]:
        """``(meter name, start, dims, state)`` of every dirty cell that has usage: what
        :meth:`dirty` and :meth:`state` give, without the copied set and a lookup per cell
        (a checkpoint writes about one cell per event applied since the last one)."""
        found: list[tuple[str, int, Dims, State]] = []
        add = found.append
        for name, rec in self._meters.items():
            cells = rec.cells
            to_state = rec.state
            for key in rec.dirty:
                cell = cells.get(key)
                if cell is not None:
                    add((name, key[0], key[1], to_state(cell)))
        return found

    def cell_count(self) -> int:
        """Minute cells held, every meter (O(meters))."""
        return sum(len(rec.cells) for rec in self._meters.values())

    def has_dirty(self) -> bool:
        """Whether any cell is dirty (:meth:`dirty` is not empty), without copying them: the
        sweeper asks every awake actor this each period."""
        return any(rec.dirty for rec in self._meters.values())

    def clear_dirty(self, keys: Iterable[CellKey] | None = None) -> None:
        """Forget the dirty cells: all of them, or only ``keys`` (those just checkpointed)."""
        if keys is None:
            for rec in self._meters.values():
                rec.dirty.clear()
            return
        for name, start, dims in keys:
            found = self._meters.get(name)
            if found is not None:
                found.dirty.discard((start, dims))

    def clear(self) -> None:
        """Forget every cell and every dirty mark (an actor keeping only deltas since its
        last checkpoint calls this once they are written)."""
        self._meters.clear()

    def state(self, meter_name: str, start: int, dims: Dims) -> State | None:
        """The state of one minute cell (``None`` when it has no usage); read it, do not
        change it (a ``sum`` or ``count`` cell gives a new :class:`State` each time)."""
        rec = self._meters.get(meter_name)
        if rec is None:
            return None
        cell = rec.cells.get((start, dims))
        return None if cell is None else rec.state(cell)

    def states(self, meter_name: str) -> Iterator[tuple[int, Dims, State]]:
        """Every minute cell of one meter as ``(start, dims, state)``, in no particular order."""
        rec = self._meters.get(meter_name)
        if rec is not None:
            for (start, dims), cell in rec.cells.items():
                yield start, dims, rec.state(cell)

    def rows(
        self,
        meter: Meter,
        from_ms: int,
        to_ms: int,
        window: Window,
        group_by: str | None = None,
    ) -> list[UsageRow]:
        """Usage rows for ``meter`` over ``[from, to)`` (both aligned down): see :func:`rollup`."""
        group_index(meter, group_by)  # validate even when there is no usage yet
        return rollup(meter, self.states(meter.name), from_ms, to_ms, window, group_by)
