"""The gateway side of cluster mode: slices to the log, verdicts back (docs/cluster.md).

:class:`JetStreamLinks` is what the gateway's :class:`~meterd.partitions._gateway.GatewaySubmitter`
sends slices through in cluster mode, in place of the links to local owner processes
(``link_of_shard(shard).send(slice, done)``, the same seam):

* a slice of shard ``s`` is published to ``meterd.log.<s>`` of the log stream with the
  ``Nats-Msg-Id`` of (gateway, connection, seq, shard) (:func:`~._log.slice_msg_id`); a
  publish that NATS did not acknowledge is re-sent with its id until the slice's timeout;
* the shard's owner (wherever it runs) applies it in stream order and publishes its
  :class:`~meterd.partitions.Verdicts` to ``meterd.verdicts.<gateway>``, which this gateway
  subscribes to; ``done`` gets them;
* ``done`` gets :class:`~meterd.partitions.OwnerUnavailable` (the producer's batch is
  answered ``unavailable``, never acked) when the log did not take the slice, when the owner
  answered :class:`~meterd.partitions.Unavailable`, or when no verdict came within
  ``[partitions] slice_timeout`` (counted from the send). A verdict that comes later is
  dropped: the producer's re-send is then answered as a duplicate by the owner.

It is also the API's :class:`~meterd.partitions.Owners`: a node answers queries for the shards
it holds itself (their cells, in this process, as "owner 0"), and forwards a query for a shard
held elsewhere to its owner (a core NATS request on ``meterd.query.<shard>``, the same
``Query(op="http")`` an owner process answers through its cell's app;
:meth:`JetStreamLinks.serve_queries` is the owner's side). Nobody answering in time (the
owner is down, the shard is changing owner) is :class:`~meterd.partitions.OwnerUnavailable`:
a 503 the operator retries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog
import trio

import supervisors as sv
from meterd.config import PartitionsConfig
from meterd.partitions import OwnerUnavailable, Slice, TreeSnapshot, Unavailable, Verdicts
from meterd.partitions._cell import Cell
from meterd.partitions._messages import Answer, BatchId, Query, decode, encode
from meterd.partitions._owner import BadQuery, _http_request, call_asgi

from ._log import log_subject, query_subject, slice_msg_id, verdict_subject
from ._nats import ClusterUnavailable, Connection

__all__ = ["JetStreamLinks"]

log = structlog.get_logger("meterd.cluster.gateway")

SliceDone = Callable[[Verdicts | OwnerUnavailable], None]
NODE_OWNER: Final = 0  # how the API numbers this node's cells ("owner-0")
QUERY_TIMEOUT: Final = 30.0  # seconds an owner gives a forwarded query (the asker's own is shorter)


class _ShardLink:
    __slots__ = ("links", "shard")

    def __init__(self, links: JetStreamLinks, shard: int) -> None:
        self.links = links
        self.shard = shard

    def send(self, message: Slice, done: SliceDone) -> None:
        self.links.send(message, done)


class JetStreamLinks:
    """Slices to the log and verdicts back, for gateway ``gateway`` (see the module doc).
    Run :meth:`run` (it subscribes to the verdicts) before sending."""

    def __init__(
        self,
        connection: Connection,
        gateway: str,
        partitions: PartitionsConfig,
        *,
        slice_timeout: float,
        cells: Mapping[int, Cell] | None = None,
        tree: sv.Supervisor | None = None,
        replaying: Callable[[int], bool] = lambda shard: False,
    ) -> None:
        self.connection = connection
        self.gateway = gateway
        # The API numbers owners; a node's own cells are "owner 0".
        self._partitions = dataclasses.replace(partitions, owners=1)
        self.slice_timeout = slice_timeout
        self.cells: Mapping[int, Cell] = cells or {}
        # A shard whose cell is still replaying the log after this node took it over: its
        # queries are refused (503) until it reaches the log's end, for its cell does not
        # yet count every event acknowledged before (protocol.md §5).
        self.replaying = replaying
        self.tree = tree
        self._links = [_ShardLink(self, shard) for shard in range(partitions.shards)]
        self._waiting: dict[tuple[BatchId, int], tuple[SliceDone, trio.Event]] = {}
        self._nursery: trio.Nursery | None = None
        self.published = 0
        self.late_verdicts = 0
        self.stale_verdicts = 0  # verdicts of an older epoch than the shard's known one
        self.forwarded = 0  # queries sent to the node holding the shard
        self.epochs: dict[int, int] = {}  # shard -> the newest owner epoch seen

    def observe(self, shard: int, epoch: int) -> None:
        """The newest epoch known for ``shard`` (from its lease, or a verdict)."""
        if epoch > self.epochs.get(shard, 0):
            self.epochs[shard] = epoch

    # ---- what the GatewaySubmitter uses --------------------------------------------------

    @property
    def partitions(self) -> PartitionsConfig:
        return self._partitions

    def link_of_shard(self, shard: int) -> _ShardLink:
        return self._links[shard]

    def send(self, message: Slice, done: SliceDone) -> None:
        """Publish ``message`` and wait for its verdict, on a task of its own; never blocks."""
        key = (message.batch, message.shard)
        if self._nursery is None:
            done(self._unavailable(message.shard, "this node is not connected to NATS yet"))
            return
        if key in self._waiting:
            done(self._unavailable(message.shard, "the same slice is already in flight"))
            return
        if message.batch.gateway != self.gateway:  # its verdict would go to another subject
            raise ValueError(
                f"a slice of gateway {message.batch.gateway!r} sent through the links of"
                f" gateway {self.gateway!r}: give the submitter and the links one name"
            )
        arrived = trio.Event()
        self._waiting[key] = (done, arrived)
        self._nursery.start_soon(self._publish, key, message, arrived)

    def _unavailable(self, shard: int, why: str) -> OwnerUnavailable:
        return OwnerUnavailable(shard, NODE_OWNER, why)

    def _finish(self, key: tuple[BatchId, int], outcome: Verdicts | OwnerUnavailable) -> None:
        entry = self._waiting.pop(key, None)
        if entry is None:
            return
        done, arrived = entry
        arrived.set()
        done(outcome)

    async def _publish(self, key: tuple[BatchId, int], message: Slice, arrived: trio.Event) -> None:
        """Publish a slice to its shard's log and wait for its verdict, both within the
        slice's timeout (``done`` gets :class:`OwnerUnavailable` when either fails)."""
        shard = message.shard
        with trio.move_on_after(self.slice_timeout):
            if await self._to_log(key, message):
                await self._verdict(arrived)
            return
        self._finish(
            key,
            self._unavailable(
                shard,
                f"no verdict from the shard's owner within {self.slice_timeout:g} s (its node may"
                " be down or the shard changing owner)",
            ),
        )

    async def _to_log(self, key: tuple[BatchId, int], message: Slice) -> bool:
        """Publish ``message`` to its shard's log: True once the log took it; False when it
        did not (the slice is finished, unavailable). A subclass may time it (the cluster
        bench does), as it may :meth:`_verdict`."""
        shard = message.shard
        try:
            await self.connection.publish(
                log_subject(shard),
                encode(message),
                msg_id=slice_msg_id(message.batch, shard),
                timeout=self.slice_timeout,
            )
        except ClusterUnavailable as error:
            self._finish(key, self._unavailable(shard, f"the log did not take it: {error}"))
            return False
        self.published += 1
        return True

    async def _verdict(self, arrived: trio.Event) -> None:
        """Wait for the verdict of a slice the log took (``arrived`` is set by :meth:`run`)."""
        await arrived.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to this gateway's verdicts and hand them to the waiting slices."""
        subject = verdict_subject(self.gateway)
        try:
            async with (
                self.connection.subscribe(subject, capacity=65_536) as verdicts,
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                task_status.started()
                async for _, data in verdicts:
                    try:
                        answer = decode(data)
                    except Exception as error:
                        log.warning(
                            "cluster.gateway.bad_verdict", subject=subject, error=str(error)
                        )
                        continue
                    if isinstance(answer, Verdicts):
                        if answer.epoch and answer.epoch < self.epochs.get(answer.shard, 0):
                            # Fencing: an owner that lost the shard (paused past its lease)
                            # must not answer for it; its verdict is not taken.
                            self.stale_verdicts += 1
                            log.warning(
                                "cluster.gateway.stale_verdict",
                                shard=answer.shard,
                                batch=[answer.batch.connection, answer.batch.seq],
                                epoch=answer.epoch,
                                current=self.epochs[answer.shard],
                                hint="a verdict from a previous owner of the shard was ignored",
                            )
                            continue
                        self.observe(answer.shard, answer.epoch)
                        outcome: Verdicts | OwnerUnavailable = answer
                    elif isinstance(answer, Unavailable):
                        outcome = self._unavailable(answer.shard, answer.reason)
                    else:
                        continue
                    key = (answer.batch, answer.shard)
                    if key not in self._waiting:
                        self.late_verdicts += 1
                        continue
                    self._finish(key, outcome)
        finally:
            self._nursery = None
            waiting, self._waiting = self._waiting, {}
            for (_, shard), (done, arrived) in waiting.items():
                arrived.set()
                done(self._unavailable(shard, "this node is stopping"))

    # ---- the API's Owners ---------------------------------------------------------------

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        if self.cells.get(shard) is None:
            return await self._forward(shard, op, args, timeout)
        return await self._ask_here(shard, op, args, timeout)

    async def _ask_here(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        cell = self.cells.get(shard)
        if cell is None:
            raise OwnerUnavailable(shard, NODE_OWNER, "this node no longer holds it")
        if op == "ping":
            return "pong"
        if self.replaying(shard):
            raise OwnerUnavailable(
                shard,
                NODE_OWNER,
                "this node took it over and is replaying its log; retry in a moment",
            )
        if op != "http":
            raise RuntimeError(f"a node answers op 'http' and 'ping', not {op!r}")
        try:
            request = _http_request(args)
        except BadQuery as error:
            raise RuntimeError(str(error)) from None
        with trio.move_on_after(timeout):
            return await call_asgi(cell.app(), *request)
        raise OwnerUnavailable(shard, NODE_OWNER, f"the query took more than {timeout:g} s")

    async def _forward(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        """``ask`` the node that holds ``shard`` (see the module doc)."""
        self.forwarded += 1
        try:
            data = await self.connection.request(
                query_subject(shard), encode(Query(0, shard, op, args)), timeout=timeout
            )
        except ClusterUnavailable as error:
            raise OwnerUnavailable(
                shard,
                NODE_OWNER,
                "no node answered for it (its owner may be down, or the shard changing owner:"
                f" a takeover takes up to [cluster] lease_ttl and a round) ({error})",
            ) from None
        answer = decode(data)
        if not isinstance(answer, Answer):
            raise OwnerUnavailable(
                shard, NODE_OWNER, f"its owner answered a {type(answer).__name__}, not an answer"
            )
        if answer.error is not None:
            raise OwnerUnavailable(shard, NODE_OWNER, f"its owner answered: {answer.error}")
        return answer.value

    async def serve_queries(
        self,
        shard: int,
        held: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer other nodes' queries for ``shard`` (this node holds it) while ``held()``;
        a query that comes while it is not is left unanswered (the new owner answers)."""
        subject = query_subject(shard)
        async with (
            self.connection.subscribe(subject, capacity=1024) as queries,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            while True:
                data, reply = await queries.get_request()
                if reply and held():
                    nursery.start_soon(self._answer, shard, data, reply)

    async def _answer(self, shard: int, data: bytes, reply: str) -> None:
        try:
            query = decode(data)
        except Exception as error:
            answer = Answer(0, error=f"not a query: {error}")
        else:
            if not isinstance(query, Query) or query.shard != shard:
                answer = Answer(0, error=f"not a query of shard {shard}")
            else:
                try:
                    value = await self._ask_here(shard, query.op, query.args, QUERY_TIMEOUT)
                    answer = Answer(query.id, value)
                except (OwnerUnavailable, RuntimeError) as error:
                    answer = Answer(query.id, error=str(error))
        try:
            await self.connection.reply(reply, encode(answer))
        except ClusterUnavailable as error:  # the asker times out
            log.warning("cluster.gateway.answer_lost", shard=shard, error=str(error))

    async def trees(self, limit: int, total: int, timeout: float) -> list[TreeSnapshot | None]:
        if self.tree is None:
            return [None]
        try:
            tree = sv.snapshot(self.tree, limit=limit, total=total)
        except ValueError:
            return [None]
        return [TreeSnapshot(0, "owner-0", os.getpid(), tree)]

    def pids(self) -> list[int | None]:
        return [os.getpid()]
