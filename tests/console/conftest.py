"""A daemon subprocess with thousands of accounts awake, and a real browser (Debian's
chromium driven by Playwright) for the console's tests.

Without chromium (or Playwright) the browser tests skip, saying how to install it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meterd.client import Producer
from meterd.model import HOUR_MS
from tests.procs.daemon import DaemonProcess, running_daemon

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL = "apt-get install -y chromium (and pip install -e '.[test]' for playwright)"
ACCOUNTS = 3000  # awake meter actors in the console's daemon
NOW = time.time_ns() // 1_000_000
HOUR = NOW - NOW % HOUR_MS - HOUR_MS  # the last whole hour


def account_name(index: int) -> str:
    return f"cust-{index:05d}"


def populate(daemon: DaemonProcess, accounts: int, poll_pause: float = 0.0) -> None:
    """One event for each of ``accounts`` accounts: each wakes one meter actor (the fastest
    way to many actors: a batch of 500 events is one commit, then one delivery each)."""

    async def send() -> None:
        url, token = daemon.ingest_url, daemon.token("platform")
        async with Producer(url, token, linger=0.005, max_batch=500) as producer:
            for index in range(accounts):
                await producer.send(
                    {
                        "id": f"seed-{index}",
                        "account": account_name(index),
                        "meter": "dyno.seconds",
                        "quantity": "60",
                        "time": HOUR + index,
                        "properties": {"size": "standard-1x", "app": "web"},
                    }
                )
            await producer.flush()

    trio.run(send)
    awake_after(daemon, accounts, poll_pause=poll_pause)


def awake_after(
    daemon: DaemonProcess, accounts: int, timeout: float = 1800, poll_pause: float = 0.0
) -> None:
    """Wait until ``accounts`` meter actors are awake (wake-ups run a few at a time after
    their events are acknowledged): asks ``/metrics`` (``meterd_live_actors``, summed over
    owner processes through a gateway) again as soon as it answers (tests), or after
    ``poll_pause`` seconds (the bench)."""
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    deadline = time.monotonic() + timeout
    awake = 0
    with httpx.Client(base_url=daemon.api_url, headers=headers, timeout=60) as client:
        while time.monotonic() < deadline:
            found = LIVE_ACTORS.search(client.get("/metrics").text)
            awake = int(float(found[1])) if found else 0
            if awake >= accounts:
                return
            if poll_pause:
                time.sleep(poll_pause)
    raise AssertionError(f"{awake} of {accounts} actors awake after {timeout} s")


LIVE_ACTORS = re.compile(r"^meterd_live_actors (\S+)$", re.MULTILINE)
OWNERS = int(os.environ.get("METERD_CONSOLE_OWNERS", "0"))
"""``METERD_CONSOLE_OWNERS=2``: the browser tests' daemons run as a gateway over two owner
processes (``[partitions] owners``), so the console is tried through the gateway."""


@pytest.fixture(scope="package")
def console_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    where = tmp_path_factory.mktemp("console")
    with running_daemon(where, owners=OWNERS, idle_timeout=600) as daemon:
        populate(daemon, ACCOUNTS)
        yield daemon


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed: {INSTALL}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, console_daemon: DaemonProcess) -> Iterator[Any]:
    """A console page, logged in (the token typed into the login form)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(console_daemon.api_url + "/")
    page.fill("#token", console_daemon.config.api.admin_token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#tree-table tbody tr")
    try:
        yield page
    finally:
        context.close()


__all__ = ["ACCOUNTS", "CHROMIUM", "account_name"]
