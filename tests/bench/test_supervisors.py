"""``python -m meterd.bench.supervisors`` prints every figure (never asserts a value)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from meterd.bench import triotp_env
from meterd.bench.supervisors import ROW_LABELS

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?(?:k|M| B)?"
TINY = [
    "--quick",
    *("--actors", "500", "--calls", "300", "--casts", "2000", "--dispatch-messages", "2000"),
    *("--dispatch-actors", "50", "--restarts", "20", "--repeats", "1"),
    *("--ops-small", "20", "--ops-large", "200", "--child-ops", "20"),
]
CHILD_OPERATIONS = (
    "static: start_child + terminate_child + delete_child",
    "static: lookup by id",
    "dynamic: start_child + terminate_child",
    "dynamic: lookup by id",
)


def bench(*args: str) -> str:
    # A subprocess, as it is run: each workload's fresh interpreter, the process's logging.
    ran = subprocess.run(
        [sys.executable, "-m", "meterd.bench.supervisors", *TINY, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return ran.stdout


def row(out: str, label: str) -> list[str]:
    found = re.search(rf"^\| {re.escape(label)}\s*\|(.*)\|\s*$", out, re.M)
    assert found is not None, f"no row {label!r} in:\n{out}"
    return [cell.strip() for cell in found[1].split("|")]


def test_ours_alone_prints_every_figure_and_the_child_operations() -> None:
    out = bench("--no-peer")
    for _, label in ROW_LABELS:
        ours, triotp, ratio, otp, goal, met = row(out, label)
        assert re.fullmatch(NUMBER, ours), (label, ours)
        assert (triotp, ratio) == ("—", "—"), label  # no peer measured
        assert re.fullmatch(rf"{NUMBER}|—", otp), (label, otp)
        assert re.fullmatch(r"[≤≥] .+|—", goal), (label, goal)
        assert met in ("yes", "NO", "—"), (label, met)
    header = r"^\| child operation, µs per operation\s*\| 20 children \| 200 children"
    assert re.search(header, out, re.M), out
    for label in CHILD_OPERATIONS:
        small, large, ratio = row(out, label)
        assert re.fullmatch(NUMBER, small), (label, small)
        assert re.fullmatch(NUMBER, large), (label, large)
        assert re.fullmatch(rf"{NUMBER}x", ratio), (label, ratio)


def test_the_triotp_peer_script_sits_beside_its_runner() -> None:
    # It runs by its path in its own virtualenv (no meterd there), at the repository root.
    assert triotp_env.PEER_SCRIPT.is_file()
    assert triotp_env.PEER_SCRIPT.parent.name == "bench"
    assert (triotp_env.REPO_ROOT / "meterd" / "bench" / "peer_triotp.py").is_file()
    assert triotp_env.DEFAULT_VENV == triotp_env.REPO_ROOT / ".bench-venvs" / "triotp"


@pytest.mark.slow
def test_the_triotp_column_is_measured_in_its_own_virtualenv() -> None:
    """Builds ``.bench-venvs/triotp`` on first use (the package index, once)."""
    out = bench()
    for _, label in ROW_LABELS:
        _, triotp, ratio, *_ = row(out, label)
        assert re.fullmatch(NUMBER, triotp), (label, triotp)
        assert re.fullmatch(rf"{NUMBER}x", ratio), (label, ratio)
    assert re.search(r"^triotp 0\.2\.1 \(trio 0\.19\.\d+\)", out, re.M), out
