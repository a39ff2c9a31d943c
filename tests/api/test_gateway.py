"""The operator API across owner processes (meterd/api/gateway.py): every route answers the
same through the gateway, over real in-process cells (tests/api/cells.py), as one
single-process daemon holding the same events; a shard whose owner does not answer is said,
never silently left out."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import meterd.api.gateway as gateway_module
import supervisors as sv
from meterd.api.gateway import (
    MERGES,
    build_gateway_app,
    graphql_accounts,
    handler_of,
    ingest_counters,
    merge_ingest,
    merge_metrics,
)
from meterd.api.openapi import OPERATIONS
from meterd.api.operations import Operations, Scope
from meterd.config import PartitionsConfig
from meterd.model import HOUR_MS, MINUTE_MS
from meterd.partitions import OwnerUnavailable
from tests.api.cells import HEADERS, LAYOUT, World, accounts_per_shard, event, world
from tests.api.test_api import ingest_poison
from tests.ingest.test_server import ADMIN_TOKEN, make_config

NOW = time.time_ns() // 1_000_000
T0 = NOW - NOW % HOUR_MS - 2 * HOUR_MS
ACCOUNTS = accounts_per_shard(3)  # 3 in each of the 4 shards


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path) as found:
        await found.send(
            event(account, i, T0 + i * 7 * MINUTE_MS, f"{i}.{n}", size="SML"[i % 3])
            for n, account in enumerate(ACCOUNTS)
            for i in range(1, 6)
        )
        yield found


async def both(w: World, method: str, url: str, **kwargs: Any) -> tuple[Any, Any]:
    """The gateway's and the single daemon's answers to one request, checked equal in
    status; their JSON bodies."""
    mine = await w.gateway.request(method, url, **kwargs)
    theirs = await w.reference.request(method, url, **kwargs)
    assert mine.status_code == theirs.status_code, (url, mine.text, theirs.text)
    return mine.json(), theirs.json()


# ---- declarations ---------------------------------------------------------------------------


def test_every_operation_declares_how_it_is_answered_across_owners() -> None:
    for operation in OPERATIONS:
        assert operation.scope is not None, f"{operation.id} declares no scope"
        handler_of(operation)  # a known kind, and a known merge


def test_an_operation_without_a_scope_is_refused_by_the_gateway() -> None:
    ops = Operations()

    @ops.get("/v1/nothing", "nothing", "Nothing.", answers={200: (str, "-")})
    async def nothing(daemon: Any) -> Any:
        raise AssertionError

    [operation] = ops
    with pytest.raises(LookupError, match="declares no scope"):
        handler_of(operation)
    with pytest.raises(TypeError):
        Scope("shards")  # every shard, but merged how?
    shards_merges = {o.scope.merge for o in OPERATIONS if o.scope and o.scope.kind == "shards"}
    assert shards_merges <= set(MERGES)


# ---- one account's routes -----------------------------------------------------------------


async def test_account_routes_answer_as_one_process(w: World) -> None:
    params: dict[str, Any] = {"meter": "dyno.seconds", "from": T0, "to": NOW, "window": "hour"}
    for account in ACCOUNTS:
        mine, theirs = await both(w, "GET", f"/v1/accounts/{account}/usage", params=params)
        assert mine == theirs, account
        assert mine["rows"], account
        mine, theirs = await both(
            w, "GET", f"/v1/accounts/{account}/usage", params={**params, "group_by": "size"}
        )
        assert mine == theirs
        mine, theirs = await both(w, "GET", f"/v1/accounts/{account}/events", params={"limit": 2})
        # (a cursor is the store's own batch number: the cell's, not the single store's)
        assert _strip(mine, ("received_at", "next_cursor")) == _strip(
            theirs, ("received_at", "next_cursor")
        )
        rest = await w.gateway.get(
            f"/v1/accounts/{account}/events", params={"cursor": mine["next_cursor"]}
        )
        assert len(mine["events"]) + len(rest.json()["events"]) == 5
        mine, theirs = await both(w, "GET", f"/v1/accounts/{account}/usage/summary")
        assert mine == theirs
    # The shard asked is the account's, and only it.
    w.owners.asked.clear()
    await w.gateway.get(f"/v1/accounts/{ACCOUNTS[0]}/usage", params=params)
    assert [shard for shard, _, _ in w.owners.asked] == [w.shard(ACCOUNTS[0])]
    # Errors are the cell's, as one process answers them.
    for url, query in (
        ("/v1/accounts/nobody/usage", params),
        (f"/v1/accounts/{ACCOUNTS[0]}/usage", {**params, "meter": "nope"}),
        (f"/v1/accounts/{ACCOUNTS[0]}/usage", {**params, "colour": "red"}),
    ):
        mine, theirs = await both(w, "GET", url, params=query)
        assert mine == theirs


def _without(document: Any, key: str) -> Any:
    if isinstance(document, dict):
        return {k: _without(v, key) for k, v in document.items() if k != key}
    if isinstance(document, list):
        return [_without(v, key) for v in document]
    return document


async def test_the_admin_token_is_checked_by_the_gateway_first(w: World) -> None:
    url = f"/v1/accounts/{ACCOUNTS[0]}/usage"
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        mine = await w.gateway.get(url, headers=headers)
        theirs = await w.reference.get(url, headers=headers)
        assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json())
    w.owners.asked.clear()
    mine = await w.gateway.get(url, headers={"Authorization": ""})
    assert mine.status_code == 401
    assert w.owners.asked == []  # refused before any owner is asked


async def test_billing_writes_and_reads_go_to_the_accounts_shard(w: World) -> None:
    account = ACCOUNTS[5]
    body = {
        "meter": "dyno.seconds",
        "kind": "credit",
        "quantity": "2",
        "start": T0,
        "window": "hour",
        "dimensions": {"size": "S"},
        "by": "alice",
        "reason": "outage",
    }
    mine = await w.gateway.post(f"/v1/accounts/{account}/adjustments", json=body)
    theirs = await w.reference.post(f"/v1/accounts/{account}/adjustments", json=body)
    assert mine.status_code == theirs.status_code == 201, mine.text
    strip = ("id", "at", "created_at", "idempotency_key")  # made by each server
    assert _strip(mine.json(), strip) == _strip(theirs.json(), strip)
    params = {"meter": "dyno.seconds", "from": T0, "to": NOW, "window": "hour"}
    mine_rows, theirs_rows = await both(
        w, "GET", f"/v1/accounts/{account}/usage/billed", params=params
    )
    assert mine_rows == theirs_rows
    void = {"by": "alice", "reason": "sent twice"}
    mine = await w.gateway.post(f"/v1/accounts/{account}/events/{account}-1/void", json=void)
    theirs = await w.reference.post(f"/v1/accounts/{account}/events/{account}-1/void", json=void)
    assert mine.status_code == theirs.status_code, mine.text
    period = time.strftime("%Y-%m", time.gmtime(T0 / 1000))
    mine, theirs = await both(w, "GET", f"/v1/accounts/{account}/invoices/{period}")
    assert mine == theirs
    for url, query in (
        (f"/v1/accounts/{account}/invoices/{period}/restatements", {}),
        (f"/v1/accounts/{account}/voids", {}),
        (f"/v1/accounts/{account}/adjustments", {"from": T0, "to": NOW}),
        (
            f"/v1/accounts/{account}/usage/explanation",
            {"meter": "dyno.seconds", "start": T0, "window": "hour"},
        ),
    ):
        mine, theirs = await both(w, "GET", url, params=query)
        assert _strip(mine, strip) == _strip(theirs, strip), url


def _strip(document: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        document = _without(document, key)
    return document


# ---- actors ------------------------------------------------------------------------------


async def test_actor_actions_reach_the_accounts_cell(w: World) -> None:
    account = ACCOUNTS[7]
    shard = w.shard(account)
    mine = await w.gateway.post(f"/v1/actors/{account}/restart")
    assert mine.status_code == 200, mine.text
    owner = shard % LAYOUT.owners
    expected = f"root/owner-{owner}/shard-{shard:03d}/accounts/meters/{account}"
    assert mine.json() == {"actor": expected, "action": "restart", "status": "running"}
    # The path form, as the gateway's tree shows it, reaches the same node.
    status = await w.gateway.get(f"/v1/actors/{expected}/status")
    assert status.status_code == 200, status.text
    assert status.json()["path"] == expected
    assert status.json()["restarts"] == 1
    sweeper = f"root/owner-{owner}/shard-{shard:03d}/accounts/sweeper"
    found = await w.gateway.get(f"/v1/actors/{sweeper}/status")
    assert found.status_code == 200
    assert found.json()["path"] == sweeper
    # Unknown: as one process says.
    mine, theirs = await both(w, "POST", "/v1/actors/nobody/kill")
    assert mine == theirs
    nowhere = await w.gateway.post("/v1/actors/root/owner-0/kill")  # no tree of its own
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "unknown_actor"


# ---- the global views --------------------------------------------------------------------


async def test_accounts_are_merged_sorted_and_paged_as_one_process(w: World) -> None:
    for params in ({}, {"limit": 5}, {"limit": 5, "after": ACCOUNTS[4]}, {"search": "00"}):
        mine, theirs = await both(w, "GET", "/v1/accounts", params=params)
        assert _without(mine, "updated_at") == _without(theirs, "updated_at"), params
    head = await w.gateway.head("/v1/accounts")
    assert head.status_code == 200
    assert head.content == b""
    # Paging to the end visits every account once, in order.
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await w.gateway.get(
            "/v1/accounts", params={"limit": 5, **({"after": after} if after else {})}
        )
        body = page.json()
        seen += [row["account"] for row in body["accounts"]]
        after = body["next_after"]
        if after is None:
            break
    assert seen == ACCOUNTS


async def test_quarantine_and_deliveries_are_merged(w: World) -> None:
    mine, theirs = await both(w, "GET", "/v1/quarantine")
    assert mine == theirs == {"events": []}
    mine, theirs = await both(w, "GET", "/v1/deliveries")
    assert mine == theirs
    mine, theirs = await both(w, "POST", "/v1/deliveries/alr_nothing/redeliver")
    assert mine == theirs  # 404 from every shard: not found anywhere


async def test_closing_a_period_closes_every_shard_and_a_retry_is_safe(w: World) -> None:
    # A month long over (nothing billed in it: every shard closes it with 0 accounts).
    w.owners.down.add(2)
    partial = await w.gateway.post("/v1/periods/2025-01/close", json={"by": "alice"})
    assert partial.status_code == 503
    error = partial.json()["error"]
    assert error["code"] == "shards_unavailable"
    assert "shards 2 " in error["message"]
    assert "owner-0" in error["message"]
    assert "the same request again closes the rest" in error["message"]
    w.owners.down.clear()
    retried = await w.gateway.post("/v1/periods/2025-01/close", json={"by": "alice"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["period"] == "2025-01"
    again = await w.gateway.post("/v1/periods/2025-01/close", json={"by": "alice"})
    theirs = await w.reference.post("/v1/periods/2025-01/close", json={"by": "alice"})
    assert theirs.status_code == 200
    theirs = await w.reference.post("/v1/periods/2025-01/close", json={"by": "alice"})
    assert again.status_code == theirs.status_code == 409
    assert again.json()["error"]["code"] == theirs.json()["error"]["code"] == "already_closed"


async def test_graphql_goes_to_the_shard_of_its_account(w: World) -> None:
    account = ACCOUNTS[2]
    query = {
        "query": f'{{ account(id: "{account}") {{ id usage(meter: "dyno.seconds",'
        f" from: {T0}, to: {NOW}) {{ start value }} }} }}"
    }
    mine, theirs = await both(w, "POST", "/v1/graphql", json=query)
    assert mine == theirs
    assert mine["data"]["account"]["usage"]
    by_variable = {
        "query": "query($a: String!) { account(id: $a) { id } }",
        "variables": {"a": account},
    }
    mine, theirs = await both(w, "POST", "/v1/graphql", json=by_variable)
    assert mine == theirs
    other = next(a for a in ACCOUNTS if w.shard(a) != w.shard(account))
    two = {
        "query": f'{{ a: account(id: "{account}") {{ id }} b: account(id: "{other}") {{ id }} }}'
    }
    refused = await w.gateway.post("/v1/graphql", json=two)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "several_shards"
    mine, theirs = await both(w, "POST", "/v1/graphql", json={"query": "{ nope }"})
    assert mine == theirs


def test_graphql_accounts_are_read_from_literals_and_variables() -> None:
    assert graphql_accounts(b'{"query": "{ account(id: \\"a\\") { id } }"}') == {"a"}
    assert graphql_accounts(b'{"query": "not graphql"}') == set()
    assert graphql_accounts(b"not json") == set()


def test_graphql_accounts_are_found_through_fragments_and_defaults() -> None:
    def found(query: str, variables: dict[str, Any] | None = None) -> set[str]:
        return graphql_accounts(json.dumps({"query": query, "variables": variables}).encode())

    assert found('query { ...A } fragment A on Query { account(id: "a") { id } }') == {"a"}
    assert found('{ ... on Query { account(id: "a") { id } } }') == {"a"}
    nested = (
        "query { ...A } fragment A on Query { ...B } fragment B on Query { account(id: $x) { id } }"
    )
    assert found(nested, {"x": "b"}) == {"b"}
    assert found('query($x: String! = "c") { account(id: $x) { id } }') == {"c"}
    assert found('query($x: String! = "c") { account(id: $x) { id } }', {"x": "d"}) == {"d"}
    looped = 'query { ...A } fragment A on Query { ...A account(id: "e") { id } }'
    assert found(looped) == {"e"}  # a cycle: the cell's error to say
    assert found("query { ...Missing }") == set()


# ---- an owner that does not answer -------------------------------------------------------


async def test_an_unavailable_shard_is_named_never_left_out(w: World) -> None:
    account = ACCOUNTS[0]
    shard = w.shard(account)
    w.owners.down.add(shard)
    owner = shard % LAYOUT.owners
    answer = await w.gateway.get(
        f"/v1/accounts/{account}/usage", params={"meter": "dyno.seconds", "from": T0, "to": NOW}
    )
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "owner_unavailable"
    assert f"shard {shard}" in error["message"]
    assert f"owner-{owner}" in error["message"]
    assert "retry" in error["message"]
    for url in ("/v1/accounts", "/v1/quarantine", "/v1/deliveries", "/v1/tree/nodes"):
        fanned = await w.gateway.get(url)
        assert fanned.status_code == 503, url
        assert fanned.json()["error"]["code"] == "shards_unavailable"
        assert f"shards {shard} " in fanned.json()["error"]["message"]
    # Accounts of the other shards still answer.
    other = next(a for a in ACCOUNTS if w.shard(a) != shard)
    fine = await w.gateway.get(f"/v1/accounts/{other}/events")
    assert fine.status_code == 200
    health = await w.gateway.get("/healthz")
    assert health.status_code == 503
    assert any(f"shard {shard}" in p for p in health.json()["problems"])
    # Shards of both owners down: each owner named once, with its shards.
    w.owners.down.clear()
    w.owners.down.update({0, 1, 2})
    message = (await w.gateway.get("/v1/accounts")).json()["error"]["message"]
    assert message.startswith("shards 0, 1, 2 did not answer (owner-0 ")
    assert "(shards 0, 2)" in message
    assert "(shards 1)" in message
    w.owners.down.clear()
    w.owners.broken.add(shard)
    broken = await w.gateway.get(f"/v1/accounts/{account}/events")
    assert broken.status_code == 503
    assert "answered an error" in broken.json()["error"]["message"]


# ---- tree, metrics, console ----------------------------------------------------------------


async def test_the_tree_grafts_each_owner_under_its_process_node(w: World) -> None:
    tree = (await w.gateway.get("/v1/tree")).json()
    owners = {child["name"]: child for child in tree["children"]}
    assert set(owners) == {"owner-0", "owner-1"}
    for owner, node in owners.items():
        assert isinstance(node["pid"], int)
        k = int(owner.split("-")[1])
        assert [c["name"] for c in node["children"]] == [
            f"shard-{s:03d}" for s in range(LAYOUT.shards) if s % LAYOUT.owners == k
        ]
        shard_node = node["children"][0]
        assert {c["name"] for c in shard_node["children"]} >= {"store-writer", "accounts"}
    w.owners.down.add(1)
    tree = (await w.gateway.get("/v1/tree")).json()
    [owner1] = [c for c in tree["children"] if c["name"] == "owner-1"]
    assert "unavailable" in owner1


async def test_tree_nodes_merge_every_cell(w: World) -> None:
    answer = (await w.gateway.get("/v1/tree/nodes", params={"limit": 500})).json()
    single = (await w.reference.get("/v1/tree/nodes", params={"limit": 500})).json()

    def meters(rows: list[dict[str, Any]]) -> set[str]:
        return {r["name"] for r in rows if "/accounts/meters/" in r["path"]}

    assert meters(answer["nodes"]) == meters(single["nodes"]) == set(ACCOUNTS)
    assert answer["matched"] == len(answer["nodes"])
    paths = [r["path"] for r in answer["nodes"]]
    assert paths[:2] == ["root", "root/owner-0"]
    assert paths[2] == "root/owner-0/shard-000"
    # Paged: the pages put together are the whole table.
    pages = []
    for offset in range(0, answer["matched"], 7):
        page = await w.gateway.get("/v1/tree/nodes", params={"offset": offset, "limit": 7})
        pages += [r["path"] for r in page.json()["nodes"]]
    assert pages == paths
    # Sorted and searched like one process.
    for params in ({"sort": "name", "search": "acct"}, {"sort": "name", "order": "desc"}):
        mine = (await w.gateway.get("/v1/tree/nodes", params=params)).json()
        theirs = (await w.reference.get("/v1/tree/nodes", params=params)).json()
        if "search" in params:
            assert [r["name"] for r in mine["nodes"]] == [r["name"] for r in theirs["nodes"]]
        assert mine["matched"] >= theirs["matched"] - 1


def _exposition(**values: float) -> str:
    lines = []
    for name, value in values.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        family = name.removesuffix("_total")
        lines += [f"# HELP {family} {family}.", f"# TYPE {family} {kind}", f"{name} {value}"]
    lines += [
        "# HELP meterd_events_rejected Rejected.",
        "# TYPE meterd_events_rejected counter",
        f'meterd_events_rejected_total{{code="bad"}} {values.get("meterd_acks_total", 0)}',
    ]
    return "\n".join(lines) + "\n"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_summed_per_label_set_and_kept_per_owner() -> None:
    cell = {
        "meterd_acks_total": 2.0,
        "process_resident_memory_bytes": 100.0,
        "meterd_alert_oldest_undelivered_seconds": 5.0,
        "process_start_time_seconds": 7.0,
    }
    shards = {
        0: (0, _exposition(**cell)),
        2: (0, _exposition(**{**cell, "meterd_acks_total": 3.0})),  # owner-0's other cell
        1: (
            1,
            _exposition(
                **{
                    **cell,
                    "meterd_acks_total": 5.0,
                    "process_resident_memory_bytes": 50.0,
                    "meterd_alert_oldest_undelivered_seconds": 9.0,
                }
            ),
        ),
    }
    gateway = _exposition(meterd_acks_total=1.0, process_resident_memory_bytes=30.0)
    found = _samples(merge_metrics(gateway, shards, range(4), {3: 1}).decode())
    assert found[("meterd_acks_total", ())] == 11.0
    assert found[("meterd_acks_total", (("owner", "owner-0"),))] == 5.0
    assert found[("meterd_acks_total", (("owner", "owner-1"),))] == 5.0
    assert found[("meterd_acks_total", (("owner", "gateway"),))] == 1.0
    assert found[("meterd_events_rejected_total", (("code", "bad"),))] == 11.0
    assert found[("meterd_events_rejected_total", (("code", "bad"), ("owner", "owner-0")))] == 5.0
    # One process per owner, whatever its cells: counted once.
    assert found[("process_resident_memory_bytes", (("owner", "owner-0"),))] == 100.0
    assert found[("process_resident_memory_bytes", ())] == 180.0
    # An age is the oldest; a start time is per process only.
    assert found[("meterd_alert_oldest_undelivered_seconds", ())] == 9.0
    assert ("process_start_time_seconds", ()) not in found
    assert found[("process_start_time_seconds", (("owner", "owner-1"),))] == 7.0
    up = {labels: v for (name, labels), v in found.items() if name == "meterd_shard_up"}
    assert up[(("owner", "owner-1"), ("shard", "3"))] == 0.0
    assert up[(("owner", "owner-0"), ("shard", "2"))] == 1.0


async def test_metrics_of_every_cell_through_the_gateway(w: World) -> None:
    answer = await w.gateway.get("/metrics")
    assert answer.status_code == 200
    found = _samples(answer.text)
    live = sum(len(c.accounts.supervisor) for c in w.cells.values())
    assert found[("meterd_live_actors", ())] == live
    by_owner = sum(v for (n, labels), v in found.items() if n == "meterd_live_actors" and labels)
    assert by_owner == live
    up = {labels: v for (name, labels), v in found.items() if name == "meterd_shard_up"}
    assert sorted(up.values()) == [1.0] * LAYOUT.shards
    w.owners.down.add(3)
    answer = await w.gateway.get("/metrics")
    assert answer.status_code == 200  # a scrape still answers; it says what is missing
    shard_up = {
        dict(labels)["shard"]: v
        for (n, labels), v in _samples(answer.text).items()
        if n == "meterd_shard_up"
    }
    assert shard_up["3"] == 0.0
    assert shard_up["0"] == 1.0


async def test_console_routes_answer_through_the_gateway(w: World) -> None:
    for url in ("/", "/console/app.js", "/v1/console/meta", "/openapi.json", "/v1/alerts"):
        mine = await w.gateway.get(url)
        theirs = await w.reference.get(url)
        assert mine.status_code == theirs.status_code == 200, url
        assert mine.content == theirs.content, url
    ingest = await w.gateway.get("/v1/console/ingest")
    assert ingest.status_code == 200
    body = ingest.json()
    assert body["live_actors"] == sum(len(c.accounts.supervisor) for c in w.cells.values())
    status = await w.gateway.get(f"/v1/actors/{ACCOUNTS[1]}/status")
    theirs = await w.reference.get(f"/v1/actors/{ACCOUNTS[1]}/status")
    assert status.status_code == theirs.status_code == 200


def test_ingest_snapshots_are_summed() -> None:
    parts = [
        {
            "at": 1,
            "accepted": 2,
            "rejected": {"x": 1},
            "ack_latency_bounds": [0.1],
            "ack_latency_counts": [1, 2],
            "commit_latency_bounds": [0.005, 0.01],
            "commit_latency_counts": [3, 0, 1],
            "producers": [{"producer": "p", "acks": 1}],
        },
        {
            "at": 3,
            "accepted": 5,
            "rejected": {"x": 2, "y": 1},
            "ack_latency_bounds": [0.1],
            "ack_latency_counts": [0, 4],
            "commit_latency_bounds": [0.005, 0.01],
            "commit_latency_counts": [1, 2, 0],
            "producers": [{"producer": "p", "acks": 2}],
        },
    ]
    merged = merge_ingest(parts)
    assert merged["at"] == 3
    assert merged["accepted"] == 7
    assert merged["rejected"] == {"x": 3, "y": 1}
    assert merged["ack_latency_counts"] == [1, 6]
    assert merged["commit_latency_bounds"] == [0.005, 0.01]
    assert merged["commit_latency_counts"] == [4, 2, 1]
    assert merged["producers"] == [{"producer": "p", "acks": 3}]


async def test_the_console_stream_ticks_with_the_merged_snapshot(w: World) -> None:
    # An endless answer: driven over ASGI by hand (httpx's ASGI transport waits for the end).
    app = w.gateway._transport.app  # type: ignore[attr-defined]
    w.owners.down.add(1)
    received: list[dict[str, Any]] = []
    tick = trio.Event()
    gone = trio.Event()

    async def receive() -> dict[str, Any]:
        if not received:
            received.append({})
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if b"data: " in chunks[-1]:
                tick.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/console/stream",
        "raw_path": b"/v1/console/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("gw", 80),
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, receive, send)
        await tick.wait()
        gone.set()
        nursery.cancel_scope.cancel()
    assert chunks[0] == b"retry: 2000\n\n"
    data = json.loads(chunks[-1].split(b"data: ", 1)[1])
    assert data["ingest"]["missing_shards"] == [1]
    assert "accepted" in data["ingest"]


async def test_openapi_is_unchanged(w: World) -> None:
    mine = await w.gateway.get("/openapi.json")
    assert mine.status_code == 200
    assert mine.json() == (await w.reference.get("/openapi.json")).json()


# ---- merges with data ------------------------------------------------------------------------


async def test_quarantined_events_of_every_shard_are_listed_as_one_process(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # New accounts: their actors start after the fault is injected.
    fresh = accounts_per_shard(1, "poisoned")
    poisoned = [fresh[0], next(a for a in fresh if w.shard(a) != w.shard(fresh[0]))]
    for account in poisoned:
        await ingest_poison(w.single, account, T0, monkeypatch)
        await ingest_poison(w.cells[w.shard(account)], account, T0, monkeypatch)
    params = {"meter": "router.requests", "from": T0, "to": NOW}
    for account in poisoned:  # wakes the account: its replay quarantines the event
        mine, theirs = await both(w, "GET", f"/v1/accounts/{account}/usage", params=params)
        assert mine == theirs
    strip = ("at", "batch_id")
    for query in ({}, {"account": poisoned[1]}, {"account": "nobody"}):
        mine, theirs = await both(w, "GET", "/v1/quarantine", params=query)
        assert _strip(mine, strip) == _strip(theirs, strip), query
    listed = (await w.gateway.get("/v1/quarantine")).json()["events"]
    assert sorted(e["account"] for e in listed) == sorted(poisoned)
    assert [e["at"] for e in listed] == sorted(e["at"] for e in listed)
    found = _samples((await w.gateway.get("/metrics")).text)
    assert found[("meterd_quarantined_events", ())] == 2
    nodes = await w.gateway.get("/v1/tree/nodes", params={"status": "quarantined"})
    assert sorted(r["name"] for r in nodes.json()["nodes"]) == sorted(poisoned)
    # Released in one shard, discarded in another, as one process does it (the fault is
    # still injected: the released event is quarantined again on its replay).
    ids = {e["account"]: e["event_id"] for e in listed}
    who = {"by": "alice", "reason": "test"}
    kept, dropped = poisoned
    mine, theirs = await both(w, "POST", f"/v1/quarantine/{kept}/release", json=who)
    local = ("at", "batch_id", "quarantined_at")  # each store's own
    assert _strip(mine, local) == _strip(theirs, local)
    body = {**who, "ids": [ids[dropped]]}
    mine, theirs = await both(w, "POST", f"/v1/quarantine/{dropped}/discard", json=body)
    assert _strip(mine, local) == _strip(theirs, local)
    again = await w.gateway.post(f"/v1/quarantine/{dropped}/discard", json=body)
    assert again.status_code == 200
    left = (await w.gateway.get("/v1/quarantine", params={"account": dropped})).json()
    assert left["events"] == []


@dataclass
class Canned:
    """Owners whose cells answer from a table: ``(shard, path) -> (status, JSON)``."""

    answers: dict[tuple[int, str], tuple[int, Any]]
    partitions: PartitionsConfig = LAYOUT
    down: set[int] = field(default_factory=set)

    async def ask(self, shard: int, op: str, args: dict[str, Any], timeout: float) -> Any:
        if shard in self.down:
            raise OwnerUnavailable(shard, shard % LAYOUT.owners, "down (test)")
        status, document = self.answers.get((shard, args["path"]), (404, _not_found))
        body = json.dumps(document).encode()
        return {"status": status, "headers": [["content-type", "application/json"]], "body": body}

    async def trees(self, limit: int, total: int, timeout: float) -> list[Any]:
        return [None] * LAYOUT.owners

    def pids(self) -> list[int | None]:
        return [None] * LAYOUT.owners


_not_found = {"error": {"code": "unknown_delivery", "message": "no delivery"}}


def _delivery(id: str, created_at: int, status: str = "failed") -> dict[str, Any]:
    return {"id": id, "account": "a", "alert": "x", "webhook": "h", "period": "2026-11",
            "event_id": "e", "created_at": created_at, "status": status, "attempts": 3,
            "last_attempt_at": None, "next_attempt_at": None, "last_error": "503",
            "delivered_at": None}  # fmt: skip


async def test_deliveries_are_merged_and_redelivered_by_the_shard_that_holds_them(
    tmp_path: Path,
) -> None:
    counts = {"pending": 1, "delivered": 2, "failed": 1}
    answers: dict[tuple[int, str], tuple[int, Any]] = {
        (s, "/v1/deliveries"): (
            200,
            {
                "deliveries": [_delivery(f"alr_{s}_{i}", 100 * i + s) for i in range(3)],
                "counts": counts,
                "oldest_undelivered_ms": 10 * s if s % 2 else None,
            },
        )
        for s in range(LAYOUT.shards)
    }
    answers[(2, "/v1/deliveries/alr_2_1/redeliver")] = (200, _delivery("alr_2_1", 1, "pending"))
    owners = Canned(answers)
    config = replace(make_config(tmp_path), partitions=LAYOUT)
    transport = httpx.ASGITransport(app=build_gateway_app(config, owners))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=HEADERS) as gw:
        body = (await gw.get("/v1/deliveries", params={"limit": 5})).json()
        assert [d["id"] for d in body["deliveries"]] == [
            "alr_0_0", "alr_1_0", "alr_2_0", "alr_3_0", "alr_0_1"
        ]  # fmt: skip
        assert body["counts"] == {k: v * LAYOUT.shards for k, v in counts.items()}
        assert body["oldest_undelivered_ms"] == 30
        found = await gw.post("/v1/deliveries/alr_2_1/redeliver")
        assert found.status_code == 200
        assert found.json()["status"] == "pending"
        nowhere = await gw.post("/v1/deliveries/alr_9/redeliver")
        assert nowhere.status_code == 404
        assert nowhere.json()["error"]["code"] == "unknown_delivery"
        owners.down.add(3)  # it may be there: not a 404, a 503 naming the shard
        maybe = await gw.post("/v1/deliveries/alr_9/redeliver")
        assert maybe.status_code == 503
        assert "shards 3 " in maybe.json()["error"]["message"]
        held = await gw.post("/v1/deliveries/alr_2_1/redeliver")
        assert held.status_code == 200  # found: another shard's silence does not matter


async def _idle(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


async def test_the_gateways_own_tree_holds_the_owners(tmp_path: Path) -> None:
    """With the gateway's own tree (its owner-K process nodes, ingest): /v1/tree grafts
    each owner's tree under its node, /v1/tree/nodes lists the gateway's nodes with each
    owner's shards below it, in tree order, and /healthz checks the gateway's children."""
    root = sv.Supervisor(
        [sv.task_spec(name, _idle) for name in ("owner-0", "owner-1", "ingest", "api")],
        name="root",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        async with world(tmp_path, root=lambda: root) as w:  # (as the gateway passes it)
            await w.send([event(a, 1, T0) for a in ACCOUNTS])
            tree = (await w.gateway.get("/v1/tree")).json()
            names = [c["name"] for c in tree["children"]]
            assert names == ["owner-0", "owner-1", "ingest", "api"]
            assert [c["name"] for c in tree["children"][1]["children"]] == [
                "shard-001",
                "shard-003",
            ]
            table = (await w.gateway.get("/v1/tree/nodes", params={"limit": 500})).json()
            paths = [r["path"] for r in table["nodes"]]
            assert paths[:3] == ["root", "root/owner-0", "root/owner-0/shard-000"]
            assert paths[-2:] == ["root/ingest", "root/api"]
            assert table["total"] == len(paths) == table["matched"]
            backwards = await w.gateway.get(
                "/v1/tree/nodes", params={"limit": 500, "order": "desc"}
            )
            assert [r["path"] for r in backwards.json()["nodes"]] == paths[::-1]
            found = await w.gateway.get("/v1/tree/nodes", params={"search": "owner"})
            assert [r["path"] for r in found.json()["nodes"]] == ["root/owner-0", "root/owner-1"]
            assert (await w.gateway.get("/healthz")).json() == {"status": "ok"}
            # The gateway's own nodes are acted on in its own tree.
            restarted = await w.gateway.post("/v1/actors/root/owner-1/restart")
            assert restarted.status_code == 200, restarted.text
            assert restarted.json() == {
                "actor": "root/owner-1",
                "action": "restart",
                "status": "running",
            }
            status = (await w.gateway.get("/v1/actors/root/owner-1/status")).json()
            assert (status["path"], status["restarts"]) == ("root/owner-1", 1)
            unknown = await w.gateway.get("/v1/actors/root/nothing/status")
            assert unknown.status_code == 404
            itself = await w.gateway.post("/v1/actors/root/api/kill")
            assert itself.status_code == 409
            assert itself.json()["error"]["code"] == "would_stop_api"
            await root.terminate_child("ingest")
            health = await w.gateway.get("/healthz")
            assert health.status_code == 503
            assert "ingest is stopped" in health.json()["problems"]
        root.stop()


async def test_a_cells_own_ingest_is_no_problem_of_the_gateway(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producers send to the gateway's ingest: a cell's own (idle) ingest server not
    accepting is not reported by the gateway's /healthz; its store and tree still are."""
    for cell in w.cells.values():  # as in an owner's cell: an ingest server never started
        monkeypatch.setattr(cell.ingest, "addresses", [])
    assert (await w.reference.get("/healthz")).status_code == 200
    health = await w.gateway.get("/healthz")
    assert health.status_code == 200, health.text
    await w.cells[1].root.terminate_child("deliveries")
    health = await w.gateway.get("/healthz")
    assert health.status_code == 503
    assert health.json()["problems"] == ["shard 1: deliveries is stopped"]


async def test_the_console_counts_each_process_once(w: World) -> None:
    """Every cell of an owner reports the same process's memory: counted once per owner
    (here every cell is this test's process: two owners, twice its memory)."""
    merged = (await w.gateway.get("/v1/console/ingest")).json()
    one = (await w.reference.get("/v1/console/ingest")).json()["resident_bytes"]
    assert 1.5 * one < merged["resident_bytes"] < 2.5 * one
    gateway_part = ingest_counters(w.single.ingest)
    assert set(gateway_part) <= set(merged)
    both_parts = merge_ingest([merged, gateway_part])
    assert both_parts["accepted"] == merged["accepted"] + gateway_part["accepted"]


async def test_tree_nodes_page_past_the_first_round(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In tree order any page is exact: the rows of a shard past what the first round
    asked for are asked again at their own offset (shown with a first round of 5 rows)."""
    whole = (await w.gateway.get("/v1/tree/nodes", params={"limit": 500})).json()
    paths = [r["path"] for r in whole["nodes"]]
    monkeypatch.setattr(gateway_module, "MAX_NODES_LIMIT", 5)
    for order, expected in (("asc", paths), ("desc", paths[::-1])):
        pages: list[str] = []
        for offset in range(0, len(paths), 4):
            page = await w.gateway.get(
                "/v1/tree/nodes", params={"offset": offset, "limit": 4, "order": order}
            )
            assert page.json()["matched"] == len(paths)
            pages += [r["path"] for r in page.json()["nodes"]]
        assert pages == expected
    deep = await w.gateway.get("/v1/tree/nodes", params={"sort": "name", "offset": 4})
    assert deep.status_code == 400
    assert deep.json()["error"]["parameter"] == "offset"
