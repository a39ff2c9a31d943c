"""``python -m meterd.bench.retention`` runs, compares with a git revision, and prints what
must hold whatever the machine (figures are never asserted as targets)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_the_bench_prints_its_table_against_a_revision() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.retention", "--events", "2000", "--batch", "50",
         "--accounts", "300", "--against", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "no reference" not in ran.stdout, ran.stdout
    header = "| figure | this code | this code, no window | @ HEAD |"
    assert header in ran.stdout, ran.stdout
    kept = re.search(
        r"^\| dedupe rows kept \| ([0-9,]+) \| ([0-9,]+) \| ([0-9,]+) \|$", ran.stdout, re.M
    )
    assert kept is not None, ran.stdout
    pruned, everything, head = (int(value.replace(",", "")) for value in kept.groups())
    # 240 s of clock, a 60 s window: about the last quarter (and a step) is kept.
    assert everything == 2000
    assert 300 < pruned < 1000
    assert head == pruned  # HEAD is this code, built with the window
    for label in ("dedupe B/event", "journal B/event", "file B/event", "in use B/event"):
        assert re.search(rf"^\| {label}( \| [0-9]+\.[0-9]){{3}} \|$", ran.stdout, re.M), label
