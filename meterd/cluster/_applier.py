"""The owner side of cluster mode: a shard's log applied to its cell, in stream order.

A :class:`ShardApplier` holds one shard (one :class:`~meterd.partitions._cell.Cell`, one
store file) whose lease this node holds. It:

1. reads from the cell's store the last stream sequence it applied of the shard's log
   (``log_positions``, schema v12; 0 for a new store), and reads the subject
   ``meterd.log.<shard>`` of the log stream from the next sequence, in order
   (:class:`~meterd.cluster.LogReader`);
2. submits each :class:`~meterd.partitions.Slice` to the cell's accounts as the owner process
   does (its events grouped by account, its audit rejections), with its
   :class:`~meterd.store.LogPosition` (the sequence and the one before it), and with the
   slice's ``received_at`` (in the log: the gateway's clock when it split the batch) as the
   writer's time, so every decision is a function of the log and of the store;
3. once the writer committed it, publishes the slice's
   :class:`~meterd.partitions.Verdicts` (or :class:`~meterd.partitions.Unavailable`) to
   the gateway that published it (core NATS, ``meterd.verdicts.<gateway>``).

Slices are submitted as they are read (the writer group-commits many), within the cell's
in-flight budget. Each commits in the transaction of its position, after its predecessor's
(the writer checks it), so a crash at any moment leaves the store at a position whose slices
are all applied, and none after it: a restart replays from there, exactly once. If a slice
could not be committed (the group failed: a full disk), every slice after it fails too (its
predecessor is not stored); the applier waits for those answers, reads the stored position
again and replays from it (``replays`` counts it).

A message that is not a slice, or a slice naming an account outside its shard, still advances
the position (an empty batch), so the log never stalls on it; the second is answered
``Unavailable``.

Fencing (with a :class:`~._placement.Fence`): every slice's position carries the fence, which
the store checks right before the group commits (a lapsed fence rolls the group back:
nothing written); a verdict is only published while the fence holds, and stamped with its
epoch. While the fence is lapsed the applier waits (a renewal that succeeds lifts it; a
lease lost stops the shard).

Before reading, the applier checks that the stream still holds every slice of the shard
after the store's position: the stream must start at or before ``covered + 1``, where
``covered`` (at least the position) is a sequence up to which no slice of the shard is
missing from the store (known from the snapshot it was restored from, see
:mod:`._snapshot`): sequences dropped by retention that held only other shards' slices do
not matter. If retention dropped some this shard needs, rebuilding it from the log is
impossible and the applier refuses loudly (``cluster.applier.log_truncated``,
:attr:`refused`) instead of skipping them: the shard then answers nothing (its slices time
out, ``unavailable``).

When it first reaches the end of the log after starting it logs ``cluster.applier.caught_up``
(the position it started from, the slices it replayed, the seconds it took).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from typing import Final

import msgspec
import nats.js.errors
import structlog
import trio

from meterd.billing import Period
from meterd.billing._corrections import AdjustmentRequest
from meterd.billing._errors import BillingError, InvalidRequest
from meterd.billing._errors import Unavailable as BillingUnavailable
from meterd.config import PartitionsConfig
from meterd.model import Event
from meterd.partitions._cell import Cell
from meterd.partitions._messages import (
    Close,
    Correction,
    Slice,
    Unavailable,
    Verdicts,
    decode,
    encode,
)
from meterd.partitions._owner import _outcome, group_by_account
from meterd.store import AppendResult, InvalidEvents, LogPosition, RejectedEvent

from ._corrections import Outcome, Waiter, request_of
from ._log import STREAM, log_name, log_subject, verdict_subject
from ._nats import ClusterUnavailable, Connection, LogMessage, LogReader
from ._placement import Fence

__all__ = ["ShardApplier", "applied_position"]

log = structlog.get_logger("meterd.cluster.applier")

FETCH_BATCH: Final = 256
DRAIN_TIMEOUT: Final = 30.0  # seconds a restarted applier waits for its predecessor's slices


async def applied_position(cell: Cell, shard: int) -> int:
    """The last sequence of shard ``shard``'s log that ``cell``'s store has applied (0: none)."""
    name = log_name(shard)

    def query(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM log_positions WHERE log = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    return await cell.store.reader.run(query)


RETRY_DELAY: Final = 0.1  # seconds: first wait before a correction is tried again
RETRY_MAX: Final = 5.0


class _Replay(Exception):
    """A slice was not committed: replay the log from the stored position."""


class ShardApplier:
    """Applies shard ``shard``'s log to ``cell`` (see the module doc). Run :meth:`run`."""

    def __init__(
        self,
        connection: Connection | None,
        cell: Cell,
        shard: int,
        partitions: PartitionsConfig,
        *,
        fetch_timeout: float = 1.0,
        fence: Fence | None = None,
        covered: int = 0,
    ) -> None:
        self.connection = connection
        self.covered = covered  # no slice of the shard is missing up to here (see the doc)
        self.started_from: int | None = None  # the position the first read started from
        self.caught_up: float | None = None  # seconds from the first read to the log's end
        self._reading_since = 0.0
        self.fence = fence
        self.refused: str | None = None  # why the log cannot rebuild this shard
        self.fenced_verdicts = 0  # verdicts not published: the fence had lapsed
        self.fence_waits = 0  # times it waited for a lapsed fence before reading
        self.cell = cell
        self.shard = shard
        self.partitions = partitions
        self._shard_of: dict[str, int] = {}  # account -> shard, checked once per account
        self.fetch_timeout = fetch_timeout
        self.log = log_name(shard)
        self.subject = log_subject(shard)
        self.applied = 0  # the last sequence known committed
        self.read = 0  # the last sequence read and submitted
        self.slices = 0  # slices submitted (replays included)
        self.replays = 0
        self.pending = 0  # slices of the log after the last one read (when it was read)
        self._in_flight = 0
        self._drained = trio.Event()
        self._failure: BaseException | None = None
        self._changed = trio.Event()
        self._outbox, self.verdicts = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self._unsent = 0  # verdicts queued and not handed to NATS yet
        self._paused = False
        self._waiters: dict[str, Waiter] = {}  # corrections published here, by id
        self.corrections = 0  # corrections applied (replays included)
        self._closes: dict[str, trio.Event] = {}  # months whose Close someone waits for
        self.closes = 0  # Close messages applied (replays and repeats included)
        self.retry_delay = RETRY_DELAY  # first wait while billing cannot decide (seconds)

    def expect(self, correction_id: str) -> Waiter:
        """A waiter for the outcome of the correction ``correction_id`` (about to be
        published by this node): set once this applier applied it."""
        waiter = self._waiters[correction_id] = Waiter()
        return waiter

    def forget(self, correction_id: str) -> None:
        self._waiters.pop(correction_id, None)

    def expect_close(self, period: str) -> trio.Event:
        """Set once this applier has applied a ``Close`` of ``period`` (or found the month
        closed at one): see :mod:`._closes`."""
        event = self._closes.get(period)
        if event is None:
            event = self._closes[period] = trio.Event()
        return event

    @property
    def lag(self) -> int:
        """Slices of the shard's log not applied yet: read and not committed, and those after
        the last read (as the stream counted them then)."""
        return self.pending + self._in_flight

    async def wait_applied(self, seq: int) -> None:
        """Until the store has committed the log up to ``seq`` (for tests and handoffs)."""
        while self.applied < seq:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply the log until cancelled; reports the stored position once reading."""
        connection = self.connection
        if connection is None:
            raise ValueError(f"the applier of shard {self.shard} has no NATS connection")
        # A previous incarnation (restarted by the supervisor) may have slices still in the
        # writer: their outcome first, then the stored position (if they never answer, the
        # position check still keeps a slice from being applied twice).
        with trio.move_on_after(DRAIN_TIMEOUT):
            await self.wait_drained()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_verdicts, connection)
            first = True
            while True:
                if self.fence is not None and self.fence.check() is not None:
                    self.fence_waits += 1
                    log.warning(
                        "cluster.applier.fenced",
                        shard=self.shard,
                        reason=self.fence.check(),
                        hint="the shard's lease is not certainly held: nothing is applied"
                        " until a renewal succeeds (or the shard is stopped)",
                    )
                    await self.fence.wait_held()
                stored = await applied_position(self.cell, self.shard)
                self.applied = self.read = stored
                self._failure = None
                await self._check_retention(connection, stored)
                log.info("cluster.applier.reading", shard=self.shard, log=self.log, after=stored)
                try:
                    async with connection.reader(
                        STREAM, self.subject, start_seq=stored + 1
                    ) as reader:
                        if first:
                            first = False
                            self.started_from = stored
                            self._reading_since = time.monotonic()
                            task_status.started(stored)
                        await self._follow(connection, reader)
                except _Replay:
                    pass
                await self.wait_drained()
                self.replays += 1
                log.warning(
                    "cluster.applier.replay",
                    shard=self.shard,
                    log=self.log,
                    error=str(self._failure),
                    hint="a slice was not committed (see the store's errors); the log is"
                    " replayed from the store's position",
                )

    async def _check_retention(self, connection: Connection, stored: int) -> None:
        """Refuse (log, then wait forever) if the stream dropped sequences after ``stored``."""
        while True:
            try:
                info = await connection.stream_info(STREAM)
                break
            except ClusterUnavailable as error:
                log.warning("cluster.applier.unavailable", shard=self.shard, error=str(error))
                await connection.wait_connected(math.inf)
        if info.first_seq <= max(stored, self.covered) + 1:
            return
        self.refused = (
            f"the log {STREAM} now starts at sequence {info.first_seq}, but this node's store of"
            f" shard {self.shard} has applied only up to {stored}: sequences {stored + 1}.."
            f"{info.first_seq - 1} are gone (retention), and it cannot tell that none was"
            f" a slice of this shard (known complete up to {max(stored, self.covered)}), so the"
            " shard cannot be rebuilt from the log"
        )
        log.error(
            "cluster.applier.log_truncated",
            shard=self.shard,
            log=self.log,
            applied=stored,
            covered=max(stored, self.covered),
            first_seq=info.first_seq,
            error=self.refused,
            hint="a snapshot newer than this position is needed: check that snapshots are"
            " taken (cluster.snapshot.taken) and that [cluster] retention covers at least two"
            " snapshot_interval; else restore the shard's store file from a node that held it"
            " (or a backup) into this node's store directory and restart it",
        )
        await trio.sleep_forever()

    async def _follow(self, connection: Connection, reader: LogReader) -> None:
        while True:
            try:
                messages = await reader.fetch(FETCH_BATCH, timeout=self.fetch_timeout)
            except ClusterUnavailable as error:
                log.warning("cluster.applier.unavailable", shard=self.shard, error=str(error))
                await connection.wait_connected(math.inf)
                continue
            for message in messages:
                if self._paused:
                    await trio.sleep_forever()  # quiesced: a handoff stops the shard next
                if self._failure is not None:
                    raise _Replay()
                if self.fence is not None and self.fence.check() is not None:
                    raise _Replay()  # wait for the fence (or be stopped), then go on
                await self.apply(message)
            if self.caught_up is None and await self._at_end(connection, messages):
                self.caught_up = time.monotonic() - self._reading_since
                log.info(
                    "cluster.applier.caught_up",
                    shard=self.shard,
                    started_from=self.started_from,
                    read=self.read,
                    replayed=self.slices,
                    seconds=round(self.caught_up, 3),
                )
            if self._failure is not None:
                raise _Replay()

    async def _at_end(self, connection: Connection, messages: list[LogMessage]) -> bool:
        """Whether the reader has reached the end of the shard's log. An empty fetch is the
        end only when the subject holds nothing after what was read: a fetch also comes
        back empty when its timeout passed first (a busy machine, a consumer being made
        again), and a new owner must not answer from a partly replayed shard."""
        if messages:
            return messages[-1].pending == 0
        js, subject = connection._jetstream, self.subject

        async def last() -> int:
            try:
                message = await js.get_last_msg(STREAM, subject)
            except nats.js.errors.NotFoundError:
                return 0
            return int(message.seq or 0)

        try:
            return await connection._run(f"last message of {subject}", last) <= self.read
        except ClusterUnavailable:
            return False

    async def wait_drained(self) -> None:
        """Until every submitted slice has its answer from the writer."""
        while self._in_flight:
            self._drained = trio.Event()
            await self._drained.wait()

    async def apply(self, message: LogMessage) -> None:
        """Submit one message of the log (the next one after :attr:`read`); never waits
        for its commit, only for room in the cell's budget."""
        fence = self.fence
        position = LogPosition(
            self.log, message.seq, self.read, None if fence is None else fence.check
        )
        self.read = message.seq
        self.pending = message.pending
        piece: Slice | None = None
        groups: list[tuple[str, list[Event]]] = []
        indexes: list[list[int]] = []
        problem: str | None = None
        try:
            decoded = decode(message.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            problem = f"not a slice: {error}"
        else:
            if isinstance(decoded, Correction) and decoded.shard == self.shard:
                await self._correct(message, decoded, position)
                return
            if isinstance(decoded, Close) and decoded.shard == self.shard:
                try:
                    period = Period.parse(decoded.period)
                except ValueError as error:
                    problem = f"a close of no month: {error}"
                else:
                    await self._close(message, decoded, period, position)
                    return
            if not isinstance(decoded, Slice) or decoded.shard != self.shard:
                problem = f"not a slice of shard {self.shard}: {type(decoded).__name__}"
            else:
                piece = decoded
                try:
                    groups, indexes = self._groups(piece)
                except ValueError as error:
                    problem = str(error)
        if problem is not None:
            log.warning(
                "cluster.applier.skipped",
                shard=self.shard,
                seq=message.seq,
                msg_id=message.msg_id,
                problem=problem,
                hint="the message is passed over (its position is stored); check that every"
                " node runs the same [partitions] and version",
            )
        rejected = (
            [
                RejectedEvent(r.account, r.id, r.code, r.message)
                for r in piece.rejected
                if r.account is not None
            ]
            if piece is not None and problem is None
            else []
        )
        count = sum(len(events) for _, events in groups)
        budget = self.cell.accounts.budget
        if count:
            await budget.wait_for_room()
            budget.take(count)
        self._in_flight += 1
        self.slices += 1

        def done(outcome: list[AppendResult] | BaseException) -> None:
            if count:
                budget.give(count)
            self._committed(message.seq, outcome)
            if piece is None:
                return
            answer: Verdicts | Unavailable
            if problem is not None:
                answer = Unavailable(piece.batch, piece.shard, problem)
            else:
                answer = _outcome(piece, groups, indexes, outcome)
                if isinstance(answer, Verdicts) and fence is not None:
                    answer = msgspec.structs.replace(answer, epoch=fence.epoch)
            if fence is not None and fence.check() is not None:
                self.fenced_verdicts += 1
                return
            self._unsent += 1
            self._outbox.send_nowait((verdict_subject(piece.batch.gateway), encode(answer)))

        received_at = piece.received_at if piece is not None else message.time_ms
        try:
            self.cell.accounts.submit(
                groups if problem is None else [],
                done,
                producer=piece.producer if piece is not None else None,
                seq=piece.batch.seq if piece is not None else None,
                rejected=rejected,
                log_position=position,
                received_at=received_at,
            )
        except Exception as error:  # a bug: this slice is not applied; replay it
            log.exception("cluster.applier.submit_failed", shard=self.shard, seq=message.seq)
            done(error)

    async def _correct(
        self, message: LogMessage, correction: Correction, position: LogPosition
    ) -> None:
        """Apply a correction (see :mod:`._corrections`): after every slice before it is
        committed (a void's event is in the store), into billing with its sequence (once:
        a replay finds it there), then advance the store's position past it."""
        await self.wait_drained()
        if self._failure is not None:
            raise _Replay()
        if self.fence is not None and self.fence.check() is not None:
            raise _Replay()
        outcome = await self._record(message.seq, correction)
        if not isinstance(outcome, BillingError):
            log.info(
                "cluster.applier.corrected",
                shard=self.shard,
                seq=message.seq,
                id=correction.id,
                kind=correction.kind,
                account=correction.account,
                record=outcome[0].id,
            )
        self.corrections += 1

        def answer() -> None:
            waiter = self._waiters.get(correction.id)
            if waiter is not None:
                waiter.set(outcome)

        self._move_past(message, position, correction.at, answer)

    async def _close(
        self, message: LogMessage, close: Close, period: Period, position: LogPosition
    ) -> None:
        """Apply a month's close (see :mod:`._closes`): after every message before it is
        committed, the shard's figures of the month are fixed in billing with the message's
        sequence (once: a replay, or a second ``Close`` of the month, finds it closed), then
        the store's position moves past it."""
        await self.wait_drained()
        if self._failure is not None:
            raise _Replay()
        if self.fence is not None and self.fence.check() is not None:
            raise _Replay()
        fence = None if self.fence is None else self.fence.check
        try:
            closure, made = await self.cell.billing.close_from_log(
                period, close.by, close.at, log_seq=message.seq, fence=fence
            )
        except BillingUnavailable:  # fenced inside the transaction: nothing written
            raise _Replay() from None
        except (sqlite3.Error, OSError, BillingError) as error:
            self._failure = error
            log.error(  # noqa: TRY400 (the error is in the line)
                "cluster.applier.close_failed",
                shard=self.shard,
                seq=message.seq,
                period=close.period,
                error=str(error),
                hint="the billing database could not be written (see its path and free"
                " space); the log is replayed from the store's position",
            )
            raise _Replay() from None
        log.info(
            "cluster.applier.closed" if made else "cluster.applier.close_found",
            shard=self.shard,
            seq=message.seq,
            period=close.period,
            by=close.by,
            at=close.at,
            accounts=closure.accounts,
            fixed_at_seq=closure.log_seq,
        )
        self.closes += 1

        def answer() -> None:
            waiting = self._closes.pop(close.period, None)
            if waiting is not None:
                waiting.set()

        self._move_past(message, position, close.at, answer)

    def _move_past(
        self, message: LogMessage, position: LogPosition, at: int, answer: Callable[[], None]
    ) -> None:
        """Advance the store's position past a message applied outside the store (a
        correction, a close: billing has it), then ``answer`` whoever waits for it. A
        submit that raises is a bug: the message is replayed (billing finds it: once)."""
        self._in_flight += 1
        self.slices += 1

        def done(result: list[AppendResult] | BaseException) -> None:
            self._committed(message.seq, result)
            answer()

        try:
            self.cell.accounts.submit(
                [],
                done,
                producer=None,
                seq=None,
                rejected=[],
                log_position=position,
                received_at=at,
            )
        except Exception as error:
            log.exception("cluster.applier.submit_failed", shard=self.shard, seq=message.seq)
            done(error)

    async def _record(self, seq: int, correction: Correction) -> Outcome:
        """The correction of log sequence ``seq`` written to billing (or found there). While
        billing cannot read whether its month is closed (the bucket, NATS), it waits and
        tries again: a moment's outage must not decide what the log records."""
        delay = self.retry_delay
        while True:
            try:
                return await self._record_once(seq, correction)
            except BillingUnavailable as error:
                if self.fence is not None and self.fence.check() is not None:
                    raise _Replay() from None
                log.warning(
                    "cluster.applier.correction_waiting",
                    shard=self.shard,
                    seq=seq,
                    id=correction.id,
                    error=str(error),
                    retry_in=delay,
                    hint="the shard's log waits at this correction (nothing after it is"
                    " applied) until the closed-months bucket answers: check the NATS servers",
                )
                await trio.sleep(delay)  # a back-off before the next try
                delay = min(2 * delay, RETRY_MAX)

    async def _record_once(self, seq: int, correction: Correction) -> Outcome:
        billing = self.cell.billing
        try:
            found = await billing.db.logged_correction(seq)
            if found is not None:  # applied before this replay (billing ahead of the store)
                log.info("cluster.applier.correction_found", shard=self.shard, seq=seq)
                return found, None
            request = request_of(correction)
            # checked again inside billing's transaction, right before it commits
            fence = None if self.fence is None else self.fence.check
            if isinstance(request, AdjustmentRequest):
                return await billing.record_adjustment(
                    request, correction.at, log_seq=seq, fence=fence
                )
            return await billing.record_void(request, correction.at, log_seq=seq, fence=fence)
        except BillingUnavailable:
            raise
        except (BillingError, ValueError, ArithmeticError) as error:
            if not isinstance(error, BillingError):
                error = InvalidRequest(f"correction {correction.id}: {error}")
            log.warning(
                "cluster.applier.correction_refused",
                shard=self.shard,
                seq=seq,
                id=correction.id,
                account=correction.account,
                error=str(error),
                hint="nothing was recorded; the answer says why",
            )
            return error
        except (sqlite3.Error, OSError) as error:
            self._failure = error
            log.error(  # noqa: TRY400 (the error is in the line)
                "cluster.applier.correction_failed",
                shard=self.shard,
                seq=seq,
                id=correction.id,
                error=str(error),
                hint="the billing database could not be written (see its path and free"
                " space); the log is replayed from the store's position",
            )
            raise _Replay() from None

    def _committed(self, seq: int, outcome: list[AppendResult] | BaseException) -> None:
        """A submitted log message's transaction ended: the position ``seq`` is applied,
        or the applier fails (an error other than events the store refused)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()
        if isinstance(outcome, BaseException) and not isinstance(outcome, InvalidEvents):
            if self._failure is None:
                self._failure = outcome
        else:
            self.applied = max(self.applied, seq)
            self._changed.set()
            self._changed = trio.Event()

    def _groups(self, piece: Slice) -> tuple[list[tuple[str, list[Event]]], list[list[int]]]:
        return group_by_account(piece, self.partitions, self._shard_of)

    async def _publish_verdicts(self, connection: Connection) -> None:
        async for subject, data in self.verdicts:
            try:
                await self._publish_verdict(connection, subject, data)
            finally:
                self._unsent -= 1
                self._changed.set()
                self._changed = trio.Event()

    async def _publish_verdict(self, connection: Connection, subject: str, data: bytes) -> None:
        if self.fence is not None and self.fence.check() is not None:
            self.fenced_verdicts += 1
            return
        try:
            await connection.send(subject, data, flush=False)
        except ClusterUnavailable as error:  # the gateway times the slice out
            log.warning(
                "cluster.applier.verdict_lost",
                shard=self.shard,
                subject=subject,
                error=str(error),
            )

    async def quiesce(self) -> int:
        """Stop reading the log, then wait until every slice read is committed and its
        verdict handed to NATS (before a handoff: the new owner starts after the position
        returned, so nobody would answer a slice committed here whose verdict was not
        sent). The caller bounds the wait."""
        self._paused = True
        self._changed.set()
        self._changed = trio.Event()
        while self._in_flight or self._unsent:
            await self._changed.wait()
        return self.applied
