"""The gateway's batch path without per-event objects: a batch whose every event is valid
goes from msgspec's Structs to the owners' messages as columns (``ReadBatch.columns``,
``GatewaySubmitter.submit_columns``), never as :class:`~meterd.model.Event` objects.

What must not change: each owner receives the same slices, event for event (its fields, a
decimal's exact text once decoded, each account's events together, in batch order), as
through validation's groups and :meth:`GatewaySubmitter.submit`; the ack's byte bound is the
same; and a batch with any rejected event takes the old path, with its specific rejection.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meterd.ingest.validate
from meterd.config import Config, PartitionsConfig
from meterd.ingest.server import (
    Decided,
    IngestServer,
    _Connection,
    ack_bound,
    columns_ack_bound,
)
from meterd.ingest.typed import BatchReader
from meterd.ingest.validate import EventValidator
from meterd.partitions import SliceEvent, Slices, Verdicts, shard_of
from meterd.partitions._gateway import GatewaySubmitter, OwnerLinks
from meterd.partitions._links import OwnerLink, SliceDone
from meterd.partitions._messages import decode, encode
from tests.ingest.test_typed_decode import _frame
from tests.ingest.test_validate import ALL, NOW, _batches, _validators
from tests.partitions.gateway_harness import write_gateway_config

LAYOUT = PartitionsConfig(count=256, shard_size=16, owners=3)
POOL = [f"acct-{n}" for n in range(12)]  # several accounts per shard and per owner


class FakeLink:
    allowance = max_allowance = 1 << 62
    saturated = False
    on_room: Any = None

    def __init__(self) -> None:
        self.sent: list[tuple[Slices, SliceDone]] = []

    def send(self, message: Any, done: SliceDone) -> None:
        wire = decode(encode(message))  # as the owner reads it
        assert isinstance(wire, Slices)
        self.sent.append((wire, done))


def submitter(layout: PartitionsConfig = LAYOUT) -> tuple[GatewaySubmitter, list[FakeLink]]:
    fakes = [FakeLink() for _ in range(layout.owners)]
    links = OwnerLinks(layout, cast(Sequence[OwnerLink], fakes))
    return GatewaySubmitter("gw", links, max_in_flight_events=1 << 30, clock=lambda: 7), fakes


def parts(fakes: list[FakeLink]) -> dict[int, list[SliceEvent]]:
    """Every shard's events as sent, over every owner's messages."""
    found: dict[int, list[SliceEvent]] = {}
    for fake in fakes:
        for message, _ in fake.sent:
            for part in message.parts:
                assert part.shard not in found
                found[part.shard] = part.events
    return found


def by_index(events: list[SliceEvent]) -> list[SliceEvent]:
    return sorted(events, key=lambda e: e.index)


def shown(events: list[SliceEvent]) -> list[tuple[Any, ...]]:
    """The events with each quantity's type and exact text (Decimal("1.50") is not "1.5")."""
    return [(e, type(e.quantity), str(e.quantity)) for e in events]


@st.composite
def _pooled_batches(draw: st.DrawFn) -> list[Any]:
    """:func:`_batches`, their accounts often drawn from a small pool (repeats, shared shards)."""
    raws = draw(_batches())
    if draw(st.booleans()):
        for raw in raws:
            if isinstance(raw, dict) and isinstance(raw.get("account"), str):
                raw["account"] = draw(st.sampled_from(POOL))
    return raws


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=_pooled_batches(), validator=_validators)
def test_the_columns_path_sends_each_owner_what_the_groups_path_sends(
    raws: list[Any], validator: EventValidator
) -> None:
    frame = _frame(raws)
    old_batch = BatchReader(validator, 100).read(frame, -1)
    groups, rejected = old_batch.validate(NOW)
    new_batch = BatchReader(validator, 100).read(frame, -1)
    columns = new_batch.columns(NOW)
    if rejected or not old_batch.typed:  # the old path decides, with its rejections
        assert columns is None
        assert new_batch.validate(NOW) == (groups, rejected)
        return
    assert columns is not None
    size = new_batch.size
    for cap in (1 << 30, 64):
        assert columns_ack_bound(len(frame), size, columns, cap) == ack_bound(
            len(frame), size, [], groups, cap
        )
    old, old_fakes = submitter()
    shares = list(groups.items())
    old.submit(
        [(account, events) for account, (_, events) in shares],
        lambda _: None,
        producer="p",
        seq=0,
        positions=[positions for _, (positions, _) in shares],
    )
    new, new_fakes = submitter()
    new.submit_columns(columns, lambda _: None, producer="p", seq=0)
    expected = parts(old_fakes)
    found = parts(new_fakes)
    assert {shard: shown(by_index(events)) for shard, events in found.items()} == {
        shard: shown(by_index(events)) for shard, events in expected.items()
    }
    for shard, events in found.items():  # each account's events together, in batch order
        accounts = [e.account for e in events]
        runs = [a for n, a in enumerate(accounts) if n == 0 or accounts[n - 1] != a]
        assert len(runs) == len(set(runs))
        assert all(shard_of(a, LAYOUT) == shard for a in accounts)
        for account in runs:
            indexes = [e.index for e in events if e.account == account]
            assert indexes == sorted(indexes)
    assert [len(fake.sent) for fake in new_fakes] == [len(fake.sent) for fake in old_fakes]


def test_zero_and_odd_decimals_reach_the_owner_as_validation_makes_them() -> None:
    """The gateway sends a decimal's own text, but a zero as "0" (validation's Decimal(0))."""
    validator = ALL
    events = [
        {"id": f"e{n}", "account": "acme", "meter": "dyno.seconds", "quantity": q, "time": NOW}
        for n, q in enumerate(["0.000", "00", ".5", "5.", "007.50", "1.50", "0", 12])
    ]
    columns = BatchReader(validator, 100).read(_frame(events), -1).columns(NOW)
    assert columns is not None
    sub, fakes = submitter()
    sub.submit_columns(columns, lambda _: None, producer="p", seq=0)
    (sent,) = parts(fakes).values()
    assert [str(e.quantity) for e in sent] == ["0", "0", "0.5", "5", "7.50", "1.50", "0", "12"]


# ---- through a connection's batch path -------------------------------------------------------


def connection(config: Config, sub: GatewaySubmitter) -> _Connection:
    class Log:
        def __getattr__(self, name: str) -> Any:
            return lambda *_, **__: None

    server = IngestServer(config, sub)
    platform = next(p for p in config.producers if p.name == "platform")  # writes every meter
    return _Connection(server, cast(Any, None), platform, Log())


def _settle(fakes: list[FakeLink], conn: _Connection) -> list[bytes | None]:
    for fake in fakes:
        for message, done in fake.sent:
            count = sum(len(part.events) for part in message.parts)
            done(Verdicts(message.batch, message.shard, count, 0))
        fake.sent.clear()
    acks: list[bytes | None] = []
    while True:
        try:
            slot = conn.slots_out.receive_nowait()
        except trio.WouldBlock:
            return acks
        conn._ack(slot)
        acks.append(slot.ack)


async def test_a_valid_batch_reaches_the_owners_without_an_event_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_gateway_config(Path(tempfile.mkdtemp()), owners=2)
    sub, fakes = submitter(config.partitions)
    conn = connection(config, sub)

    def no_event(*_: object) -> None:
        raise AssertionError("the gateway built an Event for a valid batch")

    monkeypatch.setattr(meterd.ingest.validate, "new_event", no_event)
    events = [
        {
            "id": f"e{n}",
            "account": POOL[n % len(POOL)],
            "meter": "dyno.seconds",
            "quantity": f"{n}.5",
            "time": NOW,
            "properties": {"size": "std-1x"},
        }
        for n in range(40)
    ]
    conn.server.clock = lambda: NOW
    conn._batch(_frame(events))
    assert sum(len(p.events) for fake in fakes for m, _ in fake.sent for p in m.parts) == 40
    (ack,) = _settle(fakes, conn)
    assert ack is not None
    assert b"accepted" in ack


async def test_a_batch_with_a_rejected_event_keeps_its_specific_rejection() -> None:
    config = write_gateway_config(Path(tempfile.mkdtemp()), owners=2)
    sub, fakes = submitter(config.partitions)
    conn = connection(config, sub)
    conn.server.clock = lambda: NOW
    good = {"id": "e1", "account": "acme", "meter": "dyno.seconds", "quantity": 2, "time": NOW}
    conn._batch(_frame([good, {**good, "id": "e2", "quantity": 1.5}]))
    slot = conn.slots_out.receive_nowait()
    assert [(r.index, r.id, r.code) for r in slot.rejected] == [(1, "e2", "invalid_quantity")]
    assert "floats are rejected" in slot.rejected[0].message
    for fake in fakes:
        for message, done in fake.sent:
            done(Verdicts(message.batch, message.shard, 1, 0))
    assert isinstance(slot.outcome, Decided)
