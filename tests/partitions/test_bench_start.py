"""``python -m meterd.bench.start`` runs small and prints each row beside its baseline's
(never a value: a benchmark is not a timed test)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a short path: the owners' sockets go under the stores."""
    where = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_a_small_run_prints_this_checkout_beside_the_revision(short: Path) -> None:
    tmp_path = short
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.start", "--owners", "1", "--rounds", "1",
         "--against", "HEAD", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-4000:]
    out = ran.stdout
    assert re.search(r"^owners\s+store\s+code\s+median s\s+min\s+max ratio$", out, re.M), out
    for store in ("new", "existing"):
        assert re.search(rf"^\s+1\s+{store}\s+HEAD\s+[0-9.]+ .* 1\.00x$", out, re.M), out
        assert re.search(rf"^\s+1\s+{store}\s+this checkout\s+[0-9.]+ .*x$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # its stores are removed


def test_a_refused_revision_is_said(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.start", "--against", "no-such-ref", "--json",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1
    assert "git archive no-such-ref failed" in ran.stderr
    assert not ran.stdout.strip() or json.loads(ran.stdout)
