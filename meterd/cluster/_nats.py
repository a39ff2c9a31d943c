"""A NATS connection driven from Trio over the bridge: streams, publishes, log reads, core subs.

Every method is a Trio coroutine; the nats-py objects live in the bridge's asyncio loop and are
only touched by coroutines running there.

Rules (docs/cluster.md, "The bridge"):

* **Reconnects**: the client reconnects forever (``reconnect_time_wait`` between rounds over the
  known servers). While it is disconnected a call waits, up to its own ``timeout``, and then fails
  with :class:`ClusterUnavailable` (never hangs, never fails silently); it is retryable. A publish
  that failed this way may still have been stored: re-send it with the same ``msg_id``.
* **Backpressure**: at most ``max_in_flight_publishes`` publishes wait for their ack at once;
  further publishers wait in Trio, before anything is handed to asyncio. A core subscription
  buffers at most ``capacity`` messages for its Trio reader and drops (and counts) the newest
  beyond that; JetStream log reads are pulled by the reader, a batch at a time, so nothing is ever
  dropped there.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext, api

from meterd.cluster._bridge import AsyncioBridge, BridgeClosed, Inbox, InboxClosed

T = TypeVar("T")

log = structlog.get_logger("meterd.cluster")

MSG_ID = "Nats-Msg-Id"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MS = datetime.timedelta(milliseconds=1)


class ClusterUnavailable(Exception):
    """NATS did not answer in time or is not reachable; the operation may be retried.

    A publish that raised this may or may not be stored: re-send it with the same message id
    (the stream's duplicate window absorbs the copy).
    """


class StreamMismatch(Exception):
    """A stream or bucket exists with a configuration other than the one asked for."""


#: NATS's transient failures: no answer in time, not connected, no leader, loop closing.
UNAVAILABLE: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    BridgeClosed,
)
_UNSUBSCRIBE_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE, nats.errors.BadSubscriptionError)
_CONSUMER_GONE: tuple[type[Exception], ...] = (*UNAVAILABLE, nats.js.errors.NotFoundError)
#: Immediate answers meaning "the stream has no leader now" (an election is under way).
_NO_LEADER: tuple[type[Exception], ...] = (
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
#: "duplicate message id is in process": a copy of this id is being stored right now.
_ID_IN_PROCESS = 10158
#: A pull request nobody answers: its consumer no longer exists (or its server is down).
_PULL_UNANSWERED: tuple[type[Exception], ...] = (*_NO_LEADER, nats.js.errors.NotFoundError)
#: "no suitable peers for placement": too few JetStream servers online for the replicas.
_NO_PLACEMENT = 10005
_CONNECT_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE, OSError)
_CONNECT_FAILED: tuple[type[Exception], ...] = (*_CONNECT_ERRORS, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The stream's acknowledgement of a publish: stored (or already stored) at ``seq``."""

    stream: str
    seq: int
    duplicate: bool
    msg_id: str


@dataclass(frozen=True, slots=True)
class LogMessage:
    """One message read from a stream: its stream sequence, subject, payload and id."""

    seq: int
    subject: str
    data: bytes
    msg_id: str | None
    time_ms: int  # when the stream stored it (server clock), Unix milliseconds
    pending: int = 0  # messages of the subject after this one in the stream when it was read


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    subjects: tuple[str, ...]
    replicas: int
    messages: int
    first_seq: int
    last_seq: int
    leader: str | None  # the server that orders and acks publishes (None: not clustered)
    current_followers: tuple[str, ...] = ()  # replicas caught up with the leader


def _stream_info(info: api.StreamInfo) -> StreamInfo:
    config, state = info.config, info.state
    leader = info.cluster.leader if info.cluster is not None else None
    peers = (info.cluster.replicas or []) if info.cluster is not None else []
    current = tuple(sorted(p.name for p in peers if p.name and p.current and not p.offline))
    return StreamInfo(
        name=config.name or "",
        subjects=tuple(config.subjects or ()),
        replicas=config.num_replicas or 1,
        messages=state.messages,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        leader=leader,
        current_followers=current,
    )


async def _flush(nc: NatsClient) -> None:
    """``nc.flush()``, never cancelled half-way: nats-py (2.16.0) keeps the PONG future of a
    flush whose task was cancelled, and its read loop then dies on ``set_result`` of that
    cancelled future when the PONG comes (``InvalidStateError``, logged once, then the loop
    ends): the connection stays "connected" but reads nothing more, and every later request
    times out. Shielded, the flush completes on its own and its future is resolved normally.
    (A flush that times out, 10 s without a PONG, cancels its future the same way; the
    connection is then stale anyway and nats-py's ping checks reconnect it.)"""
    await asyncio.shield(nc.flush())


class Connection:
    """One NATS connection living on a bridge. Make it with :func:`connect`."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        name: str,
        *,
        max_in_flight_publishes: int,
        publish_timeout: float,
    ) -> None:
        if max_in_flight_publishes < 1:
            raise ValueError(
                f"connection {name!r}: max_in_flight_publishes must be ≥ 1, "
                f"got {max_in_flight_publishes}"
            )
        self.bridge = bridge
        self.name = name
        self.publish_timeout = publish_timeout
        self.max_in_flight_publishes = max_in_flight_publishes
        self._publish_slots = trio.Semaphore(max_in_flight_publishes)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._connected = trio.Event()
        self._disconnects = 0
        self._closing = False
        #: Publishes re-sent with their id: the stream had no leader (an election), or an
        #: earlier copy of the id was still being stored.
        self.publish_retries = 0
        self._last_error: str | None = None
        self._error_text = ""
        self._error_logged_at = 0.0
        self._error_repeats = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def disconnects(self) -> int:
        """How many times the connection was lost since it was made."""
        return self._disconnects

    @property
    def publishes_in_flight(self) -> int:
        """Publishes handed to NATS and waiting for their ack (≤ max_in_flight_publishes)."""
        return self.max_in_flight_publishes - self._publish_slots.value

    @property
    def known_servers(self) -> int:
        """Servers the client knows of: the configured ones plus those the cluster announced."""
        return len(self._nats.servers)

    async def wait_connected(self, timeout: float) -> None:
        """Wait until the connection is up (again); ClusterUnavailable after ``timeout`` s."""
        with trio.move_on_after(timeout):
            while not self.connected:
                await self._connected.wait()
            return
        raise ClusterUnavailable(
            f"connection {self.name!r}: not reconnected to NATS within {timeout} s "
            f"(servers {self._server_list()}); check that a server is running"
        )

    def _server_list(self) -> list[str]:
        if self._nc is None:
            return []
        return [uri.netloc for uri in self._nc.servers]

    @property
    def _nats(self) -> NatsClient:
        if self._nc is None:
            raise BridgeClosed(f"connection {self.name!r} is not open")
        return self._nc

    @property
    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise BridgeClosed(f"connection {self.name!r} is not open")
        return self._js

    # -- callbacks (loop thread) -----------------------------------------------------------

    def _on_trio(self, fn: Callable[[], None]) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    async def _disconnected_cb(self) -> None:
        if not self._closing:
            log.warning(
                "cluster.nats.disconnected",
                connection=self.name,
                hint="reconnecting; calls wait up to their timeout, then fail as unavailable",
            )
        self._on_trio(self._mark_disconnected)

    async def _reconnected_cb(self) -> None:
        server = self._nc.connected_url.netloc if self._nc and self._nc.connected_url else None
        log.info("cluster.nats.reconnected", connection=self.name, server=server)
        self._on_trio(self._mark_connected)

    async def _error_cb(self, error: Exception) -> None:
        # While a server is down, nats-py reports every failed attempt: one line per error
        # text and 10 s, with how many were folded into it.
        text = f"{type(error).__name__}: {error}"
        self._last_error = text
        now = asyncio.get_running_loop().time()
        if text == self._error_text and now - self._error_logged_at < 10.0:
            self._error_repeats += 1
            return
        log.warning(
            "cluster.nats.error", connection=self.name, error=text, repeated=self._error_repeats
        )
        self._error_text, self._error_logged_at, self._error_repeats = text, now, 0

    async def _closed_cb(self) -> None:
        log.info("cluster.nats.closed", connection=self.name)

    def _mark_connected(self) -> None:  # Trio thread (the event of the moment, not of the cb's)
        self._connected.set()

    def _mark_disconnected(self) -> None:  # Trio thread
        self._disconnects += 1
        if self._connected.is_set():
            self._connected = trio.Event()

    # -- calls -----------------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn`` on the loop; NATS's transient failures become ClusterUnavailable."""
        try:
            return await self.bridge.call(fn)
        except UNAVAILABLE as error:
            state = "connected" if self.connected else "disconnected, reconnecting"
            raise ClusterUnavailable(
                f"connection {self.name!r}: {what} failed: {type(error).__name__}: "
                f"{error or 'no answer'} (NATS {state}); retry later"
            ) from error

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        duplicate_window: float = 120.0,
        max_age: float | None = None,
        replicas: int | None = None,
        timeout: float = 10.0,
    ) -> StreamInfo:
        """Create the stream, or check the existing one has these subjects and replicas.

        ``replicas`` defaults to 3 when the client knows ≥ 3 servers, else 1.
        Storage is file; a message id is remembered for ``duplicate_window`` seconds.
        While the cluster cannot place it (still forming, servers down) this retries for up to
        ``timeout`` seconds, then raises ClusterUnavailable.
        """
        if replicas is None:
            replicas = 3 if self.known_servers >= 3 else 1
        config = api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
            max_age=max_age,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
        )
        js = self._jetstream

        async def ensure() -> api.StreamInfo:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                return await js.add_stream(config)
            return info

        info = _stream_info(
            await self._retry_placement(f"ensure stream {name} (R{replicas})", ensure, timeout)
        )
        if set(info.subjects) != set(subjects) or info.replicas != replicas:
            raise StreamMismatch(
                f"stream {name!r} exists with subjects {list(info.subjects)} and "
                f"{info.replicas} replicas, not {subjects} and {replicas}: "
                "delete it or use another name"
            )
        log.info("cluster.stream.ready", stream=name, replicas=info.replicas, subjects=subjects)
        return info

    async def _retry_placement(
        self, what: str, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float
    ) -> T:
        """``fn`` on the loop, retried every 0.2 s for ``timeout`` s while NATS is unavailable
        or has too few JetStream servers online to place the replicas."""
        deadline = trio.current_time() + timeout
        waiting = False
        while True:
            try:
                return await self._run(what, fn)
            except nats.js.errors.BadRequestError as error:
                if error.err_code != _NO_PLACEMENT:
                    raise
                failure: Exception = ClusterUnavailable(
                    f"connection {self.name!r}: {what}: not enough JetStream servers online to "
                    f"place its replicas ({error.description}); start the missing servers"
                )
                failure.__cause__ = error
            except ClusterUnavailable as error:
                failure = error
            if trio.current_time() >= deadline:
                raise failure
            if not waiting:
                waiting = True
                log.warning(
                    "cluster.nats.waiting",
                    connection=self.name,
                    what=what,
                    error=str(failure),
                    retry_for_seconds=round(deadline - trio.current_time(), 1),
                )
            await trio.sleep(0.2)

    async def stream_info(self, name: str) -> StreamInfo:
        js = self._jetstream

        async def get() -> api.StreamInfo:
            return await js.stream_info(name)

        return _stream_info(await self._run(f"stream info {name}", get))

    async def publish(
        self, subject: str, data: bytes, *, msg_id: str, timeout: float | None = None
    ) -> PublishAck:
        """Publish ``data`` to ``subject`` with ``Nats-Msg-Id: msg_id``; wait for the stream's ack.

        ``ack.duplicate`` is True when the id was already stored within the duplicate window
        (the message is then stored once, at ``ack.seq``). While the stream has no leader
        (NATS answers "no responders" or 503 at once), or an earlier copy of the id is still
        being stored (409 "in process"), the publish is re-sent with the same id every
        50-500 ms. Raises ClusterUnavailable when no ack came within ``timeout``
        (default ``publish_timeout``): the message may still be stored; re-send the same id.
        """
        if not msg_id:
            raise ValueError(f"publish to {subject!r}: msg_id must not be empty")
        wait = self.publish_timeout if timeout is None else timeout
        deadline = trio.current_time() + wait
        js = self._jetstream
        headers = {MSG_ID: msg_id}
        what = f"publish to {subject} (msg id {msg_id}, {wait} s)"
        pause = 0.05

        async with self._publish_slots:
            while True:
                remaining = max(deadline - trio.current_time(), 0.001)
                publish = functools.partial(
                    js.publish, subject, data, timeout=remaining, headers=dict(headers)
                )
                try:
                    ack = await self._run(what, publish)
                    break
                except ClusterUnavailable as error:
                    leaderless = isinstance(error.__cause__, _NO_LEADER)
                    if not leaderless or trio.current_time() + pause >= deadline:
                        raise
                except nats.js.errors.APIError as error:
                    # An earlier copy of this id is still being replicated: its outcome
                    # decides this one (stored: a duplicate ack; lost: stored now).
                    if error.err_code != _ID_IN_PROCESS:
                        raise
                    if trio.current_time() + pause >= deadline:
                        raise ClusterUnavailable(
                            f"connection {self.name!r}: {what} failed: an earlier copy of this "
                            "id was still being stored when the timeout ran out; retry later"
                        ) from error
                self.publish_retries += 1
                await trio.sleep(pause)
                pause = min(pause * 2, 0.5)
        return PublishAck(
            stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate), msg_id=msg_id
        )

    async def send(self, subject: str, data: bytes, *, flush: bool = True) -> None:
        """Core NATS publish (at most once, no ack), flushed to the server (a PING/PONG round
        trip) unless ``flush=False`` (then nats-py's own flusher writes it, at once)."""
        nc = self._nats

        async def send() -> None:
            await nc.publish(subject, data)
            if flush:
                await _flush(nc)

        await self._run(f"send to {subject}", send)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """Core NATS request/reply: the first reply's payload. ClusterUnavailable when
        nobody subscribes to ``subject`` (no responders) or no reply came in ``timeout``."""
        nc = self._nats

        async def request() -> bytes:
            reply = await nc.request(subject, data, timeout=timeout)
            return reply.data

        return await self._run(f"request to {subject}", request)

    async def reply(self, subject: str, data: bytes) -> None:
        """Answer a request (``subject``: its reply subject); at most once, not flushed."""
        await self.send(subject, data, flush=False)

    @asynccontextmanager
    async def subscribe(self, subject: str, *, capacity: int = 1024) -> AsyncIterator[Subscription]:
        """A core NATS subscription read from Trio; at most ``capacity`` messages buffered,
        the newest dropped (and counted in ``dropped``) beyond that."""
        inbox: Inbox[Msg] = Inbox(capacity, self._token, name=subject)
        nc = self._nats

        async def handler(msg: Msg) -> None:
            if not inbox.put(msg) and (inbox.dropped in (1, 10, 100) or inbox.dropped % 1000 == 0):
                log.warning(
                    "cluster.subscription.slow_consumer",
                    connection=self.name,
                    subject=subject,
                    dropped=inbox.dropped,
                    capacity=capacity,
                    hint="the Trio reader does not keep up; newest messages are dropped",
                )

        async def subscribe() -> NatsSubscription:
            sub = await nc.subscribe(subject, cb=handler)
            await _flush(nc)
            return sub

        sub = await self._run(f"subscribe to {subject}", subscribe)
        try:
            yield Subscription(subject, inbox)
        finally:
            inbox.close()
            with trio.CancelScope(shield=True), suppress(*_UNSUBSCRIBE_ERRORS):
                await self.bridge.call(sub.unsubscribe)

    @asynccontextmanager
    async def reader(
        self, stream: str, subject: str, *, start_seq: int = 1
    ) -> AsyncIterator[LogReader]:
        """A reader of ``subject`` in ``stream`` from stream sequence ``start_seq``, in order."""
        reader = LogReader(self, stream, subject, start_seq)
        try:
            yield reader
        finally:
            with trio.CancelScope(shield=True):
                await reader.aclose()

    async def aclose(self) -> None:
        nc = self._nc
        if nc is None:
            return
        self._closing = True

        async def close() -> None:
            if not nc.is_closed:
                await nc.close()

        with trio.CancelScope(shield=True), suppress(*UNAVAILABLE):
            await self.bridge.call(close)
        self._nc = None
        self._js = None


class Subscription:
    """Messages of a core NATS subscription, read from Trio (``async for`` or ``get``)."""

    def __init__(self, subject: str, inbox: Inbox[Msg]) -> None:
        self.subject = subject
        self._inbox = inbox

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full (the Trio reader fell behind)."""
        return self._inbox.dropped

    @property
    def buffered(self) -> int:
        return len(self._inbox)

    async def get(self) -> tuple[str, bytes]:
        msg = await self._inbox.get()
        return msg.subject, msg.data

    async def get_request(self) -> tuple[bytes, str]:
        """The next message's payload and its reply subject ("" when it expects none)."""
        msg = await self._inbox.get()
        return msg.data, msg.reply or ""

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        try:
            return await self.get()
        except InboxClosed:
            raise StopAsyncIteration from None


class LogReader:
    """Reads one subject of a stream in stream order, from a given sequence, pulling batches.

    Built on an ephemeral pull consumer (no acks: the reader's position is ``next_seq``, which
    the caller keeps durably itself). If the consumer is lost (its server died) or a delivery is
    missing (a consumer-sequence gap), the consumer is recreated from ``next_seq``: the reader
    never skips nor repeats a message.
    """

    def __init__(self, connection: Connection, stream: str, subject: str, start_seq: int) -> None:
        if start_seq < 1:
            raise ValueError(
                f"reader of {stream}/{subject}: start_seq must be ≥ 1, got {start_seq}"
            )
        self.connection = connection
        self.stream = stream
        self.subject = subject
        self.next_seq = start_seq
        self.resets = 0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        self._delivered = 0  # consumer sequence of the last message taken

    async def _reset(self) -> None:
        """Drop the current consumer (best effort) and create one from next_seq."""
        await self._drop()
        js = self.connection._jetstream
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self.subject,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        stream, subject = self.stream, self.subject

        async def create() -> JetStreamContext.PullSubscription:
            return await js.pull_subscribe(subject, stream=stream, config=config)

        self._sub = await self.connection._run(f"read {stream}/{subject}", create)
        self._consumer = config.name
        self._delivered = 0

    async def _drop(self) -> None:
        sub, name = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is None:
            return
        js = self.connection._jetstream
        stream = self.stream

        async def drop() -> None:
            with suppress(nats.errors.Error):
                await sub.unsubscribe()
            if name is not None:
                with suppress(nats.errors.Error, nats.js.errors.Error):
                    await js.delete_consumer(stream, name)

        with suppress(*UNAVAILABLE):
            await self.connection.bridge.call(drop)

    async def fetch(self, max_msgs: int = 256, *, timeout: float = 1.0) -> list[LogMessage]:
        """Up to ``max_msgs`` next messages, in stream order; [] if none came within ``timeout``."""
        if self._sub is None:
            await self._reset()
        sub = self._sub
        assert sub is not None

        async def fetch() -> list[Msg]:
            try:
                return await sub.fetch(max_msgs, timeout=timeout)
            except TimeoutError:
                # nats.errors.TimeoutError is one; nats-py also raises a bare one when
                # its deadline runs out between the no-wait probe and the long poll (seen
                # under load with short timeouts): either way, nothing came in time.
                return []

        try:
            msgs = await self.connection._run(f"read {self.stream}/{self.subject}", fetch)
        except (ClusterUnavailable, nats.js.errors.NotFoundError) as error:
            self._sub = None  # recreate from next_seq next time
            cause = error.__cause__ if isinstance(error, ClusterUnavailable) else error
            if not isinstance(cause, _PULL_UNANSWERED):
                raise
            # Nobody answers the pull: the consumer is gone (deleted, idled out, its server
            # died). Not an error for the reader: the next fetch starts a new one at next_seq.
            self.resets += 1
            log.info(
                "cluster.reader.reset",
                stream=self.stream,
                subject=self.subject,
                next_seq=self.next_seq,
                reason=f"consumer unanswered: {type(cause).__name__}",
            )
            return []
        if not msgs:
            await self._check_consumer()
            return []
        out: list[LogMessage] = []
        for msg in msgs:
            meta = msg.metadata
            if (
                meta.sequence.consumer != self._delivered + 1
                or meta.sequence.stream < self.next_seq
            ):
                # A delivery went missing (or came twice): start over from what we hold.
                log.info(
                    "cluster.reader.reset",
                    stream=self.stream,
                    subject=self.subject,
                    next_seq=self.next_seq,
                    got_seq=meta.sequence.stream,
                    reason="delivery gap",
                )
                self.resets += 1
                self._sub = None
                break
            self._delivered = meta.sequence.consumer
            self.next_seq = meta.sequence.stream + 1
            headers = msg.headers or {}
            out.append(
                LogMessage(
                    seq=meta.sequence.stream,
                    subject=msg.subject,
                    data=msg.data,
                    msg_id=headers.get(MSG_ID),
                    time_ms=(meta.timestamp - _EPOCH) // _MS,
                    pending=meta.num_pending or 0,
                )
            )
        return out

    async def _check_consumer(self) -> None:
        """After an empty fetch: is the consumer still there? If not, recreate it next time."""
        name = self._consumer
        if name is None:
            return
        js = self.connection._jetstream
        stream = self.stream

        async def info() -> None:
            await js.consumer_info(stream, name)

        try:
            await self.connection.bridge.call(info)
        except _CONSUMER_GONE:
            log.info(
                "cluster.reader.reset",
                stream=self.stream,
                subject=self.subject,
                next_seq=self.next_seq,
                reason="consumer lost",
            )
            self.resets += 1
            self._sub = None

    async def aclose(self) -> None:
        await self._drop()


async def connect(
    bridge: AsyncioBridge,
    servers: list[str],
    *,
    name: str,
    max_in_flight_publishes: int = 256,
    publish_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    reconnect_time_wait: float = 0.5,
    initial_connect_timeout: float = 10.0,
) -> Connection:
    """Connect to NATS (any of ``servers``) on ``bridge``; reconnects forever once connected.

    Raises ClusterUnavailable if no server accepts a first connection within
    ``initial_connect_timeout`` seconds.
    """
    connection = Connection(
        bridge,
        name,
        max_in_flight_publishes=max_in_flight_publishes,
        publish_timeout=publish_timeout,
    )
    nc = NatsClient()

    async def open_() -> None:
        await nc.connect(
            servers=servers,
            name=name,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]
            reconnect_time_wait=reconnect_time_wait,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            disconnected_cb=connection._disconnected_cb,
            reconnected_cb=connection._reconnected_cb,
            error_cb=connection._error_cb,
            closed_cb=connection._closed_cb,
        )

    try:
        with trio.fail_after(initial_connect_timeout):
            await bridge.call(open_)  # nats-py retries the first connect forever: bound it here
    except _CONNECT_FAILED as error:
        connection._closing = True
        with trio.CancelScope(shield=True), suppress(*_CONNECT_ERRORS):
            await bridge.call(nc.close)
        raise ClusterUnavailable(
            f"connection {name!r}: no NATS server at {servers} accepted a connection within "
            f"{initial_connect_timeout} s ({connection._last_error or type(error).__name__}); "
            "check the [cluster] nats addresses and that the servers run"
        ) from error
    connection._nc = nc
    connection._js = nc.jetstream()
    connection._connected.set()

    async def close_on_shutdown() -> None:
        connection._closing = True
        if not nc.is_closed:
            await nc.close()

    bridge.add_shutdown_hook(close_on_shutdown)
    log.info("cluster.nats.connected", connection=name, servers=connection._server_list())
    return connection


__all__ = [
    "ClusterUnavailable",
    "Connection",
    "LogMessage",
    "LogReader",
    "PublishAck",
    "StreamInfo",
    "StreamMismatch",
    "Subscription",
    "connect",
]
_ = nats  # the package import above makes nats.errors / nats.js.errors resolvable
