"""``meterd send`` as a user runs it: a real subprocess against a real daemon subprocess.

One daemon (``python -m meterd run``) serves the whole module on free loopback ports; each
test uses its own account names, so tests do not see each other's events. Until ``send`` is
registered in ``meterd.cli.main``, the command runs as ``python -m meterd.cli.send``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs.daemon import ROOT, running_daemon
from tests.system.test_kill9 import free_ports

T0 = time.time_ns() // 1_000_000 - 10 * 60_000


@dataclass
class Daemon:
    config: Path
    url: str
    token: str
    router_token: str


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("send")) as process:
        yield Daemon(
            process.config_path,
            process.ingest_url,
            process.token("platform"),
            process.token("router"),
        )


def send_command() -> list[str]:
    from meterd.cli.main import _LazyGroup

    if "send" in _LazyGroup.lazy:
        return [sys.executable, "-m", "meterd", "send"]
    return [sys.executable, "-m", "meterd.cli.send"]


def meterd_send(
    *args: str, token: str | None = None, url: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    if token is not None:
        env["METERD_PRODUCER_TOKEN"] = token
    if url is not None:
        env["METERD_INGEST_URL"] = url
    return subprocess.run(
        [*send_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def line(id: str, account: str, meter: str = "router.requests", **more: Any) -> str:
    return json.dumps({"id": id, "account": account, "meter": meter, "time": T0, **more})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_one_sentence(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert message.startswith("meterd send: ")
    for fragment in fragments:
        assert fragment in message
    assert result.stdout == ""


def test_a_good_file_is_accepted_and_a_second_run_is_all_duplicates(
    daemon: Daemon, tmp_path: Path
) -> None:
    events = [line(f"g{n}", f"good-{n % 3}") for n in range(40)]
    events += [
        line(f"d{n}", "good-0", "dyno.seconds", quantity=q)
        for n, q in enumerate([3, "1.25", "0.000000000000000000001"])
    ]
    events.insert(10, "")  # blank lines are skipped
    events.append(events[0])  # a repeat inside the file
    source = write(tmp_path / "good.jsonl", events)
    first = meterd_send(str(source), "--config", str(daemon.config), token=daemon.token)
    assert first.returncode == 0, first.stderr
    [summary] = first.stdout.splitlines()
    assert re.fullmatch(
        rf"44 events sent to {re.escape(daemon.url)} in [0-9]+\.[0-9]{{2}} s \([0-9,]+ events/s\):"
        " 43 accepted, 1 duplicate, 0 rejected",
        summary,
    ), summary
    assert first.stderr == ""  # no progress bar when stderr is not a terminal
    again = meterd_send(str(source), "--url", daemon.url, "--token", daemon.token)
    assert again.returncode == 0, again.stderr
    assert "0 accepted, 44 duplicates, 0 rejected" in again.stdout


def test_standard_input_and_the_environment(daemon: Daemon) -> None:
    text = "\n".join(line(f"s{n}", "stdin-acct") for n in range(5)) + "\n"
    result = meterd_send("-", token=daemon.token, url=daemon.url, stdin=text)
    assert result.returncode == 0, result.stderr
    assert "5 events sent" in result.stdout
    assert "5 accepted" in result.stdout


def test_rejected_events_are_summarised_by_code_with_lines(daemon: Daemon, tmp_path: Path) -> None:
    events = [
        line("ok1", "rej-acct"),
        line("m1", "rej-acct", "no.such.meter"),
        line("m2", "rej-acct", "no.such.meter"),
        line("a1", "bad account"),
        line("ok2", "rej-acct"),
        *(line(f"m{n}", "rej-acct", "no.such.meter") for n in range(3, 7)),
        line("q1", "rej-acct", "dyno.seconds", quantity="-3"),
    ]
    source = write(tmp_path / "rejected.jsonl", events)
    result = meterd_send(str(source), "--url", daemon.url, token=daemon.token)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith(f"10 events sent to {daemon.url} in ")
    assert out[0].endswith(": 2 accepted, 0 duplicates, 8 rejected")
    assert out[1] == "  rejected unknown_meter: 6"
    assert out[2].startswith('    line 2, id "m1": ')
    assert "no.such.meter" in out[2]
    assert out[3].startswith('    line 3, id "m2": ')
    assert out[4].startswith('    line 6, id "m3": ')
    assert out[5] == "    ... and 3 more"
    assert out[6] == "  rejected invalid_account: 1"
    assert out[7].startswith('    line 4, id "a1": ')
    assert out[8] == "  rejected invalid_quantity: 1"
    assert out[9].startswith('    line 10, id "q1": ')
    assert len(out) == 10


def test_a_producer_not_permitted_a_meter_gets_its_rejections(
    daemon: Daemon, tmp_path: Path
) -> None:
    source = write(tmp_path / "router.jsonl", [line("p1", "perm", "dyno.seconds", quantity=1)])
    result = meterd_send(str(source), "--url", daemon.url, token=daemon.router_token)
    assert result.returncode == 1
    assert "  rejected not_permitted: 1" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (
            [line("f0", "x"), line("f1", "x", "dyno.seconds", quantity=1.5)],
            ["line 2:", "quantity", "JSON number 1.5", '"1.5"'],
        ),
        ([line("f0", "x", properties={"size": 1e3})], ["line 1:", "properties.size", "1000.0"]),
        (['{"id": "n", "quantity": NaN}'], ["line 1:", "quantity", "NaN"]),
        ([line("j0", "x"), '{"id": '], ["line 2 is not valid JSON"]),
        (["[1, 2]"], ["line 1 holds a JSON array"]),
        ([line("b", "x", quantity=True)], ["line 1:", "quantity is a boolean"]),
        ([""], ["holds no events"]),
    ],
    ids=["float", "exponent", "nan", "json", "array", "bool", "empty"],
)
def test_bad_input_exits_2_naming_the_line_and_sends_nothing(
    tmp_path: Path, content: list[str], fragments: list[str]
) -> None:
    source = write(tmp_path / "bad.jsonl", content)
    [port] = free_ports(1)  # nothing listens: the input is refused before connecting
    result = meterd_send(str(source), "--url", f"ws://127.0.0.1:{port}", token="any-token")
    assert_one_sentence(result, *fragments)


def test_a_wrong_token_exits_2(daemon: Daemon, tmp_path: Path) -> None:
    source = write(tmp_path / "t.jsonl", [line("t1", "tok")])
    result = meterd_send(str(source), "--url", daemon.url, token="not-a-producer-token")
    assert_one_sentence(result, "refused the producer token (HTTP 401)")
    assert "not-a-producer-token" not in result.stderr


def test_no_daemon_exits_2_after_giving_up(tmp_path: Path) -> None:
    source = write(tmp_path / "c.jsonl", [line("c1", "conn")])
    [port] = free_ports(1)
    url = f"ws://127.0.0.1:{port}/v1/ingest"
    result = meterd_send(str(source), "--url", url, "--give-up-after", "0.3", token="tok-1")
    assert_one_sentence(result, f"cannot connect to {url}", "Connection refused", "gave up")


def test_missing_token_or_config_exits_2(tmp_path: Path) -> None:
    source = write(tmp_path / "m.jsonl", [line("m1", "miss")])
    result = meterd_send(str(source), "--url", "ws://127.0.0.1:1")
    assert_one_sentence(result, "no token", "METERD_PRODUCER_TOKEN")
    result = meterd_send(str(source), "--config", str(tmp_path / "none.toml"), token="t")
    assert_one_sentence(result, "no --url or METERD_INGEST_URL", "no such config file")
