"""``Billing``: the service the API and the CLI call (rating, closing, corrections, explain).

It reads usage through :meth:`meterd.accounts.service.Accounts.states` (which first makes the
store complete for the account) and events through the store's reader; it writes only to the
billing database. Changes of recorded periods are serialized by one lock, so a correction and
a closing never interleave.

**Off the Trio thread.** Rating, comparing a rating with fixed figures and rolling cells up
are pure CPU work that grows with the account (an invoice of 50,000 lines is ~0.5 s): they
run on worker threads (:meth:`Billing.off_loop`, at most :data:`CPU_THREADS` at once), so
the Trio thread, where ingestion acks and ``/healthz`` are served, never waits for them. What
goes to a thread is a pure function of values read before (fresh cells decoded from the
store, immutable meters, price book and corrections): no actor state, no service, no
SQLite connection. Freeing is work too (~30 ms for a 50,000-line invoice): large values are
handed to the worker in a box (:func:`_take`) with no reference left here, so they are freed
there.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from typing import Any, Final, Protocol, TypeVar, overload

import structlog
import trio

from meterd.accounts.aggregate import EXACT, State, add, dims_of, group_index, new_state, rollup
from meterd.accounts.service import Accounts
from meterd.model import MINUTE_MS, Aggregation, Event, Meter, Window
from meterd.store import InvalidCursor
from meterd.store.reader import MAX_EVENTS_LIMIT

from ._corrections import (
    ADDITIVE,
    Adjustment,
    AdjustmentKind,
    AdjustmentRequest,
    CorrectionRequest,
    Void,
    VoidRequest,
    check_key,
    new_key,
    replay,
)
from ._db import BillingDB, Closure, Fence, StoredFigures
from ._errors import Conflict, NotFound, Unavailable, invalid
from ._explain import (
    CapDetail,
    DimsFilter,
    ExplainedAudit,
    ExplainedEvent,
    Explanation,
    WindowFigure,
)
from ._period import Period
from ._prices import PriceBook
from ._rating import Cell, Invoice, InvoiceLine, rate, sorted_in_slices
from ._render import format_ms
from ._restate import LineChange, Restatement, compare_lines, compare_unpriced

__all__ = ["CPU_THREADS", "Billing", "InvoiceView"]

T = TypeVar("T")
C = TypeVar("C", bound=Adjustment | Void)

log = structlog.get_logger("meterd.billing")

DEFAULT_PAGE: Final = 100
GRAPHQL_THREADS: Final = 4  # GraphQL queries executing at once (each on a worker thread)
CPU_THREADS: Final = 2
"""Billing's pure CPU work (rating, comparisons, roll-ups, JSON of large answers) running at
once on worker threads (:meth:`Billing.off_loop`). Python runs one thread at a time, so more
would not rate faster; two keep a small request from queueing behind one large rating."""

BUSY_SWITCH_INTERVAL: Final = 0.001
"""``sys.setswitchinterval`` while billing's work runs on a worker thread. The interpreter
runs one thread at a time: a thread that wakes (the Trio thread, with an ack to send; the
store's writer, with a commit done) waits for the running one to hand it over, at most the
switch interval, 5 ms by default, and an ack crosses threads several times. 1 ms while a
rating runs (the default again after) keeps those waits short; see docs/billing.md."""


class _SwitchInterval:
    """Lowers the interpreter's switch interval while at least one job holds it."""

    def __init__(self) -> None:
        self.jobs = 0
        self.saved = sys.getswitchinterval()

    def __enter__(self) -> None:
        if self.jobs == 0:
            self.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(self.saved, BUSY_SWITCH_INTERVAL))
        self.jobs += 1

    def __exit__(self, *_: object) -> None:
        self.jobs -= 1
        if self.jobs == 0:
            sys.setswitchinterval(self.saved)


_busy = _SwitchInterval()  # process-wide, like the interval; used on the Trio thread only
_PLAIN_DECIMAL: Final = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")
LATE_IDS_SHOWN: Final = 10  # late events named in a restatement's cause; the rest counted
_FINER: Final = {Window.DAY: Window.HOUR, Window.HOUR: Window.MINUTE, Window.MINUTE: Window.MINUTE}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class InvoiceView:
    """An account's invoice for a period: the current figures, and for a closed period the
    closing and every restatement since (closed total + their differences = ``invoice.total``)."""

    invoice: Invoice
    closure: Closure | None = None
    closed_total: Decimal | None = None
    restatements: tuple[Restatement, ...] = ()

    @property
    def status(self) -> str:
        return "open" if self.closure is None else "closed"

    def to_json(self, lazy: bool = False) -> dict[str, Any]:
        """The invoice's JSON (decimals as strings), with ``status``, and for a closed period
        ``closed`` (by, at, total) and ``restatements``; ``lazy``: long lists as
        :class:`~meterd.billing.Slices` (for :func:`~meterd.billing.encode_json`)."""
        out = self.invoice.to_json(lazy)
        out["status"] = self.status
        if self.closure is not None:
            out["closed"] = {
                "by": self.closure.by,
                "at": self.closure.at,
                "total": str(self.closed_total),
            }
            out["restatements"] = [r.to_json(lazy) for r in self.restatements]
        return out


class SharedPeriods(Protocol):
    """Where the closed months are kept when they are shared by several billing databases
    (cluster mode: :class:`meterd.cluster._periods.ClosedPeriods`, a replicated KV bucket)."""

    async def closed(self, period: Period) -> SharedClosing | None:
        """The month's closing if it is closed; raises when it cannot be told now."""
        ...


class SharedClosing(Protocol):
    @property
    def by(self) -> str: ...

    @property
    def at(self) -> int: ...


class CloseJournal(Protocol):
    """Where a month closed for the cluster is fixed in this database (cluster mode: a
    ``Close`` published to the shard's log, answered once its owner applied it, so the
    figures are fixed at one point of the shard's stream on every owner)."""

    async def close(self, period: Period, shared: SharedClosing) -> Closure: ...


class CorrectionJournal(Protocol):
    """Where a validated correction is recorded instead of this database directly (cluster
    mode: published to the shard's log, answered once its owner applied it)."""

    async def adjust(
        self, adjustment: AdjustmentRequest
    ) -> tuple[Adjustment, Restatement | None]: ...

    async def void(self, void: VoidRequest) -> tuple[Void, Restatement | None]: ...


class Billing:
    """Billing support over one running accounts layer and one billing database.

    ``shared_periods`` (cluster mode) is where a month's closing is decided for every
    shard: a month closed there is closed here too, and this database fixes its figures at
    its first read of the month (docs/cluster.md "Closed billing periods")."""

    def __init__(
        self,
        accounts: Accounts,
        db: BillingDB,
        book: PriceBook,
        *,
        currency: str = "USD",
        amount_places: int = 2,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.accounts = accounts
        self.db = db
        self.book = book
        # Restatements recorded by this process, by the kind of their first cause
        # (correction, late_events, price_book, unexplained): read by /metrics.
        self.restated: dict[str, int] = {}
        self.currency = currency
        self.amount_places = amount_places
        self.clock = clock
        self._periods = trio.Lock()
        self.shared_periods: SharedPeriods | None = None
        # Cluster mode: corrections go through the shard's log (docs/cluster.md).
        self.journal: CorrectionJournal | None = None
        # Cluster mode: a month's closing goes through the shard's log (docs/cluster.md).
        self.closes: CloseJournal | None = None
        self.graphql_limiter = trio.CapacityLimiter(GRAPHQL_THREADS)
        self.cpu_limiter = trio.CapacityLimiter(CPU_THREADS)

    async def _drop(self, box: list[Any]) -> None:
        """Free what ``box`` holds on a worker thread (see :func:`_take`)."""
        await self.off_loop(partial(_take, box))

    async def off_loop(self, work: Callable[[], T]) -> T:
        """``work()`` on a worker thread (at most :data:`CPU_THREADS` at once): CPU-bound
        work that grows with an account's usage must not hold the Trio thread, where
        ingestion and ``/healthz`` run. ``work`` must be pure: values in, a value out, no
        actor state, no service, no SQLite connection (those belong to their own threads)."""
        with _busy:
            return await trio.to_thread.run_sync(work, limiter=self.cpu_limiter)

    @property
    def meters(self) -> Mapping[str, Meter]:
        return self.accounts.meters

    async def known_account(self, account: str) -> bool:
        """Whether the store (or a running actor) has seen ``account`` (nothing is woken)."""
        accounts = self.accounts
        return account in accounts.registry or await accounts.store.reader.has_account(account)

    def meter(self, name: str) -> Meter:
        meter = self.meters.get(name)
        if meter is None:
            raise NotFound(f"meter {name!r} is not configured", code="unknown_meter")
        return meter

    # -- usage with corrections ---------------------------------------------------------------

    async def cells(self, account: str, meter: Meter, low: int, high: int) -> list[Cell]:
        """The account's minute cells in ``[low, high)`` with voided events taken out: each
        cell holding a voided event is recomputed from its events (all aggregations)."""
        cells = await self.accounts.states(account, meter, low, high)
        voids = await self.db.voids(account, low, high, meter.name)
        if not voids:
            return cells
        voided = {v.event_id for v in voids}
        quarantined = await self._not_counted(account)
        hit = {(v.time - v.time % MINUTE_MS, v.dims) for v in voids}
        fixed: dict[tuple[int, tuple[str, ...]], State] = {}
        for start, dims in hit:
            state = new_state(meter)
            async for event in self._events(account, meter.name, start, start + MINUTE_MS):
                if (
                    event.id not in voided
                    and event.id not in quarantined
                    and dims_of(meter, event) == dims
                ):
                    add(state, event)
            fixed[(start, dims)] = state
        return await self.off_loop(partial(_replace_cells, cells, fixed))

    async def usage(
        self,
        account: str,
        meter_name: str,
        from_ms: int,
        to_ms: int,
        window: Window,
        group_by: str | None = None,
    ) -> list[tuple[int, int, Decimal, dict[str, str] | None]]:
        """Usage rows ``(start, end, value, group)`` like the usage endpoint's, with voids
        applied and adjustments added (on summed meters) in the window they start in."""
        meter = self.meter(meter_name)
        index = _group_index(meter, group_by)
        low, high = window.align(from_ms), window.align(to_ms)
        cells = await self.cells(account, meter, low, high)
        adjustments = await self.db.adjustments(account, low, high, meter.name)
        return await self.off_loop(
            partial(_usage_rows, meter, cells, (low, high), window, group_by, index, adjustments)
        )

    # -- invoices -----------------------------------------------------------------------------

    async def rate(self, account: str, period: Period) -> Invoice:
        """Rate the account's period as it is now (nothing is recorded)."""
        low, high = period.start_ms, period.end_ms
        cells = {
            name: await self.cells(account, meter, low, high)
            for name, meter in sorted(self.meters.items())
        }
        adjustments = await self.db.adjustments(account, low, high)
        work = partial(
            _rate_taking,
            [cells],
            account,
            period,
            dict(self.meters),
            self.book,
            adjustments,
            currency=self.currency,
            amount_places=self.amount_places,
        )
        del cells  # the worker holds the only reference: the cells are freed there
        return await self.off_loop(work)

    async def invoice(self, account: str, period: Period) -> InvoiceView:
        """The account's invoice: rated now for an open period; for a closed one the figures
        fixed at closing plus every restatement (a changed rating is restated first)."""
        closure = await self._closure(period)
        if closure is None:
            return InvoiceView(await self.rate(account, period))
        async with self._periods:
            _, current = await self._restate(account, period, ())
        closed_total = await self.db.closed_total(period, account)
        restatements = await self.db.restatements(account, period)
        return InvoiceView(current, closure, closed_total, tuple(restatements))

    async def close_period(self, period: Period, by: str) -> Closure:
        """Close ``period`` for every account: rate each and fix its figures.

        Refused (:class:`Conflict`) before the period is over or when it is closed already.
        """
        _need_text("by", by)
        if self.clock() < period.end_ms:
            raise Conflict(
                f"period {period} is not over yet; it can be closed from its end",
                code="period_not_over",
            )
        shared = None if self.shared_periods is None else await self._shared(period)
        if shared is not None and self.closes is not None:  # cluster: through the log
            closure = await self.db.closure(period)
            if closure is None:
                closure = await self.closes.close(period, shared)
            if (closure.by, closure.at) != (shared.by, shared.at):
                raise Conflict(f"period {period} is already closed", code="already_closed")
            return closure
        async with self._periods:
            closure = await self.db.closure(period)
            if closure is not None:
                if shared is not None and (closure.by, closure.at) == (shared.by, shared.at):
                    return closure  # fixed already at a read of the month (cluster mode)
                raise Conflict(f"period {period} is already closed", code="already_closed")
            by, at = (by, self.clock()) if shared is None else (shared.by, shared.at)
            closure = await self._fix(period, by, at)
        log.info("period_closed", period=str(period), by=by, accounts=closure.accounts)
        return closure

    async def close_from_log(
        self, period: Period, by: str, at: int, *, log_seq: int, fence: Fence | None = None
    ) -> tuple[Closure, bool]:
        """Cluster mode: fix ``period``'s figures as a ``Close`` of the shard's log at
        sequence ``log_seq`` says (the cluster's ``by`` and ``at``), from the usage and the
        corrections applied before it; ``fence`` is asked right before the transaction
        commits. The closing and whether this call made it: a month this database has
        closed already (a replay of the log, a second ``Close``) is found, nothing fixed."""
        async with self._periods:
            closure = await self.db.closure(period)
            if closure is not None:
                return closure, False
            closure = await self._fix(period, by, at, log_seq=log_seq, fence=fence)
        log.info(
            "period_closed",
            period=str(period),
            by=by,
            at=at,
            accounts=closure.accounts,
            log_seq=log_seq,
        )
        return closure, True

    async def _fix(
        self,
        period: Period,
        by: str,
        at: int,
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> Closure:
        """Rate every account of ``period`` and record its figures as closed (lock held)."""
        invoices: list[Invoice] = []
        for account in await self._accounts(period):
            invoices.append(await self.rate(account, period))
        invoices = [i for i in invoices if i.lines or i.unpriced]
        closure = await self.db.close(period, by, at, invoices, log_seq=log_seq, fence=fence)
        box = [invoices]
        del invoices  # freed on a worker thread, not here
        await self._drop(box)
        return closure

    async def _shared(self, period: Period) -> SharedClosing | None:
        assert self.shared_periods is not None
        try:
            return await self.shared_periods.closed(period)
        except Exception as error:  # NATS not answering: the month's state is unknown
            raise Unavailable(
                f"whether period {period} is closed cannot be read from the cluster now"
                f" ({error}); retry shortly"
            ) from None

    async def _closure(self, period: Period, *, locked: bool = False) -> Closure | None:
        """The month's closing: this database's, or in cluster mode the cluster's (this
        database then fixes its figures now: a shard taken over, or down at the close)."""
        closure = await self.db.closure(period)
        if closure is not None or self.shared_periods is None:
            return closure
        shared = await self._shared(period)
        if shared is None:
            return None
        if self.closes is not None and not locked:  # fixed where the log puts the close
            return await self.closes.close(period, shared)
        if locked:
            return await self._adopt(period, shared)
        async with self._periods:
            return await self._adopt(period, shared)

    async def _adopt(self, period: Period, shared: SharedClosing) -> Closure:
        closure = await self.db.closure(period)
        if closure is not None:  # fixed meanwhile
            return closure
        closure = await self._fix(period, shared.by, shared.at)
        log.warning(
            "period_closed_late",
            period=str(period),
            by=shared.by,
            at=shared.at,
            accounts=closure.accounts,
            why="the month is closed for the cluster but was not in this billing database"
            " (a shard taken over or down at the close): its figures are fixed now",
        )
        return closure

    async def restatements(self, account: str, period: Period) -> list[Restatement]:
        """The restatements of a closed period (after restating a changed rating)."""
        if await self._closure(period) is not None:
            async with self._periods:
                box = [await self._restate(account, period, ())]
            await self._drop(box)
        return await self.db.restatements(account, period)

    async def _restate(
        self,
        account: str,
        period: Period,
        causes: tuple[str, ...],
        *,
        at: int | None = None,
    ) -> tuple[Restatement | None, Invoice]:
        """Rate a closed period and record a restatement if the rating differs from its
        fixed figures (call with the lock held); returns it (or None) and the rating.
        ``at``: its time when not now (a correction applied from the log: the message's)."""
        fixed = await self.db.figures(period, account)
        fixed_total = fixed.total
        current = await self.rate(account, period)
        work = partial(_compare_taking, [fixed], current)
        del fixed  # compared and freed on the worker thread
        changes, unpriced = await self.off_loop(work)
        if not changes and not unpriced and fixed_total == current.total:
            return None, current
        kind = "correction"
        if not causes:  # name the corrections a crash kept from restating at once
            causes = tuple(await self.db.corrections_since_fixed(period, account))
        if not causes:
            causes = await self._found_causes(account, period, changes)
            kind = "late_events" if causes and " late event" in causes[0] else "price_book"
        if not causes:
            kind = "unexplained"
            causes = (
                "usage changed after the figures were fixed: late events, or a price book or"
                " meter configuration change",
            )
        causes = (*causes, *unpriced)  # unpriced usage is not billed: no line shows it
        restatement = await self.db.add_restatement(
            period,
            account,
            self.clock() if at is None else at,
            causes,
            fixed_total,
            current,
            changes,
        )
        self.restated[kind] = self.restated.get(kind, 0) + 1
        log.warning(
            "period_restated",
            account=account,
            period=str(period),
            old_total=str(fixed_total),
            new_total=str(current.total),
            causes=list(causes),
        )
        return restatement, current

    async def _found_causes(
        self, account: str, period: Period, changes: list[LineChange]
    ) -> tuple[str, ...]:
        """What moved a closed period's rating when no correction did: the events received
        after its figures were fixed (late events, by id), and the lines now priced by another
        rule or price (a price book change). Reads the account's events of the period."""
        causes: list[str] = []
        closure = await self.db.closure(period)
        fixed_at = 0 if closure is None else closure.at
        for earlier in await self.db.restatements(account, period):
            fixed_at = max(fixed_at, earlier.at)
        late: list[str] = []
        count = 0
        async for event in self._events(account, None, period.start_ms, period.end_ms):
            if event.received_at > fixed_at:
                count += 1
                if len(late) < LATE_IDS_SHOWN:
                    late.append(event.id)
        if count:
            more = "" if count == len(late) else f" and {count - len(late)} more"
            causes.append(
                f"{count} late {'event' if count == 1 else 'events'} received after the figures"
                f" were fixed ({format_ms(fixed_at)} UTC): {', '.join(late)}{more}"
            )
        for change in changes:
            old, new = change.old, change.new
            if old is None or new is None:
                continue
            if old.unit_price != new.unit_price:
                dims = " ".join(f"{k}={v}" for k, v in new.dims) or "(no dimensions)"
                causes.append(
                    f"the price book changed: {new.meter} {dims} from"
                    f" {format_ms(new.start, date_only=True)} is priced by {new.rule} at"
                    f" {new.unit_price} (was {old.rule} at {old.unit_price})"
                )
        return tuple(causes)

    async def _restate_if_closed(
        self,
        account: str,
        time_ms: int,
        cause: str,
        closure: Closure | None,
        *,
        at: int | None = None,
    ) -> Restatement | None:
        """Restate the month of ``time_ms`` if it is closed (``closure``: read before the
        correction was written, so a closing that cannot be read writes nothing); ``at``:
        the restatement's time when not now (a correction from the log: its own)."""
        period = Period.containing(time_ms)
        if closure is None:
            return None
        restatement, current = await self._restate(account, period, (cause,), at=at)
        box = [current]
        del current
        await self._drop(box)
        return restatement

    # -- corrections --------------------------------------------------------------------------

    async def adjust(
        self,
        account: str,
        meter_name: str,
        start: int,
        window: Window,
        dimensions: Mapping[str, str],
        kind: AdjustmentKind,
        quantity: Decimal | str,
        by: str,
        reason: str,
        key: str | None = None,
    ) -> tuple[Adjustment, Restatement | None]:
        """Record a credit or debit; a closed period it falls in is restated at once.

        ``key``: the client's idempotency key (None: a new one is made). If the account has
        a correction under it, that one is answered (``replayed``) when it was this same
        request, else :class:`Conflict` ``idempotency_conflict``; nothing is recorded."""
        key = _key(key)
        meter = self.meter(meter_name)
        _need_text("account", account)
        _need_text("by", by)
        _need_text("reason", reason)
        if meter.aggregation not in ADDITIVE:
            raise invalid(
                "meter",
                f"{meter.name!r} is {meter.aggregation.value}; only sum and count meters"
                " take quantity adjustments (void the wrong events instead)",
            )
        if start % window.ms:
            raise invalid("start", f"{start} is not aligned to a {window.value} window")
        amount = _positive_decimal("quantity", quantity)
        unknown = sorted(set(dimensions) - set(meter.dimensions))
        if unknown:
            raise invalid(
                "dimensions",
                f"{unknown[0]!r} is not a dimension of meter {meter.name!r}"
                f" (dimensions: {', '.join(meter.dimensions) or 'none'})",
            )
        dims = tuple(dimensions.get(name, "") for name in meter.dimensions)
        wanted = AdjustmentRequest(
            account, meter.name, start, start + window.ms, dims, kind, amount, by, reason, key
        )
        replayed = await self._replayed(wanted)
        if replayed is not None:
            return replayed
        if self.journal is not None:  # cluster mode: through the shard's log
            return await self.journal.adjust(wanted)
        return await self.record_adjustment(wanted, self.clock())

    @overload
    async def _replayed(
        self, wanted: AdjustmentRequest
    ) -> tuple[Adjustment, Restatement | None] | None: ...
    @overload
    async def _replayed(self, wanted: VoidRequest) -> tuple[Void, Restatement | None] | None: ...
    async def _replayed(
        self, wanted: CorrectionRequest
    ) -> tuple[Adjustment | Void, Restatement | None] | None:
        """The answer to ``wanted`` if its key is already used: the correction recorded
        under it and the restatement it caused (or :class:`Conflict`); None if unused.
        Checked again where the correction is written (:class:`BillingDB`), in its
        transaction: this early look only spares a replay the work before it."""
        assert wanted.key is not None
        found = await self.db.keyed(wanted.account, wanted.key)
        if found is None:
            return None
        return await self._replay_answer(replay(found, wanted))

    async def _replay_answer(self, record: C) -> tuple[C, Restatement | None]:
        """The answer to a request replayed under ``record``'s key: ``record`` and the
        restatement it caused when it was recorded."""
        log.info("correction_replayed", account=record.account, id=record.id, key=record.key)
        return record, await self._restatement_of(record)

    async def _restatement_of(self, record: Adjustment | Void) -> Restatement | None:
        """The restatement ``record`` caused when it was recorded (None: none)."""
        time_ms = record.start if isinstance(record, Adjustment) else record.time
        cause = record.describe()
        for restatement in await self.db.restatements(
            record.account, Period.containing(time_ms)
        ):
            if restatement.causes[:1] == (cause,):
                return restatement
        return None

    async def record_adjustment(
        self,
        adjustment: AdjustmentRequest,
        at: int,
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> tuple[Adjustment, Restatement | None]:
        """Write a validated adjustment made at ``at`` (``log_seq``: the log sequence it is
        applied from, cluster mode; its idempotency key is checked in the same transaction:
        a replay writes nothing and restates nothing; ``fence``: asked right before that
        transaction commits, :class:`Unavailable` ``fenced`` and nothing written when it
        says no); restate the closed period it falls in."""
        meter = self.meter(adjustment.meter)  # a meter no longer configured is refused

        def said(made: Adjustment) -> None:
            log.info("adjusted", account=made.account, id=made.id, meter=meter.name, by=made.by)

        write = partial(self.db.add_adjustment, adjustment, at, log_seq=log_seq, fence=fence)
        stamp = None if log_seq is None else at  # from the log: its time, not this clock
        return await self._record(adjustment.start, write, said, restated_at=stamp)

    async def void_event(
        self,
        account: str,
        event_id: str,
        by: str,
        reason: str,
        period: Period | None = None,
        key: str | None = None,
    ) -> tuple[Void, Restatement | None]:
        """Take one event out of billed usage (it stays in the journal).

        ``period`` narrows the search for the event to the month its time falls in.
        :class:`NotFound` for an unknown event, :class:`Conflict` for one already void,
        quarantined or discarded (it was never counted). ``key`` as in :meth:`adjust`
        (a replay is answered before the event is searched for).
        """
        key = _key(key)
        _need_text("by", by)
        _need_text("reason", reason)
        asked = VoidRequest.asked(account, event_id, by, reason, key)
        replayed = await self._replayed(asked)
        if replayed is not None:
            return replayed
        low, high = (-(1 << 62), 1 << 62) if period is None else (period.start_ms, period.end_ms)
        found: Event | None = None
        async for event in self._events(account, None, low, high):
            if event.id == event_id:
                found = event
                break
        if found is None:
            raise NotFound(f"account {account!r} has no event {event_id!r}", code="unknown_event")
        set_aside = (await self._not_counted(account)).get(event_id)
        if set_aside is not None:  # quarantined, or discarded by an operator
            raise Conflict(
                f"event {event_id!r} is {set_aside}: it was never counted", code=set_aside
            )
        meter = self.meter(found.meter)
        wanted = replace(
            asked,
            meter=meter.name,
            time=found.time,
            dims=dims_of(meter, found),
            quantity=str(found.quantity),
        )
        if self.journal is not None:  # cluster mode: through the shard's log
            return await self.journal.void(wanted)
        return await self.record_void(wanted, self.clock())

    async def record_void(
        self,
        void: VoidRequest,
        at: int,
        *,
        log_seq: int | None = None,
        fence: Fence | None = None,
    ) -> tuple[Void, Restatement | None]:
        """Write a void of a found event, made at ``at`` (``log_seq`` and ``fence`` as in
        :meth:`record_adjustment`); :class:`Conflict` when it is already void."""

        def said(made: Void) -> None:
            log.info("voided", account=made.account, event_id=made.event_id, by=made.by)

        write = partial(self.db.add_void, void, at, log_seq=log_seq, fence=fence)
        stamp = None if log_seq is None else at  # from the log: its time, not this clock
        return await self._record(void.time, write, said, restated_at=stamp)

    async def _record(
        self,
        time_ms: int,
        write: Callable[[], Awaitable[C]],
        said: Callable[[C], None],
        *,
        restated_at: int | None = None,
    ) -> tuple[C, Restatement | None]:
        """``write()`` a correction that counts at ``time_ms`` with the periods locked (a
        closing read first: a closing that cannot be read writes nothing); a replayed one is
        answered with the restatement it caused, a new one ``said`` (logged) and its closed
        month restated."""
        async with self._periods:
            period = Period.containing(time_ms)
            if self.closes is not None:  # cluster mode: closed here iff a Close came before
                closure = await self.db.closure(period)  # it in the log: no bucket read
            else:
                closure = await self._closure(period, locked=True)
            recorded = await write()
            if recorded.replayed:
                return await self._replay_answer(recorded)
            said(recorded)
            restatement = await self._restate_if_closed(
                recorded.account, time_ms, recorded.describe(), closure, at=restated_at
            )
        return recorded, restatement

    # -- explanations -------------------------------------------------------------------------

    async def explain(
        self,
        account: str,
        period: Period,
        line: int,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE,
        audit_cursor: str | None = None,
    ) -> Explanation:
        """Invoice line ``line`` (1-based, of the current figures) down to its events."""
        box = [(await self.invoice(account, period)).invoice]
        try:  # the line looked up, and the invoice freed, on the worker thread
            found = await self.off_loop(partial(_line_taking, box, line))
        except LookupError as exc:
            raise NotFound(str(exc), code="unknown_line") from None
        return await self.explain_line(
            account, found, cursor=cursor, limit=limit, audit_cursor=audit_cursor
        )

    async def explain_line(
        self,
        account: str,
        found: InvoiceLine,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE,
        audit_cursor: str | None = None,
    ) -> Explanation:
        """A line of a rating already at hand (no re-rating) down to its events."""
        meter = self.meter(found.meter)
        dims = tuple(v for _, v in found.dims)
        adjustments = [
            a
            for a in await self.db.adjustments(account, found.start, found.end, meter.name)
            if a.id in found.adjustments
        ]
        return await self._explain(
            account,
            meter,
            (found.start, found.end),
            Window.DAY,
            dims.__eq__,
            dict(found.dims),
            found.quantity,
            adjustments,
            (cursor, audit_cursor),
            limit,
            found,
        )

    async def explain_usage(
        self,
        account: str,
        meter_name: str,
        start: int,
        window: Window,
        group: Mapping[str, str] | None = None,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE,
        audit_cursor: str | None = None,
    ) -> Explanation:
        """One usage figure (the window at ``start``, of ``group`` if given) down to its
        events; its value is the corrected usage value (voids applied, adjustments added)."""
        meter = self.meter(meter_name)
        low = window.align(start)
        high = low + window.ms
        group = dict(group or {})
        if len(group) > 1:
            raise invalid("group", "at most one dimension, like the usage endpoint's group_by")
        index = None
        wanted = ""
        if group:
            [(name, wanted)] = group.items()
            index = _group_index(meter, name)
        rows = await self.usage(
            account,
            meter.name,
            low,
            high,
            window,
            None if index is None else meter.dimensions[index],
        )
        value = next(
            (v for s, _e, v, g in rows if s == low and (g is None or g == group)), Decimal(0)
        )

        def keep(dims: tuple[str, ...]) -> bool:
            return index is None or dims[index] == wanted

        adjustments = [
            a for a in await self.db.adjustments(account, low, high, meter.name) if keep(a.dims)
        ]
        return await self._explain(
            account,
            meter,
            (low, high),
            _FINER[window],
            keep,
            group,
            value,
            adjustments,
            (cursor, audit_cursor),
            limit,
            None,
        )

    async def _explain(
        self,
        account: str,
        meter: Meter,
        span: tuple[int, int],
        window: Window,
        keep: DimsFilter,
        shown_filter: dict[str, str],
        value: Decimal,
        adjustments: list[Adjustment],
        cursors: tuple[str | None, str | None],
        limit: int,
        line: InvoiceLine | None,
    ) -> Explanation:
        """``cursors``: of the events page and of the audit page."""
        cursor, audit_cursor = cursors
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise invalid("limit", f"must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        low, high = span
        cells = await self.cells(account, meter, low, high)
        windows = await self.off_loop(partial(_windows, meter, cells, keep, span, window))
        voids = [v for v in await self.db.voids(account, low, high, meter.name) if keep(v.dims)]
        void_of = {v.event_id: v.id for v in voids}
        quarantined = await self._not_counted(account)
        events: list[ExplainedEvent] = []
        next_cursor = cursor
        while len(events) < limit:
            page = await self.accounts.store.reader.events(
                account, meter.name, low, high, limit - len(events), next_cursor
            )
            for event in page.events:
                if not keep(dims_of(meter, event)):
                    continue
                status = quarantined.get(event.id, "voided" if event.id in void_of else "counted")
                events.append(
                    ExplainedEvent(event, window.align(event.time), status, void_of.get(event.id))
                )
            next_cursor = page.next_cursor
            if next_cursor is None:
                break
        audit, audit_next = await self._audit_page(
            account, meter, (low, high), window, keep, limit, audit_cursor
        )
        figure = value if line is None else line.usage
        decided_by = await self._decided_by(
            account, meter, span, window, keep, figure, set(void_of) | set(quarantined)
        )
        return Explanation(
            account,
            meter.name,
            low,
            high,
            shown_filter,
            value,
            windows,
            tuple(events),
            next_cursor,
            tuple(adjustments),
            tuple(voids),
            line,
            meter.dimensions,
            audit=tuple(audit),
            audit_next_cursor=audit_next,
            unit=meter.units,
            aggregation=meter.aggregation.value,
            cap=None if line is None else self._cap(meter, line),
            decided_by=decided_by,
            currency=self.currency,
        )

    def _cap(self, meter: Meter, line: InvoiceLine) -> CapDetail | None:
        """The cap of ``line``'s rule as arithmetic (None without one)."""
        dims = tuple(v for _, v in line.dims)
        rule = self.book.rule_at(meter, dims, line.start)
        period = Period.containing(line.start)
        cap = None if rule is None else rule.cap_for(period)
        if rule is None or cap is None:
            return None
        used = EXACT.subtract(cap, line.quantity) if line.capped else None
        return CapDetail(cap, rule.daily_cap, period.days, line.capped, used)

    async def _decided_by(
        self,
        account: str,
        meter: Meter,
        span: tuple[int, int],
        window: Window,
        keep: DimsFilter,
        figure: Decimal,
        not_counted: set[str],
    ) -> ExplainedEvent | None:
        """For a max, min or latest figure: the counted event that set it (the earliest
        event at a peak or low; the latest event by time, then id). Reads every event of the
        meter in ``span`` (on the store's reader thread)."""
        aggregation = meter.aggregation
        if aggregation not in (Aggregation.MAX, Aggregation.MIN, Aggregation.LATEST):
            return None
        best: Event | None = None
        low, high = span
        async for event in self._events(account, meter.name, low, high):
            if event.id in not_counted or not keep(dims_of(meter, event)):
                continue
            if aggregation is Aggregation.LATEST:
                if best is None or (event.time, event.id) > (best.time, best.id):
                    best = event
            elif Decimal(event.quantity) == figure and (best is None or event.time < best.time):
                best = event
        return None if best is None else ExplainedEvent(best, window.align(best.time), "counted")

    async def _audit_page(
        self,
        account: str,
        meter: Meter,
        span: tuple[int, int],
        window: Window,
        keep: DimsFilter,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[ExplainedAudit], str | None]:
        """One page of the audit entries of ``meter`` in ``span`` that pass ``keep`` (an
        entry whose properties were invalid passes: it cannot be ruled out)."""
        low, high = span
        names = meter.dimensions
        found: list[ExplainedAudit] = []
        while len(found) < limit:
            try:
                page = await self.accounts.store.reader.audit(
                    account, low, high, meter.name, limit=limit - len(found), cursor=cursor
                )
            except InvalidCursor as exc:
                raise invalid("audit_cursor", str(exc)) from None
            for entry in page.entries:
                if entry.properties is not None:
                    props = dict(entry.properties)
                    if not keep(tuple(props.get(name, "") for name in names)):
                        continue
                place = None if entry.time is None else window.align(entry.time)
                found.append(ExplainedAudit(entry, place))
            cursor = page.next_cursor
            if cursor is None:
                break
        return found, cursor

    # -- helpers ------------------------------------------------------------------------------

    async def _events(
        self, account: str, meter: str | None, low: int, high: int
    ) -> AsyncIterator[Event]:
        """Every stored event of ``account`` (of ``meter``) in ``[low, high)``, page by page."""
        cursor: str | None = None
        reader = self.accounts.store.reader
        while True:
            page = await reader.events(account, meter, low, high, MAX_EVENTS_LIMIT, cursor)
            for event in page.events:
                yield event
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def _not_counted(self, account: str) -> dict[str, str]:
        """The account's event ids that do not count: ``quarantined`` or ``discarded`` (an
        event released from quarantine counts: the events pages list its counted copy only)."""
        reader = self.accounts.store.reader
        found = {
            entry.event_id: "discarded"
            for entry in await reader.quarantine_log(account)
            if entry.action == "discarded"
        }
        found.update((q.event_id, "quarantined") for q in await reader.quarantined(account))
        return found

    async def _accounts(self, period: Period) -> list[str]:
        """Every account the store knows, and those with adjustments in ``period``."""
        known = set(await self.accounts.store.reader.accounts())
        known |= await self.db.adjusted_accounts(period.start_ms, period.end_ms)
        return sorted(known)


# ---- the pure work run off the Trio thread (Billing.off_loop) ---------------------------------


def _replace_cells(
    cells: list[Cell], fixed: Mapping[tuple[int, tuple[str, ...]], State]
) -> list[Cell]:
    """``cells`` with those in ``fixed`` (recomputed without voided events) replaced, the
    empty ones left out, by start and dimension values."""
    kept = [c for c in cells if (c[0], c[1]) not in fixed]
    kept.extend((s, d, state) for (s, d), state in fixed.items() if not state.empty)
    return sorted_in_slices(kept, key=lambda c: (c[0], c[1]))


def _usage_rows(
    meter: Meter,
    cells: list[Cell],
    span: tuple[int, int],
    window: Window,
    group_by: str | None,
    index: int | None,
    adjustments: Iterable[Adjustment],
) -> list[tuple[int, int, Decimal, dict[str, str] | None]]:
    """Usage rows of ``cells`` rolled up, with ``adjustments`` added in their window."""
    low, high = span
    figures: dict[tuple[int, str], Decimal] = {}
    for row in rollup(meter, cells, low, high, window, group_by):
        group = "" if row.group is None or group_by is None else row.group[group_by]
        figures[(row.start, group)] = Decimal(row.value)
    for a in adjustments:
        key = (window.align(a.start), "" if index is None else a.dims[index])
        figures[key] = EXACT.add(figures.get(key, Decimal(0)), a.signed)
    return [
        (start, start + window.ms, value, None if group_by is None else {group_by: group})
        for (start, group), value in sorted_in_slices(figures.items(), key=_first)
    ]


def _first(item: tuple[tuple[int, str], Decimal]) -> tuple[int, str]:
    return item[0]


def _windows(
    meter: Meter, cells: list[Cell], keep: DimsFilter, span: tuple[int, int], window: Window
) -> tuple[WindowFigure, ...]:
    """The ``window``-sized figures of the cells whose dimension values pass ``keep``."""
    low, high = span
    mine = [c for c in cells if keep(c[1])]
    return tuple(
        WindowFigure(row.start, row.end, row.value)
        for row in rollup(meter, mine, low, high, window, None)
    )


def _take(box: list[T]) -> T:
    """What ``box`` holds, the box emptied. Given a box whose content nothing else holds, a
    worker thread becomes its only holder, so it is freed there when the work ends, not on
    the Trio thread (freeing an invoice of 50,000 lines or its cells is ~30 ms)."""
    return box.pop()


def _rate_taking(
    box: list[dict[str, list[Cell]]],
    account: str,
    period: Period,
    meters: Mapping[str, Meter],
    book: PriceBook,
    adjustments: list[Adjustment],
    *,
    currency: str,
    amount_places: int,
) -> Invoice:
    """:func:`rate` of the cells in ``box`` (freed here after)."""
    cells = _take(box)
    return rate(
        account,
        period,
        meters,
        cells,
        book,
        adjustments,
        currency=currency,
        amount_places=amount_places,
    )


def _compare_taking(
    box: list[StoredFigures], current: Invoice
) -> tuple[list[LineChange], list[str]]:
    """What moved between the fixed figures in ``box`` (freed here after) and a rating."""
    fixed = _take(box)
    return (
        compare_lines(fixed.lines, current.lines),
        compare_unpriced(fixed.unpriced, current.unpriced),
    )


def _line_taking(box: list[Invoice], number: int) -> InvoiceLine:
    """Line ``number`` of the invoice in ``box`` (freed here after); ``LookupError``."""
    return _take(box).line(number)


def _key(key: str | None) -> str:
    """The client's idempotency key, checked, or a new one when it sent none."""
    if key is None:
        return new_key()
    why = check_key(key)
    if why is not None:
        raise invalid("Idempotency-Key", why)
    return key


def _need_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, "must be a non-empty string")


def _positive_decimal(name: str, value: Decimal | str) -> Decimal:
    """A quantity > 0 written in plain decimal digits (no exponent: ``1e999999`` would be
    exact but absurd), at most 30 digits each side of the point."""
    text = value if isinstance(value, str) else format(value, "f")
    if not isinstance(text, str) or not _PLAIN_DECIMAL.fullmatch(text):
        raise invalid(
            name, f"must be a decimal like '12.5' (digits, optional point), got {value!r:.40}"
        )
    number = Decimal(text)
    if number <= 0:
        raise invalid(name, f"must be greater than 0, got {value!r:.40}")
    return number


def _group_index(meter: Meter, group_by: str | None) -> int | None:
    try:
        return group_index(meter, group_by)
    except ValueError as exc:
        raise invalid("group_by", str(exc)) from None
