"""The gateway's submitter in one process: a batch split by shard, the verdicts joined.

The links are stand-ins that record the messages and answer them as the test says, so each
rule of :class:`meterd.partitions.GatewaySubmitter` is checked alone: one part per shard
with the events' positions in the producer's batch, one ``slices`` message per owner (one
``slice`` per shard for routes that are not local owners: cluster mode's log), ``on_done``
called once with the joined verdicts (id_conflicts by position), or once with the failure
of any message.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

import pytest

from meterd.config import PartitionsConfig
from meterd.ingest.server import Decided
from meterd.ingest.validate import Rejection as AckRejection
from meterd.model import Event
from meterd.partitions import (
    OwnerUnavailable,
    Rejection,
    Slice,
    Slices,
    Verdicts,
    owner_of_shard,
    shard_of,
)
from meterd.partitions._gateway import GatewaySubmitter, OwnerLinks
from meterd.partitions._links import OwnerLink, SliceDone
from meterd.partitions._messages import decode, encode
from meterd.store import RejectedEvent

LAYOUT = PartitionsConfig(count=256, shard_size=16, owners=3)


class FakeLink:
    # What the gateway's PacedBudget reads and sets: this link is never saturated.
    allowance = max_allowance = 1 << 62
    saturated = False
    on_room: Any = None

    def __init__(self) -> None:
        self.sent: list[tuple[Slices, SliceDone]] = []

    def send(self, message: Slice | Slices, done: SliceDone) -> None:
        # As the owner reads it: the gateway's slice events are tuples until encoded.
        wire = decode(encode(message))
        assert isinstance(wire, Slices)
        self.sent.append((wire, done))


def pieces(message: Slices) -> list[Slice]:
    """Each part of ``message`` as the slice of its shard."""
    return [
        Slice(message.batch, p.shard, message.producer, message.received_at, p.events, p.rejected)
        for p in message.parts
    ]


def sent_slices(fakes: Sequence[FakeLink]) -> list[Slice]:
    return [piece for fake in fakes for message, _ in fake.sent for piece in pieces(message)]


def submitter() -> tuple[GatewaySubmitter, list[FakeLink]]:
    fakes = [FakeLink() for _ in range(LAYOUT.owners)]
    links = OwnerLinks(LAYOUT, cast(Sequence[OwnerLink], fakes))
    return GatewaySubmitter("gw", links, max_in_flight_events=100, clock=lambda: 7), fakes


def accounts_in_distinct_shards(n: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        account = f"a{i}"
        found.setdefault(shard_of(account, LAYOUT), account)
        i += 1
    return list(found.values())


def accounts_in_distinct_owners(n: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        account = f"a{i}"
        found.setdefault(owner_of_shard(shard_of(account, LAYOUT), LAYOUT), account)
        i += 1
    return list(found.values())


def accounts_in_distinct_shards_of_one_owner(n: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        account = f"a{i}"
        shard = shard_of(account, LAYOUT)
        if owner_of_shard(shard, LAYOUT) == 0:
            found.setdefault(shard, account)
        i += 1
    return list(found.values())


def event(account: str, id: str, quantity: int | Decimal = 1) -> Event:
    return Event(id, account, "dyno.seconds", quantity, 1000, (("size", "x"),))


def test_a_batch_is_split_into_one_slice_per_shard_with_batch_positions() -> None:
    sub, fakes = submitter()
    a, b = accounts_in_distinct_shards(2)
    outcomes: list[Any] = []
    groups = [(a, [event(a, "1"), event(a, "2", 2**70)]), (b, [event(b, "3")])]
    audit = RejectedEvent(b, "4", "invalid_quantity", "no", index=3)
    sub.submit(
        groups, outcomes.append, producer="p", seq=9, rejected=[audit], positions=[[0, 2], [1]]
    )
    slices = sent_slices(fakes)
    assert sorted(s.shard for s in slices) == sorted([shard_of(a, LAYOUT), shard_of(b, LAYOUT)])
    by_shard = {s.shard: s for s in slices}
    sa, sb = by_shard[shard_of(a, LAYOUT)], by_shard[shard_of(b, LAYOUT)]
    assert [e.index for e in sa.events] == [0, 2]
    assert sa.events[1].quantity == Decimal(2**70)  # beyond 64 bits: a decimal
    assert sa.events[0].properties == (("size", "x"),)
    assert [e.index for e in sb.events] == [1]
    assert sb.rejected == [Rejection(3, "4", "invalid_quantity", "no", b)]
    assert sa.batch == sb.batch
    assert sa.batch.seq == 9
    assert sa.producer == "p"
    assert sa.received_at == 7
    for fake in fakes:  # each part went to its shard's owner, one message per owner
        assert len(fake.sent) <= 1
        for message, _ in fake.sent:
            assert message.shard == message.parts[0].shard  # the answer names it
            for part in message.parts:
                assert fakes.index(fake) == owner_of_shard(part.shard, LAYOUT)
    assert outcomes == []  # nothing before every slice has its verdicts


def test_verdicts_of_every_slice_are_joined_into_one_outcome() -> None:
    sub, fakes = submitter()
    a, b, c = accounts_in_distinct_shards(3)
    outcomes: list[Any] = []
    groups = [(a, [event(a, "1"), event(a, "2")]), (b, [event(b, "3")]), (c, [event(c, "4")])]
    sub.submit(groups, outcomes.append, seq=1, positions=[[0, 3], [1], [2]])
    sent = [(m, done) for fake in fakes for m, done in fake.sent]
    for message, done in sent:
        events = [e for piece in pieces(message) for e in piece.events]
        conflicts = [
            Rejection(e.index, e.id, "id_conflict", f"{e.id} differs", e.account)
            for e in events
            if e.id == "2"
        ]
        accepted = len(events) - len(conflicts)
        duplicates = sum(1 for e in events if e.account == c)
        done(Verdicts(message.batch, message.shard, accepted - duplicates, duplicates, conflicts))
    assert outcomes == [Decided(2, 1, [AckRejection(3, "2", "id_conflict", "2 differs")])]


def test_one_failed_slice_fails_the_batch_once() -> None:
    sub, fakes = submitter()
    a, b = accounts_in_distinct_owners(2)
    outcomes: list[Any] = []
    sub.submit([(a, [event(a, "1")]), (b, [event(b, "2")])], outcomes.append, seq=1)
    (first, first_done), (second, second_done) = [s for fake in fakes for s in fake.sent]
    failure = OwnerUnavailable(first.shard, 0, "its owner process is not connected")
    first_done(failure)
    second_done(Verdicts(second.batch, second.shard, 1, 0))
    assert outcomes == [failure]  # once, and never an ack


def test_two_batches_with_the_same_seq_get_distinct_ids() -> None:
    """Two connections of one producer may use the same seq at once."""
    sub, fakes = submitter()
    (a,) = accounts_in_distinct_shards(1)
    sub.submit([(a, [event(a, "1")])], lambda _: None, producer="p", seq=1)
    sub.submit([(a, [event(a, "1")])], lambda _: None, producer="p", seq=1)
    first, second = [m for fake in fakes for m, _ in fake.sent]
    assert first.batch != second.batch


def test_a_batch_with_nothing_for_any_shard_is_done_at_once() -> None:
    sub, _ = submitter()
    outcomes: list[Any] = []
    sub.submit([], outcomes.append, seq=1)
    assert outcomes == [Decided(0, 0, [])]


@pytest.mark.parametrize("owners", [1, 2, 3, 16])
def test_links_must_match_the_owners(owners: int) -> None:
    layout = PartitionsConfig(owners=owners)
    with pytest.raises(ValueError, match="links"):
        OwnerLinks(layout, cast(Sequence[OwnerLink], [FakeLink()] * (owners + 1)))


def test_an_owners_shards_of_a_batch_go_in_one_message() -> None:
    sub, fakes = submitter()
    accounts = accounts_in_distinct_shards_of_one_owner(3)
    outcomes: list[Any] = []
    sub.submit([(a, [event(a, f"e{n}")]) for n, a in enumerate(accounts)], outcomes.append, seq=1)
    ((message, done),) = fakes[0].sent
    assert [fake.sent for fake in fakes[1:]] == [[], []]
    assert [part.shard for part in message.parts] == [shard_of(a, LAYOUT) for a in accounts]
    assert [[e.index for e in part.events] for part in message.parts] == [[0], [1], [2]]
    done(Verdicts(message.batch, message.shard, 3, 0))  # one answer for the three
    assert outcomes == [Decided(3, 0, [])]


class ShardRoutes:
    """Routes that are not local owners (cluster mode's log): one sink per shard."""

    def __init__(self) -> None:
        self.partitions = LAYOUT
        self.sent: list[tuple[Slice, SliceDone]] = []

    def link_of_shard(self, shard: int) -> ShardRoutes:
        return self

    def send(self, message: Slice, done: SliceDone) -> None:
        wire = decode(encode(message))
        assert isinstance(wire, Slice)
        self.sent.append((wire, done))


def test_routes_that_are_not_local_owners_get_one_slice_per_shard() -> None:
    routes = ShardRoutes()
    sub = GatewaySubmitter("gw", routes, max_in_flight_events=100, clock=lambda: 7)
    accounts = accounts_in_distinct_shards_of_one_owner(2)
    outcomes: list[Any] = []
    sub.submit([(a, [event(a, f"e{n}")]) for n, a in enumerate(accounts)], outcomes.append, seq=1)
    assert [m.shard for m, _ in routes.sent] == [shard_of(a, LAYOUT) for a in accounts]
    for message, done in routes.sent:
        done(Verdicts(message.batch, message.shard, 1, 0))
    assert outcomes == [Decided(2, 0, [])]
