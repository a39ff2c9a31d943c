"""The gateway daemon with real owner processes, killed and hung under load (issue 15).

Each test runs ``tests/partitions/procs/gateway_daemon.py`` (the gateway, its owners being
``ledger_owner`` processes: durable dedupe ledgers) and meterd's producer client against it,
then checks the owners' ledgers exactly: every event sent counted once, whatever was killed.
Every wait is on a log line of the gateway or an ack, never on the clock.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import trio

from tests.partitions.gateway_harness import (
    Gateway,
    Lane,
    accounts_by_owner,
    gateway,
    merged,
    write_gateway_config,
)
from tests.partitions.procs.ledger_owner import usage_of

SEED = int(os.environ.get("METERD_GATEWAY_SEED", random.randrange(2**32)))


async def kill_owner_rounds(tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    config = write_gateway_config(tmp_path / "d", owners=3)
    by_owner = accounts_by_owner(config, 4)
    victim = 0
    mixed = Lane("mixed", [a for names in by_owner.values() for a in names])
    others = Lane("others", by_owner[1] + by_owner[2])  # none in the victim's shards
    async with gateway(config) as gw:
        pids = await gw.owner_pids()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mixed.run, gw.url, gw.token("platform"), stop)
            nursery.start_soon(others.run, gw.url, gw.token("platform"), stop)
            after = 0
            for kill in range(kills):
                await mixed.wait_acks(mixed.acks + rng.randrange(1, 30))
                os.kill(pids[victim], signal.SIGKILL)
                lost, _ = await gw.wait_for(gw.event("owner_link_lost", owner=victim), after=after)
                acked_when_lost = others.acks
                back, line = await gw.wait_for(
                    gw.event("owner_link_connected", owner=victim, connections=kill + 2),
                    after=lost,
                )
                acked_while_down = others.acks - acked_when_lost
                assert acked_while_down > 0, (
                    f"seed {seed}: no batch of the other owners' accounts was acked while"
                    f" owner {victim} was down"
                )
                assert line["pid"] != pids[victim]
                pids[victim] = line["pid"]
                after = back
            await mixed.wait_acks(mixed.acks + 10)  # acked again after the last restart
            stop.set()
    check_exact(gw, [mixed, others], seed)


def check_exact(gw: Gateway, lanes: list[Lane], seed: int) -> None:
    expected = merged(lanes)
    found = usage_of(gw.config)
    got = {account: meters.get("dyno.seconds") for account, meters in found.items()}
    assert got == expected, f"seed {seed}: totals differ from what was sent"


async def test_kill_9_of_one_owner_under_load_is_exact_and_others_keep_acking(
    tmp_path: Path,
) -> None:
    await kill_owner_rounds(tmp_path, 3, SEED)
