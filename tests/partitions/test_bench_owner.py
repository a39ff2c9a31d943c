"""``python -m meterd.bench.owner`` runs small and prints both paths side by side (never a
value: a benchmark is not a timed test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"
SMALL = ["--accounts", "200", "--batches", "4", "--batch", "50", "--window", "2"]


def test_a_small_run_prints_the_owner_beside_the_in_process_baseline(tmp_path: Path) -> None:
    # Deep enough that a socket beside the stores would be over a Unix socket's 107 bytes.
    where = tmp_path / ("d" * 80)
    where.mkdir()
    ran = subprocess.run(
        [
            *(sys.executable, "-m", "meterd.bench.owner", *SMALL, "--per-shard"),
            *("--shard-sizes", "16,128", "--dir", str(where)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    out = ran.stdout
    assert re.search(r"^path\s+events\s+events/s\s+ratio\s+worker CPU us/ev", out, re.M), out
    assert re.search(r"worker CPU us/ev\s+ratio\s+main thread\s+kernel\s+switches/ev", out), out
    assert re.search(r"worker RSS MiB\s+with after-work us/ev\s+after s$", out, re.M), out
    row = (
        rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+{NUMBER}x"  # events/s, CPU
        rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"  # main, kernel, ...
        rf"\s+{NUMBER}\s+{NUMBER}$"  # with the work after the last verdict, its seconds
    )
    assert re.search(rf"^in-process \(1 cell, 1 file\){row}", out, re.M), out
    assert re.search(rf"^owner process \(8 shards\){row}", out, re.M), out
    assert re.search(rf"^owner process \(1 shard\){row}", out, re.M), out  # shard_size 128
    assert re.search(rf"^owner process \(1 shard\), per shard{row}", out, re.M), out
    assert "waited" in ran.stderr  # for the owner to go idle after the warm-up
    assert list(where.iterdir()) == []  # its stores are removed
