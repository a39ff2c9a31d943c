"""The console's correction form in a real browser: a submission whose answer is lost, sent
again (after a reload of the page too), carries the same ``Idempotency-Key`` and is recorded
once; a new submission gets a new key. Waits on what the page shows, never on time."""

from __future__ import annotations

from typing import Any

import httpx

from tests.console.conftest import HOUR, account_name
from tests.console.test_console_browser import time_day
from tests.procs.daemon import DaemonProcess


def lose_the_first_answer(page: Any, account: str) -> list[str]:
    """The first adjustment POST of ``account`` reaches the daemon and its answer is lost;
    the others go through. Returns the list the requests' idempotency keys go into."""
    keys: list[str] = []

    def adjustments(route: Any) -> None:
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            route.fetch()  # recorded by the daemon ...
            route.abort("connectionreset")  # ... and the browser never sees the answer
        else:
            route.continue_()

    page.route(f"**/v1/accounts/{account}/adjustments", adjustments)
    return keys


def fill_adjustment(page: Any, quantity: str, reason: str) -> None:
    """The credit form of the corrections page, filled in (the page open already)."""
    page.wait_for_selector("#adjust-form")
    page.select_option("#adj-meter", "dyno.seconds")
    page.fill("#adj-day", time_day(HOUR))
    page.fill("#adj-quantity", quantity)
    page.fill("#adj-dim-size", "standard-1x")
    page.fill("#adj-by", "console-test")
    page.fill("#adj-reason", reason)


def submit(page: Any) -> None:
    page.click("#adj-submit")
    page.click("#confirm-ok")


def recorded(daemon: DaemonProcess, account: str) -> list[tuple[str, str]]:
    """(quantity, idempotency key) of each adjustment the daemon recorded for ``account``."""
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    listed = httpx.get(
        f"{daemon.api_url}/v1/accounts/{account}/adjustments",
        params={"from": 0, "to": HOUR + 40 * 86_400_000},
        headers=headers,
    ).json()["adjustments"]
    return [(a["quantity"], a["idempotency_key"]) for a in listed]


def test_a_correction_whose_answer_was_lost_is_sent_again_with_its_key(
    page: Any, console_daemon: DaemonProcess
) -> None:
    account = account_name(17)
    keys = lose_the_first_answer(page, account)
    page.goto(f"{console_daemon.api_url}/#/corrections?account={account}")
    fill_adjustment(page, "60", "retried submission")
    submit(page)
    lost = page.locator("#correction-lost")
    lost.wait_for()
    assert "submit the same form again" in lost.inner_text()
    submit(page)
    status = page.locator("#corrections-result [role=status]")
    status.wait_for()
    assert "already recorded (this submission was sent before)" in status.inner_text()
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0].startswith("console-")
    # another submission (another quantity) is another correction, under a new key
    page.fill("#adj-quantity", "61")
    submit(page)
    page.locator("#corrections-result", has_text="recorded.").wait_for()
    assert len(keys) == 3
    assert keys[2] != keys[0]
    assert recorded(console_daemon, account) == [("60", keys[0]), ("61", keys[2])]


def test_a_lost_correction_sent_again_after_a_reload_keeps_its_key(
    page: Any, console_daemon: DaemonProcess
) -> None:
    account = account_name(18)
    keys = lose_the_first_answer(page, account)
    page.goto(f"{console_daemon.api_url}/#/corrections?account={account}")
    fill_adjustment(page, "45", "sent again after a reload")
    submit(page)
    page.locator("#correction-lost").wait_for()
    page.reload()  # the page's memory is gone; the same form is filled in again
    fill_adjustment(page, "45", "sent again after a reload")
    submit(page)
    status = page.locator("#corrections-result [role=status]")
    status.wait_for()
    assert "already recorded" in status.inner_text()
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert recorded(console_daemon, account) == [("45", keys[0])]
