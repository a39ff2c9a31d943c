"""``POST /v1/quarantine/{account}/release`` and ``/discard`` in-process: a poison event
injected from outside the actor (its usage class), released once fixed or discarded, and
every refusal naming the id and why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from meterd.app import Services
from meterd.model import HOUR_MS, Event
from tests.ingest.test_server import make_config, now_ms, running
from tests.store.helpers import inject_apply_fault

T0 = now_ms() - now_ms() % HOUR_MS - HOUR_MS


class Poison:
    """Ids in :attr:`ids` raise when an actor applies them (a fault from outside)."""

    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    def __call__(self, event: Event) -> None:
        if event.id in self.ids:
            raise ValueError(f"cannot apply {event.id}")


@asynccontextmanager
async def quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *ids: str
) -> AsyncIterator[tuple[Services, httpx.AsyncClient, Poison]]:
    """A daemon in-process whose account ``qa`` has ``fine`` counted and ``ids`` quarantined."""
    poison = Poison(*ids)
    inject_apply_fault(monkeypatch, poison)
    async with running(make_config(tmp_path)) as services:
        accounts = services.accounts
        event = Event("fine", "qa", "router.requests", 1, T0, (("app", "a"),))
        await accounts.ingest("qa", [event])
        await accounts.call("qa", ("status",))  # awake: the poison crashes it live
        batch = [Event(i, "qa", "router.requests", 1, T0 + n, (("app", "a"),)) for n, i in
                 enumerate(ids)]  # fmt: skip
        await accounts.ingest("qa", batch)
        headers = {"Authorization": f"Bearer {services.api.daemon.config.api.admin_token}"}
        async with httpx.AsyncClient(base_url=services.api.url, headers=headers) as client:
            assert await count(client) == 1  # the usage query's wake-up parks them
            parked = (await client.get("/v1/quarantine", params={"account": "qa"})).json()
            assert sorted(e["event_id"] for e in parked["events"]) == sorted(ids)
            yield services, client, poison


async def count(client: httpx.AsyncClient) -> int:
    usage = await client.get(
        "/v1/accounts/qa/usage",
        params={"meter": "router.requests", "from": T0, "to": T0 + HOUR_MS, "window": "hour"},
    )
    assert usage.status_code == 200, usage.text
    return sum(int(row["value"]) for row in usage.json()["rows"])


async def post(client: httpx.AsyncClient, action: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/v1/quarantine/qa/{action}", json=body)


async def test_release_after_a_fix_counts_the_events_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with quarantined(tmp_path, monkeypatch, "p1", "p2") as (_, client, poison):
        poison.ids.clear()  # the fix is deployed
        answer = await post(client, "release", {"by": "alice", "reason": "meter fixed"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["action"] == "released"
        assert [e["event_id"] for e in body["events"]] == ["p1", "p2"]
        assert "cannot apply" in body["events"][0]["error"]
        assert isinstance(body["batch_id"], int)
        assert (body["unchanged"], body["by"], body["reason"]) == ([], "alice", "meter fixed")
        assert await count(client) == 3
        assert (await client.get("/v1/quarantine", params={"account": "qa"})).json() == {
            "events": []
        }
        # Twice: a no-op that says so.
        again = await post(client, "release", {"ids": ["p1"], "by": "alice", "reason": "again"})
        assert again.status_code == 200
        [same] = again.json()["unchanged"]
        assert (same["event_id"], same["action"], same["by"]) == ("p1", "released", "alice")
        assert same["release_batch"] == body["batch_id"]
        assert again.json()["events"] == []
        assert await count(client) == 3
        # The events page lists each event once, as counted (the released copy is its own).
        page = (await client.get("/v1/accounts/qa/events")).json()["events"]
        assert [(e["id"], e.get("status")) for e in page] == [
            ("fine", None),
            ("p1", None),
            ("p2", None),
        ]
        # A released event counts: it cannot be discarded (void it instead).
        refused = await post(client, "discard", {"ids": ["p1"], "by": "bob", "reason": "no"})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert (error["code"], error["parameter"]) == ("already_released", "ids")
        assert "'p1'" in error["message"]
        assert "void it" in error["message"]


async def test_a_release_that_crashes_again_is_quarantined_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with quarantined(tmp_path, monkeypatch, "p1") as (services, client, _):
        answer = await post(client, "release", {"ids": ["p1"], "by": "al", "reason": "try"})
        assert answer.status_code == 200
        batch = answer.json()["batch_id"]
        with trio.fail_after(10):
            while True:  # the release crashes the actor; its next incarnation parks it
                found = (await client.get("/v1/quarantine", params={"account": "qa"})).json()
                if [e["batch_id"] for e in found["events"]] == [batch]:
                    break
                await trio.testing.wait_all_tasks_blocked()
        assert await count(client) == 1
        assert services.accounts.supervisor.status == "running"


async def test_discard_sets_the_event_aside_for_good_and_says_so_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with quarantined(tmp_path, monkeypatch, "p1") as (_, client, poison):
        answer = await post(client, "discard", {"ids": ["p1"], "by": "bob", "reason": "junk"})
        assert answer.status_code == 200, answer.text
        assert [e["event_id"] for e in answer.json()["events"]] == ["p1"]
        poison.ids.clear()  # fixed: a discarded event still never counts
        assert await count(client) == 1
        page = (await client.get("/v1/accounts/qa/events")).json()["events"]
        assert [(e["id"], e.get("status")) for e in page] == [("fine", None), ("p1", "discarded")]
        explained = await client.get(
            "/v1/accounts/qa/usage/explanation",
            params={"meter": "router.requests", "start": T0, "window": "hour"},
        )
        assert explained.status_code == 200, explained.text
        statuses = {e["id"]: e["status"] for e in explained.json()["events"]}
        assert statuses == {"fine": "counted", "p1": "discarded"}
        void = await client.post(
            "/v1/accounts/qa/events/p1/void", json={"by": "bob", "reason": "x"}
        )
        assert (void.status_code, void.json()["error"]["code"]) == (409, "discarded")
        again = await post(client, "discard", {"ids": ["p1"], "by": "bob", "reason": "again"})
        assert [u["action"] for u in again.json()["unchanged"]] == ["discarded"]
        release = await post(client, "release", {"ids": ["p1"], "by": "al", "reason": "oops"})
        assert (release.status_code, release.json()["error"]["code"]) == (409, "discarded")


@pytest.mark.parametrize(
    ("action", "body", "status", "code", "named"),
    [
        ("release", {"ids": ["nope"], "by": "a", "reason": "r"}, 404, "unknown_event", "nope"),
        ("release", {"ids": ["fine"], "by": "a", "reason": "r"}, 409, "not_quarantined", "fine"),
        (
            "discard",
            {"ids": ["p1", "nope", "fine"], "by": "", "reason": "r"},
            400,
            "invalid_parameter",
            "by",
        ),
        (
            "discard",
            {"ids": ["p1", "nope", "fine"], "by": "a", "reason": "r"},
            409,
            "not_quarantined",  # the message names both: 'nope' unknown, 'fine' counted
            "nope",
        ),
        ("discard", {"by": "a", "reason": "r"}, 400, "invalid_parameter", "ids"),
        ("discard", {"ids": [], "by": "a", "reason": "r"}, 400, "invalid_parameter", "ids"),
        ("release", {"by": "a", "reason": "   "}, 400, "invalid_parameter", "reason"),
        ("release", {"reason": "r"}, 400, "invalid_parameter", "by"),
    ],
)
async def test_refusals_name_the_id_and_why_and_write_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    body: dict[str, Any],
    status: int,
    code: str,
    named: str,
) -> None:
    async with quarantined(tmp_path, monkeypatch, "p1") as (_, client, _):
        answer = await post(client, action, body)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code
        assert named in error["message"]
        parked = (await client.get("/v1/quarantine", params={"account": "qa"})).json()
        assert [e["event_id"] for e in parked["events"]] == ["p1"]
        unknown = await client.post(
            "/v1/quarantine/nobody/release", json={"by": "a", "reason": "r"}
        )
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_account")
