"""A benchmark's figures on the code of another git revision (``--against REF``).

``git archive`` of ``meterd/`` and ``supervisors/`` at ``REF`` goes into a temporary directory;
this checkout's copy of the benchmark module (and of the private bench helpers it imports) is
put over it, so both sides are measured by the same bench code; the module then runs there
in a subprocess (``python -m meterd.bench.NAME ARGS --against '' --json``) and its last JSON
line is read. The child reports the ``source`` of the ``meterd`` it imported, so a run that
measured this checkout instead of ``REF`` is refused, not printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["figures_at"]

HELPERS = ("_proc.py", "_revision.py")
"""The private bench modules a bench may import (a reference may predate them)."""


def figures_at(ref: str, module: str, argv: Sequence[str], key: str) -> dict[str, float] | str:
    """``result[key]`` of :mod:`meterd.bench.<module>` run on the code of ``ref``, or a
    sentence saying why it could not run."""
    bench = Path(__file__).resolve().parent
    root = bench.parents[1]
    with tempfile.TemporaryDirectory(prefix="meterd-bench-ref-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", ref, "meterd", "supervisors"],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            return f"git archive {ref} failed: {archive.stderr.decode(errors='replace').strip()}"
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for name in (f"{module}.py", *HELPERS):
            (Path(tmp) / "meterd" / "bench" / name).write_bytes((bench / name).read_bytes())
        child = subprocess.run(
            [sys.executable, "-m", f"meterd.bench.{module}", *argv, "--against", "", "--json"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=tmp),
            cwd=tmp,
            check=False,
        )
        if child.returncode != 0:
            return f"the bench on {ref} failed: {child.stderr.strip()[-2000:]}"
        result = json.loads(child.stdout.strip().splitlines()[-1])  # after any log lines
        if not str(result["source"]).startswith(tmp):
            return f"the bench on {ref} imported meterd from {result['source']}"
        figures: dict[str, float] = result[key]
        return figures
