"""The delivery service: sends the outbox to the webhooks, effectively once (protocol.md §4).

A supervised task (``deliveries`` under the root supervisor). It follows the store's
``alert_outbox`` with a cursor (woken by the actors' checkpoints, and polling every
second), copies each new crossing into its own database (``deliveries.sqlite3`` beside the
store: attempts, status, next retry; the store keeps one writer), and POSTs it:

* the body is the outbox row's bytes, the same on every attempt; headers
  ``Meterd-Event-Id`` and ``Meterd-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret,
  "<t>." + body)>`` (``t`` the time of the attempt);
* a 2xx answer delivers it; anything else (another status, a timeout of 10 s, a refused
  connection) is retried with exponential backoff and full jitter: ``2 s * 2^(n-1)``
  (at most 5 minutes) times a random factor in [0.5, 1], so the first retry comes within
  2 s; once the first attempt is 24 hours old the next failure marks it ``failed``
  (an operator can :meth:`DeliveryService.redeliver` it);
* per account, one delivery at a time, in outbox order (an account's crossings arrive in
  the order they were decided); per webhook at most ``max_concurrency`` requests at once.

A crash or ``kill -9`` loses nothing: the outbox is durable and a delivery not recorded as
delivered is attempted again (the receiver dedupes by id).

Crossings delivered by another process holding the same shard (cluster mode: the previous
owner, whose deliveries database came in the shard's snapshot) are known by id only, in the
table ``delivered_elsewhere`` (:func:`import_delivered`). A new outbox row whose id is there
is recorded ``delivered`` and not sent; every other row is sent. Only ids are imported,
never another database's cursor or ``seq``: the outbox's ``seq`` is numbered by the store
that wrote it, so another node's would make this one skip crossings.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import random
import sqlite3
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import structlog
import trio

from meterd import __version__
from meterd.store import Store

from ._config import Webhook
from ._delivered import connect
from ._outbox import OutboxRow, outbox_after
from ._runtime import AlertBook, wall_ms

__all__ = ["Delivery", "DeliveryService", "sign"]

log = structlog.get_logger("meterd.alerts")

TIMEOUT_S: Final = 10.0
FIRST_BACKOFF_S: Final = 2.0
MAX_BACKOFF_S: Final = 300.0
RETRY_FOR_MS: Final = 24 * 3600 * 1000
POLL_S: Final = 2.0
STATUSES: Final = ("pending", "delivered", "failed")

_COLUMNS: Final = (
    "id, seq, account, alert, webhook, period, event_id, body, created_at, status, attempts,"
    " first_attempt_at, last_attempt_at, next_attempt_at, last_error, delivered_at"
)


def backoff_s(attempts: int, rng: random.Random, first: float, most: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``first * 2^(n-1)``, at
    most ``most``, times a random factor in [0.5, 1] (jitter: receivers coming back are
    not hit by every sender at once)."""
    return float(min(most, first * 2 ** min(attempts - 1, 60)) * rng.uniform(0.5, 1.0))


def sign(secret: str, t: int, body: bytes) -> str:
    """``Meterd-Signature``'s value for an attempt at unix time ``t``."""
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode("ascii") + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


@dataclass(slots=True)
class Delivery:
    """One crossing's delivery (a row of ``deliveries``)."""

    id: str
    seq: int
    account: str
    alert: str
    webhook: str
    period: str
    event_id: str
    body: bytes
    created_at: int
    status: str = "pending"
    attempts: int = 0
    first_attempt_at: int | None = None
    last_attempt_at: int | None = None
    next_attempt_at: int | None = None
    last_error: str | None = None
    delivered_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "alert": self.alert,
            "webhook": self.webhook,
            "period": self.period,
            "event_id": self.event_id,
            "created_at": self.created_at,
            "status": self.status,
            "attempts": self.attempts,
            "last_attempt_at": self.last_attempt_at,
            "next_attempt_at": self.next_attempt_at if self.status == "pending" else None,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at,
        }

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.seq,
            self.account,
            self.alert,
            self.webhook,
            self.period,
            self.event_id,
            self.body,
            self.created_at,
            self.status,
            self.attempts,
            self.first_attempt_at,
            self.last_attempt_at,
            self.next_attempt_at,
            self.last_error,
            self.delivered_at,
        )


class _DB:
    """The service's own SQLite file; every call runs in a worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.lock = trio.Lock()

    def _open(self) -> None:
        self.conn = connect(self.path)

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self.lock:
            if self.conn is None:
                await trio.to_thread.run_sync(self._open)
            assert self.conn is not None
            return await trio.to_thread.run_sync(fn, self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _load(conn: sqlite3.Connection) -> tuple[int, list[Delivery], dict[str, int]]:
    row = conn.execute("SELECT seq FROM cursor").fetchone()
    pending = [
        Delivery(*r)
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'pending' ORDER BY seq"
        )
    ]
    return (0 if row is None else int(row[0])), pending, _counts(conn)


def _add(conn: sqlite3.Connection, rows: list[Delivery], cursor: int) -> int:
    """Record new outbox ``rows`` (pending) and the cursor after them. A row whose id is in
    ``delivered_elsewhere`` is recorded ``delivered`` instead (its ``Delivery`` changed to
    say so: the caller does not send it); returns how many such rows were recorded."""
    insert = f"INSERT OR IGNORE INTO deliveries ({_COLUMNS}) VALUES ({', '.join('?' * 16)})"
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        known: list[Delivery] = []
        for delivery in rows:
            found = conn.execute(
                "SELECT delivered_at FROM delivered_elsewhere WHERE id = ?", (delivery.id,)
            ).fetchone()
            if found is not None:
                delivery.status = "delivered"
                delivery.next_attempt_at = None
                delivery.delivered_at = found[0]
                known.append(delivery)
        recorded = conn.executemany(insert, [d.row() for d in known]).rowcount if known else 0
        conn.executemany(insert, [d.row() for d in rows if d.status == "pending"])
        conn.execute(
            "INSERT INTO cursor (one, seq) VALUES (1, ?) ON CONFLICT (one) DO UPDATE"
            " SET seq = excluded.seq",
            (cursor,),
        )
    return max(0, recorded)


def accounts_behind(conn: sqlite3.Connection) -> list[str]:
    """Accounts whose indexed journal goes past their checkpoint's watermark (one index
    seek per account)."""
    return [
        str(row[0])
        for row in conn.execute(
            "SELECT a.account FROM accounts a WHERE EXISTS (SELECT 1 FROM journal_index j"
            " WHERE j.account = a.account AND j.batch_id > a.watermark)"
        )
    ]


def _save(conn: sqlite3.Connection, delivery: Delivery) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO deliveries ({_COLUMNS}) VALUES ({', '.join('?' * 16)})",
        delivery.row(),
    )


def _redeliver(conn: sqlite3.Connection, delivery: Delivery) -> None:
    """Save ``delivery`` (pending again) and forget that it was delivered elsewhere: an
    operator asked for it to be sent, so neither this database nor a copy of it (a snapshot's)
    may count it delivered until it is."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        _save(conn, delivery)
        conn.execute("DELETE FROM delivered_elsewhere WHERE id = ?", (delivery.id,))


def _list(
    conn: sqlite3.Connection, account: str | None, status: str | None, limit: int
) -> list[Delivery]:
    where, args = [], []
    if account is not None:
        where.append("account = ?")
        args.append(account)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    sql = f"SELECT {_COLUMNS} FROM deliveries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [Delivery(*r) for r in conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit))]


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        str(s): int(n)
        for s, n in conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
    }


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every delivery service of the process, made once: loading the CA
    bundle costs ~20 ms of CPU, and an owner process has a service per shard."""
    return httpx.create_ssl_context()


class DeliveryService:
    """See the module doc. ``clock_ms`` is wall time in ms (tests give a MockClock's)."""

    def __init__(
        self,
        store: Store,
        book: AlertBook,
        webhooks: Sequence[Webhook],
        path: Path,
        *,
        clock_ms: Callable[[], int] = wall_ms,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = TIMEOUT_S,
        first_backoff: float = FIRST_BACKOFF_S,
        max_backoff: float = MAX_BACKOFF_S,
        retry_for_ms: int = RETRY_FOR_MS,
        rng: random.Random | None = None,
        poll: float = POLL_S,
        wake: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.book = book
        self.webhooks = {w.name: w for w in webhooks}
        self.db = _DB(path)
        self.clock_ms = clock_ms
        self.transport = transport
        self.timeout = timeout
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.retry_for_ms = retry_for_ms
        self.rng = rng or random.Random()
        self.poll = poll  # the outbox is read at least this often (and when an actor rings)
        self.wake = wake  # wakes an account's actor (Accounts.checkpoint): see _recover
        self._rang = True
        self.limiters = {w.name: trio.CapacityLimiter(w.max_concurrency) for w in webhooks}
        self.queues: dict[str, deque[Delivery]] = {}  # pending, per account, in seq order
        self.in_flight: set[str] = set()  # accounts with an attempt under way
        self.cursor = 0
        self.settled = {"delivered": 0, "failed": 0}  # deliveries in each final status
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self._wake = trio.Event()
        self._progress = trio.lowlevel.ParkingLot()  # an attempt ended (tests and tools wait)

    def child_spec(self) -> Any:
        import supervisors as sv

        return sv.task_spec("deliveries", self.run)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cursor, pending, counts = await self.db.call(_load)
        self.cursor = cursor
        self.settled = {"delivered": counts.get("delivered", 0), "failed": counts.get("failed", 0)}
        self.queues.clear()
        self.in_flight.clear()
        for delivery in pending:
            self.queues.setdefault(delivery.account, deque()).append(delivery)
        try:
            async with (
                httpx.AsyncClient(
                    timeout=self.timeout, transport=self.transport, verify=_tls()
                ) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(self._bell)
                if self.wake is not None:
                    nursery.start_soon(self._recover, self.wake)
                task_status.started()
                next_follow = -math.inf
                while True:
                    if self._rang or trio.current_time() >= next_follow:
                        self._rang = False
                        next_follow = trio.current_time() + self.poll
                        await self._follow()
                    wait = self._dispatch(nursery, client)
                    # One deadline for both the test above and the wait: computed apart, as
                    # ``now - followed >= poll`` and ``followed + poll - now``, float rounding
                    # can make the first false while the second is 0, and the loop spins
                    # (for ever under a mock clock, which jumps only when the loop is idle).
                    with trio.move_on_at(min(trio.current_time() + wait, next_follow)):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.db.close)

    async def _recover(self, wake: Callable[[str], Awaitable[None]]) -> None:
        """After a crash (``kill -9``) the journal may hold events past an account's last
        checkpoint that no actor has evaluated: they are only replayed when the account
        wakes, and a re-send of them (all duplicates) wakes nothing. So at start, every
        account with rules whose journal goes past its watermark is woken (a few at a
        time): its replay decides the crossings those events made."""
        store = self.store
        await self.book.ensure_loaded(store)
        behind = set(await store.reader.run(accounts_behind, "default"))
        for held in store.writer.journal_tail.slices:  # batches not in the index yet
            behind.update(held)
        todo = sorted(a for a in behind if self.book.rules_for(a))
        if not todo:
            return
        log.info("alerts_recovery", accounts=len(todo))
        limiter = trio.CapacityLimiter(8)

        async def one(account: str) -> None:
            async with limiter:
                try:
                    await wake(account)
                except Exception as error:  # the account's own failure is logged there
                    log.warning("alerts_recovery_failed", account=account, error=repr(error))

        async with trio.open_nursery() as nursery:
            for account in todo:
                nursery.start_soon(one, account)

    async def _bell(self) -> None:
        while True:
            await self.book.wait()
            self._rang = True
            self._wake.set()

    async def _follow(self) -> None:
        """Copy the outbox rows after the cursor into the deliveries (pending, due now)."""
        while True:
            rows: list[OutboxRow] = await self.store.reader.run(
                partial(outbox_after, seq=self.cursor), "default"
            )
            if not rows:
                return
            now = self.clock_ms()
            new = [
                Delivery(
                    r.id,
                    r.seq,
                    r.account,
                    r.alert,
                    r.webhook,
                    r.period,
                    r.event_id,
                    bytes(r.body),
                    r.created_at,
                    next_attempt_at=now,
                )
                for r in rows
            ]
            cursor = rows[-1].seq
            known = await self.db.call(partial(_add, rows=new, cursor=cursor))
            self.cursor = cursor
            self.settled["delivered"] += known
            for delivery in new:
                if delivery.status == "pending":
                    self.queues.setdefault(delivery.account, deque()).append(delivery)
            if known:  # delivered by the shard's previous owner (import_delivered): not sent
                log.info("delivered_elsewhere", crossings=known, cursor=cursor)

    def _dispatch(self, nursery: trio.Nursery, client: httpx.AsyncClient) -> float:
        """Start every account's head delivery that is due; seconds until the next is."""
        now = self.clock_ms()
        wait = math.inf
        for account, queue in list(self.queues.items()):
            if not queue:
                del self.queues[account]
                continue
            if account in self.in_flight:
                continue
            head = queue[0]
            due = head.next_attempt_at or 0
            if due <= now:
                self.in_flight.add(account)
                nursery.start_soon(self._attempt, client, head)
            else:
                wait = min(wait, (due - now) / 1000)
        return wait

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            hook = self.webhooks.get(delivery.webhook)
            if hook is None:
                missing = f"webhook {delivery.webhook!r} is not configured; add it and redeliver"
                await self._settle(delivery, "failed", missing)
                return
            async with self.limiters[hook.name]:
                error = await self._post(client, hook, delivery)
            if error is None:
                await self._settle(delivery, "delivered", None)
            else:
                await self._retry(delivery, error)
        finally:
            self.in_flight.discard(delivery.account)
            self._wake.set()
            self._progress.unpark_all()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds, checked after each attempt (tests, tools)."""
        while not done():
            await self._progress.park()

    async def _post(
        self, client: httpx.AsyncClient, hook: Webhook, delivery: Delivery
    ) -> str | None:
        now = self.clock_ms()
        delivery.attempts += 1
        self.attempts += 1
        delivery.last_attempt_at = now
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = now
        headers = {
            "Content-Type": "application/json",
            "Meterd-Event-Id": delivery.id,
            "Meterd-Signature": sign(hook.secret, now // 1000, delivery.body),
            "User-Agent": f"meterd/{__version__}",
        }
        try:
            response = await client.post(hook.url, content=delivery.body, headers=headers)
        except httpx.TimeoutException:
            return f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"[:500]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code} {response.reason_phrase}"[:500]

    async def _retry(self, delivery: Delivery, error: str) -> None:
        now = self.clock_ms()
        first = delivery.first_attempt_at if delivery.first_attempt_at is not None else now
        if now - first >= self.retry_for_ms:
            await self._settle(delivery, "failed", error)
            return
        delay = backoff_s(delivery.attempts, self.rng, self.first_backoff, self.max_backoff)
        delivery.next_attempt_at = now + max(1, round(delay * 1000))
        delivery.last_error = error
        await self.db.call(partial(_save, delivery=delivery))
        log.warning(
            "delivery_attempt_failed",
            id=delivery.id,
            account=delivery.account,
            webhook=delivery.webhook,
            attempt=delivery.attempts,
            error=error,
            retry_in_ms=delivery.next_attempt_at - now,
        )

    async def _settle(self, delivery: Delivery, status: str, error: str | None) -> None:
        delivery.status = status
        delivery.next_attempt_at = None
        if status == "delivered":
            delivery.delivered_at = self.clock_ms()
            self.delivered += 1
        else:
            delivery.last_error = error
            self.failed += 1
        self.settled[status] += 1
        await self.db.call(partial(_save, delivery=delivery))
        queue = self.queues.get(delivery.account)
        if queue and queue[0] is delivery:
            queue.popleft()
        if status == "delivered":
            log.info(
                "delivered",
                id=delivery.id,
                account=delivery.account,
                webhook=delivery.webhook,
                attempts=delivery.attempts,
            )
        else:
            log.error(
                "delivery_failed",
                id=delivery.id,
                account=delivery.account,
                webhook=delivery.webhook,
                attempts=delivery.attempts,
                error=error,
                hint="fix the receiver, then re-deliver it: meterd deliveries --redeliver ID",
            )

    # ---- operators ---------------------------------------------------------------------------

    async def deliveries(
        self, account: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        found: list[Delivery] = await self.db.call(
            partial(_list, account=account, status=status, limit=limit)
        )
        live = {d.id: d for q in self.queues.values() for d in q}
        return [live.get(d.id, d) for d in found]

    async def counts(self) -> dict[str, int]:
        counts: dict[str, int] = await self.db.call(_counts)
        return {status: counts.get(status, 0) for status in STATUSES}

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def oldest_undelivered_ms(self) -> int | None:
        """Age of the oldest pending delivery (from its crossing's creation), or None."""
        oldest = min((q[0].created_at for q in self.queues.values() if q), default=None)
        return None if oldest is None else max(0, self.clock_ms() - oldest)

    async def redeliver(self, delivery_id: str) -> Delivery:
        """Send a ``failed`` (or ``delivered``) delivery again, from a fresh retry budget.
        ``KeyError`` when there is no such delivery; a pending one is left as it is."""
        found: list[Delivery] = await self.db.call(
            lambda conn: [
                Delivery(*r)
                for r in conn.execute(
                    f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
                )
            ]
        )
        if not found:
            raise KeyError(delivery_id)
        delivery = found[0]
        if delivery.status == "pending":
            return delivery
        self.settled[delivery.status] = max(0, self.settled[delivery.status] - 1)
        delivery.status = "pending"
        delivery.attempts = 0
        delivery.first_attempt_at = None
        delivery.delivered_at = None
        delivery.next_attempt_at = self.clock_ms()
        await self.db.call(partial(_redeliver, delivery=delivery))
        queue = self.queues.setdefault(delivery.account, deque())
        queue.append(delivery)
        ordered = sorted(queue, key=lambda d: d.seq)
        queue.clear()
        queue.extend(ordered)
        log.info("redelivery_asked", id=delivery.id, account=delivery.account)
        self._wake.set()
        return delivery
