"""Which node owns which shard: leases claimed by rendezvous hashing over the live nodes, kept
by renewal, and the fence that stops an owner at once when its lease is no longer certain
(docs/cluster.md "Placement, takeover and fencing").

Every ``lease_ttl / 3`` a node's :class:`Placement` makes one round:

1. renews the lease of every shard it holds (compare-and-set on the revision it wrote last);
   each success moves the shard's :class:`Fence` deadline to *the moment the write was
   sent* + ``lease_ttl`` - ``margin`` on the node's monotonic clock. A renewal refused
   (someone else wrote the key, or it expired) stops the shard at once (its tree is
   terminated, its cell closed); a renewal NATS did not answer is retried next round, and
   meanwhile the fence lapses by itself at its deadline;
2. writes its entry in the node registry (:mod:`._registry`: a KV bucket whose TTL is the
   lease's, so a dead node's entry vanishes);
3. reads the live nodes (the registry's entries, less those draining) and every shard
   lease; a shard whose lease is free is acquired by the live node ranked first for it by
   rendezvous hashing (BLAKE2b of node and shard), or by any node once it has stayed free
   for :data:`FREE_ROUNDS` of its rounds (the first-ranked node may be stuck); a lease held
   under this node's own name by a previous process of it (killed) is taken over at once.

**Handoff** (a node joined and ranks first for a shard, or this node drains): the owner
quiesces the shard (its applier reads no more of the log; the slices it read are committed
and their verdicts sent, within ``lease_ttl``), revokes the shard's fence (it decides
nothing more: its store stops at some sequence S), stops the shard, calls
``handoff(shard, epoch)`` (the node snapshots the stopped store to the object store,
:mod:`._snapshot`), and only then releases the lease; the new owner takes it at its next
round, restores the snapshot and replays from S+1. Meanwhile the lease is still renewed
(nobody else takes the shard half-way); this runs beside the rounds, so the other shards'
renewals do not wait for an upload. One shard at a time when rebalancing, every shard at
once when draining.

A shard taken is started (its snapshot restored, its cell opened: ``start``) beside the
rounds too, its lease renewed meanwhile; it is handed over only once it runs.

**Drain** (:meth:`Placement.drain`): the node's registry entry says ``draining``; every node
ranks shards over the live nodes that are not draining, the draining node hands all its
shards over and takes none, and keeps running (its gateway and API forward to the owners).

The **epoch** of a tenure is the lease revision written when it started (acquire or take
over); renewals carry it in the entry's value (``holder@epoch``), so any node reads a shard's
owner and epoch from the lease. The owner stamps it on its verdicts; gateways ignore verdicts
of an older epoch than the newest they have seen for the shard (:mod:`._gateway`).

The **fence** (:class:`Fence`) is checked by the store right before each group commit that
holds a slice (:class:`~meterd.store.LogPosition` ``fence``), and by the applier before it
publishes a verdict: a node paused past its deadline (SIGSTOP, a long GC, a VM stall) writes
nothing and says nothing when it resumes, since its monotonic clock moved on while it was
stopped. The new owner can only acquire the lease after the old entry expired in NATS, which
is at least ``lease_ttl`` after the old owner's last write was sent: later than the old
owner's deadline by ``margin`` at least.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol

import structlog
import trio

from meterd.partitions._layout import shard_name

from ._lease import Lease, LeaseHeld, LeaseLost, Leases
from ._nats import ClusterUnavailable
from ._registry import NodeRegistry

__all__ = ["FREE_ROUNDS", "Fence", "Placement", "lease_key", "rank", "rendezvous"]

log = structlog.get_logger("meterd.cluster.placement")

FREE_ROUNDS: Final = 2  # rounds a free shard waits for its first-ranked node before anyone takes it


def lease_key(shard: int) -> str:
    """A shard's lease is named as the shard (``shard-007``)."""
    return shard_name(shard)


def rank(node: str, shard: int) -> int:
    """``node``'s rendezvous score for ``shard`` (the highest score owns it)."""
    digest = hashlib.blake2b(f"{node}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(nodes: Iterable[str], shard: int) -> str | None:
    """The node ranked first for ``shard`` among ``nodes`` (None: no node)."""
    best: tuple[int, str] | None = None
    for node in nodes:
        score = (rank(node, shard), node)
        if best is None or score > best:
            best = score
    return None if best is None else best[1]


class Fence:
    """Whether this node may still decide for one shard: until :attr:`deadline`
    (``time.monotonic()``), moved on by each successful renewal. :meth:`check` is called from
    the store's writer thread too (it only reads two attributes)."""

    def __init__(self, shard: int, ttl: float, margin: float) -> None:
        if not 0 <= margin < ttl:
            raise ValueError(f"the fence margin ({margin} s) must be below the lease ttl ({ttl} s)")
        self.shard = shard
        self.ttl = ttl
        self.margin = margin
        self.epoch = 0
        self.deadline = -math.inf
        self.revoked: str | None = None
        self._changed = trio.Event()

    def renewed(self, lease: Lease) -> None:
        """A write of the lease succeeded: the fence holds until that write's TTL less the
        margin (counted from before the write was sent)."""
        if self.revoked is not None:
            return
        self.epoch = lease.fence_epoch
        self.deadline = lease.written_at + self.ttl - self.margin
        self._changed.set()
        self._changed = trio.Event()

    def revoke(self, reason: str) -> None:
        """The lease is gone for good: the shard is being stopped."""
        self.revoked = reason
        self.deadline = -math.inf
        self._changed.set()
        self._changed = trio.Event()

    def check(self) -> str | None:
        """None while the lease is certainly held; else why not (any thread)."""
        if self.revoked is not None:
            return f"shard {self.shard}: lease lost ({self.revoked})"
        late = time.monotonic() - self.deadline
        if late >= 0:
            return (
                f"shard {self.shard}: lease (epoch {self.epoch}) not renewed in time"
                f" ({late:.1f} s past its fence); another node may own the shard now"
            )
        return None

    async def wait_held(self) -> None:
        """Until :meth:`check` passes (a renewal came) — forever once revoked."""
        while self.check() is not None:
            await self._changed.wait()


class ShardHandle(Protocol):
    """A shard this node runs (see :class:`Placement`): ``stop`` it when its lease is lost;
    ``running()`` is False once its tree is gone (its supervisor gave up and was restarted
    empty), and the next round starts it again."""

    async def stop(self) -> None: ...

    def running(self) -> bool: ...


@dataclass
class _Held:
    lease: Lease
    fence: Fence
    handle: ShardHandle


class _Starting:
    """The handle of a shard whose start (snapshot restore, cell) is under way."""

    async def stop(self) -> None:
        pass  # the start, once done, sees the shard is no longer held and stops it

    def running(self) -> bool:
        return True


@dataclass
class _Handing:
    """A shard being handed over: stopped, its snapshot under way, its lease still renewed
    (under ``lock``, so a renewal and the release never use the same revision)."""

    lease: Lease
    lock: trio.Lock
    fence: Fence


class Placement:
    """The node's shard leases (see the module doc). ``start(shard, fence)`` starts a shard
    this node just took (its cell, applier and tree) and returns its handle; ``report()``
    gives the registry entry's shards (shard -> (applied, lag)); ``observe(shard, epoch)``
    tells the gateway each shard's epoch as read from the leases."""

    def __init__(
        self,
        node: str,
        leases: Leases,
        registry: NodeRegistry,
        shards: int,
        *,
        start: Callable[[int, Fence], Awaitable[ShardHandle]],
        report: Callable[[], Mapping[int, tuple[int, int]]] = dict,
        observe: Callable[[int, int], None] | None = None,
        margin: float | None = None,
        rebalance: bool = True,
        handoff: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.leases = leases
        self.registry = registry
        self.shards = shards
        self.ttl = leases.ttl
        self.margin = self.ttl / 4 if margin is None else margin
        self._start = start
        self._report = report
        self._observe = observe
        self.rebalance = rebalance
        self._handoff = handoff
        self.held: dict[int, _Held] = {}
        self.handing: dict[int, _Handing] = {}
        self.draining = False
        self._nursery: trio.Nursery | None = None
        self._free_rounds: dict[int, int] = {}
        self._seen: set[str] = set()  # the live nodes of the previous round
        self.rounds = 0
        self._round_done = trio.Event()

    @property
    def period(self) -> float:
        return self.ttl / 3

    def fences(self) -> dict[int, Fence]:
        return {shard: held.fence for shard, held in self.held.items()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A round now (the node's start waits for it), then one every ``lease_ttl / 3``."""
        async with trio.open_nursery() as nursery:  # handoffs run beside the rounds
            self._nursery = nursery
            try:
                await self.round()
                task_status.started()
                while True:
                    await trio.sleep(self.period)  # the renewal period: a timer
                    await self.round()
            finally:
                self._nursery = None

    def drain(self, draining: bool = True) -> None:
        """Hand every shard over from the next round on, and take none (``False``: take
        its share again)."""
        if draining != self.draining:
            log.info(
                "cluster.node.draining" if draining else "cluster.node.undrained",
                node=self.node,
                shards=sorted(self.held),
                hint="its shards move to the other live nodes by handoff, one round from now;"
                " it keeps serving producers and queries (forwarded)"
                if draining
                else "it takes its share of the shards again by handoff",
            )
        self.draining = draining

    async def wait_rounds(self, n: int) -> None:
        target = self.rounds + n
        while self.rounds < target:
            await self._round_done.wait()

    async def round(self) -> None:
        try:
            # The entry first: it is written before the leases, so it expires before them
            # (a dead node is gone from the live nodes when its leases free up).
            await self.registry.heartbeat(self.node, dict(self._report()), draining=self.draining)
        except ClusterUnavailable as error:
            log.warning("cluster.placement.unavailable", node=self.node, error=str(error))
        await self._renew()
        await self._restart_gone()
        try:
            entries = await self.registry.entries()
            live = {name for name, entry in entries.items() if not entry.get("draining")}
            if self.draining:
                live.discard(self.node)
            else:
                live.add(self.node)
            if self.rebalance or self.draining:
                await self._hand_over(live)
            await self._claim(live)
            self._seen = live
        except ClusterUnavailable as error:
            log.warning("cluster.placement.unavailable", node=self.node, error=str(error))
        self.rounds += 1
        self._round_done.set()
        self._round_done = trio.Event()

    async def _renew(self) -> None:
        for shard, held in list(self.held.items()):
            try:
                lease = await self.leases.renew(held.lease)
            except LeaseLost as error:
                await self._drop(shard, str(error))
                continue
            except ClusterUnavailable as error:
                log.warning(
                    "cluster.lease.renew_failed",
                    key=held.lease.key,
                    error=str(error),
                    fenced=held.fence.check() is not None,
                )
                continue
            held.lease = lease
            held.fence.renewed(lease)
        for shard, handing in list(self.handing.items()):
            async with handing.lock:
                if self.handing.get(shard) is not handing:
                    continue  # released meanwhile
                try:
                    handing.lease = await self.leases.renew(handing.lease)
                    handing.fence.renewed(handing.lease)  # while it quiesces
                except LeaseLost as error:
                    self.handing.pop(shard, None)
                    log.info("cluster.lease.not_renewed", key=handing.lease.key, error=str(error))
                except ClusterUnavailable as error:
                    log.warning(
                        "cluster.lease.renew_failed", key=handing.lease.key, error=str(error)
                    )

    async def _restart_gone(self) -> None:
        """Start again the held shards whose tree is gone (the lease is still this node's)."""
        for shard, held in list(self.held.items()):
            if held.handle.running() or held.fence.check() is not None:
                continue
            log.warning(
                "cluster.shard.restarting",
                node=self.node,
                shard=shard,
                hint="its tree had stopped (see the errors before); it replays from its store",
            )
            await held.handle.stop()
            held.handle = await self._start(shard, held.fence)

    async def _hand_over(self, live: set[str]) -> None:
        """Hand over one held shard whose first-ranked node is another live one (live in the
        previous round too: it joined), and takes the shard at its next round; every held
        shard while draining. See the module doc."""
        if self.handing and not self.draining:
            return  # one at a time when rebalancing
        for shard in sorted(self.held):
            top = rendezvous(live, shard)
            if top is None or top == self.node or top not in self._seen:
                continue
            if isinstance(self.held[shard].handle, _Starting):
                continue  # handed over once it runs
            held = self.held.pop(shard)
            self.handing[shard] = _Handing(held.lease, trio.Lock(), held.fence)
            log.info(
                "cluster.shard.handing_over",
                node=self.node,
                shard=shard,
                to=top,
                epoch=held.fence.epoch,
                draining=self.draining,
            )
            if self._nursery is not None:
                self._nursery.start_soon(self._finish_handoff, shard, held, top)
            else:
                await self._finish_handoff(shard, held, top)
            if not self.draining:
                return

    async def _finish_handoff(self, shard: int, held: _Held, to: str) -> None:
        """Stop the shard (its store's position is final: S), snapshot it, release."""
        started = time.monotonic()
        quiesce = getattr(held.handle, "quiesce", None)
        if quiesce is not None:
            with trio.move_on_after(self.ttl):
                await quiesce()
        held.fence.revoke(f"handed over to {to}")
        await held.handle.stop()
        if self._handoff is not None:
            await self._handoff(shard, held.fence.epoch)
        handing = self.handing.get(shard)
        released = False
        if handing is not None:
            async with handing.lock:
                if self.handing.pop(shard, None) is handing:
                    try:
                        await self.leases.release(handing.lease)
                        released = True
                    except (LeaseLost, ClusterUnavailable) as error:
                        log.info(
                            "cluster.lease.not_released", key=handing.lease.key, error=str(error)
                        )
        log.info(
            "cluster.shard.handed_over",
            node=self.node,
            shard=shard,
            to=to,
            epoch=held.fence.epoch,
            released=released,
            seconds=round(time.monotonic() - started, 3),
            hint="the node ranked first for the shard takes it at its next round, restores"
            " the snapshot just taken and replays the log after it"
            if released
            else "the lease was not released: it expires within lease_ttl, then the node"
            " ranked first takes the shard",
        )

    async def _claim(self, live: set[str]) -> None:
        owners = await self.leases.entries(lease_key(shard) for shard in range(self.shards))
        for shard in range(self.shards):
            if shard in self.held or shard in self.handing:
                continue
            entry = owners.get(lease_key(shard))
            if entry is not None:
                holder, epoch, revision = entry
                self._free_rounds.pop(shard, None)
                if self._observe is not None:
                    self._observe(shard, epoch)
                if holder == self.node and not self.draining:
                    # This node's previous process (killed) held it: node names are unique,
                    # so nobody else decides for the shard; take it over at once.
                    await self._take(
                        shard, partial(self.leases.take_over, lease_key(shard), self.node, revision)
                    )
                continue
            rounds = self._free_rounds[shard] = self._free_rounds.get(shard, 0) + 1
            if self.draining:
                continue
            if rendezvous(live, shard) == self.node or rounds > FREE_ROUNDS:
                await self._take(shard, partial(self.leases.acquire, lease_key(shard), self.node))

    async def _take(self, shard: int, write: Callable[[], Awaitable[Lease]]) -> None:
        try:
            lease = await write()
        except LeaseHeld as error:
            log.info("cluster.shard.held_elsewhere", shard=shard, holder=error.holder)
            return
        self._free_rounds.pop(shard, None)
        fence = Fence(shard, self.ttl, self.margin)
        fence.renewed(lease)
        held = _Held(lease, fence, _Starting())
        self.held[shard] = held  # renewed by the rounds while it starts
        if self._nursery is not None:
            # A start may restore a large snapshot: beside the rounds, so that the other
            # shards' renewals do not wait for it.
            self._nursery.start_soon(self._start_shard, shard, held)
        else:
            await self._start_shard(shard, held)

    async def _start_shard(self, shard: int, held: _Held) -> None:
        fence = held.fence
        try:
            handle = await self._start(shard, fence)
        except BaseException:
            if self.held.get(shard) is held:
                del self.held[shard]
            fence.revoke("the shard did not start")
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(5),
                contextlib.suppress(LeaseLost, ClusterUnavailable),
            ):
                await self.leases.release(held.lease)
            raise
        if self.held.get(shard) is not held or fence.revoked is not None:
            await handle.stop()  # lost (or this node stopping) while it started
            return
        held.handle = handle
        if self._observe is not None:
            self._observe(shard, fence.epoch)
        log.info(
            "cluster.shard.owned",
            node=self.node,
            shard=shard,
            epoch=fence.epoch,
            hint="this node applies the shard's log from its store's position (restored"
            " from the latest snapshot when that is newer)",
        )

    async def _drop(self, shard: int, reason: str) -> None:
        held = self.held.pop(shard)
        held.fence.revoke(reason)
        log.warning(
            "cluster.shard.lost",
            node=self.node,
            shard=shard,
            epoch=held.fence.epoch,
            reason=reason,
            hint="another node owns the shard now; this node stopped deciding for it",
        )
        await held.handle.stop()

    async def release_all(self) -> None:
        """A clean stop: stop deciding, release every lease, leave the registry."""
        for shard, held in list(self.held.items()):
            held.fence.revoke("this node is stopping")
            try:
                await self.leases.release(held.lease)
            except (LeaseLost, ClusterUnavailable) as error:
                log.info("cluster.lease.not_released", key=held.lease.key, error=str(error))
            del self.held[shard]
        for shard, handing in list(self.handing.items()):
            try:
                await self.leases.release(handing.lease)
            except (LeaseLost, ClusterUnavailable) as error:
                log.info("cluster.lease.not_released", key=handing.lease.key, error=str(error))
            self.handing.pop(shard, None)
        try:
            await self.registry.leave(self.node)
        except ClusterUnavailable as error:
            log.info("cluster.node.not_left", node=self.node, error=str(error))

    def describe(self) -> dict[str, Any]:
        return {str(s): h.fence.epoch for s, h in sorted(self.held.items())}
