"""A partition owner process: the cells of its shards, served to the gateway (docs/partitions.md).

Owner ``k`` holds the shards ``shards_of_owner(k, config.partitions)``, each a
:class:`~._cell.Cell` named ``shard-SSS`` on the shard's files (:func:`~._layout.shard_files`),
under one supervisor::

    owner-K (one_for_one)
    ├── shard-000 (rest_for_one)
    │   ├── store-writer
    │   ├── accounts (meters, sweeper, deliverer)
    │   └── deliveries
    └── shard-00N ...

It serves the gateway over a :class:`~._transport.Transport` (``UnixTransport`` at the socket
path). On each channel it first sends :class:`~._messages.Hello`, then answers, each message
as it comes (the channel's reader never waits for a commit or a request):

* :class:`~._messages.Slice`: its events grouped by account (each account once, the slice's
  ``index``es kept) and submitted to the shard's writer as one batch (``producer``, ``seq`` =
  the batch's, the slice's ``rejected`` events for the audit trail). Once committed,
  :class:`~._messages.Verdicts`: ``accepted`` and ``duplicates`` counted, ``id_conflicts`` and
  ``rejected`` (``time_out_of_range``) by their index in the producer's batch. Slices are
  submitted as they arrive, so the writer group-commits many at once; while the shard's
  in-flight budget is spent they wait (in order) for room. :class:`~._messages.Unavailable`
  (never verdicts) when the writer could not commit, the shard is not this owner's, an
  event's account is not in the shard, or the owner is stopping.
* :class:`~._messages.Slices`: each part as the :class:`~._messages.Slice` of its shard
  (above); one answer for the message once every part has its own: one
  :class:`~._messages.Verdicts` (the parts' counts summed, their rejections by index) or,
  as soon as a part has it, one :class:`~._messages.Unavailable`.
* :class:`~._messages.Query` ``op="ping"``: ``Answer(value="pong")`` (the gateway's liveness
  check); ``op="http"``: the request run through the shard's own starlette app (the operator
  API, in-process: an ASGI call, no socket), answered ``{"status", "headers", "body"}``.
* :class:`~._messages.TreeRequest`: :class:`~._messages.TreeSnapshot` of ``owner-K``.
* anything else: an :class:`~._messages.Answer` whose ``error`` names it; never a crash.

Stop (:meth:`Owner.stop`, SIGTERM or SIGINT in :func:`main`): new slices are answered
``Unavailable``; the tree stops in order (each cell's actors checkpoint, its writer commits
what is queued and the verdicts of those slices are sent); then the channels close.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any, Final

import structlog
import trio
from starlette.applications import Starlette

import supervisors as sv
from meterd import __version__
from meterd.api.metrics import owner_slice_histogram
from meterd.config import Config, PartitionsConfig
from meterd.model import Event, new_event
from meterd.store import AppendResult, CommitRounds, RejectedEvent
from meterd.store._appends import conflict_message
from meterd.store.retention import too_late_message

from ._cell import Cell
from ._layout import shard_of, shards_directory, shards_of_owner
from ._messages import (
    Answer,
    Hello,
    Message,
    Query,
    Rejection,
    Slice,
    Slices,
    TreeRequest,
    TreeSnapshot,
    Unavailable,
    Verdicts,
)
from ._transport import Channel, ChannelClosed, Transport, UnixTransport

__all__ = ["HTTP_TIMEOUT", "Owner", "call_asgi"]

log = structlog.get_logger("meterd.partitions.owner")

HTTP_TIMEOUT: Final = 60.0
"""Seconds an HTTP query may run in a cell before it is answered with an error (a
streaming route, such as the console's event stream, never ends: it cannot be forwarded)."""
FLUSH_GRACE: Final = 5.0
"""Seconds the verdicts queued at a stop are given to reach the gateway."""

SHARD_CACHE: Final = 1 << 18
"""Accounts whose shard is remembered (the check that a slice's accounts are in its shard
hashes each account once, not once per slice); the memory is forgotten when full."""

Post = Callable[[Message], None]
_account_of: Final = attrgetter("account")
_index_of: Final = attrgetter("index")
_id_of: Final = attrgetter("id")
_meter_of: Final = attrgetter("meter")
_quantity_of: Final = attrgetter("quantity")
_time_of: Final = attrgetter("time")
_properties_of: Final = attrgetter("properties")
_accepted_of: Final = attrgetter("accepted")
_duplicates_of: Final = attrgetter("duplicates")
_conflicts_of: Final = attrgetter("conflicts")
_too_late_of: Final = attrgetter("too_late")


@dataclass(slots=True)
class _Pending:
    """A slice waiting for room in its shard's in-flight budget."""

    post: Post
    slice: Slice
    groups: list[tuple[str, list[Event]]]
    indexes: list[list[int]]


class Owner:
    """Owner ``number``'s cells, tree and service (see the module doc)."""

    def __init__(self, config: Config, number: int) -> None:
        self.config = config
        self.number = number
        self.name = f"owner-{number}"
        self.shards = list(shards_of_owner(number, config.partitions))  # ValueError if none
        self.cells: dict[int, Cell] = {}
        # One commit loop for every shard file of the process: a round commits the files
        # with operations queued together, one transaction each (meterd.store._rounds).
        self.rounds = CommitRounds(config.store.commit_interval.seconds)
        for shard in self.shards:
            cell = Cell.for_shard(config, shard, cells=len(self.shards), rounds=self.rounds)
            cell.attach(cell.supervisor)
            self.cells[shard] = cell
        self.root = sv.Supervisor(
            [cell.supervisor.as_child() for cell in self.cells.values()],
            strategy=sv.Strategy.ONE_FOR_ONE,
            name=self.name,
        )
        self.stopping = False
        self._waiting: dict[int, deque[_Pending]] = {shard: deque() for shard in self.shards}
        self._wake: dict[int, trio.Event] = {shard: trio.Event() for shard in self.shards}
        self._outboxes: set[trio.MemorySendChannel[Message]] = set()
        self._flushed: set[trio.Event] = set()
        self._stop = trio.Event()
        self.finished = trio.Event()  # run() returned after a stop
        self.slices = 0  # slices received (counters for tests and logs)
        self._shard_of: dict[str, int] = {}  # account -> shard, checked once per account
        # Each slices message's time in the owner, from its read to its verdicts, observed
        # in the cell of its first part (meterd_owner_slice_seconds, docs/api.md).
        self._slice_seconds = {
            shard: owner_slice_histogram(cell.metrics.registry)
            for shard, cell in self.cells.items()
        }

    # ---- running ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the shards' directory and open each cell's billing database."""
        directory = shards_directory(self.config)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for cell in self.cells.values():
            await cell.open()

    async def aclose(self) -> None:
        for cell in self.cells.values():
            await cell.aclose()

    async def run(
        self,
        address: str,
        transport: Transport | None = None,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the tree, serve at ``address``, report ``address`` started; until
        :meth:`stop`, then stop in order (see the module doc)."""
        transport = UnixTransport() if transport is None else transport
        async with trio.open_nursery() as nursery:
            await nursery.start(self.rounds.run)  # before the writers, cancelled after them
            await nursery.start(self.root.run)
            for shard in self.shards:
                nursery.start_soon(self._admit, shard)
            serving = trio.CancelScope()

            async def serve(*, task_status: trio.TaskStatus[Any]) -> None:
                with serving:
                    await transport.serve(address, self._channel, task_status=task_status)

            await nursery.start(serve)
            log.info("owner_started", shards=self.shards, socket=address, version=__version__)
            task_status.started(address)
            await self._stop.wait()
            log.info("owner_stopping")
            self.stopping = True
            self._refuse_waiting()
            self.root.stop()
            await self.root.wait_stopped()
            with trio.move_on_after(FLUSH_GRACE):  # the verdicts of the last commits
                for outbox in list(self._outboxes):
                    outbox.close()
                for flushed in list(self._flushed):
                    await flushed.wait()
            serving.cancel()
            nursery.cancel_scope.cancel()  # the admitters
        writers = [cell.store.writer.stats for cell in self.cells.values()]
        log.info(
            "owner_stopped",
            rounds=self.rounds.rounds,
            files_written=self.rounds.files,
            commits=sum(stats.commits for stats in writers),
            operations=sum(stats.operations for stats in writers),
            events=sum(stats.events_accepted + stats.events_duplicate for stats in writers),
        )
        self.finished.set()

    def stop(self) -> None:
        self._stop.set()

    # ---- one channel -----------------------------------------------------------------------

    async def _channel(self, channel: Channel) -> None:
        outbox, messages = trio.open_memory_channel[Message](math.inf)
        flushed = trio.Event()
        self._outboxes.add(outbox)
        self._flushed.add(flushed)

        def post(message: Message) -> None:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                outbox.send_nowait(message)

        try:
            async with trio.open_nursery() as nursery:

                async def send_all() -> None:
                    try:
                        async for message in messages:
                            await channel.send(message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                        log.warning("owner_channel_lost", peer=channel.peer, error=str(error))
                        nursery.cancel_scope.cancel()
                    finally:
                        flushed.set()

                await channel.send(Hello(self.name, os.getpid(), self.shards))
                nursery.start_soon(send_all)
                while True:
                    try:
                        message = await channel.receive()
                    except ChannelClosed:
                        nursery.cancel_scope.cancel()
                        return
                    try:
                        self._handle(message, post, nursery)
                    except Exception as error:  # a bug: answer it, keep the owner up
                        log.exception("owner_message_failed", kind=type(message).__name__)
                        post(_failed(message, error))
        finally:
            self._outboxes.discard(outbox)
            self._flushed.discard(flushed)
            outbox.close()

    def _handle(self, message: Message, post: Post, nursery: trio.Nursery) -> None:
        """One message from the gateway; never awaits (what takes time runs on its own)."""
        if isinstance(message, Slice):
            self.slices += 1
            self._slice(message, post)
        elif isinstance(message, Slices):
            self.slices += len(message.parts)
            self._slices(message, post)
        elif isinstance(message, Query):
            if message.op == "ping":
                post(Answer(message.id, value="pong"))
            elif message.op == "http":
                nursery.start_soon(self._http, message, post)
            else:
                post(
                    Answer(
                        message.id,
                        error=f"{self.name} does not answer op {message.op!r}: it answers"
                        " 'http' (the operator API of a shard) and 'ping'",
                    )
                )
        elif isinstance(message, TreeRequest):
            try:
                tree = sv.snapshot(self.root, limit=message.limit, total=message.total)
            except ValueError as error:
                post(Answer(message.id, error=f"tree request {message.id}: {error}"))
            else:
                post(TreeSnapshot(message.id, self.name, os.getpid(), tree))
        else:
            kind = type(message).__name__
            log.warning("owner_unexpected_message", kind=kind)
            post(
                Answer(
                    getattr(message, "id", 0),
                    error=f"{self.name} cannot handle a {kind} message: an owner is sent"
                    " slices, queries and tree requests only",
                )
            )

    # ---- slices ----------------------------------------------------------------------------

    def _slices(self, message: Slices, post: Post) -> None:
        """Each part as the slice of its shard; one answer once every part has its own."""
        if not message.parts:
            post(Verdicts(message.batch, message.shard, 0, 0))
            return
        histogram = self._slice_seconds.get(message.shard)
        if histogram is not None:
            post = _timed(post, histogram.observe, trio.current_time())
        joined = _Joined(message, post)
        batch, producer, received_at = message.batch, message.producer, message.received_at
        for part in message.parts:
            piece = Slice(batch, part.shard, producer, received_at, part.events, part.rejected)
            self._slice(piece, joined.part_done)

    def _slice(self, piece: Slice, post: Post) -> None:
        cell = self.cells.get(piece.shard)
        if cell is None:
            post(
                Unavailable(
                    piece.batch,
                    piece.shard,
                    f"{self.name} does not hold shard {piece.shard} (it holds {self.shards});"
                    " the gateway and the owner disagree on [partitions]: run both on one config",
                )
            )
            return
        if self.stopping:
            post(Unavailable(piece.batch, piece.shard, self._stopping_reason()))
            return
        try:
            groups, indexes = self._groups(piece)
        except ValueError as error:
            post(Unavailable(piece.batch, piece.shard, str(error)))
            return
        waiting = self._waiting[piece.shard]
        if waiting or cell.accounts.budget.full:
            waiting.append(_Pending(post, piece, groups, indexes))
            self._wake[piece.shard].set()
            return
        self._submit(cell, post, piece, groups, indexes)

    def _groups(self, piece: Slice) -> tuple[list[tuple[str, list[Event]]], list[list[int]]]:
        return group_by_account(piece, self.config.partitions, self._shard_of)

    def _submit(
        self,
        cell: Cell,
        post: Post,
        piece: Slice,
        groups: list[tuple[str, list[Event]]],
        indexes: list[list[int]],
    ) -> None:
        budget = cell.accounts.budget
        count = len(piece.events)
        rejected = [
            RejectedEvent(r.account, r.id, r.code, r.message)
            for r in piece.rejected
            if r.account is not None
        ]

        def done(outcome: list[AppendResult] | BaseException) -> None:
            budget.give(count)
            post(_outcome(piece, groups, indexes, outcome))

        budget.take(count)
        try:
            cell.accounts.submit(
                groups, done, producer=piece.producer, seq=piece.batch.seq, rejected=rejected
            )
        except Exception as error:  # a bug: the slice still gets an answer
            budget.give(count)
            log.exception("owner_submit_failed", shard=piece.shard)
            post(Unavailable(piece.batch, piece.shard, f"the slice was not submitted: {error}"))

    async def _admit(self, shard: int) -> None:
        """Submit the shard's waiting slices, in order, as its budget has room."""
        cell, waiting = self.cells[shard], self._waiting[shard]
        while True:
            await self._wake[shard].wait()
            self._wake[shard] = trio.Event()
            while waiting:
                await cell.accounts.budget.wait_for_room()
                if not waiting:
                    break
                pending = waiting.popleft()
                if self.stopping:
                    pending.post(Unavailable(pending.slice.batch, shard, self._stopping_reason()))
                    continue
                self._submit(cell, pending.post, pending.slice, pending.groups, pending.indexes)

    def _refuse_waiting(self) -> None:
        for shard, waiting in self._waiting.items():
            while waiting:
                pending = waiting.popleft()
                pending.post(Unavailable(pending.slice.batch, shard, self._stopping_reason()))

    def _stopping_reason(self) -> str:
        return f"{self.name} is stopping; re-send the batch once it is back"

    # ---- HTTP queries ----------------------------------------------------------------------

    async def _http(self, query: Query, post: Post) -> None:
        cell = self.cells.get(query.shard)
        if cell is None:
            post(
                Answer(
                    query.id,
                    error=f"{self.name} does not hold shard {query.shard} (it holds"
                    f" {self.shards}); ask the owner of that shard",
                )
            )
            return
        if self.stopping:
            post(Answer(query.id, error=self._stopping_reason().replace("batch", "request")))
            return
        try:
            request = _http_request(query.args)
        except ValueError as error:
            post(Answer(query.id, error=f"http query {query.id}: {error}"))
            return
        with trio.move_on_after(HTTP_TIMEOUT):
            try:
                value = await call_asgi(cell.app(), *request)
            except Exception as error:
                log.exception("owner_http_failed", shard=query.shard, path=request[1])
                post(
                    Answer(
                        query.id,
                        error=f"{request[0]} {request[1]} failed in shard {query.shard}:"
                        f" {type(error).__name__}: {error}",
                    )
                )
            else:
                post(Answer(query.id, value=value))
            return
        post(
            Answer(
                query.id,
                error=f"{request[0]} {request[1]} did not finish within {HTTP_TIMEOUT:g} s in"
                f" shard {query.shard} (a streaming route cannot be forwarded)",
            )
        )


def _timed(post: Post, observe: Callable[[float], None], read_at: float) -> Post:
    """``post``, observing the seconds from ``read_at`` to the message's verdicts."""

    def timed(message: Message) -> None:
        if isinstance(message, Verdicts):
            observe(trio.current_time() - read_at)
        post(message)

    return timed


class _Joined:
    """The parts of a :class:`~._messages.Slices`, answered as one: their verdicts summed
    once every part has them, or the first part's :class:`~._messages.Unavailable` at once
    (the producer's batch fails whatever the other parts say; its re-send dedupes them)."""

    __slots__ = ("accepted", "conflicts", "duplicates", "message", "post", "rejected", "waiting")

    def __init__(self, message: Slices, post: Post) -> None:
        self.message = message
        self.post: Post | None = post
        self.waiting = len(message.parts)
        self.accepted = self.duplicates = 0
        self.conflicts: list[Rejection] = []
        self.rejected: list[Rejection] = []

    def part_done(self, answer: Message) -> None:
        post = self.post
        if post is None:  # failed already
            return
        message = self.message
        if not isinstance(answer, Verdicts):
            self.post = None
            reason = answer.reason if isinstance(answer, Unavailable) else str(answer)
            post(Unavailable(message.batch, message.shard, reason))
            return
        self.accepted += answer.accepted
        self.duplicates += answer.duplicates
        self.conflicts += answer.id_conflicts
        self.rejected += answer.rejected
        self.waiting -= 1
        if self.waiting == 0:
            self.post = None
            post(
                Verdicts(
                    message.batch,
                    message.shard,
                    self.accepted,
                    self.duplicates,
                    self.conflicts,
                    self.rejected,
                )
            )


def _failed(message: Message, error: Exception) -> Message:
    """The answer to a message whose handling failed unexpectedly (logged with its trace)."""
    why = f"the owner failed handling a {type(message).__name__}: {type(error).__name__}: {error}"
    if isinstance(message, Slice | Slices):
        return Unavailable(message.batch, message.shard, why)
    return Answer(getattr(message, "id", 0), error=why)


def group_by_account(
    piece: Slice, partitions: PartitionsConfig, known: dict[str, int]
) -> tuple[list[tuple[str, list[Event]]], list[list[int]]]:
    """``piece``'s events by account (each account once, in the order first seen), their
    ``Event``s built for the accounts layer, with each group's indexes in the producer's
    batch. ``known`` caches account -> shard (cleared past :data:`SHARD_CACHE`); an account
    outside ``piece.shard`` is a ``ValueError`` (the gateway and the shard's owner run
    different ``[partitions]``). The owner and the cluster's shard applier both use it."""
    events = piece.events
    count = len(events)
    # Every column of the slice at once, in C (a map per field over the whole slice, not
    # per account: most accounts have one event in a slice, and per-account iterators cost
    # more than the event's own work).
    accounts = list(map(_account_of, events))
    built = list(
        map(
            new_event,
            map(_id_of, events),
            accounts,
            map(_meter_of, events),
            map(_quantity_of, events),
            map(_time_of, events),
            map(_properties_of, events),
            repeat(piece.producer, count),
            repeat(piece.received_at, count),
        )
    )
    indexes = list(map(_index_of, events))
    firsts = dict.fromkeys(accounts)  # each account once, in the order first seen
    _check_shard(piece, firsts, partitions, known)
    if len(firsts) == count:  # every account once (the common case): one event a group
        groups = list(zip(accounts, map(list, zip(built)), strict=True))
        return groups, list(map(list, zip(indexes)))
    by_account: dict[str, tuple[list[int], list[Event]]] = {}
    for account, index, event in zip(accounts, indexes, built, strict=True):
        entry = by_account.get(account)
        if entry is None:
            by_account[account] = ([index], [event])
        else:
            entry[0].append(index)
            entry[1].append(event)
    return (
        [(account, group) for account, (_, group) in by_account.items()],
        [positions for positions, _ in by_account.values()],
    )


def _check_shard(
    piece: Slice, accounts: Iterable[str], partitions: PartitionsConfig, known: dict[str, int]
) -> None:
    """``ValueError`` for the first of ``accounts`` not in ``piece.shard`` (``known``: the
    account -> shard cache, see :func:`group_by_account`)."""
    if set(map(known.get, accounts)) == {piece.shard}:  # every one known, and in it
        return
    for account in accounts:
        shard = known.get(account)
        if shard is None:
            if len(known) >= SHARD_CACHE:
                known.clear()
            shard = known[account] = shard_of(account, partitions)
        if shard != piece.shard:
            raise ValueError(
                f"slice of batch {_batch_name(piece)}: account {account!r} is in shard"
                f" {shard}, not in shard {piece.shard}; the gateway and the shard's owner"
                " disagree on [partitions]: run both on one config"
            )


def _batch_name(piece: Slice) -> str:
    batch = piece.batch
    return f"{batch.gateway}/{batch.connection}/seq {batch.seq}"


def _outcome(
    piece: Slice,
    groups: Sequence[tuple[str, list[Event]]],
    indexes: Sequence[list[int]],
    outcome: list[AppendResult] | BaseException,
) -> Verdicts | Unavailable:
    """The verdicts of a committed slice (indexes into the producer's batch), or why not."""
    if isinstance(outcome, BaseException):
        log.warning("owner_slice_failed", shard=piece.shard, error=str(outcome))
        return Unavailable(
            piece.batch,
            piece.shard,
            f"shard {piece.shard} could not make the slice durable:"
            f" {type(outcome).__name__}: {outcome}",
        )
    accepted = sum(map(len, map(_accepted_of, outcome)))
    duplicates = sum(map(len, map(_duplicates_of, outcome)))
    conflicts: list[Rejection] = []
    rejected: list[Rejection] = []
    if not any(map(_conflicts_of, outcome)) and not any(map(_too_late_of, outcome)):
        return Verdicts(piece.batch, piece.shard, accepted, duplicates)  # the common case
    for (account, events), positions, result in zip(groups, indexes, outcome, strict=True):
        for position in result.conflicts:
            event = events[position]
            conflicts.append(
                Rejection(
                    positions[position],
                    event.id,
                    "id_conflict",
                    conflict_message(account, event.id),
                    account,
                )
            )
        for position in result.too_late:
            event = events[position]
            assert result.horizon is not None
            rejected.append(
                Rejection(
                    positions[position],
                    event.id,
                    "time_out_of_range",
                    too_late_message(event.time, result.horizon),
                    account,
                )
            )
    return Verdicts(piece.batch, piece.shard, accepted, duplicates, conflicts, rejected)


# ---- the HTTP query contract (docs/partitions.md "The owner process") -----------------------


class BadQuery(ValueError):
    """An ``http`` query whose ``args`` break the contract (the error says which)."""


def _http_request(args: dict[str, Any]) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    """``(method, path, query, headers, body)`` of an ``http`` query's ``args``, checked."""
    method, path = args.get("method"), args.get("path")
    query, headers, body = args.get("query", ""), args.get("headers", []), args.get("body", b"")
    if not isinstance(method, str) or not method:
        raise BadQuery(f"args.method must be an HTTP method (a string), not {method!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadQuery(f"args.path must be a path starting with '/', not {path!r}")
    if not isinstance(query, str):
        raise BadQuery(f"args.query must be the raw query string, not {type(query).__name__}")
    if not isinstance(body, bytes | bytearray):
        raise BadQuery(f"args.body must be bytes, not {type(body).__name__}")
    pairs: list[tuple[str, str]] = []
    if not isinstance(headers, list):
        raise BadQuery("args.headers must be a list of [name, value] pairs")
    for header in headers:
        if (
            not isinstance(header, list | tuple)
            or len(header) != 2
            or not all(isinstance(part, str) for part in header)
        ):
            raise BadQuery(f"args.headers: {header!r} is not a [name, value] pair of strings")
        pairs.append((header[0].lower(), header[1]))
    return method.upper(), path, query, pairs, bytes(body)


async def call_asgi(
    app: Starlette,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> dict[str, Any]:
    """Run one request through ``app`` in-process (an ASGI call, no socket):
    ``{"status", "headers", "body"}`` of its response. An exception the app raises after
    it answered (starlette's 500, already logged by the API's handler) is dropped."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": ("127.0.0.1", 0),
        "server": ("owner", 0),
    }
    sent = started = False
    finished = trio.Event()
    status = 500
    answer_headers: list[list[str]] = []
    chunks: list[bytes] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the client "disconnects" once the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, started
        if message["type"] == "http.response.start":
            started = True
            status = int(message["status"])
            answer_headers.extend(
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in message.get("headers", [])
            )
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception:
        if not started:
            raise
    return {"status": status, "headers": answer_headers, "body": b"".join(chunks)}
