"""Corrections survive the loss of a node (issue 16): an adjustment and a void through the
node holding the account's shard, kill -9 of that node, and the node that takes the shard
over answers the same invoice, explanation (its audit trail), adjustments and voids as
before the kill: from the log alone (no snapshot after the corrections), or from a
snapshot taken after them (its billing database restored; the log replayed after it, the
corrections not applied again). On 3 real NATS servers with two ``meterd run`` nodes."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.billing import Period
from meterd.partitions import shard_of
from tests.cluster.servers import NatsCluster
from tests.cluster.test_forward import call
from tests.cluster.test_snapshot_takeover import by_shard, lines, snap_config
from tests.cluster.test_takeover import (
    SHARDS,
    accounts_per_shard,
    first_holds_all,
    owned,
    wait_lines,
)
from tests.partitions.gateway_harness import Lane, now_ms

DAY_MS = 86_400_000


async def billing_view(config: Any, account: str, period: Period) -> dict[str, Any]:
    """What billing support sees of ``account``: the invoice, line 1's explanation (with the
    corrections' audit trail), the adjustments and the voids."""
    found: dict[str, Any] = {}
    for name, path, params in (
        ("invoice", f"/v1/accounts/{account}/invoices/{period}", None),
        ("explanation", f"/v1/accounts/{account}/invoices/{period}/lines/1/explanation", None),
        (
            "adjustments",
            f"/v1/accounts/{account}/adjustments",
            {"from": period.start_ms, "to": period.end_ms},
        ),
        ("voids", f"/v1/accounts/{account}/voids", None),
    ):
        answer = await call(config, "GET", path, params=params)
        assert answer.status_code == 200, (name, answer.text)
        found[name] = answer.json()
    return found


@pytest.mark.parametrize("snapshot", [False, True], ids=["log-only", "snapshot-after"])
async def test_corrections_survive_kill9_of_their_node(
    tmp_path: Path, nats3: NatsCluster, snapshot: bool
) -> None:
    interval = "1s" if snapshot else "1h"
    configs = {
        n: snap_config(tmp_path / n, nats3, n, snapshot_interval=interval) for n in ("n1", "n2")
    }
    accounts = accounts_per_shard(configs["n1"], 1)
    account = accounts[0]
    shard = shard_of(account, configs["n1"].partitions)
    now = now_ms()
    period = Period.containing(now)
    with trio.fail_after(240):
        async with AsyncExitStack() as stack:
            one, two = await first_holds_all(stack, configs["n1"], configs["n2"])
            lane = Lane("via-2", accounts)
            await lane.run(two.url, two.token("platform"), trio.Event(), limit=4 * SHARDS)
            voided = next(id for a, id, _ in lane.sent if a == account)
            # an adjustment and a void through n1, the node holding the account's shard
            adjusted = await call(
                configs["n1"],
                "POST",
                f"/v1/accounts/{account}/adjustments",
                json={
                    "meter": "dyno.seconds",
                    "start": now - now % DAY_MS,
                    "kind": "credit",
                    "quantity": "2",
                    "by": "carol",
                    "reason": "outage credit, ticket 9",
                },
            )
            assert adjusted.status_code == 201, adjusted.text
            void = await call(
                configs["n1"],
                "POST",
                f"/v1/accounts/{account}/events/{voided}/void",
                json={"by": "carol", "reason": "test traffic, ticket 10"},
            )
            assert void.status_code == 201, void.text
            again = await call(
                configs["n1"],
                "POST",
                f"/v1/accounts/{account}/events/{voided}/void",
                json={"by": "dave", "reason": "twice"},
            )
            assert again.status_code == 409, again.text
            applied = [line for line in lines(one, "cluster.applier.corrected")]
            assert [(line["kind"], line["shard"]) for line in applied] == [
                ("adjust", shard),
                ("void", shard),
            ]
            last = max(int(line["seq"]) for line in applied)
            before = await billing_view(configs["n1"], account, period)
            assert before["adjustments"]["adjustments"][0]["reason"] == "outage credit, ticket 9"
            assert [v["event_id"] for v in before["voids"]["voids"]] == [voided]
            if snapshot:  # a snapshot of the shard taken after both corrections
                await wait_lines(
                    [one],
                    lambda: (
                        int(by_shard(one, "cluster.snapshot.taken").get(shard, {"seq": 0})["seq"])
                        >= last
                    ),
                    60,
                )
            one.kill9()
            await wait_lines(
                [two], lambda: len(by_shard(two, "cluster.applier.caught_up")) == SHARDS, 60
            )
            assert set(owned([two]).values()) == {"n2"}
            after = await billing_view(configs["n2"], account, period)
            assert after == before
            replayed = [line for line in lines(two, "cluster.applier.corrected")]
            if snapshot:  # restored at or after the corrections: not applied again
                assert int(by_shard(two, "cluster.snapshot.restored")[shard]["seq"]) >= last
                assert replayed == []
            else:  # rebuilt from the log: each applied once, in the same order
                assert [(line["kind"], int(line["seq"])) for line in replayed] == [
                    (line["kind"], int(line["seq"])) for line in applied
                ]
