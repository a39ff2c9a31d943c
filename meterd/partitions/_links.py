"""The gateway's link to one owner process (docs/partitions.md "The gateway").

One :class:`OwnerLink` per owner, each run as a task child of the gateway's root
supervisor (:meth:`OwnerLink.child_spec`). Its rules:

Connect
    It connects to the owner's address (its Unix socket) and reads the owner's
    :class:`~._messages.Hello` (the owner's pid and shards, checked against the layout).
    While the owner is not there (starting, restarting) it retries every
    :data:`RETRY_INTERVAL` seconds. Its first start (``task_status.started``) waits for the
    first Hello (up to ``ping_timeout``), so ingest, started after the links, does not send
    to an owner not yet connected; a restart of the link starts at once (see :meth:`run`).
    A connection reset before the hello (an owner that died with it unaccepted) is retried
    like a refused one.
Slices
    :meth:`send` queues a :class:`~._messages.Slice` or a :class:`~._messages.Slices` (a
    batch's parts for several of the owner's shards: the gateway sends one per owner per
    batch) without blocking, with the function to call with its outcome; one task writes
    the queue to the channel, so slices reach the owner in the order they were queued
    (per owner: the order the producers' batches were read). A :class:`~._messages.Verdicts` or
    :class:`~._messages.Unavailable` is matched to its slice by (batch, shard). A slice
    gets exactly one outcome: its verdicts, or an :class:`OwnerUnavailable` when the owner
    said so, when the channel ends (every slice still waiting fails at once), when the
    link is not connected as it is sent, or when ``slice_timeout`` passes without an
    answer. A verdict that comes after its slice was given up is dropped: the producer,
    answered ``unavailable``, re-sends the batch, and the owner's dedupe counts it once.
Liveness
    Every ``ping_interval`` it asks the owner ``ping`` (a :class:`~._messages.Query`). An
    owner that has not answered within ``stall_after`` (``min(2 * ping_interval,
    ping_timeout)``: a busy owner's reader may be late once) is **unresponsive**: its
    pending slices fail at once and every slice sent to it meanwhile fails as it is sent
    (``unavailable``), so that the producers' batches waiting on it give their share of
    the gateway's in-flight budget back and the other owners' batches keep being read and
    acked; it is responsive again as soon as it answers. An owner that does not answer
    within ``ping_timeout`` (stopped with SIGSTOP, hung in a loop, its socket full) is
    killed with SIGKILL through ``kill(pid)`` (the gateway's supervisor sends it through
    the child's pidfd), so its supervisor restarts it, and the channel is closed: its
    pending slices fail, and the link connects to the new owner. So is an owner that
    accepts the connection but says no hello within ``ping_timeout`` (``kill(None)``:
    whichever process is the owner now).
Pacing
    Under overload the owner's queue, not ``slice_timeout``, must decide how long a batch
    waits: the link keeps each owner's **allowance**, the events it may have in flight
    (sent, no outcome yet), so that they are about :data:`PACE_FRACTION` of
    ``slice_timeout`` of that owner's work. After each window of that length with verdicts,
    the slowest verdict's wait (from the slice's send) sets it: over the target, the
    allowance shrinks in proportion (Little's law: in flight = rate x wait; only slices sent
    since the last shrink count, so one overload is not corrected twice); under half the
    target, with the allowance reached in the window, it doubles, up to the gateway's whole
    budget. It starts at :data:`INITIAL_ALLOWANCE` events (and again at each connection:
    a new owner process), never below :data:`MIN_ALLOWANCE`. :class:`PacedBudget`, the
    gateway's in-flight budget, counts as spent while any owner holds its allowance: ingest
    stops reading every connection (TCP backpressure reaches the producers), so a slow owner
    slows the producers down instead of having their batches time out. An owner found
    unresponsive has its slices failed, so it holds no allowance and does not stop the
    others' producers.
Queries
    :meth:`ask` and :meth:`tree` send a Query or a TreeRequest and wait for the answer with
    the same id, up to a timeout.

Every failure is an :class:`~._owners.OwnerUnavailable` naming the shard, the owner and
why; none is a crash of the link (a crash would be a bug, and its supervisor restarts it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

import supervisors as sv
from meterd.accounts.budget import EventBudget
from meterd.config import PartitionsConfig

from ._layout import shards_of_owner
from ._messages import (
    SCHEMA_VERSION,
    Answer,
    BatchId,
    Hello,
    Message,
    Query,
    Slice,
    Slices,
    TreeRequest,
    TreeSnapshot,
    Unavailable,
    Verdicts,
)
from ._owners import OwnerUnavailable
from ._transport import Channel, ChannelClosed, FrameError, Transport

__all__ = ["RETRY_INTERVAL", "OwnerLink", "PacedBudget", "SliceDone"]

log = structlog.get_logger("meterd.partitions")

RETRY_INTERVAL: Final = 0.05  # seconds between attempts to reach an owner not serving yet
PACE_FRACTION: Final = 0.1  # of slice_timeout: the work an owner may have queued (Pacing)
INITIAL_ALLOWANCE: Final = 2_000  # events in flight to an owner before its pace is measured
MIN_ALLOWANCE: Final = 1_000  # events: two of the bench's batches, so an owner never idles

SliceDone = Callable[[Verdicts | OwnerUnavailable], None]
"""Called once with a slice's outcome."""


@dataclass(slots=True)
class _Pending:
    shard: int
    deadline: float
    done: SliceDone
    events: int = 0
    sent_at: float = 0.0


@dataclass(slots=True)
class _Question:
    answered: trio.Event = field(default_factory=trio.Event)
    answer: Answer | TreeSnapshot | None = None


class OwnerLink:
    """The gateway's link to owner ``owner`` at ``address`` (see the module doc)."""

    def __init__(
        self,
        owner: int,
        address: str,
        transport: Transport,
        partitions: PartitionsConfig,
        *,
        slice_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        kill: Callable[[int | None], None],
    ) -> None:
        self.owner = owner
        self.address = address
        self.transport = transport
        self.partitions = partitions
        self.shards = list(shards_of_owner(owner, partitions))
        self.slice_timeout = slice_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.stall_after = min(2 * ping_interval, ping_timeout)
        self.kill = kill
        self.pid: int | None = None  # the connected owner's, from its hello
        self.connections = 0  # channels opened (1 + reconnections)
        self.kills = 0  # owners killed for not answering a ping
        self.timeouts = 0  # slices given up after slice_timeout
        self.stalls = 0  # times the owner was found unresponsive (a ping unanswered)
        self.unresponsive_since: float | None = None  # Trio time, while unresponsive
        self._channel: Channel | None = None
        self._up = trio.Event()  # set while connected
        self._started = False  # task_status.started called (in this incarnation)
        self._outgoing: list[Slice | Slices] = []
        self._wake_sender = trio.Event()
        self._wake_timer = trio.Event()
        self._pending: dict[tuple[BatchId, int], _Pending] = {}
        self._questions: dict[int, _Question] = {}
        self._ids = itertools.count(1)
        # Pacing (module doc): events in flight against the allowance, the current window.
        self.pace_target = PACE_FRACTION * slice_timeout
        self.max_allowance = 1 << 62  # the gateway's whole budget (PacedBudget sets it)
        self.allowance = INITIAL_ALLOWANCE
        self.in_flight = 0  # events of the pending slices
        self.paced = 0  # windows that shrank the allowance
        self.on_room: Callable[[], None] = _nothing  # PacedBudget: the allowance has room
        # Each slice's round trip, seconds (Trio clock) from send() to its verdicts: the
        # gateway's meterd_gateway_slice_seconds{link} (docs/api.md).
        self.on_round_trip: Callable[[float], None] | None = None
        self._window_start: float | None = None
        self._window_wait = 0.0  # the slowest verdict's wait in the window
        self._window_full = False  # the allowance was reached in the window
        self._window_samples = 0  # verdicts of slices sent since the last shrink
        self._shrunk_at = -math.inf  # when the allowance last shrank

    @property
    def name(self) -> str:
        return f"owner-{self.owner}"

    @property
    def connected(self) -> bool:
        return self._channel is not None

    @property
    def unresponsive(self) -> bool:
        """Whether the owner has left a ping unanswered for ``stall_after`` (module doc)."""
        return self.unresponsive_since is not None

    @property
    def pending(self) -> int:
        """Slices sent or queued, waiting for their outcome."""
        return len(self._pending)

    @property
    def saturated(self) -> bool:
        """Whether the owner holds its allowance of events in flight (module doc, Pacing)."""
        return self.in_flight >= self.allowance

    async def wait_connected(self) -> int:
        """Return once the link is connected (at once if it is): the owner's pid."""
        while True:
            await self._up.wait()
            if self.pid is not None:
                return self.pid

    def child_spec(self, id: str | None = None) -> sv.ChildSpec:
        return sv.task_spec(id or f"link-{self.owner}", self.run)

    # ---- slices ------------------------------------------------------------------------

    def send(self, message: Slice | Slices, done: SliceDone) -> None:
        """Queue ``message`` for the owner; ``done`` gets its outcome (see the module doc).
        Never blocks; ``done`` may be called before this returns (owner not connected)."""
        if self._channel is None:
            done(self._unavailable(message.shard, "its owner process is not connected"))
            return
        if self.unresponsive_since is not None:
            done(self._unavailable(message.shard, self._silent_for()))
            return
        key = (message.batch, message.shard)
        if key in self._pending:  # the same batch twice: a bug in the caller
            done(self._unavailable(message.shard, "the same slice is already in flight"))
            return
        wake = not self._pending
        now = trio.current_time()
        events = (
            len(message.events)
            if isinstance(message, Slice)
            else sum(len(part.events) for part in message.parts)
        )
        self._pending[key] = _Pending(message.shard, now + self.slice_timeout, done, events, now)
        self.in_flight += events
        if self.in_flight >= self.allowance:
            self._window_full = True
        self._outgoing.append(message)
        self._wake_sender.set()
        if wake:
            self._wake_timer.set()

    def _unavailable(self, shard: int, why: str) -> OwnerUnavailable:
        return OwnerUnavailable(shard, self.owner, why)

    def _silent_for(self) -> str:
        since = self.unresponsive_since
        waited = (
            self.stall_after if since is None else trio.current_time() - since + self.stall_after
        )
        return (
            f"its owner process (pid {self.pid}) has not answered a ping for {waited:.1f} s;"
            f" it is killed if still silent after ping_timeout ({self.ping_timeout:g} s)"
        )

    def _fail_slices(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        self._outgoing.clear()
        self._settled(sum(item.events for item in pending.values()))
        for item in pending.values():
            item.done(self._unavailable(item.shard, why))

    def _settled(self, events: int) -> None:
        """``events`` in flight got their outcome: wake the readers if room was made."""
        saturated = self.in_flight >= self.allowance
        self.in_flight -= events
        if saturated and self.in_flight < self.allowance:
            self.on_room()

    def _paced(self, item: _Pending) -> None:
        """A slice's verdicts came: its wait goes into the window, which may end (Pacing)."""
        now = trio.current_time()
        if item.sent_at >= self._shrunk_at:  # sent under the allowance as it is now
            self._window_wait = max(self._window_wait, now - item.sent_at)
            self._window_samples += 1
        start = self._window_start
        if start is None:
            self._window_start = now
            return
        if now - start < self.pace_target or not self._window_samples:
            return
        target, wait, before = self.pace_target, self._window_wait, self.allowance
        if wait > target:
            self.allowance = max(MIN_ALLOWANCE, int(before * target / wait))
            self._shrunk_at = now  # the slices already queued waited for the old one
            self.paced += 1
            log.debug(
                "owner_paced",
                owner=self.owner,
                waited=round(wait, 3),
                target=target,
                allowance=self.allowance,
                was=before,
            )
        elif wait < target / 2 and self._window_full:
            self.allowance = min(self.max_allowance, max(MIN_ALLOWANCE, 2 * before))
        self._window_start, self._window_wait, self._window_samples = now, 0.0, 0
        self._window_full = self.in_flight >= self.allowance
        if before <= self.in_flight < self.allowance:  # grown past what holds the readers
            self.on_room()

    def _reset_pace(self) -> None:
        """A new owner process: its pace is measured afresh."""
        self.allowance = min(self.max_allowance, INITIAL_ALLOWANCE)
        self._window_start, self._window_wait, self._window_full = None, 0.0, False
        self._window_samples, self._shrunk_at = 0, -math.inf

    def _fail_all(self, why: str) -> None:
        self._fail_slices(why)
        questions, self._questions = self._questions, {}
        for question in questions.values():
            question.answered.set()  # no answer: the asker raises

    # ---- queries -----------------------------------------------------------------------

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        """The ``value`` of the owner's answer to ``Query(op, args)`` about ``shard``."""
        answer = await self._request(
            shard, lambda id: Query(id, shard, op, args), timeout, f"query {op!r}"
        )
        assert isinstance(answer, Answer)
        if answer.error is not None:
            raise RuntimeError(f"{self.name} answered {op!r} for shard {shard}: {answer.error}")
        return answer.value

    async def tree(self, limit: int, total: int, timeout: float) -> TreeSnapshot:
        shard = self.shards[0] if self.shards else 0
        snapshot = await self._request(
            shard, lambda id: TreeRequest(id, limit, total), timeout, "tree request"
        )
        assert isinstance(snapshot, TreeSnapshot)
        return snapshot

    async def _request(
        self, shard: int, make: Callable[[int], Message], timeout: float, what: str
    ) -> Answer | TreeSnapshot:
        channel = self._channel
        if channel is None:
            raise self._unavailable(shard, "its owner process is not connected")
        id = next(self._ids)
        question = self._questions[id] = _Question()
        try:
            with trio.move_on_after(timeout):
                try:
                    await channel.send(make(id))
                except (
                    ChannelClosed,
                    FrameError,
                    trio.BrokenResourceError,
                    OSError,
                ) as error:
                    raise self._unavailable(shard, f"sending the {what} failed: {error}") from None
                await question.answered.wait()
        finally:
            self._questions.pop(id, None)
        if question.answer is None:
            why = (
                "the channel to its owner closed"
                if question.answered.is_set()
                else f"no answer to the {what} within {timeout:g} s"
            )
            raise self._unavailable(shard, why)
        return question.answer

    # ---- the link's task ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve the channel until it ends, fail what was pending, reconnect.

        Started once connected, or after ``ping_timeout`` without an owner at its first
        start (the owners are started before the links, so that is rare), and at once when
        restarted: a start that waited for the owner would hold the supervisor, which
        would then never restart the owner it waits for."""
        self._started = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire)
                if self.connections:  # restarted: the owner may be down; never wait for it
                    self._started = True
                    task_status.started(self)
                else:
                    nursery.start_soon(self._start_anyway, self.ping_timeout, task_status)
                while True:
                    channel, hello = await self._connect()
                    self._reset_pace()
                    self._channel = channel
                    self.pid = hello.pid
                    self.connections += 1
                    self._up.set()
                    log.info(
                        "owner_link_connected",
                        owner=self.owner,
                        pid=hello.pid,
                        address=self.address,
                        connections=self.connections,
                    )
                    if not self._started:
                        self._started = True
                        task_status.started(self)
                    why = await self._serve(channel, hello.pid)
                    self._channel = None
                    self.pid = None
                    self._up = trio.Event()
                    with trio.CancelScope(shield=True):
                        await channel.aclose()
                    lost = len(self._pending)
                    self._fail_all(why)
                    log.warning("owner_link_lost", owner=self.owner, why=why, slices_failed=lost)
        finally:
            self._channel = None
            self.pid = None
            self._up = trio.Event()
            self._fail_all("the gateway's link to its owner stopped")

    async def _start_anyway(self, wait: float, task_status: trio.TaskStatus[Any]) -> None:
        """Report the link started after ``wait`` s even if no owner said hello by then."""
        await trio.sleep(wait)
        if not self._started:
            self._started = True
            log.warning("owner_link_started_unconnected", owner=self.owner, waited=wait)
            task_status.started(self)

    async def _connect(self) -> tuple[Channel, Hello]:
        attempts = 0
        while True:
            attempts += 1
            try:
                channel = await self.transport.connect(self.address)
            except ConnectionError as error:
                if attempts == 1 or attempts % 200 == 0:  # about every 10 s
                    log.info("owner_link_waiting", owner=self.owner, error=str(error))
                await trio.sleep(RETRY_INTERVAL)
                continue
            silent = False
            try:
                with trio.fail_after(self.ping_timeout):
                    hello = await channel.receive()
                self._check_hello(hello)
            except (
                ChannelClosed,
                FrameError,
                trio.TooSlowError,
                trio.BrokenResourceError,  # reset: it died with the connection unaccepted
                ValueError,
                OSError,
            ) as error:
                with trio.CancelScope(shield=True):
                    await channel.aclose()
                silent = isinstance(error, trio.TooSlowError)
                log.warning(
                    "owner_link_refused",
                    owner=self.owner,
                    address=self.address,
                    error=str(error) or type(error).__name__,
                    hint="the owner did not say a valid hello; retrying",
                )
            else:
                break
            if silent:  # it accepted the connection but says nothing: hung
                self._kill_hung(None, "no hello")
            await trio.sleep(RETRY_INTERVAL)
        assert isinstance(hello, Hello)
        return channel, hello

    def _check_hello(self, hello: Message) -> None:
        if not isinstance(hello, Hello):
            raise ValueError(  # noqa: TRY004 (a peer's mistake, reported as the others)
                f"the first message was a {type(hello).__name__}, not a hello"
            )
        if hello.version != SCHEMA_VERSION:
            raise ValueError(
                f"owner speaks message version {hello.version}, the gateway {SCHEMA_VERSION}:"
                " run the same meterd version in both"
            )
        if sorted(hello.shards) != self.shards:
            raise ValueError(
                f"owner holds shards {sorted(hello.shards)}, the layout gives owner"
                f" {self.owner} shards {self.shards}: is it started with another config?"
            )

    async def _serve(self, channel: Channel, pid: int) -> str:
        """Run the channel until it ends; why it ended."""
        why = "the channel to its owner closed"
        async with trio.open_nursery() as nursery:

            async def stop(reason: str) -> None:
                nonlocal why
                why = reason
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._read, channel, stop)
            nursery.start_soon(self._write, channel, stop)
            nursery.start_soon(self._ping, channel, pid, stop)
        return why

    async def _read(self, channel: Channel, stop: Callable[[str], Any]) -> None:
        try:
            while True:
                message = await channel.receive()
                if isinstance(message, Verdicts | Unavailable):
                    item = self._pending.pop((message.batch, message.shard), None)
                    if item is None:  # given up already (timed out): the re-send counts
                        log.debug("owner_late_verdicts", owner=self.owner, shard=message.shard)
                        continue
                    self._settled(item.events)
                    if isinstance(message, Verdicts):
                        if self.on_round_trip is not None:
                            self.on_round_trip(trio.current_time() - item.sent_at)
                        self._paced(item)
                        item.done(message)
                    else:
                        item.done(self._unavailable(message.shard, message.reason))
                elif isinstance(message, Answer | TreeSnapshot):
                    question = self._questions.get(message.id)
                    if question is not None:
                        question.answer = message
                        question.answered.set()
                else:
                    log.warning(
                        "owner_unexpected_message", owner=self.owner, type=type(message).__name__
                    )
        except ChannelClosed:
            await stop(f"its owner process (pid {self.pid}) closed the channel")
        except (FrameError, trio.BrokenResourceError, OSError) as error:
            await stop(f"the channel to its owner broke: {error}")

    async def _write(self, channel: Channel, stop: Callable[[str], Any]) -> None:
        try:
            while True:
                await self._wake_sender.wait()
                self._wake_sender = trio.Event()
                outgoing, self._outgoing = self._outgoing, []
                for message in outgoing:
                    if (message.batch, message.shard) in self._pending:  # not given up yet
                        await channel.send(message)
        except (
            ChannelClosed,
            FrameError,
            trio.BrokenResourceError,
            OSError,
        ) as error:
            await stop(f"sending to its owner failed: {error}")

    def _kill_hung(self, pid: int | None, why: str) -> None:
        """Kill a hung owner (``pid``, or whichever runs: None) with SIGKILL, through its
        supervisor's handle; the supervisor restarts it."""
        self.kills += 1
        log.error(
            "owner_hung",
            owner=self.owner,
            pid=pid,
            waited=self.ping_timeout,
            action=f"{why}: killed with SIGKILL; its supervisor restarts it",
        )
        self.kill(pid)

    async def _ping(self, channel: Channel, pid: int, stop: Callable[[str], Any]) -> None:
        shard = self.shards[0] if self.shards else 0
        try:
            while True:
                await trio.sleep(self.ping_interval)
                id = next(self._ids)
                question = self._questions[id] = _Question()
                broken = False
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_stall, question, pid)
                        try:
                            with trio.move_on_after(self.ping_timeout):
                                await channel.send(Query(id, shard, "ping"))
                                await question.answered.wait()
                        except (ChannelClosed, FrameError, trio.BrokenResourceError, OSError):
                            broken = True
                        nursery.cancel_scope.cancel()
                finally:
                    self._questions.pop(id, None)
                if broken:
                    return  # the reader sees it too
                if question.answer is None:
                    self._kill_hung(pid, "no answer to a ping")
                    await stop(
                        f"its owner process (pid {pid}) did not answer a ping within"
                        f" {self.ping_timeout:g} s and was killed"
                    )
                    return
                self._responsive(pid)
        finally:
            self.unresponsive_since = None

    async def _watch_stall(self, question: _Question, pid: int) -> None:
        """Mark the owner unresponsive if ``question`` (a ping) is not answered within
        ``stall_after``: its pending slices fail now (module doc, Liveness)."""
        await trio.sleep(self.stall_after)
        if question.answer is not None or self.unresponsive_since is not None:
            return
        self.unresponsive_since = trio.current_time()
        self.stalls += 1
        failed = len(self._pending)
        self._fail_slices(self._silent_for())
        log.warning(
            "owner_unresponsive",
            owner=self.owner,
            pid=pid,
            waited=self.stall_after,
            slices_failed=failed,
            action=(
                "its slices are answered unavailable at once until it answers a ping;"
                f" killed if still silent after ping_timeout ({self.ping_timeout:g} s)"
            ),
        )

    def _responsive(self, pid: int) -> None:
        since = self.unresponsive_since
        if since is None:
            return
        self.unresponsive_since = None
        log.info(
            "owner_responsive",
            owner=self.owner,
            pid=pid,
            silent=round(trio.current_time() - since + self.stall_after, 3),
        )

    async def _expire(self) -> None:
        """Give up the slices whose ``slice_timeout`` passed (the oldest first: they were
        queued in deadline order, the timeout being one for all)."""
        while True:
            if not self._pending:
                await self._wake_timer.wait()
                self._wake_timer = trio.Event()
                continue
            key, item = next(iter(self._pending.items()))
            now = trio.current_time()
            if item.deadline > now:
                with trio.move_on_at(item.deadline):
                    await trio.sleep(math.inf)
                continue
            del self._pending[key]
            self._settled(item.events)
            self.timeouts += 1
            log.warning(
                "owner_slice_timeout",
                owner=self.owner,
                shard=item.shard,
                seq=key[0].seq,
                waited=self.slice_timeout,
            )
            item.done(
                self._unavailable(
                    item.shard, f"no verdicts within {self.slice_timeout:g} s (slice_timeout)"
                )
            )


def _nothing() -> None:
    pass


class PacedBudget(EventBudget):
    """The gateway's in-flight budget: ``limit`` events in the whole gateway, and spent
    too while any owner holds its allowance (module doc, Pacing), so that ingest stops
    reading from every connection then."""

    def __init__(self, limit: int, links: list[OwnerLink]) -> None:
        super().__init__(limit)
        self.links = links
        for link in links:
            link.max_allowance = max(MIN_ALLOWANCE, limit)
            link.allowance = min(link.allowance, link.max_allowance)
            link.on_room = self._room

    @property
    def full(self) -> bool:
        return self.used >= self.limit or any(link.saturated for link in self.links)

    async def wait_for_room(self) -> None:
        """Return once the gateway's budget has room and no owner holds its allowance."""
        if not self.full:
            return
        self.waits += 1
        while self.full:
            await self._lot.park()

    def _room(self) -> None:
        if self._lot:
            self._lot.unpark_all()
