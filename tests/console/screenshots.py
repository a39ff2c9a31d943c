"""Screenshots of every console page for docs/console.md, made against a real daemon.

    .venv/bin/pip install -e '.[test,docs]'
    .venv/bin/python -m tests.console.screenshots [--out docs/console]

Sets up what the browser tests' fixtures set up: a store holding an account with two events
in quarantine (``test_quarantine_browser``'s), a daemon on it (the shipped config.toml, free
ports) with 3,000 accounts awake (``conftest.populate``); then sends a steady trickle of
events (a few rejected) so the ingest charts move, kills one actor (its restart history),
records a correction, opens each page in Debian's chromium (Playwright) and writes one PNG
per page into ``--out``. The PNGs stay small: a page taller than :data:`MAX_HEIGHT` is cut
there, and each is reduced to a palette of :data:`COLOURS` colours (Pillow, the ``docs``
extra). Takes about a minute; rerun it after changing a page.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import trio

from meterd.client import Producer
from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS, HOUR, account_name, populate
from tests.console.test_quarantine_browser import ACCOUNT, ERROR, dyno
from tests.procs.daemon import DaemonProcess, running_daemon
from tests.store.test_quarantine_release import write_quarantined_store

MAX_HEIGHT = 1400  # pixels of a page's screenshot at most
COLOURS = 64  # in each PNG's palette (flat colours and antialiased text need no more)

PAGES = (
    ("tree", "#/tree", "#tree-table tbody tr"),
    ("tree-search", "#/tree?search=cust-0012&sort=rate&order=desc", "#tree-table tbody tr"),
    ("actor", f"#/actor/{account_name(77)}", "#actor-usage table"),
    ("actor-quarantine", f"#/actor/{ACCOUNT}", "#actor-quarantine tbody tr[data-event]"),
    ("ingest", "#/ingest", "#chart-events polyline"),
    ("accounts", "#/accounts?search=cust-0004", "#account-results tr[data-account]"),
    ("account", f"#/account/{account_name(5)}?window=hour", "#account-usage table"),
    ("invoice", "", "#invoice-lines tbody tr[data-line]"),
    ("corrections", f"#/corrections?account={account_name(5)}", "#adjust-form"),
    ("quarantine", "#/quarantine", "#quarantine-table tbody tr"),
)


def trickle(daemon: DaemonProcess, stop: threading.Event) -> None:
    """A steady load (~400 events/s over 200 accounts, one in 50 rejected) until ``stop``."""

    async def run() -> None:
        url, token = daemon.ingest_url, daemon.token("platform")
        async with Producer(url, token, linger=0.01) as producer:
            index = 0
            while not stop.is_set():
                for _ in range(40):
                    index += 1
                    await producer.send(
                        {
                            "id": f"trickle-{index}",
                            "account": account_name(index % 200),
                            "meter": "dyno.seconds" if index % 50 else "no.such.meter",
                            "quantity": "1.5",
                            "time": HOUR + index % 3_600_000,
                            "properties": {"size": "standard-1x", "app": "web"},
                        }
                    )
                await trio.sleep(0.1)
            await producer.flush()

    trio.run(run)


def prepare(daemon: DaemonProcess) -> str:
    """A kill (restart history) and a correction (invoice); the invoice page's hash."""
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    base = daemon.api_url
    httpx.post(f"{base}/v1/actors/{account_name(77)}/kill", headers=headers).raise_for_status()
    day_start = HOUR - HOUR % 86_400_000
    account = account_name(5)
    httpx.post(
        f"{base}/v1/accounts/{account}/adjustments",
        headers=headers,
        json={
            "meter": "dyno.seconds",
            "start": day_start,
            "window": "day",
            "dimensions": {"size": "standard-1x", "app": "web"},
            "kind": "credit",
            "quantity": "30",
            "by": "support@example.com",
            "reason": "ticket 4711: a stuck dyno",
        },
    ).raise_for_status()
    import datetime

    month = datetime.datetime.fromtimestamp(HOUR / 1000, datetime.UTC).strftime("%Y-%m")
    return f"#/invoice/{account}/{month}"


def shrink(path: Path) -> None:
    """Rewrite the PNG at ``path`` with a palette of :data:`COLOURS` colours, no dithering."""
    image: Any = importlib.import_module("PIL.Image")
    with image.open(path) as opened:
        picture = opened.convert("RGB")
    reduced = picture.quantize(
        colors=COLOURS, method=image.Quantize.MEDIANCUT, dither=image.Dither.NONE
    )
    reduced.save(path, "PNG", optimize=True)


def shoot(daemon: DaemonProcess, out: Path, invoice: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page: Any = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(30_000)
        page.goto(daemon.api_url + "/")
        page.screenshot(path=str(out / "login.png"))
        shrink(out / "login.png")
        page.fill("#token", daemon.config.api.admin_token)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#tree-table tbody tr")
        for name, where, ready in PAGES:
            page.goto(daemon.api_url + "/" + (where or invoice))
            page.wait_for_selector(ready)
            if name == "ingest":  # a few ticks: the charts need points
                page.wait_for_function(
                    "document.querySelectorAll('#chart-events polyline').length >= 2"
                    " && document.querySelector('#chart-events polyline')"
                    ".getAttribute('points').split(' ').length >= 20"
                )
            if name == "invoice":
                page.click("#invoice-lines tbody tr[data-line] button")
                page.wait_for_selector("#explanation table")
            height = min(MAX_HEIGHT, page.evaluate("document.documentElement.scrollHeight"))
            clip = {"x": 0, "y": 0, "width": 1280, "height": height}
            page.screenshot(path=str(out / f"{name}.png"), full_page=True, clip=clip)
            shrink(out / f"{name}.png")
            print(f"wrote {out / f'{name}.png'}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    try:
        importlib.import_module("PIL.Image")
    except ImportError:
        missing = "screenshots: Pillow is missing: .venv/bin/pip install -e '.[test,docs]'"
        raise SystemExit(missing) from None
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        where = Path(temporary)
        events = [dyno("fine", "60"), dyno("poison", "40"), dyno("junk", "7")]
        write_quarantined_store(where / "store.sqlite3", ACCOUNT, events, {"poison", "junk"}, ERROR)
        with running_daemon(where, idle_timeout=600) as daemon:
            populate(daemon, 3000)
            invoice = prepare(daemon)
            stop = threading.Event()
            load = threading.Thread(target=trickle, args=(daemon, stop))
            load.start()
            try:
                shoot(daemon, args.out, invoice)
            finally:
                stop.set()
                load.join()


if __name__ == "__main__":
    main()
