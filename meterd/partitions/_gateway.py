"""A producer batch at the gateway: split by shard, sent to owners, joined (docs/partitions.md).

:class:`GatewaySubmitter` is what the ingest server hands batches to when the accounts live
in owner processes (the :class:`meterd.ingest.server.Submitter` seam, the one
:class:`~meterd.accounts.service.Accounts` fills in one process). For each batch:

1. the groups (one per account, as validation made them) are split by
   :func:`~._layout.shard_of` (an account's shard is computed once and kept);
2. each shard's part (the events as :class:`~._messages.SliceEvent` arrays with their
   positions in the producer's batch, and the batch's rejected events that name an
   account of the shard) goes, with :class:`OwnerLinks` (owner processes on this host),
   into one :class:`~._messages.Slices` per owner: a :class:`~._messages.Part` per shard of
   that owner, built once and queued on the owner's link (:class:`~._links.OwnerLink`),
   never awaited; elsewhere (cluster mode's log, per shard) into one
   :class:`~._messages.Slice` per shard;
3. when every message has its :class:`~._messages.Verdicts`, ``on_done`` gets one
   :class:`~meterd.ingest.server.Decided` (accepted and duplicates summed, the owners'
   ``id_conflict`` and ``time_out_of_range`` rejections by position), from which ingest
   builds the ack; if any slice fails (the owner said :class:`~._messages.Unavailable`, its
   channel closed, it timed out), ``on_done`` gets that
   :class:`~._owners.OwnerUnavailable` at once and the batch is answered ``unavailable``,
   never acked. Slices of the batch already durable elsewhere stay so: the producer's
   re-send finds them as duplicates.

:class:`OwnerLinks` holds the links (one per owner) and is the gateway's
:class:`~._owners.Owners` (``ask``, ``trees``, ``pids``, ``partitions``) for the API.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol, TypeAlias, cast

import trio

from meterd.accounts.budget import EventBudget
from meterd.config import PartitionsConfig
from meterd.ingest.server import Decided
from meterd.ingest.validate import Columns
from meterd.ingest.validate import Rejection as AckRejection
from meterd.model import Event
from meterd.store import AppendResult, RejectedEvent

from ._layout import owner_of_shard, shard_of
from ._links import OwnerLink, PacedBudget
from ._messages import (
    BatchId,
    Part,
    Rejection,
    Slice,
    SliceEvent,
    Slices,
    TreeSnapshot,
    Verdicts,
)
from ._owners import OwnerUnavailable

__all__ = ["GatewaySubmitter", "OwnerLinks"]

_SHARD_CACHE: Final = 1_000_000  # accounts whose shard is kept (then the cache starts over)
_INT_LOW: Final = -(2**63)  # an int quantity outside msgpack's range travels as a decimal
_INT_HIGH: Final = 2**64 - 1

_Row: TypeAlias = tuple[int, str, str, str, "int | Decimal | str", int, tuple[tuple[str, str], ...]]
"""A slice event as the gateway encodes it: :class:`~._messages.SliceEvent`'s fields (a
decimal quantity as a Decimal or as its text: msgpack holds the same string)."""

BatchDone = Callable[["list[AppendResult] | Decided | BaseException"], None]


class SliceSink(Protocol):
    def send(self, message: Slice, done: Callable[[Verdicts | OwnerUnavailable], None]) -> None: ...


class SliceRoutes(Protocol):
    """Where the submitter sends a batch's parts: :class:`OwnerLinks` (owner processes on
    this host: one :class:`~._messages.Slices` per owner, to ``links[owner]``) or, in
    cluster mode, :class:`meterd.cluster.JetStreamLinks` (the log: one
    :class:`~._messages.Slice` per shard, to ``link_of_shard``)."""

    @property
    def partitions(self) -> PartitionsConfig: ...

    def link_of_shard(self, shard: int) -> SliceSink: ...


class OwnerLinks:
    """The links to every owner, by owner number: the gateway's :class:`~._owners.Owners`."""

    def __init__(self, partitions: PartitionsConfig, links: Sequence[OwnerLink]) -> None:
        if len(links) != partitions.owners:
            raise ValueError(f"{len(links)} links for {partitions.owners} owners")
        self._partitions = partitions
        self.links = list(links)

    @property
    def partitions(self) -> PartitionsConfig:
        return self._partitions

    def link_of_shard(self, shard: int) -> OwnerLink:
        return self.links[owner_of_shard(shard, self._partitions)]

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        return await self.link_of_shard(shard).ask(shard, op, args, timeout)

    async def trees(self, limit: int, total: int, timeout: float) -> list[TreeSnapshot | None]:
        found: list[TreeSnapshot | None] = [None] * len(self.links)

        async def one(index: int, link: OwnerLink) -> None:
            with contextlib.suppress(OwnerUnavailable):
                found[index] = await link.tree(limit, total, timeout)

        async with trio.open_nursery() as nursery:
            for index, link in enumerate(self.links):
                nursery.start_soon(one, index, link)
        return found

    def pids(self) -> list[int | None]:
        return [link.pid for link in self.links]


class _Batch:
    """One producer batch on its way: the slices it waits for, what they said."""

    __slots__ = ("accepted", "duplicates", "on_done", "rejected", "waiting")

    def __init__(self, on_done: BatchDone, waiting: int) -> None:
        self.on_done: BatchDone | None = on_done
        self.waiting = waiting
        self.accepted = 0
        self.duplicates = 0
        self.rejected: list[AckRejection] = []

    def slice_done(self, outcome: Verdicts | OwnerUnavailable) -> None:
        on_done = self.on_done
        if on_done is None:  # failed already by another slice
            return
        if isinstance(outcome, OwnerUnavailable):
            self.on_done = None
            on_done(outcome)
            return
        self.accepted += outcome.accepted
        self.duplicates += outcome.duplicates
        for rejection in (*outcome.id_conflicts, *outcome.rejected):
            self.rejected.append(
                AckRejection(rejection.index, rejection.id, rejection.code, rejection.message)
            )
        self.waiting -= 1
        if self.waiting == 0:
            self.on_done = None
            on_done(Decided(self.accepted, self.duplicates, self.rejected))


class GatewaySubmitter:
    """Splits producer batches by shard and joins their owners' verdicts (module doc)."""

    def __init__(
        self,
        name: str,
        links: SliceRoutes,
        *,
        max_in_flight_events: int,
        clock: Callable[[], int],
    ) -> None:
        self.name = name  # the gateway's, in every BatchId
        self.links = links
        self.partitions = links.partitions
        # With owner processes, also spent while an owner holds its allowance (_links.py,
        # Pacing): a slow owner slows the producers down rather than timing out slices.
        self.budget = (
            PacedBudget(max_in_flight_events, links.links)
            if isinstance(links, OwnerLinks)
            else EventBudget(max_in_flight_events)
        )
        self.clock = clock
        self._batches = 0
        self._shards: dict[str, int] = {}

    def _shard(self, account: str) -> int:
        shards = self._shards
        shard = shards.get(account)
        if shard is None:
            if len(shards) >= _SHARD_CACHE:
                shards.clear()
            shard = shards[account] = shard_of(account, self.partitions)
        return shard

    def submit(
        self,
        groups: Sequence[tuple[str, list[Event]]],
        on_done: BatchDone,
        *,
        producer: str | None = None,
        seq: int | None = None,
        rejected: Sequence[RejectedEvent] = (),
        positions: Sequence[list[int]] | None = None,
    ) -> None:
        """See :class:`meterd.ingest.server.Submitter` and the module doc; never blocks."""
        self._batches += 1
        received_at = self.clock()
        # Each event goes out as a plain tuple in SliceEvent's field order (msgspec encodes
        # it as the same array): no per-event object between validation and the wire, its
        # properties the validated Event's sorted pairs as they are.
        by_shard: dict[int, list[_Row]] = {}
        shard_cache = self._shards
        index = 0
        for number, (account, events) in enumerate(groups):
            shard = shard_cache.get(account)
            if shard is None:
                shard = self._shard(account)
            part = by_shard.get(shard)
            if part is None:
                part = by_shard[shard] = []
            at = positions[number] if positions is not None else range(index, index + len(events))
            index += len(events)
            part += [
                (
                    i,
                    e.id,
                    account,
                    e.meter,
                    q
                    if (q := e.quantity).__class__ is not int or _INT_LOW <= q <= _INT_HIGH
                    else Decimal(q),
                    e.time,
                    e.properties,
                )
                for i, e in zip(at, events, strict=True)
            ]
        self._send(by_shard, rejected, on_done, producer, seq, received_at)

    def submit_columns(
        self,
        columns: Columns,
        on_done: BatchDone,
        *,
        producer: str,
        seq: int,
    ) -> None:
        """:meth:`submit` of a batch whose every event validation accepted, as
        :class:`~meterd.ingest.validate.Columns` (quantities as the wire holds them): each
        event's row is made by ``zip`` over the columns, the rows put in order of shard,
        then of account (by its id: an account's events together), then of the batch (two
        stable sorts of their positions), and each shard's part is a slice of them. No
        per-event Python code."""
        self._batches += 1
        received_at = self.clock()
        accounts = columns.accounts
        count = len(accounts)
        cached = list(map(self._shards.get, accounts))
        shards = cast("list[int]", cached)
        if None in cached:  # accounts not seen yet (or the cache started over)
            shards = [
                self._shard(account) if shard is None else shard
                for shard, account in zip(cached, accounts, strict=True)
            ]
        rows = list(
            zip(
                range(count),
                columns.ids,
                accounts,
                columns.meters,
                columns.quantities,
                columns.times,
                columns.properties,
                strict=False,  # meters, quantities, properties may be repeat() of one value
            )
        )
        # In order of shard, each account's events together in batch order: two stable
        # sorts of the positions (by account, then by shard), in C.
        order = sorted(range(count), key=accounts.__getitem__)
        order.sort(key=shards.__getitem__)
        ordered = list(map(rows.__getitem__, order))
        by_shard: dict[int, list[_Row]] = {}
        start = 0
        for shard, size in sorted(Counter(shards).items()):
            by_shard[shard] = ordered[start : start + size]
            start += size
        self._send(by_shard, (), on_done, producer, seq, received_at)

    def _send(
        self,
        by_shard: dict[int, list[_Row]],
        rejected: Sequence[RejectedEvent],
        on_done: BatchDone,
        producer: str | None,
        seq: int | None,
        received_at: int,
    ) -> None:
        """Each shard's rows (and the audits of ``rejected``) to its owner: one
        :class:`~._messages.Slices` per owner, or one :class:`~._messages.Slice` per shard."""
        audits: dict[int, list[Rejection]] = {}
        for audit in rejected:
            shard = self._shard(audit.account)
            audits.setdefault(shard, []).append(
                Rejection(
                    -1 if audit.index is None else audit.index,
                    audit.event_id,
                    audit.code,
                    audit.message,
                    audit.account,
                )
            )
        for shard in audits:
            by_shard.setdefault(shard, [])
        if not by_shard:
            on_done(Decided(0, 0, []))
            return
        # A batch's identity: the gateway (its name is new at each start), a number unique
        # within this gateway's run (two connections of a producer may use the same seq),
        # and the producer's seq.
        batch_id = BatchId(self.name, self._batches, -1 if seq is None else seq)
        producer_name = producer or ""
        links = self.links
        if isinstance(links, OwnerLinks):
            # Local owners: one Slices message per owner for all its shards' parts (one
            # frame, encoded once, and one verdicts back), not one per shard.
            by_owner: dict[int, list[Part]] = {}
            partitions = self.partitions
            for shard, part in by_shard.items():
                by_owner.setdefault(owner_of_shard(shard, partitions), []).append(
                    Part(
                        shard,
                        cast("list[SliceEvent]", part),  # tuples: SliceEvent's wire form
                        audits.get(shard, []),
                    )
                )
            batch = _Batch(on_done, len(by_owner))
            for owner, parts in by_owner.items():
                links.links[owner].send(
                    Slices(batch_id, parts[0].shard, producer_name, received_at, parts),
                    batch.slice_done,
                )
            return
        # Elsewhere (cluster mode's log, per shard): one Slice per shard.
        batch = _Batch(on_done, len(by_shard))
        for shard, part in by_shard.items():
            message = Slice(
                batch_id,
                shard,
                producer_name,
                received_at,
                cast("list[SliceEvent]", part),  # tuples: SliceEvent's wire form
                audits.get(shard, []),
            )
            links.link_of_shard(shard).send(message, batch.slice_done)
