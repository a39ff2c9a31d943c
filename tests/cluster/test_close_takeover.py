"""A month's closing goes through each shard's log (meterd/cluster/_closes.py), so a node that
takes a shard over after kill -9 fixes the closed month's figures where the old owner did:
after the events before the close, not at its own first read. A late event that arrived
between the close and the takeover (restated on the old owner) is restated on the new owner
too, never folded silently into the closed figures. On 3 real NATS servers with two
``meterd run`` nodes; no snapshot is taken after the close (the new owner has the log only).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.client import BatchResult, Producer
from meterd.partitions import shard_of
from tests.cluster.servers import NatsCluster
from tests.cluster.test_forward import call
from tests.cluster.test_periods import months_before, replayed
from tests.cluster.test_snapshot_takeover import by_shard, lines, snap_config
from tests.cluster.test_takeover import (
    SHARDS,
    accounts_per_shard,
    first_holds_all,
    owned,
    wait_lines,
)
from tests.partitions.gateway_harness import Gateway, now_ms

HOUR = 3_600_000


def producer_of(
    node: Gateway, on_result: Callable[[BatchResult], None], **options: Any
) -> Producer:
    """A producer on ``node``'s ingest as "platform": small batches, quick retries."""
    return Producer(
        node.url,
        node.token("platform"),
        max_batch=20,
        linger=0.002,
        backoff_initial=0.02,
        backoff_max=0.3,
        ack_timeout=30,
        on_result=on_result,
        **options,
    )


async def send(node: Gateway, events: list[tuple[str, str, int, int]]) -> list[BatchResult]:
    """``events`` (id, account, quantity, time) through ``node``'s ingest, each acked."""
    results: list[BatchResult] = []
    async with producer_of(node, results.append) as producer:
        for event_id, account, quantity, time in events:
            await producer.send(
                {
                    "id": event_id,
                    "account": account,
                    "meter": "dyno.seconds",
                    "quantity": quantity,
                    "time": time,
                    "properties": {"size": "std-1x", "app": "web"},
                }
            )
        await producer.flush()
        assert producer.outstanding == 0
    assert sum(r.accepted for r in results) == len(events), results
    return results


async def caught_up(node: Gateway, timeout: float = 60) -> None:
    """Until ``node`` caught up with every shard's log (a takeover); what it logged of its
    shards when it does not."""
    try:
        await wait_lines(
            [node], lambda: len(by_shard(node, "cluster.applier.caught_up")) == SHARDS, timeout
        )
    except trio.TooSlowError:
        shown = [
            line
            for line in node.lines
            if any(word in str(line.get("event")) for word in ("shard", "applier", "snapshot"))
            or line.get("level") in ("warning", "error")
        ]
        raise AssertionError(f"{node.config.cluster} did not catch up: {shown[-40:]}") from None


def closed_view(invoice: dict[str, Any]) -> dict[str, Any]:
    """What a closed month's invoice must keep across owners: the closing (who, when, the
    fixed total), the current lines and total, and each restatement but the moment it was
    recorded (the recording node's clock)."""
    assert invoice["status"] == "closed", invoice
    restatements = [{k: v for k, v in r.items() if k != "at"} for r in invoice["restatements"]]
    rest = {k: v for k, v in invoice.items() if k != "restatements"}
    return {**rest, "restatements": restatements}


async def test_a_closed_month_keeps_its_figures_and_restatement_after_kill9_of_its_owner(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """n1 holds every shard. Usage of last month through n2, the month closed through n2,
    then a late event of that month (n1 restates the invoice). kill -9 of n1 before any
    snapshot: n2 replays the log and answers the same invoice (the figures fixed at the
    close, the same restatement), and fixes nothing at a first read."""
    configs = {n: snap_config(tmp_path / n, nats3, n, snapshot_interval="1h") for n in ("n1", "n2")}
    account = accounts_per_shard(configs["n1"], 1)[0]
    shard = shard_of(account, configs["n1"].partitions)
    closed = months_before(now_ms(), 1)
    end = closed.end_ms
    path = f"/v1/accounts/{account}/invoices/{closed}"
    with trio.fail_after(240):
        async with AsyncExitStack() as stack:
            one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
            await caught_up(one)  # a shard replaying its log answers nothing yet
            await send(
                two,
                [
                    ("before-1", account, 50_000, end - 50 * HOUR),
                    ("before-2", account, 70_000, end - 26 * HOUR),
                ],
            )
            made = await call(
                configs["n2"], "POST", f"/v1/periods/{closed}/close", json={"by": "alice"}
            )
            assert made.status_code == 200, made.text
            applied = {int(line["shard"]): line for line in lines(one, "cluster.applier.closed")}
            assert sorted(applied) == list(range(SHARDS))  # every shard, from its log
            assert {line["period"] for line in applied.values()} == {str(closed)}
            # a late event of the closed month: restated on the owner, never silently
            await send(two, [("late-1", account, 40_000, end - 2 * HOUR)])
            before = await call(configs["n1"], "GET", path)
            assert before.status_code == 200, before.text
            old = closed_view(before.json())
            assert len(old["restatements"]) == 1, old
            [restated] = old["restatements"]
            assert any("late-1" in cause for cause in restated["causes"]), restated
            assert restated["old_total"] == old["closed"]["total"] != restated["new_total"]
            assert not lines(one, "cluster.snapshot.taken")
            one.kill9()
            await caught_up(two)
            assert set(owned([two]).values()) == {"n2"}
            after = await replayed(configs["n2"], path)
            assert after.status_code == 200, after.text
            assert closed_view(after.json()) == old
            # n2 fixed the month where the log has it: from the close, not at its read
            replayed_closes = by_shard(two, "cluster.applier.closed")
            assert int(replayed_closes[shard]["seq"]) == int(applied[shard]["seq"])
            assert not lines(two, "period_closed_late")
            assert not lines(two, "cluster.snapshot.restored")


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["1h", "2s"], ids=["log-only", "snapshots"])
async def test_a_month_closed_under_late_traffic_keeps_its_figures_after_kill9(
    tmp_path: Path, nats3: NatsCluster, interval: str
) -> None:
    """A producer sends events of last month for 8 accounts (2 per shard) while the month is
    closed, so each shard's close lands mid-stream; after the traffic, every invoice read on
    the owner; kill -9 of the owner (with snapshots every 2 s, or none): the new owner answers
    every invoice with the same closed figures and restatements."""
    configs = {
        n: snap_config(tmp_path / n, nats3, n, snapshot_interval=interval) for n in ("n1", "n2")
    }
    accounts = accounts_per_shard(configs["n1"], 2)
    closed = months_before(now_ms(), 1)
    acked: list[int] = []
    progress = [trio.Event()]

    async def until_acked(count: int) -> None:
        while sum(acked) < count:
            await progress[0].wait()

    async def produce(node: Gateway, stop: trio.Event) -> None:
        def result(batch: BatchResult) -> None:
            acked.append(batch.accepted + batch.duplicates)
            progress[0].set()
            progress[0] = trio.Event()

        async with producer_of(node, result, max_repeated_faults=1000) as producer:
            i = 0
            while not stop.is_set():
                await producer.send(
                    {
                        "id": f"late-{i}",
                        "account": accounts[i % len(accounts)],
                        "meter": "dyno.seconds",
                        "quantity": 100 + i % 900,
                        "time": closed.end_ms - (1 + i % 600) * 60_000,
                        "properties": {"size": "std-1x", "app": "web"},
                    }
                )
                i += 1
            await producer.flush()
            assert producer.outstanding == 0

    with trio.fail_after(600):
        async with AsyncExitStack() as stack:
            one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
            await caught_up(one)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, two, stop)
                await until_acked(400)
                made = await call(
                    configs["n2"], "POST", f"/v1/periods/{closed}/close", json={"by": "alice"}
                )
                assert made.status_code == 200, made.text
                await until_acked(sum(acked) + 800)
                stop.set()
            old: dict[str, Any] = {}
            for account in accounts:
                answer = await call(
                    configs["n1"], "GET", f"/v1/accounts/{account}/invoices/{closed}"
                )
                assert answer.status_code == 200, answer.text
                old[account] = closed_view(answer.json())
            assert any(view["restatements"] for view in old.values()), old
            one.kill9()
            await caught_up(two, 120)
            for account in accounts:
                path = f"/v1/accounts/{account}/invoices/{closed}"
                after = await replayed(configs["n2"], path)
                assert after.status_code == 200, after.text
                assert closed_view(after.json()) == old[account], account
            assert not lines(two, "period_closed_late")
