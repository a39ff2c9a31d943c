"""The operator commands as an operator runs them: real subprocesses against a real daemon.

The daemon is ``tests/test_send.py``'s (``python -m meterd run`` on free loopback ports,
one per module); its usage is produced with ``meterd send``. Each test uses its own
accounts. What is checked is what the commands print.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterd.config import load
from meterd.model import DAY_MS, HOUR_MS
from tests.procs.daemon import ROOT
from tests.test_send import T0, Daemon, daemon, line, meterd_send, write

pytest.importorskip("meterd.api", reason="the operator API (meterd.api) is not on this branch")

__all__ = ["daemon"]  # a fixture, used by name

FROM = T0 - T0 % DAY_MS
TO = FROM + 2 * DAY_MS
HOUR = T0 - T0 % HOUR_MS


@pytest.fixture(scope="module")
def admin(daemon: Daemon) -> dict[str, str]:
    """The environment of an operator's shell: the API's address and the admin token."""
    config = load(daemon.config)
    clean = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    return {
        **clean,
        "METERD_URL": f"http://{config.api.listen}",
        "METERD_TOKEN": config.api.admin_token,
    }


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


def produce(daemon: Daemon, tmp_path: Path, events: list[str]) -> None:
    result = meterd_send(
        str(write(tmp_path / "events.jsonl", events)), "--url", daemon.url, token=daemon.token
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def billed(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
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


def test_kill_and_restart_an_account(admin: dict[str, str], daemon: Daemon, tmp_path: Path) -> None:
    produce(daemon, tmp_path, [line("k1", "cli-drill")])
    killed = ok(meterd(admin, "kill", "cli-drill", "--yes"))
    assert killed.startswith("killed ")
    assert "cli-drill" in killed
    lines = ok(meterd(admin, "tree")).splitlines()
    at = next(n for n, text in enumerate(lines) if " cli-drill  worker " in text)
    assert "restarts 1" in lines[at]
    assert "last restart" in lines[at + 1]
    restarted = ok(meterd(admin, "restart", "cli-drill"))
    assert restarted.startswith("restarted ")


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
    process = subprocess.Popen(
        [sys.executable, "-m", "meterd", "tree", "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**admin, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"},  # as on a terminal
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        drawn = 0
        for text in _lines(process.stdout):
            drawn += text.count("rest_for_one")  # once per drawing (styled: no plain line)
            if drawn >= 3:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def _lines(stream: object) -> Iterator[str]:
    assert hasattr(stream, "readline")
    while text := stream.readline():
        yield text


def _iso(ms: int) -> str:
    from meterd.cli._times import format_time

    return format_time(ms)
