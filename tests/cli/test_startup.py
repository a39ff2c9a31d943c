"""``meterd run`` failing to start, as an operator sees it: the real command as a subprocess,
one sentence on stderr naming the config key and the address or file, exit status 1 (2 stays
for a wrong config), never a traceback or an exception group."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterd.config import load
from tests.procs.daemon import ROOT, running_daemon
from tests.system.test_kill9 import write_config

START_LIMIT = 60  # seconds; reached only if the daemon starts (and so never exits)


def meterd_run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=START_LIMIT,
        stdin=subprocess.DEVNULL,
    )


def the_sentence(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of stderr that is not a JSON log line, checked to be all there is."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception Group" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # the structured log: one JSON event per line
    assert '"meterd_start_failed"' in result.stderr
    [sentence] = [line for line in lines if not line.startswith("{")]
    assert sentence == lines[-1]
    assert sentence.startswith("meterd: cannot start: "), sentence
    return sentence


def with_setting(config: Path, section: str, key: str, value: str) -> Path:
    """``config`` with ``key = value`` in ``[section]`` (the line written there replaced)."""
    text = config.read_text()
    header = f"[{section}]\n"
    head, _, tail = text.partition(header)
    assert tail, f"no [{section}] in the config"
    tail = re.sub(rf"(?m)^{key} = .*\n", "", tail, count=1)
    config.write_text(f"{head}{header}{key} = {json.dumps(value)}\n{tail}")
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", tmp_path / "store" / "meterd.sqlite3")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("section", ["ingest", "api"])
def test_a_port_in_use(config: Path, taken_port: int, section: str) -> None:
    address = f"127.0.0.1:{taken_port}"
    sentence = the_sentence(meterd_run(with_setting(config, section, "listen", address)))
    assert f"{section}.listen {address}" in sentence, sentence
    assert "already in use" in sentence, sentence


def test_a_store_path_that_cannot_be_created(config: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    store = tmp_path / "a-file" / "store" / "meterd.sqlite3"
    sentence = the_sentence(meterd_run(with_setting(config, "store", "path", str(store))))
    assert f"store.path {store}" in sentence, sentence
    assert "Not a directory" in sentence, sentence


def test_a_billing_path_that_cannot_be_created(config: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    billing = tmp_path / "a-file" / "billing.sqlite3"
    sentence = the_sentence(meterd_run(with_setting(config, "billing", "path", str(billing))))
    assert f"billing.path {billing}" in sentence, sentence


def test_a_file_that_is_not_a_database(config: Path) -> None:
    store = load(config).store_path
    store.parent.mkdir(parents=True)
    store.write_bytes(b"these are not the pages of a database\n" * 200)
    sentence = the_sentence(meterd_run(config))
    assert f"store.path {store}" in sentence, sentence


def test_a_malformed_database(config: Path) -> None:
    """A store whose pages past the first are damaged: SQLite's own message names no file."""
    with running_daemon(config.parent):  # a store, stopped cleanly
        pass
    store = load(config).store_path
    with store.open("r+b") as file:
        page = 4096
        file.seek(page)
        file.write(b"\xff" * (store.stat().st_size - page))
    for leftover in (store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        leftover.unlink(missing_ok=True)
    sentence = the_sentence(meterd_run(config))
    assert f"store.path {store}" in sentence, sentence
    assert "malformed" in sentence, sentence


def test_a_wrong_config_still_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[ingest]\nlisten = "nowhere"\n')
    result = meterd_run(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
