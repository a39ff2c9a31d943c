"""The operator commands as an operator runs them: real subprocesses against a real daemon.

One daemon (``tests/procs/daemon.py``: ``python -m meterd run`` on free loopback ports)
serves the module; its usage is produced with ``meterd send``, and each test uses its own
accounts. Two tests start a daemon of their own (hibernation within a fraction of a
second; a daemon that stops under ``tree --watch``). What is checked is what the commands
print.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meterd.model import DAY_MS
from tests.api.test_api import ingest_poison
from tests.cli.test_send import T0, line, meterd_send, write
from tests.ingest.test_server import make_config, running
from tests.procs.daemon import ROOT, DaemonProcess, running_daemon

FROM = T0 - T0 % DAY_MS
TO = FROM + 2 * DAY_MS
WATCH_LIMIT = 60.0  # seconds; only reached if tree --watch hangs


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("cli")) as process:
        yield process


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> dict[str, str]:
    """The environment of an operator's shell: the API's address and the admin token."""
    return operator_env(daemon)


def operator_env(process: DaemonProcess) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    return {**clean, "METERD_URL": process.api_url, "METERD_TOKEN": process.config.api.admin_token}


def meterd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def one_sentence(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert result.stdout == ""
    return message


def produce(process: DaemonProcess, tmp_path: Path, events: list[str]) -> None:
    source = write(tmp_path / "events.jsonl", events)
    result = meterd_send(str(source), "--url", process.ingest_url, token=process.token("platform"))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def billed(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An account with exact decimal usage of dyno.seconds in two sizes."""
    account = "cli-billed"
    quantities = [("small", "0.000000000000000000001"), ("small", "1.25"), ("large", 3)]
    produce(
        daemon,
        tmp_path_factory.mktemp("billed"),
        [
            line(f"b{n}", account, "dyno.seconds", quantity=q, properties={"size": size})
            for n, (size, q) in enumerate(quantities)
        ],
    )
    return account


def test_usage_as_json_and_as_a_table_is_exact(admin: dict[str, str], billed: str) -> None:
    window = ["--meter", "dyno.seconds", "--from", str(FROM), "--to", str(TO), "--window", "day"]
    document = json.loads(ok(meterd(admin, "usage", billed, *window, "--json")))
    assert document["account"] == billed
    assert document["rows"] == [
        {"start": FROM, "end": FROM + DAY_MS, "value": "4.250000000000000000001"}
    ]
    table = ok(meterd(admin, "usage", billed, *window)).splitlines()
    assert table[0].split() == ["start", "end", "value"]
    [row] = [text for text in table if "4.250000000000000000001" in text]
    assert row.split()[:2] == [_iso(FROM), _iso(FROM + DAY_MS)]


def test_usage_by_a_dimension_and_in_iso_times(admin: dict[str, str], billed: str) -> None:
    result = meterd(
        admin,
        "usage",
        billed,
        "--meter",
        "dyno.seconds",
        "--from",
        _iso(FROM).removesuffix("Z"),  # no zone: UTC
        "--to",
        _iso(TO),
        "--window",
        "hour",
        "--group-by",
        "size",
    )
    rows = [text.split() for text in ok(result).splitlines()]
    assert rows[0] == ["start", "end", "size", "value"]
    assert sorted(row[2:] for row in rows[1:]) == [
        ["large", "3"],
        ["small", "1.250000000000000000001"],
    ]


def test_events_one_page_then_all(admin: dict[str, str], billed: str) -> None:
    first = meterd(admin, "events", billed, "--meter", "dyno.seconds", "--limit", "2")
    lines = ok(first).splitlines()
    assert len([text for text in lines if text.startswith(_iso(T0)[:10])]) == 2
    assert "2 events shown; more with --cursor " in first.stderr
    everything = json.loads(ok(meterd(admin, "events", billed, "--limit", "2", "--all", "--json")))
    assert everything["next_cursor"] is None
    assert sorted((e["id"], e["quantity"]) for e in everything["events"]) == [
        ("b0", "0.000000000000000000001"),
        ("b1", "1.25"),
        ("b2", "3"),
    ]
    assert {e["properties"]["size"] for e in everything["events"]} == {"small", "large"}


def test_tree_shows_the_daemon_and_an_awake_account(admin: dict[str, str], billed: str) -> None:
    document = json.loads(ok(meterd(admin, "tree", "--json")))
    assert (document["name"], document["kind"], document["strategy"]) == (
        "root",
        "supervisor",
        "rest_for_one",
    )
    lines = ok(meterd(admin, "tree")).splitlines()
    assert lines[0].startswith("root  supervisor rest_for_one  running  restarts 0  up ")
    assert any(" ingest  " in text for text in lines)
    [account] = [text for text in lines if f" {billed}  worker " in text]
    assert "running  mailbox 0  restarts 0" in account


def test_kill_and_restart_an_account(
    admin: dict[str, str], daemon: DaemonProcess, tmp_path: Path
) -> None:
    produce(daemon, tmp_path, [line("k1", "cli-drill")])
    killed = ok(meterd(admin, "kill", "cli-drill", "--yes"))
    assert killed == "killed root/accounts/meters/cli-drill (now running)\n"
    lines = ok(meterd(admin, "tree")).splitlines()
    at = next(n for n, text in enumerate(lines) if " cli-drill  worker " in text)
    assert "running  mailbox 0  restarts 1  up " in lines[at]
    assert re.search(r"last restart [0-9a-z ]+ ago \(killed\)$", lines[at + 1]), lines[at + 1]
    restarted = ok(meterd(admin, "restart", "cli-drill"))
    assert restarted == "restarted root/accounts/meters/cli-drill (now running)\n"
    lines = ok(meterd(admin, "tree")).splitlines()
    at = next(n for n, text in enumerate(lines) if " cli-drill  worker " in text)
    assert "restarts 2" in lines[at]
    assert re.search(r"ago \(operator\)$", lines[at + 1]), lines[at + 1]


def test_a_tree_path_can_be_restarted(admin: dict[str, str]) -> None:
    lines = ok(meterd(admin, "tree")).splitlines()
    assert any(" sweeper  " in text for text in lines)
    result = ok(meterd(admin, "restart", "root/accounts/sweeper"))
    assert result.startswith("restarted root/accounts/sweeper")


def test_unknown_actor_wrong_token_and_unknown_meter_are_one_sentence(
    admin: dict[str, str], billed: str
) -> None:
    message = one_sentence(meterd(admin, "restart", "root/no/such"), 1)
    assert message.startswith("meterd restart: ")
    assert "(HTTP 404 " in message
    wrong = {**admin, "METERD_TOKEN": "not-the-admin-token"}
    message = one_sentence(meterd(wrong, "tree"), 1)
    assert "refused the admin token (HTTP 401)" in message
    assert "not-the-admin-token" not in message
    message = one_sentence(
        meterd(admin, "usage", billed, "--meter", "no.such", "--from", "0", "--to", "1"), 1
    )
    assert message.startswith("meterd usage: ")
    assert "HTTP 4" in message


def test_quarantine_is_empty(admin: dict[str, str]) -> None:
    assert ok(meterd(admin, "quarantine")) == "no quarantined events\n"
    assert json.loads(ok(meterd(admin, "quarantine", "--json"))) == {"events": []}


def test_tree_watch_redraws_until_interrupted(admin: dict[str, str]) -> None:
    with watching(admin) as (process, output):
        drawn = 0
        for text in output:
            drawn += text.count("rest_for_one")  # once per drawing (styled: no plain line)
            if drawn >= 3:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()


@contextlib.contextmanager
def watching(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Iterator[str]]]:
    """``meterd tree --watch`` redrawing every 0.1 s as on a wide terminal, and its output
    lines; killed on the way out, and after ``WATCH_LIMIT`` seconds whatever happens (a
    test reading a silent process would otherwise wait for ever)."""
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "1000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "meterd", "tree", "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **terminal},
        cwd=ROOT,
    )
    watchdog = threading.Timer(WATCH_LIMIT, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        yield process, iter(process.stdout.readline, "")
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()


def _iso(ms: int) -> str:
    from meterd.cli._times import format_time

    return format_time(ms)


# ---- a daemon of their own: hibernation, and a daemon that goes away under --watch ------


def test_a_hibernated_account_cannot_be_restarted(tmp_path: Path) -> None:
    with running_daemon(tmp_path, idle_timeout=0.2) as process:
        env = operator_env(process)
        produce(process, tmp_path, [line("h1", "cli-sleepy")])
        deadline = time.monotonic() + 60
        while awake(ok(meterd(env, "tree", "--json")), "cli-sleepy"):  # until it hibernates
            assert time.monotonic() < deadline, "the account never hibernated"
        message = one_sentence(meterd(env, "restart", "cli-sleepy"), 1)
        assert message == (
            "meterd restart: account 'cli-sleepy' is hibernated (no actor running)"
            " (HTTP 409 not_running)"
        )


def test_watch_outlives_the_daemon_and_says_why(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        with running_daemon(tmp_path) as process:
            watcher, output = stack.enter_context(watching(operator_env(process)))
            assert any("rest_for_one" in text for text in output)  # drawn once
        # the daemon has stopped (SIGTERM, and exit 0, checked by running_daemon)
        assert any("connection refused" in text and "retrying" in text for text in output)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0


def awake(tree_json: str, account: str) -> bool:
    def names(node: dict[str, Any]) -> Iterator[str]:
        yield node["name"]
        for child in node["children"]:
            yield from names(child)

    return account in set(names(json.loads(tree_json)))


async def test_a_quarantined_event_is_listed_and_its_crash_shows_in_the_tree(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process daemon (the actors' usage makes one event poison, as in test_api), the
    commands as subprocesses."""
    async with running(make_config(tmp_path)) as services:
        await ingest_poison(services, "qacct", T0, monkeypatch)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
        env = {
            **clean,
            "METERD_URL": services.api.url,
            "METERD_TOKEN": services.api.daemon.config.api.admin_token,
        }

        async def cli(*args: str) -> str:
            result = await trio.run_process(
                [sys.executable, "-m", "meterd", *args],
                capture_stdout=True,
                capture_stderr=True,
                env=env,
                cwd=ROOT,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert b"Traceback" not in result.stderr
            return result.stdout.decode()

        window = ["--from", str(T0 - T0 % DAY_MS), "--to", str(T0 - T0 % DAY_MS + DAY_MS)]
        usage = await cli("usage", "qacct", "--meter", "router.requests", *window, "--json")
        assert [row["value"] for row in json.loads(usage)["rows"]] == ["1"]  # woke: replayed

        header, row = (await cli("quarantine", "qacct")).splitlines()
        assert header.split() == ["account", "batch", "event", "id", "at", "error"]
        account, batch_id, event_id, at, *error = row.split()
        assert (account, event_id) == ("qacct", "poison")
        assert int(batch_id) >= 1
        assert at.endswith("Z")
        assert "cannot apply this event" in " ".join(error)
        assert await cli("quarantine", "other") == "no quarantined events for other\n"

        lines = (await cli("tree")).splitlines()
        at_node = next(n for n, text in enumerate(lines) if " qacct  worker " in text)
        assert "restarts 1" in lines[at_node]
        assert "(crash)" in lines[at_node + 1]
        assert "ValueError: cannot apply this event" in lines[at_node + 1]
