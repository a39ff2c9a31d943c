"""``python -m meterd.bench.accounts`` runs on a small load and prints every figure.

Checks that each figure is there with a number, never its value; the one value checked is
the bench's own exactness check (windows wrong: 0), which is correctness, not speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from meterd.bench.accounts import (
    _LayerContext,
    awaken,
    build_load,
    checkpoint_all,
    drive,
    expected_sums,
    stored_sums,
    warmup_calls,
)

NUMBER = r"-?[0-9][0-9,]*(?:\.[0-9]+)?"
SMALL = ["--events", "2000", "--accounts", "50", "--concurrency", "4", "--batch", "10"]


def bench(*args: str, timeout: float = 300) -> str:
    # A subprocess, as it is run: the bench sets the process's logging and collector.
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.accounts", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return ran.stdout


def cells(out: str, label: str) -> list[str]:
    """The cells of every line that starts with ``label`` (split on 2+ spaces)."""
    rows = [line for line in out.splitlines() if line.startswith(label)]
    assert rows, f"no line {label!r} in:\n{out}"
    return [cell for row in rows for cell in re.split(r"\s{2,}", row[len(label) :].strip())]


def test_a_small_run_prints_every_figure_and_every_window_is_exact() -> None:
    out = bench(*SMALL, "--spread-minutes", "5")
    for section in ("uniform", "zipf (hottest account:"):
        assert re.search(rf"^{re.escape(section)}", out, re.M), section
    # Every run, meterd's and the naive ones: these rows have four numbers, twice.
    for label in (
        "events/s (durable)",
        "seconds",
        "CPU µs per event (all threads)",
        "transactions",
        "events per transaction",
    ):
        found = cells(out, label)
        assert len(found) == 8, (label, found)
        assert all(re.fullmatch(NUMBER, cell) for cell in found), (label, found)
    # meterd's own rows: warm and cold, then "-" for the two naive runs.
    for label, shape in (
        ("ingest latency p50 / p99 ms", rf"{NUMBER} / {NUMBER}"),
        ("  Trio thread", NUMBER),
        ("  writer thread", NUMBER),
        ("  reader threads (checkpoints)", NUMBER),
        ("Trio thread CPU busy", rf"{NUMBER}%"),
        ("writer thread busy (wall)", rf"{NUMBER}%"),
        ("  of which COMMIT (fsync)", rf"{NUMBER}%"),
        ("reader queries", NUMBER),
        ("GC pause share (full GCs)", rf"{NUMBER}% \({NUMBER}\)"),
    ):
        found = cells(out, label)
        assert len(found) == 8, (label, found)
        for run in (found[:4], found[4:]):
            assert all(re.fullmatch(shape, cell) for cell in run[:2]), (label, found)
            assert run[2:] == ["-", "-"], (label, found)
    # Exactness: every stored window equals the sum of its events, for every run.
    assert cells(out, "windows wrong (exactness)") == ["0"] * 8
    ratios = re.findall(rf"^ratio meterd / naive: warm {NUMBER}x, cold {NUMBER}x", out, re.M)
    assert len(ratios) == 2, out
    # Memory (two fresh processes) and wake-up latency.
    for label in ("bytes per awake actor", "bytes per hibernated account"):
        found = cells(out, label)
        assert len(found) == 2, (label, found)  # RSS, tracemalloc
        assert all(re.fullmatch(NUMBER, cell) for cell in found), (label, found)
    for pattern in (
        rf"^database bytes per hibernated account \(one event\): {NUMBER} \(",
        rf"^peak while they all hibernate at once \(tracemalloc\): {NUMBER} B per account$",
        rf"^re-waking {NUMBER} of them grew RSS by {NUMBER} MB; hibernating all took {NUMBER} s$",
        rf"^one account after {NUMBER} events: {NUMBER} B \(tracemalloc\)$",
        rf"^after the uniform run \({NUMBER} kB of DB per account\)\s+{NUMBER} / {NUMBER}\s+"
        rf"{NUMBER} / {NUMBER}$",
        rf"^memory process \(1 event per account\)\s+{NUMBER} / {NUMBER}\s+{NUMBER} / {NUMBER}$",
        # The profile: the Trio thread's and the writer thread's, with their top functions.
        rf"^profile: the warm uniform run under cProfile \({NUMBER} events/s profiled\)",
        rf"^Trio thread: {NUMBER} s profiled, idle {NUMBER}%$",
        rf"^writer thread: {NUMBER} s profiled$",
        r"^  top 15 by own time:$",
        r"^  top 15 by cumulative time \(meterd and supervisors code\):$",
    ):
        assert re.search(pattern, out, re.M), (pattern, out)


def test_the_what_if_table_has_a_row_per_variant() -> None:
    tiny = ["--events", "1000", "--accounts", "20", "--concurrency", "4", "--batch", "10"]
    out = bench(*tiny, "--what-if", "--no-profile", "--no-memory")
    table = out[out.index("what if (") :].splitlines()[2:]
    rows = [line for line in table if line.strip()][:8]
    assert len(rows) == 8, table
    for row in rows:
        values = re.split(r"\s+", row[32:].strip())
        assert len(values) == 9, row  # events/s ... GC, wrong
        assert values[-1] == "0", row  # every variant exact


@pytest.mark.slow
def test_the_burst_runs_on_the_baseline_tree_and_on_this_one() -> None:
    """``--burst`` against ``HEAD`` (always there): the bench copies itself into the
    baseline's tree (``git archive``) and runs there with ``-m``; ~12 s here."""
    out = bench("--burst", "--burst-accounts", "200", "--waves", "1", "--baseline-ref", "HEAD")
    assert re.search(r"HEAD \([0-9a-f]{7,}\)\s+this tree$", out, re.M), out
    for label in (
        "RSS / live blocks at start",
        "  all acknowledged / woken / asleep, s",
        "  peak RSS",
        "  peak live actors",
        "  RSS / live blocks once all sleep",
        "  frozen objects once all sleep",
        "  steady producer p50 / p99 / max, ms",
        "  /metrics store read, max ms",
        "  full collections / longest pause, ms",
        "  a full collection (unfreeze, collect)",
        "  then malloc_trim(0)",
    ):
        row = re.search(rf"^{re.escape(label)}\s+(.*)$", out, re.M)
        assert row is not None, (label, out)
        assert len(re.findall(NUMBER, row[1])) >= 2, row[0]  # both trees


async def test_the_exactness_check_covers_accounts_whose_actor_is_not_awake(
    tmp_path: Path,
) -> None:
    """A call returns once its events are committed; a sleeping account's actor is woken
    after (at most ``max_awake`` at a time). The check must still count those events: it
    checkpoints every account of the load, waking the ones still asleep."""
    path = tmp_path / "meterd.sqlite3"
    load, _ = build_load(60, 600, 10, "uniform", seed=1, spread=5)
    names = [account for account, _ in load]
    async with _LayerContext(path, max_awake=4) as layer:
        await drive(layer.accounts, load, 8)
        assert len(layer.accounts.registry) < len(set(names))  # the case: some still asleep
        await checkpoint_all(layer.accounts, 8, names)
    assert stored_sums(path) == expected_sums(iter(load))


async def test_the_warm_run_starts_with_every_actor_of_its_warm_up_awake(tmp_path: Path) -> None:
    load, _ = build_load(40, 400, 10, "uniform", seed=2, spread=5)
    warm = warmup_calls(load)
    # Wake-ups after the commits wait while 4 actors are awake (none sleeps meanwhile): the
    # warm-up's calls alone leave most accounts asleep.
    options = {"max_awake": 4, "pressure_idle": 3600.0}
    async with _LayerContext(tmp_path / "meterd.sqlite3", **options) as layer:
        await drive(layer.accounts, warm, 8)
        await awaken(layer.accounts, [account for account, _ in warm], 8)
        awake = {str(name) for name in list(layer.accounts.registry.keys())}
        assert awake >= {account for account, _ in warm}
