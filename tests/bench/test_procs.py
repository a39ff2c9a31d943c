"""The bench's process-tree accounting (``meterd/bench/_proc.py``): a daemon's CPU, storage
writes and RSS are those of its process and every descendant, named from their command lines.

No timers: the processes say on a pipe when they have done their part, the test reads it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from meterd.bench._proc import (
    ProcessFigures,
    TreeMeter,
    process_name,
    tree,
    tree_cpu_seconds,
)
from meterd.bench.ingest import (
    BenchError,
    BenchOptions,
    Report,
    RunResult,
    TargetReport,
    format_report,
    parse_owners,
    settle,
)
from meterd.cli.bench import bench

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


def _result(label: str, processes: list[ProcessFigures], rate: float) -> RunResult:
    events = 10_000
    return RunResult(
        label=label,
        events=events,
        sent_events=events,
        accepted=events,
        duplicates=0,
        rejected=0,
        seconds=events / rate,
        latency_p50_ms=10.0,
        latency_p99_ms=20.0,
        latency_max_ms=30.0,
        batches=20,
        server_cpu_seconds=sum(p.cpu_seconds for p in processes),
        server_processes=processes,
    )


def test_the_table_and_the_scaling_curve_show_every_process_beside_the_baseline() -> None:
    gateway_only = [ProcessFigures("gateway", [10], cpu_seconds=0.3, rss_peak=100 << 20)]
    with_owners = [
        ProcessFigures("gateway", [20], cpu_seconds=0.1, rss_peak=80 << 20),
        ProcessFigures("owner-0", [21, 25], cpu_seconds=0.05, rss_peak=60 << 20),  # restarted
        ProcessFigures("owner-1", [22], cpu_seconds=0.05, rss_peak=60 << 20),
    ]
    baseline_only = [ProcessFigures("baseline-server", [30], cpu_seconds=0.2)]
    targets = [
        TargetReport("meterd owners=0", "ws://a", 10, owners=0),
        TargetReport("meterd owners=2", "ws://b", 20, owners=2),
        TargetReport("baseline", "ws://c", 30),
    ]
    targets[0].max = _result("max", gateway_only, 20_000)
    targets[1].max = _result("max", with_owners, 40_000)
    targets[2].max = _result("max", baseline_only, 50_000)
    report = Report(BenchOptions.quick(spawn=True, owners=(0, 2)), 2, targets)
    text = format_report(report)

    def row(figure: str) -> list[str]:
        found = re.search(rf"^\| {re.escape(figure)}\s*\|(.*)\|\s*$", text, re.MULTILINE)
        assert found is not None, f"no row {figure!r} in:\n{text}"
        return [cell.strip() for cell in found[1].split("|")]

    # The total is the sum over the processes; each process has its own rows, in tree order.
    assert row("max: server CPU, µs per event") == ["30.0", "20.0", "20.0"]
    assert row("max: server CPU, µs per event: gateway") == ["—", "10.0", "—"]
    assert row("max: server CPU, µs per event: owner-0") == ["—", "5.0", "—"]
    assert row("max: server CPU, µs per event: owner-1") == ["—", "5.0", "—"]
    assert row("max: server RSS peak, MiB: owner-0") == ["—", "60.0", "—"]
    lines = text.splitlines()
    at = [
        next(i for i, line in enumerate(lines) if f"µs per event{n} " in line)
        for n in ("", ": gateway", ": owner-0", ": owner-1")
    ]
    assert at == sorted(at)
    # The scaling curve: one line per owner count, ratios to the baseline of the command.
    curve = text[text.index("scaling curve") :]
    assert re.search(r"\|\s+0 \|\s+20,000 \|\s+0\.40x \|\s+30\.0 \|\s+1\.50x \|", curve), curve
    assert re.search(r"\|\s+2 \|\s+40,000 \|\s+0\.80x \|\s+20\.0 \|\s+1\.00x \|", curve), curve
    assert "gateway 10.0 (40 %), owner-0 5.0 (20 %), owner-1 5.0 (20 %)" in curve
    assert re.search(r"\|\s+baseline \|\s+50,000 \|\s+1\.00x \|", curve), curve
    data = targets[1].max.to_json()
    assert [p["name"] for p in data["server_processes"]] == ["gateway", "owner-0", "owner-1"]
    assert data["server_processes"][1]["pids"] == [21, 25]
    assert data["server_processes"][1]["cpu_per_event_us"] == pytest.approx(5.0)


@pytest.mark.parametrize(("text", "owners"), [("0,1,2,3", (0, 1, 2, 3)), ("2", (2,)), (None, ())])
def test_owners_list(text: str | None, owners: tuple[int, ...]) -> None:
    assert parse_owners(text) == owners


def test_owners_needs_spawn_and_counts() -> None:
    with pytest.raises(BenchError, match="--spawn"):
        BenchOptions(url="ws://x", token="t", owners=(1,)).check()
    with pytest.raises(BenchError, match=">= 0"):
        BenchOptions(spawn=True, owners=(-1,)).check()
    with pytest.raises(BenchError, match="not both"):
        BenchOptions(spawn=True, owners=(1,), settings=(("partitions", "owners", "2"),)).check()
    with pytest.raises(BenchError, match="0,1,2,3"):
        parse_owners("one,two")


def test_spawned_daemons_with_owners_are_measured_per_process() -> None:
    # Two small daemons (owners = 0, then 1), no baseline, no half-load row: a few seconds.
    result = CliRunner().invoke(
        bench,
        [
            "ingest",
            "--spawn",
            "--events",
            "1000",
            "--accounts",
            "100",
            "--batch",
            "100",
            "--connections",
            "2",
            "--no-baseline",
            "--no-half-load",
            "--owners",
            "0,1",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    single, owned = report["targets"]
    assert (single["name"], single["owners"]) == ("meterd owners=0", 0)
    assert (owned["name"], owned["owners"]) == ("meterd owners=1", 1)
    assert [p["name"] for p in single["max"]["server_processes"]] == ["gateway"]
    processes = owned["max"]["server_processes"]
    assert [p["name"] for p in processes] == ["gateway", "owner-0"]
    for target in (single, owned):
        top = target["max"]
        assert top["events"] == top["accepted"] == 1000
        total = sum(p["cpu_seconds"] for p in top["server_processes"])
        assert top["server_cpu_seconds"] == pytest.approx(total)
        assert all(p["rss_peak"] for p in top["server_processes"])
        assert target["stop_status"] == 0
    assert processes[1]["cpu_seconds"] > 0  # the owner made the events durable


def test_settle_counts_the_cpu_a_process_spends_after_a_row_until_it_is_idle(
    tmp_path: Path,
) -> None:
    """The CPU burnt after ``since`` (a row's last ack) is counted until the process goes
    quiet, so work left over after a row is not lost from its cost."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        since = tree_cpu_seconds(child.pid)  # the "last ack": before its busy part
        assert since is not None
        assert child.stdout is not None
        assert child.stdout.readline() == "busy done\n"  # all its work done before the wait
        settled = trio.run(partial(settle, child.pid, since=since))
        assert settled.cpu_seconds is not None
        assert settled.cpu_seconds >= BUSY_SECONDS - since - TICKS
        assert settled.seconds >= 0.5  # at least the quiet half second that ended the wait
        assert settled.busy_seconds == 0  # it was quiet from the start
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
