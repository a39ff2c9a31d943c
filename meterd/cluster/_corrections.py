"""Corrections through the log (docs/cluster.md "Corrections").

In cluster mode a shard's adjustments and voids are journalled like its events: the node
that holds the shard validates a correction (as embedded mode does), stamps its time, and
publishes it as a :class:`~meterd.partitions._messages.Correction` to the shard's log
subject with a ``Nats-Msg-Id`` (a re-publish within the duplicate window is stored once).
The shard's :class:`~._applier.ShardApplier` applies it in stream order into the billing
database, with the stream sequence in the same transaction (a replay applies it once), and
only then is the API answered (as a producer's ack waits for its verdict). A node that
takes the shard over, from a snapshot and the log, so has every correction.

Each message carries the correction's idempotency key (the client's, or one made by the
node that validated it), and the owner checks it in the transaction that records the
correction: a retried POST published again under a new message id, a replay of the log
after a takeover, or a message applied by an owner that lost its lease and again by the
next one, all find the key and record nothing more (docs/billing.md "Retrying a
correction").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

import msgspec
import structlog
import trio

from meterd.billing._corrections import (
    Adjustment,
    AdjustmentKind,
    AdjustmentRequest,
    CorrectionRequest,
    Void,
    VoidRequest,
)
from meterd.billing._errors import BillingError, Unavailable
from meterd.billing._restate import Restatement
from meterd.ingest.server import wall_clock_ms
from meterd.partitions._messages import Correction, encode

from ._log import log_subject
from ._nats import ClusterUnavailable, Connection

__all__ = ["Outcome", "ShardJournal", "Waiter", "message_of", "request_of"]

log = structlog.get_logger("meterd.cluster.corrections")

Outcome = tuple[Adjustment | Void, Restatement | None] | BillingError


class Waiter:
    """The outcome of one published correction, set by the applier that applied it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Outcome | None = None

    def set(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class Applier(Protocol):
    """What the journal needs of the shard's applier (:class:`~._applier.ShardApplier`)."""

    def expect(self, correction_id: str) -> Waiter: ...

    def forget(self, correction_id: str) -> None: ...


class ShardJournal:
    """Billing's :class:`~meterd.billing._service.CorrectionJournal` for one shard held by
    this node (see the module doc)."""

    def __init__(
        self,
        connection: Connection,
        shard: int,
        applier: Applier,
        node: str,
        *,
        timeout: float,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.connection = connection
        self.shard = shard
        self.applier = applier
        self.node = node
        self.timeout = timeout
        self.clock = clock
        self.published = 0

    def message(self, request: CorrectionRequest) -> Correction:
        """``request`` as this shard's log message: a new message id, stamped now."""
        return message_of(
            request,
            id=f"correction:{self.node}:{uuid.uuid4().hex}",
            shard=self.shard,
            at=self.clock(),
        )

    async def adjust(self, adjustment: AdjustmentRequest) -> tuple[Adjustment, Restatement | None]:
        record, restatement = await self._submit(self.message(adjustment))
        assert isinstance(record, Adjustment)
        return record, restatement

    async def void(self, void: VoidRequest) -> tuple[Void, Restatement | None]:
        record, restatement = await self._submit(self.message(void))
        assert isinstance(record, Void)
        return record, restatement

    async def _submit(self, correction: Correction) -> tuple[Adjustment | Void, Restatement | None]:
        waiter = self.applier.expect(correction.id)
        published = False
        try:
            with trio.move_on_after(self.timeout):
                try:
                    await self.connection.publish(
                        log_subject(self.shard),
                        encode(correction),
                        msg_id=correction.id,
                        timeout=self.timeout,
                    )
                except ClusterUnavailable as error:
                    raise Unavailable(
                        f"shard {self.shard}: the log did not take the correction ({error});"
                        " it may still be stored: retry the same request with the same"
                        f" Idempotency-Key ({correction.key!r}) to record it at most once"
                    ) from None
                self.published += 1
                published = True
                await waiter.done.wait()
            outcome = waiter.outcome
            if outcome is None:
                stored = "is in the log" if published else "may be in the log"
                raise Unavailable(
                    f"shard {self.shard}: the correction {stored} but was not applied within"
                    f" {self.timeout:g} s (the shard may be changing owner); its owner applies"
                    " it: retry the same request with the same Idempotency-Key"
                    f" ({correction.key!r}) to get its answer"
                )
            if isinstance(outcome, BillingError):
                raise outcome
            return outcome
        finally:
            self.applier.forget(correction.id)


def message_of(request: CorrectionRequest, *, id: str, shard: int, at: int) -> Correction:
    """``request`` as a log message with ``id`` (its ``Nats-Msg-Id``), for ``shard``,
    stamped ``at`` (ms); :func:`request_of` reads it back."""
    adjustment = isinstance(request, AdjustmentRequest)
    common = Correction(
        id=id,
        shard=shard,
        kind="adjust" if adjustment else "void",
        account=request.account,
        by=request.by,
        reason=request.reason,
        at=at,
        meter=request.meter,
        dims=list(request.dims),
        key=request.key or "",
    )
    if isinstance(request, AdjustmentRequest):
        return msgspec.structs.replace(
            common,
            start=request.start,
            end=request.end,
            direction=request.kind.value,
            quantity=str(request.quantity),
        )
    return msgspec.structs.replace(
        common, event_id=request.event_id, time=request.time, quantity=request.quantity
    )


def request_of(correction: Correction) -> CorrectionRequest:
    """The request a log message carries (:func:`message_of`): ``ValueError`` for a kind or
    a direction this version does not know, ``ArithmeticError`` for a quantity that is no
    decimal."""
    dims = tuple(correction.dims)
    key = correction.key or None  # "": none (a message of an older version)
    if correction.kind == "adjust":
        return AdjustmentRequest(
            correction.account,
            correction.meter,
            correction.start,
            correction.end,
            dims,
            AdjustmentKind(correction.direction),
            Decimal(correction.quantity),
            correction.by,
            correction.reason,
            key,
        )
    if correction.kind == "void":
        return VoidRequest(
            correction.account,
            correction.event_id,
            correction.meter,
            correction.time,
            dims,
            correction.quantity,
            correction.by,
            correction.reason,
            key,
        )
    raise ValueError(f"unknown kind {correction.kind!r}")
