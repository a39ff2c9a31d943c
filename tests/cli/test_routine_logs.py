"""Routine per-account log lines are at debug level (issue 18 item 4: 305 of 341 lines of a
send were info-level ``account_recovered``, brand-new accounts included); the replay after
a crash stays at info."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meterd.model import Event
from tests.accounts.test_accounts import dyno, hourly, running
from tests.store.helpers import inject_apply_fault


async def test_new_accounts_recover_at_debug_a_crashed_one_at_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def poison(event: Event) -> None:
        if event.id == "poison":
            raise ValueError("cannot apply this event")

    inject_apply_fault(monkeypatch, poison)  # a fault from outside: "poison" crashes its actor
    async with running(tmp_path, max_restarts=1, max_seconds=60) as accounts:
        with capture_logs() as logged:
            for n in range(5):
                await accounts.ingest(f"new-{n}", [dyno(f"new-{n}", "e1", "1")])
                await accounts.checkpoint(f"new-{n}")
        recovered = [e for e in logged if e["event"] == "account_recovered"]
        assert len(recovered) == 5
        assert {(e["log_level"], e["after_crash"]) for e in recovered} == {("debug", False)}
        with capture_logs() as logged:
            await accounts.ingest("acme", [dyno("acme", "ok", "1"), dyno("acme", "poison", "5")])
            await accounts.ingest("acme", [dyno("acme", "after", "1")])
            assert await hourly(accounts, "acme") == [(0, "2", None)]
        after = [e for e in logged if e["event"] == "account_recovered"]
        assert [(e["log_level"], e["after_crash"]) for e in after][-1] == ("info", True)
