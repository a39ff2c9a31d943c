"""Releasing a quarantined event from the console's actor page, in a real browser (Debian's
chromium, Playwright), against a daemon subprocess of its own: its store holds an account
with an event in quarantine as a meter actor's replay leaves it (the writer's own
operation: tests/store/test_quarantine_release.py), with the error it crashed with. Waits on
what the page shows, never on time."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterd.model import Event
from tests.console.conftest import HOUR, OWNERS
from tests.procs.daemon import DaemonProcess, running_daemon
from tests.store.test_quarantine_release import write_quarantined_store

ACCOUNT = "qa-console"
ERROR = "KeyError: 'dyno.seconds' (the meter was missing from the config)"


def dyno(event_id: str, seconds: str) -> Event:
    properties = (("app", "web"), ("size", "standard-1x"))
    return Event(event_id, ACCOUNT, "dyno.seconds", Decimal(seconds), HOUR + 1, properties)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    events = [dyno("fine", "60"), dyno("poison", "40"), dyno("junk", "7")]
    write_quarantined_store(tmp_path / "store.sqlite3", ACCOUNT, events, {"poison", "junk"}, ERROR)
    with running_daemon(tmp_path, owners=OWNERS, idle_timeout=600) as process:
        yield process


def test_release_and_discard_from_the_actor_page(browser: Any, daemon: DaemonProcess) -> None:
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    api = httpx.Client(base_url=daemon.api_url, headers=headers)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(daemon.api_url + "/")
        page.fill("#token", daemon.config.api.admin_token)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#tree-table tbody tr")
        page.goto(f"{daemon.api_url}/#/actor/{ACCOUNT}")
        row = page.locator("#actor-quarantine tbody tr[data-event='poison']")
        row.wait_for()
        assert ERROR in row.inner_text()
        # Who and why are required before anything is asked.
        row.locator("button[data-action='release']").click()
        page.locator("#quarantine-message", has_text="Say who you are and why").wait_for()
        page.fill("#quarantine-by", "console-test")
        page.fill("#quarantine-reason", "meter config restored")
        row.locator("button[data-action='release']").click()
        text = page.locator("#confirm-text").inner_text()
        assert f"Release event poison of account {ACCOUNT}?" in text
        assert "By console-test: meter config restored" in text
        page.click("#confirm-ok")
        page.locator("#quarantine-message", has_text="Released: poison (journal batch").wait_for()
        page.locator("#actor-quarantine tbody tr[data-event='poison']").wait_for(state="detached")
        # Discard the other one; cancelling first writes nothing.
        junk = page.locator("#actor-quarantine tbody tr[data-event='junk']")
        junk.locator("button[data-action='discard']").click()
        page.click("#confirm-cancel")
        assert junk.count() == 1
        junk.locator("button[data-action='discard']").click()
        assert "will never count" in page.locator("#confirm-text").inner_text()
        page.click("#confirm-ok")
        page.locator("#quarantine-message", has_text="Discarded: junk.").wait_for()
        page.locator("#actor-quarantine tbody tr", has_text="nothing in quarantine").wait_for()
        page.locator("#actor-facts dd[data-fact='quarantined events']", has_text="0").wait_for()
        usage = api.get(
            f"/v1/accounts/{ACCOUNT}/usage",
            params={"meter": "dyno.seconds", "from": HOUR, "to": HOUR + 3_600_000},
        ).json()
        assert [row["value"] for row in usage["rows"]] == ["100"]  # fine + poison, once
        page.reload()
        page.locator("#actor-events tr[data-event='junk']", has_text="discarded").wait_for()
        assert page.locator("#actor-events tr[data-event='poison']").count() == 1
        # Newest first: poison's release batch, then the first batch backwards.
        shown = page.locator("#actor-events tr[data-event]").evaluate_all(
            "rows => rows.map(row => row.dataset.event)"
        )
        assert shown == ["poison", "junk", "fine"]
    finally:
        context.close()
        api.close()
