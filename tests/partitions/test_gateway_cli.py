"""Every operator command and the API's non-HTTP parts across owner processes (issue 15):
``meterd run`` with ``[partitions] owners = 2`` (the gateway and two real owners), the CLI
run in process against it (click's runner, ``$METERD_URL`` / ``$METERD_TOKEN``), accounts
chosen so that each owner holds two of them. One daemon for the module (its start is a few
seconds with owners); each test uses its own accounts or reads what the fixture sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket

from meterd.config import account_token
from meterd.isotime import format_time
from tests.cli.support_daemon import T0, Operator, event
from tests.partitions.gateway_harness import (
    accounts_by_owner,
    real_owner_available,
    write_gateway_config,
)
from tests.procs.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.skipif(
    not real_owner_available(), reason="meterd.partitions.owner is not here yet"
)

SECRET = "account-token-secret-0123"
WEBHOOK = '\n[[webhooks]]\nname = "billing"\nurl = "http://127.0.0.1:9/hook"\nsecret = "{}"\n'
DAY = 86_400_000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    where = tmp_path_factory.mktemp("gateway-cli")
    config = write_gateway_config(where, owners=2)
    text = config.path.read_text()
    assert "\n[api]\n" in text
    text = text.replace("\n[api]\n", f'\n[api]\naccount_token_secret = "{SECRET}"\n')
    config.path.write_text(text + WEBHOOK.format("webhook-secret-0123456789"))
    with running_daemon(where, config_path=config.path) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def accounts(gateway: DaemonProcess) -> dict[int, list[str]]:
    """Five accounts of each owner, each with 3 events of 10 dyno-seconds; by position:
    0 restarted and killed, 1 corrected (billing), 2 asked in GraphQL, 3 watched live,
    4 with an alert rule."""
    return accounts_by_owner(gateway.config, 5)


@pytest.fixture(scope="module")
def op(
    gateway: DaemonProcess,
    accounts: dict[int, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Operator:
    operator = Operator(gateway)
    names = [name for held in accounts.values() for name in held]
    operator.produce(
        tmp_path_factory.mktemp("events"),
        [
            event(f"{name}-{i}", name, T0 + i * 1000, 10, size="std")
            for name in names
            for i in range(3)
        ],
    )
    return operator


def total(op: Operator, account: str) -> str | None:
    """``account``'s dyno-seconds this month, by ``meterd usage``."""
    meters = {m["meter"]: m for m in op.json("usage", account)["meters"]}
    found: str | None = meters["dyno.seconds"]["total"]
    return found


def names(accounts: dict[int, list[str]]) -> list[str]:
    return [name for held in accounts.values() for name in held]


def test_accounts_usage_and_events_answer_for_every_owner(
    op: Operator, accounts: dict[int, list[str]]
) -> None:
    listed = op.json("accounts")
    assert {a["account"] for a in listed["accounts"]} == set(names(accounts))
    for name in names(accounts):
        assert total(op, name) in ("30", "31"), name  # 31: after an alert's crossing
        first = op.run("events", name, "--limit", "1")
        assert first.exit_code == 0, first.output
        assert f"{name}-" in first.stdout
        cursor = first.stderr.split("--cursor ")[1].split()[0]  # the next page, through it
        rest = op.json("events", name, "--cursor", cursor, "--all")
        assert len(rest["events"]) in (2, 3)
    name = accounts[1][0]
    assert op.ok("events", name, "--id", f"{name}-2").count(f"{name}-2") == 1


def test_tree_restart_and_kill_reach_actors_in_every_owner(
    op: Operator, accounts: dict[int, list[str]]
) -> None:
    tree = op.json("tree", "--limit", "1000")
    children = {c["name"]: c for c in tree["children"]}
    for node in ("owner-0", "owner-1"):
        assert children[node]["pid"], node
        assert all(c["name"].startswith("shard-") for c in children[node]["children"])
    for owner, held in accounts.items():
        name = held[0]
        restarted = op.ok("restart", name)
        assert f"restarted root/owner-{owner}/shard-" in restarted
        path = restarted.split()[1]
        assert path.endswith(f"/accounts/meters/{name}")
        assert "restarted " + path in op.ok("restart", path)  # by its path in the tree
        assert "killed " + path in op.ok("kill", name, "--yes")
        sweeper = path.rsplit("/", 3)[0] + "/accounts/sweeper"
        assert "restarted " + sweeper in op.ok("restart", sweeper)
        # the actors came back, with their usage
        assert total(op, name) == "30"


def test_billing_support_commands_answer_for_every_owner(
    op: Operator, accounts: dict[int, list[str]]
) -> None:
    month = format_time(T0)[:7]
    day = format_time(T0 - T0 % DAY)[:10]
    for owner, held in accounts.items():
        name = held[1]
        adjusted = op.run(
            "adjust", name, "--meter", "dyno.seconds", "--kind", "credit", "--quantity", "3",
            "--on", day, "--dim", "size=std", "--by", "alice", "--reason", "test", "--yes",
        )  # fmt: skip
        assert adjusted.exit_code == 0, adjusted.output
        assert "recorded adjustment #1" in adjusted.stdout  # the first in its shard
        voided = op.run("void", name, f"{name}-0", "--by", "alice", "--reason", "t", "--yes")
        assert voided.exit_code == 0, voided.output
        explained = op.ok("explain", name, "--period", month)
        assert f"{name}: invoice {month}" in explained, owner
        assert "-3 in corrections" in explained
    closed = op.run("close", "2020-01", "--by", "alice", "--yes")  # every shard
    assert closed.exit_code == 0, closed.output
    assert "closed 2020-01 for" in closed.stdout
    again = op.run("close", "2020-01", "--by", "alice", "--yes")
    assert again.exit_code != 0
    assert "already" in again.output + again.stderr


def listed_deliveries(op: Operator, account: str, timeout: float = 60.0) -> list[Any]:
    """The account's deliveries once at least one is listed (or after ``timeout`` s): the
    ack of the crossing event says it is in the journal; its actor applies it, decides the
    crossing and writes it with a checkpoint just after (docs/alerts.md "Durability"),
    which under load is not yet done when the ack comes. Asked again at once: each answer
    is a request to the daemon, nothing here can be woken by the commit."""
    deadline = time.monotonic() + timeout
    while True:
        found: list[Any] = op.json("deliveries", account)["deliveries"]
        if found or time.monotonic() > deadline:
            return found


def test_alert_rules_and_deliveries_answer_for_every_owner(
    op: Operator, accounts: dict[int, list[str]], tmp_path: Path
) -> None:
    for owner, held in accounts.items():
        name = held[4]
        made = op.run(
            "alerts", "create", name, "--name", f"r{owner}", "--meter", "dyno.seconds",
            "--threshold", "5", "--webhook", "billing", "--by", "alice",
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        assert f"r{owner}" in op.ok("alerts", "list", name)
    crossing: list[Mapping[str, Any]] = [
        event(f"x{o}", held[4], T0 + 60_000, 1) for o, held in accounts.items()
    ]
    op.produce(tmp_path, crossing)  # each account's next event crosses its rule
    for owner, held in accounts.items():
        found = listed_deliveries(op, held[4])
        assert [d["alert"] for d in found] == [f"r{owner}"]
    every = op.json("deliveries")["deliveries"]
    assert {d["account"] for d in every} == {held[4] for held in accounts.values()}
    again = op.run("deliveries", "--redeliver", every[0]["id"])
    assert again.exit_code == 0, again.output
    for owner, held in accounts.items():
        assert op.run("alerts", "delete", held[4], f"r{owner}", "--by", "alice").exit_code == 0
        assert f"r{owner}" not in op.ok("alerts", "list", held[4])


def test_graphql_with_fragments_goes_to_the_accounts_owner(
    op: Operator, accounts: dict[int, list[str]]
) -> None:
    name = accounts[1][2]
    usage = f'usage(meter: "dyno.seconds", from: 0, to: {T0 + DAY}, window: DAY) {{ value }}'
    queries = [
        f'{{ account(id: "{name}") {{ {usage} }} }}',
        f'query {{ ...A }} fragment A on Query {{ account(id: "{name}") {{ {usage} }} }}',
        f'{{ ... on Query {{ account(id: "{name}") {{ {usage} }} }} }}',
        f'query($a: String! = "{name}") {{ account(id: $a) {{ {usage} }} }}',
    ]
    headers = {"Authorization": f"Bearer {op.daemon.config.api.admin_token}"}
    with httpx.Client(base_url=op.daemon.api_url, headers=headers, timeout=30) as client:
        for query in queries:
            answer = client.post("/v1/graphql", json={"query": query})
            assert answer.status_code == 200, answer.text
            rows = answer.json()["data"]["account"]["usage"]
            assert sum(int(row["value"]) for row in rows) == 30, query


def test_live_usage_is_served_across_owners(
    op: Operator, accounts: dict[int, list[str]], tmp_path: Path
) -> None:
    """The live-usage websocket on the gateway: the account's token opens it (another
    account's is refused), the current value at once, then the value after new events."""
    name = accounts[0][3]
    listen = op.daemon.config.api.listen
    host, port = listen.connect_host, listen.port
    token = account_token(SECRET, name)
    seen: list[dict[str, Any]] = []
    phase = ["connecting"]  # where it was, should it not finish (the failure says)

    async def watch() -> None:
        path = f"/v1/accounts/{name}/usage/live"
        bearer = [(b"Authorization", f"Bearer {token}".encode())]
        async with open_websocket(host, int(port), path, use_ssl=False, extra_headers=bearer) as ws:
            phase.append("first message")
            seen.append(json.loads(await ws.get_message()))
            phase.append("sending an event")
            more: list[Mapping[str, Any]] = [event(f"{name}-live", name, T0 + 90_000, 5)]
            await trio.to_thread.run_sync(op.produce, tmp_path, more)
            phase.append("waiting for the new value")
            while True:  # the next message is the new value (within LIVE_INTERVAL or so)
                seen.append(json.loads(await ws.get_message()))
                if seen[-1]["meters"]["dyno.seconds"] != seen[0]["meters"]["dyno.seconds"]:
                    break
        phase.append("another account's token")
        other = f"/v1/accounts/{accounts[1][0]}/usage/live"
        async with open_websocket(host, int(port), other, use_ssl=False) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            refused = json.loads(await ws.get_message())
        assert refused["code"] == "unauthorized"
        phase.append("an unknown account")
        nobody = "/v1/accounts/nobody-at-all/usage/live"
        admin = [(b"Authorization", f"Bearer {op.daemon.config.api.admin_token}".encode())]
        async with open_websocket(
            host, int(port), nobody, use_ssl=False, extra_headers=admin
        ) as ws:
            empty = json.loads(await ws.get_message())
        assert set(empty["meters"].values()) == {None}
        phase.append("done")

    async def bounded() -> None:
        with trio.move_on_after(60):  # only reached if something hangs
            await watch()

    trio.run(bounded)
    assert phase[-1] == "done", (phase, seen, op.daemon.lines[-20:])
    assert seen[0]["type"] == "usage"
    assert seen[0]["account"] == name
    assert seen[0]["meters"]["dyno.seconds"] == "30"
    assert seen[-1]["meters"]["dyno.seconds"] == "35"
