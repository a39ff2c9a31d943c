"""A month's closing through the shards' logs (docs/cluster.md "Closed billing periods").

The KV bucket of closed periods (:mod:`._periods`) is the cluster's record that a month is
closed (the first close wins). The figures a shard fixes at the close are made where the
close stands in that **shard's log**: the node that won the bucket's create publishes a
:class:`~meterd.partitions._messages.Close` to every shard's subject
(:func:`publish_closes`), with the ``Nats-Msg-Id`` ``close:<period>:<shard>`` (the same for
every publish of one month and shard: a re-publish within the duplicate window is stored
once), and the shard's :class:`~._applier.ShardApplier` applies it in stream order: the
figures are fixed after exactly the slices and corrections before it, with its stream
sequence in the same billing transaction (a replay finds the month closed and fixes
nothing). Every later owner of the shard (replaying the log after a kill -9) so fixes the
same figures, and restates exactly the late events after the close.

A shard's billing asks :class:`ShardCloser` when it finds the month closed in the bucket but
not in its database (the close request reaching the shard, or its first read of the month):
the closer publishes the same message again (a no-op for JetStream within the duplicate
window, and for billing when it was applied already) and waits until the applier has
applied it. So even a close whose messages were never published (the closing node died
between the bucket's create and its publishes) is fixed at one point of the log, which
every later owner replays.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
import trio

from meterd.billing import Period
from meterd.billing._db import Closure
from meterd.billing._errors import Unavailable
from meterd.billing._service import SharedClosing
from meterd.partitions._messages import Close, encode

from ._log import log_subject
from ._nats import ClusterUnavailable, Connection

__all__ = ["ShardCloser", "close_message", "close_msg_id", "publish_closes"]

log = structlog.get_logger("meterd.cluster.closes")


def close_msg_id(period: Period | str, shard: int) -> str:
    """The ``Nats-Msg-Id`` of ``period``'s close in ``shard``'s log (the same on every
    node, so JetStream stores one copy per duplicate window)."""
    return f"close:{period}:{shard}"


def close_message(period: Period, shard: int, *, by: str, at: int, node: str) -> Close:
    return Close(close_msg_id(period, shard), shard, str(period), by, at, node)


class Applier(Protocol):
    """What the closer needs of the shard's applier (:class:`~._applier.ShardApplier`)."""

    def expect_close(self, period: str) -> trio.Event: ...


class ShardCloser:
    """Billing's :class:`~meterd.billing._service.CloseJournal` for one shard held by this
    node (see the module doc)."""

    def __init__(
        self,
        connection: Connection,
        shard: int,
        applier: Applier,
        closure: Callable[[Period], Awaitable[Closure | None]],
        node: str,
        *,
        timeout: float,
    ) -> None:
        self.connection = connection
        self.shard = shard
        self.applier = applier
        self.closure = closure  # the shard's billing database's closing of a month
        self.node = node
        self.timeout = timeout
        self.published = 0

    async def close(self, period: Period, shared: SharedClosing) -> Closure:
        """``period``'s closing in this shard's billing, once its ``Close`` is applied
        (published again first: see the module doc); :class:`Unavailable` when it was not
        applied within the timeout (it will be: the message is in the log)."""
        applied = self.applier.expect_close(str(period))
        closure = await self.closure(period)  # applied before we began waiting
        if closure is not None:
            return closure
        message = close_message(
            period, self.shard, by=shared.by, at=shared.at, node=getattr(shared, "node", "")
        )
        published = False
        with trio.move_on_after(self.timeout):
            try:
                await self.connection.publish(
                    log_subject(self.shard), encode(message), msg_id=message.id,
                    timeout=self.timeout,
                )  # fmt: skip
            except ClusterUnavailable as error:
                raise Unavailable(
                    f"shard {self.shard}: period {period} is closed for the cluster, but its"
                    f" close could not be written to the shard's log ({error}); its figures"
                    " are fixed once it is: retry"
                ) from None
            self.published += 1
            published = True
            await applied.wait()
        closure = await self.closure(period)
        if closure is None:
            stored = "is in the shard's log" if published else "may not be in the log yet"
            raise Unavailable(
                f"shard {self.shard}: period {period} is closed for the cluster and its close"
                f" {stored}, but was not applied within {self.timeout:g} s (the shard may be"
                " replaying its log or changing owner); its owner fixes the figures there:"
                " retry in a moment"
            )
        return closure


async def publish_closes(
    connection: Connection,
    period: Period,
    shards: Sequence[int],
    *,
    by: str,
    at: int,
    node: str,
    timeout: float,
) -> list[int]:
    """Publish ``period``'s :class:`Close` to every shard's log (at once); the shards whose
    log did not take it within ``timeout`` (logged): their owner publishes it again when the
    close request or a read of the month reaches it."""
    missed: list[int] = []

    async def one(shard: int) -> None:
        message = close_message(period, shard, by=by, at=at, node=node)
        try:
            with trio.fail_after(timeout):
                await connection.publish(
                    log_subject(shard), encode(message), msg_id=message.id, timeout=timeout
                )
        except (ClusterUnavailable, trio.TooSlowError):
            missed.append(shard)

    async with trio.open_nursery() as nursery:
        for shard in shards:
            nursery.start_soon(one, shard)
    if missed:
        log.warning(
            "cluster.period.close_not_logged",
            period=str(period),
            shards=sorted(missed),
            hint="the month is closed for the cluster; these shards' logs did not take its"
            " close in time: each shard's owner writes it there when the close request or a"
            " read of the month reaches it",
        )
    return sorted(missed)
