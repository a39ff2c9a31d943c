"""Leases in a JetStream KV bucket with a TTL: held, refused, renewed, taken over after expiry."""

from __future__ import annotations

import pytest
import trio

from meterd.cluster import AsyncioBridge, LeaseHeld, LeaseLost, StreamMismatch, connect
from tests.cluster.servers import NatsCluster

TTL = 1.0


async def test_a_lease_is_refused_while_held_renewed_by_revision_and_taken_over_after_ttl(
    bridge: AsyncioBridge, nats1: NatsCluster
) -> None:
    node_a = await connect(bridge, nats1.urls, name="a")
    node_b = await connect(bridge, nats1.urls, name="b")
    leases_a = await node_a.leases("leases", ttl=TTL)
    leases_b = await node_b.leases("leases", ttl=TTL)

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
    leases = await conn.leases("leases", ttl=30)
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
    await conn.leases("leases", ttl=2)
    with pytest.raises(StreamMismatch, match=r"exists with ttl 2.0 s, not 3 s"):
        await conn.leases("leases", ttl=3)
