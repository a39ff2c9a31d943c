"""The producer endpoint: a trio-websocket server at ``/v1/ingest`` (protocol.md §2).

One :class:`IngestServer` runs as the last child of the root supervisor
(:meth:`IngestServer.child_spec`). Per connection:

``handshake``
    ``GET /v1/ingest`` with ``Authorization: Bearer <producer token>``; anything else is
    refused before the websocket opens (404 for another path, 401 for a missing or wrong
    token, 503 while shutting down) and nothing is read.
``hello``
    The first frame the server sends.
``reading``
    One task reads frames. A batch is decoded, checked (§2.2), validated event by event
    (:mod:`meterd.ingest.validate`), grouped by account and handed whole to
    :meth:`Accounts.submit` (one store-writer operation; see docs/accounts.md), without
    awaiting. The reader goes on with the next frame meanwhile, so up to ``window`` batches
    are in flight; with ``window`` batches unacknowledged, or while the daemon-wide
    in-flight budget (:class:`~meterd.accounts.budget.EventBudget`, counted in events) is
    spent, it stops reading (``get_message`` is not called, the library's reader blocks on
    its one-slot queue and TCP pushes back): backpressure, never an unbounded buffer.
    The same holds for the bytes of acks (``acks held`` below).
``acks held``
    An ack is prepared (by the ack task, once its batch's outcome is known and every
    earlier ack is sent) and held until the producer takes it:
    a producer that stops reading acks (or reads them slowly) makes the server hold them.
    A batch of rejected events makes an ack about as large as its frame, so ``window``
    of them would be ``window`` frames per connection. So each batch counts, from its read
    until its ack is sent, an upper bound of its ack's size (computed from the frame:
    :func:`ack_bound`), then the ack's real size once prepared, both per
    connection and daemon-wide (:class:`AckBytes`); while ``max_ack_bytes_per_connection``
    are held by the connection it is not read, nor while ``max_ack_bytes`` are held by all
    and it holds its share of them (the limit over the connections open) or more: those
    that take their acks are still read while others do not. A batch is admitted whole,
    so a connection holds at most its limit plus one batch's ack, and the daemon its limit
    plus, per connection, a share and a batch.
``connections per producer``
    At most ``max_connections_per_producer`` websockets per producer are open at once;
    the next one is accepted only to be told so: ``error`` ``too_many_connections`` in
    place of ``hello``, close 1008 (policy violation), nothing read.
``acks``
    One task sends acks strictly in ``seq`` order: it waits for the oldest batch in flight
    to have its outcome (a value: the writer's verdicts, or why it failed), builds its ack
    from it and sends it, then the next. A batch is acknowledged once the writer committed
    it (its accepted events are durable); the account actors apply them after.

The path of one batch, in one direction: :meth:`_Connection._read` →
:meth:`_Connection._batch` (decode, validate, :meth:`Accounts.submit` with the batch's
:class:`_Slot` as the receiver of its outcome; never awaits) → :meth:`_Slot.committed`
(the outcome, stored; the batch's budget given back) → :meth:`_Connection._send_acks`
(in ``seq`` order: awaits the slot, :meth:`_Connection._ack` builds the ack or the fault,
sends it).
``keepalive``
    A producer that sends nothing for ``keepalive_interval`` while the server waits for its
    next frame is pinged (a websocket ping, which every websocket library answers by
    itself); if neither its pong nor any part of a frame comes within ``keepalive_timeout``
    (a pong cannot overtake a large frame still arriving) it is gone (a crashed
    host, a half-open TCP connection) and the connection is closed (1011, "keepalive ping
    timeout"), so it holds no task, buffer or window. Likewise an ack the peer does not
    take within ``keepalive_interval + keepalive_timeout`` (it stopped reading) ends the
    connection. A producer held back by the server's own backpressure is never pinged:
    the server is the one not reading. Unacknowledged batches of a dropped connection
    are still committed; the producer re-sends them (duplicates, as idempotency intends).
``faults``
    A fault (§2.4) stops reading; batches read before it are finished and acknowledged
    first, then the ``error`` frame is sent and the connection closed with the fault's code.
    If a batch cannot be made durable (the store's transaction failed), it is never
    acknowledged: ``error`` ``unavailable`` and close 1011, so the producer re-sends on a
    new connection (idempotency makes that safe).

Ordering on one connection: batches reach the writer in the order they were sent and the
writer decides them in that order, so the *first sent* copy of an id always decides (a
later different copy is the ``id_conflict``), as a producer expects.

``frame_too_large``: trio-websocket enforces ``max_message_size`` (= ``max_frame_bytes``)
while it reassembles a message, before anything is decoded, and on its own would close
with 1009 without a word. :class:`_IngestWebSocket` overrides its message handler so that
the oversized message is dropped as it arrives and the handler is told instead (a marker in
the message queue, in order); the server then handles it like every other fault: acks for
earlier batches, ``error`` ``frame_too_large``, close 1009. This leans on trio-websocket
internals (``_handle_message_event``, ``_message_size``, ``_message_parts``,
``_max_message_size``, ``_send_channel``, ``_reader_task``, ``_get_request``), pinned at
0.12.2 and covered by ``tests/ingest/test_server.py``.

Shutdown (the supervisor cancels the task): stop accepting (the listening sockets close),
stop reading on every connection, finish and acknowledge what was read, then ``error``
``shutting_down`` and close 1001; all of it within the child's shutdown grace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol, runtime_checkable

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, TextMessage

import supervisors as sv
from meterd.accounts.budget import EventBudget
from meterd.config import Config, Producer
from meterd.ingest.observe import AckObserver
from meterd.ingest.protocol import (
    ACK_FLOOR_BYTES,
    ACK_OVERHEAD,
    REJECTION_OVERHEAD,
    Fault,
    ack_frame,
    hello_frame,
    text_bytes,
)
from meterd.ingest.typed import BatchReader
from meterd.ingest.validate import REJECTION_CODES, Columns, EventValidator, Rejection
from meterd.model import Event
from meterd.store import AppendResult, RejectedEvent, conflict_message, too_late_message

__all__ = [
    "INGEST_PATH",
    "AckBytes",
    "ColumnSubmitter",
    "Decided",
    "IngestServer",
    "IngestStats",
    "Submitter",
    "ack_bound",
    "columns_ack_bound",
    "wall_clock_ms",
]

log = structlog.get_logger("meterd.ingest")

INGEST_PATH: Final = "/v1/ingest"
HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for a client to send its HTTP upgrade request
CLOSE_TIMEOUT: Final = 5.0  # seconds to wait for the peer's half of the close handshake
RECEIVE_BUFFER: Final = 65_536  # bytes per read from the socket
SHUTDOWN_GRACE: Final = 5.0  # seconds to finish in-flight batches when stopped
_CONFLICT_TEXT: Final = len(conflict_message("", "")) - 4  # besides the quoted id and account
_CODE_TEXT: Final = max(len(code) for code in REJECTION_CODES)


def wall_clock_ms() -> int:
    """Now, in Unix milliseconds (UTC)."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class IngestStats:
    """Counters since start (for logs, tests and the metrics endpoint)."""

    connections: int = 0  # websockets opened (authenticated)
    refused: int = 0  # handshakes refused (401, 404, 503)
    batches: int = 0  # batches read
    acks: int = 0  # acks sent
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # error frames sent, by code
    ack_waits: int = 0  # times a connection stopped reading: its own acks held too many bytes
    failed: int = 0  # connections ended by an unexpected error (a bug; logged)
    # per producer, rejected by code, ack latency: one call per ack sent (meterd.ingest.observe)
    observed: AckObserver = field(default_factory=AckObserver)


@dataclass(frozen=True, slots=True)
class Decided:
    """A batch's outcome already summed up by the submitter (the gateway joins the verdicts
    of its slices into one): counts, and the events it did not count (``id_conflict``,
    ``time_out_of_range``) with their positions in the producer's batch."""

    accepted: int
    duplicates: int
    rejected: list[Rejection]


class Submitter(Protocol):
    """What ingest hands batches to: :class:`~meterd.accounts.service.Accounts` in one
    process, the gateway's :class:`~meterd.partitions.GatewaySubmitter` with owner
    processes (docs/partitions.md)."""

    @property
    def budget(self) -> EventBudget:
        """The daemon-wide in-flight budget (see the module doc)."""
        ...

    def submit(
        self,
        groups: Sequence[tuple[str, list[Event]]],
        on_done: Callable[[list[AppendResult] | Decided | BaseException], None],
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
        positions: Sequence[list[int]] | None = None,
    ) -> None:
        """Make a batch durable without blocking; ``on_done`` once with its outcome: one
        :class:`~meterd.store.AppendResult` per group, a :class:`Decided`, or the exception
        that kept it from being durable (answered ``unavailable``, never acked).
        ``positions``: each group's events' positions in the producer's batch."""
        ...


@runtime_checkable
class ColumnSubmitter(Protocol):
    """A :class:`Submitter` that also takes a batch whose every event was accepted as
    columns (:class:`~meterd.ingest.validate.Columns`, quantities as sent on the wire),
    without an :class:`~meterd.model.Event` per event: the gateway's
    :class:`~meterd.partitions.GatewaySubmitter`, which only re-encodes the fields."""

    def submit_columns(
        self,
        columns: Columns,
        on_done: Callable[[list[AppendResult] | Decided | BaseException], None],
        *,
        producer: str,
        seq: int,
    ) -> None:
        """:meth:`Submitter.submit` of ``columns`` (event *i* at position *i* in the
        producer's batch, none rejected); ``on_done`` gets a :class:`Decided`."""
        ...


class _FrameTooLarge(bytes):
    """The type of :data:`_TOO_LARGE`."""


_TOO_LARGE: Final = _FrameTooLarge(b"")
"""Put in the message queue, in order, in place of a message over ``max_frame_bytes``."""


class _IngestWebSocket(WebSocketConnection):
    """trio-websocket's connection, telling the handler about an oversized message instead
    of closing at once (see the module doc)."""

    _over_limit = False
    heard_at = -math.inf  # Trio time the peer last sent message data (a part of one counts)

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        self.heard_at = trio.current_time()
        if self._over_limit:
            return  # the connection is ending: the rest of what the peer sends is dropped
        if self._message_size + len(event.data) > self._max_message_size:
            self._over_limit = True
            self._message_size = 0
            self._message_parts = []
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._send_channel.send(_TOO_LARGE)  # unless the handler is gone
            return
        await super()._handle_message_event(event)


class AckBytes:
    """The bytes of acks the ingest server holds, daemon-wide (``acks held`` in the module
    doc): while ``limit`` are held, a connection holding its share of them or more is not
    read (:meth:`holds_back`); the others still are, so producers that take their acks are
    not held back by those that do not."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the ack byte budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0  # times a reader found the budget spent and waited
        self.waiting: set[trio.lowlevel.ParkingLot] = set()  # readers to wake with room

    def add(self, size: int) -> None:
        """Count ``size`` more bytes held (fewer when negative)."""
        used = self.used = self.used + size
        if used > self.peak:
            self.peak = used
        if size < 0 and self.waiting and used < self.limit:
            for lot in self.waiting:
                lot.unpark_all()
            self.waiting.clear()

    def holds_back(self, held: int, connections: int) -> bool:
        """Whether a connection holding ``held`` bytes, one of ``connections``, must wait:
        the budget is spent and it holds at least an equal share of it."""
        return self.used >= self.limit and held * max(connections, 1) >= self.limit


class IngestServer:
    """The producer websocket endpoint of one daemon (see the module doc)."""

    def __init__(
        self, config: Config, accounts: Submitter, *, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.clock = clock
        self.stats = IngestStats()
        self.ack_bytes = AckBytes(config.ingest.max_ack_bytes)
        self.addresses: list[tuple[str, int]] = []  # bound by the running incarnation
        self._connections: set[_Connection] = set()
        self._handshakes: set[trio.CancelScope] = set()
        self._accepting = trio.CancelScope()
        self._stopping = False
        self._ids = itertools.count(1)
        self._by_producer: Counter[str] = Counter()  # open connections per producer

    def child_spec(self, id: str = "ingest") -> sv.ChildSpec:
        return sv.task_spec(id, self.run, shutdown=SHUTDOWN_GRACE)

    @property
    def port(self) -> int:
        """The port listened on (the first listener's; all share it unless port 0 was asked
        for on a name with several addresses)."""
        if not self.addresses:
            raise RuntimeError("the ingest server is not listening")
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        if not self.addresses:
            return ""
        host, port = self.addresses[0]
        host = f"[{host}]" if ":" in host else host
        scheme = "ws" if self.config.ingest.tls is None else "wss"
        return f"{scheme}://{host}:{port}{INGEST_PATH}"

    @property
    def connections_by_producer(self) -> dict[str, int]:
        """Open websockets per producer now (producers with none are left out)."""
        return {name: count for name, count in self._by_producer.items() if count > 0}

    @property
    def stopping(self) -> bool:
        """True once the server was told to stop (it drains its connections)."""
        return self._stopping

    def _stop_requested(self) -> bool:
        return self._stopping

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled, then drain (within the supervisor's shutdown grace)."""
        shield = sv.shutdown_shield()
        self._accepting = trio.CancelScope()
        self._stopping = False
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve, shield)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._drain()

    def _drain(self) -> None:
        self._stopping = True
        self._accepting.cancel()
        for scope in self._handshakes:
            scope.cancel()
        for connection in list(self._connections):
            connection.drain()

    async def _serve(self, shield: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with shield:  # connections finish their batches when the child is stopped
            listeners = await self._listen()
            try:
                async with trio.open_nursery() as connections:
                    with self._accepting:
                        async with trio.open_nursery() as accept:
                            await accept.start(
                                partial(
                                    trio.serve_listeners,
                                    self._handle_stream,
                                    listeners,
                                    handler_nursery=connections,
                                )
                            )
                            task_status.started()
            finally:
                self.addresses = []

    async def _listen(self) -> list[trio.abc.Listener[trio.abc.Stream]]:
        ingest = self.config.ingest
        host, port = ingest.listen.host, ingest.listen.port
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        try:
            if ingest.tls is None:
                listeners.extend(await trio.open_tcp_listeners(port, host=host))
            else:
                listeners.extend(
                    await trio.open_ssl_over_tcp_listeners(
                        port, ingest.tls.server_context(), host=host, https_compatible=True
                    )
                )
        except OSError as error:
            raise OSError(
                error.errno, f"ingest.listen {ingest.listen}: cannot listen: {error.strerror}"
            ) from error
        addresses = []
        for listener in listeners:
            socket_listener = (
                listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
            )
            assert isinstance(socket_listener, trio.SocketListener)
            name = socket_listener.socket.getsockname()
            addresses.append((str(name[0]), int(name[1])))
        self.addresses = addresses
        if ingest.tls is None:
            exposed = [f"{h}:{p}" for h, p in addresses if not _is_loopback(h)]
            if exposed:
                log.warning(
                    "ingest_plaintext",
                    addresses=exposed,
                    hint="not loopback and TLS is off: set ingest.tls_cert and ingest.tls_key",
                )
        return listeners

    # ---- one connection ----------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        remote = _peer(stream)
        try:
            async with trio.open_nursery() as nursery:
                ws = _IngestWebSocket(
                    stream,
                    WSConnection(ConnectionType.SERVER),
                    max_message_size=self.config.ingest.max_frame_bytes,
                    receive_buffer_size=RECEIVE_BUFFER,
                )
                handshake = trio.move_on_after(HANDSHAKE_TIMEOUT)

                async def read() -> None:
                    await ws._reader_task()
                    handshake.cancel()  # ended before a request came (a failed TLS handshake)

                nursery.start_soon(read)
                request: WebSocketRequest | None = None
                with handshake:
                    self._handshakes.add(handshake)
                    if self._stopping:
                        handshake.cancel()
                    try:
                        request = await ws._get_request()
                    finally:
                        self._handshakes.discard(handshake)
                if request is None:
                    nursery.cancel_scope.cancel()
                    await trio.aclose_forcefully(stream)
                    return
                try:
                    await self._handle_request(request, remote)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.aclose()
                    # After a refusal the library leaves the socket open: close it here, and
                    # stop its reader task, whatever state the connection is in.
                    nursery.cancel_scope.cancel()
                    await trio.aclose_forcefully(stream)
        except Exception:
            # One connection's failure must never end the server (nor the others).
            self.stats.failed += 1
            log.exception("ingest_connection_failed", remote=remote)

    async def _handle_request(self, request: WebSocketRequest, remote: str) -> None:
        path = request.path.partition("?")[0]
        if path != INGEST_PATH:
            self.stats.refused += 1
            log.info("ingest_refused", remote=remote, status=404, path=path[:100])
            await _reject(
                request, 404, "not_found", f"no endpoint here; producers use {INGEST_PATH}"
            )
            return
        producer, problem = self._authenticate(request)
        if producer is None:
            self.stats.refused += 1
            log.warning("ingest_refused", remote=remote, status=401, reason=problem)
            await _reject(
                request,
                401,
                "unauthorized",
                f"{problem}: send 'Authorization: Bearer <producer token>'",
                [(b"WWW-Authenticate", b'Bearer realm="meterd ingest"')],
            )
            return
        if self.stopping:
            self.stats.refused += 1
            await _reject(request, 503, "shutting_down", "the server is shutting down; retry")
            return
        limit = self.config.ingest.max_connections_per_producer
        if self._by_producer[producer.name] >= limit:
            await self._refuse_over_limit(request, producer, remote, limit)
            return
        self._by_producer[producer.name] += 1
        try:
            ws = await request.accept()
            self.stats.connections += 1
            bound = log.bind(producer=producer.name, remote=remote, connection=next(self._ids))
            connection = _Connection(self, ws, producer, bound)
            self._connections.add(connection)
            if self._stop_requested():  # stopped while the handshake finished
                connection.drain()
            bound.info("ingest_connected")
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
                bound.info("ingest_disconnected", batches=connection.batches, acks=connection.acks)
        finally:
            self._by_producer[producer.name] -= 1
            if not self._by_producer[producer.name]:
                del self._by_producer[producer.name]

    async def _refuse_over_limit(
        self, request: WebSocketRequest, producer: Producer, remote: str, limit: int
    ) -> None:
        """The producer has ``limit`` connections open: accept this one only to say so (an
        ``error`` frame in place of ``hello``, then close); nothing is read."""
        self.stats.refused += 1
        log.warning(
            "ingest_refused",
            remote=remote,
            producer=producer.name,
            reason="too many connections",
            limit=limit,
        )
        fault = Fault(
            "too_many_connections",
            f"producer {producer.name!r} already has {limit} connections open, the server's"
            " limit (ingest.max_connections_per_producer): send on those (each carries"
            " 'window' batches in flight) or close one before opening another",
        )
        ws = await request.accept()
        self.stats.faults[fault.code] += 1
        try:
            await ws.send_message(fault.frame())
        except ConnectionClosed:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            await ws.aclose(fault.close_code, fault.code)

    def _authenticate(self, request: WebSocketRequest) -> tuple[Producer | None, str]:
        values = [value for name, value in request.headers if name.lower() == b"authorization"]
        if not values:
            return None, "no Authorization header"
        if len(values) > 1:
            return None, "more than one Authorization header"
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "the Authorization header is not 'Bearer <token>'"
        producer = self.config.producer_for_token(token.strip())
        if producer is None:
            return None, "the token is not any producer's"
        return producer, ""


async def _reject(
    request: WebSocketRequest,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await request.reject(
        status,
        extra_headers=[(b"Content-Type", b"application/json"), *(headers or [])],
        body=body,
    )


# ---- a connection's batches --------------------------------------------------------------------


Share = tuple[str, tuple[list[int], list[Event]]]
"""One account's part of a batch: ``(account, (positions in the batch, events))``."""


class _Slot:
    """A batch (or the end of the connection) in the order acks must be sent: what the ack
    needs of the batch, then its outcome (:meth:`committed`), then its ack or fault."""

    __slots__ = (
        "ack", "budget", "counts", "done", "fault", "held", "outcome", "read_at", "rejected",
        "rejections", "seq", "shares", "size", "valid",
    )  # fmt: skip

    def __init__(
        self,
        seq: int = -1,
        fault: Fault | None = None,
        *,
        size: int = 0,
        rejected: list[Rejection] | None = None,
        shares: list[Share] | None = None,
        budget: EventBudget | None = None,
        valid: int = 0,
    ) -> None:
        self.seq = seq
        self.read_at = trio.current_time()  # for the ack latency (meterd.ingest.observe)
        self.rejections: list[Rejection] = []
        self.done = trio.Event()
        self.size = size  # events in the batch
        self.rejected = [] if rejected is None else rejected  # by validation
        self.shares = [] if shares is None else shares  # submitted, in order
        self.budget = budget
        self.valid = valid  # events it holds of the daemon-wide budget until committed
        self.outcome: list[AppendResult] | Decided | BaseException = []
        self.ack: bytes | None = None
        self.held = 0  # bytes counted for its ack (``acks held``); -1 once released
        self.counts = (0, 0, 0)
        self.fault = fault
        if fault is not None:
            self.done.set()

    def committed(self, outcome: list[AppendResult] | Decided | BaseException) -> None:
        """The batch's outcome (its accepted events are durable and delivered, or it failed):
        kept for the ack task; the events' budget is given back now."""
        if self.budget is not None:
            self.budget.give(self.valid)
        self.outcome = outcome
        self.done.set()


class _PeerUnresponsive(Exception):
    """The peer did not answer a keepalive ping in time."""


class _Connection:
    def __init__(
        self, server: IngestServer, ws: WebSocketConnection, producer: Producer, log: Any
    ) -> None:
        self.server = server
        self.ws = ws
        self.producer = producer
        self.log = log
        config = server.config
        self.max_batch = config.ingest.max_batch
        self.validator = EventValidator(config.meters_by_name, producer, config.late_window.ms)
        self.reader = BatchReader(self.validator, self.max_batch)
        # The gateway takes a batch of valid events as columns, no Event built per event.
        accounts = server.accounts
        self.submit_columns = (
            accounts.submit_columns if isinstance(accounts, ColumnSubmitter) else None
        )
        self.window = trio.Semaphore(config.ingest.window)
        self.slots_in, self.slots_out = trio.open_memory_channel[_Slot](math.inf)
        self.last_seq = -1
        self.budget = server.accounts.budget
        self.read_scope = trio.CancelScope()
        self.batches = 0
        self.acks = 0
        self.keepalive_interval = config.ingest.keepalive_interval.seconds
        self.keepalive_timeout = config.ingest.keepalive_timeout.seconds
        self.ack_bytes = server.ack_bytes
        self.ack_limit = config.ingest.max_ack_bytes_per_connection
        self.ack_held = 0  # bytes of this connection's acks held (``acks held``)
        self.ack_cap = max(config.ingest.max_frame_bytes, ACK_FLOOR_BYTES)
        self._ack_room = trio.lowlevel.ParkingLot()

    def drain(self) -> None:
        """Stop reading; what was read is still finished and acknowledged."""
        self.read_scope.cancel()

    async def run(self) -> None:
        ingest = self.server.config.ingest
        try:
            await self.ws.send_message(
                hello_frame(ingest.max_frame_bytes, ingest.max_batch, ingest.window)
            )
        except ConnectionClosed:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_acks, nursery.cancel_scope)
                await self._read(nursery)
        finally:
            self.ack_bytes.waiting.discard(self._ack_room)
            # Slots never sent: their acks will not be (a batch still in flight only gives
            # its budget back when committed, see _Slot.committed).
            while True:
                try:
                    self._release(self.slots_out.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    # ---- reading -----------------------------------------------------------------------------

    async def _read(self, nursery: trio.Nursery) -> None:
        end: Fault | None = None
        with self.read_scope:
            try:
                budget = self.budget
                while True:
                    await self.window.acquire()  # window batches unacknowledged: stop reading
                    await budget.wait_for_room()  # the daemon is full: stop reading too
                    await self._wait_for_ack_room()  # acks held: the peer must take some
                    self._batch(await self._next_frame())
            except Fault as fault:
                end = fault
            except _PeerUnresponsive:
                self.log.warning(
                    "ingest_peer_unresponsive",
                    waited=self.keepalive_timeout,
                    unacknowledged=self.batches - self.acks,
                )
                await self._abandon()
                nursery.cancel_scope.cancel()
                return
            except ConnectionClosed as closed:
                reason = closed.reason
                self.log.info(
                    "ingest_peer_closed",
                    code=int(reason.code) if reason else None,
                    unacknowledged=self.batches - self.acks,
                )
                nursery.cancel_scope.cancel()  # nobody to acknowledge to
                return
        if end is None:
            end = Fault(
                "shutting_down",
                "the server is shutting down; every batch read was acknowledged above; send"
                " the rest on a new connection",
            )
        self.slots_in.send_nowait(_Slot(fault=end))
        self.slots_in.close()

    async def _wait_for_ack_room(self) -> None:
        """Return once this connection holds fewer ack bytes than its limit, and either the
        daemon fewer than its own or this connection less than its share of it (``acks
        held`` in the module doc)."""
        counted = False
        while True:
            if self.ack_held >= self.ack_limit:
                if not counted:
                    self.server.stats.ack_waits += 1
            elif self.ack_bytes.holds_back(self.ack_held, self.server.connection_count):
                if not counted:
                    self.ack_bytes.waits += 1
                self.ack_bytes.waiting.add(self._ack_room)
            else:
                return
            counted = True
            await self._ack_room.park()  # its own acks sent, or room daemon-wide

    def _hold(self, slot: _Slot, size: int) -> None:
        """Count ``size`` bytes for ``slot``'s ack from now on (none once it is released)."""
        if slot.held < 0:
            return
        change = size - slot.held
        slot.held = size
        self.ack_held += change
        self.ack_bytes.add(change)
        if change < 0 and self._ack_room:
            self._ack_room.unpark_all()  # the reader checks again

    def _release(self, slot: _Slot) -> None:
        """``slot``'s ack was sent, or never will be: its bytes are no longer held."""
        self._hold(slot, 0)
        slot.held = -1

    async def _next_frame(self) -> str | bytes:
        """The peer's next frame; :class:`_PeerUnresponsive` if it stops answering pings
        (see ``keepalive`` in the module doc). The ping runs beside the wait for the frame,
        so a frame arriving meanwhile is taken at once."""
        with trio.move_on_after(self.keepalive_interval):
            return await self.ws.get_message()
        outcome: str | bytes | ConnectionClosed | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe, nursery.cancel_scope)
            try:
                outcome = await self.ws.get_message()
            except ConnectionClosed as closed:  # raised below: not inside a group
                outcome = closed
            nursery.cancel_scope.cancel()
        if outcome is None:
            raise _PeerUnresponsive
        if isinstance(outcome, ConnectionClosed):
            raise outcome
        return outcome

    async def _probe(self, waiting: trio.CancelScope) -> None:
        """Ping the silent peer every ``keepalive_interval``; cancel ``waiting`` if neither
        a pong nor any part of a message comes within ``keepalive_timeout``. (A pong cannot
        overtake a frame the peer is sending: a large frame on a slow link arrives first,
        and its bytes arriving are the sign of life.)"""
        ws = self.ws
        assert isinstance(ws, _IngestWebSocket)
        while True:
            sent = trio.current_time()
            with trio.move_on_after(self.keepalive_timeout) as pinging:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return  # the frame wait sees it too
            if pinging.cancelled_caught and ws.heard_at < sent:
                waiting.cancel()
                return
            await trio.sleep(self.keepalive_interval)

    async def _abandon(self) -> None:
        """Close a connection whose peer stopped answering: a close frame (1011), and the
        socket after at most ``keepalive_timeout`` (it will not answer the close either)."""
        with trio.move_on_after(min(CLOSE_TIMEOUT, self.keepalive_timeout)):
            await self.ws.aclose(1011, "keepalive ping timeout")

    def _batch(self, message: str | bytes) -> None:
        """Check one frame and submit its batch; raises :class:`Fault`. Never awaits, so a
        cancelled reader never leaves a frame half taken, and batches reach the store
        writer in the order they were sent (which makes the first sent copy of an id the
        one that counts)."""
        if message is _TOO_LARGE:
            raise Fault(
                "frame_too_large",
                f"a frame was larger than max_frame_bytes"
                f" ({self.server.config.ingest.max_frame_bytes} bytes, in hello);"
                " send smaller batches",
            )
        batch = self.reader.read(message, self.last_seq)  # typed in C when it can be
        seq = self.last_seq = batch.seq
        self.batches += 1
        self.server.stats.batches += 1
        now = self.server.clock()
        if self.submit_columns is not None:
            columns = batch.columns(now)
            if columns is not None:  # every event valid: no Event objects, no groups
                size = batch.size
                slot = _Slot(seq, size=size, budget=self.budget, valid=size)
                self.slots_in.send_nowait(slot)
                self._hold(slot, columns_ack_bound(len(message), size, columns, self.ack_cap))
                self.budget.take(size)
                self.submit_columns(columns, slot.committed, producer=self.producer.name, seq=seq)
                return
        groups, rejected = batch.validate(now)
        audited: list[RejectedEvent] = []
        for rejection in rejected:
            audit = self._audited(rejection, batch.raw(rejection.index), now)
            if audit is not None:
                audited.append(audit)
        size = batch.size
        if not groups and not audited:
            slot = _Slot(seq, size=size, rejected=rejected)
            self.slots_in.send_nowait(slot)
            self._hold(slot, ack_bound(len(message), size, rejected, groups, self.ack_cap))
            slot.committed([])  # nothing to write: its outcome is known
            return
        shares = list(groups.items())
        valid = size - len(rejected)
        slot = _Slot(
            seq, size=size, rejected=rejected, shares=shares, budget=self.budget, valid=valid
        )
        self.slots_in.send_nowait(slot)
        self._hold(slot, ack_bound(len(message), size, rejected, groups, self.ack_cap))
        self.budget.take(valid)
        self.server.accounts.submit(
            [(account, events) for account, (_, events) in shares],
            slot.committed,
            producer=self.producer.name,
            seq=seq,
            rejected=audited,
            positions=[positions for _, (positions, _) in shares],
        )

    def _audited(self, rejection: Rejection, raw: object, now: int) -> RejectedEvent | None:
        """The audit record of a rejected event, if it names a valid account (rare: only
        rejected events pay for it)."""
        found = self.validator.attribution(raw, now)
        if found is None:
            return None
        account, meter, time, properties = found
        return RejectedEvent(
            account,
            rejection.id,
            rejection.code,
            rejection.message,
            meter,
            time,
            properties,
            rejection.index,
        )

    # ---- one batch -----------------------------------------------------------------------------

    def _ack(self, slot: _Slot) -> None:
        """The batch's outcome is known: build its ack (or its fault) from it."""
        try:
            self._prepare_ack(slot, slot.size, slot.rejected, slot.shares, slot.outcome)
        except Exception as error:  # a bug: the batch must still end, never hang its connection
            self.log.exception("ingest_ack_failed", seq=slot.seq)
            slot.ack = None
            slot.fault = Fault(
                "unavailable",
                f"batch seq {slot.seq}: the server failed preparing its ack"
                f" ({_error_text(error)}); re-send it on a new connection",
            )
        self._hold(slot, 0 if slot.ack is None else len(slot.ack))

    def _prepare_ack(
        self,
        slot: _Slot,
        size: int,
        rejected: list[Rejection],
        shares: list[Share],
        outcome: list[AppendResult] | Decided | BaseException,
    ) -> None:
        if isinstance(outcome, BaseException):
            self.log.warning("ingest_batch_failed", seq=slot.seq, error=_error_text(outcome))
            slot.fault = Fault(
                "unavailable",
                f"batch seq {slot.seq} could not be made durable ({_error_text(outcome)}); it"
                " was not acknowledged: re-send it and every later unacknowledged batch on a"
                " new connection",
            )
            return
        accepted = duplicates = 0
        if isinstance(outcome, Decided):  # the gateway's join of its slices' verdicts
            accepted, duplicates = outcome.accepted, outcome.duplicates
            rejected.extend(outcome.rejected)
            outcome = []
            shares = []
        for (account, (positions, events)), verdict in zip(shares, outcome, strict=True):
            accepted += len(verdict.accepted)
            duplicates += len(verdict.duplicates)
            for position in verdict.conflicts:
                event = events[position]
                rejected.append(
                    Rejection(
                        positions[position],
                        event.id,
                        "id_conflict",
                        conflict_message(account, event.id),
                    )
                )
            for position in verdict.too_late:  # older than the store's dedupe horizon
                event = events[position]
                assert verdict.horizon is not None
                rejected.append(
                    Rejection(
                        positions[position],
                        event.id,
                        "time_out_of_range",
                        too_late_message(event.time, verdict.horizon),
                    )
                )
        if accepted + duplicates + len(rejected) != size:  # the accounts layer lost an event
            self.log.error(
                "ingest_verdict_mismatch",
                seq=slot.seq,
                events=size,
                accepted=accepted,
                duplicates=duplicates,
                rejected=len(rejected),
            )
            slot.fault = Fault(
                "unavailable",
                f"batch seq {slot.seq}: the server could not account for every event; it was not"
                " acknowledged: re-send it on a new connection",
            )
            return
        rejected.sort(key=lambda rejection: rejection.index)
        slot.ack = ack_frame(
            slot.seq,
            accepted,
            duplicates,
            [rejection.to_wire() for rejection in rejected],
            max(self.server.config.ingest.max_frame_bytes, ACK_FLOOR_BYTES),
        )
        slot.counts = (accepted, duplicates, len(rejected))
        slot.rejections = rejected

    # ---- acks, in seq order --------------------------------------------------------------------

    async def _send_acks(self, cancel_scope: trio.CancelScope) -> None:
        stats = self.server.stats
        try:
            async for slot in self.slots_out:
                try:
                    await slot.done.wait()
                    if slot.fault is None:
                        self._ack(slot)
                    if slot.ack is not None:
                        with trio.move_on_after(
                            self.keepalive_interval + self.keepalive_timeout
                        ) as sending:
                            await self.ws.send_message(slot.ack)
                        if sending.cancelled_caught:  # it does not read: drop it (module doc)
                            self.log.warning(
                                "ingest_peer_not_reading",
                                seq=slot.seq,
                                unacknowledged=self.batches - self.acks,
                            )
                            self.read_scope.cancel()
                            return
                        self.acks += 1
                        self.window.release()
                        accepted, duplicates, rejected = slot.counts
                        stats.acks += 1
                        stats.accepted += accepted
                        stats.duplicates += duplicates
                        stats.rejected += rejected
                        stats.observed.acked(
                            self.producer.name,
                            accepted,
                            duplicates,
                            slot.rejections,
                            trio.current_time() - slot.read_at,
                        )
                        continue
                    assert slot.fault is not None
                    self.read_scope.cancel()
                    await self._close(slot.fault)
                    return
                finally:
                    self._release(slot)  # sent, or never will be
        except ConnectionClosed:
            self.log.info("ingest_peer_gone", unacknowledged=self.batches - self.acks)
        finally:
            cancel_scope.cancel()

    async def _close(self, fault: Fault) -> None:
        self.server.stats.faults[fault.code] += 1
        level = self.log.info if fault.code == "shutting_down" else self.log.warning
        level("ingest_fault", code=fault.code, message=fault.message, close=fault.close_code)
        try:
            await self.ws.send_message(fault.frame())
        except ConnectionClosed:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.aclose(fault.close_code, fault.code)


def _error_text(error: BaseException | None) -> str:
    """``error`` for a producer, at most ~200 characters of its text: a long one keeps its
    start and its end, where a wrapped cause ("database or disk is full") says why."""
    if error is None:
        return "unknown error"
    text = str(error)
    if len(text) > 200:
        text = f"{text[:80]} ... {text[-120:]}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def ack_bound(
    frame_bytes: int,
    size: int,
    rejected: list[Rejection],
    groups: dict[str, tuple[list[int], list[Event]]],
    ack_cap: int,
) -> int:
    """At least the bytes of the ack of a batch of ``size`` events read from a frame of
    ``frame_bytes``, ``rejected`` by validation and the rest in ``groups``, whatever the
    writer decides (every valid event could come back an ``id_conflict``).

    The ack holds each rejection's entry (:data:`REJECTION_OVERHEAD` plus its id, code and
    message); an ``id_conflict``'s message quotes the id and the account (``repr``). And
    :func:`ack_frame` cuts the messages of an ack over ``ack_cap``, so an ack is never
    larger than ``ack_cap`` or than its entries without messages, whose ids the frame held.
    Costs a few operations per valid event (well under 1 % of its way through ingest).
    """
    bound = ACK_OVERHEAD
    for rejection in rejected:
        bound += (
            REJECTION_OVERHEAD
            + text_bytes(rejection.id)
            + len(rejection.code)
            + text_bytes(rejection.message)
        )
    entry = REJECTION_OVERHEAD + len("id_conflict") + _CONFLICT_TEXT + 2  # + repr's quotes
    for account, (_, events) in groups.items():
        bound += len(events) * (entry + _quoted_bytes(account))
        for event in events:  # the id, and quoted in the message: as _quoted_bytes, inline
            length = len(event.id)
            bound += 5 * length if event.id.isascii() else 14 * length
    without_messages = ACK_OVERHEAD + size * (REJECTION_OVERHEAD + _CODE_TEXT) + frame_bytes
    return min(bound, max(ack_cap, without_messages))


def columns_ack_bound(frame_bytes: int, size: int, columns: Columns, ack_cap: int) -> int:
    """:func:`ack_bound` of a batch of ``size`` events every one valid, given as
    ``columns``: the same figure, its sums made over the columns in C."""
    entry = REJECTION_OVERHEAD + len("id_conflict") + _CONFLICT_TEXT + 2  # + repr's quotes
    accounts, ids = columns.accounts, columns.ids
    # Every account is ASCII (validated): _quoted_bytes is 4 per character, 2 quotes.
    bound = ACK_OVERHEAD + size * (entry + 2) + 4 * sum(map(len, accounts))
    if all(map(str.isascii, ids)):
        bound += 5 * sum(map(len, ids))
    else:
        bound += sum(5 * len(id) if id.isascii() else 14 * len(id) for id in ids)
    without_messages = ACK_OVERHEAD + size * (REJECTION_OVERHEAD + _CODE_TEXT) + frame_bytes
    return min(bound, max(ack_cap, without_messages))


def _quoted_bytes(text: str) -> int:
    """At least the UTF-8 bytes of ``repr(text)``: 2 quotes, and each character escaped at
    worst (``\\x00``: 4 for ASCII; ``\\U0010ffff``: 10 else). No scan of the text:
    ``isascii`` is a flag."""
    size = len(text)
    return (4 * size if text.isascii() else 10 * size) + 2


def _peer(stream: trio.abc.Stream) -> str:
    inner: Any = stream
    if isinstance(stream, trio.SSLStream):
        inner = stream.transport_stream
    try:
        host, port, *_ = inner.socket.getpeername()
    except (AttributeError, OSError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False
