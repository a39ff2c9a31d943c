"""The console in a real browser (Debian's chromium, Playwright) against a daemon subprocess
holding thousands of awake accounts (tests/console/conftest.py). Each waits on what the page
shows (Playwright's waiting), never on time."""

from __future__ import annotations

import re
import time
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
    message = page.locator("#actor-message", has_text="kill of root/")  # (owners: shards)
    message.wait_for()
    assert f"/accounts/meters/{wanted}: running" in message.inner_text()
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
    line.locator("button").click()  # the line in words
    words = page.locator("#explanation-words")
    words.wait_for()
    said = words.inner_text()
    assert "Usage 60 dyno-seconds, corrections 3600 (adjustments below)." in said
    amount = invoice["lines"][0]["amount"]
    assert f"3660 x 0.0000104 per unit = {amount} USD, priced by \"dynos, standard rate\"." in said
    assert "a missed hour of web" in page.locator("#explanation").inner_text()


def test_getting_started_ends_with_an_explained_charge_in_the_console(
    page: Any, console_daemon: DaemonProcess
) -> None:
    """docs/getting-started.md, step 6, as a newcomer follows it: an event for acme (step
    2), then in the console Accounts, acme, its invoice of this month, a line explained."""
    now = time.time_ns() // 1_000_000
    send_events(
        console_daemon,
        [
            {
                "id": "first-1",
                "account": "acme",
                "meter": "dyno.seconds",
                "quantity": 3600,
                "time": now,
                "properties": {"size": "standard-1x", "app": "web"},
            }
        ],
    )
    page.click("nav a[href='#/accounts']")
    page.fill("#account-search", "acme")
    page.click("#page-accounts button[type=submit]")
    page.locator("#account-results tr[data-account='acme'] a").first.click()
    page.locator("#account-usage tr.total[data-meter='dyno.seconds']", has_text="3600").wait_for()
    page.click("#open-invoice")
    row = page.locator("#invoice-lines tbody tr[data-line]", has_text="size=standard-1x app=web")
    row.locator("button", has_text="explain").click()
    said = page.locator("#explanation-words").inner_text()
    assert "Usage 3600 dyno-seconds." in said
    assert "3600 x 0.0000104 per unit = 0.04 USD, priced by \"dynos, standard rate\"." in said
    assert page.locator("#explanation tr", has_text="first-1").count() == 1
    # Its actor page: the usage of the last 24 hours has this hour's event.
    page.goto(f"{console_daemon.api_url}/#/actor/acme")
    total = page.locator("#actor-usage tr.total[data-meter='dyno.seconds'] td.num")
    total.wait_for()
    assert total.inner_text() == "3600"


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
    send_events(
        daemon,
        [
            {
                "id": f"{prefix}-{index}",
                "account": account_name(index),
                "meter": "dyno.seconds",
                "quantity": "1",
                "time": HOUR,
                "properties": {"size": "standard-1x", "app": "web"},
            }
            for index in range(5)
        ],
    )


def send_events(daemon: DaemonProcess, events: list[dict[str, Any]]) -> None:
    async def send() -> None:
        async with Producer(daemon.ingest_url, daemon.token("platform")) as producer:
            for event in events:
                await producer.send(event)
            await producer.flush()

    trio.run(send)


def test_a_void_and_a_month_closed_from_the_forms(
    browser: Any, console_daemon: DaemonProcess
) -> None:
    """The void and close forms (each confirmed first) write what they say; meanwhile every
    request the page makes goes to the daemon, none with the token in its URL, and the token
    is kept in the tab's sessionStorage."""
    token = console_daemon.config.api.admin_token
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("request", lambda request: requested.append(request.url))
        page.goto(console_daemon.api_url + "/")
        page.fill("#token", token)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#tree-table tbody tr")
        account = account_name(9)
        month = time_day(HOUR)[:7]
        page.goto(f"{console_daemon.api_url}/#/corrections?account={account}")
        page.fill("#void-event", "seed-9")
        page.fill("#void-by", "console-test")
        page.fill("#void-reason", "sent by mistake")
        page.click("#void-submit")
        asked = page.locator("#confirm-text").inner_text()
        assert f"Void event seed-9 of account {account}?" in asked
        page.click("#confirm-ok")
        page.locator("#corrections-result", has_text="Void #").wait_for()
        page.fill("#close-period", "2020-01")  # long past: closing it changes no figure
        page.fill("#close-by", "console-test")
        page.click("#close-submit")
        assert "Close 2020-01 for every account?" in page.locator("#confirm-text").inner_text()
        page.click("#confirm-ok")
        page.locator("#corrections-result", has_text="2020-01 closed by console-test").wait_for()
        assert page.evaluate("sessionStorage.getItem('meterd.token')") == token
    finally:
        context.close()
    headers = {"Authorization": f"Bearer {token}"}
    invoice = httpx.get(
        f"{console_daemon.api_url}/v1/accounts/{account}/invoices/{month}", headers=headers
    ).json()
    assert [line["quantity"] for line in invoice["lines"]] == []  # its one event, voided
    assert requested
    assert all(url.startswith(console_daemon.api_url + "/") for url in requested), requested
    assert not any(token in url for url in requested)


def test_events_found_by_id_and_property_on_the_actor_page(
    page: Any, console_daemon: DaemonProcess
) -> None:
    wanted = account_name(321)

    async def send() -> None:
        url, token = console_daemon.ingest_url, console_daemon.token("platform")
        async with Producer(url, token, linger=0) as producer:
            for index, app in enumerate(["api", "worker"]):
                await producer.send(
                    {
                        "id": f"find-{index}",
                        "account": wanted,
                        "meter": "dyno.seconds",
                        "quantity": "5",
                        "time": HOUR + 1000 + index,
                        "properties": {"size": "standard-1x", "app": app},
                    }
                )
            await producer.flush()

    trio.run(send)
    page.goto(f"{console_daemon.api_url}/#/actor/{wanted}")
    rows = page.locator("#actor-events tbody tr[data-event]")
    page.locator("#actor-events tbody tr[data-event='find-1']").wait_for()
    assert rows.count() == 3  # the seed event and the two above
    page.click("#events-find-submit")  # nothing asked: said so, nothing replaced
    page.locator("#events-message", has_text="Give an event id").wait_for()
    page.fill("#events-id", "seed-321")
    page.click("#events-find-submit")
    page.locator("#actor-events-title", has_text="id seed-321").wait_for()
    assert [rows.nth(i).get_attribute("data-event") for i in range(rows.count())] == ["seed-321"]
    page.fill("#events-id", "")
    page.fill("#events-property", "app=worker")
    page.click("#events-find-submit")
    page.locator("#actor-events-title", has_text="app=worker").wait_for()
    assert [rows.nth(i).get_attribute("data-event") for i in range(rows.count())] == ["find-1"]
    page.fill("#events-property", "app")  # not NAME=VALUE: the API's 400, shown
    page.click("#events-find-submit")
    page.locator("#events-message .error", has_text="property").wait_for()
