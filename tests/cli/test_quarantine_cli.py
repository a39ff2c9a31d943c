"""``meterd quarantine release|discard`` against a daemon in-process (a poison event
injected from outside its actor); the commands run in click's runner on a worker thread,
so the daemon's Trio loop keeps serving them (its log lines, printed meanwhile, land in
the runner's output too: outputs are checked for the command's lines)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner, Result

import meterd.cli.support as support
from meterd.app import Services
from meterd.cli.main import main
from tests.api.test_quarantine_api import Poison, count, quarantined


@asynccontextmanager
async def operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *ids: str
) -> AsyncIterator[tuple[Callable[..., Awaitable[Result]], httpx.AsyncClient, Poison]]:
    """``run(*args, input=None)``: ``meterd *args`` against a daemon whose account ``qa``
    has ``fine`` counted and ``ids`` quarantined."""
    async with quarantined(tmp_path, monkeypatch, *ids) as (services, client, poison):
        env = environment(services)

        async def run(*args: str, input: str | None = None) -> Result:
            def invoke() -> Result:
                return CliRunner().invoke(main, list(args), env=env, input=input)

            return await trio.to_thread.run_sync(invoke)

        yield run, client, poison


def environment(services: Services) -> dict[str, str | None]:
    clean: dict[str, str | None] = {key: None for key in os.environ if key.startswith("METERD_")}
    return {
        **clean,
        "METERD_URL": services.api.url,
        "METERD_TOKEN": services.api.daemon.config.api.admin_token,
    }


async def parked(client: httpx.AsyncClient) -> list[str]:
    found = (await client.get("/v1/quarantine", params={"account": "qa"})).json()["events"]
    return [e["event_id"] for e in found]


async def test_release_shows_the_plan_asks_and_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with operator(tmp_path, monkeypatch, "p1", "p2") as (run, client, poison):
        # Without a terminal and without --yes: the plan, then nothing written.
        refused = await run("quarantine", "release", "qa", "--by", "al", "--reason", "fixed")
        assert refused.exit_code == 2, refused.output
        assert "will release (re-apply) every quarantined event of account 'qa':" in (
            refused.stderr
        )
        assert "p1 (batch " in refused.stderr
        assert "ValueError: cannot apply p1" in refused.stderr
        assert "pass --yes" in refused.stderr
        assert await parked(client) == ["p1", "p2"]
        # Interactive, answered no: nothing written.
        monkeypatch.setattr(support, "_interactive", lambda: True)
        no = await run(
            "quarantine", "release", "qa", "--id", "p1", "--by", "al", "--reason", "x", input="n\n"
        )
        assert no.exit_code == 1
        assert "Release these events?" in no.stderr
        assert "nothing written" in no.stderr
        assert await parked(client) == ["p1", "p2"]
        # Answered yes, once the cause is fixed.
        poison.ids.clear()
        yes = await run(
            "quarantine", "release", "qa", "--id", "p1", "--by", "al", "--reason", "x", input="y\n"
        )
        assert yes.exit_code == 0, (yes.output, yes.stderr)
        assert "released 1 event(s) of qa (journal batch " in yes.stdout
        assert "): p1\n" in yes.stdout
        assert await parked(client) == ["p2"]
        assert await count(client) == 2
        # Twice: a no-op that says so.
        again = await run(
            "quarantine", "release", "qa", "--id", "p1", "--by", "al", "--reason", "x", "--yes"
        )
        assert again.exit_code == 0
        assert "p1: already released by al at " in again.stdout
        assert "nothing to do" in again.stdout
        assert await count(client) == 2


async def test_discard_needs_ids_and_refusals_are_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with operator(tmp_path, monkeypatch, "p1") as (run, client, _):
        missing = await run("quarantine", "discard", "qa", "--by", "b", "--reason", "r", "--yes")
        assert missing.exit_code == 2
        assert "Missing option '--id'" in missing.stderr
        counted = await run(
            "quarantine", "discard", "qa", "--id", "fine", "--by", "b", "--reason", "r", "--yes"
        )
        assert counted.exit_code == 1
        message = counted.stderr.strip().splitlines()[-1]
        assert message.startswith("meterd quarantine discard:")
        assert "'fine'" in message
        assert "not_quarantined" in message or "is counted, not quarantined" in message
        assert await parked(client) == ["p1"]
        done = await run(
            "quarantine", "discard", "qa", "--id", "p1", "--by", "b", "--reason", "junk", "--yes"
        )
        assert done.exit_code == 0, done.stderr
        assert "will discard (never count) 1 event id(s) of account 'qa':" in done.stderr
        assert "discarded 1 event(s) of qa: p1\n" in done.stdout
        shown = await run("events", "qa", "--from", "0")
        assert shown.exit_code == 0, shown.stderr
        assert "p1 (discarded)" in shown.stdout
        listed = await run("quarantine", "qa")  # the list, as before release|discard existed
        assert "no quarantined events for qa\n" in listed.stdout
        assert await count(client) == 1
        nothing = await run("quarantine", "release", "qa", "--by", "b", "--reason", "r", "--yes")
        assert "no quarantined events for qa: nothing to release\n" in nothing.stdout
