"""Leases in a JetStream KV bucket with a TTL: held, refused, renewed, taken over after expiry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest
import trio

from meterd.cluster import AsyncioBridge, LeaseHeld, LeaseLost, Leases, StreamMismatch, connect
from tests.cluster.servers import NatsCluster

TTL = 1.0


async def test_a_lease_is_refused_while_held_renewed_by_revision_and_taken_over_after_ttl(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    node_a = await connect(bridge, nats1.urls, name="a")
    node_b = await connect(bridge, nats1.urls, name="b")
    leases_a = await Leases.open(node_a, "leases", ttl=TTL)
    leases_b = await Leases.open(node_b, "leases", ttl=TTL)

    lease = await leases_a.acquire("p7", "a")
    assert await leases_b.holder("p7") == ("a", lease.revision)
    with pytest.raises(LeaseHeld, match=r"lease leases/p7 is held by 'a'") as held:
        await leases_b.acquire("p7", "b")
    assert held.value.holder == "a"
    assert held.value.revision == lease.revision
    with pytest.raises(LeaseHeld):
        await leases_a.acquire("p7", "a")  # a second acquire is no renewal

    renewing_at = trio.current_time()  # before the server stamps the renewal
    renewed = await leases_a.renew(lease)
    assert renewed.revision > lease.revision  # the epoch moves on with every write
    with pytest.raises(LeaseLost, match=r"revision 1\) expired or was taken over"):
        await leases_a.renew(lease)  # the old revision no longer matches: compare-and-set
    with pytest.raises(LeaseHeld):
        await leases_b.acquire("p7", "b")

    # b tries until the entry expires (a stopped renewing): not before the TTL has run.
    taken = None
    with trio.fail_after(10 * TTL):
        while taken is None:
            try:
                taken = await leases_b.acquire("p7", "b")
            except LeaseHeld:
                await trio.sleep(0.05)  # try again soon: expiry happens in the server
    waited = trio.current_time() - renewing_at
    assert waited >= 0.95 * TTL  # the entry lived a TTL after its last write (server timers)
    assert taken.revision > renewed.revision
    assert await leases_a.holder("p7") == ("b", taken.revision)
    with pytest.raises(LeaseLost):
        await leases_a.renew(renewed)  # a must stop acting on it
    assert taken.valid_until > renewed.valid_until


async def test_a_released_lease_is_free_at_once_and_only_its_holder_can_release_it(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await connect(bridge, nats1.urls, name="n")
    leases = await Leases.open(conn, "leases", ttl=30)
    first = await leases.acquire("p1", "a")
    await leases.release(first)
    assert await leases.holder("p1") is None
    second = await leases.acquire("p1", "b")
    with pytest.raises(LeaseLost):
        await leases.release(first)  # a stale holder cannot free b's lease
    assert await leases.holder("p1") == ("b", second.revision)


async def test_every_node_must_use_the_same_lease_ttl(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    conn = await connect(bridge, nats1.urls, name="n")
    await Leases.open(conn, "leases", ttl=2)
    with pytest.raises(StreamMismatch, match=r"exists with ttl 2.0 s, not 3 s"):
        await Leases.open(conn, "leases", ttl=3)


class _RefusingKV:
    """A bucket whose ``create`` is refused the way nats-py reports it when its read-back
    of the existing key meets a lagging replica (KeyNotFoundError), and whose key then
    reads as held by ``holder``."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    async def create(self, key: str, value: bytes) -> int:
        raise nats.js.errors.KeyNotFoundError

    async def get(self, key: str) -> Any:
        return SimpleNamespace(value=self.holder.encode(), revision=7)


class _InTrio:
    """A connection that runs the bucket's coroutine in the test's own Trio run."""

    async def _run(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()


async def test_a_create_refused_through_a_lagging_replica_is_a_held_lease() -> None:
    leases = Leases(_InTrio(), "meterd-shard-leases", 3.0, _RefusingKV("n2"))  # type: ignore[arg-type]
    with pytest.raises(LeaseHeld) as refused:
        await leases.acquire("shard-001", "n1")
    assert refused.value.holder == "n2"
    assert refused.value.revision == 7
