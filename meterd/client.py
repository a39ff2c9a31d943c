"""A Trio producer for meterd's websocket ingest protocol (protocol.md §2).

::

    async with Producer("ws://127.0.0.1:8700/v1/ingest", token) as producer:
        await producer.send(
            {"id": "req-1", "account": "acme", "meter": "dyno.seconds",
             "quantity": "12.5", "time": 1_700_000_000_000}
        )
        await producer.flush()          # every event sent so far is acknowledged
    print(producer.stats)               # leaving the block flushes too

How it works:

* :meth:`Producer.send` checks the event's *types* (never its values: the server is the
  judge of those, and its verdict reaches you), encodes it once with msgpack and queues it.
  It waits only when ``max_pending`` events are unacknowledged (backpressure).
* One background task keeps a connection while there is something to send. Queued events
  become a batch when ``max_batch`` (or the server's smaller ``max_batch``) are waiting, when
  the batch would fill a frame, when the oldest has waited ``linger`` seconds, or on
  :meth:`Producer.flush`. Frames never exceed the server's ``max_frame_bytes`` (a batch is
  split to fit); at most ``window`` batches are unacknowledged on a connection.
* Every batch is kept until its ack. When a connection ends without acks for some batches
  (the daemon stopped, crashed, was killed, sent an ``error``), the producer reconnects
  with capped exponential backoff and jitter and re-sends all of them first, in their
  order, with fresh ``seq`` numbers. Idempotency makes that safe: an event that had become
  durable comes back as a duplicate, never counted twice.
* Errors (§2.4 and meterd's ``unavailable``/``shutting_down``; any unknown code is treated
  like ``unavailable``) end the connection and lead to a reconnect. ``frame_too_large``
  also halves the frame budget. The same protocol fault (``malformed_frame``,
  ``unknown_type``, ``bad_batch``, ``frame_too_large``) repeated ``max_repeated_faults``
  times with no ack in between is a bug that retrying will not fix: :class:`ProtocolError`.
* A 401 at the handshake raises :class:`AuthenticationError` at once (no retry). Another
  4xx refusal (a wrong path: 404) raises :class:`ProtocolError`; 408, 429, 5xx (503 while
  the daemon shuts down) are retried.
* With ``give_up_after`` set, :class:`ProducerConnectionError` is raised when no ack
  could be obtained for that long while there was something to send (default: retry for
  ever; cancel the caller to stop).

Results never vanish: each rejected event is passed to ``on_rejected`` (or, without that
callback, appended to :attr:`Producer.rejections`) as a :class:`Rejection` holding the
event, its ordinal (what :meth:`~Producer.send` returned) and the server's code and message.
``on_result`` sees every acknowledged batch. :attr:`Producer.stats` counts accepted,
duplicate and rejected events (by code). An event that cannot fit in a frame even alone is
rejected here with the code ``too_large``.

A fatal error (:class:`AuthenticationError`, :class:`ProducerConnectionError`,
:class:`ProtocolError`, or an exception raised by a callback) is raised by the next (or a
waiting) :meth:`~Producer.send` or :meth:`~Producer.flush`, and by leaving the ``async
with`` block; :meth:`Producer.unacknowledged` then lists what was not acknowledged.

Leaving the block normally flushes (waits for every ack), then closes the connection
(close code 1000). Leaving it with an exception does not wait: unacknowledged events are
dropped (and logged as a count) — re-send them later, idempotency makes that safe.

Quantities: an ``int``, a :class:`decimal.Decimal` (sent as its decimal string) or a
decimal string. A ``float`` anywhere in an event raises :class:`TypeError` naming the field:
usage is billed exactly. The token is never logged.
"""

from __future__ import annotations

import json
import math
import random
import ssl
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Self

import msgpack  # type: ignore[import-untyped]
import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

__all__ = [
    "INGEST_PATH",
    "AuthenticationError",
    "BatchResult",
    "Producer",
    "ProducerClosed",
    "ProducerConnectionError",
    "ProducerError",
    "ProducerStats",
    "ProtocolError",
    "Rejection",
    "prepare_event",
]

log = structlog.get_logger("meterd.client")

INGEST_PATH: Final = "/v1/ingest"
PROTOCOL_VERSION: Final = 1
TOO_LARGE: Final = "too_large"
"""The code of a local rejection: the event alone does not fit in the server's frames."""

PROTOCOL_FAULTS: Final = frozenset(
    {"malformed_frame", "unknown_type", "bad_batch", "frame_too_large"}
)
"""§2.4 codes that say this producer sent something wrong (the others are the server's state)."""

_MAX_SERVER_FRAME: Final = 64 * 1024 * 1024  # what we accept from the server (acks can be long)
_MIN_FRAME_FACTOR: Final = 1 / 64

_packb = msgpack.Packer(use_bin_type=True).pack
_array_header = msgpack.Packer(use_bin_type=True).pack_array_header
# A batch frame is a 3-entry map, written by hand so that each event is encoded only once.
_BATCH_PREFIX: Final = b"\x83" + _packb("type") + _packb("batch") + _packb("seq")
_EVENTS_KEY: Final = _packb("events")
_FRAME_OVERHEAD: Final = len(_BATCH_PREFIX) + 9 + len(_EVENTS_KEY) + 5  # seq <= 9, header <= 5


# ---- errors -------------------------------------------------------------------------------------


class ProducerError(Exception):
    """The producer cannot go on (the base of its fatal errors)."""


class AuthenticationError(ProducerError):
    """The server refused the token at the handshake (HTTP 401). Not retried."""


class ProducerConnectionError(ProducerError):
    """No ack could be obtained for ``give_up_after`` seconds while events were waiting."""


class ProtocolError(ProducerError):
    """The server refused the handshake for good (4xx but 401), or spoke something else than
    protocol 1, or the same protocol fault kept coming back."""


class ProducerClosed(ProducerError):
    """The producer is not open (used outside its ``async with`` block)."""


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event the server (or, for ``too_large``, the producer) refused; nothing was counted."""

    ordinal: int
    """What :meth:`Producer.send` returned for the event (0, 1, 2... in send order)."""
    event: dict[str, Any]
    """The event as sent (quantities as strings when they were Decimals)."""
    code: str
    message: str

    @property
    def id(self) -> Any:
        """The event's ``id`` (whatever was sent, possibly missing: None)."""
        return self.event.get("id")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one acknowledged batch (or of one locally rejected event)."""

    first_ordinal: int
    events: int
    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...]


@dataclass(slots=True)
class ProducerStats:
    """Counters since the producer was opened."""

    queued: int = 0  # events taken by send()
    accepted: int = 0
    duplicates: int = 0  # includes events re-sent after a lost ack that had been durable
    rejected: Counter[str] = field(default_factory=Counter)  # by code
    batches: int = 0  # batch frames sent, re-sends included
    acks: int = 0
    resent: int = 0  # batch frames sent again on a new connection
    connections: int = 0  # connections that got as far as the server's hello
    faults: Counter[str] = field(default_factory=Counter)  # error frames received, by code

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def settled(self) -> int:
        """Events whose outcome is known (accepted, duplicate or rejected)."""
        return self.accepted + self.duplicates + self.rejected_total


# ---- events -------------------------------------------------------------------------------------


def prepare_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as :meth:`Producer.send` would send it; raises what ``send`` would raise.

    :class:`TypeError` (naming the field) for a float anywhere, a quantity that is not an
    ``int``/``Decimal``/``str``, a non-string key, or a value msgpack cannot encode;
    :class:`ValueError` for a non-finite ``Decimal`` or a value that cannot be encoded (an
    integer beyond 64 bits, a string holding a lone surrogate).
    """
    return _prepare(event)[0]


def _prepare(event: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    if not isinstance(event, Mapping):
        raise TypeError(f"an event must be a dict, not {type(event).__name__}")
    prepared: dict[str, Any] = {}
    for key, value in event.items():
        if not isinstance(key, str):
            raise TypeError(f"event keys must be strings, not {type(key).__name__} ({key!r})")
        if key == "quantity":
            prepared[key] = _quantity(value)
        else:
            prepared[key] = _copy_checked(value, key)
    try:
        packed: bytes = _packb(prepared)
    except (TypeError, ValueError, OverflowError):
        for key, value in prepared.items():
            try:
                _packb(value)
            except TypeError as error:
                raise TypeError(f"event field {key!r} cannot be sent: {error}") from None
            except (ValueError, OverflowError) as error:
                raise ValueError(f"event field {key!r} cannot be sent: {error}") from None
        raise
    return prepared, packed


def _quantity(value: object) -> int | str:
    if isinstance(value, bool):
        raise TypeError(
            f"quantity is a boolean ({value!r}); pass an int, a decimal.Decimal or a decimal string"
        )
    if isinstance(value, int | str):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"quantity is {value!r}; a quantity must be finite")
        return str(value)
    if isinstance(value, float):
        raise TypeError(
            f"quantity is a float ({value!r}); floats are never sent because usage is billed"
            f" exactly: pass an int, a decimal.Decimal or a decimal string such as {str(value)!r}"
        )
    raise TypeError(
        f"quantity is {type(value).__name__}; pass an int, a decimal.Decimal or a decimal string"
        " (or leave it out for a count meter)"
    )


def _copy_checked(value: Any, path: str) -> Any:
    """A copy of ``value`` (so later changes by the caller do not matter), refusing floats and
    map keys that are containers (the server would refuse the whole frame)."""
    if isinstance(value, float):
        raise TypeError(
            f"{path} is a float ({value!r}); floats are never sent: use an int or a string"
        )
    if isinstance(value, Mapping):
        copy: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, float):
                raise TypeError(f"{path} has a float key ({key!r})")
            if isinstance(key, list | tuple | dict | set | frozenset):
                raise TypeError(f"{path} has a {type(key).__name__} as a key; keys are strings")
            copy[key] = _copy_checked(item, f"{path}.{key}")
        return copy
    if isinstance(value, list | tuple):
        return [_copy_checked(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


# ---- internals ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    ordinal: int
    event: dict[str, Any]
    packed: bytes
    at: float  # trio.current_time() when queued


@dataclass(slots=True)
class _Batch:
    events: list[_Pending]
    size: int  # sum of the events' encoded sizes
    seq: int = -1  # on the connection it was last sent on
    sends: int = 0


@dataclass(slots=True)
class _Link:
    """One open connection, after its hello."""

    ws: WebSocketConnection
    max_batch: int
    budget: int  # bytes a frame may take
    window: int
    next_seq: int = 0
    sent: int = 0  # the first ``sent`` batches of the unacknowledged list are on this link
    progress: float = 0.0  # trio time of the last ack, or of a send with nothing in flight
    acks: int = 0
    end: str = ""  # why it ended
    fault: str | None = None  # the error code received, if any


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _primary(group: BaseException) -> BaseException:
    """The exception that explains a group: the first ProducerError, else the first one."""
    leaves = _leaves(group)
    for leaf in leaves:
        if isinstance(leaf, ProducerError):
            return leaf
    return leaves[0]


def _describe(error: BaseException) -> str:
    """A short text for why a connection attempt failed."""
    if isinstance(error, ConnectionTimeout):
        return "the connection attempt timed out"
    cause = error.__cause__ or error.__context__
    if isinstance(error, HandshakeError) and cause is not None and not str(error):
        error = cause
    text = str(error)
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    inner = error.__cause__
    if isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        first = inner.exceptions[0]
        if isinstance(first, OSError) and first.strerror:
            text = f"{text} ({first.strerror})"
    return text or type(error).__name__


def _safe_url(url: str) -> str:
    """``url`` without user info or query (they may hold secrets), for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Producer:
    """A producer of usage events for one meterd ingest endpoint (see the module doc).

    :param url: ``ws://HOST:PORT/v1/ingest`` or ``wss://...`` (without a path, ``/v1/ingest``
        is used).
    :param token: the producer's bearer token (never logged).
    :param max_batch: events per batch at most (the server's ``max_batch`` if smaller).
    :param linger: seconds the oldest queued event may wait for the batch to fill.
    :param max_pending: unacknowledged events (queued or in flight) at which
        :meth:`send` waits.
    :param on_rejected: called with each :class:`Rejection`; without it they are kept in
        :attr:`rejections`.
    :param on_result: called with each :class:`BatchResult`.
    :param on_retry: called with ``(reason, attempt, delay in s)`` before each wait to
        reconnect while events wait (the connection failed or was lost).
    :param ssl_context: for ``wss://`` (default: the system's trust store).
    :param connect_timeout: seconds for the TCP+TLS+websocket handshake and the hello.
    :param backoff_initial: first reconnect delay, doubled per failure ...
    :param backoff_max: ... up to this; each delay is drawn from ``[d/2, d]`` (jitter).
    :param give_up_after: seconds without an ack, while events wait, after which
        :class:`ProducerConnectionError` is raised (None: never).
    :param ack_timeout: seconds without any ack while batches are in flight after which the
        connection is taken for dead (a half-open TCP connection) and replaced.
    :param max_repeated_faults: see :class:`ProtocolError`.
    :param close_timeout: seconds for the closing handshake when leaving the block.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_batch: int = 500,
        linger: float = 0.05,
        max_pending: int = 20_000,
        on_rejected: Callable[[Rejection], None] | None = None,
        on_result: Callable[[BatchResult], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        give_up_after: float | None = None,
        ack_timeout: float = 60.0,
        max_repeated_faults: int = 5,
        close_timeout: float = 5.0,
        rng: random.Random | None = None,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"url must be ws://HOST:PORT/v1/ingest or wss://..., not {url!r}")
        if parts.path in ("", "/"):
            url = urllib.parse.urlunsplit(parts._replace(path=INGEST_PATH))
        if not token or not all("\x21" <= char <= "\x7e" for char in token):
            raise ValueError("token must be non-empty printable ASCII without spaces")
        if max_batch < 1 or max_pending < 1 or max_repeated_faults < 1:
            raise ValueError("max_batch, max_pending and max_repeated_faults must be >= 1")
        if linger < 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need linger >= 0 and 0 < backoff_initial <= backoff_max")
        self.url = url
        self._headers = [(b"Authorization", f"Bearer {token}".encode("ascii"))]
        self._safe_url = _safe_url(url)
        self._max_batch = max_batch
        self._linger = linger
        self._max_pending = max_pending
        self._on_rejected = on_rejected
        self._on_result = on_result
        self._on_retry = on_retry
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._give_up_after = give_up_after
        self._ack_timeout = ack_timeout
        self._max_repeated_faults = max_repeated_faults
        self._close_timeout = close_timeout
        self._random = rng or random.Random()

        self.stats = ProducerStats()
        self.rejections: list[Rejection] = []
        """Rejections, when no ``on_rejected`` callback was given."""
        self.hello: dict[str, Any] | None = None
        """The last hello frame received."""

        self._buffer: deque[_Pending] = deque()  # queued, not yet in a batch
        self._buffer_bytes = 0
        self._unacked: list[_Batch] = []  # batches not acknowledged, in send order
        self._outstanding = 0  # events queued or in unacknowledged batches
        self._next_ordinal = 0
        self._flush_target = 0  # events with a lower ordinal are sent without lingering
        self._link: _Link | None = None
        self._size_trigger = max_batch  # buffered events that make a full batch
        self._bytes_trigger = math.inf  # buffered bytes that make a full frame
        self._frame_factor = 1.0  # lowered by frame_too_large faults
        self._wake = trio.Event()
        self._failure: BaseException | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._stopped = trio.Event()
        self._nursery_manager: Any = None
        self._nursery: trio.Nursery | None = None

    # ---- the public API ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ProducerClosed("a Producer can be opened once; make a new one")
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._state = "open"
        self._nursery.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        clean = exc_type is None
        try:
            if clean and self._failure is None:
                await self.flush()
        finally:
            self._state = "closing"
            self._notify()
            try:
                if clean and self._failure is None:
                    with trio.move_on_after(self._close_timeout):
                        await self._stopped.wait()
            finally:
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                # The background task never raises (it records failures), so the nursery
                # exits quietly and the body's own exception, if any, propagates unwrapped.
                try:
                    await self._nursery_manager.__aexit__(None, None, None)
                except BaseExceptionGroup as group:
                    # Only Cancelled can get here: an enclosing scope is cancelled too.
                    if group.subgroup(lambda e: not isinstance(e, trio.Cancelled)) is not None:
                        raise
                    if clean:
                        raise _leaves(group)[0] from None
                    # else the body's own exception propagates
                self._state = "closed"
                if self._outstanding:
                    self._log.warning("producer_closed_unacknowledged", events=self._outstanding)
        if clean and self._failure is not None and self._outstanding:
            raise self._failure

    async def send(self, event: Mapping[str, Any]) -> int:
        """Queue one event; returns its ordinal (0, 1, 2... in send order), which
        :class:`Rejection` and :class:`BatchResult` refer to.

        Returns once the event is queued, not acknowledged (see :meth:`flush`). Waits while
        ``max_pending`` events are unacknowledged. Raises :class:`TypeError`/:class:`ValueError`
        for an event that cannot be sent (see :func:`prepare_event`; nothing is queued), or the
        producer's fatal error.
        """
        prepared, packed = _prepare(event)
        await trio.lowlevel.checkpoint()
        self._check_usable()
        if self._outstanding >= self._max_pending:
            self._notify()  # the sender cuts a batch now rather than lingering
            while self._outstanding >= self._max_pending:
                await self._changed()
                self._check_usable()
        ordinal = self._next_ordinal
        self._next_ordinal += 1
        self._buffer.append(_Pending(ordinal, prepared, packed, trio.current_time()))
        self._buffer_bytes += len(packed)
        self._outstanding += 1
        self.stats.queued += 1
        if (
            len(self._buffer) == 1
            or len(self._buffer) >= self._size_trigger
            or self._buffer_bytes >= self._bytes_trigger
        ):
            self._notify()
        return ordinal

    async def flush(self) -> None:
        """Wait until every event sent before this call is acknowledged (or rejected).

        Queued events are sent at once, without lingering. Raises the producer's fatal error.
        """
        self._check_usable()
        target = self._next_ordinal
        if target > self._flush_target:
            self._flush_target = target
            self._notify()
        while self._lowest_unsettled() < target:
            await self._changed()
            self._check_usable()
        await trio.lowlevel.checkpoint()

    @property
    def safe_url(self) -> str:
        """The URL without user info or query string, as logs and messages show it."""
        return self._safe_url

    @property
    def outstanding(self) -> int:
        """Events queued or sent and not yet acknowledged."""
        return self._outstanding

    @property
    def in_flight(self) -> int:
        """Batches sent on the current connection and not yet acknowledged."""
        return self._link.sent if self._link is not None else 0

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def failure(self) -> BaseException | None:
        """The fatal error, once there is one."""
        return self._failure

    def unacknowledged(self) -> list[dict[str, Any]]:
        """The events not acknowledged yet, in send order (to keep them after a failure)."""
        events = [pending.event for batch in self._unacked for pending in batch.events]
        events.extend(pending.event for pending in self._buffer)
        return events

    @property
    def _log(self) -> Any:
        # Bound when used, so that logging configured after the Producer was made applies.
        return log.bind(url=self._safe_url)

    # ---- waiting -----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _changed(self) -> None:
        await self._wake.wait()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._state != "open":
            raise ProducerClosed("the Producer is not open: use it inside 'async with'")

    def _lowest_unsettled(self) -> int:
        if self._unacked:
            return self._unacked[0].events[0].ordinal
        if self._buffer:
            return self._buffer[0].ordinal
        return self._next_ordinal

    def _finished(self) -> bool:
        return self._state != "open" and not self._outstanding

    # ---- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except* Exception as group:
            # What stopped the loop, without the Cancelled of tasks it took down with it
            # (those propagate on to the cancelled scope that owns them).
            self._fail(_primary(group))
        finally:
            self._stopped.set()
            self._notify()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            self._log.warning(
                "producer_failed",
                error=f"{type(error).__name__}: {error}",
                unacknowledged=self._outstanding,
            )
        self._notify()

    async def _connect_loop(self) -> None:
        failures = 0  # connection attempts in a row that brought no ack
        repeated: Counter[str] = Counter()  # protocol faults since the last ack
        stalled_since = trio.current_time()  # last ack, or when work appeared
        connections_at_stall = 0
        while True:
            if not self._outstanding:
                while not self._outstanding and self._state == "open":
                    await self._changed()
                if self._finished():
                    return
                stalled_since = trio.current_time()
                connections_at_stall = self.stats.connections
            acks_before = self.stats.acks
            fault: str | None = None
            try:
                async with open_websocket_url(
                    self.url,
                    self._ssl_context,
                    extra_headers=self._headers,
                    max_message_size=_MAX_SERVER_FRAME,
                    connect_timeout=self._connect_timeout,
                    disconnect_timeout=self._close_timeout,
                ) as ws:
                    reason, fault = await self._session(ws)
            except ConnectionRejected as rejected:
                reason = self._refused(rejected)
            except (HandshakeError, OSError, ConnectionClosed) as error:
                reason = _describe(error)
            if self._finished():
                return
            now = trio.current_time()
            if not self._outstanding:  # nothing left to send: reconnect when there is
                failures = 0
                continue
            if self.stats.acks > acks_before:
                failures = 1
                repeated.clear()
                stalled_since = now
                connections_at_stall = self.stats.connections
            else:
                failures += 1
            if fault in PROTOCOL_FAULTS:
                repeated[fault] += 1
                if fault == "frame_too_large":
                    self._frame_factor = max(self._frame_factor / 2, _MIN_FRAME_FACTOR)
                if repeated[fault] >= self._max_repeated_faults:
                    raise ProtocolError(
                        f"the server answered {fault!r} {repeated[fault]} times in a row with"
                        " no ack in between; this is a bug (of the producer or the server)"
                        " that retrying will not fix"
                    )
            if self._give_up_after is not None and now - stalled_since >= self._give_up_after:
                if self.stats.connections == connections_at_stall:
                    raise ProducerConnectionError(
                        f"cannot connect to {self._safe_url}: {reason}"
                        f" (gave up after {now - stalled_since:.1f} s)"
                    )
                raise ProducerConnectionError(
                    f"cannot deliver to {self._safe_url}: no ack for"
                    f" {now - stalled_since:.1f} s (last: {reason})"
                )
            delay = self._backoff(failures)
            if self._give_up_after is not None:
                delay = min(delay, max(0.0, stalled_since + self._give_up_after - now))
            level = self._log.warning if failures == 2 else self._log.info
            level(
                "producer_reconnecting",
                reason=reason,
                attempt=failures,
                delay=round(delay, 3),
                unacknowledged=self._outstanding,
            )
            if self._on_retry is not None:
                self._on_retry(reason, failures, delay)
            await trio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0 ** min(failures - 1, 40))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _refused(self, rejected: ConnectionRejected) -> str:
        status = rejected.status_code
        detail = ""
        try:
            body = json.loads(rejected.body or b"")
            detail = str(body["error"]["message"])[:300]
        except (ValueError, TypeError, KeyError):
            pass
        detail = f": {detail}" if detail else ""
        if status == 401:
            raise AuthenticationError(
                f"{self._safe_url} refused the producer token (HTTP 401){detail}"
            )
        if status in (408, 429) or status >= 500:
            return f"handshake refused with HTTP {status}{detail}"
        raise ProtocolError(f"{self._safe_url} refused the websocket with HTTP {status}{detail}")

    # ---- one connection --------------------------------------------------------------------------

    async def _session(self, ws: WebSocketConnection) -> tuple[str, str | None]:
        """Run one connection until it ends: ``(why, error code received or None)``."""
        try:
            with trio.fail_after(self._connect_timeout):
                first = self._decode(await ws.get_message())
        except trio.TooSlowError:
            return f"no hello within {self._connect_timeout} s", None
        except ConnectionClosed as closed:
            return f"closed before hello ({closed.reason})", None
        if first is None:
            return "the server's first frame is not a msgpack map", "bad_server_frame"
        if first.get("type") == "error":
            code, message = self._record_fault(first)
            return f"error {code}: {message}", code
        link = self._open_link(ws, first)
        self.stats.connections += 1
        self._link = link
        self._log.info(
            "producer_connected",
            max_batch=link.max_batch,
            window=link.window,
            max_frame_bytes=self.hello.get("max_frame_bytes") if self.hello else None,
            resending=len(self._unacked),
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, link)
                await self._receive_loop(link)
                nursery.cancel_scope.cancel()
        finally:
            self._link = None
            for batch in self._unacked:
                batch.seq = -1
            self._notify()
        if link.sent:
            self._log.info("producer_disconnected", reason=link.end, unacknowledged=link.sent)
        return link.end, link.fault

    def _open_link(self, ws: WebSocketConnection, hello: dict[Any, Any]) -> _Link:
        if hello.get("type") != "hello":
            raise ProtocolError(
                f"{self._safe_url} did not start with a hello frame (got {hello.get('type')!r})"
            )
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self._safe_url} speaks protocol {hello.get('protocol')!r};"
                f" this producer speaks {PROTOCOL_VERSION}"
            )
        limits = {}
        for key in ("max_frame_bytes", "max_batch", "window"):
            value = hello.get(key)
            if type(value) is not int or value < 1:
                raise ProtocolError(f"the server's hello has a bad {key!r}: {value!r}")
            limits[key] = value
        self.hello = dict(hello)
        budget = max(int(limits["max_frame_bytes"] * self._frame_factor), 1)
        link = _Link(ws, min(self._max_batch, limits["max_batch"]), budget, limits["window"])
        self._size_trigger = link.max_batch
        self._bytes_trigger = budget - _FRAME_OVERHEAD
        return link

    def _decode(self, message: str | bytes) -> dict[Any, Any] | None:
        if isinstance(message, str):
            return None
        try:
            frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
        except Exception:
            return None
        return frame if isinstance(frame, dict) else None

    def _record_fault(self, frame: dict[Any, Any]) -> tuple[str, str]:
        code = str(frame.get("code"))
        message = str(frame.get("message"))
        self.stats.faults[code] += 1
        level = self._log.info if code == "shutting_down" else self._log.warning
        level("producer_server_error", code=code, message=message[:500])
        return code, message

    async def _receive_loop(self, link: _Link) -> None:
        while True:
            message: str | bytes | None = None
            try:
                # Wake up now and then to notice a connection that acknowledges nothing.
                with trio.move_on_after(self._ack_timeout):
                    message = await link.ws.get_message()
            except ConnectionClosed as closed:
                link.end = f"connection closed ({closed.reason})"
                return
            if message is None:
                if link.sent and trio.current_time() - link.progress >= self._ack_timeout:
                    link.end = f"no ack for {self._ack_timeout} s"
                    return
                continue
            frame = self._decode(message)
            if frame is None:
                link.end = "the server sent a frame that is not a msgpack map"
                link.fault = "bad_server_frame"
                return
            kind = frame.get("type")
            if kind == "ack":
                problem = self._acknowledge(link, frame)
                if problem:
                    link.end = problem
                    link.fault = "bad_server_frame"
                    return
            elif kind == "error":
                code, message_text = self._record_fault(frame)
                link.end = f"error {code}: {message_text}"
                link.fault = code
                return
            else:  # a later protocol version's frame: ignore
                self._log.info("producer_unknown_frame", type=str(kind)[:40])

    def _acknowledge(self, link: _Link, frame: dict[Any, Any]) -> str | None:
        seq = frame.get("seq")
        if not link.sent or self._unacked[0].seq != seq:
            expected = self._unacked[0].seq if link.sent else None
            return f"ack for seq {seq!r}, expected {expected!r}"
        accepted = frame.get("accepted")
        duplicates = frame.get("duplicates")
        raw_rejected = frame.get("rejected")
        if (
            type(accepted) is not int
            or type(duplicates) is not int
            or not isinstance(raw_rejected, list)
        ):
            return f"malformed ack for seq {seq!r}"
        batch = self._unacked.pop(0)
        link.sent -= 1
        link.acks += 1
        link.progress = trio.current_time()
        rejected: list[Rejection] = []
        for item in raw_rejected:
            index = item.get("index") if isinstance(item, dict) else None
            if type(index) is not int or not 0 <= index < len(batch.events):
                self._log.error("producer_bad_rejection", seq=seq, rejection=repr(item)[:200])
                continue
            pending = batch.events[index]
            rejected.append(
                Rejection(
                    pending.ordinal,
                    pending.event,
                    str(item.get("code")),
                    str(item.get("message")),
                )
            )
        if accepted + duplicates + len(raw_rejected) != len(batch.events):
            self._log.error(
                "producer_ack_mismatch",
                seq=seq,
                events=len(batch.events),
                accepted=accepted,
                duplicates=duplicates,
                rejected=len(raw_rejected),
            )
        self.stats.acks += 1
        self.stats.accepted += accepted
        self.stats.duplicates += duplicates
        self._outstanding -= len(batch.events)
        self._settle(
            BatchResult(
                batch.events[0].ordinal, len(batch.events), accepted, duplicates, tuple(rejected)
            )
        )
        return None

    def _settle(self, result: BatchResult) -> None:
        """Count and report one result; callbacks' exceptions are fatal (raised to the caller)."""
        for rejection in result.rejected:
            self.stats.rejected[rejection.code] += 1
        self._notify()
        try:
            for rejection in result.rejected:
                if self._on_rejected is not None:
                    self._on_rejected(rejection)
                else:
                    self.rejections.append(rejection)
            if self._on_result is not None:
                self._on_result(result)
        except Exception as error:
            self._fail(error)
            raise

    async def _send_loop(self, link: _Link) -> None:
        while True:
            batch = await self._next_batch(link)
            if batch is None:  # closing, and everything is acknowledged
                with trio.move_on_after(self._close_timeout):
                    await link.ws.aclose()
                return
            batch.seq = link.next_seq
            link.next_seq += 1
            if batch.sends:
                self.stats.resent += 1
            batch.sends += 1
            if not link.sent:
                link.progress = trio.current_time()
            link.sent += 1
            self.stats.batches += 1
            header = _BATCH_PREFIX + _packb(batch.seq) + _EVENTS_KEY
            frame = b"".join(
                [header, _array_header(len(batch.events)), *(p.packed for p in batch.events)]
            )
            try:
                await link.ws.send_message(frame)
            except ConnectionClosed:
                return  # the receiving side sees the end and says why

    async def _next_batch(self, link: _Link) -> _Batch | None:
        """The next batch to send on ``link`` (re-sends first), when the window allows."""
        while True:
            if self._failure is not None:
                await trio.sleep_forever()  # the connection loop is ending
            if self._state != "open" and not self._buffer and not self._unacked:
                return None
            if link.sent < link.window:
                if link.sent < len(self._unacked):
                    batch = self._fit(link, link.sent)
                    if batch is not None:
                        return batch
                    continue
                if self._buffer:
                    oldest = self._buffer[0]
                    deadline = oldest.at + self._linger
                    if (
                        len(self._buffer) >= link.max_batch
                        or self._buffer_bytes + _FRAME_OVERHEAD >= link.budget
                        or oldest.ordinal < self._flush_target
                        or self._outstanding >= self._max_pending
                        or self._state != "open"
                        or trio.current_time() >= deadline
                    ):
                        batch = self._cut(link)
                        if batch is not None:
                            return batch
                        continue
                    with trio.move_on_at(deadline):
                        await self._changed()
                    continue
            await self._changed()

    def _cut(self, link: _Link) -> _Batch | None:
        """Take a batch off the queue (as much as fits), or None if what was taken was too
        large to send at all."""
        events: list[_Pending] = []
        size = 0
        while self._buffer and len(events) < link.max_batch:
            pending = self._buffer[0]
            length = len(pending.packed)
            if _FRAME_OVERHEAD + length > link.budget:
                self._buffer.popleft()
                self._buffer_bytes -= length
                self._reject_too_large(pending, link)
                continue
            if _FRAME_OVERHEAD + size + length > link.budget:
                break
            self._buffer.popleft()
            self._buffer_bytes -= length
            events.append(pending)
            size += length
        if not events:
            return None
        batch = _Batch(events, size)
        self._unacked.append(batch)
        return batch

    def _fit(self, link: _Link, index: int) -> _Batch | None:
        """The unacknowledged batch at ``index``, split first if this link's limits are
        smaller than the ones it was made for; None if nothing of it can be sent."""
        batch = self._unacked[index]
        if len(batch.events) <= link.max_batch and _FRAME_OVERHEAD + batch.size <= link.budget:
            return batch
        pieces: list[_Batch] = []
        current: list[_Pending] = []
        size = 0
        for pending in batch.events:
            length = len(pending.packed)
            if _FRAME_OVERHEAD + length > link.budget:
                self._reject_too_large(pending, link)
                continue
            if len(current) >= link.max_batch or _FRAME_OVERHEAD + size + length > link.budget:
                pieces.append(_Batch(current, size, sends=batch.sends))
                current, size = [], 0
            current.append(pending)
            size += length
        if current:
            pieces.append(_Batch(current, size, sends=batch.sends))
        self._unacked[index : index + 1] = pieces
        return pieces[0] if pieces else None

    def _reject_too_large(self, pending: _Pending, link: _Link) -> None:
        self._outstanding -= 1
        rejection = Rejection(
            pending.ordinal,
            pending.event,
            TOO_LARGE,
            f"the event encodes to {len(pending.packed)} bytes: a batch holding only it would"
            f" exceed the server's max_frame_bytes ({link.budget} bytes available); make its"
            " properties smaller",
        )
        self._settle(BatchResult(pending.ordinal, 1, 0, 0, (rejection,)))
