"""The owner's side of a correction from the log (meterd/cluster/_applier.py), without NATS:
what it records depends on the log only, so a moment when the closed-months bucket cannot be
read must not decide it (the applier waits and tries again: nothing after it is applied
meanwhile), and the publisher's waiter gets the record."""

from __future__ import annotations

from pathlib import Path

import trio

from meterd.billing import Adjustment
from meterd.cluster import ShardApplier
from meterd.cluster._nats import LogMessage
from meterd.partitions import encode
from tests.cluster.cells import LAYOUT, NOW, SHARD, rows, running_cell, write_config
from tests.cluster.servers import until
from tests.cluster.test_determinism import ACCOUNTS, correction
from tests.cluster.test_periods_billing import Shared


async def test_a_correction_waits_for_the_closed_months_bucket_instead_of_being_dropped(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    async with running_cell(config, SHARD) as cell:
        shared = Shared()
        shared.down = True
        cell.billing.shared_periods = shared
        applier = ShardApplier(None, cell, SHARD, LAYOUT)
        applier.retry_delay = 0.0  # the test decides when the bucket answers again
        sent = correction(1, "adjust", ACCOUNTS[0], 2)
        waiter = applier.expect(sent.id)
        message = LogMessage(3, f"meterd.log.{SHARD}", encode(sent), sent.id, NOW)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(applier.apply, message)
                await until(lambda: shared.reads >= 3, timeout=20, what="the bucket read again")
                assert not waiter.done.is_set()  # not decided while the bucket is unreadable
                assert applier.applied == 0
                shared.down = False
                await waiter.done.wait()
            await applier.wait_drained()
        assert waiter.outcome is not None
        assert not isinstance(waiter.outcome, Exception), waiter.outcome
        record, restatement = waiter.outcome
        assert isinstance(record, Adjustment)
        assert (record.account, record.reason, record.at) == (ACCOUNTS[0], "ticket 1", sent.at)
        assert restatement is None
        assert applier.applied == 3
        billing = cell.billing.db.path
    assert rows(billing, "SELECT seq, kind, row_id FROM log_corrections") == [
        (3, "adjust", record.id)
    ]
