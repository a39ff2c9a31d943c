"""``python -m meterd.bench.store`` runs small and prints every figure (never a value)."""

from __future__ import annotations

import re
import subprocess
import sys

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def test_a_small_run_prints_meterd_and_the_naive_design_side_by_side() -> None:
    small = ["--accounts", "20", "--events", "400", "--batch", "20", "--in-flight", "4"]
    small += ["--naive-txn", "100", "--repeats", "1"]
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.store", *small],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    out = ran.stdout
    assert re.search(r"^\s+meterd store\s+naive$", out, re.M), out
    for label in (
        "events/s (durable)",
        "seconds",
        "transactions",
        "events per transaction",
        "database MB (+ WAL)",
        "disk bytes per event",
    ):
        assert re.search(rf"^{re.escape(label)}\s+{NUMBER}\s+{NUMBER}$", out, re.M), (label, out)
    assert re.search(rf"^appends per transaction\s+{NUMBER}\s+-$", out, re.M), out
    assert re.search(rf"^append latency p50 / p99 ms\s+{NUMBER} / {NUMBER}\s+-$", out, re.M), out
    assert re.search(rf"^speedup: {NUMBER}x$", out, re.M), out
    assert re.search(
        rf"^light load \(.*\): append latency p50 {NUMBER} ms, p99 {NUMBER} ms, {NUMBER} events/s$",
        out,
        re.M,
    ), out
    checkpoint = rf"^checkpoint \(one per account, {NUMBER} windows\): {NUMBER} windows/s$"
    assert re.search(checkpoint, out, re.M), out
