"""No file of the repository holds a merge's conflict markers."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_tracked_file_holds_conflict_markers() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue  # binary: a fixture database, a screenshot
        found += [
            f"{name.decode()}:{number}"
            for number, line in enumerate(lines, 1)
            if line.startswith(MARKERS) or line == "======="
        ]
    assert found == [], f"conflict markers left by a merge: {found}"
