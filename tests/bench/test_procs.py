"""The bench's process-tree accounting (``meterd/bench/_proc.py``): a daemon's CPU, storage
writes and RSS are those of its process and every descendant, named from their command lines.

No timers: the processes say on a pipe when they have done their part, the test reads it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meterd.bench._proc import TreeMeter, process_name, tree, tree_cpu_seconds

BUSY_SECONDS = 0.3  # of CPU the child burns before it says "busy done"
TICKS = 0.02  # /proc counts in clock ticks (10 ms), process_time() finer

CHILD = f"""
import sys, time
while time.process_time() < {BUSY_SECONDS}:
    pass
print("busy done", flush=True)
sys.stdin.read()  # until the parent closes our stdin
"""

# Waits for a line on stdin before each step: "go" starts a busy child, "again" (after the
# first child ended) starts a second one with the same command line (a restart), "stop" ends.
PARENT = """
import subprocess, sys
child = None
for line in sys.stdin:
    if line.strip() in ("go", "again"):
        if child is not None:
            child.stdin.close()
            child.wait()
        child = subprocess.Popen([sys.executable, sys.argv[1]], stdin=subprocess.PIPE)
    elif line.strip() == "stop":
        break
if child is not None:
    child.stdin.close()
    child.wait()
"""


@pytest.fixture
def parent(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "child.py").write_text(textwrap.dedent(CHILD))
    (tmp_path / "parent.py").write_text(textwrap.dedent(PARENT))
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "child.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        assert process.stdin is not None
        if not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout=30)


def _say(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _heard(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()  # the child's stdout is the parent's


def test_a_childs_cpu_is_counted_and_named_and_the_total_is_the_sum(
    parent: subprocess.Popen[str],
) -> None:
    meter = TreeMeter(parent.pid)  # the parent alone: its child starts during the span
    _say(parent, "go")
    assert _heard(parent) == "busy done"
    meter.sample()
    assert len(tree(parent.pid)) == 2
    processes = {figures.name: figures for figures in meter.processes()}
    assert list(processes) == ["parent.py", "child.py"]  # the root first
    child = processes["child.py"]
    assert child.cpu_seconds >= BUSY_SECONDS - TICKS  # from zero: born in the span
    assert child.rss_peak is not None
    assert child.rss_end is not None
    total = sum(figures.cpu_seconds for figures in processes.values())
    assert total == pytest.approx(processes["parent.py"].cpu_seconds + child.cpu_seconds)
    assert total >= BUSY_SECONDS - TICKS
    now = tree_cpu_seconds(parent.pid)
    assert now is not None
    assert now >= BUSY_SECONDS - TICKS
    assert meter.rss_total_peak is not None
    assert meter.rss_total_peak >= child.rss_peak


def test_a_child_restarted_during_the_span_is_counted_twice_under_its_name(
    parent: subprocess.Popen[str],
) -> None:
    _say(parent, "go")
    assert _heard(parent) == "busy done"
    meter = TreeMeter(parent.pid)  # the first child is there: counted from now (~0 more)
    first = {f.name: f for f in meter.processes()}["child.py"]
    assert first.cpu_seconds == 0.0
    _say(parent, "again")  # the first child ends, a second one starts and burns its share
    assert _heard(parent) == "busy done"
    meter.sample()
    child = {f.name: f for f in meter.processes()}["child.py"]
    assert len(child.pids) == 2
    assert child.cpu_seconds >= BUSY_SECONDS - TICKS  # the second incarnation's, from zero
    assert child.rss_end is not None  # the second one runs


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        (["/usr/bin/python3", "-m", "meterd", "run", "--config", "c.toml"], "gateway"),
        (["python", "-m", "meterd.partitions.owner", "--config", "c", "--owner", "2"], "owner-2"),
        (
            ["python", "-m", "meterd.bench.ingest", "baseline-server", "--port", "1"],
            "baseline-server",
        ),
        (["python", "-m", "http.server"], "http.server"),
        (["/usr/bin/python3", "/tmp/x/parent.py", "a"], "parent.py"),
        (["/usr/bin/py-spy", "record"], "py-spy"),
        ([], "?"),
    ],
)
def test_processes_are_named_from_their_command_line(arguments: list[str], name: str) -> None:
    assert process_name(arguments) == name
