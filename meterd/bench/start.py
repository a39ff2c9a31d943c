"""Benchmark: how long ``meterd run`` takes to listen with owner processes, against a revision.

``python -m meterd.bench.start`` (``meterd bench start``) starts ``meterd run`` with
``[partitions] owners = N`` for each N of ``--owners`` and times it from the spawn to its
``listening`` log line (the gateway's ingest and API are up, every owner is ready and
connected), on a new store (the gateway creates the shard files, each owner opens them for
the first time) and again on the store that run left. Then it sends SIGTERM and waits for
the exit (not timed). The baseline, in the same command and alternating with this
checkout's runs, is the code of ``--against REF`` (``git archive`` of ``meterd/`` and
``supervisors/`` on ``PYTHONPATH``; ``--against ''`` for none). It prints the median, min
and max of ``--rounds`` runs per row, and the load average before and after: the start is
CPU-bound (each owner is an interpreter importing meterd), so a busy machine stretches it.

What limits the figures: the owners' imports, then their shards opened and trees started,
competing for the machine's cores when the owners start together; the gateway's own
imports before it spawns them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meterd.bench.ingest import free_ports, meterd_config

__all__ = ["main"]

START_TIMEOUT = 120.0  # seconds; a start that takes longer is reported as failed


def _archive(ref: str, into: Path) -> str | None:
    """``meterd/`` and ``supervisors/`` of ``ref`` into ``into``; why not, or None."""
    root = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "meterd", "supervisors"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return f"git archive {ref} failed: {archive.stderr.decode(errors='replace').strip()}"
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    found = subprocess.run(
        [sys.executable, "-c", "import meterd; print(meterd.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(into)},
        cwd=into,
        check=False,
    )
    if not found.stdout.strip().startswith(str(into)):
        return f"meterd of {ref} is not the one imported ({found.stdout.strip()})"
    return None


def _once(where: Path, owners: int, pythonpath: str | None) -> float:
    """Seconds from spawning ``meterd run`` in ``where`` to its ``listening`` line."""
    config = where / "meterd.toml"
    if not config.exists():
        port, api_port = free_ports(2)
        text = meterd_config(
            port,
            api_port,
            where / "meterd.sqlite3",
            secrets.token_urlsafe(16),
            "dyno.seconds",
            [("partitions", "owners", str(owners))],
        )
        config.write_text(text)
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "meterd", "run", "--config", str(config), "--json-logs"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=pythonpath or where,  # never the caller's directory (a checkout there)
    )
    assert process.stderr is not None
    took: float | None = None
    seen: list[str] = []
    try:
        for line in process.stderr:
            seen.append(line)
            if '"listening"' in line:
                took = time.monotonic() - started
                break
            if time.monotonic() - started > START_TIMEOUT:
                break
    finally:
        process.terminate()
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    if took is None:
        raise RuntimeError(
            f"meterd run (owners = {owners}) did not listen:\n" + "".join(seen[-20:])
        )
    return took


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meterd.bench.start",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--owners", default="1,2,3", help="owner counts, e.g. 1,2,3")
    parser.add_argument("--rounds", type=int, default=5, help="runs per row (median shown)")
    parser.add_argument(
        "--against", default="main", help="git revision of the baseline ('' for none)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (a short path)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args(argv)
    counts = [int(part) for part in options.owners.split(",") if part.strip()]
    if not counts or min(counts) < 1 or options.rounds < 1:
        parser.error("--owners: counts >= 1 (e.g. 1,2,3); --rounds >= 1")
    # short names: the owners' sockets go under each store (a Unix socket path is 107 bytes)
    base = Path(tempfile.mkdtemp(prefix="mbs-", dir=options.dir))
    sides: dict[str, str | None] = {"this checkout": None}
    try:
        if options.against:
            reference = base / "ref"
            reference.mkdir()
            why = _archive(options.against, reference)
            if why is not None:
                print(f"meterd bench start: {why}", file=sys.stderr)
                return 1
            sides = {options.against: str(reference), "this checkout": None}
        load_before = os.getloadavg()
        times: dict[tuple[str, int, str], list[float]] = {}
        for round in range(options.rounds):
            for owners in counts:
                for side, pythonpath in sides.items():
                    where = base / f"{round}-{owners}-{len(times)}"
                    where.mkdir()
                    for store in ("new", "existing"):
                        took = _once(where, owners, pythonpath)
                        times.setdefault((side, owners, store), []).append(took)
                    shutil.rmtree(where)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for owners in counts:
        for store in ("new", "existing"):
            for side in sides:
                found = times[(side, owners, store)]
                rows.append(
                    {
                        "owners": owners,
                        "store": store,
                        "code": side,
                        "median_s": statistics.median(found),
                        "min_s": min(found),
                        "max_s": max(found),
                    }
                )
    if options.json:
        print(json.dumps({"load": [load_before[0], load_after[0]], "rows": rows}))
        return 0
    print(
        f"meterd run to listening, {options.rounds} runs per row; load average"
        f" {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"{'owners':>6}  {'store':<8}  {'code':<16} {'median s':>9} {'min':>6} {'max':>6} ratio")
    baseline: dict[tuple[int, str], float] = {}
    for row in rows:
        key = (row["owners"], row["store"])
        baseline.setdefault(key, row["median_s"])
        ratio = row["median_s"] / baseline[key]
        print(
            f"{row['owners']:>6}  {row['store']:<8}  {row['code']:<16}"
            f" {row['median_s']:>9.2f} {row['min_s']:>6.2f} {row['max_s']:>6.2f} {ratio:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
