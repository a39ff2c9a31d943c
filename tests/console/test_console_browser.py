"""The console in a real browser (Debian's chromium, Playwright) against a daemon subprocess
holding thousands of awake accounts (tests/console/conftest.py). Each waits on what the page
shows (Playwright's waiting), never on time."""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio

from meterd.client import Producer
from tests.console.conftest import ACCOUNTS, HOUR, account_name
from tests.procs.daemon import DaemonProcess


def test_the_tree_renders_thousands_of_actors_one_page_at_a_time(page: Any) -> None:
    summary = page.locator("#tree-summary")
    summary.wait_for()
    found = re.search(r"(\d+) matching of (\d+) live nodes", summary.inner_text())
    assert found is not None
    assert int(found[2]) >= ACCOUNTS  # every actor is in the tree ...
    rows = page.locator("#tree-table tbody tr")
    assert rows.count() == 50  # ... and the browser holds one page of it
    assert page.locator("#tree-table tbody tr", has_text="store-writer").count() == 1
    page.click("#tree-next")
    page.wait_for_function("document.querySelector('#tree-summary').innerText.includes('51')")
    page.select_option("#tree-sort", "rate")
    page.wait_for_url(re.compile(r"sort=rate"))
    page.wait_for_selector("#tree-table tbody tr")
    assert page.locator("#tree-table tbody tr").count() == 50


def test_a_search_finds_an_account(page: Any) -> None:
    wanted = account_name(1234)
    page.fill("#tree-search", wanted)
    page.wait_for_url(re.compile(rf"search={wanted}"))
    row = page.locator(f"#tree-table tbody tr[data-path$='/{wanted}']")
    row.wait_for()
    assert page.locator("#tree-table tbody tr").count() == 1
    assert "running" in row.inner_text()
    row.locator("a").click()
    page.wait_for_selector("#actor-facts dd[data-fact='events applied']")
    assert page.locator("#actor-facts dd[data-fact='path']").inner_text().endswith(wanted)
    page.locator("#actor-usage tr.total[data-meter='dyno.seconds']").wait_for()
    assert page.locator("#actor-usage tr.total[data-meter='dyno.seconds'] td.num").inner_text() == (
        "60"
    )


def test_a_kill_from_the_page_shows_the_restart(page: Any, console_daemon: DaemonProcess) -> None:
    wanted = account_name(77)
    page.goto(f"{console_daemon.api_url}/#/actor/{wanted}")
    restarts = page.locator("#actor-facts dd[data-fact='restarts']")
    restarts.wait_for()
    before = int(restarts.inner_text())
    page.click("#actor-kill")
    assert "Kill" in page.locator("#confirm-text").inner_text()
    page.click("#confirm-ok")
    page.locator("#actor-message", has_text="kill of root/accounts/meters/").wait_for()
    page.wait_for_function(
        "n => Number(document.querySelector(\"dd[data-fact='restarts']\").innerText) > n",
        arg=before,
    )
    page.locator("#actor-history tbody tr", has_text="killed").first.wait_for()
    assert page.locator("#actor-facts dd[data-fact='status']").inner_text() == "running"


def test_a_correction_entered_in_the_form_shows_in_the_invoice(
    page: Any, console_daemon: DaemonProcess
) -> None:
    account = account_name(5)
    day = time_day(HOUR)
    month = day[:7]
    page.goto(f"{console_daemon.api_url}/#/corrections?account={account}")
    page.wait_for_selector("#adjust-form")
    page.select_option("#adj-meter", "dyno.seconds")
    page.fill("#adj-day", day)
    page.select_option("#adj-kind", "debit")
    page.fill("#adj-quantity", "3600")
    page.fill("#adj-dim-size", "standard-1x")
    page.fill("#adj-dim-app", "web")
    page.fill("#adj-by", "console-test")
    page.fill("#adj-reason", "a missed hour of web")
    page.click("#adj-submit")
    text = page.locator("#confirm-text").inner_text()
    assert f"Debit 3600 dyno.seconds (size=standard-1x, app=web) on {day}" in text
    assert account in text
    page.click("#confirm-ok")
    page.click("#adj-invoice-link")
    page.wait_for_selector("#invoice-lines tbody tr[data-line]")
    line = page.locator("#invoice-lines tbody tr[data-line]", has_text="size=standard-1x app=web")
    assert line.locator("td[data-col='adjusted']").inner_text() == "3600"
    assert line.locator("td[data-col='quantity']").inner_text() == "3660"  # 60 sent + 3,600
    headers = {"Authorization": f"Bearer {console_daemon.config.api.admin_token}"}
    invoice = httpx.get(
        f"{console_daemon.api_url}/v1/accounts/{account}/invoices/{month}", headers=headers
    ).json()
    assert page.locator("#invoice-total").inner_text() == invoice["total"]
    assert [line["quantity"] for line in invoice["lines"]] == ["3660"]


def time_day(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d")


def test_the_ingest_page_charts_store_commit_latency(
    page: Any, console_daemon: DaemonProcess
) -> None:
    """Events sent while the ingest page is open: the store-commit-latency chart draws its
    p50 and p99 from the commits between two ticks."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{console_daemon.api_url}/#/ingest")
    page.wait_for_selector("#chart-commit-latency")
    drawn = "#chart-commit-latency polyline"
    for round_ in range(60):  # a batch, then up to a tick and a half for the chart
        send_batch(console_daemon, f"latency-{round_}")
        try:
            page.wait_for_selector(drawn, timeout=1_500)
            break
        except PlaywrightTimeout:
            continue
    assert page.locator(drawn).count() == 2  # p50 and p99
    legend = page.locator("#chart-commit-latency .legend").inner_text()
    assert re.search(r"p50: [0-9.]+", legend), legend
    assert re.search(r"p99: [0-9.]+", legend), legend


def send_batch(daemon: DaemonProcess, prefix: str) -> None:
    async def send() -> None:
        async with Producer(daemon.ingest_url, daemon.token("platform")) as producer:
            for index in range(5):
                await producer.send(
                    {
                        "id": f"{prefix}-{index}",
                        "account": account_name(index),
                        "meter": "dyno.seconds",
                        "quantity": "1",
                        "time": HOUR,
                        "properties": {"size": "standard-1x", "app": "web"},
                    }
                )
            await producer.flush()

    trio.run(send)
