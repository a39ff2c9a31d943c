"""``kill -9`` of a daemon around a release of quarantined events: after a restart each
event is counted exactly once or still in quarantine, never both, never lost.

The store starts with an account holding counted events and 20 quarantined ones (written by
the writer's own operations, as a meter actor's replay leaves them:
tests/store/test_quarantine_release.py). A release of all of them is posted and the daemon
is killed at one point of it:

* ``sent``: right after the request is handed to the socket (before or after its commit,
  as the race falls);
* ``committed``: once the daemon logged ``quarantine_released`` (committed and delivered to
  the actor, maybe not applied, not checkpointed);
* ``answered``: once the answer came back.

A release is one transaction, so after the restart all 20 are released or none is. The
default suite runs each point once; ``pytest -m slow`` runs ``METERD_SOAK`` rounds (default
10) of each, with ingest traffic on the same account. Kill points are log lines and answers,
never sleeps.
"""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterd.model import HOUR_MS, Event
from tests.procs.daemon import DaemonProcess, running_daemon
from tests.store.test_quarantine_release import write_quarantined_store

ACCOUNT = "qk"
NOW = 1_795_000_000_000  # a fixed past hour: no late-window question (the store is written)
HOUR = NOW - NOW % HOUR_MS
POISON = [f"p-{n}" for n in range(20)]
COUNTED = [f"ok-{n}" for n in range(5)]


def events() -> list[Event]:
    made = []
    for n, event_id in enumerate(COUNTED + POISON):
        quantity = Decimal(1) if event_id in COUNTED else Decimal(100)
        properties = (("app", "web"), ("size", "standard-1x"))
        made.append(Event(event_id, ACCOUNT, "dyno.seconds", quantity, HOUR + n, properties))
    return made


def client(daemon: DaemonProcess) -> httpx.Client:
    headers = {"Authorization": f"Bearer {daemon.config.api.admin_token}"}
    return httpx.Client(base_url=daemon.api_url, headers=headers, timeout=30)


def release_all(daemon: DaemonProcess, by: str = "ops") -> httpx.Response:
    with client(daemon) as api:
        return api.post(
            f"/v1/quarantine/{ACCOUNT}/release", json={"by": by, "reason": "fix deployed"}
        )


def killed_around_a_release(daemon: DaemonProcess, point: str) -> None:
    """Post a release of everything and ``kill -9`` the daemon at ``point``."""
    answers: list[Any] = []
    sent = threading.Event()

    def post() -> None:
        try:
            with client(daemon) as api:
                request = api.build_request(
                    "POST",
                    f"/v1/quarantine/{ACCOUNT}/release",
                    json={"by": "ops", "reason": "fix deployed"},
                )
                sent.set()
                answers.append(api.send(request))
        except httpx.HTTPError as error:  # the daemon died under it
            answers.append(error)
        finally:
            sent.set()

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    if point == "sent":
        sent.wait(30)
    elif point == "committed":
        assert daemon.wait_for_log(
            lambda lines: any('"quarantine_released"' in line for line in lines)
        ), "the release was not logged"
    else:
        thread.join(30)
        assert answers, "no answer"
        assert isinstance(answers[0], httpx.Response)
        assert answers[0].status_code == 200, answers[0].text
    daemon.kill()
    thread.join(30)


def state(daemon: DaemonProcess) -> tuple[Decimal, list[str], dict[str, str]]:
    """After a restart: the account's usage (waking its actor), the ids in quarantine, and
    every event's status as the events page shows it (each id listed once)."""
    with client(daemon) as api:
        usage = api.get(
            f"/v1/accounts/{ACCOUNT}/usage",
            params={"meter": "dyno.seconds", "from": HOUR, "to": HOUR + HOUR_MS},
        )
        assert usage.status_code == 200, usage.text
        total = sum((Decimal(row["value"]) for row in usage.json()["rows"]), Decimal(0))
        parked = api.get("/v1/quarantine", params={"account": ACCOUNT}).json()["events"]
        page = api.get(f"/v1/accounts/{ACCOUNT}/events", params={"limit": 1000}).json()
    ids = [event["id"] for event in page["events"]]
    assert len(ids) == len(set(ids)), f"an event is listed twice: {ids}"
    statuses = {event["id"]: event.get("status", "counted") for event in page["events"]}
    return total, sorted(e["event_id"] for e in parked), statuses


def check_exactly_once(daemon: DaemonProcess) -> bool:
    """Each event counted once or still quarantined, never both; whether it was released."""
    total, parked, statuses = state(daemon)
    assert set(statuses) == set(COUNTED + POISON), "an event was lost"
    assert all(statuses[i] == "counted" for i in COUNTED)
    released = parked == []
    assert parked in ([], sorted(POISON)), f"a release is all or nothing: {parked}"
    for event_id in POISON:
        assert statuses[event_id] == ("counted" if released else "quarantined")
    assert total == len(COUNTED) + (100 * len(POISON) if released else 0), total
    return released


def one_round(where: Path, point: str) -> bool:
    """A fresh store, a release killed at ``point``, a restart: the invariant; then the
    release is finished (or found done) and everything counts once. Whether the killed
    release had committed."""
    write_quarantined_store(
        where / "store.sqlite3", ACCOUNT, events(), set(POISON), "ValueError: bad quantity"
    )
    with running_daemon(where) as first:
        killed_around_a_release(first, point)
    with running_daemon(where) as second:
        committed = check_exactly_once(second)
        answer = release_all(second)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if committed:  # a no-op that says so
            assert body["events"] == []
            assert body["unchanged"] == []  # (no ids asked: nothing in quarantine to name)
        else:
            assert sorted(e["event_id"] for e in body["events"]) == sorted(POISON)
        assert check_exactly_once(second)
        assert check_exactly_once(second)  # asked again: the same
    return committed


@pytest.mark.parametrize("point", ["sent", "committed", "answered"])
def test_kill_9_around_a_release_counts_each_event_once_or_keeps_it_quarantined(
    tmp_path: Path, point: str
) -> None:
    committed = one_round(tmp_path, point)
    if point != "sent":
        assert committed  # past the commit: the restart finds it released


@pytest.mark.slow
def test_kill_9_around_releases_soak(tmp_path: Path) -> None:
    """``pytest -m slow``: ``METERD_SOAK`` rounds (default 10) of each kill point."""
    rounds = int(os.environ.get("METERD_SOAK", "10"))
    outcomes: dict[str, list[bool]] = {}
    for n in range(rounds):
        for point in ("sent", "committed", "answered"):
            where = tmp_path / f"{point}-{n}"
            where.mkdir()
            outcomes.setdefault(point, []).append(one_round(where, point))
    print(json.dumps({point: sum(done) for point, done in outcomes.items()}))
