"""The operator HTTP API (protocol.md §3) over real HTTP against a daemon subprocess.

One daemon (``python -m meterd run``) serves the module; events go in through the producer
websocket protocol (:class:`meterd.client.Producer`), answers are read with httpx. Each test
uses its own account names. Readiness (503) is tested in-process, where a child of the
tree can be stopped on purpose.
"""

from __future__ import annotations

import re
import signal
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
import trio
import trio.testing

import supervisors as sv
from meterd.app import Services
from meterd.client import Producer
from meterd.config import Listen, Tls
from meterd.model import HOUR_MS, MINUTE_MS, Event, canonical_quantity
from tests.ingest.test_server import certificate, make_config, running
from tests.procs.daemon import DaemonProcess, running_daemon
from tests.store.helpers import inject_apply_fault
from tests.supervisors.test_operator_actions import FailsAfterFirstStart
from tests.system.test_kill9 import free_ports

NOW = time.time_ns() // 1_000_000
T0 = NOW - NOW % HOUR_MS - 2 * HOUR_MS  # two hours ago, on the hour
__all__ = ["certificate"]  # the fixture, shared with test_ingest

# Seconds: no account of the shared daemon hibernates during a test, even under load (the
# kill and restart tests need their actor awake); hibernation is tested in-process.
IDLE_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("api"), idle_timeout=IDLE_TIMEOUT) as process:
        yield process


@pytest.fixture
async def api(daemon: DaemonProcess) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    async with httpx.AsyncClient(base_url=daemon.api_url, headers=headers, timeout=30) as client:
        yield client


async def ingest(daemon: DaemonProcess, events: Iterable[dict[str, Any]]) -> None:
    """Send ``events`` over the websocket protocol; returns once every one is acknowledged."""
    async with Producer(daemon.ingest_url, daemon.token("platform"), linger=0.001) as producer:
        for event in events:
            await producer.send(event)
        await producer.flush()


def dyno(account: str, index: int, **fields: Any) -> dict[str, Any]:
    """A ``dyno.seconds`` event (sum, dimensions size and app) with an exact decimal."""
    return {
        "id": f"{account}-{index}",
        "account": account,
        "meter": "dyno.seconds",
        "quantity": fields.pop("quantity", f"{index}.{index:03d}"),
        "time": fields.pop("time", T0 + index % 40 * 3 * MINUTE_MS + index),
        "properties": fields.pop("properties", {"size": ["S", "M", "L"][index % 3], "app": "a"}),
    }


def node(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The node at ``root/a/b`` in a /v1/tree answer, or None."""
    names = path.split("/")
    assert tree["name"] == names[0]
    for name in names[1:]:
        found = [child for child in tree["children"] if child["name"] == name]
        if not found:
            return None
        tree = found[0]
    return tree


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert found is not None, f"no {name} {labels} in the metrics"
    return float(found.group(1))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# ---- usage -------------------------------------------------------------------------------


async def test_usage_is_exact_per_window_and_group(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    events = [dyno("usage-co", i) for i in range(1, 40)]
    await ingest(daemon, events)
    await ingest(daemon, events[:10])  # re-sent: duplicates, counted once
    for window, size in (("minute", MINUTE_MS), ("hour", HOUR_MS)):
        for group_by in (None, "size"):
            expected: dict[tuple[int, str | None], Decimal] = defaultdict(Decimal)
            for event in events:
                group = event["properties"]["size"] if group_by else None
                expected[(event["time"] - event["time"] % size, group)] += Decimal(
                    event["quantity"]
                )
            params: dict[str, Any] = {
                "meter": "dyno.seconds",
                "from": T0,
                "to": NOW,
                "window": window,
            }
            if group_by:
                params["group_by"] = group_by
            response = await api.get("/v1/accounts/usage-co/usage", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["account"], body["meter"], body["window"]) == (
                "usage-co",
                "dyno.seconds",
                window,
            )
            assert (body["from"], body["to"]) == (T0, NOW - NOW % size)
            rows = body["rows"]
            assert [row["start"] for row in rows] == sorted(row["start"] for row in rows)
            got = {
                (row["start"], row["group"]["size"] if group_by else None): row["value"]
                for row in rows
            }
            assert got == {key: canonical_quantity(v) for key, v in expected.items()}
            assert all(row["end"] == row["start"] + size for row in rows)
            assert all(("group" in row) == bool(group_by) for row in rows)


async def test_usage_from_inclusive_to_exclusive(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    at = T0 + 30 * MINUTE_MS
    await ingest(daemon, [dyno("edges", 1, time=at, quantity="2.5")])
    params = {"meter": "dyno.seconds", "window": "minute"}
    answers = []
    for low, high in ((at, at + MINUTE_MS), (at + 59_999, at + MINUTE_MS), (at - 1, at)):
        response = await api.get(
            "/v1/accounts/edges/usage", params={**params, "from": low, "to": high}
        )
        answers.append([row["value"] for row in response.json()["rows"]])
    # from is aligned down (at + 59_999 -> at), to is exclusive (the window of at - 1 ends at at)
    assert answers == [["2.5"], ["2.5"], []]


# ---- events ------------------------------------------------------------------------------


async def test_events_page_with_cursors_while_more_arrive(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    first = [dyno("pager", i) for i in range(60)]
    await ingest(daemon, first)
    later = [dyno("pager", i) for i in range(60, 100)]
    seen: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ingest, daemon, later)
        cursor = None
        while True:
            params: dict[str, Any] = {"meter": "dyno.seconds", "limit": 7}
            if cursor is not None:
                params["cursor"] = cursor
            response = await api.get("/v1/accounts/pager/events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["events"]) <= 7
            seen += page["events"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    ids = [event["id"] for event in seen]
    assert len(ids) == len(set(ids)), "a page repeated an event"
    # Everything durable before paging began is seen (new batches only come after).
    assert {e["id"] for e in first} <= set(ids)
    # Everything ingested meanwhile is either already paged or after the last cursor.
    response = await api.get("/v1/accounts/pager/events", params={"limit": 1000})
    everything = response.json()
    assert everything["next_cursor"] is None
    assert [e["id"] for e in everything["events"]][: len(ids)] == ids  # the same order
    assert len(everything["events"]) == 100
    sample = next(e for e in everything["events"] if e["id"] == "pager-3")
    assert sample == {
        "id": "pager-3",
        "account": "pager",
        "meter": "dyno.seconds",
        "quantity": "3.003",
        "time": first[3]["time"],
        "properties": {"app": "a", "size": "S"},
        "producer": "platform",
        "received_at": sample["received_at"],
    }
    assert abs(sample["received_at"] - time.time() * 1000) < 600_000
    # Filters: time range (from inclusive, to exclusive) and meter.
    low, high = first[10]["time"], first[20]["time"]
    response = await api.get(
        "/v1/accounts/pager/events", params={"from": low, "to": high, "limit": 1000}
    )
    in_range = {e["id"] for e in first + later if low <= e["time"] < high}
    assert len(in_range) == 30  # i % 40 in [10, 20): 10-19, 50-59, 90-99
    filtered = [e["id"] for e in response.json()["events"]]
    assert set(filtered) == in_range
    assert filtered == [e["id"] for e in everything["events"] if e["id"] in in_range]
    response = await api.get("/v1/accounts/pager/events", params={"meter": "router.requests"})
    assert response.json() == {"events": [], "next_cursor": None}


# ---- auth and errors ------------------------------------------------------------------------

V1 = [
    ("GET", "/v1/tree"),
    ("GET", "/v1/accounts/acme/usage?meter=dyno.seconds&from=0&to=1"),
    ("GET", "/v1/accounts/acme/events"),
    ("GET", "/v1/quarantine"),
    ("POST", "/v1/actors/root/accounts/sweeper/restart"),
    ("POST", "/v1/actors/root/accounts/sweeper/kill"),
]


@pytest.mark.parametrize(("method", "path"), V1)
async def test_every_v1_route_needs_the_admin_token(
    daemon: DaemonProcess, method: str, path: str
) -> None:
    token = daemon.config.api.admin_token
    async with httpx.AsyncClient(base_url=daemon.api_url) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {token}x"},
        ):
            response = await client.request(method, path, headers=headers)
            error = assert_error(response, 401, "unauthorized")
            assert token not in response.text
            assert token not in error["message"]
        for open_path in ("/healthz", "/metrics", "/openapi.json"):
            assert (await client.get(open_path)).status_code == 200
    assert not any(token in line for line in daemon.lines), "the token reached the log"


async def test_bad_parameters_are_400_naming_the_parameter(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("params", 1)])
    usage = "/v1/accounts/params/usage"
    base = {"meter": "dyno.seconds", "from": "0", "to": "1000"}
    cases: list[tuple[str, dict[str, str], str]] = [
        (usage, {"from": "0", "to": "1"}, "meter"),
        (usage, {"meter": "dyno.seconds", "to": "1"}, "from"),
        (usage, {"meter": "dyno.seconds", "from": "1"}, "to"),
        (usage, {**base, "from": "12.5"}, "from"),
        (usage, {**base, "to": "soon"}, "to"),
        (usage, {**base, "from": "-1"}, "from"),
        (usage, {**base, "to": str(2**63)}, "to"),
        (usage, {**base, "from": "2000"}, "from"),  # from > to
        (usage, {**base, "window": "week"}, "window"),
        (usage, {**base, "group_by": "app2"}, "group_by"),
        (usage, {**base, "meter": ""}, "meter"),
        ("/v1/accounts/params/events", {"limit": "0"}, "limit"),
        ("/v1/accounts/params/events", {"limit": "10001"}, "limit"),
        ("/v1/accounts/params/events", {"cursor": "nonsense"}, "cursor"),
        ("/v1/accounts/params/events", {"cursor": "1.x"}, "cursor"),
        ("/v1/accounts/params/events", {"from": "5", "to": "4"}, "from"),
        ("/v1/tree", {"limit": "-1"}, "limit"),
        ("/v1/tree", {"limit": "many"}, "limit"),
        ("/v1/tree", {"limt": "1"}, "limt"),  # a typo is not silently ignored
        (usage, {**base, "grup_by": "size"}, "grup_by"),
    ]
    for path, params, name in cases:
        error = assert_error(await api.get(path, params=params), 400, "invalid_parameter")
        assert error["parameter"] == name, (params, error)
        assert repr(name) in error["message"], error


async def test_unknown_things_are_404_and_wrong_methods_405(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    await ingest(daemon, [dyno("known", 1)])
    query: dict[str, Any] = {"meter": "dyno.seconds", "from": 0, "to": NOW}
    assert_error(await api.get("/v1/accounts/nobody/usage", params=query), 404, "unknown_account")
    assert_error(await api.get("/v1/accounts/nobody/events"), 404, "unknown_account")
    assert_error(
        await api.get("/v1/accounts/known/usage", params={**query, "meter": "nope"}),
        404,
        "unknown_meter",
    )
    assert_error(
        await api.get("/v1/accounts/known/events", params={"meter": "nope"}), 404, "unknown_meter"
    )
    assert_error(await api.post("/v1/actors/nobody/kill"), 404, "unknown_actor")
    assert_error(await api.post("/v1/actors/root/nothing/restart"), 404, "unknown_actor")
    assert_error(await api.get("/v1/nothing"), 404, "not_found")
    assert_error(await api.get("/v1/actors/known/kill"), 405, "method_not_allowed")
    assert_error(await api.delete("/v1/tree"), 405, "method_not_allowed")
    # Nothing of that woke an actor for an account that does not exist.
    tree = (await api.get("/v1/tree", params={"limit": 10_000})).json()
    assert node(tree, "root/accounts/meters/nobody") is None


async def test_a_hibernated_account_is_409_not_running(tmp_path: Path) -> None:
    """In-process: the account is told to hibernate (as the sweeper does after
    idle_timeout, tested in test_accounts and test_cli_live) rather than waited for."""
    async with running(make_config(tmp_path)) as services:
        accounts = services.accounts
        await accounts.ingest(
            "sleepy", [Event("e1", "sleepy", "router.requests", 1, T0, (("app", "a"),))]
        )
        await accounts.ensure_started("sleepy")  # its delivery wakes it, maybe not yet
        ref = accounts.registry.whereis("sleepy")
        assert ref is not None
        gone = ref.monitor()
        await ref.cast(("hibernate",))
        await gone.wait()
        await trio.testing.wait_all_tasks_blocked()  # its supervisor removed it
        assert "sleepy" not in accounts.registry
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            for action in ("restart", "kill"):
                assert_error(await client.post(f"/v1/actors/sleepy/{action}"), 409, "not_running")
            # It is still known: its usage wakes it and counts its event.
            response = await client.get(
                "/v1/accounts/sleepy/usage",
                params={"meter": "router.requests", "from": T0, "to": NOW, "window": "hour"},
            )
    assert [row["value"] for row in response.json()["rows"]] == ["1"]


# ---- tree and actors -------------------------------------------------------------------------


def assert_node_shape(tree: dict[str, Any]) -> None:
    assert tree["kind"] in ("supervisor", "worker")
    assert tree["status"] in ("running", "restarting", "stopped", "hibernated")
    assert isinstance(tree["restarts"], int)
    assert isinstance(tree["children_total"], int)
    assert tree["started_at"] is None or isinstance(tree["started_at"], int)
    if tree["kind"] == "supervisor":
        assert tree["strategy"] in ("one_for_one", "one_for_all", "rest_for_one")
    else:
        assert isinstance(tree["mailbox"], int)
    assert len(tree["children"]) <= tree["children_total"]
    for child in tree["children"]:
        assert_node_shape(child)


async def test_tree_shape_and_limit(daemon: DaemonProcess, api: httpx.AsyncClient) -> None:
    await ingest(daemon, [dyno(f"tree-{i}", 1) for i in range(5)])
    tree = (await api.get("/v1/tree")).json()
    assert_node_shape(tree)
    assert (tree["name"], tree["strategy"], tree["status"]) == ("root", "rest_for_one", "running")
    assert [c["name"] for c in tree["children"]] == [
        "store-writer",
        "accounts",
        "deliveries",
        "ingest",
        "api",
    ]
    meters = node(tree, "root/accounts/meters")
    assert meters is not None
    assert meters["children_total"] >= 5
    limited = (await api.get("/v1/tree", params={"limit": 2})).json()
    meters = node(limited, "root/accounts/meters")
    assert meters is not None
    assert len(meters["children"]) == 2
    assert meters["children_total"] >= 5
    bare = (await api.get("/v1/tree", params={"limit": 0})).json()
    assert bare["children"] == []
    assert bare["children_total"] == 5


async def test_kill_and_restart_an_account_actor(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    account = "drill"
    await ingest(daemon, [dyno(account, i) for i in range(1, 11)])
    path = f"root/accounts/meters/{account}"
    metrics_before = (await api.get("/metrics")).text
    restarts = metric(
        metrics_before,
        "meterd_actor_restarts_total",
        supervisor="root/accounts/meters",
        cause="exit",
    )

    response = await api.post(f"/v1/actors/{account}/kill")
    assert response.status_code == 200, response.text
    assert response.json() == {"actor": path, "action": "kill", "status": "running"}
    actor = node((await api.get("/v1/tree", params={"limit": 10_000})).json(), path)
    assert actor is not None
    assert actor["status"] == "running"
    assert actor["restarts"] == 1
    assert actor["restart_history"][-1]["kind"] == "killed"
    metrics_after = (await api.get("/metrics")).text
    assert (
        metric(
            metrics_after,
            "meterd_actor_restarts_total",
            supervisor="root/accounts/meters",
            cause="exit",
        )
        == restarts + 1
    )

    response = await api.post(f"/v1/actors/{path}/restart")  # by path this time
    assert response.json() == {"actor": path, "action": "restart", "status": "running"}
    actor = node((await api.get("/v1/tree", params={"limit": 10_000})).json(), path)
    assert actor is not None
    assert [r["kind"] for r in actor["restart_history"]] == ["killed", "operator"]

    await ingest(daemon, [dyno(account, i) for i in range(5, 16)])  # 5..10 are duplicates
    expected = sum(Decimal(dyno(account, i)["quantity"]) for i in range(1, 16))
    response = await api.get(
        f"/v1/accounts/{account}/usage",
        params={"meter": "dyno.seconds", "from": T0, "to": NOW, "window": "hour"},
    )
    total = sum(Decimal(row["value"]) for row in response.json()["rows"])
    assert canonical_quantity(total) == canonical_quantity(expected)


async def test_kill_and_restart_by_path_and_what_is_refused(
    daemon: DaemonProcess, api: httpx.AsyncClient
) -> None:
    for action in ("kill", "restart"):
        response = await api.post(f"/v1/actors/root/accounts/sweeper/{action}")
        assert response.json() == {
            "actor": "root/accounts/sweeper",
            "action": action,
            "status": "running",
        }
    tree = (await api.get("/v1/tree")).json()
    sweeper = node(tree, "root/accounts/sweeper")
    assert sweeper is not None
    assert sweeper["restarts"] >= 2
    # Those would restart the API under the rest_for_one root before it could answer.
    for target in ("root/store-writer", "root/accounts", "root/ingest", "root/api"):
        assert_error(await api.post(f"/v1/actors/{target}/kill"), 409, "would_stop_api")
    assert_error(await api.post("/v1/actors/root/api/restart"), 409, "would_stop_api")
    assert (await api.get("/healthz")).json() == {"status": "ok"}


# ---- metrics, quarantine, health ------------------------------------------------------------


async def test_metrics_move_with_ingestion(daemon: DaemonProcess, api: httpx.AsyncClient) -> None:
    before = (await api.get("/metrics")).text
    events = [dyno("metered", i) for i in range(1, 6)]
    await ingest(daemon, events)
    await ingest(daemon, events[:2])  # duplicates
    await api.get(  # a usage query checkpoints the account: one checkpoint observed
        "/v1/accounts/metered/usage", params={"meter": "dyno.seconds", "from": 0, "to": NOW}
    )
    response = await api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    for name, delta in (
        ("meterd_events_accepted_total", 5),
        ("meterd_events_duplicate_total", 2),
        ("meterd_acks_total", 2),
        ("meterd_connections_total", 2),
    ):
        assert metric(after, name) - metric(before, name) == delta, name
    assert metric(after, "meterd_checkpoint_seconds_count") > metric(
        before, "meterd_checkpoint_seconds_count"
    )
    assert metric(after, "meterd_store_commits_total") > metric(
        before, "meterd_store_commits_total"
    )
    assert metric(after, "meterd_live_actors") >= 1
    assert metric(after, "meterd_quarantined_events") == 0
    assert metric(after, "meterd_store_failed_passes_total") == 0
    assert metric(after, "meterd_store_journal_tail_batches") >= 1  # the cycle is 5 s
    assert metric(after, "meterd_store_wal_checkpoints_total") >= 0  # present (test_wal.py)
    assert metric(after, "meterd_store_wal_failed_checkpoints_total") == 0
    assert metric(after, "meterd_gc_frozen_objects") > 0  # the daemon froze its start-up
    assert metric(after, "meterd_ingest_ack_bytes") == 0  # every ack was taken


async def test_quarantine_lists_nothing_when_nothing_is_poison(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/quarantine", params={"account": "metered"})
    assert response.json() == {"events": []}


async def test_healthz_is_503_while_ingest_is_stopped(tmp_path: Path) -> None:
    """In-process: stopping one child of the root makes the daemon not ready."""
    async with (
        running(make_config(tmp_path)) as services,
        httpx.AsyncClient(base_url=services.api.url) as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        await services.root.terminate_child("ingest")
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert response.json()["problems"]
        await services.root.restart_child("ingest")
        assert (await client.get("/healthz")).status_code == 200


async def test_healthz_reports_failing_index_passes(tmp_path: Path) -> None:
    """In-process: a writer whose journal-index passes fail (test_journal_index.py makes
    them fail for real) is named, with what it holds in memory."""
    async with (
        running(make_config(tmp_path)) as services,
        httpx.AsyncClient(base_url=services.api.url) as client,
    ):
        writer = services.store.writer
        writer.pass_failing = "IntegrityError: UNIQUE constraint failed: dedupe.key"
        response = await client.get("/healthz")
        assert response.status_code == 503
        (problem,) = response.json()["problems"]
        assert problem == (
            f"the store {writer.path} cannot write its journal index (IntegrityError: UNIQUE"
            f" constraint failed: dedupe.key): {writer.journal_tail.size} batches are indexed"
            " in memory only, and memory grows with every batch until a pass succeeds"
        )
        writer.pass_failing = None
        assert (await client.get("/healthz")).status_code == 200


async def test_tls_serves_https(tmp_path: Path, certificate: Tls) -> None:
    config = make_config(tmp_path)
    config = replace(
        config, api=replace(config.api, tls_cert=certificate.cert, tls_key=certificate.key)
    )
    trusted = ssl.create_default_context(cafile=str(certificate.cert))
    async with running(config) as services:
        assert services.api.url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(base_url=services.api.url, verify=trusted) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/v1/tree")).status_code == 401
        plain = services.api.url.replace("https://", "http://")
        async with httpx.AsyncClient(base_url=plain) as client:
            with pytest.raises(httpx.TransportError):
                await client.get("/healthz")


def test_sigterm_stops_the_daemon_within_10_s_with_clients_connected(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon, httpx.Client(base_url=daemon.api_url) as client:
        assert client.get("/healthz").status_code == 200  # a keep-alive connection stays open
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10


async def ingest_poison(
    services: Services, account: str, time: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest events ``fine`` and ``poison`` (one count each, at ``time``) into ``account``
    of an in-process daemon whose actors' usage makes ``poison`` crash them; the next
    wake-up (a usage query, say) quarantines it on replay."""

    def poison(event: Event) -> None:
        if event.id == "poison":
            raise ValueError("cannot apply this event")

    inject_apply_fault(monkeypatch, poison)
    batch = [
        Event("fine", account, "router.requests", 1, time, (("app", "a"),)),
        Event("poison", account, "router.requests", 1, time, (("app", "a"),)),
    ]
    await services.accounts.ensure_started(account)  # awake: the live apply crashes it
    verdict = await services.accounts.ingest(account, batch)
    assert verdict.accepted == [0, 1]  # durable: the actor crashes when it applies them


async def test_a_poison_event_shows_in_quarantine_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the actors' usage makes one event poison): it crashes its actor once, is
    quarantined on replay, and the API lists it."""
    async with running(make_config(tmp_path)) as services:
        await ingest_poison(services, "qacct", T0, monkeypatch)
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            usage = await client.get(  # wakes the account: its replay quarantines the event
                "/v1/accounts/qacct/usage",
                params={"meter": "router.requests", "from": T0, "to": NOW},
            )
            assert [row["value"] for row in usage.json()["rows"]] == ["1"]
            for params in ({"account": "qacct"}, {}):
                [parked] = (await client.get("/v1/quarantine", params=params)).json()["events"]
                assert parked["account"] == "qacct"
                assert parked["event_id"] == "poison"
                assert "cannot apply" in parked["error"]
                assert isinstance(parked["batch_id"], int)
                assert isinstance(parked["at"], int)
            assert (await client.get("/v1/quarantine", params={"account": "other"})).json() == {
                "events": []
            }
            text = (await client.get("/metrics")).text
            assert metric(text, "meterd_quarantined_events") == 1
            restarts = metric(
                text,
                "meterd_actor_restarts_total",
                supervisor="root/accounts/meters",
                cause="exit",
            )
            assert restarts == 1


async def test_the_api_comes_back_on_its_port_when_the_root_restarts_it(tmp_path: Path) -> None:
    """A store writer crash restarts everything after it (rest_for_one), the API included:
    it listens again on the same address and answers."""
    [port] = free_ports(1)
    config = make_config(tmp_path)
    config = replace(config, api=replace(config.api, listen=Listen("127.0.0.1", port)))
    async with running(config) as services:
        url = services.api.url
        assert url == f"http://127.0.0.1:{port}"
        await services.root.kill_child("store-writer")
        assert services.api.url == url
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            headers = {"Authorization": f"Bearer {config.api.admin_token}"}
            tree = (await client.get("/v1/tree", headers=headers)).json()
        api = node(tree, "root/api")
        assert api is not None
        assert api["restarts"] == 1
        assert api["restart_history"][-1]["kind"] == "sibling"


async def test_a_restart_that_fails_to_start_is_409_start_failed(tmp_path: Path) -> None:
    """In-process (a child under the meters supervisor whose second start fails): the
    operator is told why, and the child is left stopped instead of retried."""
    async with running(make_config(tmp_path)) as services:
        meters = services.accounts.supervisor
        starts: list[int] = []
        await meters.start_child(sv.actor_spec("flaky", FailsAfterFirstStart, starts))
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            error = assert_error(await client.post("/v1/actors/flaky/restart"), 409, "start_failed")
            assert "OSError: the disk went away" in error["message"]
            # Left stopped: a dynamic child is removed (it is no account, so 404).
            assert_error(await client.post("/v1/actors/flaky/restart"), 404, "unknown_actor")
        assert starts == [1, 1]
        assert "exit" not in meters.restart_counts


async def test_an_unexpected_error_is_one_structured_event_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process (the store's reader is made to fail): a 500 with the error shape, logged
    once as an event naming the route (never the token), and no multi-line traceback from
    the server on stderr."""
    async with running(make_config(tmp_path)) as services:
        token = services.api.daemon.config.api.admin_token

        async def broken(account: str | None = None) -> list[Any]:
            raise ZeroDivisionError("a bug")

        services.store.reader.quarantined = broken  # type: ignore[method-assign]
        headers = {"Authorization": f"Bearer {token}"}
        with structlog.testing.capture_logs() as events:
            async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
                assert_error(await client.get("/v1/quarantine"), 500, "internal")
                assert (await client.get("/healthz")).status_code == 200  # still serving
    [logged] = [e for e in events if e["log_level"] == "error"]
    assert logged["event"] == "api_internal_error"
    assert logged["path"] == "/v1/quarantine"
    assert "ZeroDivisionError: a bug" in logged["error"]
    assert token not in repr(events)
    # Nothing reached the server's (stdlib) error log, which would print the traceback.
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_an_account_whose_actor_cannot_answer_is_503_unavailable(tmp_path: Path) -> None:
    """In-process: with the meters supervisor stopped, a usage query cannot reach the
    account's actor: 503 unavailable (the client may retry), not 500 internal."""
    async with running(make_config(tmp_path)) as services:
        await services.accounts.ingest(
            "stuck", [Event("e1", "stuck", "router.requests", 1, T0, (("app", "a"),))]
        )
        parent, child_id = sv.find_child(services.root, ["root", "accounts", "meters"])
        assert isinstance(parent, sv.Supervisor)
        await parent.terminate_child(child_id)
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            response = await client.get(
                "/v1/accounts/stuck/usage",
                params={"meter": "router.requests", "from": T0, "to": NOW},
            )
        error = assert_error(response, 503, "unavailable")
        assert "SupervisorStopping" in error["message"]


async def test_a_kill_that_would_escalate_up_to_the_root_is_refused(tmp_path: Path) -> None:
    """In-process: the accounts supervisor allows 3 restarts in 5 s; a 4th kill of one of
    its children would make it give up, and the rest_for_one root would then restart the
    API with it. That kill is refused; the API was never restarted."""
    async with running(make_config(tmp_path)) as services:
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            statuses = []
            for _ in range(6):
                response = await client.post("/v1/actors/root/accounts/sweeper/kill")
                statuses.append(response.status_code)
                if response.status_code != 200:
                    break
            assert statuses == [200, 200, 200, 409]
            assert_error(response, 409, "would_stop_api")
            # A graceful restart does not count toward the intensity: still allowed.
            restarted = await client.post("/v1/actors/root/accounts/sweeper/restart")
            assert restarted.status_code == 200, restarted.text
            tree = (await client.get("/v1/tree")).json()
    api = node(tree, "root/api")
    assert api is not None
    assert api["restarts"] == 0
    accounts = node(tree, "root/accounts")
    assert accounts is not None
    assert accounts["restarts"] == 0


async def test_after_a_kill_of_the_meters_supervisor_its_accounts_answer_again(
    tmp_path: Path,
) -> None:
    """In-process, the reviewer's case: killing root/accounts/meters kills every account
    actor; their names are released, so the next usage query wakes the account again
    (it used to wait forever on a name reserved for no actor)."""
    async with running(make_config(tmp_path)) as services:
        await services.accounts.ingest(
            "acme", [Event("e1", "acme", "router.requests", 1, T0, (("app", "a"),))]
        )
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            killed = await client.post("/v1/actors/root/accounts/meters/kill")
            assert killed.json()["status"] == "running", killed.text
            with trio.fail_after(10):
                response = await client.get(
                    "/v1/accounts/acme/usage",
                    params={"meter": "router.requests", "from": T0, "to": NOW},
                )
    assert [row["value"] for row in response.json()["rows"]] == ["1"]
