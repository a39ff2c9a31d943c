"""Any node answers any question: the API of a node that holds no shard forwards each query
to the shard's owner (NATS request/reply), so usage, events, explanations and corrections
answer the same from it as from the owner; a correction retried with its idempotency key is
recorded once."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio

from meterd.config import Config
from tests.cluster.servers import NatsCluster
from tests.cluster.test_node import SHORT_TTL, node_config, totals
from tests.cluster.test_takeover import accounts_per_shard
from tests.partitions.gateway_harness import Lane, gateway, now_ms


async def call(
    config: Config,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    token = {"Authorization": f"Bearer {config.api.admin_token}", **(headers or {})}
    async with httpx.AsyncClient(base_url=f"http://{config.api.listen}", timeout=30) as client:
        return await client.request(method, path, params=params, headers=token, **kw)


async def test_the_node_holding_nothing_answers_for_every_account(
    tmp_path: Path, nats3: NatsCluster
) -> None:
    one = node_config(tmp_path / "n1", nats3, "n1", lease_ttl=SHORT_TTL)
    two = node_config(tmp_path / "n2", nats3, "n2", lease_ttl=SHORT_TTL)
    accounts = accounts_per_shard(one, 1)  # one account in each shard
    period = time.strftime("%Y-%m", time.gmtime())
    with trio.fail_after(180):
        async with gateway(one, meterd_run=True) as first:
            _, started = await first.wait_for(first.event("meterd_started"))
            assert started["shards"] == [0, 1, 2, 3]
            async with gateway(two, meterd_run=True) as second:
                _, started = await second.wait_for(second.event("meterd_started"))
                assert started["shards"] == []
                lane = Lane("via-2", accounts)
                await lane.run(second.url, second.token("platform"), trio.Event(), limit=40)
                assert await totals(two, accounts) == lane.expected()
                window = {"meter": "dyno.seconds", "from": 0, "to": now_ms() + 86_400_000}
                account = accounts[0]
                # the same answers from the node holding nothing as from the owner
                for path, params in [
                    (f"/v1/accounts/{account}/events", {**window, "limit": 100}),
                    (f"/v1/accounts/{account}/usage/summary", {**window, "window": "month"}),
                    (f"/v1/accounts/{account}/invoices/{period}", None),
                    (f"/v1/accounts/{account}/invoices/{period}/lines/1/explanation", None),
                    ("/v1/accounts/nobody-here/usage", {**window, "window": "day"}),
                ]:
                    here = await call(two, "GET", path, params=params)
                    there = await call(one, "GET", path, params=params)
                    assert (here.status_code, here.json()) == (there.status_code, there.json())
                events = (
                    await call(
                        two,
                        "GET",
                        f"/v1/accounts/{account}/events",
                        params={**window, "limit": 100},
                    )
                ).json()["events"]
                assert len(events) == sum(1 for a, _, _ in lane.sent if a == account)
                # a correction made through the node holding nothing is the owner's; its
                # retry under the same key (through either node) records nothing more
                adjustment = {
                    "meter": "dyno.seconds",
                    "start": now_ms() // 86_400_000 * 86_400_000,
                    "kind": "credit",
                    "quantity": "2",
                    "by": "alice",
                    "reason": "outage, ticket 4411",
                }
                url = f"/v1/accounts/{account}/adjustments"
                key = {"Idempotency-Key": "ticket-4411"}
                made = await call(two, "POST", url, json=adjustment, headers=key)
                assert made.status_code == 201, made.text
                for node in (two, one):
                    again = await call(node, "POST", url, json=adjustment, headers=key)
                    assert again.status_code == 200, again.text
                    assert again.headers["idempotent-replayed"] == "true"
                    assert again.json()["adjustment"] == made.json()["adjustment"]
                refused = await call(
                    two, "POST", url, json={**adjustment, "quantity": "3"}, headers=key
                )
                assert refused.status_code == 409, refused.text
                assert refused.json()["error"]["code"] == "idempotency_conflict"
                listed = await call(one, "GET", f"/v1/accounts/{account}/adjustments")
                assert [a["reason"] for a in listed.json()["adjustments"]] == [
                    "outage, ticket 4411"
                ]
                billed = await call(
                    two,
                    "GET",
                    f"/v1/accounts/{account}/usage/billed",
                    params={**window, "window": "day"},
                )
                assert billed.status_code == 200, billed.text
                total = sum((Decimal(r["value"]) for r in billed.json()["rows"]), Decimal(0))
                assert total == lane.expected()[account] - 2
                assert second.raw  # its log is kept for a post-mortem by the harness
