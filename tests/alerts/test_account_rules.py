"""Rules of one account through the API (docs/alerts.md, "Rules of one account"): checked
like [[alerts]] (every problem in one answer), stored by the writer with who and when,
evaluated by a running actor from its next event, kept across a restart; deleting keeps the
crossings. In-process daemon, real HTTP."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner

from meterd.alerts import AlertRule, Webhook
from meterd.app import Services
from meterd.cli.main import main as cli
from meterd.config import Config
from meterd.model import Event
from tests.ingest.test_server import ADMIN_TOKEN, make_config, running

from .receiver import Receiver

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = time.time_ns() // 1_000_000
T = NOW - 60_000  # this month (or, on the 1st at 00:00, just before it: both fine)


def config_with_webhook(tmp_path: Path) -> Config:
    hook = Webhook(name="billing", url="http://127.0.0.1:9/hooks", secret="s" * 20)
    configured = AlertRule(
        name="fleet-100", meter="dyno.seconds", webhook="billing", threshold=Decimal(100)
    )
    return replace(make_config(tmp_path), webhooks=(hook,), alerts=(configured,))


@asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    async with running(config) as services:
        url = services.api.url
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
            yield services, client


def dyno(account: str, id: str, seconds: int) -> Event:
    return Event(id, account, "dyno.seconds", seconds, T, (("size", "std"),))


async def send(services: Services, account: str, *events: Event) -> None:
    """Commit ``events`` and wait until the account's actor applied them and made its
    crossings durable (a checkpoint call queues behind the deliveries)."""
    await services.accounts.ingest(account, list(events))
    await services.accounts.checkpoint(account)


def crossings(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return [
            (str(a), str(r), str(e))
            for a, r, e in conn.execute(
                "SELECT account, alert, event_id FROM alert_outbox ORDER BY seq"
            )
        ]
    finally:
        conn.close()


RULE = {"name": "acme-10", "meter": "dyno.seconds", "threshold": "10", "webhook": "billing"}


async def test_every_problem_of_a_rule_is_named_in_one_answer(tmp_path: Path) -> None:
    async with daemon(config_with_webhook(tmp_path)) as (_, api):
        bad = {
            "name": "no spaces",
            "meter": "dyno.secnds",
            "threshold": 5,
            "webhook": "biling",
            "accounts": ["other"],
            "colour": "red",
        }
        answer = await api.post("/v1/accounts/acme/alerts", json=bad)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "invalid_rule"
        problems = error["problems"]
        assert len(problems) == 7, problems
        text = "\n".join(problems)
        assert "by: missing" in text
        assert "colour: unknown key" in text
        assert "name: " in text
        hint = "(did you mean 'dyno.seconds'?)"
        assert f"meter: 'dyno.secnds' is not a configured meter {hint}" in text
        assert 'threshold: expected a decimal string like "1000" or "25.00" (write it as a' in text
        assert "webhook: 'biling' is not a configured webhook (did you mean 'billing'?)" in text
        assert "accounts: a rule of one account watches that account ('acme'" in text
        both = await api.post(
            "/v1/accounts/acme/alerts", json={**RULE, "spend": "5", "by": "alice"}
        )
        assert both.json()["error"]["problems"] == [
            "spend: give threshold (usage) or spend (amount), not both"
        ]
        # The same messages as the config gives for the same [[alerts]] entry.
        assert (await api.get("/v1/accounts/acme/alerts")).json()["alerts"][0]["source"] == (
            "config"
        )


async def test_a_rule_is_created_evaluated_listed_and_deleted(tmp_path: Path) -> None:
    config = config_with_webhook(tmp_path)
    store = config.store_path
    async with daemon(config) as (services, api):
        await send(services, "acme", dyno("acme", "e1", 4))  # the actor is awake
        made = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "alice"})
        assert made.status_code == 201, made.text
        rule = made.json()
        assert (rule["name"], rule["threshold"], rule["source"]) == ("acme-10", "10", "account")
        assert rule["created_by"] == "alice"
        assert rule["active"] is True
        assert abs(rule["created_at"] - time.time_ns() // 1_000_000) < 60_000
        again = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "bob"})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "rule_exists")
        clash = await api.post(
            "/v1/accounts/acme/alerts", json={**RULE, "name": "fleet-100", "by": "bob"}
        )
        assert clash.status_code == 409
        listed = (await api.get("/v1/accounts/acme/alerts")).json()["alerts"]
        assert [(r["name"], r["source"]) for r in listed] == [
            ("fleet-100", "config"),
            ("acme-10", "account"),
        ]
        assert (await api.get("/v1/accounts/other/alerts")).json()["alerts"][1:] == []
        # The running actor evaluates it from its next event: 4 + 5 < 10, + 3 crosses.
        await send(services, "acme", dyno("acme", "e2", 5))
        assert crossings(store) == []
        await send(services, "acme", dyno("acme", "e3", 3))
        assert crossings(store) == [("acme", "acme-10", "e3")]
        # Another account is not watched by acme's rule.
        await send(services, "globex", dyno("globex", "g1", 50))
        assert crossings(store) == [("acme", "acme-10", "e3")]
        gone = await api.delete("/v1/accounts/acme/alerts/acme-10", params={"by": "carol"})
        assert gone.status_code == 200, gone.text
        assert (gone.json()["deleted_by"], gone.json()["active"]) == ("carol", False)
        missing = await api.delete("/v1/accounts/acme/alerts/acme-10", params={"by": "carol"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_rule")
        no_by = await api.delete("/v1/accounts/acme/alerts/acme-10")
        assert no_by.status_code == 400
        # Deleted: no longer listed, no longer evaluated; its crossing stays.
        listed = (await api.get("/v1/accounts/acme/alerts")).json()["alerts"]
        assert [r["name"] for r in listed] == ["fleet-100"]
        await send(services, "acme", dyno("acme", "e4", 100))
        assert crossings(store) == [("acme", "acme-10", "e3"), ("acme", "fleet-100", "e4")]
        # A rule made again after its delete is a rule again (created by, when).
        remade = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "dave"})
        assert remade.status_code == 201
        conn = sqlite3.connect(store)
        audit = conn.execute(
            "SELECT name, created_by, deleted_by FROM alert_rules ORDER BY rule_id"
        ).fetchall()
        conn.close()
        assert audit == [("acme-10", "alice", "carol"), ("acme-10", "dave", None)]


async def test_a_rule_made_above_its_threshold_crosses_on_the_next_event(
    tmp_path: Path,
) -> None:
    config = config_with_webhook(tmp_path)
    async with daemon(config) as (services, api):
        await send(services, "acme", dyno("acme", "e1", 50))
        made = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "alice"})
        assert made.status_code == 201
        assert crossings(config.store_path) == []  # nothing until an event is counted
        await send(services, "acme", dyno("acme", "e2", 1))
        assert crossings(config.store_path) == [("acme", "acme-10", "e2")]
        conn = sqlite3.connect(config.store_path)
        (body,) = conn.execute("SELECT body FROM alert_outbox").fetchone()
        conn.close()
        assert b'"value":"51"' in body
        assert b'"threshold":"10"' in body


async def test_rules_are_kept_in_the_store_and_evaluated_after_a_restart(
    tmp_path: Path,
) -> None:
    config = config_with_webhook(tmp_path)
    async with daemon(config) as (services, api):
        made = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "alice"})
        assert made.status_code == 201
    async with daemon(config) as (services, api):  # a sleeping account wakes with it
        listed = (await api.get("/v1/accounts/acme/alerts")).json()["alerts"]
        assert [r["name"] for r in listed] == ["fleet-100", "acme-10"]
        await send(services, "acme", dyno("acme", "e1", 12))
        assert crossings(config.store_path) == [("acme", "acme-10", "e1")]


@pytest.mark.parametrize("webhooks", [False, True])
async def test_a_rule_whose_webhook_is_gone_is_listed_inactive(
    tmp_path: Path, webhooks: bool
) -> None:
    config = config_with_webhook(tmp_path)
    async with daemon(config) as (_, api):
        assert (await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "a"})).is_success
    other: dict[str, Any] = {"alerts": ()}
    if webhooks:
        other["webhooks"] = (Webhook(name="other", url="http://127.0.0.1:9/", secret="t" * 20),)
    else:
        other["webhooks"] = ()
    async with daemon(replace(config, **other)) as (services, api):
        (listed,) = (await api.get("/v1/accounts/acme/alerts")).json()["alerts"]
        assert listed["active"] is False
        assert listed["inactive_reason"] == "webhook 'billing' is not configured"
        await send(services, "acme", dyno("acme", "e1", 12))
        assert crossings(config.store_path) == []


async def test_the_cli_creates_lists_and_deletes_rules(tmp_path: Path) -> None:
    async with daemon(config_with_webhook(tmp_path)) as (services, _):
        env = {"METERD_URL": services.api.url, "METERD_TOKEN": ADMIN_TOKEN}

        def run(*args: str) -> Any:
            return CliRunner().invoke(cli, list(args), env=env)

        made = await trio.to_thread.run_sync(
            lambda: run(
                "alerts", "create", "acme", "--name", "acme-10", "--meter", "dyno.seconds",
                "--threshold", "10", "--webhook", "billing", "--by", "alice",
            )
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        assert "created acme-10 for acme: dyno.seconds threshold 10 a month" in made.output
        wrong = await trio.to_thread.run_sync(
            lambda: run(
                "alerts", "create", "acme", "--name", "x", "--meter", "dyno.secs",
                "--threshold", "-1", "--webhook", "billing", "--by", "alice",
            )
        )  # fmt: skip
        assert wrong.exit_code == 1
        assert "meter: 'dyno.secs' is not a configured meter" in wrong.output
        assert "threshold: expected a decimal string" in wrong.output
        listed = await trio.to_thread.run_sync(lambda: run("alerts", "list", "acme"))
        assert listed.exit_code == 0, listed.output
        assert "acme-10" in listed.output
        assert "fleet-100" in listed.output
        assert "by alice" in listed.output
        gone = await trio.to_thread.run_sync(
            lambda: run("alerts", "delete", "acme", "acme-10", "--by", "carol")
        )
        assert gone.exit_code == 0, gone.output
        assert "deleted acme-10 of acme" in gone.output
        again = await trio.to_thread.run_sync(
            lambda: run("alerts", "delete", "acme", "acme-10", "--by", "carol")
        )
        assert again.exit_code == 1
        assert "no alert rule 'acme-10'" in again.output


async def test_explain_shows_which_event_crossed_which_alert(tmp_path: Path) -> None:
    receiver = Receiver("s" * 20).start()
    try:
        base = config_with_webhook(tmp_path)
        hook = Webhook(name="billing", url=receiver.url, secret="s" * 20)
        async with daemon(replace(base, webhooks=(hook,))) as (services, api):
            made = await api.post("/v1/accounts/acme/alerts", json={**RULE, "by": "alice"})
            assert made.status_code == 201
            await send(services, "acme", dyno("acme", "e1", 4), dyno("acme", "e2", 7))
            service = services.deliveries
            assert service is not None
            await service.wait_until(lambda: service.delivered >= 1)
            period = time.strftime("%Y-%m", time.gmtime(T / 1000))
            doc = (await api.get("/v1/accounts/acme/crossings", params={"period": period})).json()
            (crossing,) = doc["crossings"]
            assert crossing["alert"] == "acme-10"
            assert crossing["event_id"] == "e2"
            assert crossing["crossed_at"] == T
            assert (crossing["value_before"], crossing["value"]) == ("4", "11")
            assert crossing["delivery"]["status"] == "delivered"
            assert crossing["delivery"]["attempts"] == 1
            other = await api.get("/v1/accounts/acme/crossings", params={"period": "2001-01"})
            assert other.json()["crossings"] == []
            env = {"METERD_URL": services.api.url, "METERD_TOKEN": ADMIN_TOKEN}
            shown = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(cli, ["explain", "acme", "--period", period], env=env)
            )
            assert shown.exit_code == 0, shown.output
            assert f"alerts crossed in {period}:" in shown.output
            assert "acme-10 (dyno.seconds threshold 10): event e2 at" in shown.output
            assert "took it from 4 to 11" in shown.output
            assert "delivered (1 attempt)" in shown.output
    finally:
        receiver.stop()
