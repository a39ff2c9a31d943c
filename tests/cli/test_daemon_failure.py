"""``meterd run`` whose supervision tree gives up after it started (issue 18 item 4): one
sentence naming the child and its error, exit 1, never an exception-group traceback.

The daemon is the real command in a subprocess; its ``api`` child is replaced by one that
starts, then fails with an I/O error at once, every time, so the root exceeds its restart
intensity (3 in 5 s) right after the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.procs.daemon import ROOT
from tests.system.test_kill9 import write_config

FAULTY_API = """
import errno, sys, trio
import meterd.api.server as server
import supervisors as sv

async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
    task_status.started()
    await trio.lowlevel.checkpoint()
    raise OSError(errno.EIO, "Input/output error")

server.ApiServer.child_spec = lambda self, id="api": sv.task_spec(id, run.__get__(self))
from meterd.cli.main import main
sys.exit(main(["run", "--config", sys.argv[1], "--json-logs"]))
"""


def test_the_tree_giving_up_after_the_start_is_one_sentence(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", tmp_path / "store" / "meterd.sqlite3")
    result = subprocess.run(
        [sys.executable, "-c", FAULTY_API, str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception Group" not in result.stderr
    lines = result.stderr.strip().splitlines()
    events = [json.loads(line)["event"] for line in lines[:-1]]
    assert "meterd_started" in events
    assert events[-1] == "meterd_failed"
    assert lines[-1] == (
        "meterd: stopped: the supervision tree gave up after 'api' failed too often (restart"
        f" intensity exceeded); its last error: Input/output error (api.listen"
        f" 127.0.0.1:{_port(config)})"
    )


def _port(config: Path) -> str:
    from meterd.config import load

    return str(load(config).api.listen.port)
