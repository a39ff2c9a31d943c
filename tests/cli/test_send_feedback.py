"""``meterd send`` on a terminal while the daemon is down (issue 18 item 4): it says it is
retrying, and why, each time; its error is a line of its own, never glued to the progress
bar. (Without a terminal stderr stays one sentence: tests/test_send.py; a successful send's
summary has the elapsed time and the rate: tests/test_send.py too.)"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path

from tests.cli.test_send import line, send_command, write


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send_to_nowhere(source: Path, stderr: int) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERD_")}
    url = f"ws://127.0.0.1:{closed_port()}/v1/ingest"
    return subprocess.Popen(
        [*send_command(), str(source), "--url", url, "--token", "t", "--give-up-after", "0.5"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**env, "COLUMNS": "100"},
    )


def test_on_a_terminal_the_error_is_not_glued_to_the_bar(tmp_path: Path) -> None:
    source = write(tmp_path / "e.jsonl", [line(f"t{n}", "acct") for n in range(3)])
    leader, follower = os.openpty()
    try:
        process = send_to_nowhere(source, follower)
        os.close(follower)
        follower = -1
        seen = b""
        with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
            while chunk := os.read(leader, 4096):
                seen += chunk
        assert process.wait(timeout=60) == 2
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", seen.decode(errors="replace"))
    screen = screen.replace("\r\n", "\n")
    rows = [row.rsplit("\r", 1)[-1] for row in screen.split("\n")]  # what each row shows last
    assert any(row.startswith("sending") for row in rows), screen
    errors = [row for row in rows if "meterd send:" in row]
    assert errors, screen
    assert all(row.startswith("meterd send: ") for row in errors), errors
    assert errors[-1].startswith("meterd send: cannot connect to ")
    assert errors[0].startswith("meterd send: no connection (")
    assert "retrying in" in errors[0]
    assert "giving up after 0.5 s without an ack" in errors[0]
    retries = rows[rows.index(errors[0]) : rows.index(errors[-2]) + 1]
    assert "" not in retries  # one retry line after the other, no blank lines between
