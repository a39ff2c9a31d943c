"""Evaluation of threshold alerts inside an account's meter actor (docs/alerts.md).

The actor calls :meth:`AccountAlerts.observe` with each journal batch it applies, in the
order events are counted (journal order: the live deliveries and the start-up replay
alike). Per ``(meter, period)`` a :class:`_Period` keeps the period's running value (the
meter's aggregation over every counted event of the month) and the thresholds of the rules
not crossed yet, smallest first: an event costs one period check, one add and one
comparison with the next threshold, whatever the number of rules (O(1) when no rule is
reached).

What "crossing" means per aggregation (the period's value, as the usage endpoint would
give it for the whole month, going from below the threshold, or from no value, to at or
above it):

* ``sum``, ``count``: the running total; the event that takes it to the threshold.
* ``max``: the month's maximum, so the first event whose quantity is at or above it.
* ``unique_count``: the number of distinct values of the meter's property in the month;
  the event bringing the value that makes it reach the threshold (a value seen before, or
  an event without the property, never crosses).
* ``latest``: the quantity of the month's latest event (by time, then id); an event that
  is not the latest (a late one) does not change it.
* ``min``: the month's minimum only goes down, so only the month's first counted event can
  cross (when its quantity is at or above the threshold).

A rule crosses at most once per (account, period): its id is derived from the rule, the
account and the period (:meth:`~meterd.alerts.AlertRule.crossing_id`), and the ids
already in the outbox are loaded when the actor starts, so a replay, a wake from
hibernation or a restart decides the same crossing with the same id.

Spend rules (``spend = "25.00"``) are checked by rating the period's usage of the meter
with billing's own :func:`~meterd.billing.rate` (see :class:`_SpendWatch`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeAlias

import msgspec

from meterd.accounts.aggregate import EXACT, State, dims_of, new_state
from meterd.model import DAY_MS, Aggregation, Event, Meter, Quantity, canonical_quantity

from ._config import AlertRule

__all__ = [
    "AccountAlerts",
    "Crossing",
    "SpendPricing",
    "month_bounds",
    "month_of",
]

Dims: TypeAlias = tuple[str, ...]

_EPOCH = datetime.date(1970, 1, 1).toordinal()
_exact_add = EXACT.add  # exact or raises, like the windows' sums


def month_of(time_ms: int) -> tuple[int, int]:
    """``(year, month)`` of a time, UTC (integer arithmetic)."""
    day = datetime.date.fromordinal(_EPOCH + time_ms // DAY_MS)
    return day.year, day.month


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """``[start, end)`` in ms of a calendar month, UTC."""
    start = (datetime.date(year, month, 1).toordinal() - _EPOCH) * DAY_MS
    nxt = datetime.date(year + month // 12, month % 12 + 1, 1)
    return start, (nxt.toordinal() - _EPOCH) * DAY_MS


def _fast(limit: Decimal) -> Quantity:
    """An integral limit as an ``int`` (comparing ints is the cheap path)."""
    return int(limit) if limit == limit.to_integral_value() else limit


class CrossingBody(msgspec.Struct, kw_only=True):
    """The delivery body of protocol.md §4, field order as there."""

    id: str
    type: str
    alert: str
    account: str
    meter: str
    period: str
    threshold: str | None
    spend: str | None
    value: str
    crossed_at: int
    created_at: int


_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Crossing:
    """A decided crossing: an outbox row to write with the checkpoint."""

    id: str
    rule: AlertRule
    account: str
    period: str
    value: Quantity
    crossed_at: int
    event_id: str
    batch_id: int
    created_at: int

    def body(self) -> bytes:
        """The exact bytes every attempt of its delivery carries."""
        rule = self.rule
        return _encode(
            CrossingBody(
                id=self.id,
                type="alert.triggered",
                alert=rule.name,
                account=self.account,
                meter=rule.meter,
                period=self.period,
                threshold=None if rule.threshold is None else canonical_quantity(rule.threshold),
                spend=None if rule.spend is None else canonical_quantity(rule.spend),
                value=canonical_quantity(self.value),
                crossed_at=self.crossed_at,
                created_at=self.created_at,
            )
        )


class _Period:
    """One (meter, month): its running value and the usage rules not crossed yet."""

    __slots__ = ("end", "label", "limits", "next", "start", "state", "total", "year_month")

    def __init__(self, meter: Meter, year: int, month: int) -> None:
        self.start, self.end = month_bounds(year, month)
        self.year_month = (year, month)
        self.label = f"{year:04d}-{month:02d}"
        self.state: State = new_state(meter)
        self.total: Quantity = 0  # sum and count: the running value, without the State
        self.limits: list[tuple[Quantity, AlertRule]] = []
        self.next: Quantity | None = None

    def rearm(self) -> None:
        self.next = self.limits[0][0] if self.limits else None


class _MeterWatch:
    """The rules on one meter of one account and the periods they watch."""

    __slots__ = ("horizon", "kind", "last", "meter", "periods", "rules", "spend", "stored")

    def __init__(self, meter: Meter, rules: list[AlertRule], horizon: int) -> None:
        self.meter = meter
        self.kind = meter.aggregation
        self.rules = [r for r in rules if r.threshold is not None]
        self.spend: _SpendWatch | None = None
        spend_rules = [r for r in rules if r.spend is not None]
        if spend_rules:
            self.spend = _SpendWatch(meter, spend_rules)
        self.horizon = horizon
        self.periods: dict[tuple[int, int], _Period] = {}
        self.last: _Period | None = None
        self.stored: dict[tuple[int, int], list[tuple[int, Dims, State]]] = {}


class AccountAlerts:
    """The alert rules of one account, evaluated on the events its actor applies.

    ``crossed``: the ids already in the outbox (they never fire again). ``horizon_ms``:
    the earliest time whose period's stored usage was loaded; an event of an earlier
    month (only possible in a replay after a long outage) is counted but not evaluated.
    """

    def __init__(
        self,
        account: str,
        rules: Sequence[AlertRule],
        meters: Mapping[str, Meter],
        crossed: Iterable[str],
        horizon_ms: int,
        clock_ms: Callable[[], int],
        spend_pricing: SpendPricing | None = None,
    ) -> None:
        self.account = account
        self.crossed = set(crossed)
        self.clock_ms = clock_ms
        self.pending: list[Crossing] = []
        self.spend_pricing = spend_pricing
        year, month = month_of(horizon_ms)
        horizon = month_bounds(year, month)[0]
        by_meter: dict[str, list[AlertRule]] = {}
        for rule in rules:
            if rule.applies_to(account) and rule.meter in meters:
                by_meter.setdefault(rule.meter, []).append(rule)
        self.watches = {
            name: _MeterWatch(meters[name], found, horizon) for name, found in by_meter.items()
        }

    @property
    def horizon(self) -> int:
        return min((w.horizon for w in self.watches.values()), default=0)

    def load(self, meter_name: str, start: int, dims: tuple[str, ...], state: State) -> None:
        """A stored minute cell (as of the checkpointed watermark), before any observe."""
        watch = self.watches.get(meter_name)
        if watch is None or start < watch.horizon:
            return
        watch.stored.setdefault(month_of(start), []).append((start, dims, state))

    def _period(self, watch: _MeterWatch, time_ms: int) -> _Period | None:
        key = month_of(time_ms)
        found = watch.periods.get(key)
        if found is not None:
            return found
        if time_ms < watch.horizon:
            return None
        period = _Period(watch.meter, *key)
        cells = watch.stored.pop(key, [])
        for _, _, state in cells:
            if not state.empty:
                period.state.merge_from(state)
        if watch.kind is Aggregation.SUM:
            total = getattr(period.state, "total", None)
            period.total = 0 if total is None else total
        elif watch.kind is Aggregation.COUNT:
            period.total = getattr(period.state, "n", 0)
        for rule in watch.rules:
            if rule.crossing_id(self.account, period.label) not in self.crossed:
                period.limits.append((_fast(rule.limit), rule))
        period.limits.sort(key=lambda item: item[0])
        period.rearm()
        if watch.spend is not None:
            watch.spend.open(period, cells, self)
        watch.periods[key] = period
        return period

    def observe(self, batch_id: int, events: Iterable[Event]) -> None:
        """Count ``events`` (journal batch ``batch_id``, in order) and decide crossings."""
        watches = self.watches
        for event in events:
            watch = watches.get(event.meter)
            if watch is not None:
                self.observe_one(watch, batch_id, event)

    def observe_one(self, watch: _MeterWatch, batch_id: int, event: Event) -> None:
        t = event.time
        period = watch.last
        if period is None or not period.start <= t < period.end:
            period = self._period(watch, t)
            if period is None:
                return
            watch.last = period
        kind = watch.kind
        if kind is Aggregation.SUM:
            q = event.quantity
            v = period.total
            v = period.total = v + q if type(v) is int and type(q) is int else _exact_add(v, q)
        elif kind is Aggregation.COUNT:
            v = period.total = period.total + 1
        else:
            state = period.state
            state.add(event)
            if period.next is None or state.empty:
                if watch.spend is not None:
                    watch.spend.observe(period, event, batch_id, self)
                return
            v = state.value()
        limit = period.next
        if limit is not None and v >= limit:
            self._cross(period, v, event, batch_id)
        if watch.spend is not None:
            watch.spend.observe(period, event, batch_id, self)

    def _cross(self, period: _Period, value: Quantity, event: Event, batch_id: int) -> None:
        limits = period.limits
        waiting = 0  # reached by rules made after this event was committed: not yet theirs
        while waiting < len(limits) and value >= limits[waiting][0]:
            rule = limits[waiting][1]
            if batch_id <= rule.armed_after:
                waiting += 1
                continue
            limits.pop(waiting)
            self.decide(rule, period.label, value, event, batch_id)
        period.rearm()

    def decide(
        self, rule: AlertRule, period: str, value: Quantity, event: Event, batch_id: int
    ) -> None:
        crossing_id = rule.crossing_id(self.account, period)
        if crossing_id in self.crossed:
            return
        self.crossed.add(crossing_id)
        self.pending.append(
            Crossing(
                crossing_id,
                rule,
                self.account,
                period,
                value,
                event.time,
                event.id,
                batch_id,
                # When meterd received the event's batch (the log says so in cluster mode):
                # a node that rebuilds the account from the log decides the same bytes.
                event.received_at or self.clock_ms(),
            )
        )

    def take(self) -> list[Crossing]:
        """The crossings decided since the last take (to write with the checkpoint)."""
        pending, self.pending = self.pending, []
        return pending

    def give_back(self, crossings: list[Crossing]) -> None:
        """A checkpoint that failed: its crossings wait for the next one."""
        self.pending[:0] = crossings


class SpendPricing(Protocol):
    """Billing's rating as alerts need it (:mod:`meterd.alerts._spend`)."""

    def amount(
        self, account: str, period: str, meter: Meter, cells: list[tuple[int, Dims, State]]
    ) -> Decimal:
        """The total of the meter's invoice lines for these cells (exact, rounded as
        invoices are)."""
        ...

    def bound(self, meter: Meter) -> tuple[Decimal, Decimal] | None:
        """``(highest unit price, slack per line in units of usage)`` of the meter's rules
        (how much more than price x usage a line's rounded amount can grow), or None when
        the meter has no price (its amount stays 0: it never crosses)."""
        ...


class _SpendWatch:
    """Spend rules of one meter: the month's usage kept per (day, dimension values), so
    billing's own rating prices exactly the lines an invoice would (prices change at
    00:00 UTC, so day cells cut every segment where rating does).

    Rating costs far more than an event, so on a summed meter it runs only when usage could
    have crossed: after a rating, usage must grow by ``(spend - amount) / highest unit
    price`` less a rounding slack per line (one rounding step of the quantity and half of
    the smallest amount unit, both at the highest price) before the next one; a new line
    (a new dimension value or day) uses up one more slack. On other meters a line's month figure is
    not a sum of the events: every event that changes the usage rates."""

    __slots__ = ("days", "left", "meter", "need", "rules")

    def __init__(self, meter: Meter, rules: list[AlertRule]) -> None:
        self.meter = meter
        self.rules = sorted(rules, key=lambda r: r.limit)
        self.days: dict[tuple[int, int], dict[tuple[int, Dims], State]] = {}
        self.left: dict[tuple[int, int], list[AlertRule]] = {}
        self.need: dict[tuple[int, int], Quantity] = {}

    def open(
        self, period: _Period, cells: list[tuple[int, Dims, State]], alerts: AccountAlerts
    ) -> None:
        days: dict[tuple[int, Dims], State] = {}
        for start, dims, state in cells:
            if state.empty:
                continue
            key = (start - start % DAY_MS, dims)
            found = days.get(key)
            if found is None:
                days[key] = state.copy()
            else:
                found.merge_from(state)
        ym = period.year_month
        self.days[ym] = days
        self.left[ym] = [
            r
            for r in self.rules
            if r.crossing_id(alerts.account, period.label) not in alerts.crossed
        ]
        self.need[ym] = 0  # rate at the first event

    def observe(self, period: _Period, event: Event, batch_id: int, alerts: AccountAlerts) -> None:
        ym = period.year_month
        days = self.days[ym]
        cell = (event.time - event.time % DAY_MS, dims_of(self.meter, event))
        state = days.get(cell)
        new_line = state is None
        if state is None:
            state = days[cell] = new_state(self.meter)
        state.add(event)
        left = self.left[ym]
        pricing = alerts.spend_pricing
        if not left or pricing is None:
            return
        kind = self.meter.aggregation
        if kind is Aggregation.SUM or kind is Aggregation.COUNT:
            added: Quantity = 1 if kind is Aggregation.COUNT else event.quantity
            if new_line:  # a new line may round up by its own slack too
                bound = pricing.bound(self.meter)
                added = added + (bound[1] if bound is not None else 0)
            need = self.need[ym] = self.need[ym] - added
            if need > 0:
                return
        amount = pricing.amount(
            alerts.account, period.label, self.meter, [(s, d, st) for (s, d), st in days.items()]
        )
        waiting = 0  # reached by rules made after this event was committed: not yet theirs
        while waiting < len(left) and amount >= left[waiting].limit:
            if batch_id <= left[waiting].armed_after:
                waiting += 1
                continue
            alerts.decide(left.pop(waiting), period.label, amount, event, batch_id)
        if waiting:
            self.need[ym] = 0  # rate again at the next event
        elif left:
            self.need[ym] = self._usage_needed(pricing, left[0].limit - amount, len(days))

    def _usage_needed(self, pricing: SpendPricing, short: Decimal, lines: int) -> Quantity:
        """Usage to add before the amount could reach ``short`` more (0: rate next event)."""
        bound = pricing.bound(self.meter)
        if bound is None or bound[0] == 0:
            return Decimal(10) ** 40  # unpriced, or priced at nothing: it never crosses
        price, slack = bound
        needed = short / price - lines * slack
        return needed if needed > 0 else 0
