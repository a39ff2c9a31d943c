"""The owner's side of a month's close from the log (meterd/cluster/_applier.py, _closes.py),
without NATS: a ``Close`` fixes the figures of exactly the messages before it, once (a second
copy of it finds the month closed); a late event after it is restated; and the figures a
close fixes depend only on where it stands in the log, not on when the owner was first asked
for the month (a read that finds the month closed in the bucket waits for the close to be
applied instead of fixing the figures itself)."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.billing import Period
from meterd.billing._errors import Unavailable
from meterd.cluster import ShardApplier
from meterd.cluster._closes import ShardCloser, close_message
from meterd.cluster._nats import LogMessage
from meterd.config import Config
from meterd.partitions import encode
from tests.cluster.cells import (
    LAYOUT,
    NOW,
    SHARD,
    T0,
    a_slice,
    accounts_in,
    ev,
    rows,
    running_cell,
    write_config,
)
from tests.cluster.test_periods_billing import Closing, Shared
from tests.examples import examples

ACCOUNTS = accounts_in(SHARD, 2)
HOUR = 3_600_000
PERIOD = Period.containing(T0)
PRICE = Decimal("0.5")
PRICES = f"""
[[prices]]
meter = "dyno.seconds"
unit_price = "{PRICE}"
effective_from = 2000-01-01
"""
CLOSED_AT = NOW - HOUR  # the bucket's "at": after the slices received before the close


def config_in(folder: Path) -> Config:
    return write_config(folder, cluster=PRICES)


def slice_message(seq: int, events: list[tuple[str, str, int]], received_at: int) -> LogMessage:
    """A slice of ``events`` (id, account, quantity; all at T0) at log sequence ``seq``."""
    piece = a_slice(seq, SHARD, [ev(i, id, acct, q) for i, (id, acct, q) in enumerate(events)])
    piece = msgspec.structs.replace(piece, received_at=received_at)
    return LogMessage(seq, f"meterd.log.{SHARD}", encode(piece), f"slice-{seq}", NOW)


def close_at(seq: int) -> LogMessage:
    """The month's close, as the node that won the bucket's create publishes it."""
    close = close_message(PERIOD, SHARD, by="alice", at=CLOSED_AT, node="n1")
    return LogMessage(seq, f"meterd.log.{SHARD}", encode(close), close.id, NOW)


def closed_rows(path: Path) -> dict[str, Any]:
    return {
        "closures": rows(path, "SELECT * FROM closures"),
        "closed_invoices": rows(path, "SELECT * FROM closed_invoices ORDER BY account"),
    }


async def test_a_close_fixes_the_figures_before_it_once_and_restates_what_follows(
    tmp_path: Path,
) -> None:
    account = ACCOUNTS[0]
    log = [
        slice_message(3, [("e1", account, 2)], NOW - 2 * HOUR),
        close_at(6),
        slice_message(9, [("late", account, 5)], NOW),
        close_at(12),  # published again (say after the duplicate window): found closed
    ]
    async with running_cell(config_in(tmp_path), SHARD) as cell:
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        applied = applier.expect_close(str(PERIOD))
        with trio.fail_after(30):
            for message in log:
                await applier.apply(message)
            await applier.wait_drained()
        assert applied.is_set()
        assert (applier.closes, applier.applied) == (2, 12)
        closure = await cell.billing.db.closure(PERIOD)
        assert closure is not None
        assert (closure.by, closure.at, closure.log_seq) == ("alice", CLOSED_AT, 6)
        view = await cell.billing.invoice(account, PERIOD)
        assert view.closed_total == 2 * PRICE  # the event before the close only
        assert view.invoice.total == 7 * PRICE
        [restated] = view.restatements
        assert (restated.old_total, restated.new_total) == (2 * PRICE, 7 * PRICE)
        assert restated.causes[0].startswith("1 late event received after")
        assert restated.causes[0].endswith(": late")
        billing = cell.billing.db.path
    found = closed_rows(billing)
    assert [(r[0], r[1], r[2], r[-1]) for r in found["closures"]] == [
        (str(PERIOD), "alice", CLOSED_AT, 6)
    ]
    assert [(r[1], Decimal(r[2])) for r in found["closed_invoices"]] == [(account, 2 * PRICE)]


class Logged:
    """A stand-in for the NATS connection a :class:`ShardCloser` publishes the close with:
    here the close is already in the log the test feeds, so a re-publish stores nothing."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.called = trio.Event()

    async def publish(self, subject: str, data: bytes, *, msg_id: str, timeout: float) -> None:
        self.published.append(msg_id)
        self.called.set()


_slice = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.integers(1, 9)), min_size=1, max_size=3
)


async def fixed(
    folder: Path, slices: list[list[tuple[str, int]]], close: int, read: int | None
) -> tuple[dict[str, Any], list[str]]:
    """The log of ``slices`` with the close after the first ``close`` of them, applied by an
    owner that is asked for the month's invoice (the bucket saying it is closed) right
    after applying message ``read`` (None: never asked): the closed rows, the publishes."""
    config = config_in(folder)
    log: list[LogMessage] = []
    number = 0
    for n, events in enumerate(slices):
        if n == close:
            log.append(close_at(3 * len(log) + 3))
        named = [(f"e{(number := number + 1)}", acct, q) for acct, q in events]
        received = CLOSED_AT + (HOUR if n >= close else -HOUR)
        log.append(slice_message(3 * len(log) + 3, named, received))
    if close >= len(slices):
        log.append(close_at(3 * len(log) + 3))
    connection = Logged()
    async with running_cell(config, SHARD) as cell:
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        shared = Shared()
        shared.closed_months[PERIOD] = Closing("alice", CLOSED_AT)  # the bucket's record
        cell.billing.shared_periods = shared
        cell.billing.closes = ShardCloser(
            connection,  # type: ignore[arg-type]
            SHARD,
            applier,
            cell.billing.db.closure,
            "n1",
            timeout=30,
        )
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index, message in enumerate(log):
                    await applier.apply(message)
                    if index == read:
                        for account in ACCOUNTS:
                            nursery.start_soon(cell.billing.invoice, account, PERIOD)
                        if read < close:  # asked before the close: it waits for it
                            await connection.called.wait()
                await applier.wait_drained()
        billing = cell.billing.db.path
    return closed_rows(billing), connection.published


@settings(
    max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    slices=st.lists(_slice, min_size=1, max_size=5),
    close=st.integers(0, 5),
    read=st.integers(0, 6),
)
def test_the_figures_a_close_fixes_depend_only_on_its_place_in_the_log(
    slices: list[list[tuple[str, int]]], close: int, read: int
) -> None:
    close = min(close, len(slices))
    read = min(read, len(slices))  # an index in the log (it has len(slices) + 1 messages)
    with tempfile.TemporaryDirectory() as tmp:
        asked, published = trio.run(fixed, Path(tmp) / "asked", slices, close, read)
        never, _ = trio.run(fixed, Path(tmp) / "never", slices, close, None)
    assert asked == never
    # ... and they are the usage of the slices before the close, priced
    usage: dict[str, int] = {}
    for events in slices[:close]:
        for account, quantity in events:
            usage[account] = usage.get(account, 0) + quantity
    assert [(r[1], Decimal(r[2])) for r in asked["closed_invoices"]] == [
        (account, PRICE * usage[account]) for account in sorted(usage)
    ]
    [closure] = asked["closures"]
    assert closure[-1] == 3 * close + 3  # the close's log sequence
    # a read before the close was applied published it again (its one id), and waited
    assert set(published) == ({f"close:{PERIOD}:{SHARD}"} if read < close else set())


class Appending(Logged):
    """A log that takes the closer's publish: the test applies what was published."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []

    async def publish(self, subject: str, data: bytes, *, msg_id: str, timeout: float) -> None:
        self.messages.append(data)
        await super().publish(subject, data, msg_id=msg_id, timeout=timeout)


async def test_a_close_never_published_is_published_by_the_first_read(tmp_path: Path) -> None:
    """The node that closed the month in the bucket died before publishing its closes: the
    shard's first read of the month publishes the close itself and answers once its owner
    applied it (fixed at that point of the log: every later owner replays it there); a
    read that finds nothing applied in time answers 503, never figures fixed at the read."""
    account = ACCOUNTS[0]
    async with running_cell(config_in(tmp_path), SHARD) as cell:
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        await applier.apply(slice_message(3, [("e1", account, 2)], NOW - 2 * HOUR))
        shared = Shared()
        shared.closed_months[PERIOD] = Closing("alice", CLOSED_AT)
        cell.billing.shared_periods = shared
        log = Appending()
        closer = ShardCloser(
            log,  # type: ignore[arg-type]
            SHARD,
            applier,
            cell.billing.db.closure,
            "n1",
            timeout=0,  # nobody applies it: answered at once
        )
        cell.billing.closes = closer
        with trio.fail_after(30):
            with pytest.raises(Unavailable, match="closed for the cluster"):
                await cell.billing.invoice(account, PERIOD)
            assert await cell.billing.db.closure(PERIOD) is None  # nothing fixed at the read
            closer.timeout = 30
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cell.billing.invoice, account, PERIOD)
                while len(log.messages) < 2:
                    await log.called.wait()
                    log.called = trio.Event()
                await applier.apply(slice_message(6, [("e2", account, 3)], NOW - HOUR // 2))
                close = LogMessage(9, f"meterd.log.{SHARD}", log.messages[0], "x", NOW)
                await applier.apply(close)
            await applier.wait_drained()
        closure = await cell.billing.db.closure(PERIOD)
        assert closure is not None
        assert (closure.by, closure.at, closure.log_seq) == ("alice", CLOSED_AT, 9)
        assert log.published == [f"close:{PERIOD}:{SHARD}"] * 2  # one id: stored once
        view = await cell.billing.invoice(account, PERIOD)
        assert view.closed_total == 5 * PRICE  # the events before the close's place
        assert view.restatements == ()
