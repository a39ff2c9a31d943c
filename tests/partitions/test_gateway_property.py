"""Partitioning changes nothing observable (issue 15's property test).

The same random event streams (re-sends, id conflicts, many accounts, decimal and integer
quantities) go, batch by batch, to two gateway daemons: one with a single partition in a
single owner (``count = 1``, ``owners = 1``), one with 256 partitions in 16 shards over 3
owners. What producers and operators see must be the same in both: the accepted and
duplicate events and the rejections (by position and code) summed after each batch, and
each account's exact totals.

It runs with stand-in owners (``tests/partitions/procs/ledger_owner.py``: durable dedupe
ledgers, exact sums), which checks the gateway's split and join across shards and owners
against owners whose decisions are known, and with meterd's own owner process once
``meterd.partitions.owner`` is here (skipped until then): the totals are then each
account's ``/usage/summary`` asked of its owner.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.client import BatchResult, Producer
from meterd.config import Config
from tests.partitions.gateway_harness import (
    now_ms,
    popen_gateways,
    real_owner_available,
    real_total,
    write_gateway_config,
)
from tests.partitions.procs.ledger_owner import usage_of

LAYOUTS = {"one": (1, 1, 1), "sharded": (256, 16, 3)}  # count, shard_size, owners
_examples = itertools.count()


@dataclass(frozen=True)
class Daemons:
    configs: dict[str, Config]
    real_owner: bool

    def totals(self, name: str, accounts: set[str]) -> dict[str, Decimal]:
        """Each of ``accounts``' exact total: from the ledgers, or asked of real owners."""
        config = self.configs[name]
        if self.real_owner:
            return trio.run(real_totals, config, sorted(accounts))
        return {
            account: meters["dyno.seconds"]
            for account, meters in usage_of(config).items()
            if account in accounts
        }


@pytest.fixture(
    scope="module",
    params=[
        "stand-in",
        pytest.param(
            "real",
            marks=pytest.mark.skipif(
                not real_owner_available(), reason="meterd.partitions.owner is not here yet"
            ),
        ),
    ],
)
def daemons(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemons]:
    real = request.param == "real"
    configs = {
        name: write_gateway_config(
            tmp_path_factory.mktemp(name), owners=owners, count=count, shard_size=size
        )
        for name, (count, size, owners) in LAYOUTS.items()
    }
    with popen_gateways([configs["one"], configs["sharded"]], real_owner=real):
        yield Daemons(configs, real)


async def real_totals(config: Config, accounts: Iterable[str]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for account in accounts:
        total = await real_total(config, account)
        if total is not None:
            totals[account] = total
    return totals


event = st.tuples(
    st.integers(0, 11),  # account
    st.integers(0, 15),  # id
    st.one_of(st.integers(0, 10**6), st.decimals(0, 10**6, places=3)),  # quantity
    st.integers(0, 2),  # variant: the same id with another time is an id_conflict
)
streams = st.lists(st.lists(event, min_size=1, max_size=25), min_size=1, max_size=8)


async def send(config: Config, batches: list[list[dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """Each batch of the stream sent, then flushed: after each, the accepted and duplicate
    events so far and the rejections (by the event's place in the stream, and code). The
    client cuts its own frames (so acks are compared summed at each flush, which does not
    depend on where it cut them)."""
    results: list[BatchResult] = []
    token = next(p.token for p in config.producers if p.name == "platform")
    seen: list[tuple[Any, ...]] = []
    with trio.fail_after(60):
        async with Producer(
            f"ws://{config.ingest.listen}/v1/ingest", token, linger=0, on_result=results.append
        ) as producer:
            for batch in batches:
                for item in batch:
                    await producer.send(item)
                await producer.flush()
                seen.append(
                    (
                        sum(r.accepted for r in results),
                        sum(r.duplicates for r in results),
                        sorted((x.ordinal, x.code) for r in results for x in r.rejected),
                    )
                )
    return seen


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=streams)
def test_usage_and_acks_are_the_same_with_one_partition_and_with_256_over_3_owners(
    daemons: Daemons, stream: list[list[tuple[int, int, int | Decimal, int]]]
) -> None:
    example = next(_examples)
    base = now_ms()
    batches = [
        [
            {
                "id": f"e{id}",
                "account": f"x{example}-{account}",
                "meter": "dyno.seconds",
                "quantity": quantity,
                "time": base - 1000 * variant,
                "properties": {"size": "std-1x"},
            }
            for account, id, quantity, variant in batch
        ]
        for batch in stream
    ]
    acks = {name: trio.run(send, config, batches) for name, config in daemons.configs.items()}
    assert acks["one"] == acks["sharded"]
    accounts = {str(item["account"]) for batch in batches for item in batch}
    totals = {name: daemons.totals(name, accounts) for name in daemons.configs}
    assert totals["one"] == totals["sharded"]
    assert totals["one"]  # something was counted
