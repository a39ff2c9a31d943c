"""docs/getting-started.md works as written (issue 18 item 5): its shell blocks are run,
in order, by bash, against ``meterd run --config config.toml`` started from the page's own
command.

The page is run in a scratch directory holding a copy of the shipped ``config.toml`` (its
two ports swapped for free ones, so that a daemon a person runs on 8700/8701 does not
collide) and ``.venv/bin/meterd`` pointing at this interpreter's ``meterd``. The install
block is skipped (this environment is installed already).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs.daemon import ROOT
from tests.system.test_kill9 import free_ports

PAGE = ROOT / "docs" / "getting-started.md"
MARK = "### meterd-doc-step "


def blocks() -> list[str]:
    """The page's ```sh blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    ingest, api = free_ports(2)
    shipped = (ROOT / "config.toml").read_text(encoding="utf-8")
    config = shipped.replace("127.0.0.1:8700", f"127.0.0.1:{ingest}")
    config = config.replace("127.0.0.1:8701", f"127.0.0.1:{api}")
    assert config != shipped
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "meterd").symlink_to(Path(sys.executable).parent / "meterd")
    return tmp_path


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}


@contextlib.contextmanager
def started(command: str, where: Path, env: dict[str, str]) -> Iterator[list[str]]:
    """Run the page's ``meterd run`` line in ``where``; yields its log lines once listening,
    then stops it with SIGINT (Ctrl-C) and checks it exits 0."""
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=where,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    listening = threading.Event()

    def drain() -> None:
        assert process.stderr is not None
        for text in process.stderr:
            lines.append(text)
            if "listening" in text:
                listening.set()
        listening.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert listening.wait(30), "the daemon did not start"
        assert process.poll() is None, "".join(lines)
        yield lines
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, "".join(lines[-20:])
    finally:
        process.kill()
        process.wait()
        reader.join(10)


def test_the_getting_started_page_runs_as_written(scratch: Path, env: dict[str, str]) -> None:
    install, start, *steps = blocks()
    assert "pip install -e ." in install
    [run] = [line for line in start.splitlines() if line.startswith(".venv/bin/meterd run")]
    assert "--config config.toml" in run
    commands = [line for block in steps for line in block.splitlines() if line.strip()]
    script = ["set -euo pipefail"]
    for number, command in enumerate(commands):
        script += [f"echo '{MARK}{number}'", command]
    with started(run, scratch, env):
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    outputs = re.split(rf"^{MARK}\d+\n", result.stdout, flags=re.M)[1:]
    said = list(zip(commands, outputs, strict=True))

    def out(prefix: str) -> str:
        return next(text for command, text in said if command.startswith(prefix))

    assert ": 1 accepted, 0 duplicates, 0 rejected" in out("echo ")
    assert "acme" in out(".venv/bin/meterd accounts")
    usage = out(".venv/bin/meterd usage acme").splitlines()
    assert any(row.split()[:1] == ["dyno.seconds"] and "3600" in row for row in usage), usage
    assert "first-1" in out(".venv/bin/meterd events acme --id first-1")
    summary = out(".venv/bin/meterd explain acme --period $(date -u +%Y-%m)")
    assert "3600 dyno-seconds used" in summary
    assert "(dynos, standard rate)" in summary
    line = out(".venv/bin/meterd explain acme --period $(date -u +%Y-%m) --line 1")
    assert "priced by dynos, standard rate" in line
    assert "recorded adjustment #1: credit -600 dyno.seconds" in out(".venv/bin/meterd adjust")
    corrected = [text for command, text in said if "--line 1" in command]
    assert "corrections -600" in corrected[-1]
    assert "by you at " in corrected[-1]
