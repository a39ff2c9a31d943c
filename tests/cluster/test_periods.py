"""Closed billing periods in cluster mode live in the replicated KV bucket ``meterd-periods``
(meterd/cluster/_periods.py), not on one node's disk; and any node answers (usage,
explanations, corrections, period close), on 3 NATS servers and 2 ``meterd run`` nodes; a
close goes through every shard's log, so a node taking the shards over replays it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio

from meterd.billing import Period
from meterd.cluster import AsyncioBridge, connect
from meterd.cluster._periods import PERIODS, AlreadyClosed, ClosedPeriods, period_key
from meterd.config import Config
from tests.cluster.servers import NatsCluster
from tests.cluster.test_forward import call
from tests.cluster.test_node import SHORT_TTL, cluster_doc, node_config
from tests.cluster.test_snapshot_takeover import all_caught_up
from tests.cluster.test_takeover import SHARDS, accounts_per_shard, owned, wait_lines
from tests.partitions.gateway_harness import Lane, gateway, now_ms

DAY_MS = 86_400_000


async def debit(
    config: Config, account: str, start: int, quantity: str, ticket: int
) -> httpx.Response:
    """A debit of ``quantity`` dyno.seconds from ``start`` on ``account``, through a node."""
    body = {
        "meter": "dyno.seconds",
        "start": start,
        "kind": "debit",
        "quantity": quantity,
        "by": "carol",
        "reason": f"missed usage, ticket {ticket}",
    }
    return await call(config, "POST", f"/v1/accounts/{account}/adjustments", json=body)


def months_before(now: int, n: int) -> Period:
    period = Period.containing(now)
    for _ in range(n):
        period = Period.containing(period.start_ms - 1)
    return period


async def test_closed_periods_bucket_first_close_wins(
    nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    """The bucket is R3 on 3 servers; two closes of one month racing on two connections: one
    wins, the other is refused naming the winner; a fresh reader (a node that never saw the
    close) reads it from the stream's leader."""
    with trio.fail_after(60):
        one = await ClosedPeriods.open(await connect(bridge, nats3.urls, name="a"))
        two = await ClosedPeriods.open(await connect(bridge, nats3.urls, name="b"))
        assert (await one.connection.stream_info(f"KV_{PERIODS}")).replicas == 3
        period = Period(2026, 10)
        outcomes: dict[str, Any] = {}

        async def close(name: str, periods: ClosedPeriods) -> None:
            try:
                outcomes[name] = await periods.close(period, by=name, at=1, node=name)
            except AlreadyClosed as error:
                outcomes[name] = error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close, "a", one)
            nursery.start_soon(close, "b", two)
        refused = [o for o in outcomes.values() if isinstance(o, AlreadyClosed)]
        won = [o for o in outcomes.values() if not isinstance(o, AlreadyClosed)]
        assert len(refused) == 1, outcomes
        assert len(won) == 1, outcomes
        assert refused[0].closure == won[0]
        assert "already closed" in str(refused[0])
        assert won[0].node in str(refused[0])
        third = await ClosedPeriods.open(await connect(bridge, nats3.urls, name="c"))
        assert await third.closed(period) == won[0]
        assert await third.closed(Period(2026, 9)) is None
        assert period_key(period) == "period-2026-10"


async def test_a_close_on_one_node_holds_on_every_node_and_after_its_death(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    """n1 holds every shard, n2 none. Through n2 (holding no shard of the account): usage,
    explanation, a correction, and the close of last month; a second close on n1 is refused
    (already closed). A correction of the closed month through n2 is restated as on one
    node, and n2's invoice shows the month closed. kill -9 of n1: n2 takes every shard over
    from the log (its billing files are new), and the month is still closed there, as the
    KV bucket says, its figures fixed where each shard's log has the close: a close is
    refused, the invoice shows who closed it and when."""
    one = node_config(tmp_path / "n1", nats3, "n1", lease_ttl=SHORT_TTL)
    two = node_config(tmp_path / "n2", nats3, "n2", lease_ttl=SHORT_TTL)
    accounts = accounts_per_shard(one, 1)
    account = accounts[0]
    now = now_ms()
    closed, raced = months_before(now, 1), months_before(now, 2)
    window = {"meter": "dyno.seconds", "from": 0, "to": now + DAY_MS}
    with trio.fail_after(240):
        async with gateway(one, meterd_run=True, expect_clean_stop=False) as first:
            _, started = await first.wait_for(first.event("meterd_started"))
            assert started["shards"] == list(range(SHARDS))
            async with gateway(two, meterd_run=True) as second:
                _, started = await second.wait_for(second.event("meterd_started"))
                assert started["shards"] == []
                lane = Lane("via-2", accounts)
                await lane.run(second.url, second.token("platform"), trio.Event(), limit=20)
                # usage and an explanation from the node holding nothing
                usage = await call(
                    two, "GET", f"/v1/accounts/{account}/usage", params={**window, "window": "day"}
                )
                assert usage.status_code == 200, usage.text
                total = sum((Decimal(r["value"]) for r in usage.json()["rows"]), Decimal(0))
                assert total == lane.expected()[account]
                current = Period.containing(now)
                explained = await call(
                    two, "GET", f"/v1/accounts/{account}/invoices/{current}/lines/1/explanation"
                )
                assert explained.status_code == 200, explained.text
                # two closes of one month racing on the two nodes: exactly one wins
                async with trio.open_nursery() as nursery:
                    answers: list[httpx.Response] = []

                    async def close_on(config: Any) -> None:
                        answers.append(
                            await call(
                                config,
                                "POST",
                                f"/v1/periods/{raced}/close",
                                json={"by": f"racer-{config.cluster.node}"},
                            )
                        )

                    nursery.start_soon(close_on, one)
                    nursery.start_soon(close_on, two)
                assert sorted(a.status_code for a in answers) == [200, 409], [
                    a.text for a in answers
                ]
                assert (
                    next(a for a in answers if a.status_code == 409).json()["error"]["code"]
                    == "already_closed"
                )
                # the close of last month through n2, refused again through n1
                made = await call(two, "POST", f"/v1/periods/{closed}/close", json={"by": "alice"})
                assert made.status_code == 200, made.text
                at = made.json()["at"]
                again = await call(one, "POST", f"/v1/periods/{closed}/close", json={"by": "bob"})
                assert again.status_code == 409, again.text
                assert again.json()["error"]["code"] == "already_closed"
                assert "alice" in again.json()["error"]["message"]
                # a correction of the closed month through n2: recorded and restated, as on
                # one node (a closed month's figures never change silently)
                corrected = await debit(two, account, closed.start_ms + 2 * DAY_MS, "5", 7)
                assert corrected.status_code == 201, corrected.text
                assert corrected.json()["restatement"] is not None
                invoice = await call(two, "GET", f"/v1/accounts/{account}/invoices/{closed}")
                assert invoice.status_code == 200, invoice.text
                assert invoice.json()["status"] == "closed"
                assert (invoice.json()["closed"]["by"], invoice.json()["closed"]["at"]) == (
                    "alice",
                    at,
                )
                # kill -9 of n1: n2 takes every shard over, with billing files of its own
                first.kill9()
                await wait_lines([second], lambda: len(owned([second])) == SHARDS, 60)
                doc = await cluster_doc(two)
                assert {row["owner"] for row in doc["partitions"]} == {"n2"}
                for name in accounts:  # every shard's billing on n2 reads the month closed
                    # (an account whose events n2 has not replayed yet is unknown to its
                    # store, 404: asked again until the replay reached it, seen under load)
                    invoice = await replayed(two, f"/v1/accounts/{name}/invoices/{closed}")
                    assert invoice.status_code == 200, invoice.text
                    assert invoice.json()["status"] == "closed", invoice.json()
                    assert invoice.json()["closed"]["by"] == "alice"
                    assert invoice.json()["closed"]["at"] == at
                # ... fixed where each shard's log has the close (replayed), not at a read
                late = [line for line in second.lines if line.get("event") == "period_closed_late"]
                assert late == []
                logged = [x for x in second.lines if x.get("event") == "cluster.applier.closed"]
                assert {(line["shard"], line["period"]) for line in logged} >= {
                    (shard, str(closed)) for shard in range(SHARDS)
                }
                again = await call(two, "POST", f"/v1/periods/{closed}/close", json={"by": "bob"})
                assert again.status_code == 409, again.text
                assert again.json()["error"]["code"] == "already_closed"
                # a correction after the takeover is still a restatement of a closed month
                corrected = await debit(two, account, closed.start_ms + 3 * DAY_MS, "1", 8)
                assert corrected.status_code == 201, corrected.text
                assert corrected.json()["restatement"] is not None


async def test_a_close_the_shards_would_refuse_is_not_recorded(
    tmp_path: Path, nats3: NatsCluster, bridge: AsyncioBridge
) -> None:
    """A bad body, an unfinished month, no token: the node passes the request on unclaimed,
    the shards refuse it as one node does, and the month stays open in the bucket."""
    config = node_config(tmp_path / "n1", nats3, "n1", lease_ttl=SHORT_TTL)
    current = Period.containing(now_ms())
    with trio.fail_after(120):
        async with gateway(config, meterd_run=True) as node:
            await node.wait_for(node.event("meterd_started"))
            await wait_lines([node], lambda: all_caught_up(node), 60)
            bad = await call(config, "POST", f"/v1/periods/{current}/close", json={"by": ""})
            assert bad.status_code == 400, bad.text
            early = await call(config, "POST", f"/v1/periods/{current}/close", json={"by": "a"})
            assert early.status_code == 409, early.text
            assert early.json()["error"]["code"] == "period_not_over"
            async with httpx.AsyncClient(base_url=f"http://{config.api.listen}") as client:
                anonymous = await client.post("/v1/periods/2020-01/close", json={"by": "a"})
            assert anonymous.status_code == 401
        periods = await ClosedPeriods.open(await connect(bridge, nats3.urls, name="check"))
        assert await periods.closed(current) is None
        assert await periods.closed(Period(2020, 1)) is None


async def replayed(config: Config, path: str) -> httpx.Response:
    """GET ``path`` until the node answers it: a new owner refuses queries (503, "replaying
    its log") until its replay reached the log's end, never answering from a partial cell.
    Each answer is awaited, nothing sleeps; ``fail_after`` bounds a replay that never gets
    there."""
    with trio.fail_after(60):
        while True:
            answer = await call(config, "GET", path)
            if answer.status_code != 503 or "replaying its log" not in answer.text:
                return answer
            await trio.lowlevel.checkpoint()
